#!/usr/bin/env bash
# The training batch upload before and after issue #14, side by side in one run: CLIP-normalised f32
# images copied from pageable memory (before) against RGB8 images uploaded through pinned memory without
# blocking and normalised on the device (after). Same images, same augmentation draws; reports the
# loader's time (decode + augment + conversion), the upload time, the bytes copied to the device per
# micro-batch, and checks that both give the same normalised tensor bit for bit.
#
#   scripts/bench-upload.sh                          # micro-batch 26 at 224 px on the CPU, 5 rounds
#   MICRO=52 SIZE=384 ROUNDS=5 DEVICE=cuda scripts/bench-upload.sh   # GPU build (TAGFIX_LINK_CUDA=1)
set -euo pipefail
cd "$(dirname "$0")/.."
MICRO=${MICRO:-26}
SIZE=${SIZE:-224}
ROUNDS=${ROUNDS:-5}
DEVICE=${DEVICE:-cpu}
cargo build --release --features train --example bench_upload
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_upload
echo "command: scripts/bench-upload.sh (MICRO=$MICRO SIZE=$SIZE ROUNDS=$ROUNDS DEVICE=$DEVICE), $(date -u +%FT%TZ), $(nproc) cores"
exec "$BIN" "$MICRO" "$SIZE" "$ROUNDS" "$DEVICE"
