#!/usr/bin/env bash
# `tagfix tag` / `eval --checkpoint` scoring with and without the next batch decoded while this one is
# scored (examples/bench_decode_ahead.rs): images/s of both paths in alternating rounds of one run, and
# decoding alone and scoring alone, whose larger bounds what the overlap can reach.
#
#   scripts/bench-decode-ahead.sh                       # CPU, 2 threads, tiny model, 48 copies of the shared photos
#   THREADS=1 RAYON_NUM_THREADS=1 scripts/bench-decode-ahead.sh    # the model and the decoder on a core each
#   DEVICE=cuda THREADS=0 CONFIG=swin_l_384 CLASSES=4585 DES=51 BATCH=32 IMAGES=512 scripts/bench-decode-ahead.sh
#
# The weights come from examples/step_time.rs --export (random, official init). THREADS sets libtorch's
# threads (0: its default); rayon decodes on every core (RAYON_NUM_THREADS to change).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
CONFIG=${CONFIG:-tiny}
CLASSES=${CLASSES:-4585}
DES=${DES:-51}
BATCH=${BATCH:-8}
IMAGES=${IMAGES:-48}
ROUNDS=${ROUNDS:-5}
SHARED=${TAGFIX_SHARED:-../shared}
TARGET=${CARGO_TARGET_DIR:-target}
STEP_BIN=${STEP_TIME_BIN:-$TARGET/release/examples/step_time}
BENCH_BIN=${BENCH_BIN:-$TARGET/release/examples/bench_decode_ahead}

if [ -z "${STEP_TIME_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  scripts/setup.sh >/dev/null
  cargo build --release --all-features --example step_time --example bench_decode_ahead --quiet
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/imgs"
photos=("$SHARED"/ram/images/*.jpg)
if [ -f "${photos[0]}" ]; then
  for i in $(seq 0 $((IMAGES - 1))); do
    cp "${photos[$((i % ${#photos[@]}))]}" "$work/imgs/$(printf %04d "$i").jpg"
  done
  echo "images: $IMAGES copies of the photos under $SHARED/ram/images"
else
  "$BENCH_BIN" generate "$work/imgs" "$IMAGES"
  echo "images: $IMAGES generated photo-like JPEGs (500x375 to 2048x1536; no $SHARED/ram/images here)"
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
"$STEP_BIN" --config "$CONFIG" --classes "$CLASSES" --des "$DES" --batch 1 --steps 1 --warmup 0 \
  --threads "$THREADS" --export "$work/model" > /dev/null
if [ "$THREADS" != 0 ]; then export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS; fi
"$BENCH_BIN" "$work/model/weights.safetensors" "$CONFIG" "$CLASSES" "$work/imgs" "$BATCH" "$ROUNDS" "$DEVICE"
