#!/usr/bin/env bash
# Regenerates the project's own check baseline: MiniLM embeddings (single template) of the fixture
# vocabulary fixtures/check/tags.txt, made by `tagfix embed`. Commit the result only when an
# embedding change is intended; `tagfix check` (tests/check_self_gate.rs, scripts/test.sh) gates
# every other change against it with fixtures/check/policy.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --features embed --quiet
target/release/tagfix -q embed --vocab fixtures/check/tags.txt --model minilm --all --threads 1 \
  --out fixtures/check/minilm-baseline.safetensors
echo "wrote fixtures/check/minilm-baseline.safetensors" >&2
