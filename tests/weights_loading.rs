//! Checkpoint loading on checkpoints written here: exact keys, DDP- and encoder-prefixed keys, a bare
//! Swin encoder, missing encoder keys, wrong shapes, another window size, PyTorch format, f16, and
//! the encoder-initialisation proof.
#![cfg(feature = "train")]

use tagfix::checkpoint::pth;
use tagfix::tensors::{self, DType, TensorSet};
use tagfix::train::error::TrainError;
use tagfix::train::model::{ParamInit, RamPlus, RamPlusConfig};
use tagfix::train::weights::{
    from_tch, load_state_dict, load_tensor_set, resize_bias_table, save_state_dict, state_dict,
    verify_encoder_initialised, InitFingerprint, LoadOptions,
};
use tagfix::Error;
use tch::{nn, Device, Kind, Tensor};

/// A freshly initialised model (official init: LayerNorms 1/0, biases 0, ...).
fn build(cfg: &RamPlusConfig, seed: i64) -> (nn::VarStore, RamPlus) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = RamPlus::new(&vs, cfg, ParamInit::Official).unwrap();
    (vs, m)
}

/// A model whose every parameter moved away from its initial value, as after pretraining.
fn trained(cfg: &RamPlusConfig, seed: i64) -> (nn::VarStore, RamPlus) {
    let (vs, m) = build(cfg, seed);
    tch::no_grad(|| {
        for mut t in vs.trainable_variables() {
            let noise = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.01;
            let _ = t.g_add_(&noise);
        }
    });
    (vs, m)
}

fn cfg() -> RamPlusConfig {
    RamPlusConfig::tiny(3, 2)
}

fn assert_same_values(a: &nn::VarStore, b: &nn::VarStore) {
    let (va, vb) = (a.variables(), b.variables());
    assert_eq!(va.len(), vb.len());
    for (n, t) in &va {
        assert!(t.equal(&vb[n]), "{n} differs");
    }
}

fn rename(set: &TensorSet, f: impl Fn(&str) -> Option<String>) -> TensorSet {
    TensorSet {
        tensors: set
            .tensors
            .iter()
            .filter_map(|(n, t)| f(n).map(|m| (m, t.clone())))
            .collect(),
        metadata: Default::default(),
    }
}

#[test]
fn exact_keys_safetensors_roundtrip_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = trained(&cfg(), 1);
    let path = dir.path().join("ram_plus.safetensors");
    save_state_dict(&src, &path, &[("tagfix.model", "tiny".into())]).unwrap();
    let (dst, _) = build(&cfg(), 2);
    let report = load_state_dict(&dst, &path, &LoadOptions::strict()).unwrap();
    assert!(report.is_complete(), "{}", report.to_table());
    assert_eq!(report.layout, "RAM++ state dict");
    assert_eq!(
        report.buffers_recomputed, 10,
        "8 relative_position_index + 2 attn_mask (shifted blocks of stages 0-1)"
    );
    assert!(report.buffer_mismatches.is_empty());
    assert!(report.encoder_fully_loaded());
    assert_same_values(&src, &dst);
    // JSON form carries the same counts.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["loaded"], report.expected);
    assert_eq!(json["groups"].as_array().unwrap().len(), 7);
}

#[test]
fn pth_checkpoint_with_ddp_prefix_loads_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = trained(&cfg(), 3);
    let sd = state_dict(&src).unwrap();
    let prefixed = rename(&sd, |n| Some(format!("module.{n}")));
    let path = dir.path().join("ddp.pth");
    pth::write(&path, pth::PthContent::Dict(&prefixed.tensors)).unwrap();
    let (dst, _) = build(&cfg(), 4);
    let report = load_state_dict(&dst, &path, &LoadOptions::strict()).unwrap();
    assert!(report.is_complete(), "{}", report.to_table());
    assert!(
        report.notes.iter().any(|n| n
            == &format!(
                "stripped the DDP prefix `module.` from {} keys",
                sd.tensors.len()
            )),
        "{:?}",
        report.notes
    );
    assert_same_values(&src, &dst);
}

#[test]
fn bare_swin_checkpoint_initialises_only_the_encoder() {
    let (src, _) = trained(&cfg(), 5);
    let sd = state_dict(&src).unwrap();
    // An ImageNet Swin checkpoint: encoder keys without prefix, plus a classifier head.
    let mut swin = rename(&sd, |n| {
        n.strip_prefix("visual_encoder.").map(str::to_string)
    });
    swin.tensors.push((
        "head.weight".into(),
        tensors::Tensor::from_f32(vec![4, 128], &[0.5; 512]).unwrap(),
    ));
    let (dst, _) = build(&cfg(), 6);
    let fp = InitFingerprint::capture(&dst, "visual_encoder.");
    let report =
        load_tensor_set(&dst, "swin_imagenet.pth", &swin, &LoadOptions::lenient()).unwrap();
    assert!(
        report.layout.starts_with("Swin image-encoder checkpoint"),
        "{}",
        report.layout
    );
    assert!(report.encoder_fully_loaded(), "{}", report.to_table());
    assert_eq!(report.unexpected, vec!["head.weight"]);
    let th = report.group("tagging_head").unwrap();
    assert_eq!((th.loaded, th.missing), (0, th.expected));
    assert!(report
        .to_table()
        .contains("added the prefix `visual_encoder.`"));
    let check = verify_encoder_initialised(&[&report], &fp, &dst, false).unwrap();
    assert!(check.unchanged.is_empty() && check.warnings.is_empty());
    assert_eq!(check.parameters, fp.len());
    let (a, b) = (src.variables(), dst.variables());
    for (n, t) in &a {
        if n.starts_with("visual_encoder.") {
            assert!(t.equal(&b[n]), "{n}");
        }
    }
}

#[test]
fn missing_encoder_keys_refuse_training_unless_overridden() {
    let (src, _) = trained(&cfg(), 7);
    let sd = state_dict(&src).unwrap();
    let partial = rename(&sd, |n| {
        (!n.starts_with("visual_encoder.layers.3.")).then(|| n.to_string())
    });
    let (dst, _) = build(&cfg(), 8);
    let fp = InitFingerprint::capture(&dst, "visual_encoder.");
    let report = load_tensor_set(
        &dst,
        "partial.safetensors",
        &partial,
        &LoadOptions::lenient(),
    )
    .unwrap();
    assert!(!report.encoder_fully_loaded());
    let ve = report.group("visual_encoder").unwrap();
    assert_eq!(
        ve.missing,
        2 * 13,
        "two blocks of layers.3, 13 parameters each"
    );
    let err = verify_encoder_initialised(&[&report], &fp, &dst, false).unwrap_err();
    assert!(matches!(
        &err,
        Error::Train(e) if matches!(**e, TrainError::EncoderNotInitialised { .. })
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("26 of")
            && msg.contains("partial.safetensors")
            && msg.contains("--allow-random-encoder"),
        "{msg}"
    );
    let check = verify_encoder_initialised(&[&report], &fp, &dst, true).unwrap();
    assert_eq!(check.unchanged.len(), 26);
    assert!(check.warnings[0].contains("NOT fully initialised"));
    // Strict loading refuses the same file outright.
    let strict = load_tensor_set(
        &dst,
        "partial.safetensors",
        &partial,
        &LoadOptions::strict(),
    );
    assert!(strict
        .unwrap_err()
        .to_string()
        .contains("strict load failed"));
}

#[test]
fn checkpoint_equal_to_random_init_is_caught() {
    // A "pretrained" checkpoint that is really a fresh initialisation with the same seed.
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = build(&cfg(), 9);
    let path = dir.path().join("untrained.safetensors");
    save_state_dict(&src, &path, &[]).unwrap();
    let (dst, _) = build(&cfg(), 9);
    let fp = InitFingerprint::capture(&dst, "visual_encoder.");
    let report = load_state_dict(&dst, &path, &LoadOptions::strict()).unwrap();
    assert!(report.encoder_fully_loaded());
    let err = verify_encoder_initialised(&[&report], &fp, &dst, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("still equal their random initialisation"),
        "{err}"
    );
}

#[test]
fn wrong_shapes_are_reported_and_not_loaded() {
    let (src, _) = trained(&cfg(), 10);
    let mut sd = state_dict(&src).unwrap();
    for (n, t) in sd.tensors.iter_mut() {
        if n == "fc.weight" {
            *t = tensors::Tensor::from_f32(vec![1, 16], &[1.0; 16]).unwrap();
        }
    }
    let (dst, _) = build(&cfg(), 11);
    let before = dst.variables()["fc.weight"].copy();
    let report = load_tensor_set(&dst, "bad.safetensors", &sd, &LoadOptions::lenient()).unwrap();
    assert_eq!(report.shape_mismatched.len(), 1);
    assert_eq!(report.shape_mismatched[0].checkpoint, vec![1, 16]);
    assert_eq!(report.shape_mismatched[0].model, vec![1, 32]);
    assert_eq!(report.missing, vec!["fc.weight"]);
    assert_eq!(report.group("fc").unwrap().shape_mismatched, 1);
    assert!(dst.variables()["fc.weight"].equal(&before), "not loaded");
    assert!(report
        .to_table()
        .contains("fc.weight: checkpoint [1, 16], model [1, 32]"));
    let strict = load_tensor_set(&dst, "bad.safetensors", &sd, &LoadOptions::strict()).unwrap_err();
    assert!(strict.to_string().contains("shape mismatch"));
}

#[test]
fn half_precision_checkpoint_is_converted() {
    let (src, _) = trained(&cfg(), 12);
    let sd = state_dict(&src).unwrap();
    let half = TensorSet {
        tensors: sd
            .tensors
            .iter()
            .map(|(n, t)| {
                let t = if t.dtype == DType::F32 {
                    tensors::Tensor::from_f32_as(DType::F16, t.shape.clone(), &t.to_f32().unwrap())
                        .unwrap()
                } else {
                    t.clone()
                };
                (n.clone(), t)
            })
            .collect(),
        metadata: Default::default(),
    };
    let (dst, _) = build(&cfg(), 13);
    let report = load_tensor_set(&dst, "half.safetensors", &half, &LoadOptions::strict()).unwrap();
    assert!(report.dtype_converted > 100, "{}", report.dtype_converted);
    let (a, b) = (src.variables(), dst.variables());
    let diff = (&a["image_proj.weight"] - &b["image_proj.weight"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff > 0.0 && diff < 1e-2, "f16 rounding only: {diff}");
}

/// PyTorch's bicubic kernel (A = −0.75) with align_corners=False and clamped borders, written out
/// independently of libtorch.
fn bicubic_reference(src: &[f32], s: usize, d: usize) -> Vec<f32> {
    let a = -0.75f64;
    let w = |t: f64| -> [f64; 4] {
        let c1 = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
        let c2 = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
        [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]
    };
    let scale = s as f64 / d as f64;
    let at = |y: i64, x: i64| {
        src[(y.clamp(0, s as i64 - 1) as usize) * s + x.clamp(0, s as i64 - 1) as usize] as f64
    };
    let mut out = Vec::with_capacity(d * d);
    for oy in 0..d {
        let ry = scale * (oy as f64 + 0.5) - 0.5;
        let (iy, ty) = (ry.floor() as i64, ry - ry.floor());
        for ox in 0..d {
            let rx = scale * (ox as f64 + 0.5) - 0.5;
            let (ix, tx) = (rx.floor() as i64, rx - rx.floor());
            let (wy, wx) = (w(ty), w(tx));
            let mut v = 0.0;
            for (i, wyi) in wy.iter().enumerate() {
                let row: f64 = (0..4)
                    .map(|j| wx[j] * at(iy - 1 + i as i64, ix - 1 + j as i64))
                    .sum();
                v += wyi * row;
            }
            out.push(v as f32);
        }
    }
    out
}

#[test]
fn bias_tables_of_another_window_are_resized_bicubically() {
    // Source: window 2 everywhere (tables 3×3 = 9 rows); target: window 4 (49 rows) in stages 0–2,
    // and the 2×2 stage-3 clamp (9 rows) in both.
    let mut small = cfg();
    small.swin.window_size = 2;
    let (src, _) = trained(&small, 14);
    let (dst, _) = build(&cfg(), 15);
    let sd = state_dict(&src).unwrap();
    let report = load_tensor_set(&dst, "w2.safetensors", &sd, &LoadOptions::lenient()).unwrap();
    assert!(report.is_complete(), "{}", report.to_table());
    assert_eq!(report.resized.len(), 6, "stages 0-2, two blocks each");
    assert!(report
        .resized
        .iter()
        .all(|r| r.from_window == 2 && r.to_window == 4));
    assert!(report
        .notes
        .iter()
        .any(|n| n.contains("resized 6 relative_position_bias_table")));
    // Source buffers have other shapes: dropped, recomputed, not compared.
    assert!(report.buffer_mismatches.is_empty());
    let (a, b) = (src.variables(), dst.variables());
    let name = "visual_encoder.layers.1.blocks.0.attn.relative_position_bias_table";
    let (from, to) = (&a[name], &b[name]);
    assert_eq!(to.size(), [49, 2]);
    for h in 0..2 {
        let plane: Vec<f32> = Vec::try_from(from.select(1, h).contiguous()).unwrap();
        let want = bicubic_reference(&plane, 3, 7);
        let got: Vec<f32> = Vec::try_from(to.select(1, h).contiguous()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "head {h}: {g} vs {w}");
        }
    }
    let stage3 = "visual_encoder.layers.3.blocks.0.attn.relative_position_bias_table";
    assert!(a[stage3].equal(&b[stage3]), "same window: copied as is");
    // Same size is the identity.
    assert!(resize_bias_table(&a[stage3], 2).equal(&a[stage3]));
}

#[test]
fn state_dict_conversion_roundtrips_dtypes() {
    let t = Tensor::from_slice(&[1i64, -2, 3]).view([3, 1]);
    let back = from_tch(&t).unwrap();
    assert_eq!((back.dtype, back.shape.clone()), (DType::I64, vec![3, 1]));
    assert!(tagfix::train::weights::to_tch(&back).unwrap().equal(&t));
}
