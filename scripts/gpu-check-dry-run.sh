#!/usr/bin/env bash
# The GPU check's first two device calls (docs/gpu-check.md: `run parity speed`, `run casts ckpt upload loader`) and call 3's `ahead`
# run on the CPU with the tiny model and the release binaries already built, so that a session lent a GPU
# does not spend its device time finding that the script broke. Checks the plumbing, not the figures:
#   parity  both reference fixtures pass (TAGFIX_TEST_DEVICE=cpu);
#   speed   every loop and step row of speed.md has an images/s figure, and the loops trained the step's
#           4585 classes;
#   casts   both medians and their ratio; ckpt: the inline and background rows and their ratio;
#   upload  both micro-batch sizes uploaded identical tensors, and `--micro-batch-size auto` chose a size
#           that config.toml records;
#   loader  the loader's images/s on several threads and one image's stages on one core have figures;
#   ahead   scoring with the next batch decoded ahead and in turn: both timed, their ratio written;
#   tagcli  `tagfix tag --shard auto` as two torchrun ranks gives the whole run's images and scores;
#   embed   (`bundle`, then both sides on the CPU) MiniLM and the CLIP fixture over the RAM vocabulary
#           compared row by row and passing (the CUDA side's onnxruntime-gpu pieces cannot be tried here).
# Call 3's `step` part is not covered (its `ahead` part is): its Python side needs an importable torch with its CUDA libraries,
# which this machine's .venv does not have. 4-5 minutes.
#   scripts/gpu-check-dry-run.sh          # after `cargo test --release --all-features` built the binaries
#                                         # (scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
release="${CARGO_TARGET_DIR:-target}/release"
shared="${TAGFIX_SHARED:-../shared}"
tags="$shared/ram/data/ram_tag_list.txt"
if [ ! -f "$tags" ]; then
  if [ "${CI:-}" = true ]; then
    echo "gpu-check dry run: $tags is missing (CI=true: set TAGFIX_SHARED)" >&2
    exit 1
  fi
  echo "gpu-check dry run: skipped, $tags is missing (set TAGFIX_SHARED)"
  exit 0
fi
# The folder `prepare` would write, from the ordinary (CPU) release binaries.
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/ref"
cargo build --release --all-features --quiet --bin tagfix --example step_time --example flop_model \
  --example bench_upload --example bench_checkpoint_save --example bench_loader --example bench_loader_pool \
  --example bench_crop_decode --example bench_decode_ahead
parity=$(cargo test --release --all-features --test ram_plus_parity --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep /deps/ | head -1)
cp "$release/tagfix" "$release"/examples/{step_time,flop_model,bench_upload,bench_checkpoint_save,bench_loader,bench_loader_pool,bench_crop_decode,bench_decode_ahead} \
  "$tags" "$dir/bin/"
cp "$parity" "$dir/bin/ram_plus_parity"
for d in tiny tiny_224_w7; do
  mkdir -p "$dir/ref/$d"
  cp "$shared/ram/reference/$d"/{config.json,weights.safetensors,inputs.safetensors,outputs.safetensors,grads.safetensors,generate_tag.json} "$dir/ref/$d/"
done
out="$dir/out"
export GPU_CHECK_DIR="$dir" OUT="$out" TORCH_LIB="${TORCH_LIB:-$PWD/.libtorch/lib}" THREADS=2 TRAIN_MODEL=tiny
PARITY_DEVICE=cpu SPEED_DEVICE=cpu SPEED_MODELS=tiny SPEED_STEPS=2 SPEED_F32_STEPS=2 SPEED_BATCH=4 \
  SPEED_STEP_STEPS=2 SPEED_WORKERS=1 scripts/gpu-check.sh run parity speed
CASTS_DEVICE=cpu CASTS_CONFIG=tiny CASTS_BATCH=2 CASTS_STEPS=2 CKPT_DEVICE=cpu CKPT_PRESET=swin_b_224 CKPT_ROUNDS=1 \
  UPLOAD_DEVICE=cpu UPLOAD_BATCH=8 UPLOAD_SIZE=64 UPLOAD_WORKERS=1 AUTO_STEPS=2 \
  LOADER_THREADS=2 LOADER_MICRO=4 LOADER_STEPS=2 LOADER_ROUNDS=1 \
  AHEAD_DEVICE=cpu AHEAD_CONFIG=tiny AHEAD_IMAGES=16 AHEAD_BATCH=4 AHEAD_ROUNDS=1 TAGCLI_DEVICE=cpu \
  scripts/gpu-check.sh run casts ckpt upload loader ahead tagcli
scripts/gpu-check.sh bundle > /dev/null
EMBED_DEVICE=cpu scripts/gpu-check.sh run embed

problems=()
# has FILE PATTERN WHAT: WHAT is a problem unless FILE has a line matching PATTERN (extended regex).
has() { grep -Eq "$2" "$1" 2>/dev/null || problems+=("$3"); }
# Both tests of the parity binary ran and passed: the fixture's parity and the sharded AdamW update.
for d in tiny tiny_224_w7; do
  has "$out/parity_$d.txt" '^test result: ok\. 2 passed; 0 failed' "parity: the $d fixture or the sharded update did not pass"
done
table="$out/speed.md"
[ ! -f "$out/vocab_missing.txt" ] || problems+=("speed: the synthetic set was not in the RAM vocabulary")
# | run | model | micro-batch | precision | what | images/s | ...: 5 loops and 2 steps, each measured.
measured=$(awk -F'|' '$6 ~ /^ (loop|step) $/ && $7 ~ /^ [0-9.]+ $/' "$table" 2>/dev/null | wc -l)
[ "$measured" -eq 7 ] || problems+=("speed: $measured of 7 loop and step rows have an images/s figure")
for log in "$out"/loop_*.log; do
  has "$log" "4585 classes" "speed: $(basename "$log"): the model did not have 4585 classes"
done
has "$out/tagcli.txt" '^agree$' "tagcli: the sharded tag run did not give the whole run's images and scores"
has "$out/casts.txt" '^median s/step: casts per micro-batch [0-9.]+, once per step [0-9.]+, ratio [0-9.]+$' \
  "casts: no medians"
has "$out/ckpt.txt" '^\| inline .*\| [0-9]+ \|$' "ckpt: no inline row"
has "$out/ckpt.txt" '^\| background .*\| [0-9]+ \|$' "ckpt: no background row"
has "$out/ckpt.txt" '^ratio held \(background / inline\): [0-9.]+$' "ckpt: no ratio"
for m in 4 8; do
  has "$out/upload_$m.txt" '^normalised tensors identical bit for bit: yes$' "upload: micro-batch $m not bit for bit"
done
has "$out/auto.log" 'micro_batch_size auto → 8 ' "upload: --micro-batch-size auto did not choose the whole batch"
has "$out/auto/config.toml" '^micro_batch_size = 8$' "upload: config.toml does not record the chosen size"
has "$out/loader_pool.txt" '^\| 2 \| 4 \| [0-9.]+ \| [0-9.]+ \| [0-9]+ % \| [0-9.]+ \| [0-9]+ % \| [0-9.]+× \|$' \
  "loader: no row of images/s on several threads"
has "$out/loader_core.txt" '^at 224 px, these images in equal shares: [0-9.]+ images/s per core before, [0-9.]+ now' \
  "loader: no per-core figure"
has "$out/loader_crop.txt" '^images in equal shares: [0-9.]+ → [0-9.]+ images/s per core for decode \+ crop resize \([0-9.]+×\)$' \
  "loader: no crop-decoding figure"
has "$out/ahead.txt" '^ratio ahead / in turn, images/s: [0-9.]+ \(the ideal, sum / max of the two alone: [0-9.]+\)$' \
  "ahead: no ratio of decoding ahead to decoding in turn"
for model in minilm clip-tiny; do
  has "$out/embed.txt" "^embed: $model: 4585 rows, lowest cosine CPU vs device [0-9.]+ \(row [0-9]+\): PASS" \
    "embed: $model: no passing row-by-row comparison"
done
if [ ${#problems[@]} -gt 0 ]; then
  printf 'gpu-check dry run: %s\n' "${problems[@]}" >&2
  [ -f "$table" ] && cat "$table" >&2
  exit 1
fi
echo "gpu-check dry run: calls 1 and 2 and the embed part ran on the CPU (parity: both fixtures; speed: 7 rows" \
  "measured, 4585 classes in every loop; casts, ckpt, upload, loader and ahead: every figure written; embed: both models" \
  "compared)"
