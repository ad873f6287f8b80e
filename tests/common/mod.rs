//! Helpers shared by the model tests: locating the reference fixtures, reading safetensors, errors.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// `../shared/ram/reference`, or `None` (with the reason printed) when the shared material is absent.
/// Under CI (`CI=true`) a missing folder is a failure, never a skip.
pub fn reference_dir() -> Option<PathBuf> {
    let dir = tagfix::fsutil::shared_dir_for_test("RAM++ reference tests")?.join("ram/reference");
    assert!(
        dir.is_dir(),
        "{} is missing from the shared material",
        dir.display()
    );
    Some(dir)
}

/// The parity fixture folders: `$TAGFIX_PARITY_DIR` when set, else `tiny/` and `tiny_224_w7/`.
pub fn fixture_dirs() -> Option<Vec<PathBuf>> {
    if let Some(d) = std::env::var_os("TAGFIX_PARITY_DIR") {
        let d = PathBuf::from(d);
        assert!(
            d.join("config.json").is_file(),
            "TAGFIX_PARITY_DIR={} has no config.json",
            d.display()
        );
        return Some(vec![d]);
    }
    let r = reference_dir()?;
    Some(vec![r.join("tiny"), r.join("tiny_224_w7")])
}

/// All tensors of a safetensors file by name.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// max |a − b| / max |b| (exactly 0 when both are all zeros).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(f64::MIN_POSITIVE)
    }
}
