#!/usr/bin/env bash
# The checks before the first step of a two-rank `tagfix train` (every image decoded, every teacher
# value checked): this tree, where the ranks split them, against a baseline commit where every rank
# checks everything (default a4940b8), same machine, same run, alternating rounds.
#
#   scripts/bench-rank-checks.sh [IMAGES] [BASE]     # IMAGES = 3000 synthetic 224-pixel PNGs
#
# Each round times `tagfix train --nproc-per-node 2 --max-steps 1` on the tiny model with
# `--check-images full` and with `none`, on each side; the difference is what the checks cost. The
# table gives the seconds per round and the medians of the differences. The baseline is built by
# scripts/base-build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-3000}"
base="${2:-a4940b8}"
rounds="${ROUNDS:-3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/rank-checks.XXXXXX")"
trap 'rm -rf "$work"' EXIT
scripts/setup.sh > /dev/null
cargo build --release --all-features --quiet --bin tagfix
# shellcheck source=scripts/base-build.sh
. scripts/base-build.sh
old=$(base_build "$base")
new=target/release/tagfix
"$new" -q synth-images --out "$work/set" --count "$n" --size 224 > /dev/null
echo "command: scripts/bench-rank-checks.sh $n $base (ROUNDS=$rounds), $(date -u +%FT%TZ), $(nproc) cores"
run() { # run BIN OUT CHECK: seconds of the whole two-rank command
  local start end
  start=$(date +%s.%N)
  "$1" -q train --model tiny --allow-random-encoder --data "$work/set/train.json" --images "$work/set/images" \
    --manifest "$work/set/manifest.json" --label-embed "$work/set/label_embed.safetensors" \
    --teacher "$work/set/teacher.safetensors" --batch-size 4 --micro-batch-size 2 --max-steps 1 \
    --checkpoint-every off --check-images "$3" --nproc-per-node 2 --out "$2" > "$2.log" 2>&1 \
    || { tail -5 "$2.log" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
# The checks' cost is a run with `--check-images full` less the same run with `none` (model set-up,
# rendezvous and the step are the same in both), per binary and round.
printf '| round | base full | base none | base checks | this tree full | this tree none | this tree checks |\n'
printf '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
costs_old=() costs_new=()
for r in $(seq 1 "$rounds"); do
  of=$(run "$old" "$work/old-full-$r" full); on=$(run "$old" "$work/old-none-$r" none)
  nf=$(run "$new" "$work/new-full-$r" full); nn=$(run "$new" "$work/new-none-$r" none)
  co=$(echo "$of - $on" | bc); cn=$(echo "$nf - $nn" | bc)
  costs_old+=("$co"); costs_new+=("$cn")
  printf '| %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n' "$r" "$of" "$on" "$co" "$nf" "$nn" "$cn"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
mo=$(median "${costs_old[@]}"); mn=$(median "${costs_new[@]}")
printf '\nmedian cost of the checks: base (%s, every rank checks all) %.2f s, this tree (split) %.2f s, ratio %.2f\n' \
  "$base" "$mo" "$mn" "$(echo "$mn / $mo" | bc -l)"
