//! Small statistics over per-slot values: quantiles, summaries, overlap of neighbour lists.

use serde::{Deserialize, Serialize};

/// Summary of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Dist {
    pub count: usize,
    pub min: f64,
    pub p01: f64,
    pub p05: f64,
    pub median: f64,
    pub mean: f64,
    pub max: f64,
}

impl Dist {
    /// Summarises `values` (empty input gives all zeros with count 0).
    pub fn of(values: &[f32]) -> Self {
        if values.is_empty() {
            return Dist::default();
        }
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        Dist {
            count: v.len(),
            min: v[0],
            p01: quantile_sorted(&v, 0.01),
            p05: quantile_sorted(&v, 0.05),
            median: quantile_sorted(&v, 0.5),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            max: v[v.len() - 1],
        }
    }
}

/// Linear-interpolated quantile of sorted values (`q` in [0, 1]).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Quantile of unsorted values.
pub fn quantile(values: &[f32], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    quantile_sorted(&v, q)
}

/// Share of `reference` values strictly below `x` (the percentile rank of `x`, in [0, 1]).
pub fn rank_in(reference_sorted: &[f64], x: f64) -> f64 {
    if reference_sorted.is_empty() {
        return f64::NAN;
    }
    reference_sorted.partition_point(|&r| r < x) as f64 / reference_sorted.len() as f64
}

/// Share of the first `k` ids of `a` that are also among the first `k` of `b`.
pub fn overlap_at(a: &[u32], b: &[u32], k: usize) -> f32 {
    let (a, b) = (&a[..k.min(a.len())], &b[..k.min(b.len())]);
    if k == 0 {
        return 1.0;
    }
    a.iter()
        .filter(|x| **x != u32::MAX && b.contains(x))
        .count() as f32
        / k as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.0);
        assert_eq!(quantile_sorted(&v, 0.125), 0.5);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
        let d = Dist::of(&[4.0, 0.0, 2.0, 1.0, 3.0]);
        assert_eq!(
            (d.min, d.median, d.mean, d.max, d.count),
            (0.0, 2.0, 2.0, 4.0, 5)
        );
        assert_eq!(rank_in(&v, 2.5), 0.6);
        assert_eq!(rank_in(&v, -1.0), 0.0);
    }

    #[test]
    fn overlap_counts_shared_prefix_ids() {
        assert_eq!(overlap_at(&[1, 2, 3, 4], &[4, 3, 9, 1], 4), 0.75);
        assert_eq!(overlap_at(&[1, 2, 3, 4], &[4, 3, 9, 1], 2), 0.0);
        assert_eq!(overlap_at(&[1, 2], &[2, 1], 2), 1.0);
        assert_eq!(overlap_at(&[u32::MAX], &[u32::MAX], 1), 0.0);
    }
}
