//! One optimizer step (gradient norms + AdamW update) over a model preset's full parameter set, the
//! original per-parameter loop against ATen's fused AdamW, in one run; run by `scripts/bench-optim.sh`.
//!
//! Gradients are set once by a backward pass of Σ ½‖θ‖² (so ∇ = θ, no extra buffers) and kept for
//! every step. Each implementation gets its own fresh moments, one after the other, so at most one set
//! of optimizer state is alive (params + grads + moments ≈ 5.3 GB for swin_l_224). Host reads per step
//! are counted by `tagfix::train::sync` (every device-to-host read of the training step).
//!
//!   bench_optim [PRESET] [STEPS] [THREADS]      (defaults: swin_l_224 5 2)

use std::time::Instant;
use tagfix::train::config::TrainConfig;
use tagfix::train::model::{ParamInit, RamPlus, RamPlusConfig};
use tagfix::train::optim::{AdamW, OptimizerImpl};
use tagfix::train::sync::{read_f64s, thread_host_reads as host_reads};
use tch::{nn, Device, Kind, Tensor};

/// How a step is driven.
#[derive(Clone, Copy, PartialEq)]
enum Drive {
    /// `grad_norms` (read) then `step` (the update norms read on a logging step).
    Host { logging: bool },
    /// The training step's path: `update_on_device` (norms, found_inf, clipping to norm 1 by the
    /// kernel's grad_scale, no read) then one read of everything, on a non-logging step.
    Device,
}

/// Median seconds and host reads per step of `steps` timed steps after one warm-up step.
fn measure(opt: &mut AdamW, steps: usize, drive: Drive) -> (f64, u64) {
    let mut times = Vec::new();
    let mut reads = 0;
    let ok = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for i in 0..=steps {
        let (t0, r0) = (Instant::now(), host_reads());
        match drive {
            Drive::Host { logging } => {
                let g = opt.grad_norms().expect("grad norms");
                let u = opt.step(1e-4, logging).expect("step");
                assert!(g.total.is_finite());
                assert!(u.is_some() == (logging || opt.imp == OptimizerImpl::Loop));
            }
            Drive::Device => {
                let u = opt
                    .update_on_device(1e-4, Some(1.0), &ok, false)
                    .expect("update");
                let values = read_f64s(u.packed(), "norms").expect("read");
                assert!(!opt.settle(&u, &values).expect("settle").skipped);
            }
        }
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
            reads = host_reads() - r0;
        }
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], reads)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("swin_l_224", String::as_str);
    let steps: usize = args.get(1).map_or(5, |s| s.parse().expect("STEPS"));
    let threads: i32 = args.get(2).map_or(2, |s| s.parse().expect("THREADS"));
    tch::set_num_threads(threads);
    let cfg = RamPlusConfig::preset(preset).expect("preset");
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = RamPlus::new(&vs, &cfg, ParamInit::Official).expect("model");
    let train = TrainConfig {
        weight_decay: 0.05,
        ..Default::default()
    };
    for v in vs.variables().values().filter(|v| v.requires_grad()) {
        (v.square().sum(Kind::Float) * 0.5).backward();
    }
    let summary = AdamW::new(&vs, &[], &train).expect("optimizer").summary;
    println!(
        "{preset}: {} trained tensors, {} values, {threads} threads, median of {steps} steps after one warm-up",
        summary.trained_tensors, summary.trained_values
    );
    let mut rows = Vec::new();
    let host = |logging| Drive::Host { logging };
    for (imp, drive, label) in [
        (OptimizerImpl::Loop, host(false), "loop (today)"),
        (OptimizerImpl::Fused, host(false), "fused, non-logging step"),
        (OptimizerImpl::Fused, host(true), "fused, logging step"),
        (
            OptimizerImpl::Fused,
            Drive::Device,
            "fused on the device, clip",
        ),
    ] {
        let mut opt = AdamW::new(&vs, &[], &train).expect("optimizer");
        opt.imp = imp;
        let (secs, reads) = measure(&mut opt, steps, drive);
        println!("{label:<26} {secs:>8.3} s/step   host reads/step {reads}");
        rows.push(secs);
    }
    println!(
        "ratio fused/loop: {:.3} (non-logging), {:.3} (logging), {:.3} (on the device, clipping)",
        rows[1] / rows[0],
        rows[2] / rows[0],
        rows[3] / rows[0]
    );
}
