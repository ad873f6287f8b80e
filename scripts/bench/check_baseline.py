"""Python baseline for scripts/bench-check.sh: numpy exact top-k by cosine.

Reads PREFIX.rows.npy (f32 rows), PREFIX.queries.npy (i64 query rows) and PREFIX.truth.npy (tagfix's
exact top-k ids), normalises the rows, and times the search a numpy user would write: blocks of
queries, one matrix product against all rows (BLAS), the query row itself excluded, argpartition for
the k best, then a sort of those k. Prints one JSON line: wall and CPU seconds (median of REPEATS)
and the agreement of its ids with tagfix's.
"""

import json
import sys
import time

import numpy as np

K = 10
BLOCK = 1024


def top_k(x: np.ndarray, q_ids: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(q_ids), k), dtype=np.int64)
    for s in range(0, len(q_ids), BLOCK):
        ids = q_ids[s : s + BLOCK]
        sims = x[ids] @ x.T
        sims[np.arange(len(ids)), ids] = -np.inf  # the query row itself
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[s : s + len(ids)] = np.take_along_axis(part, order, axis=1)
    return out


def main() -> None:
    prefix, repeats = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    x = np.load(prefix + ".rows.npy")
    q_ids = np.load(prefix + ".queries.npy")
    truth = np.load(prefix + ".truth.npy")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        got = top_k(x, q_ids, K)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    agree = np.mean([len(set(a) & set(b)) / K for a, b in zip(got, truth)])
    print(
        json.dumps(
            {
                "numpy": np.__version__,
                "rows": x.shape[0],
                "dim": x.shape[1],
                "queries": len(q_ids),
                "repeats": repeats,
                "wall_s_median": round(float(np.median(walls)), 4),
                "wall_s_min": round(float(np.min(walls)), 4),
                "cpu_s_median": round(float(np.median(cpus)), 4),
                "queries_per_s": round(len(q_ids) / float(np.median(walls)), 1),
                "agreement_with_tagfix_exact": round(float(agree), 5),
            }
        )
    )


if __name__ == "__main__":
    main()
