#!/usr/bin/env bash
# What one training image costs the loader on one core, stage by stage (decode, crop + resize + flip,
# RandomAugment, CHW copy), with the loader before (the image crate's JPEG decoder and Catmull-Rom
# resize, the warp by its definition) and now (libjpeg-turbo, src/imaging/jpeg.rs; Pillow's bicubic,
# src/imaging/resample.rs; the faster warp) side by side in one run, on the same images and draws.
#
#   scripts/bench-loader.sh                       # generated photo-like JPEGs, 224 px, 5 rounds
#   SIZE=384 scripts/bench-loader.sh ../shared/ram/images/*.jpg
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-224}
ROUNDS=${ROUNDS:-5}
if [ -z "${BENCH_LOADER_BIN:-}" ]; then
  cargo build --release --features train --example bench_loader
fi
BIN=${BENCH_LOADER_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/bench_loader}
echo "command: scripts/bench-loader.sh $* (SIZE=$SIZE ROUNDS=$ROUNDS), $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
exec "$BIN" "$SIZE" "$ROUNDS" "$@"
