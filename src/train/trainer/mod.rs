//! [`Trainer`]: one training run as a value. [`Trainer::new`] opens (or resumes) the run folder,
//! [`Trainer::step`] takes one optimizer step, [`Trainer::validate`] and [`Trainer::checkpoint`] act at
//! the current step, [`Trainer::finish`] writes the last checkpoint and returns the summary;
//! [`super::run::train`] drives them. The state a step needs lives in fields, not in closures, so
//! each piece can be called (and tested) alone.

use super::config::TrainConfig;
use super::data::{Loader, TrainData};
use super::dist::ProcessGroup;
use super::interrupt::StopRequest;
use super::model::{RamPlus, RamPlusConfig};
use super::objective::{AbsentSlots, LossWeighting};
use super::optim::{AdamW, LrSchedule};
use super::saver::CheckpointWriter;
use super::upload::PixelNormalizer;
use crate::monitor::{RunDir, RunMonitor};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::nn::VarStore;
use tch::Device;

mod auto_batch;
mod checkpoints;
mod failed;
mod finish;
mod losses;
mod open;
mod pace;
mod ranks;
mod step;
mod validation;

pub use finish::early_and_late;
pub(super) use open::accumulation_per_rank;
use validation::Validator;

pub use losses::{Accumulated, RawTerms};
use pace::StepPace;

/// How a step reads its values from the device (on CUDA every read is a host sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepSync {
    /// The loss terms accumulate on the device, finiteness is checked and gradients are clipped
    /// there, a non-finite step is skipped by the fused AdamW kernel itself, and the step reads one
    /// packed vector once (the per-parameter loop optimizer always reads as
    /// [`StepSync::PerMicroBatch`] does).
    #[default]
    Once,
    /// The earlier flow: each micro-batch's terms and weighted total are read and checked as they
    /// are computed, then the gradient norms, with clipping on the host. Kept to compare against
    /// (`scripts/bench-syncs.sh`) and for the loop optimizer.
    PerMicroBatch,
}

/// Wall-clock seconds of the run, across resumes.
struct Clock {
    started: Instant,
    /// Seconds the run had taken before this invocation (from the resumed checkpoint).
    offset: f64,
}

impl Clock {
    fn wall_s(&self) -> f64 {
        self.offset + self.started.elapsed().as_secs_f64()
    }
}

/// One training run: model, optimizer, data loader, monitor and the position in the run.
pub struct Trainer {
    config: TrainConfig,
    model_config: RamPlusConfig,
    vs: VarStore,
    model: RamPlus,
    data: Arc<TrainData>,
    absent_slots: Vec<usize>,
    absent: AbsentSlots,
    device: Device,
    /// Normalises the uploaded RGB8 images on the device.
    pixels: PixelNormalizer,
    out: PathBuf,
    run: RunDir,
    opt: AdamW,
    sched: LrSchedule,
    weighting: LossWeighting,
    /// `None` on ranks other than 0.
    monitor: Option<RunMonitor>,
    /// The process group of a distributed run (`None`: one process).
    group: Option<ProcessGroup>,
    validator: Option<Validator>,
    loader: Loader,
    bar: indicatif::ProgressBar,
    clock: Clock,
    /// `wall_s` of the last step's record (what its checkpoint stores).
    last_wall_s: f64,
    fingerprint: String,
    steps_per_epoch: u64,
    total_steps: u64,
    first_step: u64,
    /// Optimizer steps completed.
    step: u64,
    micro: usize,
    accumulation: usize,
    history: Vec<RawTerms>,
    last_saved: Option<PathBuf>,
    /// Writes checkpoints on a background thread (rank 0).
    writer: CheckpointWriter,
    sync: StepSync,
    /// Set by a stop signal ([`Trainer::stop_on`]); read once per step.
    stop: StopRequest,
    /// The step just taken is the last: a stop signal arrived (here or on another rank).
    interrupt: Option<Interrupt>,
    /// When this rank's clock for `checkpoint_every` as a duration started: the first step, then
    /// each periodic checkpoint.
    checkpoint_clock: Option<Instant>,
    /// The ranks agreed that a time checkpoint is due after the step just taken.
    time_checkpoint: bool,
    /// How fast this invocation's steps go: for the progress lines and the summary.
    pace: StepPace,
    /// Unreadable images this rank's loader replaced in this invocation (`--unreadable-images skip`).
    skipped_images: u64,
    /// What the trainer is doing, for a libtorch failure caught in the middle of it.
    doing: Doing,
}

/// What the trainer is doing: where a libtorch failure struck ([`Trainer::failed`]), and so
/// whether the parameters and moments still hold the state after the steps taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Doing {
    #[default]
    Between,
    /// A step's forward and backward passes (the parameters untouched so far).
    Step,
    /// The optimizer update, until the step is counted (the parameters may be half-updated).
    Update,
    Validation,
    Checkpoint,
}

/// Where the stop signal the ranks agreed on arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// On this process: its number.
    Here(i32),
    /// On another rank only: the signal the ranks agreed on.
    OtherRank(i32),
}

/// How a run begins in its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStart {
    /// A new run: a folder that already holds metrics or a checkpoint is refused.
    New,
    /// From the newest checkpoint (there must be one).
    Resume,
    /// From the beginning in a folder an earlier attempt left without a checkpoint (`--auto-resume`):
    /// that attempt's metrics, events and validation records are replaced, as a resume replaces
    /// the records after its checkpoint.
    Again,
}

impl From<bool> for RunStart {
    /// `resume` as the flag it used to be: true is [`RunStart::Resume`], false [`RunStart::New`].
    fn from(resume: bool) -> Self {
        if resume {
            RunStart::Resume
        } else {
            RunStart::New
        }
    }
}

impl Trainer {
    /// Optimizer steps completed (the checkpoint's step after a resume, before any `step`).
    pub fn current_step(&self) -> u64 {
        self.step
    }

    /// Whether every step of the run has been taken.
    pub fn is_done(&self) -> bool {
        self.step >= self.total_steps
    }

    /// Whether a new (not resumed) run is at its start: validation at step 0 is due then.
    pub fn at_start(&self) -> bool {
        self.step == 0
    }

    /// Stops after the step in progress when `stop` is requested (by a signal: see
    /// [`StopRequest::on_signals`]); [`Trainer::interrupt_due`] then says so. In a distributed run
    /// the ranks vote through the step's loss summary, so all stop after the same step.
    pub fn stop_on(&mut self, stop: StopRequest) {
        self.stop = stop;
    }

    /// Whether a stop signal ended the run after the current step ([`Trainer::interrupt`] then).
    pub fn interrupt_due(&self) -> bool {
        self.interrupt.is_some()
    }

    /// How the steps read their values from the device ([`StepSync::Once`] unless set).
    pub fn set_step_sync(&mut self, sync: StepSync) {
        self.sync = sync;
    }

    /// The run's `checkpoints` folder.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.run.checkpoints_dir()
    }

    /// Whether this process writes the run's files (rank 0, or the only process).
    pub fn is_main(&self) -> bool {
        self.group.as_ref().is_none_or(ProcessGroup::is_main)
    }

    /// Tells the other ranks (through the rendezvous store) why this one stops, so that their
    /// failing collectives name it.
    pub fn report_failure(&mut self, message: &str) {
        if let Some(g) = self.group.as_mut() {
            g.report_failure(message);
        }
    }
}

/// splitmix-style seed for libtorch's generator at (step, micro).
pub(crate) fn torch_seed(seed: u64, step: u64, micro: usize) -> i64 {
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((z ^ (z >> 29)) >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_seeds_differ_by_step_and_micro_batch_and_are_non_negative() {
        let seeds: Vec<i64> = (0..4)
            .flat_map(|step| (0..3).map(move |m| torch_seed(7, step, m)))
            .collect();
        let mut unique = seeds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len());
        assert!(seeds.iter().all(|s| *s >= 0));
        assert_eq!(torch_seed(7, 2, 1), torch_seed(7, 2, 1));
        assert_ne!(torch_seed(7, 2, 1), torch_seed(8, 2, 1));
    }
}
