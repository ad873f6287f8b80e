#!/usr/bin/env bash
# bf16 weight casts once per optimizer step vs once per micro-batch (issue #14), in one run: the
# same step of ACCUMULATE forward + backward passes (`examples/step_time.rs --accumulate`) with
# autocast's cast cache kept for the whole step (`--cast-cache on`, what the trainer does) and
# without (`off`: every micro-batch casts every f32 weight to bf16 again), alternating ROUNDS times.
# Prints one JSON line per measurement and the median of each.
#
#   scripts/bench-casts.sh                                      # CPU: tiny, 4585 classes x 51, batch 2
#   DEVICE=cuda CONFIG=swin_l_224 BATCH=26 STEPS=10 scripts/bench-casts.sh   # GPU build
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
CONFIG=${CONFIG:-tiny}
CLASSES=${CLASSES:-4585}
DES=${DES:-51}
BATCH=${BATCH:-2}
ACCUMULATE=${ACCUMULATE:-2}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
BIN=${STEP_TIME_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/step_time}
[ -n "${STEP_TIME_BIN:-}" ] || cargo build --release --features train --example step_time
echo "command: scripts/bench-casts.sh (DEVICE=$DEVICE CONFIG=$CONFIG CLASSES=$CLASSES DES=$DES BATCH=$BATCH ACCUMULATE=$ACCUMULATE STEPS=$STEPS ROUNDS=$ROUNDS THREADS=$THREADS), $(date -u +%FT%TZ), $(nproc) cores"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$ROUNDS"); do
  for cache in off on; do
    "$BIN" --config "$CONFIG" --classes "$CLASSES" --des "$DES" --batch "$BATCH" --steps "$STEPS" \
      --warmup "$WARMUP" --threads "$THREADS" --device "$DEVICE" --precision bf16 \
      --accumulate "$ACCUMULATE" --cast-cache "$cache" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {c: statistics.median(r["median_s"] for r in rows if r["cast_cache"] == c) for c in (False, True)}
print(f"median s/step: casts per micro-batch {med[False]:.4f}, once per step {med[True]:.4f}, ratio {med[True]/med[False]:.3f}")
PY
