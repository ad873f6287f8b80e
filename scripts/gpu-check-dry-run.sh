#!/usr/bin/env bash
# The GPU check's `speed` part (docs/gpu-check.md, issue 14's measurement) run on the CPU with the tiny
# model and the release binaries already built, so that a session lent a GPU does not spend its device
# time finding that the script broke. Checks the plumbing, not the figures: every loop and step row of
# speed.md has an images/s figure, and the loops trained the step's 4585 classes. 2-3 minutes.
#   scripts/gpu-check-dry-run.sh          # after `cargo build --release --all-features --bin tagfix
#                                         #  --example step_time --example flop_model` (scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
release="${CARGO_TARGET_DIR:-target}/release"
tags="${TAGFIX_SHARED:-../shared}/ram/data/ram_tag_list.txt"
if [ ! -f "$tags" ]; then
  if [ "${CI:-}" = true ]; then
    echo "gpu-check dry run: $tags is missing (CI=true: set TAGFIX_SHARED)" >&2
    exit 1
  fi
  echo "gpu-check dry run: skipped, $tags is missing (set TAGFIX_SHARED)"
  exit 0
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin"
cp "$release/tagfix" "$release/examples/step_time" "$release/examples/flop_model" "$tags" "$dir/bin/"
GPU_CHECK_DIR="$dir" OUT="$dir/out" SPEED_DEVICE=cpu SPEED_MODELS=tiny SPEED_STEPS=2 SPEED_F32_STEPS=2 \
  SPEED_BATCH=4 SPEED_STEP_STEPS=2 THREADS=2 SPEED_WORKERS=1 scripts/gpu-check.sh run speed
table="$dir/out/speed.md"
problems=()
[ -f "$table" ] || problems+=("no speed.md written")
[ ! -f "$dir/out/vocab_missing.txt" ] || problems+=("the synthetic set was not in the RAM vocabulary")
if [ -f "$table" ]; then
  # | run | model | micro-batch | precision | what | images/s | ...: 5 loops and 2 steps, each measured.
  measured=$(awk -F'|' '$6 ~ /^ (loop|step) $/ && $7 ~ /^ [0-9.]+ $/' "$table" | wc -l)
  [ "$measured" -eq 7 ] || problems+=("$measured of 7 loop and step rows have an images/s figure")
fi
for log in "$dir"/out/loop_*.log; do
  grep -q "4585 classes" "$log" || problems+=("$(basename "$log"): the model did not have 4585 classes")
done
if [ ${#problems[@]} -gt 0 ]; then
  printf 'gpu-check dry run: %s\n' "${problems[@]}" >&2
  [ -f "$table" ] && cat "$table" >&2
  exit 1
fi
echo "gpu-check dry run: the speed part ran on the CPU (7 rows measured, 4585 classes in every loop)"
