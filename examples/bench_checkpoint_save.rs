//! How long a checkpoint holds up training: writing it on the training thread (before issue #14)
//! against copying it to the host and writing it on a background thread (`tagfix::train::saver`),
//! in one run on the same model; run by `scripts/bench-checkpoint-save.sh`.
//!
//! Builds a model preset's full parameter set with AdamW moments (one optimizer step), then per
//! round, in alternating order: the inline save (the files written from the training tensors and
//! renamed, all on this thread, as before) and the background save (the time until `start`
//! returns — the host copy — and until the write has finished). Medians of the rounds; the
//! background writer keeps one checkpoint, so at most three are on disk.
//!
//! A third way per round isolates the writer thread's work: the files as the writer wrote them
//! before it streamed and hashed them as written (tch's safetensors writer, then read back and
//! hashed), against the writer thread's time now.
//!
//! Then times the newest checkpoint's `SHA256SUMS`: hashing its files, and the check a resume makes.
//!
//!   bench_checkpoint_save DIR [PRESET] [ROUNDS] [THREADS] [DEVICE]
//!   (defaults: swin_b_224 3 2 cpu; DEVICE cpu or cuda, the latter in a GPU build)

use std::path::PathBuf;
use std::time::Instant;
use tagfix::monitor::RunDir;
use tagfix::train::config::{LossBalance, LossWeights, TrainConfig};
use tagfix::train::model::{ParamInit, RamPlus, RamPlusConfig};
use tagfix::train::objective::LossWeighting;
use tagfix::train::optim::AdamW;
use tagfix::train::run::{CheckpointState, STATE_SCHEMA};
use tagfix::train::saver::{CheckpointWriter, Snapshot};
use tch::{nn, Device, Kind, Tensor};

#[path = "common/stats.rs"]
mod stats;
use stats::median;

fn state(step: u64, model: &str) -> CheckpointState {
    CheckpointState {
        schema: STATE_SCHEMA.into(),
        step,
        epoch: 0,
        step_in_epoch: step,
        samples_seen: step,
        seed: 0,
        torch_rng: "bench".into(),
        records: 1,
        data_fingerprint: "bench".into(),
        weighting: LossWeighting::new(LossWeights::default(), LossBalance::Initial, 1),
        wall_s: 0.0,
        model: model.into(),
    }
}

/// The save before issue #14, on the training thread: the tensors written straight from the
/// training state (on the CPU `to_device(Cpu)` is the tensor itself), `state.json`, the rename.
fn save_inline(run: &RunDir, vs: &nn::VarStore, opt: &AdamW, state: &CheckpointState) -> PathBuf {
    let tmp = run
        .checkpoints_dir()
        .join(format!(".step-{:08}.tmp", state.step));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let mut model: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu)))
        .collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&model, tmp.join("model.safetensors")).expect("model");
    let moments: Vec<(String, Tensor)> = opt
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&moments, tmp.join("optimizer.safetensors")).expect("optimizer");
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_vec_pretty(state).expect("json"),
    )
    .expect("state");
    let dir = run
        .checkpoints_dir()
        .join(format!("step-{:08}", state.step));
    std::fs::rename(&tmp, &dir).expect("rename");
    dir
}

/// The background writer's file writes before they were streamed and hashed as written (its state
/// until 2026-12-06): host copies of the tensors, tch's safetensors writer, `state.json`, then
/// `SHA256SUMS` by reading the files back, each file and the folder flushed, the rename. Returns
/// the folder and the seconds spent writing (after the copy), the figure to compare with the
/// writer thread's.
fn save_tch_then_hash(
    run: &RunDir,
    vs: &nn::VarStore,
    opt: &AdamW,
    state: &CheckpointState,
) -> (PathBuf, f64) {
    let copy = |t: &Tensor| t.detach().to_device(Device::Cpu).copy();
    let mut model: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, copy(&t)))
        .collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    let moments: Vec<(String, Tensor)> = opt
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, copy(&t)))
        .collect();
    let t0 = Instant::now();
    let tmp = run
        .checkpoints_dir()
        .join(format!(".step-{:08}.tmp", state.step));
    std::fs::create_dir_all(&tmp).expect("tmp");
    Tensor::write_safetensors(&model, tmp.join("model.safetensors")).expect("model");
    Tensor::write_safetensors(&moments, tmp.join("optimizer.safetensors")).expect("optimizer");
    tagfix::train::run_files::write_state(&tmp, state).expect("state");
    let files = tagfix::train::run_files::CHECKPOINT_FILES;
    tagfix::fsutil::checksums::write_checksums(&tmp, &files).expect("hash");
    for name in ["model.safetensors", "optimizer.safetensors", "SHA256SUMS"] {
        tagfix::fsutil::sync_to_disk(&tmp.join(name)).expect("sync");
    }
    tagfix::fsutil::sync_to_disk(&tmp).expect("sync");
    let dir = run
        .checkpoints_dir()
        .join(format!("step-{:08}", state.step));
    std::fs::rename(&tmp, &dir).expect("rename");
    (dir, t0.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().expect("DIR"));
    let preset = args.get(1).map_or("swin_b_224", String::as_str);
    let rounds: usize = args.get(2).map_or(3, |s| s.parse().expect("ROUNDS"));
    let threads: i32 = args.get(3).map_or(2, |s| s.parse().expect("THREADS"));
    let device = match args.get(4).map_or("cpu", String::as_str) {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => panic!("DEVICE is cpu or cuda, not {other}"),
    };
    tch::set_num_threads(threads);
    let cfg = RamPlusConfig::preset(preset).expect("preset");
    let vs = nn::VarStore::new(device);
    let _model = RamPlus::new(&vs, &cfg, ParamInit::Official).expect("model");
    for v in vs.variables().values().filter(|v| v.requires_grad()) {
        (v.square().sum(Kind::Float) * 0.5).backward();
    }
    let mut opt = AdamW::new(&vs, &[], &TrainConfig::default()).expect("optimizer");
    opt.step(1e-4, false)
        .expect("one step, so the moments exist");
    let values: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let run = RunDir::create(&dir).expect("run dir");
    println!(
        "{preset} on {device:?}: {values} parameter values + 2 moments, {threads} threads, median of {rounds} rounds, writing to {}",
        dir.display()
    );
    let (mut inline, mut blocked, mut written) = (Vec::new(), Vec::new(), Vec::new());
    let mut tch_then_hash = Vec::new();
    let mut writer = CheckpointWriter::default();
    for round in 0..rounds as u64 {
        // Rotate the order, so that no path always meets another's writeback.
        for way in (0..3).map(|k| (k + round) % 3) {
            let step = 3 * round + 1 + way;
            let t0 = Instant::now();
            match way {
                0 => {
                    let snapshot = Snapshot::take(&vs, opt.state_tensors(), &state(step, preset))
                        .expect("snapshot");
                    writer.start(&run, snapshot, 1).expect("start");
                    let held = t0.elapsed().as_secs_f64();
                    blocked.push(held);
                    writer.wait().expect("write");
                    written.push((t0.elapsed().as_secs_f64(), held));
                }
                1 => {
                    let dir = save_inline(&run, &vs, &opt, &state(step, preset));
                    inline.push(t0.elapsed().as_secs_f64());
                    std::fs::remove_dir_all(dir).expect("remove the inline checkpoint");
                }
                _ => {
                    let (dir, writing) = save_tch_then_hash(&run, &vs, &opt, &state(step, preset));
                    tch_then_hash.push(writing);
                    std::fs::remove_dir_all(dir).expect("remove the checkpoint");
                }
            }
        }
    }
    // The writer thread's share of "until written": the files, hashes, flushes, rename and pruning.
    let writing = median(written.iter().map(|(all, held)| all - held).collect());
    let written: Vec<f64> = written.into_iter().map(|(all, _)| all).collect();
    let last = writer.wait().expect("nothing in flight");
    let newest = tagfix::train::run::latest_checkpoint(&run)
        .expect("list")
        .expect("a checkpoint");
    assert!(last.is_none());
    let bytes: u64 = std::fs::read_dir(&newest)
        .expect("checkpoint")
        .filter_map(|f| f.ok())
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let (inline, blocked, written) = (median(inline), median(blocked), median(written));
    println!("| save | training thread held (s) | until written (s) | checkpoint bytes |");
    println!("|---|---:|---:|---:|");
    println!("| inline (before): written from the training thread | {inline:.3} | {inline:.3} | {bytes} |");
    println!("| background (now): snapshot, then a writer thread | {blocked:.3} | {written:.3} | {bytes} |");
    println!("ratio held (background / inline): {:.3}", blocked / inline);
    let before = median(tch_then_hash);
    println!(
        "writer thread, the files hashed and flushed: tch's writer then read back {before:.3} s; streamed, hashed as written (now) {writing:.3} s; ratio {:.3}",
        writing / before
    );
    // What the checkpoint's SHA256SUMS costs: hashing its files (part of "until written" above, on
    // the writer thread) and a resume's check of the newest checkpoint before loading it.
    let files = tagfix::train::run_files::CHECKPOINT_FILES;
    let t0 = Instant::now();
    tagfix::fsutil::checksums::ChecksumList::of_files(&newest, &files).expect("hash");
    let hashed = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let (_, verified) =
        tagfix::train::run_files::read_whole_checkpoint(&newest).expect("a whole checkpoint");
    let checked = t0.elapsed().as_secs_f64();
    assert_eq!(verified, tagfix::fsutil::checksums::Verified::Matched);
    println!(
        "SHA256SUMS: hashing the checkpoint's {bytes} bytes {hashed:.3} s ({:.2} GB/s); a resume's whole-checkpoint check {checked:.3} s",
        bytes as f64 / hashed / 1e9
    );
}
