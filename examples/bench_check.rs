//! Neighbour-search benchmark for `tagfix check` (run by scripts/bench-check.sh):
//! exact blocked kNN and HNSW on a deterministic clustered set, recall@k of HNSW against exact.
//!
//! `cargo run --release --example bench_check -- ROWS DIM QUERIES [NPY_OUT [M EF_CONSTRUCTION EF_SEARCH]]`
//! prints one JSON line; with NPY_OUT also writes the rows and the exact top-k ids of the sampled
//! queries (for the numpy baseline to check its answer against).

use std::time::Instant;
use tagfix::consistency::hnsw::{HnswIndex, HnswParams};
use tagfix::consistency::knn::{exact, intersection, sample_indices, Exclude, Rows};
use tagfix::consistency::synthetic::clustered;
use tagfix::tensors::{npy, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("number"));
    let (rows, dim, queries, k) = (arg(0, 100_000), arg(1, 512), arg(2, 2000), 10);
    let npy_out = args.get(3).filter(|s| s.as_str() != "-");

    let t = Instant::now();
    let data = clustered(rows, dim, 20, 0.7, 42);
    let gen_s = t.elapsed().as_secs_f64();
    let db = Rows::new(&data, dim);

    // Exact: every row against every row when `queries` >= rows, else a seeded sample of queries.
    let picks = sample_indices(rows, queries, 7);
    let qdata: Vec<f32> = picks
        .iter()
        .flat_map(|&q| db.row(q).iter().copied())
        .collect();
    let excl: Vec<u32> = picks.iter().map(|&q| q as u32).collect();
    let t = Instant::now();
    let truth = exact(db, Rows::new(&qdata, dim), k, Exclude::Given(&excl));
    let exact_s = t.elapsed().as_secs_f64();

    let d = HnswParams::default();
    let params = HnswParams {
        max_connections: arg(4, d.max_connections),
        ef_construction: arg(5, d.ef_construction),
        ef_search: arg(6, d.ef_search),
    };
    let t = Instant::now();
    let index = HnswIndex::build(db, &params);
    let build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let all = index.search(db, k, Exclude::SameIndex);
    let query_s = t.elapsed().as_secs_f64();
    let hits: usize = picks
        .iter()
        .enumerate()
        .map(|(i, &q)| intersection(truth.ids(i), all.ids(q)))
        .sum();
    let recall = hits as f64 / (picks.len() * k) as f64;

    if let Some(out) = npy_out {
        npy::write(
            out.as_ref(),
            &Tensor::from_f32(vec![rows, dim], &data).unwrap(),
        )
        .unwrap();
        let ids: Vec<f32> = truth.ids.iter().map(|&i| i as f32).collect();
        let qpath = format!("{out}.queries.npy");
        let picks_f: Vec<f32> = picks.iter().map(|&i| i as f32).collect();
        npy::write(
            qpath.as_ref(),
            &Tensor::from_f32(vec![picks.len()], &picks_f).unwrap(),
        )
        .unwrap();
        let tpath = format!("{out}.truth.npy");
        npy::write(
            tpath.as_ref(),
            &Tensor::from_f32(vec![picks.len(), k], &ids).unwrap(),
        )
        .unwrap();
    }
    println!(
        "{{\"rows\":{rows},\"dim\":{dim},\"k\":{k},\"exact_queries\":{},\"generate_s\":{gen_s:.3},\"exact_s\":{exact_s:.3},\"exact_queries_per_s\":{:.1},\"hnsw\":{{\"m\":{},\"ef_construction\":{},\"ef_search\":{},\"build_s\":{build_s:.3},\"query_s\":{query_s:.3},\"queries\":{rows},\"recall_at_10\":{recall:.4}}},\"threads\":{}}}",
        picks.len(),
        picks.len() as f64 / exact_s,
        params.max_connections,
        params.ef_construction,
        params.ef_search,
        rayon::current_num_threads()
    );
}
