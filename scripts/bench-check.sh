#!/usr/bin/env bash
# Neighbour-search benchmark for `tagfix check` (docs/PERFORMANCE.md, section "check"), tagfix and
# the Python baseline (numpy exact top-k) on the same data in the same run:
#  1. exact kNN (k=10), every row against every row, at the RAM size 4585 x 512 (REPEATS runs each);
#  2. ROWS x 512: tagfix exact top-10 of QUERIES sampled rows (the recall truth), HNSW build + query of
#     every row with recall@10 against exact on the sample, and numpy exact top-10 of the same sample.
# Data: examples/bench_check.rs's deterministic clustered unit rows (clusters of ~20, spread 0.7).
# numpy (pinned, scripts/requirements-bench-check.txt) is installed into .venv when missing.
# Usage: scripts/bench-check.sh [ROWS=100000] [QUERIES=2000] [REPEATS=5] [M EF_CONSTRUCTION EF_SEARCH]
# Cost with the default HNSW parameters (M 16 / 100 / 64) at 100 000 rows: about 11 min of CPU on 2 cores
# (40 min wall on the shared machine at load ~10); docs/PERFORMANCE.md has the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-100000}"
queries="${2:-2000}"
repeats="${3:-5}"
hnsw=("${@:4}")
dim=512
work="$(mktemp -d "${TMPDIR:-/tmp}/tagfix-bench-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT

py=.venv/bin/python
[ -x "$py" ] || python3 -m venv .venv
if ! "$py" -c 'import numpy' 2>/dev/null; then
  echo "bench: installing numpy (pinned) into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r scripts/requirements-bench-check.txt
fi

cargo build --release --no-default-features --example bench_check --quiet
bench=target/release/examples/bench_check
timing=(/usr/bin/time -f '  process: %e s wall, %U s user + %S s sys, peak RSS %M KB')

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (modified)'), $(date -u '+%F %T UTC')"

echo "== 1. exact kNN k=10, 4585 x $dim, all rows as queries ($repeats runs; load: $(cut -d' ' -f1-3 /proc/loadavg))"
"${timing[@]}" $bench ram 4585 $dim "$repeats" "$work/ram" | tee "$work/ram-tagfix.json"
"${timing[@]}" "$py" scripts/bench/check_baseline.py "$work/ram" "$repeats" | tee "$work/ram-numpy.json"

echo "== 2. $rows x $dim: HNSW build + query of every row, recall@10 vs exact on $queries sampled rows (load: $(cut -d' ' -f1-3 /proc/loadavg))"
"${timing[@]}" $bench large "$rows" $dim "$queries" "$work/large" "${hnsw[@]}" | tee "$work/large-tagfix.json"
"${timing[@]}" "$py" scripts/bench/check_baseline.py "$work/large" 1 | tee "$work/large-numpy.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
ld = lambda n: json.load(open(f"{w}/{n}.json"))
rt, rn, lt, ln = ld("ram-tagfix"), ld("ram-numpy"), ld("large-tagfix"), ld("large-numpy")
h, e = lt["hnsw"], lt["exact"]
print(f"\nexact k=10, {rt['rows']} x {rt['dim']} all-vs-all (median of {rt['repeats']}):")
print(f"  tagfix {rt['exact_wall_s_median']:.3f} s wall ({rt['exact_cpu_s_median']:.3f} s CPU) | "
      f"numpy {rn['wall_s_median']:.3f} s wall ({rn['cpu_s_median']:.3f} s CPU) | "
      f"numpy/tagfix wall {rn['wall_s_median'] / rt['exact_wall_s_median']:.2f}x | agreement {rn['agreement_with_tagfix_exact']}")
print(f"{lt['rows']} x {lt['dim']}, k=10:")
print(f"  HNSW (M {h['m']}, ef_construction {h['ef_construction']}, ef_search {h['ef_search']}): build {h['build_wall_s']:.1f} s "
      f"({h['build_cpu_s']:.1f} s CPU), query {h['queries']} rows {h['query_wall_s']:.1f} s ({h['query_cpu_s']:.1f} s CPU, "
      f"{h['queries_per_s']:.0f}/s), recall@10 {h['recall_at_10']:.4f} on {h['recall_sample']} sampled rows")
print(f"  exact, {e['queries']} sampled rows: tagfix {e['wall_s']:.2f} s ({e['queries_per_s']:.0f}/s) | "
      f"numpy {ln['wall_s_median']:.2f} s ({ln['queries_per_s']:.0f}/s), agreement {ln['agreement_with_tagfix_exact']}")
full = lt["rows"]
print(f"  every row, extrapolated from the sample: tagfix exact {full / e['queries_per_s']:.0f} s, "
      f"numpy exact {full / ln['queries_per_s']:.0f} s, HNSW build + query {h['build_wall_s'] + h['query_wall_s']:.0f} s")
PY
