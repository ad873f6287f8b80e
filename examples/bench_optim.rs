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
use tagfix::train::sync::thread_host_reads as host_reads;
use tch::{nn, Device, Kind};

/// Median seconds and host reads per step of `steps` timed steps after one warm-up step.
fn measure(opt: &mut AdamW, steps: usize, logging: bool) -> (f64, u64) {
    let mut times = Vec::new();
    let mut reads = 0;
    for i in 0..=steps {
        let (t0, r0) = (Instant::now(), host_reads());
        let g = opt.grad_norms().expect("grad norms");
        let u = opt.step(1e-4, logging).expect("step");
        assert!(g.total.is_finite() && u.is_some() == (logging || opt.imp == OptimizerImpl::Loop));
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
    for (imp, logging, label) in [
        (OptimizerImpl::Loop, false, "loop (today)"),
        (OptimizerImpl::Fused, false, "fused, non-logging step"),
        (OptimizerImpl::Fused, true, "fused, logging step"),
    ] {
        let mut opt = AdamW::new(&vs, &[], &train).expect("optimizer");
        opt.imp = imp;
        let (secs, reads) = measure(&mut opt, steps, logging);
        println!("{label:<26} {secs:>8.3} s/step   host reads/step {reads}");
        rows.push(secs);
    }
    println!(
        "ratio fused/loop: {:.3} (non-logging), {:.3} (logging)",
        rows[1] / rows[0],
        rows[2] / rows[0]
    );
}
