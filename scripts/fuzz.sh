#!/usr/bin/env bash
# Fuzzes every file reader of tagfix for SECONDS each (default 60) with the stable, in-process
# harness in src/fuzz/ (examples/fuzz.rs): seeds from fuzz/corpus/<target>/ (plus the shared
# reference files when ../shared or $TAGFIX_SHARED exists), mutated and structure-generated inputs,
# each target in its own process under a 2 GiB data limit (ulimit -d) so aborts and hangs count too.
# Prints target, executions, execs/s and distinct crashes; crashing inputs go to fuzz/crashes/
# (git-ignored). Exits 1 when any target crashed. Further options go to the harness, e.g.
#   scripts/fuzz.sh 30 --targets npy,policy --seed 7 --execs 1000000   (see --help)
# docs/reliability.md has the figures of the last long runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
cargo build --profile fuzz --no-default-features --features embed --example fuzz --quiet
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/fuzz/examples/fuzz" --seconds "$seconds" "$@"
