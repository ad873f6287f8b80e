#!/usr/bin/env bash
# GPU build of tagfix, on a machine with an NVIDIA driver: scripts/setup.sh, then torch 2.11.0's full
# CUDA stack from PyPI into the same .venv (scripts/requirements-gpu.txt, about 2.6 GB, once), then
# `cargo build --release --all-features` with libtorch_cuda linked (TAGFIX_LINK_CUDA=1; the linker
# would drop it otherwise and libtorch would never see CUDA), then a check that every shared library
# the binary needs resolves. The CUDA libraries are found through libtorch's own run paths into the
# venv's nvidia packages: no LD_LIBRARY_PATH. `scripts/setup-gpu.sh ort` (run by the full setup) puts
# onnxruntime-gpu 1.31.1 (CUDA 13) into .deps/ort-gpu/ for `tagfix embed --device cuda`; tagfix uses
# that library for both devices once it is there.
#   scripts/setup-gpu.sh && target/release/tagfix train --device cuda ...
#   scripts/setup-gpu.sh ort-files DIR       # only onnxruntime-gpu's three libraries, into DIR
#   scripts/setup-gpu.sh ort-link DIR LIBDIR...   # link CUDA libraries beside them (scripts/gpu-check.sh)
# Rebuild with the same environment variable after a `cargo build` without it, or the CUDA link is lost.
set -euo pipefail
cd "$(dirname "$0")/.."
# ort_files DIR: onnxruntime-gpu's C library (as libonnxruntime.so) and its two provider libraries
# (shared + CUDA, 284 MB) from the pinned wheel, into DIR. Needs PyPI and .venv's pip.
ort_files() {
  local tmp
  tmp="$(mktemp -d)"
  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
    -d "$tmp" -r scripts/requirements-ort-gpu.txt
  mkdir -p "$1"
  .venv/bin/python - "$tmp"/onnxruntime_gpu-*.whl "$1" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for src, dst in [("libonnxruntime.so.1.31.1", "libonnxruntime.so"),
                     ("libonnxruntime_providers_shared.so", None),
                     ("libonnxruntime_providers_cuda.so", None)]:
        with z.open("onnxruntime/capi/" + src) as f, open(f"{out}/{dst or src}", "wb") as g:
            shutil.copyfileobj(f, g)
PY
  rm -rf "$tmp"
}
# ort_link DIR CUDA_LIB_DIR...: links every library of those folders into DIR. The CUDA provider has
# no run path; tagfix loads the CUDA libraries beside libonnxruntime.so before registering it.
ort_link() {
  local dir="$1" d
  shift
  for d in "$@"; do
    [ -d "$d" ] || { echo "setup-gpu: $d is missing: install torch's CUDA libraries first" >&2; return 1; }
    find "$d" -maxdepth 1 -name 'lib*.so.*' -exec ln -sfn {} "$dir/" \;
  done
}
case "${1:-}" in
ort-files) ort_files "$2"; exit ;;
ort-link) shift; ort_link "$@"; exit ;;
ort)
  # onnxruntime-gpu into .deps/ort-gpu/ (where tagfix looks first) with links to the CUDA libraries
  # of torch's CUDA install. The stamp .deps/ort-gpu/.tagfix-inputs names what the folder was made
  # from; it is remade whenever that differs.
  dir=".deps/ort-gpu"
  site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cuda_dirs=("$site"/nvidia/*/lib)   # cu13/ (cuBLAS, cudart, cuRAND, ...), cudnn/, ...
  inputs="requirements $(sha256sum scripts/requirements-ort-gpu.txt | cut -c1-16) | CUDA libraries from ${cuda_dirs[*]}"
  if [ "$(cat "$dir/.tagfix-inputs" 2>/dev/null)" != "$inputs" ]; then
    echo "setup-gpu: installing onnxruntime-gpu 1.31.1 into $dir (a 256 MB wheel, once)" >&2
    rm -rf "$dir"
    ort_files "$dir"
    ort_link "$dir" "${cuda_dirs[@]}"
    printf '%s\n' "$inputs" >"$dir/.tagfix-inputs"
  fi
  exit 0
  ;;
esac
scripts/setup.sh
req="scripts/requirements-gpu.txt"
stamp=".venv/.tagfix-gpu-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup-gpu: installing torch 2.11.0's CUDA libraries from PyPI into .venv (about 2.6 GB, once)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
  rm -f .venv/.tagfix-gpu-*
  touch "$stamp"
fi
scripts/setup-gpu.sh ort
TAGFIX_LINK_CUDA=1 cargo build --release --all-features
missing="$(ldd target/release/tagfix | grep 'not found' || true)"
if [ -n "$missing" ]; then
  echo "setup-gpu: target/release/tagfix cannot load these libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
# The report of what this binary sees; libtorch_cuda must be linked, and with a driver a device seen.
require="train,libtorch-cuda"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then require="$require,cuda,onnxruntime-cuda"; fi
target/release/tagfix -q doctor --require "$require"
echo "setup-gpu: target/release/tagfix is linked against libtorch_cuda and every library resolves; with a" \
  "GPU seen (the \`cuda\` and \`onnxruntime-cuda\` lines above), \`tagfix train --device cuda\`, \`repair" \
  "--train-device cuda\` and \`embed --device cuda\` use it" >&2
