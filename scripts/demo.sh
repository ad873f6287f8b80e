#!/usr/bin/env bash
# The main job on the embedded default. Grows with the pipeline (diff -> embed -> check -> train).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --all-features --quiet
bin=target/release/tagfix
$bin vocab ram
shared="${TAGFIX_SHARED:-../shared}"
mkdir -p out

# diff: a synthesized RAM-format training set with 144 absent slots -> the slot manifest.
$bin synth --vocab ram --records 20000 --absent 144 --seed 1 --out out/train.json
$bin diff --vocab ram --data out/train.json --out out/manifest.json --format markdown > out/diff.md
echo "diff: out/manifest.json, report out/diff.md"

# embed: regenerate the 144 absent slots with the real MiniLM model (ONNX Runtime) into a base file whose
# other rows stay bit-identical; 200 present slots are re-embedded into the `control` tensor for `check`.
# The base here is the MiniLM embedding of the whole vocabulary from ../shared (standing in for the
# original label-embedding file of a model).
$bin embed --model minilm --manifest out/manifest.json --absent --control 200 \
  --base "$shared/reference/minilm_ram_single_template.safetensors" --out out/embeddings.safetensors

# check: are the 144 regenerated rows consistent with the base? The 200 control rows calibrate it;
# histograms in out/check-plots/, a Markdown summary in out/check.md. Exit 1 if a rule fails.
$bin check --base "$shared/reference/minilm_ram_single_template.safetensors" \
  --patched out/embeddings.safetensors --vocab ram --plot out/check-plots --summary out/check.md
echo "check: out/check.md, plots in out/check-plots/"
