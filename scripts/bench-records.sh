#!/usr/bin/env bash
# Peak memory of `train`'s record loading and wall time of `tagfix diff` on a 1M-record RAM-format
# file, before (BASE, default main) and after (this checkout), measured in the same run.
#   RECORDS=1000000   records in the set (`tagfix synth --vocab ram`: image path, 1-3 captions,
#                     ~7 tags from the RAM vocabulary, one parse_label_id list per caption)
#   RUNS=3            timed runs of each command (before and after alternating); medians reported
#   BASE=main         the revision measured as "before" (a detached worktree, reused)
#   BENCH_DIR=out/bench-records  data, worktree, binaries (git-ignored)
#   BASE_TARGET_DIR   cargo target folder for the base build (default BENCH_DIR/base-target)
#   FEATURES          cargo features of both builds (default none: record reading needs none)
#   SKIP_BUILD=1      measure the binaries already in BENCH_DIR/{before,after} (tagfix, read_records)
#   CAPTIONS=1        record loading keeps every record's captions too
# "train's record loading" is examples/read_records.rs: `RecordSet::read(FILE, 4585)`, the call
# `tagfix train` makes before it touches libtorch (CAPTIONS=1: with every caption kept, as `tagfix
# teacher` and the online teacher read them); both revisions build this tree's copy of the example and
# must print the same fingerprint.
# Measures with /usr/bin/time (wall seconds, peak RSS). Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${RECORDS:-1000000}"
runs="${RUNS:-3}"
base="${BASE:-main}"
dir="${BENCH_DIR:-out/bench-records}"
features=(--no-default-features)
[ -n "${FEATURES:-}" ] && features=(--features "$FEATURES")
[ -x /usr/bin/time ] || { echo "bench-records: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
mkdir -p "$dir/before" "$dir/after"
dir="$(cd "$dir" && pwd)"
base_tree="$dir/base-tree"
# Absolute: the base builds from inside its worktree.
base_target="$(mkdir -p "${BASE_TARGET_DIR:-$dir/base-target}" && cd "${BASE_TARGET_DIR:-$dir/base-target}" && pwd)"

build() { # tree, target dir, destination: builds tagfix and the example, copies both to the destination
  (cd "$1" && CARGO_TARGET_DIR="$2" cargo build --release --quiet "${features[@]}" --bin tagfix --example read_records)
  cp "$2/release/tagfix" "$2/release/examples/read_records" "$3/"
}
if [ -z "${SKIP_BUILD:-}" ]; then
  [ -d "$base_tree" ] || git worktree add --detach "$base_tree" "$base"
  git -C "$base_tree" checkout --quiet --force --detach "$base"  # drops the example copied in last time
  # Both sides build this tree's example (it calls only API every revision has).
  cp examples/read_records.rs "$base_tree/examples/read_records.rs"
  build "$base_tree" "$base_target" "$dir/before"
  build . "${CARGO_TARGET_DIR:-$PWD/target}" "$dir/after"
fi

data="$dir/train_${records}.json"
if [ ! -f "$data" ]; then
  echo "bench-records: generating $records records -> $data" >&2
  "$dir/before/tagfix" -q synth --vocab ram --records "$records" --absent 144 --seed 1 --out "$data" >/dev/null
fi

measure() { # label, command...: prints "wall_s peak_kb"; keeps stdout in $dir/<label>.out
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/$label.time" "$@" >"$dir/$label.out"
  cat "$dir/$label.time"
}
declare -A wall rss
for i in $(seq 1 "$runs"); do
  for side in before after; do
    read -r w m < <(measure "$side-records" "$dir/$side/read_records" ${CAPTIONS:+--captions} 4585 "$data")
    wall[$side-records]+="$w "; rss[$side-records]+="$m "
    line="run $i $side: record loading $w s $m KB"
    read -r w m < <(measure "$side-diff" "$dir/$side/tagfix" -q diff --vocab ram --no-preset-sidecars \
      --data "$data" --format json --out "$dir/$side-manifest.json")
    wall[$side-diff]+="$w "; rss[$side-diff]+="$m "
    echo "$line | diff $w s $m KB" >&2
  done
done
# both revisions must read and count the same
cmp -s "$dir/before-records.out" "$dir/after-records.out" || { echo "bench-records: record loading differs" >&2; exit 1; }
cmp -s "$dir/before-diff.out" "$dir/after-diff.out" || { echo "bench-records: diff reports differ" >&2; exit 1; }

median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "data: $data ($(stat -c %s "$data") bytes); $(cat "$dir/after-records.out")"
echo "before: $base ($(git rev-parse --short "$base")); after: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes')"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median of $runs runs                before wall / peak     after wall / peak"
for what in records diff; do
  printf '%-32s %8.2f s %7.1f MB   %8.2f s %7.1f MB\n' \
    "$([ $what = records ] && echo "train's record loading" || echo "tagfix diff")" \
    "$(median "${wall[before-$what]}")" "$(echo "$(median "${rss[before-$what]}") / 1024" | bc -l)" \
    "$(median "${wall[after-$what]}")" "$(echo "$(median "${rss[after-$what]}") / 1024" | bc -l)"
done
