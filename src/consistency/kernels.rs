//! f32 vector kernels: a dot product vectorised for AVX2+FMA where the CPU has it (checked at run
//! time, so the binary stays portable), L2 normalisation, and row-wise helpers. Norms and cosines
//! fall back to a scaled computation when the plain sum of squares overflows or underflows f32, so
//! very large or very small rows keep their true direction instead of becoming "zero".

/// Lanes of independent accumulators: lets the compiler keep 16 partial sums in vector registers
/// (two 8-wide AVX registers) instead of one serial chain.
const LANES: usize = 16;

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let chunks = n / LANES;
    for c in 0..chunks {
        let (x, y) = (
            &a[c * LANES..c * LANES + LANES],
            &b[c * LANES..c * LANES + LANES],
        );
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    let mut tail = 0f32;
    for i in chunks * LANES..n {
        tail += a[i] * b[i];
    }
    // Pairwise reduction of the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] += acc[j + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// AVX2 + FMA: four 8-wide accumulators (32 floats per step), then the portable loop for the tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * j));
            let y = _mm256_loadu_ps(pb.add(i + 8 * j));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1));
    _mm_cvtss_f32(one) + dot_lanes(&a[i..n], &b[i..n])
}

/// Dot product of two equally long slices (the shorter length is used otherwise).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for; loads stay
            // within the first min(len) elements of both slices.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes(a, b)
}

/// Euclidean norm: `inf` only when the true norm exceeds `f32::MAX` (or the row holds Inf), NaN
/// when the row holds NaN.
#[inline]
pub fn norm(a: &[f32]) -> f32 {
    let sq = dot(a, a);
    if sq.is_finite() && sq >= f32::MIN_POSITIVE {
        return sq.sqrt();
    }
    scaled_norm(a)
}

/// `max|x| · ‖x / max|x|‖`, in f64: no square overflows or underflows.
#[cold]
fn scaled_norm(a: &[f32]) -> f32 {
    if a.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    let m = a.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
    if m == 0.0 || m.is_infinite() {
        return m as f32;
    }
    let s: f64 = a.iter().map(|v| (f64::from(*v) / m).powi(2)).sum();
    (m * s.sqrt()) as f32
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    let plain = dot(a, b) / (na * nb);
    if plain.is_finite() && (na * nb).is_normal() {
        return plain.clamp(-1.0, 1.0);
    }
    // The product of the norms (or the dot product) left f32's range: divide first.
    let (na, nb) = (f64::from(na), f64::from(nb));
    let c: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) / na) * (f64::from(*y) / nb))
        .sum();
    (c as f32).clamp(-1.0, 1.0)
}

/// A copy of a row-major `rows × dim` matrix with every row scaled to unit length (zero rows stay
/// zero; callers validate inputs first).
pub fn normalised_rows(values: &[f32], dim: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = values.to_vec();
    out.par_chunks_mut(dim.max(1) * 256).for_each(|block| {
        for row in block.chunks_mut(dim.max(1)) {
            let n = norm(row);
            if n > 0.0 {
                let inv = 1.0 / n;
                if inv.is_finite() {
                    row.iter_mut().for_each(|v| *v *= inv);
                } else {
                    row.iter_mut().for_each(|v| *v /= n);
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_f64_reference_for_all_tail_lengths() {
        for n in [0usize, 1, 7, 15, 16, 17, 33, 384, 511, 512] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 91 % 67) as f32 - 33.0) / 33.0)
                .collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let got = dot(&a, &b) as f64;
            assert!((got - dot_lanes(&a, &b) as f64).abs() <= 1e-4 * (1.0 + want.abs()));
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "n={n}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn cosine_and_normalisation() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        let m = normalised_rows(&[3.0, 4.0, 0.0, 0.0, 0.0, 2.0], 2);
        assert_eq!(m, vec![0.6, 0.8, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn huge_and_tiny_rows_keep_their_norm_and_direction() {
        // Squares of 1e20 overflow f32 and squares of 1e-30 underflow it; the norms do neither.
        let big = [3e20f32, 4e20];
        let tiny = [3e-30f32, 4e-30];
        assert!((norm(&big) / 5e20 - 1.0).abs() < 1e-6, "{}", norm(&big));
        assert!((norm(&tiny) / 5e-30 - 1.0).abs() < 1e-6, "{}", norm(&tiny));
        for row in [&big, &tiny] {
            assert!((cosine(row, &[3.0, 4.0]) - 1.0).abs() < 1e-6);
            let unit = normalised_rows(row, 2);
            assert!(
                (unit[0] - 0.6).abs() < 1e-6 && (unit[1] - 0.8).abs() < 1e-6,
                "{unit:?}"
            );
        }
        assert!((cosine(&big, &tiny) - 1.0).abs() < 1e-6);
        // 3e38 in every one of 384 dimensions: the norm (5.9e39) is beyond f32, which callers refuse.
        assert_eq!(norm(&[3e38f32; 384]), f32::INFINITY);
        assert!(norm(&[1.0, f32::NAN]).is_nan());
    }
}
