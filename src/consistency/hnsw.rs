//! Approximate neighbour search with an HNSW graph (`hnsw_rs`) for large vocabularies
//! (open-vocabulary lists of 10^5–10^6 rows, RAM++'s per-description layout).

use super::kernels::dot;
use super::knn::{Exclude, Neighbours, Rows, TopK};
use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Graph parameters (see the HNSW paper: M, efConstruction, efSearch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node and layer (M).
    pub max_connections: usize,
    /// Candidate list while inserting (at most the number of rows: a longer list finds nothing more).
    pub ef_construction: usize,
    /// Candidate list while searching (raised to at least k + 1, at most the number of rows).
    pub ef_search: usize,
}

/// Defaults: recall@10 0.9997 against exact search at 100 000 × 512 clustered rows (2000 sampled rows;
/// docs/PERFORMANCE.md, check run 2); lower values build faster at some recall.
impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            max_connections: 16,
            ef_construction: 100,
            ef_search: 64,
        }
    }
}

/// Cosine distance of unit rows, `1 − a·b`, clamped at 0 (rounding can push a self-match past 1).
#[derive(Debug, Clone, Copy, Default)]
struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// An HNSW graph over a database of unit rows (the graph keeps its own copy of the rows).
pub struct HnswIndex {
    graph: Hnsw<'static, f32, UnitCosine>,
    ef_search: usize,
    /// Rows in the graph: the longest useful candidate list.
    rows: usize,
}

impl HnswIndex {
    /// Builds the graph, inserting rows in parallel.
    pub fn build(db: Rows<'_>, params: &HnswParams) -> Self {
        let n = db.len();
        let layers = 16;
        // The crate sizes its candidate heap by ef: an ef above the row count only costs memory (and
        // `--hnsw-ef-construction 18446744073709551615` overflowed the allocation).
        let graph = Hnsw::new(
            params.max_connections,
            n,
            layers,
            params.ef_construction.clamp(1, n.max(1)),
            UnitCosine,
        );
        let items: Vec<(&[f32], usize)> = (0..n).map(|i| (db.row(i), i)).collect();
        graph.parallel_insert_slice(&items);
        HnswIndex {
            graph,
            ef_search: params.ef_search,
            rows: n,
        }
    }

    /// k approximate nearest neighbours per query (one extra is fetched so the excluded row can be
    /// dropped). Missing results (tiny graphs) are filled with id `u32::MAX`, similarity −1.
    pub fn search(&self, queries: Rows<'_>, k: usize, exclude: Exclude<'_>) -> Neighbours {
        let ef = self.ef_search.min(self.rows).max(k + 1);
        let lists: Vec<TopK> = (0..queries.len())
            .into_par_iter()
            .map(|q| {
                let skip = match exclude {
                    Exclude::Nothing => u32::MAX,
                    Exclude::SameIndex => q as u32,
                    Exclude::Given(ids) => ids[q],
                };
                let mut top = TopK::new(k);
                for nb in self.graph.search(queries.row(q), k + 1, ef) {
                    let id = nb.get_origin_id() as u32;
                    if id != skip {
                        top.push(1.0 - nb.get_distance(), id);
                    }
                }
                while top.ids.len() < k {
                    top.ids.push(u32::MAX);
                    top.sims.push(-1.0);
                }
                top
            })
            .collect();
        let mut ids = Vec::with_capacity(lists.len() * k);
        let mut sims = Vec::with_capacity(lists.len() * k);
        for t in lists {
            ids.extend_from_slice(&t.ids);
            sims.extend_from_slice(&t.sims);
        }
        Neighbours { k, ids, sims }
    }
}

#[cfg(test)]
mod tests {
    use super::super::knn::{exact, intersection};
    use super::super::synthetic::clustered;
    use super::*;

    #[test]
    fn recall_against_exact_on_a_clustered_set() {
        // 3000 unit rows in clusters of ~20 (the benchmark's generator, smaller): HNSW with the
        // default parameters finds ≥ 95 % of the exact top-10, and never returns the query itself.
        let (n, dim, k) = (3000, 32, 10);
        let data = clustered(n, dim, 20, 0.7, 11);
        let rows = Rows::new(&data, dim);
        let truth = exact(rows, rows, k, Exclude::SameIndex);
        let index = HnswIndex::build(rows, &HnswParams::default());
        let got = index.search(rows, k, Exclude::SameIndex);
        let hits: usize = (0..n).map(|q| intersection(truth.ids(q), got.ids(q))).sum();
        let recall = hits as f64 / (n * k) as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
        assert!((0..n).all(|q| !got.ids(q).contains(&(q as u32))));
        assert!((0..n).all(|q| got.sims(q).windows(2).all(|w| w[0] >= w[1])));
    }

    #[test]
    fn candidate_lists_longer_than_the_rows_are_cut_to_the_rows() {
        // With ef at least the row count, the search visits every row: the result is exact.
        let (n, dim, k) = (200, 16, 5);
        let data = clustered(n, dim, 10, 0.7, 3);
        let rows = Rows::new(&data, dim);
        let huge = HnswParams {
            ef_construction: usize::MAX,
            ef_search: usize::MAX,
            ..HnswParams::default()
        };
        let got = HnswIndex::build(rows, &huge).search(rows, k, Exclude::SameIndex);
        let truth = exact(rows, rows, k, Exclude::SameIndex);
        let hits: usize = (0..n).map(|q| intersection(truth.ids(q), got.ids(q))).sum();
        assert_eq!(hits, n * k);
    }
}
