//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// True under CI, where missing material is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A model directory installed by scripts/setup.sh (`models/<name>`, or `$TAGFIX_TEST_MODELS/<name>`:
/// scripts/check-fresh-setup.sh points it at a fresh copy's fixtures), or `None` after printing why the
/// test is skipped. Under CI a missing model is a failure.
pub fn model_dir_for_test(name: &str, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TAGFIX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
        .join(name);
    if dir.join("descriptor.toml").is_file() {
        return Some(dir);
    }
    if in_ci() {
        panic!(
            "{test}: {} is missing; scripts/setup.sh installs it",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: {} missing (run scripts/setup.sh)",
        dir.display()
    );
    None
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Largest absolute difference of two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
