#!/usr/bin/env bash
# Neighbour-search benchmark for `tagfix check` (docs/PERFORMANCE.md, section "check"):
#  1. exact kNN (k=10), every row against every row, at the RAM size 4585 x 512;
#  2. 100k x 512 (deterministic clustered set): HNSW build + query of all rows, recall@10 against
#     exact search on QUERIES sampled rows, exact search on those rows;
#  3. the Python baseline in the same run: numpy exact top-10 (matrix product + argpartition) of the
#     same sampled rows over the same 100k rows, from a separate venv (numpy from PyPI).
# Usage: scripts/bench-check.sh [ROWS] [QUERIES]
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-100000}"
queries="${2:-2000}"
dim=512
work="${TMPDIR:-/tmp}/tagfix-bench-check"
mkdir -p "$work"

cargo build --release --example bench_check --quiet
bench=target/release/examples/bench_check

echo "== exact kNN, RAM size (4585 x $dim, all rows as queries)"
$bench 4585 $dim 4585 - | tee "$work/ram.json"

echo "== HNSW vs exact, $rows x $dim ($queries sampled queries for recall and exact timing)"
$bench "$rows" $dim "$queries" "$work/rows.npy" | tee "$work/large.json"

venv="$work/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "numpy==2.2.6"
fi
echo "== numpy exact top-10 (same rows, same sampled queries)"
OMP_NUM_THREADS="$(nproc)" "$venv/bin/python" - "$work/rows.npy" <<'PY'
import json, sys, time
import numpy as np
path = sys.argv[1]
x = np.load(path)
q_ids = np.load(path + ".queries.npy").astype(np.int64)
truth = np.load(path + ".truth.npy").astype(np.int64)
x /= np.linalg.norm(x, axis=1, keepdims=True)
k = 10
t = time.perf_counter()
out = np.empty((len(q_ids), k), dtype=np.int64)
for s in range(0, len(q_ids), 256):
    ids = q_ids[s:s + 256]
    sims = x[ids] @ x.T
    sims[np.arange(len(ids)), ids] = -np.inf          # exclude the row itself
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
    out[s:s + len(ids)] = np.take_along_axis(part, order, axis=1)
dt = time.perf_counter() - t
agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(out, truth)])
print(json.dumps({"numpy": np.__version__, "rows": x.shape[0], "dim": x.shape[1], "queries": len(q_ids),
                  "exact_s": round(dt, 3), "exact_queries_per_s": round(len(q_ids) / dt, 1),
                  "agreement_with_tagfix_exact": round(float(agree), 4)}))
PY
