#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs the native parts, then runs every test with every
# feature. Tests that need ../shared fail (not skip) when CI=true and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The project's own embedding gate (docs/check.md), shown in the log before the suite (which asserts
# the same in tests/check_self_gate.rs): re-embed the fixture vocabulary, check it against the
# committed baseline under the committed policy.
cargo build --all-features --release --quiet --bin tagfix
gate="$(mktemp -d)"
trap 'rm -rf "$gate"' EXIT
target/release/tagfix -q embed --vocab fixtures/check/tags.txt --model minilm --all --threads 1 \
  --out "$gate/fresh.safetensors"
target/release/tagfix check --baseline fixtures/check/minilm-baseline.safetensors \
  --candidate "$gate/fresh.safetensors" --vocab fixtures/check/tags.txt --policy fixtures/check/policy.toml

cargo test --all-features --release "$@"
