//! [`Trainer`]: one training run as a value. [`Trainer::new`] opens (or resumes) the run folder,
//! [`Trainer::step`] takes one optimizer step, [`Trainer::validate`] and [`Trainer::checkpoint`] act at
//! the current step, [`Trainer::finish`] writes the last checkpoint and returns the summary;
//! [`super::run::train`] drives them. The state a step needs lives in fields, not in closures, so
//! each piece can be called (and tested) alone.

use super::autocast::{with_autocast, CastCacheScope};
use super::config::{GradComm, GradSync, MicroBatchSize, Precision, TrainConfig};
use super::data::{Loader, MicroBatch, TrainData};
use super::dist::{zero, ProcessGroup};
use super::error::TrainError;
use super::interrupt::{self, StopRequest};
use super::model::{RamPlus, RamPlusConfig};
use super::objective::{micro_losses, step_losses, AbsentSlots, LossWeighting, MicroInputs};
use super::optim::{AdamW, LrSchedule, OptimizerImpl};
use super::saver::{remove_unfinished, CheckpointWriter, Snapshot};
use super::sync::{read_f64, read_f64s};
use super::upload::{upload, PixelNormalizer};
use super::run::{
    checkpoint_dir, checkpoint_to_resume, latest_checkpoint, load_checkpoint, slot_probabilities, Resumable,
    validation_line, CheckpointSpace, CheckpointState, Prepared, RunSummary, STATE_SCHEMA,
};
use super::validate::ValidationSet;
use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::monitor::{
    events_table, GroupNorms, LossTerm, RunDir, RunMonitor, StepRecord, ValidationRecord,
    ValidationWriter,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};


mod auto_batch;
mod losses;
mod pace;
mod ranks;

use auto_batch::AutoProbe;
pub use losses::{Accumulated, RawTerms};
use losses::{
    non_finite_reason, Agreed, DeviceLosses, MicroOut, StepValues, NON_FINITE, ROW, SUMMARY,
    VOTES, VOTES_AT,
};
use pace::{progress_bar, progress_line, StepPace};
use ranks::{agree_and_share, all_reduce_grads, share_sharded_update, sum_over_ranks};

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

/// Held-out validation: the set, where its records go, and those of this invocation.
struct Validator {
    set: ValidationSet,
    /// `None` on ranks other than 0 (rank 0 alone writes the run's files).
    writer: Option<ValidationWriter>,
    batch: usize,
    records: Vec<ValidationRecord>,
}

impl Validator {
    /// Opens `validation.jsonl`: truncated for a new run, cut back to `step` on resume.
    fn open(
        set: ValidationSet,
        run: &RunDir,
        resume_at: Option<u64>,
        batch: usize,
        writes: bool,
    ) -> Result<Self> {
        let writer = match resume_at {
            _ if !writes => None,
            Some(step) => Some(ValidationWriter::resume(&run.validation_path(), step)?),
            None => {
                crate::fsutil::write_bytes_atomic(&run.validation_path(), b"")?;
                Some(ValidationWriter::append(&run.validation_path())?)
            }
        };
        Ok(Validator {
            set,
            writer,
            batch,
            records: Vec::new(),
        })
    }
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
    /// Opens the run folder `out`: a new run (refused when `out` already holds one), with
    /// [`RunStart::Resume`] the newest checkpoint's model, optimizer, loss weights and position, or
    /// [`RunStart::Again`]. Writes `config.toml` and `run.json` and starts the data loader at the
    /// first step to take.
    pub fn new(prepared: Prepared, out: &Path, start: impl Into<RunStart>) -> Result<Self> {
        Self::with_group(prepared, out, start, None)
    }

    /// [`Trainer::new`] as one rank of a data-parallel run: this rank takes its share of every
    /// step's micro-batches, rank 0 alone writes the run's files, and before returning every rank
    /// has checked that all agree on configuration, vocabulary, label embeddings and step, and
    /// holds rank 0's parameters.
    pub fn with_group(
        prepared: Prepared,
        out: &Path,
        start: impl Into<RunStart>,
        mut group: Option<ProcessGroup>,
    ) -> Result<Self> {
        let start = start.into();
        let resume = start == RunStart::Resume;
        let main = group.as_ref().is_none_or(ProcessGroup::is_main);
        let world = group.as_ref().map_or(1, ProcessGroup::world_size);
        let rank = group.as_ref().map_or(0, ProcessGroup::rank);
        let Prepared {
            mut config,
            inputs,
            model_config,
            vs,
            model,
            data,
            absent_slots,
            device,
            loader: mut loader_cfg,
            steps_per_epoch,
            total_steps,
            validation,
            notes,
        } = prepared;
        let absent = AbsentSlots::new(model_config.num_class, &absent_slots, config.absent, device);
        let run = RunDir::create(out)?;
        let mut opt = AdamW::new(&vs, &config.frozen_prefixes(), &config)?;
        if config.shard_optimizer {
            // Before the micro-batch probe, so that it sees the memory the sharding frees.
            if world > 1 {
                tracing::info!("{}", opt.shard(rank, world)?);
            } else {
                tracing::info!("shard_optimizer: a single rank keeps the whole optimizer state");
            }
        }
        if config.micro_batch_size == Some(MicroBatchSize::Auto) {
            let probe = AutoProbe {
                model: &model,
                model_config: &model_config,
                absent: &absent,
                config: &config,
                device,
                teacher: data.teacher.is_some() || data.online_teacher.is_some(),
            };
            let micro = probe.choose(world, group.as_mut(), main)?;
            opt.zero_grad();
            config.micro_batch_size = Some(micro.into());
            loader_cfg.micro_batch = micro;
        }
        let (micro, accumulation) = accumulation_per_rank(&config, world)?;
        if main {
            for n in &notes {
                tracing::info!("{n}");
            }
        }
        tracing::info!("{}", opt.summary);
        let fingerprint = data.records.fingerprint();
        let resumed = match start {
            RunStart::Resume => Some(resume_state(
                &run,
                &vs,
                &mut opt,
                &data,
                &fingerprint,
                &config,
            )?),
            RunStart::New if main => {
                refuse_existing_run(&run, out)?;
                None
            }
            RunStart::New | RunStart::Again => None,
        };
        let start_step = resumed.as_ref().map_or(0, |s| s.step);
        if main {
            for (dir, bytes) in remove_unfinished(&run) {
                tracing::warn!(
                    "removed {} ({}): a checkpoint whose write never finished (the process was \
                     stopped while writing it)",
                    dir.display(),
                    indicatif::HumanBytes(bytes)
                );
            }
            let trained = opt.trained_vars();
            let space =
                CheckpointSpace::of_run(&vs, trained.iter(), config.keep_checkpoints, out);
            if let (true, Some(free)) = (space.short(), space.available) {
                tracing::warn!(
                    "{} free where the checkpoints go, and the run needs {} more for them ({} each, \
                     up to {} while one is written): it will stop at a checkpoint it cannot write",
                    indicatif::HumanBytes(free),
                    indicatif::HumanBytes(space.more_needed()),
                    indicatif::HumanBytes(space.bytes),
                    config.keep_checkpoints + 1
                );
            }
        }
        if let Some(g) = group.as_mut() {
            agree_and_share(g, &config, &inputs, start_step, &vs)?;
            if config.grad_sync == GradSync::Overlap && g.world_size() > 1 {
                g.overlap_grads(&opt.trained_vars(), config.grad_comm == GradComm::Bf16)?;
            }
        }
        let monitor = if main {
            write_run_files(&run, &config, &inputs)?;
            // Starting again continues the monitor from step 0: no metrics record is kept.
            let from = (start != RunStart::New).then_some(start_step);
            Some(open_monitor(&run, &config, from)?)
        } else {
            None
        };
        if start_step >= total_steps {
            return Err(TrainError::NothingToDo {
                step: start_step,
                total: total_steps,
            }
            .into());
        }
        let validator = match validation {
            Some(set) => {
                let batch = config.val_batch_size.unwrap_or(micro);
                // Starting again truncates it, as a new run does.
                let resume_at = resume.then_some(start_step);
                Some(Validator::open(set, &run, resume_at, batch, main)?)
            }
            None => None,
        };
        let weighting = match &resumed {
            Some(state) => {
                let (weighting, change) = LossWeighting::resumed(state.weighting.clone(), &config);
                if let (Some(change), true) = (change, main) {
                    tracing::warn!("{change}");
                }
                weighting
            }
            None => LossWeighting::of_config(&config),
        };
        let micros = rank * accumulation..(rank + 1) * accumulation;
        let loader =
            Loader::start_micro_range(data.clone(), loader_cfg, start_step, total_steps, micros)?;
        Ok(Trainer {
            sched: LrSchedule::new(&config, steps_per_epoch, total_steps),
            absent,
            weighting,
            clock: Clock {
                started: Instant::now(),
                offset: resumed.as_ref().map_or(0.0, |s| s.wall_s),
            },
            last_wall_s: 0.0,
            checkpoint_clock: None,
            time_checkpoint: false,
            pace: StepPace::default(),
            skipped_images: 0,
            // Progress is info: `--quiet` hides the bar too.
            bar: if main && tracing::enabled!(tracing::Level::INFO) {
                progress_bar(start_step, total_steps)
            } else {
                indicatif::ProgressBar::hidden()
            },
            out: out.to_path_buf(),
            config,
            model_config,
            vs,
            model,
            data,
            absent_slots,
            device,
            pixels: PixelNormalizer::clip(device),
            run,
            opt,
            monitor,
            group,
            validator,
            loader,
            fingerprint,
            steps_per_epoch,
            total_steps,
            first_step: start_step,
            step: start_step,
            micro,
            accumulation,
            history: Vec::new(),
            last_saved: None,
            writer: CheckpointWriter::default(),
            sync: StepSync::default(),
            stop: StopRequest::new(),
            interrupt: None,
        })
    }

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

    /// Takes one optimizer step: the micro-batches' forward and backward passes, the gradient
    /// norm, clipping, the AdamW update, and the step's record in `metrics.jsonl` (with the health
    /// detectors and the loss balancing seeing it). A non-finite loss term or gradient norm saves
    /// the state before this step and ends with [`TrainError::Stopped`].
    pub fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        self.checkpoint_clock.get_or_insert(t0);
        self.pace.begin(t0, self.step);
        let step = self.step;
        let lr = self.sched.lr(step);
        let done = if self.sync == StepSync::Once && self.opt.imp == OptimizerImpl::Fused {
            self.step_once(step, lr)?
        } else {
            self.step_synced(step, lr)?
        };
        let secs = t0.elapsed().as_secs_f64();
        let wall_s = self.clock.wall_s();
        let record = StepRecord {
            step: step + 1,
            epoch: step / self.steps_per_epoch,
            lr,
            loss: step_losses(&done.acc.raw, &self.weighting.weights),
            total: done.acc.total,
            grad_norm: done.grad_norm,
            update_norm: done.update_norm,
            images_per_s: self.config.batch_size as f64 / secs.max(1e-9),
            data_wait_s: done.acc.data_wait_s,
            wall_s,
        };
        self.pace.end(record.data_wait_s);
        self.observe(&record, done.acc.raw)?;
        self.step = step + 1;
        self.last_wall_s = wall_s;
        self.bar.set_position(self.step);
        self.time_checkpoint = done.agreed.checkpoint;
        if let Some(agreed) = done.agreed.stop.filter(|_| !self.is_done()) {
            self.interrupt = Some(match self.stop.signal() {
                Some(signal) => Interrupt::Here(signal),
                None => Interrupt::OtherRank(agreed),
            });
        }
        Ok(record)
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

    /// Saves a checkpoint of the current step and waits until it is complete (every rank), then
    /// returns [`TrainError::Interrupted`] naming it (or the error that kept it from being saved).
    pub fn interrupt(&mut self) -> crate::Error {
        let state = self.state_at(self.step, self.last_wall_s);
        match self.save(&state, true) {
            Ok(checkpoint) => {
                self.last_saved = Some(checkpoint.clone());
                self.bar.abandon();
                TrainError::Interrupted {
                    step: self.step,
                    signal: match self.interrupt {
                        Some(Interrupt::Here(signal) | Interrupt::OtherRank(signal)) => signal,
                        None => interrupt::SIGTERM,
                    },
                    from_other_rank: matches!(self.interrupt, Some(Interrupt::OtherRank(_))),
                    checkpoint,
                    run_dir: self.out.clone(),
                }
                .into()
            }
            Err(e) => e,
        }
    }

    /// This rank's [`VOTES`] for the step: its stop signal ([`interrupt::vote`]) and whether its
    /// clock makes a time checkpoint due.
    fn votes(&self) -> [f64; VOTES] {
        let mut votes = [0.0; VOTES];
        votes[..interrupt::VOTES].copy_from_slice(&interrupt::vote(self.stop.signal()));
        let interval = self.config.checkpoint_every.interval();
        let due = matches!((interval, self.checkpoint_clock), (Some(every), Some(since)) if since.elapsed() >= every);
        votes[interrupt::VOTES] = f64::from(u8::from(due));
        votes
    }

    /// How the steps read their values from the device ([`StepSync::Once`] unless set).
    pub fn set_step_sync(&mut self, sync: StepSync) {
        self.sync = sync;
    }

    /// Whether update norms are measured at `step` (0-based): on logging steps only, since they
    /// cost a parameter copy.
    fn logging_step(&self, step: u64) -> bool {
        let log_every = self.config.log_every;
        log_every > 0 && (step + 1) % log_every == 0
    }

    /// Before micro-batch `m`'s backward pass: the last one of the step starts the gradient buckets
    /// as they complete (distributed, `grad_sync = "overlap"`); the earlier ones accumulate locally.
    fn arm_grad_overlap(&mut self, m: usize) {
        if m + 1 == self.accumulation {
            if let Some(group) = self.group.as_mut() {
                group.arm_grad_overlap();
            }
        }
    }

    /// The next micro-batch (`m` of `step`) and the seconds spent waiting for it.
    fn next_micro_batch(&mut self, step: u64, m: usize) -> Result<(MicroBatch, f64)> {
        let w0 = Instant::now();
        let mb = self
            .loader
            .next_batch()
            .ok_or(TrainError::LoaderStopped(step + 1))??;
        debug_assert_eq!((mb.step, mb.micro % self.accumulation), (step, m));
        for s in &mb.skipped {
            tracing::warn!(
                "step {}: skipped an unreadable image: {}; record {} took its place in micro-batch {}",
                step + 1,
                s.reason,
                s.replaced_by,
                mb.micro
            );
        }
        self.skipped_images += mb.skipped.len() as u64;
        Ok((mb, w0.elapsed().as_secs_f64()))
    }

    /// [`StepSync::Once`]: the micro-batches' loss values accumulate on the device, the fused update
    /// checks finiteness, clips and skips there, and one read brings back everything the step
    /// reports (see [`StepValues`]).
    fn step_once(&mut self, step: u64, lr: f64) -> Result<StepValues> {
        self.opt.zero_grad();
        let mut losses = DeviceLosses::new(self.accumulation, self.device);
        let casts = self.cast_cache();
        for m in 0..self.accumulation {
            let (mb, wait) = self.next_micro_batch(step, m)?;
            losses.data_wait_s += wait;
            let out = self.micro_batch(&mb)?;
            losses.add(m, &mb, &out);
            self.arm_grad_overlap(m);
            out.weighted.backward();
        }
        drop(casts);
        let summary = losses.summary(self.votes());
        if let Some(group) = self.group.as_mut() {
            // DDP's bucketed all-reduce of the gradients, once per step (started during the last
            // micro-batch's backward pass when overlapped), then the loss summary: every rank holds
            // the one-rank run's values.
            group.set_step(step + 1);
            all_reduce_grads(group, &self.opt, self.config.grad_comm)?;
            group.all_reduce_sum_(std::slice::from_ref(&summary))?;
        }
        let bad = summary.narrow(0, NON_FINITE as i64, 1);
        let clip = self.config.grad_clip.filter(|c| *c > 0.0);
        let measure = self.logging_step(step);
        let update = self.opt.update_on_device(lr, clip, &bad, measure)?;
        if let Some(group) = self.group.as_mut() {
            share_sharded_update(group, &self.opt, update.update_norms())?;
        }
        let packed = Tensor::cat(&[&summary, &losses.rows.reshape([-1]), update.packed()], 0);
        let values = read_f64s(&packed, "the step's losses and norms")?;
        let (head, rest) = values.split_at(SUMMARY + ROW * self.accumulation);
        let settled = self.opt.settle(&update, rest)?;
        let (sums, rows) = head.split_at(SUMMARY);
        if sums[NON_FINITE] > 0.0 {
            let reason = losses.non_finite(rows).unwrap_or_else(|| {
                format!(
                    "a loss term is non-finite on another rank ({} micro-batch(es))",
                    sums[NON_FINITE]
                )
            });
            return Err(self.stop(step, reason));
        }
        if settled.skipped {
            let reason = format!(
                "the gradient norm is {} although every loss term is finite",
                settled.grad_norm.total
            );
            return Err(self.stop(step, reason));
        }
        Ok(StepValues {
            acc: Accumulated {
                raw: losses.raw_terms(sums),
                total: sums[ROW - 1],
                data_wait_s: losses.data_wait_s,
            },
            grad_norm: settled.grad_norm,
            update_norm: settled.update_norm,
            agreed: Agreed::from_sums(&sums[VOTES_AT..SUMMARY]),
        })
    }

    /// [`StepSync::PerMicroBatch`]: each micro-batch's terms are read and checked as they are
    /// computed, then the gradient norms, clipping and the update read on the host.
    fn step_synced(&mut self, step: u64, lr: f64) -> Result<StepValues> {
        let (acc, agreed) = self.accumulate(step)?;
        let (grad_norm, update_norm) = self.update(step, lr)?;
        Ok(StepValues {
            acc,
            grad_norm,
            update_norm,
            agreed,
        })
    }

    /// Zeroes the gradients and runs every micro-batch of `step`, accumulating their gradients and
    /// reading their loss terms as they come; also returns what the step's votes agreed on (over the
    /// ranks).
    fn accumulate(&mut self, step: u64) -> Result<(Accumulated, Agreed)> {
        self.opt.zero_grad();
        let mut acc = Accumulated::default();
        let mut non_finite = None;
        let casts = self.cast_cache();
        for m in 0..self.accumulation {
            let (mb, wait) = self.next_micro_batch(step, m)?;
            acc.data_wait_s += wait;
            let out = self.micro_batch(&mb)?;
            let mut terms = Vec::new();
            for (t, v) in &out.terms {
                terms.push((*t, read_f64(v, "a loss term")?));
            }
            if let Some((t, v)) = terms.iter().find(|(_, v)| !v.is_finite()) {
                let records = &mb.indices[..mb.indices.len().min(8)];
                let reason = non_finite_reason(&format!("loss term `{t}`"), *v, mb.micro, records);
                if self.group.is_none() {
                    return Err(self.stop(step, reason));
                }
                // The other ranks are waiting for this step's sums: stop together after them.
                non_finite.get_or_insert(reason);
                continue;
            }
            for (t, v) in terms {
                acc.add(t, v);
            }
            acc.total += read_f64(&out.weighted, "the weighted loss")?;
            self.arm_grad_overlap(m);
            out.weighted.backward();
        }
        drop(casts);
        let agreed = match self.group {
            Some(_) => self.all_reduce(step, &mut acc, non_finite)?,
            None => Agreed::from_sums(&self.votes()),
        };
        Ok((acc, agreed))
    }

    /// Distributed, [`StepSync::PerMicroBatch`]: sums the gradients (DDP's bucketed all-reduce,
    /// once per step after the last micro-batch) and the loss terms over the ranks, so every rank
    /// holds the one-rank run's values. A non-finite term on any rank stops every rank. Returns what
    /// the ranks' votes agreed on.
    fn all_reduce(
        &mut self,
        step: u64,
        acc: &mut Accumulated,
        non_finite: Option<String>,
    ) -> Result<Agreed> {
        let votes = self.votes();
        let group = self.group.as_mut().expect("distributed");
        group.set_step(step + 1);
        all_reduce_grads(group, &self.opt, self.config.grad_comm)?;
        let mut values = [0f64; 8 + VOTES];
        for &(t, v) in &acc.raw {
            values[t as usize] = v;
            values[3 + t as usize] = 1.0;
        }
        values[6] = acc.total;
        values[7] = f64::from(u8::from(non_finite.is_some()));
        values[8..].copy_from_slice(&votes);
        let sums = group.all_reduce_scalars(&values)?;
        if sums[7] > 0.0 {
            let reason = non_finite.unwrap_or_else(|| {
                format!("a loss term is non-finite on {} other rank(s)", sums[7])
            });
            return Err(self.stop(step, reason));
        }
        acc.raw = [LossTerm::Tag, LossTerm::Align, LossTerm::Dis]
            .into_iter()
            .filter(|t| sums[3 + *t as usize] > 0.0)
            .map(|t| (t, sums[t as usize]))
            .collect();
        acc.total = sums[6];
        Ok(Agreed::from_sums(&sums[8..]))
    }

    /// A bf16 step's cast cache: each weight is cast to bf16 once for all the step's micro-batches
    /// (dropped before the update, which changes the weights).
    fn cast_cache(&self) -> Option<CastCacheScope> {
        (self.config.precision == Precision::Bf16).then(CastCacheScope::open)
    }

    /// Forward pass of one micro-batch, libtorch's generator seeded from `(seed, step, micro)`: its
    /// raw terms (detached) and the weighted total to back-propagate. Reads nothing from the device.
    fn micro_batch(&mut self, mb: &MicroBatch) -> Result<MicroOut> {
        let device = self.device;
        let n = mb.len() as i64;
        let side = self.model_config.swin.img_size as i64;
        let joint = self.model_config.joint_dim as i64;
        let images = self.pixels.upload(&mb.images, n, side, device)?;
        let targets = upload(
            &mb.targets,
            &[n, self.model_config.num_class as i64],
            device,
        )?;
        let features = |v: &Option<Vec<f32>>| {
            v.as_ref()
                .map(|c| upload(c, &[n, joint], device))
                .transpose()
        };
        let (clip, text) = (features(&mb.clip_feature)?, features(&mb.text_embed)?);
        tch::manual_seed(torch_seed(self.config.seed, mb.step, mb.micro));
        let inputs = MicroInputs {
            images: &images,
            targets: &targets,
            clip_feature: clip.as_ref(),
            text_embed: text.as_ref(),
            mean_share: self.micro as f64 / self.config.batch_size as f64,
        };
        let forward = || micro_losses(&self.model, &inputs, &self.absent, true);
        // The backward pass runs outside the autocast region, as torch.autocast recommends.
        let losses = match self.config.precision {
            Precision::F32 => forward(),
            Precision::Bf16 => with_autocast(device, Kind::BFloat16, forward)?,
        }?;
        Ok(MicroOut {
            terms: losses
                .terms()
                .into_iter()
                .map(|(t, v)| (t, v.detach()))
                .collect(),
            weighted: losses.weighted_sum(&self.weighting.weights),
        })
    }

    /// [`StepSync::PerMicroBatch`]: gradient norms (read), clipping and the AdamW update of `step`
    /// at `lr`: returns the gradient norms and (on logging steps) the update norms.
    fn update(&mut self, step: u64, lr: f64) -> Result<(GroupNorms, Option<GroupNorms>)> {
        let grad_norm = self.opt.grad_norms()?;
        if !grad_norm.total.is_finite() {
            let reason = format!(
                "the gradient norm is {} although every loss term is finite",
                grad_norm.total
            );
            return Err(self.stop(step, reason));
        }
        if let Some(max) = self.config.grad_clip.filter(|c| *c > 0.0) {
            self.opt.clip_grad_norm(grad_norm.total, max);
        }
        let measure = self.logging_step(step);
        let update_norm = match self.group.as_mut() {
            Some(group) if self.opt.partition().is_some() => {
                // Each rank measured its own slices' updates: sum them over the ranks before reading.
                let norms = self.opt.step_with(lr, measure, sum_over_ranks(group))?;
                zero::broadcast_params(group, &self.opt)?;
                norms
            }
            _ => self.opt.step(lr, measure)?,
        };
        Ok((grad_norm, update_norm))
    }

    /// Appends a finished step to the metrics (detectors included), lets the loss balancing see its
    /// raw terms, and shows them on logging steps.
    fn observe(&mut self, record: &StepRecord, raw: RawTerms) -> Result<()> {
        if let Some(monitor) = self.monitor.as_mut() {
            monitor.record(record)?;
        }
        if let Some(msg) = self.weighting.observe(record.step - 1, &raw) {
            tracing::info!("{msg}");
        }
        let done = record.step;
        if self.config.log_every > 0 && done % self.config.log_every == 0 {
            let terms: Vec<String> = raw.iter().map(|(t, v)| format!("{t} {v:.4}")).collect();
            let terms = terms.join(" ");
            self.bar.set_message(terms.clone());
            if self.is_main() && self.bar.is_hidden() {
                // No bar is drawn (stderr is a file or a pipe: a cluster's job log): a line instead.
                let pace = self.pace.since_last_line(done, self.config.batch_size);
                let line = progress_line(done, self.total_steps, &terms, record.lr, pace);
                tracing::info!("{line}");
            } else {
                tracing::debug!("step {done}: lr {:.3e} {terms}", record.lr);
            }
        }
        self.history.push(raw);
        Ok(())
    }

    /// A non-finite step: saves the state before it (`step` steps done) and returns the error
    /// saying where that state is (or the error that kept it from being saved).
    fn stop(&mut self, step: u64, reason: String) -> crate::Error {
        let state = self.state_at(step, self.clock.wall_s());
        match self.save(&state, true) {
            Ok(checkpoint) => {
                self.bar.abandon();
                TrainError::Stopped {
                    step: step + 1,
                    reason,
                    checkpoint,
                }
                .into()
            }
            Err(e) => e,
        }
    }

    /// Whether validation is due after the current step (`val_every`, and always after the last).
    pub fn validation_due(&self) -> bool {
        let every = self.config.val_every;
        (every > 0 && self.step % every == 0) || self.step == self.total_steps
    }

    /// Whether `checkpoint_every` asks for a checkpoint after the current step: its step count, or
    /// its interval of time passed on some rank (the ranks agreed in the step).
    pub fn checkpoint_due(&self) -> bool {
        self.config.checkpoint_every.due(self.step) || self.time_checkpoint
    }

    /// Validates the model at the current step (nothing when the run has no validation data):
    /// appends the record to `validation.jsonl`, logs it and returns it.
    pub fn validate(&mut self) -> Result<Option<ValidationRecord>> {
        let Some(v) = self.validator.as_mut() else {
            return Ok(None);
        };
        let report = match self.group.as_mut() {
            None => v.set.run(&self.model, self.device, v.batch)?,
            Some(g) => {
                // Each rank scores its share of the images; the gathered scores are the whole set's.
                let all: Vec<usize> = (0..v.set.image_paths.len()).collect();
                let share = super::dist::shard(&all, g.rank(), g.world_size());
                let paths = &v.set.image_paths[share.start..share.start + share.indices.len()];
                let nc = self.model_config.num_class;
                let mine = v.set.score(&self.model, self.device, v.batch, paths)?;
                let mine = Tensor::from_slice(&mine).view([paths.len() as i64, nc as i64]);
                let gathered = Tensor::cat(&g.all_gather(&mine)?, 0).to_device(Device::Cpu);
                let scores = Vec::<f32>::try_from(gathered.reshape([-1])).map_err(|e| {
                    TrainError::Tensors {
                        path: v.set.bench.annots_path.clone(),
                        action: "gather the validation scores of",
                        source: Box::new(e),
                    }
                })?;
                v.set.report(&scores, nc)?
            }
        };
        let rec = ValidationRecord::from_report(self.step, &report.report, report.left_out);
        if report.left_out > 0 {
            let line = format!(
                "validation at step {}: {} image(s) that cannot be read left out (unreadable_images = \"skip\")",
                self.step, report.left_out
            );
            self.bar.suspend(|| tracing::warn!("{line}"));
        }
        if let Some(w) = v.writer.as_mut() {
            w.write(&rec)?;
        }
        let line = validation_line(&rec);
        self.bar.suspend(|| tracing::info!("{line}"));
        v.records.push(rec.clone());
        Ok(Some(rec))
    }

    /// Saves a checkpoint of the current step (keeping the newest `keep_checkpoints`): copies the
    /// tensors to the host and writes them on a background thread while training goes on. Returns
    /// the checkpoint's folder, complete once [`Trainer::wait_for_checkpoint`], the next
    /// checkpoint or [`Trainer::finish`] returns (each reports a failed write).
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        let state = self.state_at(self.step, self.last_wall_s);
        let dir = self.save(&state, false)?;
        if std::mem::take(&mut self.time_checkpoint) {
            let since = self.checkpoint_clock.map(|t| t.elapsed()).unwrap_or_default();
            let since = humantime::format_duration(std::time::Duration::from_secs(since.as_secs()));
            let line = format!(
                "checkpoint at step {}: {since} since the last one or the loop's start (checkpoint_every = {})",
                self.step, self.config.checkpoint_every
            );
            self.bar.suspend(|| tracing::info!("{line}"));
        }
        self.checkpoint_clock = Some(Instant::now());
        self.last_saved = Some(dir.clone());
        Ok(dir)
    }

    /// Waits until the checkpoint being written is complete: its folder, or `None` when no write
    /// was in flight.
    pub fn wait_for_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        self.writer.wait()
    }

    /// Saves the checkpoint `state` describes: rank 0 copies the tensors to the host and writes
    /// them (atomically, in the background unless `wait`) while the other ranks wait at a
    /// barrier; every rank returns its folder.
    fn save(&mut self, state: &CheckpointState, wait: bool) -> Result<PathBuf> {
        // Rank 0 gets the whole optimizer state (sharded: gathered from every rank), the others none.
        let optimizer = match self.group.as_mut() {
            Some(g) => zero::gather_state(g, &self.opt)?,
            None => Some(self.opt.state_tensors()),
        };
        let dir = if let Some(optimizer) = optimizer {
            let snapshot = Snapshot::take(&self.vs, optimizer, state)?;
            let dir = self
                .writer
                .start(&self.run, snapshot, self.config.keep_checkpoints)?;
            if wait {
                self.writer.wait()?;
            }
            dir
        } else {
            checkpoint_dir(&self.run, state.step)
        };
        if let Some(g) = self.group.as_mut() {
            g.barrier()?;
        }
        Ok(dir)
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

    /// `state.json` of a checkpoint after `step` steps, `wall_s` seconds into the run.
    fn state_at(&self, step: u64, wall_s: f64) -> CheckpointState {
        CheckpointState {
            schema: STATE_SCHEMA.into(),
            step,
            epoch: step / self.steps_per_epoch,
            step_in_epoch: step % self.steps_per_epoch,
            samples_seen: step * self.config.batch_size as u64,
            seed: self.config.seed,
            torch_rng: "tch::manual_seed(mix(seed, step, micro)) before every micro-batch".into(),
            records: self.data.len(),
            data_fingerprint: self.fingerprint.clone(),
            weighting: self.weighting.clone(),
            wall_s,
            model: self.model_config.name.clone(),
        }
    }

    /// Ends the run: closes the health events, saves the final checkpoint (unless the last step's
    /// is it) and returns the summary, with each slot's mean predicted probability.
    pub fn finish(mut self) -> Result<RunSummary> {
        self.bar.finish_and_clear();
        let checkpoint = match &self.last_saved {
            Some(p) if *p == checkpoint_dir(&self.run, self.total_steps) => p.clone(),
            _ => {
                self.last_wall_s = self.clock.wall_s();
                self.checkpoint()?
            }
        };
        // The summary names a complete checkpoint, on every rank.
        self.writer.wait()?;
        let mut skipped_images = self.skipped_images;
        if let Some(g) = self.group.as_mut() {
            g.barrier()?;
            let count = Tensor::from_slice(&[skipped_images as f64]).to_device(self.device);
            g.all_reduce_sum_(std::slice::from_ref(&count))?;
            skipped_images = read_f64s(&count, "the skipped images")?[0] as u64;
        }
        drop(self.loader);
        let main = self.group.as_ref().is_none_or(ProcessGroup::is_main);
        let health_events = match self.monitor {
            Some(m) => m.finish()?,
            None => Vec::new(),
        };
        if !health_events.is_empty() {
            tracing::warn!("training-health events:\n{}", events_table(&health_events));
        }
        let (early, late) = early_and_late(&self.history);
        let pace = self
            .pace
            .of_run(self.step - self.first_step, self.config.batch_size);
        let summary = RunSummary {
            run_dir: self.out.clone(),
            first_step: self.first_step,
            steps: self.total_steps,
            early,
            late,
            final_weights: self.weighting.weights,
            checkpoint,
            // Rank 0 alone reports them (the others' summaries are not written).
            slot_probabilities: if main {
                let unreadable = self.config.unreadable_images;
                slot_probabilities(&self.model, &self.data, self.device, 256, unreadable)?
            } else {
                vec![0.0; self.model_config.num_class]
            },
            absent_slots: self.absent_slots.clone(),
            health_events,
            validation: self.validator.map(|v| v.records).unwrap_or_default(),
            pace,
            skipped_images,
        };
        if skipped_images > 0 {
            tracing::warn!(
                "{skipped_images} unreadable image(s) skipped (each named above; --unreadable-images skip)"
            );
        }
        if let Some(p) = summary.absent_probability() {
            tracing::info!(
                "absent slots ({}): mean predicted probability {p:.4} under --absent {}",
                summary.absent_slots.len(),
                self.config.absent
            );
        }
        Ok(summary)
    }
}

/// The micro-batch of `config` and how many of them each of `world` ranks accumulates per step.
pub(super) fn accumulation_per_rank(
    config: &TrainConfig,
    world: usize,
) -> Result<(usize, usize)> {
    let (micro, _) = config.accumulation()?;
    shares(config.batch_size, micro, world)
}

/// `(micro, micro-batches per rank)` when the `batch / micro` micro-batches share evenly among
/// `world` ranks.
fn shares(batch: usize, micro: usize, world: usize) -> Result<(usize, usize)> {
    let all_micros = batch / micro;
    if all_micros % world != 0 {
        return Err(TrainError::UnevenShares { batch, micro, world }.into());
    }
    Ok((micro, all_micros / world))
}

/// The run's monitor: a new one, or one that continues `metrics.jsonl` from the resumed step.
fn open_monitor(run: &RunDir, config: &TrainConfig, resumed_at: Option<u64>) -> Result<RunMonitor> {
    match resumed_at {
        Some(step) => RunMonitor::resume(run, config.monitor.clone(), step),
        None => RunMonitor::start(run, config.monitor.clone()),
    }
}

/// `config.toml` and `run.json`: what `--resume` reads back.
fn write_run_files(
    run: &RunDir,
    config: &TrainConfig,
    inputs: &super::run::TrainInputs,
) -> Result<()> {
    write_atomic(&run.config_path(), |w| {
        w.write_all(config.to_toml().as_bytes())
    })?;
    super::run_files::write_run_inputs(run.root(), inputs)
}

/// Loads the checkpoint a resume of `run` continues from ([`checkpoint_to_resume`]: the newest whole
/// one, checked against the records, batch size and seed) into `vs` and `opt`.
fn resume_state(
    run: &RunDir,
    vs: &VarStore,
    opt: &mut AdamW,
    data: &TrainData,
    fingerprint: &str,
    config: &TrainConfig,
) -> Result<CheckpointState> {
    let Resumable {
        dir: ckpt, state, ..
    } = checkpoint_to_resume(&run.checkpoints_dir(), data, fingerprint, config)?;
    load_checkpoint(&ckpt, &state, vs, opt)?;
    tracing::info!(
        "resuming from {} at step {} (epoch {})",
        ckpt.display(),
        state.step,
        state.epoch
    );
    Ok(state)
}

/// A new run refuses a folder that already holds metrics or a checkpoint.
fn refuse_existing_run(run: &RunDir, out: &Path) -> Result<()> {
    if run.metrics_path().exists() || latest_checkpoint(run)?.is_some() {
        return Err(TrainError::RunExists(out.to_path_buf()).into());
    }
    Ok(())
}

/// Mean raw value of each term over the first and the last `clamp(steps / 4, 1, 20)` steps.
pub fn early_and_late(history: &[RawTerms]) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let window = (history.len() / 4).clamp(1, 20).min(history.len());
    let mean_over = |rows: &[RawTerms]| {
        let mut acc: BTreeMap<String, f64> = BTreeMap::new();
        for row in rows {
            for (t, v) in row {
                *acc.entry(t.name().to_string()).or_default() += v / rows.len() as f64;
            }
        }
        acc
    };
    (
        mean_over(&history[..window]),
        mean_over(&history[history.len() - window..]),
    )
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
    fn micro_batches_must_share_evenly_among_ranks() {
        let config = TrainConfig {
            batch_size: 52,
            micro_batch_size: Some(13.into()),
            ..Default::default()
        };
        assert_eq!(accumulation_per_rank(&config, 1).unwrap(), (13, 4));
        assert_eq!(accumulation_per_rank(&config, 2).unwrap(), (13, 2));
        assert_eq!(accumulation_per_rank(&config, 4).unwrap(), (13, 1));
        let err = accumulation_per_rank(&config, 3).unwrap_err().to_string();
        assert!(err.contains("4 micro-batches of 13, which 3 ranks cannot share"), "{err}");
        assert_eq!(shares(52, 1, 4).unwrap(), (1, 13));
        assert!(shares(52, 1, 8).is_err());
    }

    #[test]
    fn early_and_late_average_a_quarter_of_the_steps_between_1_and_20() {
        let history = |n: usize| -> Vec<RawTerms> {
            (0..n).map(|i| vec![(LossTerm::Tag, i as f64)]).collect()
        };
        // 8 steps: windows of 2 → means of (0, 1) and (6, 7).
        let (early, late) = early_and_late(&history(8));
        assert_eq!((early["tag"], late["tag"]), (0.5, 6.5));
        // One step: both windows are that step.
        let (early, late) = early_and_late(&history(1));
        assert_eq!((early["tag"], late["tag"]), (0.0, 0.0));
        // 200 steps: windows of 20.
        let (early, late) = early_and_late(&history(200));
        assert!((early["tag"] - 9.5).abs() < 1e-9, "{early:?}");
        assert!((late["tag"] - 189.5).abs() < 1e-9, "{late:?}");
    }

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
