//! Host memory and time of loading a training checkpoint into a fresh model and optimizer, as
//! `--resume` does (`tagfix::train::run::load_checkpoint`: the optimizer's moments read from the file
//! one tensor at a time) against the way it loaded them before (tch's safetensors reader: the whole
//! file in memory, then every tensor, then copied into place). One way per process, so that each
//! process's peak resident memory (`getrusage`) is its own; run by `scripts/bench-resume-load.sh`.
//!
//!   bench_resume_load CHECKPOINT_DIR PRESET streamed|whole

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tagfix::train::config::TrainConfig;
use tagfix::train::model::{ParamInit, RamPlus, RamPlusConfig};
use tagfix::train::optim::AdamW;
use tagfix::train::run::{load_checkpoint, read_state};
use tagfix::train::weights::{self, LoadOptions};
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Peak resident memory of this process so far, in bytes.
fn max_rss() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().expect("CHECKPOINT_DIR"));
    let preset = args.get(1).map_or("swin_b_224", String::as_str);
    let mode = args.get(2).map_or("streamed", String::as_str);
    let cfg = RamPlusConfig::preset(preset).expect("preset");
    let vs = VarStore::new(Device::Cpu);
    let _model = RamPlus::new(&vs, &cfg, ParamInit::Uninitialized).expect("model");
    let mut opt = AdamW::new(&vs, &[], &TrainConfig::default()).expect("optimizer");
    let state = read_state(&dir).expect("state.json");
    let before = max_rss();
    let t0 = Instant::now();
    match mode {
        "streamed" => load_checkpoint(&dir, &state, &vs, &mut opt).expect("load"),
        "whole" => {
            let model = dir.join("model.safetensors");
            weights::load_state_dict(&vs, &model, &LoadOptions::strict()).expect("model");
            let path = dir.join("optimizer.safetensors");
            let map: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
                .expect("optimizer")
                .into_iter()
                .collect();
            opt.load_state(&map, state.step, "bench").expect("moments");
        }
        other => panic!("MODE is streamed or whole, not {other}"),
    }
    let secs = t0.elapsed().as_secs_f64();
    const GB: f64 = 1e9;
    println!(
        "{mode}: load {secs:.3} s; peak resident memory {:.2} GB ({:.2} GB with the model and optimizer built, {:+.2} GB while loading)",
        max_rss() as f64 / GB,
        before as f64 / GB,
        (max_rss() as f64 - before as f64) / GB
    );
}
