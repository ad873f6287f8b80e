#!/usr/bin/env bash
# Checkpoint-reading scale benchmark (docs/PERFORMANCE.md, section "Checkpoint readers"): for each
# COUNT, a safetensors and a torch.save (.pth zip) file of COUNT one-element f32 tensors
# (`block{i}.w`, each its own top-level module; examples/gen_checkpoint.rs), then `tagfix inspect`
# and `tagfix convert` on each, timed as whole processes. Time per tensor should stay flat as COUNT
# grows (the readers are linear). Wall and CPU (user + sys) seconds are both shown: on a shared,
# loaded machine the CPU figure is the steadier one. Release build, no features.
# Usage: scripts/bench-checkpoint-scale.sh [COUNT...]   (default: 10000 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10000 100000 1000000)
target="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d "${TMPDIR:-/tmp}/tagfix-bench-ckpt.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cargo build --release --no-default-features --bin tagfix --example gen_checkpoint --quiet
tagfix="$target/release/tagfix"
gen="$target/release/examples/gen_checkpoint"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (modified)'), $(date -u '+%F %T UTC')"
printf '%-12s %9s %8s | %-34s | %-34s\n' "" "" "" "inspect" "convert"
printf '%-12s %9s %8s | %7s %7s %11s %6s | %7s %7s %11s %6s\n' format tensors "file MB" \
  "wall s" "CPU s" "CPU µs/t" "RSS MB" "wall s" "CPU s" "CPU µs/t" "RSS MB"

# Runs "$@" under /usr/bin/time; prints "wall_s cpu_s peak_rss_kb".
timed() {
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >/dev/null
  awk '{ print $1, $2 + $3, $4 }' "$work/time"
}

for n in "${counts[@]}"; do
  for format in safetensors pth; do
    file="$work/ckpt-$n.$format"
    "$gen" "$format" "$n" "$file"
    read -r wi ci ri < <(timed "$tagfix" inspect "$file")
    read -r wc cc rc < <(timed "$tagfix" convert "$file" "$work/out.safetensors")
    rm -f "$work/out.safetensors"
    awk -v f="$format" -v n="$n" -v size="$(stat -c %s "$file")" -v wi="$wi" -v ci="$ci" -v ri="$ri" \
      -v wc="$wc" -v cc="$cc" -v rc="$rc" \
      'BEGIN { printf "%-12s %9d %8.1f | %7.2f %7.2f %11.1f %6.0f | %7.2f %7.2f %11.1f %6.0f\n",
               f, n, size / 1e6, wi, ci, ci * 1e6 / n, ri / 1024, wc, cc, cc * 1e6 / n, rc / 1024 }'
    rm -f "$file"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
