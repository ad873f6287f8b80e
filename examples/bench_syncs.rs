//! Device-to-host reads per optimizer step of `tagfix train` (on CUDA each is a host sync), the
//! earlier flow (`StepSync::PerMicroBatch`: each micro-batch's loss terms and weighted total read as
//! they come, then the gradient norms) against the one-read step (`StepSync::Once`), side by side in
//! one run on the tiny RAM++ and a synthetic dataset; run by `scripts/bench-syncs.sh`. Reads are
//! counted by the code (`tagfix::train::sync::host_reads`, every read of the step), not estimated.
//!
//!   bench_syncs [STEPS] [BATCH] [MICRO] [THREADS]      (defaults: 6 8 2 1; log_every 3)

/// The training tests' synthetic dataset and inputs (the tiny model's, teacher file included).
#[allow(dead_code)]
#[path = "../tests/common/train.rs"]
mod train;

use std::time::Instant;
use tagfix::train::config::{CheckpointEvery, TrainConfig};
use tagfix::train::run::{prepare, TrainInputs, Trainer};
use tagfix::train::sync::host_reads;
use tagfix::train::trainer::StepSync;

#[path = "common/stats.rs"]
mod stats;
use stats::median;

/// Per step: (logging step, host reads, seconds).
fn run(
    cfg: &TrainConfig,
    inputs: &TrainInputs,
    out: &std::path::Path,
    sync: StepSync,
) -> Vec<(bool, u64, f64)> {
    let mut t = Trainer::new(prepare(cfg, inputs).expect("prepare"), out, false).expect("trainer");
    t.set_step_sync(sync);
    let mut rows = Vec::new();
    while !t.is_done() {
        let (r0, t0) = (host_reads(), Instant::now());
        let record = t.step().expect("step");
        rows.push((
            record.update_norm.is_some(),
            host_reads() - r0,
            t0.elapsed().as_secs_f64(),
        ));
    }
    rows
}

fn main() {
    let arg = |i: usize, default: usize| -> usize {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (steps, batch, micro, threads) = (arg(1, 6), arg(2, 8), arg(3, 2), arg(4, 1));
    let dir = tempfile::tempdir().expect("temporary folder");
    let ds = train::dataset(&dir.path().join("data"), batch * 2, 1);
    let inputs = train::inputs(&ds);
    let cfg = TrainConfig {
        model: Some("tiny".into()),
        batch_size: batch,
        micro_batch_size: Some(micro.into()),
        max_steps: Some(steps as u64),
        log_every: 3,
        workers: 1,
        threads,
        checkpoint_every: CheckpointEvery::Off,
        ..Default::default()
    };
    println!(
        "tiny RAM++ on CPU, batch {batch} = {} micro-batches of {micro}, {steps} steps, log_every 3, {threads} thread(s)",
        batch / micro
    );
    println!(
        "{:<34} {:>22} {:>18} {:>14}",
        "step flow", "reads/non-logging step", "reads/logging step", "median s/step"
    );
    for (sync, label) in [
        (StepSync::PerMicroBatch, "per micro-batch (before)"),
        (StepSync::Once, "once per step (now)"),
    ] {
        let rows = run(
            &cfg,
            &inputs,
            &dir.path().join(label.replace(' ', "-")),
            sync,
        );
        let reads = |logging: bool| {
            let r: Vec<u64> = rows
                .iter()
                .filter(|x| x.0 == logging)
                .map(|x| x.1)
                .collect();
            match (r.iter().min(), r.iter().max()) {
                (Some(a), Some(b)) if a == b => a.to_string(),
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "-".into(),
            }
        };
        let secs = median(rows.iter().map(|x| x.2).collect());
        println!(
            "{label:<34} {:>22} {:>18} {secs:>14.4}",
            reads(false),
            reads(true)
        );
    }
}
