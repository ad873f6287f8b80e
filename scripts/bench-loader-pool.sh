#!/usr/bin/env bash
# The training loader's images/s on several threads: micro-batches decoded one at a time (the loader
# before 2026-12-06) vs several at once (prefetch 4, the default), alternating in one run, on 208
# generated JPEGs of mixed sizes (examples/bench_loader_pool.rs), and the one-thread rate × threads
# as the bound.
#
#   scripts/bench-loader-pool.sh                  # all cores, micro-batch 26, 8 steps, 3 rounds
#   scripts/bench-loader-pool.sh 16 26 16 3       # THREADS MICRO STEPS ROUNDS
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BENCH_LOADER_POOL_BIN:-}" ]; then
  cargo build --release --features train --example bench_loader_pool --quiet
fi
BIN=${BENCH_LOADER_POOL_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/bench_loader_pool}
echo "command: scripts/bench-loader-pool.sh $*, $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
exec "$BIN" "$@"
