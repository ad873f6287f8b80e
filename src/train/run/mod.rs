//! The training loop: every input checked before the first step, micro-batches accumulated into
//! optimizer steps, one [`crate::monitor::StepRecord`] per step in `RUN_DIR/metrics.jsonl`, atomic checkpoints
//! (model, optimizer state, step, RNG scheme, data position, loss weights) keeping the last N, exact
//! `--resume`, and a stop with a checkpoint on a non-finite loss.
//!
//! Randomness: the data order and augmentation derive from `(seed, epoch, position)` (see
//! [`super::data`]); libtorch's generator (dropout, DropPath) is re-seeded from `(seed, step, micro)`
//! before every micro-batch. A checkpoint's step therefore fixes all randomness that follows, and a
//! resumed CPU run reproduces the uninterrupted one bit for bit.
//!
//! `prepare` checks and builds what a run needs, `resume` finds and loads the checkpoint it continues
//! from, `dry_run` reports all of it without a step; this module drives the [`Trainer`].

use super::config::{TrainConfig, UnreadableImages};
use super::data::{LoaderConfig, TrainData};
use super::error::TrainError;
use super::failure;
pub use super::interrupt::StopRequest;
use super::model::{RamPlus, RamPlusConfig};
pub use super::run_files::{
    checkpoint_folders, newest_checkpoint_in, newest_whole_checkpoint, read_run_inputs, read_state,
    CheckpointState, InputDifference, Resumable, TrainInputs, RUN_FILE, STATE_SCHEMA,
};
pub use super::trainer::{RunStart, Trainer};
use super::validate::{score_images, score_readable_images, ValidationSet};
use crate::error::Result;
use crate::imaging::PilFilter;
/// What a finished run reports (feature-free, so `repair` reads it without libtorch).
pub use crate::monitor::RunSummary;
use crate::monitor::ValidationRecord;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::nn::VarStore;
use tch::Device;

mod dry_run;
mod prepare;
mod resume;

pub use dry_run::{dry_run, CheckpointSpace, DryRun};
pub use prepare::{device_of, prepare, prepare_on, prepare_rank, resolve_model, set_torch_threads};
pub use resume::{auto_start, checkpoint_dir, latest_checkpoint, load_checkpoint, load_moments};
pub(super) use resume::{checkpoint_to_resume, checkpoint_to_resume_in_group};

/// Everything checked and loaded, ready for the first step.
pub struct Prepared {
    pub config: TrainConfig,
    pub inputs: TrainInputs,
    pub model_config: RamPlusConfig,
    pub vs: VarStore,
    pub model: RamPlus,
    pub data: Arc<TrainData>,
    pub absent_slots: Vec<usize>,
    pub device: Device,
    pub loader: LoaderConfig,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// The validation set, when the run validates.
    pub validation: Option<ValidationSet>,
    /// Lines for the log: what was loaded, frozen, checked.
    pub notes: Vec<String>,
}

/// Trains (or resumes, when `resume` is set and `out` holds a checkpoint) and returns a summary:
/// validation at the start of a new run, then each step followed by the validation and checkpoint
/// it makes due.
pub fn train(prepared: Prepared, out: &Path, resume: bool) -> Result<RunSummary> {
    train_until(prepared, out, resume, StopRequest::new())
}

/// [`train`] that stops after the step in progress, with a checkpoint, once `stop` is requested
/// (by a signal: [`StopRequest::on_signals`]), ending with [`TrainError::Interrupted`].
pub fn train_until(
    prepared: Prepared,
    out: &Path,
    start: impl Into<RunStart>,
    stop: StopRequest,
) -> Result<RunSummary> {
    let mut trainer = opened(|| Trainer::new(prepared, out, start))?;
    trainer.stop_on(stop);
    drive_caught(&mut trainer)?;
    finished(trainer)
}

/// [`train_until`] as one rank of a data-parallel run (docs/distributed.md). A failing rank tells
/// the others why through the rendezvous store before it returns, so that theirs name it; a stop
/// signal on any rank stops them all after the same step.
pub fn train_distributed(
    prepared: Prepared,
    out: &Path,
    start: impl Into<RunStart>,
    group: super::dist::ProcessGroup,
    stop: StopRequest,
) -> Result<RunSummary> {
    let mut trainer = opened(|| Trainer::with_group(prepared, out, start, Some(group)))?;
    trainer.stop_on(stop);
    match drive_caught(&mut trainer) {
        Ok(()) => finished(trainer),
        Err(e) if matches!(e.kind(), crate::error::ErrorKind::Interrupted { .. }) => Err(e),
        Err(e) => {
            trainer.report_failure(&e.to_string());
            Err(e)
        }
    }
}

/// Opens a run ([`Trainer::new`]) with libtorch's failures as errors ([`failure::catch`]).
fn opened(open: impl FnOnce() -> Result<Trainer>) -> Result<Trainer> {
    failure::catch_or(open, |failure| {
        TrainError::LibtorchFailed {
            during: "opening the run".into(),
            failure,
            then: "No step was taken.".into(),
        }
        .into()
    })
}

/// [`drive`] with libtorch's failures (out of memory on the card, most often) as errors that say
/// what was saved ([`Trainer::failed`]) rather than panics that lose the steps since the last
/// checkpoint.
fn drive_caught(trainer: &mut Trainer) -> Result<()> {
    match failure::catch(|| drive(trainer)) {
        Ok(driven) => driven,
        Err(failure) => Err(trainer.failed(failure)),
    }
}

/// Ends a run ([`Trainer::finish`]) with libtorch's failures as errors.
fn finished(trainer: Trainer) -> Result<RunSummary> {
    let checkpoints = trainer.checkpoints_dir();
    failure::catch_or(
        || trainer.finish(),
        |failure| {
            TrainError::LibtorchFailed {
                during: "finishing the run".into(),
                failure,
                then: format!("Its checkpoints are in {}.", checkpoints.display()),
            }
            .into()
        },
    )
}

/// The training loop: validation at the start of a new run (or, resumed, the one the step it
/// begins at lacks), then each step followed by the validation and checkpoint it makes due, or by
/// the checkpoint a stop signal asks for.
fn drive(trainer: &mut Trainer) -> Result<()> {
    if trainer.at_start() || trainer.validation_missing()? {
        trainer.validate()?;
    }
    while !trainer.is_done() {
        trainer.step()?;
        if trainer.interrupt_due() {
            return Err(trainer.interrupt());
        }
        if trainer.validation_due() {
            trainer.validate()?;
        }
        if trainer.checkpoint_due() {
            trainer.checkpoint()?;
        }
    }
    Ok(())
}

/// `validation at step S (NAME, N images): mAP … CP … CR … CF1 … OF1 …; absent slots: mAP …`.
pub fn validation_line(rec: &ValidationRecord) -> String {
    let group = |s: &crate::eval::Summary| {
        format!(
            "mAP {:.4} CP {:.4} CR {:.4} CF1 {:.4} OF1 {:.4} ({} tags)",
            s.map, s.cp, s.cr, s.cf1, s.of1, s.classes
        )
    };
    let left_out = match rec.left_out {
        0 => String::new(),
        n => format!(", {n} unreadable left out"),
    };
    let mut line = format!(
        "validation at step {} ({}, {} images{left_out}): {}",
        rec.step,
        rec.benchmark,
        rec.images,
        rec.main
            .as_ref()
            .map(group)
            .unwrap_or_else(|| "no present tag with positives".into())
    );
    if let Some(a) = &rec.absent {
        line.push_str(&format!("; absent slots: {}", group(a)));
    }
    line
}

/// Mean sigmoid probability of every slot over the first `limit` records, each image resized (bicubic)
/// to the model's input without augmentation, in eval mode. Under [`UnreadableImages::Skip`] the
/// records whose image cannot be read are left out.
pub fn slot_probabilities(
    model: &RamPlus,
    data: &TrainData,
    device: Device,
    limit: usize,
    unreadable: UnreadableImages,
) -> Result<Vec<f64>> {
    let paths: Vec<PathBuf> = (0..data.len().min(limit))
        .map(|i| data.image_path(&data.records.get(i)))
        .collect();
    let probs = match unreadable {
        UnreadableImages::Stop => score_images(model, &paths, device, 16, PilFilter::Bicubic)?,
        UnreadableImages::Skip => {
            score_readable_images(model, &paths, device, 16, PilFilter::Bicubic)?.0
        }
    };
    let nc = model.config.num_class;
    let n = probs.len() / nc.max(1);
    let mut sums = vec![0f64; nc];
    for row in probs.chunks(nc) {
        for (s, p) in sums.iter_mut().zip(row) {
            *s += f64::from(*p);
        }
    }
    Ok(sums.into_iter().map(|s| s / n.max(1) as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's and the summary's validation line counts the images a validation left out.
    #[test]
    fn a_validation_line_says_how_many_images_were_left_out() {
        let rec = ValidationRecord {
            step: 30,
            benchmark: "synth".into(),
            images: 8,
            left_out: 0,
            main: None,
            absent: None,
        };
        let line = validation_line(&rec);
        assert!(
            line.starts_with("validation at step 30 (synth, 8 images): "),
            "{line}"
        );
        let line = validation_line(&ValidationRecord { left_out: 2, ..rec });
        assert!(
            line.starts_with("validation at step 30 (synth, 8 images, 2 unreadable left out): "),
            "{line}"
        );
    }
}
