//! `tagfix convert` and `tagfix inspect` end to end (no libtorch needed): the torch.save fixtures in
//! `../shared/reference/pth/`, and the RAM++ reference weights in `../shared/ram/reference/tiny/`.

mod common;

use common::{shared_dir_for_test, tagfix};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use tagfix::tensors::{safetensors_io, DType, TensorSet};

fn sorted(set: &TensorSet) -> Vec<(String, tagfix::tensors::Tensor)> {
    let mut v = set.tensors.clone();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn convert_pth_fixtures_to_safetensors() {
    let Some(shared) = shared_dir_for_test("convert_pth_fixtures_to_safetensors") else {
        return;
    };
    let pth = shared.join("reference/pth");
    let expected = safetensors_io::read(&pth.join("expected.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, container) in [
        (
            "checkpoint_model_ordereddict",
            Some("{\"model\": state dict}"),
        ),
        ("plain_dict", Some("state dict")),
        ("checkpoint_with_extras", Some("{\"model\": state dict}")),
    ] {
        let out = dir.path().join(format!("{name}.safetensors"));
        let assert = tagfix()
            .arg("convert")
            .arg(pth.join(format!("{name}.pth")))
            .arg(&out)
            .arg("--json")
            .assert()
            .success();
        let summary: serde_json::Value =
            serde_json::from_slice(&assert.get_output().stdout).unwrap();
        assert_eq!(summary["container"].as_str(), container, "{name}");
        let got = safetensors_io::read(&out).unwrap();
        // Every expected tensor (the fixture leaves the bool one out) is there, contiguous, equal.
        for (n, t) in &expected.tensors {
            assert_eq!(got.get(n), Some(t), "{name}: {n}");
        }
        let flags = got.get("flags").expect("bool tensor kept");
        assert_eq!(
            (flags.dtype, flags.data.clone()),
            (DType::Bool, vec![1, 0, 1])
        );
        assert_eq!(got.metadata["tagfix.converted_from"], format!("{name}.pth"));
        if name == "checkpoint_with_extras" {
            assert_eq!(got.metadata["extra.epoch"], "3");
            assert!(got.metadata.contains_key("extra.config"));
        }
    }
    // bare tensor
    let out = dir.path().join("bare.safetensors");
    tagfix()
        .arg("convert")
        .arg(pth.join("bare_tensor.pth"))
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("bare tensor"));
    let want = safetensors_io::read(&pth.join("bare_tensor.expected.safetensors")).unwrap();
    let got = safetensors_io::read(&out).unwrap();
    assert_eq!(sorted(&got), sorted(&want));
}

#[test]
fn convert_refuses_malicious_truncated_and_bad_output() {
    let Some(shared) = shared_dir_for_test("convert_refuses_malicious_truncated_and_bad_output")
    else {
        return;
    };
    let pth = shared.join("reference/pth");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    tagfix()
        .arg("convert")
        .arg(pth.join("malicious_global.pth"))
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("system").and(contains("Nothing was executed")));
    assert!(!out.exists());
    tagfix()
        .arg("convert")
        .arg(pth.join("truncated.pth"))
        .arg(&out)
        .assert()
        .code(2)
        .stderr(contains("truncated.pth"));
    assert!(!out.exists());
    tagfix()
        .arg("convert")
        .arg(pth.join("plain_dict.pth"))
        .arg(dir.path().join("out.npy"))
        .assert()
        .code(2)
        .stderr(contains("must end in .safetensors"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing half-written"
    );
    // The legacy format is read.
    let legacy = dir.path().join("legacy.safetensors");
    tagfix()
        .arg("convert")
        .arg(pth.join("legacy_format.pth"))
        .arg(&legacy)
        .assert()
        .success()
        .stdout(contains("pytorch legacy"));
}

#[test]
fn inspect_tells_which_model_fits() {
    let Some(shared) = shared_dir_for_test("inspect_tells_which_model_fits") else {
        return;
    };
    let tiny = shared.join("ram/reference/tiny");
    let weights = tiny.join("weights.safetensors");
    let config = tiny.join("config.json");
    tagfix()
        .arg("inspect")
        .arg(&weights)
        .arg("--model-config")
        .arg(&config)
        .assert()
        .success()
        .stdout(contains("best fit:   reference:tiny (exact)").and(contains("window 4, image 64")));
    // Not a full official model: --expect fails with status 1.
    tagfix()
        .args(["inspect", "--expect", "swin_l_224"])
        .arg(&weights)
        .assert()
        .code(1)
        .stderr(contains("swin_l_224"));
    tagfix()
        .args(["inspect", "--expect", "swin_x"])
        .arg(&weights)
        .assert()
        .code(2);

    // A bare Swin checkpoint (encoder keys without prefix, as ImageNet checkpoints) in PyTorch format.
    let set = safetensors_io::read(&weights).unwrap();
    let encoder: Vec<_> = set
        .tensors
        .iter()
        .filter_map(|(n, t)| Some((n.strip_prefix("visual_encoder.")?.to_string(), t.clone())))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let swin = dir.path().join("swin.pth");
    tagfix::checkpoint::pth::write(&swin, tagfix::checkpoint::pth::PthContent::Dict(&encoder))
        .unwrap();
    let assert = tagfix()
        .arg("inspect")
        .arg(&swin)
        .arg("--model-config")
        .arg(&config)
        .arg("--json")
        .assert()
        .success();
    let info: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(info["fits"][0]["preset"], "reference:tiny");
    assert_eq!(info["fits"][0]["fit"], "image_encoder_only");
    assert_eq!(info["format"], "pytorch zip");
    assert_eq!(info["swin"]["depths"], serde_json::json!([2, 2, 2, 2]));
    assert_eq!(info["keys"].as_array().unwrap().len(), encoder.len());
    // --keys lists them.
    tagfix()
        .arg("inspect")
        .arg(&swin)
        .arg("--keys")
        .assert()
        .success()
        .stdout(contains("layers.0.blocks.1.attn_mask").and(contains("[16, 16, 16]")));
}
