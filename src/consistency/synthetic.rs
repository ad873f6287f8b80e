//! Deterministic synthetic embedding sets: clustered unit vectors from a seed, for the project's own
//! check fixture, tests and the neighbour-search benchmark (no model or download needed).

use super::kernels::normalised_rows;
use crate::rng::SplitMix64;

/// `rows × dim` unit rows in clusters of about `cluster_size`: each row is a cluster centre plus
/// Gaussian noise of relative size `spread` (0.7 gives within-cluster cosines around 0.67, a
/// neighbourhood structure like a text encoder's).
pub fn clustered(rows: usize, dim: usize, cluster_size: usize, spread: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let clusters = rows.div_ceil(cluster_size.max(1)).max(1);
    let scale = 1.0 / (dim as f64).sqrt();
    let centres: Vec<f32> = (0..clusters * dim)
        .map(|_| (rng.normal() * scale) as f32)
        .collect();
    let centres = normalised_rows(&centres, dim);
    let mut out = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let c = rng.below(clusters as u64) as usize;
        let centre = &centres[c * dim..(c + 1) * dim];
        out.extend(
            centre
                .iter()
                .map(|&v| v + spread * (rng.normal() * scale) as f32),
        );
    }
    normalised_rows(&out, dim)
}

/// Adds Gaussian noise of standard deviation `sigma` to every component (rows are not renormalised).
pub fn add_noise(values: &mut [f32], sigma: f32, seed: u64) {
    let mut rng = SplitMix64(seed);
    values
        .iter_mut()
        .for_each(|v| *v += sigma * rng.normal() as f32);
}

/// A random orthogonal `dim × dim` matrix (Gram–Schmidt on Gaussian columns): a stand-in for "the
/// same tags embedded by another model", whose space is unrelated to the original's basis.
pub fn random_rotation(dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let mut q: Vec<f64> = (0..dim * dim).map(|_| rng.normal()).collect();
    for i in 0..dim {
        for j in 0..i {
            let d: f64 = (0..dim).map(|t| q[i * dim + t] * q[j * dim + t]).sum();
            for t in 0..dim {
                q[i * dim + t] -= d * q[j * dim + t];
            }
        }
        let n: f64 = (0..dim).map(|t| q[i * dim + t].powi(2)).sum::<f64>().sqrt();
        (0..dim).for_each(|t| q[i * dim + t] /= n);
    }
    q.into_iter().map(|v| v as f32).collect()
}

/// `row · Rᵀ` for one row and a row-major rotation.
pub fn rotate(row: &[f32], rotation: &[f32]) -> Vec<f32> {
    let dim = row.len();
    (0..dim)
        .map(|i| super::kernels::dot(&rotation[i * dim..(i + 1) * dim], row))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::kernels::{dot, norm};
    use super::*;

    #[test]
    fn clustered_rows_are_unit_and_seeded() {
        let a = clustered(200, 16, 10, 0.7, 5);
        assert_eq!(a, clustered(200, 16, 10, 0.7, 5));
        assert!(a.chunks(16).all(|r| (norm(r) - 1.0).abs() < 1e-5));
    }

    #[test]
    fn rotation_is_orthogonal_and_preserves_dot_products() {
        let r = random_rotation(8, 1);
        for i in 0..8 {
            for j in 0..8 {
                let d = dot(&r[i * 8..(i + 1) * 8], &r[j * 8..(j + 1) * 8]);
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
        let (x, y) = (
            [1.0f32, 2., 3., 4., 5., 6., 7., 8.],
            [0.5f32, -1., 0., 2., 1., 0., -3., 1.],
        );
        let (rx, ry) = (rotate(&x, &r), rotate(&y, &r));
        assert!((dot(&rx, &ry) - dot(&x, &y)).abs() < 1e-3);
    }
}
