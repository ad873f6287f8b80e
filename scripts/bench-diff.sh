#!/usr/bin/env bash
# Benchmark of `tagfix diff` against the Python baseline RAM's loader implies (json.load of the file,
# then counting labels: scripts/bench/diff_baseline.py), on this machine, in the same run.
#   RECORDS=1000000  records in the synthetic set (144 absent slots over the `ram` preset)
#   RUNS=3           timed runs of each command (alternating); the median is reported
#   BENCH_DIR=out/bench  where the set is generated (git-ignored; reused when present)
# Measures wall time and peak RSS with /usr/bin/time. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${RECORDS:-1000000}"
runs="${RUNS:-3}"
dir="${BENCH_DIR:-out/bench}"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py=.venv/bin/python
[ -x /usr/bin/time ] || { echo "bench-diff: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

cargo build --release --quiet
bin=target/release/tagfix
mkdir -p "$dir"
data="$dir/train_${records}_absent144.json"
if [ ! -f "$data" ]; then
  echo "bench-diff: generating $records records -> $data" >&2
  "$bin" -q synth --vocab ram --records "$records" --absent 144 --seed 1 --out "$data" >/dev/null
fi
size=$(stat -c %s "$data")

measure() { # label, command...: prints "wall_s peak_kb" and keeps the command's stdout in $dir/<label>.out
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/$label.time" "$@" >"$dir/$label.out"
  cat "$dir/$label.time"
}

tagfix_cmd=("$bin" -q diff --vocab ram --no-preset-sidecars --data "$data" --format json --out "$dir/manifest.json")
base_cmd=("$py" scripts/bench/diff_baseline.py "$data")
declare -a tw tm bw bm
for i in $(seq 1 "$runs"); do
  read -r w m < <(measure tagfix "${tagfix_cmd[@]}"); tw+=("$w"); tm+=("$m")
  read -r w m < <(measure baseline "${base_cmd[@]}"); bw+=("$w"); bm+=("$m")
  echo "run $i: tagfix ${tw[-1]} s ${tm[-1]} KB | baseline ${bw[-1]} s ${bm[-1]} KB" >&2
done

# both must agree on what they counted
tagfix_totals=$("$py" - "$dir/tagfix.out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
u = sum(s["union"] for s in r["slots"]); p = sum(s["parse"] for s in r["slots"])
print(f"records={r['summary']['records']} absent={r['summary']['absent']} union_total={u} parse_total={p}")
PY
)
base_totals=$(cat "$dir/baseline.out")
if [ "$tagfix_totals" != "$base_totals" ]; then
  echo "bench-diff: results differ: tagfix [$tagfix_totals] baseline [$base_totals]" >&2
  exit 1
fi

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
t_w=$(median "${tw[@]}"); t_m=$(median "${tm[@]}"); b_w=$(median "${bw[@]}"); b_m=$(median "${bm[@]}")
echo "data: $data ($size bytes, $records records, 144 absent slots); both report: $tagfix_totals"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median of $runs runs    wall (s)   peak RSS (MB)"
awk -v tw="$t_w" -v tm="$t_m" -v bw="$b_w" -v bm="$b_m" 'BEGIN {
  printf "tagfix diff          %8.2f   %10.1f\n", tw, tm/1024
  printf "python baseline      %8.2f   %10.1f\n", bw, bm/1024
  printf "tagfix is %.1fx faster and uses 1/%.1f of the memory\n", bw/tw, bm/tm
}'
