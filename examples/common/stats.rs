//! What the benchmark examples report of repeated timings.

/// The median of `v` (the upper one of an even count; NaN when empty): one slow or one lucky
/// round does not move it.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
