//! Where a run continues: its checkpoints folder, the newest whole checkpoint checked against
//! the run's records, and loading it.

use crate::error::Result;
use crate::fsutil::checksums::{self, Verified};
use crate::monitor::RunDir;
use crate::tensors::safetensors_io::SafetensorsFile;
use crate::train::config::TrainConfig;
use crate::train::data::TrainData;
use crate::train::dist::ProcessGroup;
use crate::train::error::TrainError;
use crate::train::optim::AdamW;
use crate::train::run_files::{
    newest_checkpoint_in, newest_whole_checkpoint, read_state, CheckpointState, Resumable,
    CHECKPOINT_TENSORS,
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

/// [`checkpoint_to_resume`] for a rank of a data-parallel run: rank 0 finds the newest whole
/// checkpoint (reading and hashing every file of it) and tells the others which it is, so that
/// each checkpoint is verified once rather than by every rank (on a shared file system, N ranks
/// hashing it read it N times over before loading it) and every rank resumes from the same one.
/// The others read its `state.json` and tensor headers and check them against the run.
pub(in crate::train) fn checkpoint_to_resume_in_group(
    checkpoints: &Path,
    data: &TrainData,
    fingerprint: &str,
    config: &TrainConfig,
    group: &mut ProcessGroup,
) -> Result<Resumable> {
    if group.is_main() {
        let found = checkpoint_to_resume(checkpoints, data, fingerprint, config);
        let told = match &found {
            Ok(f) => chosen_text(&f.dir, f.verified),
            Err(_) => String::new(),
        };
        // Rank 0's own error, where it has one, says more than a failed exchange.
        let shared = group.all_gather_bytes(told.as_bytes());
        let found = found?;
        shared?;
        return Ok(found);
    }
    let told = group.all_gather_bytes(b"")?;
    let told = String::from_utf8_lossy(told.first().map_or(&[][..], Vec::as_slice)).into_owned();
    let (name, verified) = parse_chosen(&told)
        .ok_or_else(|| TrainError::NoResumeOnRank0(checkpoints.to_path_buf()))?;
    let dir = checkpoints.join(name);
    let state = read_state(&dir)?;
    for name in CHECKPOINT_TENSORS {
        SafetensorsFile::open(&dir.join(name))?;
    }
    check_resumable(&dir, &state, data, fingerprint, config)?;
    Ok(Resumable {
        dir,
        state,
        verified,
        skipped: Vec::new(),
    })
}

/// What rank 0 tells the other ranks about the checkpoint it chose: its folder's name and whether
/// its files matched their `SHA256SUMS`.
fn chosen_text(dir: &Path, verified: Verified) -> String {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let verified = match verified {
        Verified::Matched => "matched",
        Verified::NoList => "no-list",
    };
    format!("{name}\n{verified}")
}

/// [`chosen_text`] read back: `None` for an empty text (rank 0 found none to resume from) or one
/// that names anything but a `step-N` folder.
fn parse_chosen(text: &str) -> Option<(&str, Verified)> {
    let (name, verified) = text.split_once('\n')?;
    if name.contains('/') {
        return None;
    }
    crate::train::run_files::folder_step(Path::new(name))?;
    let verified = match verified {
        "matched" => Verified::Matched,
        "no-list" => Verified::NoList,
        _ => return None,
    };
    Some((name, verified))
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
    load_moments(dir, state, opt)
}

/// Loads a checkpoint's optimizer moments into `opt` (each rank's share of them where the state is
/// sharded) and sets its step.
pub fn load_moments(dir: &Path, state: &CheckpointState, opt: &mut AdamW) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_0s_choice_is_read_back_and_nothing_else() {
        let told = chosen_text(Path::new("run/checkpoints/step-00000012"), Verified::NoList);
        assert_eq!(
            parse_chosen(&told),
            Some(("step-00000012", Verified::NoList))
        );
        let matched = "step-00000003\nmatched";
        assert_eq!(
            parse_chosen(matched),
            Some(("step-00000003", Verified::Matched))
        );
        for refused in [
            "",
            "step-00000003",
            "step-00000003\nmaybe",
            "../step-00000003\nmatched",
            "other\nmatched",
        ] {
            assert_eq!(parse_chosen(refused), None, "{refused:?}");
        }
    }
}
