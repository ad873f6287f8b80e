//! Helpers shared by the model tests (feature `train`): locating the reference fixtures, reading
//! safetensors, errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// `../shared/ram/reference`, or `None` (with the reason printed) when the shared material is absent.
/// Under CI (`CI=true`) a missing folder is a failure, never a skip.
pub fn reference_dir() -> Option<PathBuf> {
    let dir = super::shared_dir_for_test("RAM++ reference tests")?.join("ram/reference");
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

/// The device the model tests run on: `TAGFIX_TEST_DEVICE=cuda` (for the GPU check) or the CPU.
/// A CUDA request fails loudly when libtorch sees no GPU. cuDNN is switched off on CUDA so that the
/// patch-embedding convolution runs in plain f32 (cuDNN would use TF32).
pub fn test_device() -> tch::Device {
    match std::env::var("TAGFIX_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            assert!(
                tch::Cuda::is_available(),
                "TAGFIX_TEST_DEVICE=cuda but libtorch sees no CUDA device (binary built with TAGFIX_LINK_CUDA=1? driver present?)"
            );
            tch::Cuda::set_user_enabled_cudnn(false);
            tch::Device::Cuda(0)
        }
        Ok("cpu") | Err(_) => tch::Device::Cpu,
        Ok(other) => panic!("TAGFIX_TEST_DEVICE={other}: expected cpu or cuda"),
    }
}

/// max |a − b|, computed in f64 on the CPU.
pub fn abs_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    let b = b.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    (&a - &b).abs().max().double_value(&[])
}

/// max |a − b| / max |b| (exactly 0 when both are all zeros).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let diff = abs_err(a, b);
    let b = b.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    let scale = b.abs().max().double_value(&[]);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(f64::MIN_POSITIVE)
    }
}
