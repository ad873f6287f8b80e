#!/usr/bin/env bash
# Device-to-host reads per optimizer step of `tagfix train` (on CUDA each one is a host sync): the
# earlier flow, which read every micro-batch's loss terms and weighted total and then the gradient
# norms, against the one-read step (loss terms, finiteness, clipping and the skip decision on the
# device), side by side in one run, on the tiny RAM++ with a synthetic dataset on CPU. The counts are
# the code's own (`tagfix::train::sync::host_reads`); they do not depend on the device. The optimizer
# step time over the full swin_l_224 parameter set is scripts/bench-optim.sh.
#
#   scripts/bench-syncs.sh                        # 6 steps, batch 8 = 4 micro-batches of 2, 1 thread
#   STEPS=9 BATCH=8 MICRO=4 THREADS=2 scripts/bench-syncs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-6}
BATCH=${BATCH:-8}
MICRO=${MICRO:-2}
THREADS=${THREADS:-1}
cargo build --release --features train --example bench_syncs
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_syncs
echo "command: scripts/bench-syncs.sh (STEPS=$STEPS BATCH=$BATCH MICRO=$MICRO THREADS=$THREADS), $(date -u +%FT%TZ), $(nproc) cores"
exec "$BIN" "$STEPS" "$BATCH" "$MICRO" "$THREADS"
