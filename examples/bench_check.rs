//! Neighbour-search benchmark for `tagfix check` (run by scripts/bench-check.sh; figures in
//! docs/PERFORMANCE.md). Data: the deterministic clustered generator (`synthetic::clustered`,
//! clusters of ~20 rows, spread 0.7, seed 42), unit rows. Prints one JSON line per run.
//!
//! ```text
//! bench_check ram   ROWS DIM REPEATS OUT            # exact k=10, every row against every row
//! bench_check large ROWS DIM QUERIES OUT [M EF_CONSTRUCTION EF_SEARCH]
//!                                                   # exact k=10 of QUERIES sampled rows, then
//!                                                   # HNSW build + query of every row, recall@10
//! ```
//!
//! Both write `OUT.rows.npy` (f32 rows), `OUT.queries.npy` (i64 query rows) and `OUT.truth.npy`
//! (i64 exact top-10 ids, self excluded) for the numpy baseline (scripts/bench/check_baseline.py)
//! to time the same search and check its answer against.

use cpu_time::ProcessTime;
use std::path::Path;
use std::time::Instant;
use tagfix::consistency::hnsw::{HnswIndex, HnswParams};
use tagfix::consistency::knn::{exact, intersection, sample_indices, Exclude, Neighbours, Rows};
use tagfix::consistency::synthetic::clustered;
use tagfix::tensors::{npy, DType, Tensor};

#[path = "common/stats.rs"]
mod stats;
use stats::median;

const K: usize = 10;

/// Wall and CPU (user + system, all threads) seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (wall, cpu) = (Instant::now(), ProcessTime::now());
    let out = f();
    (
        out,
        wall.elapsed().as_secs_f64(),
        cpu.elapsed().as_secs_f64(),
    )
}

fn write_ids(path: &str, ids: impl Iterator<Item = usize>, shape_tail: Option<usize>) {
    let ids: Vec<i64> = ids.map(|i| i as i64).collect();
    let shape = match shape_tail {
        Some(k) => vec![ids.len() / k, k],
        None => vec![ids.len()],
    };
    let bytes = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    npy::write(
        Path::new(path),
        &Tensor::new(DType::I64, shape, bytes).unwrap(),
    )
    .unwrap();
}

fn write_inputs(out: &str, data: &[f32], dim: usize, queries: &[usize], truth: &Neighbours) {
    let rows = data.len() / dim;
    npy::write(
        Path::new(&format!("{out}.rows.npy")),
        &Tensor::from_f32(vec![rows, dim], data).unwrap(),
    )
    .unwrap();
    write_ids(&format!("{out}.queries.npy"), queries.iter().copied(), None);
    write_ids(
        &format!("{out}.truth.npy"),
        truth.ids.iter().map(|&i| i as usize),
        Some(K),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let mode = args.first().map(String::as_str).unwrap_or("");
    let (rows, dim) = (num(1, 4585), num(2, 512));
    let out = args.get(4).expect("OUT prefix").clone();
    let threads = rayon::current_num_threads();
    let (data, gen_s, _) = timed(|| clustered(rows, dim, 20, 0.7, 42));
    let db = Rows::new(&data, dim);

    match mode {
        "ram" => {
            // The path `tagfix check` takes when every row is compared: the symmetric self-join.
            let repeats = num(3, 5).max(1);
            let (mut walls, mut cpus) = (Vec::new(), Vec::new());
            let mut truth = None;
            for _ in 0..repeats {
                let (nb, w, c) = timed(|| exact(db, db, K, Exclude::SameIndex));
                walls.push(w);
                cpus.push(c);
                truth = Some(nb);
            }
            let all: Vec<usize> = (0..rows).collect();
            write_inputs(&out, &data, dim, &all, truth.as_ref().unwrap());
            let min_wall = walls.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{{\"mode\":\"ram\",\"rows\":{rows},\"dim\":{dim},\"k\":{K},\"threads\":{threads},\"repeats\":{repeats},\
                 \"exact_wall_s_median\":{:.4},\"exact_wall_s_min\":{min_wall:.4},\"exact_cpu_s_median\":{:.4},\"generate_s\":{gen_s:.3}}}",
                median(walls),
                median(cpus)
            );
        }
        "large" => {
            let queries = num(3, 2000);
            let d = HnswParams::default();
            let params = HnswParams {
                max_connections: num(5, d.max_connections),
                ef_construction: num(6, d.ef_construction),
                ef_search: num(7, d.ef_search),
            };
            // Exact top-10 of a seeded sample of rows (the general query path), the recall truth.
            let picks = sample_indices(rows, queries, 7);
            let qdata: Vec<f32> = picks.iter().flat_map(|&q| db.row(q).to_vec()).collect();
            let excl: Vec<u32> = picks.iter().map(|&q| q as u32).collect();
            let (truth, exact_wall, exact_cpu) =
                timed(|| exact(db, Rows::new(&qdata, dim), K, Exclude::Given(&excl)));
            write_inputs(&out, &data, dim, &picks, &truth);

            let (index, build_wall, build_cpu) = timed(|| HnswIndex::build(db, &params));
            let (all, query_wall, query_cpu) = timed(|| index.search(db, K, Exclude::SameIndex));
            let hits: usize = picks
                .iter()
                .enumerate()
                .map(|(i, &q)| intersection(truth.ids(i), all.ids(q)))
                .sum();
            let recall = hits as f64 / (picks.len() * K) as f64;
            let n = picks.len() as f64;
            println!(
                "{{\"mode\":\"large\",\"rows\":{rows},\"dim\":{dim},\"k\":{K},\"threads\":{threads},\
                 \"exact\":{{\"queries\":{},\"wall_s\":{exact_wall:.3},\"cpu_s\":{exact_cpu:.3},\"queries_per_s\":{:.1},\"all_rows_wall_s_extrapolated\":{:.1}}},\
                 \"hnsw\":{{\"m\":{},\"ef_construction\":{},\"ef_search\":{},\"build_wall_s\":{build_wall:.2},\"build_cpu_s\":{build_cpu:.2},\
                 \"queries\":{rows},\"query_wall_s\":{query_wall:.2},\"query_cpu_s\":{query_cpu:.2},\"queries_per_s\":{:.1},\
                 \"recall_at_10\":{recall:.4},\"recall_sample\":{}}},\"generate_s\":{gen_s:.3}}}",
                picks.len(),
                n / exact_wall,
                exact_wall * rows as f64 / n,
                params.max_connections,
                params.ef_construction,
                params.ef_search,
                rows as f64 / query_wall,
                picks.len()
            );
        }
        _ => {
            eprintln!("usage: bench_check ram ROWS DIM REPEATS OUT | large ROWS DIM QUERIES OUT [M EF_CONSTRUCTION EF_SEARCH]");
            std::process::exit(2);
        }
    }
}
