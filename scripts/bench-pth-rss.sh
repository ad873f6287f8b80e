#!/usr/bin/env bash
# Peak memory of `tagfix convert big.pth out.safetensors` (docs/PERFORMANCE.md, "Converting a 1 GB
# checkpoint"): writes `{"model": state_dict}` with every key, shape and dtype of the RAM++ preset
# (default swin_b_384, 0.9 GB; examples/gen_checkpoint.rs, the project's own .pth writer), converts it
# with each tagfix binary given, and prints peak RSS (/usr/bin/time -v, else VmHWM from /proc) as a
# multiple of the checkpoint's size. Release build, no features.
# Usage: scripts/bench-pth-rss.sh [PRESET] [OTHER_TAGFIX...]
#   OTHER_TAGFIX: further tagfix binaries to measure on the same file (e.g. a build of main).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-swin_b_384}"
shift || true
target="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d "${TMPDIR:-/tmp}/tagfix-bench-pth-rss.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cargo build --release --no-default-features --bin tagfix --example gen_checkpoint --quiet
gen="$target/release/examples/gen_checkpoint"
binaries=("$@" "$target/release/tagfix")

"$gen" preset "$preset" "$work/big.pth"
size=$(stat -c %s "$work/big.pth")
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (modified)'), $(date -u '+%F %T UTC')"
echo "checkpoint: $preset, $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f", s / 2^30 }') GiB)"

# Peak resident set of "$@" in KiB.
peak_kib() {
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -v -o "$work/time" "$@" >/dev/null
    awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time"
  else
    "$@" >/dev/null &
    local pid=$! hwm=0 v
    while v=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null) && [ -n "$v" ]; do
      hwm=$v
      sleep 0.05
    done
    wait "$pid"
    echo "$hwm"
  fi
}

printf '%-60s %12s %10s %8s\n' binary "peak RSS MiB" "× size" "wall s"
for bin in "${binaries[@]}"; do
  start=$(date +%s.%N)
  kib=$(peak_kib "$bin" convert "$work/big.pth" "$work/out.safetensors")
  end=$(date +%s.%N)
  rm -f "$work/out.safetensors"
  awk -v b="$bin" -v k="$kib" -v s="$size" -v t0="$start" -v t1="$end" \
    'BEGIN { printf "%-60s %12.0f %10.2f %8.1f\n", b, k / 1024, k * 1024 / s, t1 - t0 }'
done
