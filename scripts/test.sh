#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs the native parts, then runs every test with every
# feature. Tests that need ../shared fail (not skip) when CI=true and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --all-features --release "$@"
