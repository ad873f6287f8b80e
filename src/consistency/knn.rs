//! Cosine k-nearest-neighbour search over L2-normalised rows: exact (blocked matrix products with
//! `matrixmultiply`, query blocks in parallel with rayon) and approximate (HNSW, see
//! [`super::hnsw`]), with the approximate recall measured against exact search on a sample.

use super::hnsw::{HnswIndex, HnswParams};
use crate::embed::plan::{sample_controls, ControlSpec};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A borrowed row-major matrix of unit rows.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub dim: usize,
}

impl<'a> Rows<'a> {
    pub fn new(data: &'a [f32], dim: usize) -> Self {
        assert!(dim > 0 && data.len() % dim == 0);
        Rows { data, dim }
    }
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Which database row a query must not return (its own row).
#[derive(Debug, Clone, Copy)]
pub enum Exclude<'a> {
    Nothing,
    /// Query i skips database row i (queries are the database rows themselves, or aligned with them).
    SameIndex,
    /// Query i skips database row `ids[i]`.
    Given(&'a [u32]),
}

impl Exclude<'_> {
    fn of(&self, query: usize) -> u32 {
        match self {
            Exclude::Nothing => u32::MAX,
            Exclude::SameIndex => query as u32,
            Exclude::Given(ids) => ids[query],
        }
    }
}

/// `k` nearest database rows per query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    pub k: usize,
    pub ids: Vec<u32>,
    pub sims: Vec<f32>,
}

impl Neighbours {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.ids.len() / self.k.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Ids of query `q`'s neighbours, best first.
    pub fn ids(&self, q: usize) -> &[u32] {
        &self.ids[q * self.k..(q + 1) * self.k]
    }
    /// Similarities of query `q`'s neighbours, best first.
    pub fn sims(&self, q: usize) -> &[f32] {
        &self.sims[q * self.k..(q + 1) * self.k]
    }
    fn from_lists(k: usize, lists: impl IntoIterator<Item = TopK>) -> Self {
        let mut ids = Vec::new();
        let mut sims = Vec::new();
        for t in lists {
            debug_assert_eq!(t.ids.len(), k);
            ids.extend_from_slice(&t.ids);
            sims.extend_from_slice(&t.sims);
        }
        Neighbours { k, ids, sims }
    }
}

/// The best `k` (similarity, id) pairs seen so far, best first. "Better" is the higher similarity,
/// then the lower id, a total order: the result does not depend on the order candidates arrive in
/// (the parallel searches offer them in any order), even among exact ties such as duplicate rows.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    pub(crate) sims: Vec<f32>,
    pub(crate) ids: Vec<u32>,
}

/// Whether (similarity `a`, id `ia`) ranks before (`b`, `ib`).
#[inline]
fn ranks_before(a: f32, ia: u32, b: f32, ib: u32) -> bool {
    a > b || (a == b && ia < ib)
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            sims: Vec::with_capacity(k + 1),
            ids: Vec::with_capacity(k + 1),
        }
    }

    /// Similarity a candidate must reach to be considered (−∞ until the list is full).
    #[inline]
    fn floor(&self) -> f32 {
        if self.sims.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.sims[self.k - 1]
        }
    }

    /// Offers one candidate.
    #[inline]
    pub(crate) fn push(&mut self, sim: f32, id: u32) {
        if self.k == 0 {
            return;
        }
        let full = self.sims.len() == self.k;
        if full && !ranks_before(sim, id, self.sims[self.k - 1], self.ids[self.k - 1]) {
            return;
        }
        let mut pos = self.sims.len();
        while pos > 0 && ranks_before(sim, id, self.sims[pos - 1], self.ids[pos - 1]) {
            pos -= 1;
        }
        self.sims.insert(pos, sim);
        self.ids.insert(pos, id);
        self.sims.truncate(self.k);
        self.ids.truncate(self.k);
    }

    /// Offers a block of similarities for database ids `first..first + sims.len()`.
    #[inline]
    fn push_block(&mut self, sims: &[f32], first: usize, exclude: u32) {
        let mut floor = self.floor();
        for (j, &s) in sims.iter().enumerate() {
            // Nearly every similarity is below the floor: one compare, no other work.
            if s >= floor {
                let id = (first + j) as u32;
                if id != exclude {
                    self.push(s, id);
                    floor = self.floor();
                }
            }
        }
    }
}

/// Database rows per matrix product (the similarity block of one task is `query block × DB_BLOCK`).
const DB_BLOCK: usize = 1024;
/// Bounds of the query block (rows per rayon task).
const MIN_QUERY_BLOCK: usize = 64;
const MAX_QUERY_BLOCK: usize = 1024;
/// Rows per block of the self-join (every row against every row): one task is one block pair.
const SELF_BLOCK: usize = 1024;

/// Queries per rayon task. The matrix product packs the whole database once per query block, so
/// blocks are as large as possible (packing is then a few percent of the work) while still giving
/// every thread two tasks to balance the load.
fn query_block_rows(queries: usize) -> usize {
    let tasks = 2 * rayon::current_num_threads().max(1);
    queries
        .div_ceil(tasks)
        .next_multiple_of(16)
        .clamp(MIN_QUERY_BLOCK, MAX_QUERY_BLOCK)
}

/// `out = a · bᵀ` for row-major `a` (`m × dim`) and `b` (`n × dim`), `out` row-major `m × n`, with
/// `matrixmultiply`'s packed SGEMM (AVX-512/AVX2/FMA kernels chosen at run time).
fn similarity_block(a: &[f32], b: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (a.len() / dim, b.len() / dim);
    assert!(a.len() == m * dim && b.len() == n * dim && out.len() >= m * n);
    // SAFETY: A is m×dim (row stride dim, column stride 1), B = bᵀ is dim×n read from the n×dim
    // block (row stride 1, column stride dim), C is m×n (row stride n); the asserts above make
    // every slice long enough for these shapes.
    unsafe {
        matrixmultiply::sgemm(
            m,
            dim,
            n,
            1.0,
            a.as_ptr(),
            dim as isize,
            1,
            b.as_ptr(),
            1,
            dim as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Exact k nearest neighbours by cosine (dot product of unit rows): the similarity blocks `Q · Dᵀ`
/// are computed with a packed SGEMM, query blocks in parallel, and each row of a block is scanned
/// into a top-k list (one compare per similarity; nothing is allocated per pair).
///
/// When `queries` is `db` itself (the same slice) and the exclusion is `SameIndex` or `Nothing`, the
/// symmetric self-join computes each block pair once (half the arithmetic).
pub fn exact(db: Rows<'_>, queries: Rows<'_>, k: usize, exclude: Exclude<'_>) -> Neighbours {
    assert_eq!(db.dim, queries.dim, "dimension mismatch");
    if std::ptr::eq(db.data, queries.data) {
        match exclude {
            Exclude::SameIndex => return exact_self(db, k, true),
            Exclude::Nothing => return exact_self(db, k, false),
            Exclude::Given(_) => {}
        }
    }
    let dim = db.dim;
    let n_db = db.len();
    let query_block = query_block_rows(queries.len());
    let lists: Vec<Vec<TopK>> = queries
        .data
        .par_chunks(query_block * dim)
        .enumerate()
        .map(|(block, qdata)| {
            let nq = qdata.len() / dim;
            let mut tops = vec![TopK::new(k); nq];
            let mut sims = vec![0f32; nq * DB_BLOCK];
            for start in (0..n_db).step_by(DB_BLOCK) {
                let nd = DB_BLOCK.min(n_db - start);
                similarity_block(
                    qdata,
                    &db.data[start * dim..(start + nd) * dim],
                    dim,
                    &mut sims,
                );
                for (qi, top) in tops.iter_mut().enumerate() {
                    let q = block * query_block + qi;
                    top.push_block(&sims[qi * nd..(qi + 1) * nd], start, exclude.of(q));
                }
            }
            tops
        })
        .collect();
    Neighbours::from_lists(k, lists.into_iter().flatten())
}

/// Every row against every row. Rows are cut into blocks; each pair of blocks (I ≤ J) is one task
/// that computes `X_I · X_Jᵀ` once and offers its rows to I's top-k lists and its columns to J's
/// (each block's lists behind a mutex, held only while scanning). `skip_self` drops row i from
/// its own list.
fn exact_self(db: Rows<'_>, k: usize, skip_self: bool) -> Neighbours {
    let (dim, n) = (db.dim, db.len());
    let blocks = n.div_ceil(SELF_BLOCK);
    let span = |b: usize| b * SELF_BLOCK..(n).min((b + 1) * SELF_BLOCK);
    let tops: Vec<std::sync::Mutex<Vec<TopK>>> = (0..blocks)
        .map(|b| std::sync::Mutex::new(vec![TopK::new(k); span(b).len()]))
        .collect();
    let pairs: Vec<(usize, usize)> = (0..blocks)
        .flat_map(|i| (i..blocks).map(move |j| (i, j)))
        .collect();
    // Scratch per rayon split: no block is larger than the matrix.
    let side = SELF_BLOCK.min(n);
    pairs.par_iter().for_each_init(
        || (vec![0f32; side * side], Vec::with_capacity(side)),
        |(sims, floors), &(bi, bj)| {
            let (ri, rj) = (span(bi), span(bj));
            let (ni, nj) = (ri.len(), rj.len());
            similarity_block(
                &db.data[ri.start * dim..ri.end * dim],
                &db.data[rj.start * dim..rj.end * dim],
                dim,
                sims,
            );
            {
                let mut row_tops = tops[bi].lock().expect("no panics while scanning");
                for (i, top) in row_tops.iter_mut().enumerate() {
                    let own = if skip_self {
                        (ri.start + i) as u32
                    } else {
                        u32::MAX
                    };
                    top.push_block(&sims[i * nj..(i + 1) * nj], rj.start, own);
                }
            }
            if bi != bj {
                // Columns: row i of the block is a candidate for every row j of block J.
                let mut col_tops = tops[bj].lock().expect("no panics while scanning");
                floors.clear();
                floors.extend(col_tops.iter().map(TopK::floor));
                for i in 0..ni {
                    let id = (ri.start + i) as u32;
                    for (j, &s) in sims[i * nj..(i + 1) * nj].iter().enumerate() {
                        if s >= floors[j] {
                            col_tops[j].push(s, id);
                            floors[j] = col_tops[j].floor();
                        }
                    }
                }
            }
        },
    );
    Neighbours::from_lists(
        k,
        tops.into_iter()
            .flat_map(|m| m.into_inner().expect("no panics while scanning")),
    )
}

/// How neighbours are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SearchChoice {
    /// Exact up to [`AUTO_EXACT_MAX_ROWS`] database rows, HNSW above.
    #[default]
    #[value(help = "Exact up to 500 000 database rows, HNSW above")]
    Auto,
    Exact,
    Hnsw,
}

/// Largest database that `auto` searches exactly. Exact all-against-all search costs rows² × dim, HNSW
/// about rows × (build + query cost). At RAM++'s per-description layout (233 835 × 512) the exact
/// self-join took 328 s CPU on the project's 2-core machine, HNSW with the default graph 1127 s
/// (build and query of every row; docs/PERFORMANCE.md), so exact stays cheaper up to about 800 000
/// rows by extrapolation; the switch sits below that, at 500 000 (a RAM vocabulary has 4585 rows).
pub const AUTO_EXACT_MAX_ROWS: usize = 500_000;

/// The search actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMethod {
    Exact,
    Hnsw,
}

impl SearchChoice {
    pub fn resolve(self, db_rows: usize) -> SearchMethod {
        match self {
            SearchChoice::Exact => SearchMethod::Exact,
            SearchChoice::Hnsw => SearchMethod::Hnsw,
            SearchChoice::Auto if db_rows > AUTO_EXACT_MAX_ROWS => SearchMethod::Hnsw,
            SearchChoice::Auto => SearchMethod::Exact,
        }
    }
}

/// Search settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchConfig {
    pub choice: SearchChoice,
    pub hnsw: HnswParams,
    /// Queries sampled to measure HNSW recall@k against exact search.
    pub recall_sample: usize,
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            choice: SearchChoice::Auto,
            hnsw: HnswParams::default(),
            recall_sample: 1000,
            seed: 0x007a_6f1c,
        }
    }
}

/// What one search cost and how good it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchStats {
    pub method: SearchMethod,
    pub database_rows: usize,
    pub queries: usize,
    pub k: usize,
    pub build_seconds: f64,
    pub query_seconds: f64,
    /// Mean recall@k of HNSW against exact search over `recall_sample` sampled queries (1 for exact).
    pub recall: f64,
    pub recall_sample: usize,
}

/// A database prepared for repeated queries.
pub struct Index<'a> {
    db: Rows<'a>,
    hnsw: Option<HnswIndex>,
    build_seconds: f64,
    config: SearchConfig,
}

impl<'a> Index<'a> {
    /// Prepares `db` for search: builds an HNSW graph when the configuration asks for one.
    pub fn build(db: Rows<'a>, config: &SearchConfig) -> Self {
        let t = Instant::now();
        let hnsw = match config.choice.resolve(db.len()) {
            SearchMethod::Exact => None,
            SearchMethod::Hnsw => Some(HnswIndex::build(db, &config.hnsw)),
        };
        Index {
            db,
            hnsw,
            build_seconds: t.elapsed().as_secs_f64(),
            config: config.clone(),
        }
    }

    pub fn method(&self) -> SearchMethod {
        if self.hnsw.is_some() {
            SearchMethod::Hnsw
        } else {
            SearchMethod::Exact
        }
    }

    /// k nearest database rows for each query, with timing and (for HNSW) recall measured on a
    /// seeded sample of the queries.
    pub fn search(
        &self,
        queries: Rows<'_>,
        k: usize,
        exclude: Exclude<'_>,
    ) -> (Neighbours, SearchStats) {
        let t = Instant::now();
        let (result, recall, sample) = match &self.hnsw {
            None => (exact(self.db, queries, k, exclude), 1.0, 0),
            Some(h) => {
                let got = h.search(queries, k, exclude);
                let (recall, sample) = self.measure_recall(queries, k, exclude, &got);
                (got, recall, sample)
            }
        };
        let stats = SearchStats {
            method: self.method(),
            database_rows: self.db.len(),
            queries: queries.len(),
            k,
            build_seconds: self.build_seconds,
            query_seconds: t.elapsed().as_secs_f64(),
            recall,
            recall_sample: sample,
        };
        (result, stats)
    }

    fn measure_recall(
        &self,
        queries: Rows<'_>,
        k: usize,
        exclude: Exclude<'_>,
        got: &Neighbours,
    ) -> (f64, usize) {
        let picks = sample_indices(queries.len(), self.config.recall_sample, self.config.seed);
        if picks.is_empty() {
            return (1.0, 0);
        }
        let mut data = Vec::with_capacity(picks.len() * queries.dim);
        let mut excl = Vec::with_capacity(picks.len());
        for &q in &picks {
            data.extend_from_slice(queries.row(q));
            excl.push(exclude.of(q));
        }
        let truth = exact(
            self.db,
            Rows::new(&data, queries.dim),
            k,
            Exclude::Given(&excl),
        );
        let hits: usize = picks
            .iter()
            .enumerate()
            .map(|(i, &q)| intersection(truth.ids(i), got.ids(q)))
            .sum();
        (hits as f64 / (picks.len() * k) as f64, picks.len())
    }
}

/// Size of the intersection of two short id lists.
pub fn intersection(a: &[u32], b: &[u32]) -> usize {
    a.iter().filter(|x| b.contains(x)).count()
}

/// `n` distinct indices below `len`, ascending, from a seeded sample (all indices when `n >= len`).
pub fn sample_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let all: Vec<usize> = (0..len).collect();
    sample_controls(&all, ControlSpec::Count(n.min(len)), seed).expect("n <= len")
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{dot, normalised_rows};
    use super::*;

    fn random_unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64(seed);
        let v: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
        normalised_rows(&v, dim)
    }

    /// Brute force, one dot product at a time, sorted by (similarity desc, id asc).
    fn brute(db: &[f32], q: &[f32], dim: usize, k: usize, skip: u32) -> Vec<u32> {
        let mut all: Vec<(f32, u32)> = db
            .chunks(dim)
            .enumerate()
            .filter(|(i, _)| *i as u32 != skip)
            .map(|(i, r)| (dot(r, q), i as u32))
            .collect();
        all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|x| x.1).collect()
    }

    /// The symmetric self-join (queries = the database slice itself, each skipping its own row) and
    /// the general path (queries = a copy, with the given exclusion).
    fn both_paths(
        db: &[f32],
        dim: usize,
        k: usize,
        general: Exclude<'_>,
    ) -> (Neighbours, Neighbours) {
        let copy = db.to_vec();
        let rows = Rows::new(db, dim);
        (
            exact(rows, rows, k, Exclude::SameIndex),
            exact(rows, Rows::new(&copy, dim), k, general),
        )
    }

    #[test]
    fn exact_equals_brute_force_across_block_edges() {
        // 1300 rows: two self-join blocks (1024) and several query blocks (64..1024 rows each).
        let (n, dim, k) = (1300, 24, 7);
        let db = random_unit_rows(n, dim, 1);
        let identity: Vec<u32> = (0..n as u32).collect();
        let (joined, general) = both_paths(&db, dim, k, Exclude::Given(&identity));
        assert_eq!(joined.len(), n);
        for q in 0..n {
            let want = brute(&db, &db[q * dim..(q + 1) * dim], dim, k, q as u32);
            for nb in [&joined, &general] {
                // Similarities computed by SGEMM and by dot() may differ in the last bit, so
                // compare sets where near-ties could swap order.
                assert_eq!(intersection(nb.ids(q), &want), k, "query {q}");
                assert!(!nb.ids(q).contains(&(q as u32)), "self excluded");
                assert!(nb.sims(q).windows(2).all(|w| w[0] >= w[1]));
                for (&id, &sim) in nb.ids(q).iter().zip(nb.sims(q)) {
                    let d = dot(&db[id as usize * dim..][..dim], &db[q * dim..][..dim]);
                    assert!((sim - d).abs() < 1e-5, "query {q} id {id}: {sim} vs {d}");
                }
            }
            assert_eq!(intersection(joined.ids(q), general.ids(q)), k, "query {q}");
        }
    }

    #[test]
    fn self_join_without_exclusion_finds_each_row_first() {
        let (n, dim) = (300, 16);
        let db = random_unit_rows(n, dim, 3);
        let nb = exact(
            Rows::new(&db, dim),
            Rows::new(&db, dim),
            3,
            Exclude::Nothing,
        );
        for q in 0..n {
            assert_eq!(nb.ids(q)[0], q as u32);
            assert!((nb.sims(q)[0] - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn duplicate_rows_tie_in_id_order_whatever_the_path() {
        // 1100 rows = 11 distinct vectors, each repeated 100 times (spread over both self-join
        // blocks): every query's neighbours are exact ties, listed by ascending id.
        let (dim, k) = (8, 5);
        let distinct = random_unit_rows(11, dim, 4);
        let db: Vec<f32> = (0..1100)
            .flat_map(|i| distinct[(i % 11) * dim..][..dim].to_vec())
            .collect();
        let twins = |q: usize, skip_self: bool| -> Vec<u32> {
            (0..1100u32)
                .filter(|&i| i as usize % 11 == q % 11 && !(skip_self && i as usize == q))
                .take(k)
                .collect()
        };
        let (joined, general) = both_paths(&db, dim, k, Exclude::Nothing);
        for q in [0usize, 5, 11, 600, 1099] {
            assert_eq!(joined.ids(q), &twins(q, true)[..], "query {q}");
            assert_eq!(general.ids(q), &twins(q, false)[..], "query {q}");
        }
    }

    #[test]
    fn topk_keeps_best_and_breaks_ties_by_lower_id_in_any_order() {
        let offers = [
            (0.1, 0),
            (0.9, 1),
            (0.5, 2),
            (0.9, 3),
            (0.2, 4),
            (0.95, 5),
            (0.9, 0),
        ];
        let mut reversed = offers;
        reversed.reverse();
        for order in [offers, reversed] {
            let mut t = TopK::new(3);
            for (s, id) in order {
                t.push(s, id);
            }
            assert_eq!(t.ids, vec![5, 0, 1]);
            assert_eq!(t.sims, vec![0.95, 0.9, 0.9]);
        }
    }

    #[test]
    fn sampling_is_seeded_distinct_and_bounded() {
        let a = sample_indices(1000, 50, 9);
        assert_eq!(a, sample_indices(1000, 50, 9));
        assert_ne!(a, sample_indices(1000, 50, 10));
        let mut d = a.clone();
        d.dedup();
        assert_eq!(d.len(), 50);
        assert!(a.iter().all(|&i| i < 1000));
        assert_eq!(sample_indices(5, 50, 1), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn auto_picks_exact_for_ram_size_and_hnsw_for_large() {
        assert_eq!(SearchChoice::Auto.resolve(4585), SearchMethod::Exact);
        assert_eq!(SearchChoice::Auto.resolve(233_835), SearchMethod::Exact);
        assert_eq!(SearchChoice::Auto.resolve(500_000), SearchMethod::Exact);
        assert_eq!(SearchChoice::Auto.resolve(500_001), SearchMethod::Hnsw);
        assert_eq!(SearchChoice::Hnsw.resolve(10), SearchMethod::Hnsw);
    }
}
