#!/usr/bin/env bash
# Peak memory (max RSS) and time of writing and of opening a teacher file of N records, this tree
# against a baseline commit (default 5dae6bd, before teacher files were streamed and read row by row),
# same machine, same run. Builds examples/teacher_memory.rs (no native library) in both trees.
#   scripts/bench-teacher-memory.sh [N] [BASE]      # N = 250000 records (a 1 GB file)
# Needs about 2 × N × 4 KiB of free disk (each side's file is removed after it is measured).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-250000}"
base="${2:-5dae6bd}"
work="$(mktemp -d "${TMPDIR:-/tmp}/teacher-memory.XXXXXX")"
cleanup() { git worktree remove --force "$work/base" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
git worktree add --quiet --detach "$work/base" "$base"
cp examples/teacher_memory.rs "$work/base/examples/"
cargo build --release --quiet --example teacher_memory
# The baseline builds in its own target folder, kept between runs (default features: no native library).
(cd "$work/base" && CARGO_TARGET_DIR="$OLDPWD/target/bench-base" cargo build --release --quiet --example teacher_memory)
new=target/release/examples/teacher_memory
old=target/bench-base/release/examples/teacher_memory
echo "command: scripts/bench-teacher-memory.sh $n $base, $(date -u +%FT%TZ), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
printf '| side | step | max RSS MiB | seconds | file MiB |\n| --- | --- | --- | --- | --- |\n'
for side in base this; do
  bin=$new; [ "$side" = base ] && bin=$old
  file="$work/$side.safetensors"
  for step in write read; do
    args=("$step" "$n" "$file"); [ "$step" = read ] && args=(read "$file")
    /usr/bin/time -f '%M %e' -o "$work/time" "$bin" "${args[@]}" > /dev/null
    read -r kib secs < "$work/time"
    printf '| %s | %s | %d | %s | %d |\n' "$([ "$side" = base ] && echo "base ($base)" || echo "this tree")" "$step" $((kib / 1024)) "$secs" $(($(stat -c %s "$file") / 1048576))
  done
  rm -f "$file"
done
