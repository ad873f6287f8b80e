//! Full-size RAM++ training steps on the test device (for the GPU check; ignored by default):
//! `TAGFIX_TEST_DEVICE=cuda cargo test --features train --test ram_plus_gpu -- --ignored --nocapture`.
//! Builds each preset named in `TAGFIX_GPU_PRESETS` (default `swin_l_224`) with the official init,
//! runs forward + backward in training mode on a random batch of `TAGFIX_GPU_BATCH` (default 8)
//! images and checks that the losses are finite and every parameter gets a finite gradient.
#![cfg(feature = "train")]

mod common;

use std::time::Instant;
use tagfix::train::model::{ParamInit, RamPlus, RamPlusBatch, RamPlusConfig, Trace};
use tch::{nn, Kind, Tensor};

#[test]
#[ignore = "full-size model: run explicitly on a GPU"]
fn full_size_training_steps() {
    let device = common::test_device();
    let batch: i64 = std::env::var("TAGFIX_GPU_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let presets = std::env::var("TAGFIX_GPU_PRESETS").unwrap_or_else(|_| "swin_l_224".into());
    for preset in presets.split(',') {
        let cfg = RamPlusConfig::preset(preset).unwrap();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let model = RamPlus::new(&vs, &cfg, ParamInit::Official).unwrap();
        let s = cfg.swin.img_size as i64;
        let opts = (Kind::Float, device);
        let image = Tensor::randn([batch, 3, s, s], opts);
        let tags = Tensor::rand([batch, cfg.num_class as i64], opts)
            .lt(0.01)
            .to_kind(Kind::Float);
        let clip = Tensor::randn([batch, 512], opts) * 0.5;
        let text = Tensor::randn([batch, 512], opts);
        let text = &text / text.norm_scalaropt_dim(2, [-1], true);
        let b = RamPlusBatch {
            image: &image,
            image_tag: &tags,
            clip_feature: &clip,
            batch_text_embed: &text,
        };
        let mut times = Vec::new();
        for step in 0..4 {
            for mut p in vs.trainable_variables() {
                p.zero_grad();
            }
            let t0 = Instant::now();
            let out = model.forward_t(&b, true, &mut Trace::off()).unwrap();
            let total = &out.loss_tag + &out.loss_dis + &out.loss_alignment;
            total.backward();
            let loss = total.double_value(&[]); // synchronises
            let dt = t0.elapsed().as_secs_f64();
            assert!(loss.is_finite(), "{preset}: step {step}: loss {loss}");
            if step > 0 {
                times.push(dt);
            }
            println!(
                "{preset} batch {batch} step {step}: tag {:.3} dis {:.4} align {:.3}  {:.3} s",
                out.loss_tag.double_value(&[]),
                out.loss_dis.double_value(&[]),
                out.loss_alignment.double_value(&[]),
                dt
            );
        }
        let vars = vs.variables();
        for (name, t) in &vars {
            if t.requires_grad() {
                let g = t.grad();
                assert!(g.defined(), "{preset}: no gradient for {name}");
                assert!(
                    g.isfinite().all().int64_value(&[]) == 1,
                    "{preset}: non-finite gradient in {name}"
                );
            }
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "{preset} batch {batch} on {device:?}: mean forward+backward {mean:.3} s over {} steps",
            times.len()
        );
    }
}
