#!/usr/bin/env bash
# The main job on the embedded default. Grows with the pipeline (diff -> embed -> check -> train).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --all-features --quiet
bin=target/release/tagfix
$bin vocab ram
