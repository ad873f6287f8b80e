#!/usr/bin/env bash
# GPU build of tagfix, on a machine with an NVIDIA driver: scripts/setup.sh, then torch 2.11.0's full
# CUDA stack from PyPI into the same .venv (scripts/requirements-gpu.txt, about 2.6 GB, once), then
# `cargo build --release --all-features` with libtorch_cuda linked (TAGFIX_LINK_CUDA=1; the linker
# would drop it otherwise and libtorch would never see CUDA), then a check that every shared library
# the binary needs resolves. The CUDA libraries are found through libtorch's own run paths into the
# venv's nvidia packages: no LD_LIBRARY_PATH.
#   scripts/setup-gpu.sh && target/release/tagfix train --device cuda ...
# Rebuild with the same environment variable after a `cargo build` without it, or the CUDA link is lost.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
req="scripts/requirements-gpu.txt"
stamp=".venv/.tagfix-gpu-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup-gpu: installing torch 2.11.0's CUDA libraries from PyPI into .venv (about 2.6 GB, once)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
  rm -f .venv/.tagfix-gpu-*
  touch "$stamp"
fi
TAGFIX_LINK_CUDA=1 cargo build --release --all-features
missing="$(ldd target/release/tagfix | grep 'not found' || true)"
if [ -n "$missing" ]; then
  echo "setup-gpu: target/release/tagfix cannot load these libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
# The report of what this binary sees; libtorch_cuda must be linked, and with a driver a device seen.
require="train,libtorch-cuda"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then require="$require,cuda"; fi
target/release/tagfix -q doctor --require "$require"
echo "setup-gpu: target/release/tagfix is linked against libtorch_cuda and every library resolves; with a" \
  "GPU seen (the \`cuda\` line above), \`tagfix train --device cuda\` and \`repair --train-device cuda\` use it" >&2
