//! The PyTorch-format reader against `torch.save` fixtures in `../shared/reference/pth/`.

mod common;

use common::shared_dir_for_test;
use tagfix::checkpoint::pth::{self, Container};
use tagfix::tensors::{safetensors_io, DType};

fn fixtures() -> Option<std::path::PathBuf> {
    shared_dir_for_test("pth_reference").map(|d| d.join("reference/pth"))
}

fn assert_matches_expected(dir: &std::path::Path, file: &str) -> pth::Checkpoint {
    let c = pth::read(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let expected = safetensors_io::read(&dir.join("expected.safetensors")).unwrap();
    for (name, want) in &expected.tensors {
        let got = c
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{file}: missing {name}"));
        assert_eq!(&got.1, want, "{file}: tensor {name} differs");
    }
    let flags = c.tensors.iter().find(|(n, _)| n == "flags").expect("flags");
    assert_eq!(flags.1.dtype, DType::Bool);
    assert_eq!(flags.1.data, vec![1, 0, 1]);
    assert_eq!(c.tensors.len(), expected.tensors.len() + 1);
    c
}

#[test]
fn reads_bare_tensor() {
    let Some(dir) = fixtures() else { return };
    let c = pth::read(&dir.join("bare_tensor.pth")).unwrap();
    assert_eq!(c.container, Container::BareTensor);
    let expected = safetensors_io::read(&dir.join("bare_tensor.expected.safetensors")).unwrap();
    assert_eq!(c.tensors[0].1, expected.tensors[0].1);
}

#[test]
fn reads_model_ordereddict_plain_dict_and_extras() {
    let Some(dir) = fixtures() else { return };
    let c = assert_matches_expected(&dir, "checkpoint_model_ordereddict.pth");
    assert_eq!(c.container, Container::Wrapped("model".into()));
    let c = assert_matches_expected(&dir, "plain_dict.pth");
    assert_eq!(c.container, Container::StateDict);
    let c = assert_matches_expected(&dir, "checkpoint_with_extras.pth");
    assert_eq!(c.extras["epoch"], serde_json::json!(3));
    assert_eq!(c.extras["config"]["name"], serde_json::json!("ram_plus"));
}

#[test]
fn reads_legacy_format() {
    let Some(dir) = fixtures() else { return };
    let c = assert_matches_expected(&dir, "legacy_format.pth");
    assert!(c.legacy);
}

#[test]
fn refuses_malicious_global_without_executing() {
    let Some(dir) = fixtures() else { return };
    let _ = std::fs::remove_file("/tmp/pwned");
    let err = pth::read(&dir.join("malicious_global.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("posix.system"), "{err}");
    assert!(err.contains("malicious_global.pth"), "{err}");
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
fn truncated_file_is_a_clear_error() {
    let Some(dir) = fixtures() else { return };
    let err = pth::read(&dir.join("truncated.pth"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated.pth") && err.contains("truncated"),
        "{err}"
    );
}
