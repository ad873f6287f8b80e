//! Where a run continues: its checkpoints folder, the newest whole checkpoint checked against
//! the run's records, and loading it.

use crate::error::Result;
use crate::fsutil::checksums::{self, Verified};
use crate::monitor::RunDir;
use crate::tensors::safetensors_io::SafetensorsFile;
use crate::train::config::TrainConfig;
use crate::train::data::TrainData;
use crate::train::error::TrainError;
use crate::train::optim::AdamW;
use crate::train::run_files::{
    newest_checkpoint_in, newest_whole_checkpoint, CheckpointState, Resumable,
};
use crate::train::trainer::RunStart;
use crate::train::weights::{self, LoadOptions};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

/// Where checkpoints go and what they hold: `RUN_DIR/checkpoints/step-NNNNNNNN/{model.safetensors,
/// optimizer.safetensors, state.json}`, written into a hidden temporary folder and renamed.
pub fn checkpoint_dir(run: &RunDir, step: u64) -> PathBuf {
    run.checkpoints_dir().join(format!("step-{step:08}"))
}

/// The newest complete checkpoint of a run.
pub fn latest_checkpoint(run: &RunDir) -> Result<Option<PathBuf>> {
    newest_checkpoint_in(&run.checkpoints_dir(), "state.json")
}

/// How `--auto-resume` begins in `out`: [`RunStart::Resume`] when it holds a complete checkpoint,
/// [`RunStart::Again`] when an earlier attempt left metrics but no checkpoint, else
/// [`RunStart::New`] (also when `out` is not a folder: the new run then says what is wrong).
pub fn auto_start(out: &Path) -> Result<RunStart> {
    if !out.is_dir() {
        return Ok(RunStart::New);
    }
    // Adds no more than the checkpoints folder every run has.
    let run = RunDir::create(out)?;
    if latest_checkpoint(&run)?.is_some() {
        return Ok(RunStart::Resume);
    }
    let logged = std::fs::metadata(run.metrics_path()).is_ok_and(|m| m.len() > 0);
    Ok(if logged {
        RunStart::Again
    } else {
        RunStart::New
    })
}

/// The checkpoint a resume continues from in a run's `checkpoints` folder: the newest whole one
/// ([`newest_whole_checkpoint`]; each damaged one passed over is a warning), checked against the
/// run's records (`fingerprint`: `data`'s), batch size and seed ([`check_resumable`]) before any of
/// its tensors is read.
pub(in crate::train) fn checkpoint_to_resume(
    checkpoints: &Path,
    data: &TrainData,
    fingerprint: &str,
    config: &TrainConfig,
) -> Result<Resumable> {
    let found = newest_whole_checkpoint(checkpoints)?
        .ok_or_else(|| TrainError::NothingToResume(checkpoints.to_path_buf()))?;
    for (dir, why) in &found.skipped {
        tracing::warn!(
            "--resume: {} is not whole ({why}); passed over for {}",
            dir.display(),
            found.dir.display()
        );
    }
    if found.verified == Verified::NoList {
        tracing::warn!(
            "--resume: {} has no {} (written by a tagfix before checkpoints carried one): its \
             bytes cannot be verified",
            found.dir.display(),
            checksums::CHECKSUM_FILE
        );
    }
    check_resumable(&found.dir, &found.state, data, fingerprint, config)?;
    Ok(found)
}

/// Loads a checkpoint's model and optimizer tensors into `vs` and `opt`; `state` is its
/// `state.json`, read and checked first ([`crate::train::run_files::read_state`], and against the
/// run by `checkpoint_to_resume`).
pub fn load_checkpoint(
    dir: &Path,
    state: &CheckpointState,
    vs: &VarStore,
    opt: &mut AdamW,
) -> Result<()> {
    let model_path = dir.join("model.safetensors");
    let report = weights::load_state_dict(vs, &model_path, &LoadOptions::strict())?;
    debug_assert!(report.is_complete());
    // One moment at a time from the file into its place (tch's reader held the whole file and
    // every tensor at once: twice the optimizer state in host memory, per rank).
    let opt_path = dir.join("optimizer.safetensors");
    let file = SafetensorsFile::open(&opt_path)?;
    let read = |key: &str| {
        file.read_tensor(key)?
            .map(|t| weights::to_tch(&t))
            .transpose()
    };
    opt.load_state_from(read, state.step, &opt_path.display().to_string())
}

/// A resume continues only where a step means what it meant: the same records (`fingerprint`:
/// `data`'s), split into batches of the same size and drawn in the same order (the configuration's
/// `batch_size` and `seed`). Another batch size would shift the epoch, the data position and the
/// learning-rate schedule the step counter stands for (a card with less memory keeps the batch with
/// smaller micro-batches); another seed would reorder the epoch in progress, so that its rest
/// repeats some records and skips others.
fn check_resumable(
    checkpoint: &Path,
    state: &CheckpointState,
    data: &TrainData,
    fingerprint: &str,
    config: &TrainConfig,
) -> Result<()> {
    let batch_size = config.batch_size;
    if state.data_fingerprint != fingerprint || state.records != data.len() {
        return Err(TrainError::DataChanged {
            checkpoint: checkpoint.to_path_buf(),
            then: state.records,
            now: data.len(),
        }
        .into());
    }
    match state.batch_size() {
        Some(then) if then != batch_size as u64 => Err(TrainError::BatchChanged {
            checkpoint: checkpoint.to_path_buf(),
            then,
            now: batch_size,
        }
        .into()),
        _ if state.seed != config.seed => Err(TrainError::SeedChanged {
            checkpoint: checkpoint.to_path_buf(),
            then: state.seed,
            now: config.seed,
        }
        .into()),
        _ => Ok(()),
    }
}
