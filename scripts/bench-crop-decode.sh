#!/usr/bin/env bash
# The training loader's decode + crop resize on one core: the whole JPEG decoded (before) against only
# the crop's rows and columns (now: libjpeg-turbo's skipped and cropped scanlines, src/imaging/jpeg.rs),
# on the same images and RandomResizedCrop draws in one run, each path over all draws in turn, ROUNDS
# times (medians); the two give the same pixels (checked on every draw first).
#
#   scripts/bench-crop-decode.sh                       # generated photo-like JPEGs, 224 px, 20 draws, 5 rounds
#   SIZE=384 scripts/bench-crop-decode.sh ../shared/ram/images/*.jpg
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-224}
DRAWS=${DRAWS:-20}
ROUNDS=${ROUNDS:-5}
if [ -z "${BENCH_CROP_DECODE_BIN:-}" ]; then
  cargo build --release --features train --example bench_crop_decode
fi
BIN=${BENCH_CROP_DECODE_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/bench_crop_decode}
echo "command: scripts/bench-crop-decode.sh $* (SIZE=$SIZE DRAWS=$DRAWS ROUNDS=$ROUNDS), $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
exec "$BIN" "$SIZE" "$DRAWS" "$ROUNDS" "$@"
