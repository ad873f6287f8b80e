#!/usr/bin/env bash
# How long a training checkpoint holds up the step loop, before and after issue #14, in one run on
# the same model: the inline save (copy + files + rename on the training thread) against the
# background save (copy to the host — pinned memory on CUDA — then a writer thread). Each round
# writes a full checkpoint under DIR/run (default: a temporary folder, removed afterwards).
#
#   scripts/bench-checkpoint-save.sh                            # swin_b_224, 3 rounds, 2 threads
#   PRESET=swin_l_224 ROUNDS=3 scripts/bench-checkpoint-save.sh # 329M values: ~4 GB per checkpoint
#   DEVICE=cuda scripts/bench-checkpoint-save.sh                 # GPU build (TAGFIX_LINK_CUDA=1)
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-swin_b_224}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cpu}
cargo build --release --features train --example bench_checkpoint_save
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_checkpoint_save
if [ -z "${DIR:-}" ]; then
  DIR=$(mktemp -d)
  trap 'rm -rf "$DIR"' EXIT
fi
echo "command: scripts/bench-checkpoint-save.sh (PRESET=$PRESET ROUNDS=$ROUNDS THREADS=$THREADS DEVICE=$DEVICE), $(date -u +%FT%TZ), $(nproc) cores"
"$BIN" "$DIR/run" "$PRESET" "$ROUNDS" "$THREADS" "$DEVICE"
