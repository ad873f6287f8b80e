#!/usr/bin/env bash
# `tagfix tag` throughput (images/s: decode + RAM's inference transform + forward; model loading
# excluded) on random-weight models of the given configurations over copies of the shared photos, and
# the same over the Python side (scripts/bench_tag.py: PIL transform + the functional RAM++ restatement
# of ../shared/ram/reference) when a Python with torch is at hand.
#
#   scripts/bench-tag.sh                                    # CPU, 2 threads, tiny and swin_b_224
#   DEVICE=cuda THREADS=0 BATCH=32 IMAGES=256 CASES="swin_l_384:4585:51" scripts/bench-tag.sh
#
# CASES: space-separated config:classes:descriptions (config tiny or a preset; classes and descriptions
# apply to tiny). The weights come from examples/step_time.rs --export (official init, seed 0).
# Results: one JSON line per measurement in $OUT_DIR/results.jsonl and a table on stdout. The Python
# side runs with TORCH_PYTHON, else .venv-bench/bin/python (see scripts/bench-step.sh), when that
# imports torch, numpy, PIL and safetensors; otherwise it is reported as not run.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
BATCH=${BATCH:-8}
IMAGES=${IMAGES:-24}
CASES=${CASES:-"tiny:4585:51 swin_b_224:4585:51"}
OUT_DIR=${OUT_DIR:-out/bench-tag}
SHARED=${TAGFIX_SHARED:-../shared}
REF=${TAGFIX_REFERENCE:-$SHARED/ram/reference}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${TAGFIX_BIN:-$TARGET/release/tagfix}
STEP_BIN=${STEP_TIME_BIN:-$TARGET/release/examples/step_time}
PY=${TORCH_PYTHON:-.venv-bench/bin/python}

if [ -z "${TAGFIX_BIN:-}" ] || [ -z "${STEP_TIME_BIN:-}" ]; then
  scripts/setup.sh >/dev/null
  cargo build --release --all-features --bin tagfix --example step_time --quiet
fi
photos=("$SHARED"/ram/images/*.jpg)
[ -f "${photos[0]}" ] || { echo "bench-tag: no photos under $SHARED/ram/images" >&2; exit 2; }
mkdir -p "$OUT_DIR/imgs"
rm -f "$OUT_DIR"/imgs/*.jpg
for i in $(seq 0 $((IMAGES - 1))); do
  cp "${photos[$((i % ${#photos[@]}))]}" "$OUT_DIR/imgs/$(printf %04d "$i").jpg"
done
python_ok=0
if [ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1; then
  "$PY" -c "import torch, numpy, PIL, safetensors" 2>/dev/null && python_ok=1
fi
results="$OUT_DIR/results.jsonl"
: > "$results"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
for case in $CASES; do
  IFS=: read -r config classes des <<< "$case"
  dir=$(mktemp -d)
  "$STEP_BIN" --config "$config" --classes "$classes" --des "$des" --batch 1 --steps 1 --warmup 0 \
    --threads "$THREADS" --export "$dir" > /dev/null
  # The vocabulary: the ram preset for 4585 classes, else the first N tags of it.
  vocab=ram
  if [ "$classes" != 4585 ]; then
    head -n "$classes" "$SHARED/ram/data/ram_tag_list.txt" > "$dir/tags.txt"
    vocab="$dir/tags.txt"
  fi
  line=$("$BIN" tag --checkpoint "$dir/weights.safetensors" --model "$config" --vocab "$vocab" \
    --images "$OUT_DIR/imgs" --threads "$THREADS" --batch-size "$BATCH" --device "$DEVICE" \
    --top-k 10 --format json --out "$OUT_DIR/tags.jsonl" 2>&1 | grep '^tagged ')
  n=$(echo "$line" | sed -E 's/^tagged ([0-9]+) images in ([0-9.]+) s.*/\1/')
  s=$(echo "$line" | sed -E 's/^tagged ([0-9]+) images in ([0-9.]+) s.*/\2/')
  echo "{\"impl\": \"tagfix tag\", \"config\": \"$config\", \"num_class\": $classes, \"des_per_class\": $des, \"device\": \"$DEVICE\", \"threads\": $THREADS, \"batch\": $BATCH, \"images\": $n, \"seconds\": $s, \"images_per_s\": $(python3 -c "print($n / $s)")}" >> "$results"
  if [ "$python_ok" = 1 ]; then
    "$PY" scripts/bench_tag.py --dir "$dir" --reference "$REF" --images "$OUT_DIR/imgs" \
      --threads "$THREADS" --batch "$BATCH" --device "$DEVICE" >> "$results"
  else
    echo "{\"impl\": \"Python reference\", \"config\": \"$config\", \"not_run\": \"no Python with torch, numpy, PIL and safetensors ($PY)\"}" >> "$results"
  fi
  rm -rf "$dir"
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'impl':<58} {'config':<12} {'device':<6} {'thr':>3} {'batch':>5} {'images':>6} {'images/s':>9}")
for r in rows:
    if "not_run" in r:
        print(f"{r['impl']:<58} {r['config']:<12} not run: {r['not_run']}")
        continue
    print(f"{r['impl'][:58]:<58} {r['config']:<12} {r['device']:<6} {r['threads']:>3} {r['batch']:>5} "
          f"{r['images']:>6} {r['images_per_s']:>9.2f}")
PY
