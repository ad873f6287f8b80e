#!/usr/bin/env bash
# One optimizer step (gradient norms + AdamW update) over a model preset's full parameter set on CPU:
# the original per-parameter loop against ATen's fused AdamW (`_fused_adamw_` per weight-decay group,
# `_foreach_norm` + one device-to-host read), side by side in one run, with the optimizer's
# device-to-host reads per step (every read of the training step goes through one counter,
# `tagfix::train::sync::host_reads`; on CUDA each is a host sync).
#
#   scripts/bench-optim.sh                       # swin_l_224 (329M values), 5 steps, 2 threads
#   PRESET=swin_b_224 STEPS=3 THREADS=2 scripts/bench-optim.sh
#
# Memory: parameters + gradients + two moments ≈ 16 bytes per value (5.3 GB for swin_l_224), plus the
# loop's per-parameter temporaries (the largest, label_embed, 120M values = 480 MB each).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-swin_l_224}
STEPS=${STEPS:-5}
THREADS=${THREADS:-2}
cargo build --release --features train --example bench_optim
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_optim
echo "command: scripts/bench-optim.sh (PRESET=$PRESET STEPS=$STEPS THREADS=$THREADS), $(date -u +%FT%TZ), $(nproc) cores"
exec "$BIN" "$PRESET" "$STEPS" "$THREADS"
