//! Numerical parity of the libtorch RAM++ with the public Python implementation, on the reference
//! fixtures in `../shared/ram/reference/{tiny,tiny_224_w7}` (or the folder named by
//! `TAGFIX_PARITY_DIR`): every saved intermediate and the three losses within 1e-5 relative error
//! (max |diff| / max |ref| per tensor), every saved gradient within 1e-4. Also, on the same device,
//! the sharded AdamW update (`--shard-optimizer`) against the whole one.
#![cfg(feature = "train")]

mod common;

use common::{abs_err, fixture_dirs, read_tensors, rel_err, test_device};
use std::collections::BTreeMap;
use std::path::Path;
use tagfix::train::config::TrainConfig;
use tagfix::train::dist::zero::Slice;
use tagfix::train::model::ram_plus::format_tags;
use tagfix::train::model::{ParamInit, RamPlus, RamPlusBatch, RamPlusConfig, Trace};
use tagfix::train::optim::{AdamW, OptimizerImpl};
use tagfix::train::weights::{load_state_dict, LoadOptions};
use tch::{nn, Kind, Tensor};

const OUTPUT_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

#[derive(serde::Deserialize)]
struct FixtureConfig {
    tag_list: Vec<String>,
    tag_list_chinese: Vec<String>,
    class_threshold: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct GenerateTag {
    tag_output: Vec<String>,
    tag_output_chinese: Vec<String>,
}

/// Gradient error. Some gradients are analytically zero (softmax is shift-invariant): the
/// cross-attention `key.bias` and the k-third of every Swin `qkv.bias`. Their stored values are
/// rounding noise, so those parts are compared in absolute terms against the scale of the whole
/// tensor group's gradients (`scale`).
fn grad_err(name: &str, got: &Tensor, want: &Tensor, scale: f64) -> f64 {
    if name.ends_with("crossattention.self.key.bias") {
        return abs_err(got, want) / scale;
    }
    if name.ends_with("attn.qkv.bias") {
        let n = want.size()[0] / 3;
        let part = |t: &Tensor, i: i64| t.narrow(0, i * n, n);
        let k_abs = abs_err(&part(got, 1), &part(want, 1)) / scale;
        let q = rel_err(&part(got, 0), &part(want, 0));
        let v = rel_err(&part(got, 2), &part(want, 2));
        return k_abs.max(q).max(v);
    }
    rel_err(got, want)
}

fn run_fixture(dir: &Path) {
    println!("== parity fixture {}", dir.display());
    let cfg = RamPlusConfig::from_reference_json(&dir.join("config.json")).unwrap();
    let fixture: FixtureConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let device = test_device();
    println!("   on {device:?}");
    let vs = nn::VarStore::new(device);
    let model = RamPlus::new(&vs, &cfg, ParamInit::Uninitialized).unwrap();
    // Strict load: every key of the file is a model key and vice versa; buffers in the file must
    // equal the ones the model computes.
    let report = load_state_dict(
        &vs,
        &dir.join("weights.safetensors"),
        &LoadOptions::strict(),
    )
    .unwrap();
    assert!(report.is_complete(), "{}", report.to_table());
    assert_eq!(report.buffer_mismatches(), 0, "{}", report.to_table());

    let inputs: BTreeMap<String, Tensor> = read_tensors(&dir.join("inputs.safetensors"))
        .into_iter()
        .map(|(k, v)| (k, v.to_device(device)))
        .collect();
    let expected = read_tensors(&dir.join("outputs.safetensors"));
    let grads = read_tensors(&dir.join("grads.safetensors"));
    let batch = RamPlusBatch {
        image: &inputs["image"],
        image_tag: &inputs["image_tag"],
        clip_feature: &inputs["clip_feature"],
        batch_text_embed: &inputs["batch_text_embed"],
    };
    let mut trace = Trace::on();
    let out = model.forward_t(&batch, false, &mut trace).unwrap();
    let thresholds = Tensor::from_slice(&fixture.class_threshold);
    let pred = tch::no_grad(|| model.generate_tag(batch.image, &thresholds, &[]).unwrap());

    let mut got: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut put = |k: &str, t: &Tensor| {
        got.insert(k.to_string(), t.detach());
    };
    put("loss_tag", &out.loss_tag);
    put("loss_dis", &out.loss_dis);
    put("loss_alignment", &out.loss_alignment);
    put(
        "loss_total",
        &(&out.loss_tag + &out.loss_dis + &out.loss_alignment),
    );
    put("visual_encoder_out", &out.image.visual_encoder_out);
    put("image_embeds", &out.image.image_embeds);
    put(
        "image_cls_embeds_normalized",
        &out.tags.image_cls_embeds_normalized,
    );
    put("reweight_logits", &out.tags.reweight_logits);
    put("reweight_weights", &out.tags.reweight_weights);
    put("label_embed_reweight", &out.tags.label_embed_reweight);
    put("label_embed_projected", &out.tags.label_embed_projected);
    put("tagging_hidden", &out.tags.tagging_hidden);
    put("tagging_logits", &out.tags.tagging_logits);
    put("text_embed_projected", &out.alignment.text_embed_projected);
    put("alignment_hidden", &out.alignment.alignment_hidden);
    put("alignment_logits", &out.alignment.alignment_logits);
    put("alignment_targets", &out.alignment.alignment_targets);
    put("generate_tag_logits", &pred.logits);
    put("generate_tag_scores", &pred.scores);
    put("generate_tag_pred", &pred.pred);
    for (name, t) in trace.entries() {
        put(name, t);
    }

    let mut worst: BTreeMap<&str, (f64, String)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (name, want) in &expected {
        let Some(have) = got.get(name) else {
            failures.push(format!("{name}: not produced by the Rust model"));
            continue;
        };
        if have.size() != want.size() {
            failures.push(format!(
                "{name}: shape {:?}, expected {:?}",
                have.size(),
                want.size()
            ));
            continue;
        }
        let err = rel_err(have, &want.to_kind(have.kind()));
        let group = if name.starts_with("loss") {
            "losses"
        } else if name.starts_with("debug.swin") {
            "swin intermediates"
        } else if name.starts_with("debug.tagging_head") {
            "tagging-head layers"
        } else if name.starts_with("generate_tag") {
            "generate_tag"
        } else {
            "model outputs"
        };
        let e = worst.entry(group).or_insert((0.0, String::new()));
        if err >= e.0 {
            *e = (err, name.clone());
        }
        if err > OUTPUT_TOL {
            failures.push(format!("{name}: relative error {err:.3e} > {OUTPUT_TOL:e}"));
        }
    }
    // Losses as scalars too, for the record.
    for k in ["loss_tag", "loss_dis", "loss_alignment"] {
        println!(
            "  {k:16} rust {:.9}  ref {:.9}",
            got[k].double_value(&[]),
            expected[k].double_value(&[])
        );
    }

    (&out.loss_tag + &out.loss_dis + &out.loss_alignment).backward();
    let vars = vs.variables();
    let scale_of = |name: &str| -> f64 {
        // the largest reference gradient among the parameter's siblings (same module)
        let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or(name);
        grads
            .iter()
            .filter(|(k, _)| k.starts_with(module))
            .map(|(_, g)| g.abs().max().double_value(&[]))
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE)
    };
    for (name, want) in &grads {
        let Some(var) = vars.get(name) else {
            failures.push(format!("grad {name}: no such model parameter"));
            continue;
        };
        let have = var.grad();
        if !have.defined() {
            failures.push(format!("grad {name}: no gradient computed"));
            continue;
        }
        let err = grad_err(name, &have, want, scale_of(name));
        let group = match name.split('.').next().unwrap() {
            "visual_encoder" => "grads visual_encoder",
            "tagging_head" => "grads tagging_head",
            _ => "grads other (label_embed, reweight_scale, projections, fc)",
        };
        let e = worst.entry(group).or_insert((0.0, String::new()));
        if err >= e.0 {
            *e = (err, name.clone());
        }
        if err > GRAD_TOL {
            failures.push(format!(
                "grad {name}: relative error {err:.3e} > {GRAD_TOL:e}"
            ));
        }
    }
    // Every trainable parameter has a reference gradient.
    let trainable = vs.trainable_variables().len();
    assert_eq!(
        trainable,
        grads.len(),
        "every parameter's gradient is in grads.safetensors"
    );

    for (group, (err, name)) in &worst {
        println!("  max rel err {group:58} {err:.3e}  ({name})");
    }

    // generate_tag strings (optional file: other fixture folders may not have it).
    let gt_path = dir.join("generate_tag.json");
    if gt_path.is_file() {
        let gt: GenerateTag =
            serde_json::from_str(&std::fs::read_to_string(gt_path).unwrap()).unwrap();
        assert_eq!(format_tags(&pred.pred, &fixture.tag_list), gt.tag_output);
        assert_eq!(
            format_tags(&pred.pred, &fixture.tag_list_chinese),
            gt.tag_output_chinese
        );
    }
    assert_eq!(out.tags.tagging_logits.kind(), Kind::Float);
    assert!(
        failures.is_empty(),
        "{} parity failures in {}:\n{}",
        failures.len(),
        dir.display(),
        failures.join("\n")
    );
}

#[test]
fn parity_with_reference_fixtures() {
    let Some(dirs) = fixture_dirs() else { return };
    for dir in dirs {
        run_fixture(&dir);
    }
}

/// The sharded AdamW update (ZeRO stage 1, `--shard-optimizer`) on the test device, three ranks
/// simulated in one process: each updates its slices of parameters whose sizes are not multiples of
/// 64 (the label embedding is cut twice). Taken from their ranks (the broadcast), the slices equal
/// the whole update bit for bit (on CUDA too: cuts at multiples of 64 within a parameter keep the
/// fused kernel's vectorised parts aligned), the ranks' update measures combine into the whole
/// update's norms, each rank keeps only its slices' moments, and a whole checkpoint loads into them.
#[test]
fn sharded_adamw_slices_update_exactly_as_the_whole_tensors() {
    let device = test_device();
    let world = 3;
    let cfg = TrainConfig {
        weight_decay: 0.05,
        init_lr: 1e-2,
        ..Default::default()
    };
    let build = || {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let randn = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.5,
        };
        let _ = root.var("label_embed", &[301, 48], randn);
        let _ = (&root / "image_proj").var("weight", &[33, 17], randn);
        let _ = (&root / "tagging_head" / "norm").var("weight", &[48], randn);
        let _ = (&root / "visual_encoder" / "proj").var("weight", &[64, 47], randn);
        let _ = (&root / "visual_encoder" / "proj").var("bias", &[47], randn);
        vs
    };
    let whole = build();
    // Store 0 trains the whole state, store 1 + r is rank r's; all start from `whole`'s values.
    let stores: Vec<nn::VarStore> = (0..=world)
        .map(|_| {
            let mut vs = build();
            vs.copy(&whole).unwrap();
            vs
        })
        .collect();
    let mut opts: Vec<AdamW> = stores
        .iter()
        .map(|vs| AdamW::new(vs, &[], &cfg).unwrap())
        .collect();
    for rank in 0..world {
        opts[1 + rank].shard(rank, world).unwrap();
    }
    let partition = opts[1].partition().unwrap().clone();
    let names: Vec<String> = opts[0].trained_names().map(String::from).collect();
    let label = names.iter().position(|n| n == "label_embed").unwrap();
    let cuts: Vec<Slice> = (0..world)
        .flat_map(|r| partition.slices(r))
        .filter(|s| s.param == label)
        .collect();
    assert_eq!(cuts.len(), 3, "{cuts:?}");
    for step in 0..4 {
        tch::manual_seed(100 + step);
        let grads: Vec<Tensor> = names
            .iter()
            .map(|n| Tensor::randn_like(&whole.variables()[n]))
            .collect();
        let mut measures = Vec::new();
        for (vs, opt) in stores.iter().zip(opts.iter_mut()) {
            opt.zero_grad();
            let vars = vs.variables();
            let loss = names
                .iter()
                .zip(&grads)
                .map(|(n, g)| (&vars[n] * g).sum(Kind::Float))
                .reduce(|a, b| a + b)
                .unwrap();
            loss.backward();
            let ok = Tensor::zeros([1], (Kind::Float, device));
            let update = opt.update_on_device(1e-2, Some(5.0), &ok, true).unwrap();
            measures.push(update.update_norms().unwrap());
        }
        // The all-reduce of the measures, then their square roots.
        let summed = measures[2..].iter().fold(measures[1].copy(), |a, m| a + m);
        opts[1]
            .combine_update_norms(&measures[1], |m| {
                m.shallow_clone().copy_(&summed);
                Ok(())
            })
            .unwrap();
        let got = Vec::<f64>::try_from(measures[1].to_device(tch::Device::Cpu)).unwrap();
        let want = Vec::<f64>::try_from(measures[0].to_device(tch::Device::Cpu)).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs(),
                "step {step}: update norm {g} vs {w}"
            );
        }
        tch::no_grad(|| {
            for rank in 0..world {
                for s in partition.slices(rank) {
                    let name = &names[s.param];
                    let src = s.of(&stores[1 + rank].variables()[name]);
                    let want = s.of(&stores[0].variables()[name]);
                    assert!(
                        src.equal(&want),
                        "step {step}: {name} {s:?} from rank {rank}"
                    );
                    for vs in &stores[1..] {
                        s.of(&vs.variables()[name]).copy_(&src);
                    }
                }
            }
        });
    }
    let full: BTreeMap<String, Tensor> = opts[0].state_tensors().into_iter().collect();
    let moment = |kind: &str, s: &Slice| s.of(&full[&format!("{kind}.{}", names[s.param])]);
    let check = |opt: &AdamW, rank: usize| {
        let kept = opt.state_slices();
        let slices: Vec<Slice> = kept.iter().map(|k| k.0).collect();
        assert_eq!(slices, partition.slices(rank), "rank {rank}");
        for (s, m, v) in &kept {
            assert!(
                m.equal(&moment("exp_avg", s)) && v.equal(&moment("exp_avg_sq", s)),
                "{s:?}"
            );
        }
    };
    for rank in 0..world {
        check(&opts[1 + rank], rank);
    }
    // A checkpoint of the whole state loads into a shard: the rank keeps its slices.
    let mut fresh = AdamW::new(&stores[2], &[], &cfg).unwrap();
    fresh.shard(1, world).unwrap();
    fresh.load_state(&full, 4, "test").unwrap();
    check(&fresh, 1);
    // The per-parameter loop does not run sharded.
    fresh.imp = OptimizerImpl::Loop;
    assert!(fresh.step(1e-2, false).is_err());
}
