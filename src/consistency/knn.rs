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

/// The best `k` (similarity, id) pairs seen so far, sorted descending.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    pub(crate) sims: Vec<f32>,
    pub(crate) ids: Vec<u32>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            sims: Vec::with_capacity(k + 1),
            ids: Vec::with_capacity(k + 1),
        }
    }

    #[inline]
    fn floor(&self) -> f32 {
        if self.sims.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.sims[self.k - 1]
        }
    }

    /// Offers one candidate. Ties keep the earlier (lower) id, so results are deterministic.
    #[inline]
    pub(crate) fn push(&mut self, sim: f32, id: u32) {
        if self.k == 0 || sim <= self.floor() {
            return;
        }
        let mut pos = self.sims.len();
        while pos > 0 && self.sims[pos - 1] < sim {
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
        for (j, &s) in sims.iter().enumerate() {
            if s > self.floor() {
                let id = (first + j) as u32;
                if id != exclude {
                    self.push(s, id);
                }
            }
        }
    }
}

/// Queries per block (one rayon task) and database rows per matrix product.
const QUERY_BLOCK: usize = 128;
const DB_BLOCK: usize = 1024;

/// Exact k nearest neighbours by cosine (dot product of unit rows): for each block of queries, the
/// similarity block `Q · Dᵀ` is computed with a packed SGEMM and scanned into a top-k list.
pub fn exact(db: Rows<'_>, queries: Rows<'_>, k: usize, exclude: Exclude<'_>) -> Neighbours {
    assert_eq!(db.dim, queries.dim, "dimension mismatch");
    let dim = db.dim;
    let n_db = db.len();
    let lists: Vec<Vec<TopK>> = queries
        .data
        .par_chunks(QUERY_BLOCK * dim)
        .enumerate()
        .map(|(block, qdata)| {
            let nq = qdata.len() / dim;
            let mut tops = vec![TopK::new(k); nq];
            let mut sims = vec![0f32; nq * DB_BLOCK];
            for start in (0..n_db).step_by(DB_BLOCK) {
                let nd = DB_BLOCK.min(n_db - start);
                let d = &db.data[start * dim..(start + nd) * dim];
                // SAFETY: A is nq×dim (row stride dim), B = Dᵀ is dim×nd read from the nd×dim block
                // (row stride 1, column stride dim), C is nq×nd (row stride nd); all slices are long
                // enough for these shapes.
                unsafe {
                    matrixmultiply::sgemm(
                        nq,
                        dim,
                        nd,
                        1.0,
                        qdata.as_ptr(),
                        dim as isize,
                        1,
                        d.as_ptr(),
                        1,
                        dim as isize,
                        0.0,
                        sims.as_mut_ptr(),
                        nd as isize,
                        1,
                    );
                }
                for (qi, top) in tops.iter_mut().enumerate() {
                    let q = block * QUERY_BLOCK + qi;
                    top.push_block(&sims[qi * nd..(qi + 1) * nd], start, exclude.of(q));
                }
            }
            tops
        })
        .collect();
    Neighbours::from_lists(k, lists.into_iter().flatten())
}

/// How neighbours are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SearchChoice {
    Exact,
    Hnsw,
    /// Exact up to [`AUTO_EXACT_MAX_ROWS`] database rows, HNSW above.
    #[default]
    Auto,
}

/// Largest database that `auto` searches exactly (a RAM vocabulary has 4585 rows; RAM++'s per-description
/// layout has 233 835, where HNSW pays off).
pub const AUTO_EXACT_MAX_ROWS: usize = 50_000;

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
            seed: 0x7a6f_1c,
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

    #[test]
    fn exact_equals_brute_force_across_block_edges() {
        // 1300 rows: crosses one database block (1024) and ten query blocks (128).
        let (n, dim, k) = (1300, 24, 7);
        let db = random_unit_rows(n, dim, 1);
        let nb = exact(
            Rows::new(&db, dim),
            Rows::new(&db, dim),
            k,
            Exclude::SameIndex,
        );
        for q in [0, 1, 127, 128, 1023, 1024, 1299] {
            let want = brute(&db, &db[q * dim..(q + 1) * dim], dim, k, q as u32);
            // Similarities computed by SGEMM and by dot() may differ in the last bit, so compare sets
            // where near-ties could swap order.
            assert_eq!(intersection(nb.ids(q), &want), k, "query {q}");
            assert!(!nb.ids(q).contains(&(q as u32)), "self excluded");
            assert!(nb.sims(q).windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn topk_keeps_best_and_breaks_ties_by_lower_id() {
        let mut t = TopK::new(3);
        for (s, id) in [(0.1, 0), (0.9, 1), (0.5, 2), (0.9, 3), (0.2, 4), (0.95, 5)] {
            t.push(s, id);
        }
        assert_eq!(t.ids, vec![5, 1, 3]);
        assert_eq!(t.sims, vec![0.95, 0.9, 0.9]);
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
        assert_eq!(SearchChoice::Auto.resolve(233_835), SearchMethod::Hnsw);
        assert_eq!(SearchChoice::Hnsw.resolve(10), SearchMethod::Hnsw);
    }
}
