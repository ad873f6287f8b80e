#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs the native parts, then runs every test with every
# feature. Tests that need ../shared fail (not skip) when CI=true and it is missing. Every step and
# every test binary runs even when an earlier one fails; the failures are listed at the end (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
failed=()
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The project's own embedding gate (docs/check.md), shown in the log before the suite (which asserts
# the same in tests/check_self_gate.rs): re-embed the fixture vocabulary, check it against the
# committed baseline under the committed policy.
bin="${CARGO_TARGET_DIR:-target}/release/tagfix"
if ! { cargo build --all-features --release --quiet --bin tagfix \
  && "$bin" -q embed --vocab fixtures/check/tags.txt --model minilm --all --threads 1 \
    --out "$work/fresh.safetensors" \
  && "$bin" check --baseline fixtures/check/minilm-baseline.safetensors \
    --candidate "$work/fresh.safetensors" --vocab fixtures/check/tags.txt --policy fixtures/check/policy.toml; }; then
  failed+=("embedding gate (tagfix embed + tagfix check on fixtures/check, above)")
fi

# `diff`, `check` and the rest build with no native library: the binary without features compiles
# (README, "Cargo features": ONNX Runtime and libtorch sit behind features `embed` and `train`).
cargo check --bin tagfix --quiet || failed+=("the build without features (cargo check --bin tagfix, above)")

# A fresh copy set up first without the shared folder, then with it, needs no manual step.
scripts/check-fresh-setup.sh || failed+=("fresh-copy setup sequence (scripts/check-fresh-setup.sh, above)")

# --no-fail-fast: one failing test binary must not hide the state of the others.
set +e
cargo test --all-features --release --no-fail-fast "$@" 2>&1 | tee "$work/test.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then
  # Each failing test under the binary that ran it, then cargo's own list of failed targets (which
  # also names a binary that crashed without a failing test).
  mapfile -t lines < <(awk -f scripts/cargo-test-failures.awk "$work/test.log")
  failed+=("cargo test --all-features --release --no-fail-fast (exit $status):" "${lines[@]}")
fi

# The GPU check's first two device calls and its embed part run on the CPU with the binaries just built
# (docs/gpu-check.md), so a session lent a GPU does not find a broken script with its device time.
scripts/gpu-check-dry-run.sh || failed+=("GPU check dry run on the CPU (scripts/gpu-check-dry-run.sh, above)")

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED:"
  printf '%s\n' "${failed[@]}" | sed 's/^/  /'
  exit 1
fi
echo "test.sh: everything passed (embedding gate, build without features, fresh-copy setup, every test binary, GPU check dry run)"
