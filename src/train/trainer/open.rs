//! Opening a run: the run folder, a resume's checkpoint, the micro-batch, the ranks' agreement,
//! the monitor, the validator and the loader ([`Trainer::new`], [`Trainer::with_group`]).

use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::monitor::{RunDir, RunMonitor};
use crate::train::config::{GradComm, GradSync, MicroBatchSize, TrainConfig};
use crate::train::data::{Loader, TrainData};
use crate::train::dist::ProcessGroup;
use crate::train::error::TrainError;
use crate::train::interrupt::StopRequest;
use crate::train::objective::{AbsentSlots, LossWeighting};
use crate::train::optim::{AdamW, LrSchedule};
use crate::train::run::{
    checkpoint_to_resume, checkpoint_to_resume_in_group, latest_checkpoint, load_checkpoint,
    load_moments, CheckpointSpace, CheckpointState, Prepared, Resumable,
};
use crate::train::saver::{remove_unfinished, CheckpointWriter};
use crate::train::upload::PixelNormalizer;
use std::path::Path;
use std::time::Instant;
use tch::nn::VarStore;

use super::auto_batch::AutoProbe;
use super::pace::{progress_bar, StepPace};
use super::ranks::{agree_and_share, share_moments};
use super::{Clock, Doing, RunStart, StepSync, Trainer, Validator};

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
            // `--micro-batch-size auto`: the largest that fits, found once, on every rank alike.
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
                group.as_mut(),
            )?),
            RunStart::New if main => {
                refuse_existing_run(&run, out)?;
                None
            }
            RunStart::New | RunStart::Again => None,
        };
        let start_step = resumed.as_ref().map_or(0, |s| s.step);
        if main {
            tidy_checkpoints(&run, &vs, &opt, &config, out);
        }
        if let Some(g) = group.as_mut() {
            agree_and_share(g, &config, &inputs, start_step, &vs)?;
            if resumed.is_some() {
                share_moments(g, &opt)?;
            }
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
        let validator = match validation {
            Some(set) => {
                let batch = config.val_batch_size.unwrap_or(micro);
                // Starting again truncates it, as a new run does.
                let resume_at = resume.then_some(start_step);
                Some(Validator::open(set, &run, resume_at, batch, main)?)
            }
            None => None,
        };
        // A resume after the last step is left the validation that failed there, if one did.
        let validation_left = validator.as_ref().is_some_and(|v| v.missing_at_resume);
        if start_step > total_steps || (start_step == total_steps && !validation_left) {
            return Err(TrainError::NothingToDo {
                step: start_step,
                total: total_steps,
            }
            .into());
        }
        let weighting = loss_weighting(resumed.as_ref(), &config, main);
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
            doing: Doing::Between,
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
}

/// The micro-batch of `config` and how many of them each of `world` ranks accumulates per step.
pub(in crate::train) fn accumulation_per_rank(
    config: &TrainConfig,
    world: usize,
) -> Result<(usize, usize)> {
    let (micro, _) = config.accumulation()?;
    shares(config.batch_size, micro, world)
}

/// `(micro, micro-batches per rank)` when the `batch / micro` micro-batches share evenly among
/// `world` ranks.
pub(super) fn shares(batch: usize, micro: usize, world: usize) -> Result<(usize, usize)> {
    let all_micros = batch / micro;
    if all_micros % world != 0 {
        return Err(TrainError::UnevenShares {
            batch,
            micro,
            world,
        }
        .into());
    }
    Ok((micro, all_micros / world))
}

/// Before the first step of an invocation (rank 0): removes the folders of checkpoints whose write
/// never finished and warns when the disk has no room for the checkpoints the run will keep.
fn tidy_checkpoints(run: &RunDir, vs: &VarStore, opt: &AdamW, config: &TrainConfig, out: &Path) {
    for (dir, bytes) in remove_unfinished(run) {
        tracing::warn!(
            "removed {} ({}): a checkpoint whose write never finished (the process was stopped \
             while writing it)",
            dir.display(),
            indicatif::HumanBytes(bytes)
        );
    }
    let trained = opt.trained_vars();
    let space = CheckpointSpace::of_run(vs, trained.iter(), config.keep_checkpoints, out);
    if let (true, Some(free)) = (space.short(), space.available) {
        tracing::warn!(
            "{} free where the checkpoints go, and the run needs {} more for them ({} each, up to \
             {} while one is written): it will stop at a checkpoint it cannot write",
            indicatif::HumanBytes(free),
            indicatif::HumanBytes(space.more_needed()),
            indicatif::HumanBytes(space.bytes),
            config.keep_checkpoints + 1
        );
    }
}

/// The loss weights the run continues with: the resumed checkpoint's (the configuration's where it
/// changed them, which rank 0 warns of), or the configuration's.
fn loss_weighting(
    resumed: Option<&CheckpointState>,
    config: &TrainConfig,
    main: bool,
) -> LossWeighting {
    let Some(state) = resumed else {
        return LossWeighting::of_config(config);
    };
    let (weighting, change) = LossWeighting::resumed(state.weighting.clone(), config);
    if let (Some(change), true) = (change, main) {
        tracing::warn!("{change}");
    }
    weighting
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
    inputs: &crate::train::run::TrainInputs,
) -> Result<()> {
    write_atomic(&run.config_path(), |w| {
        w.write_all(config.to_toml().as_bytes())
    })?;
    crate::train::run_files::write_run_inputs(run.root(), inputs)
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
    group: Option<&mut ProcessGroup>,
) -> Result<CheckpointState> {
    let follows = group.as_ref().is_some_and(|g| !g.is_main());
    let Resumable {
        dir: ckpt, state, ..
    } = match group {
        Some(g) => {
            checkpoint_to_resume_in_group(&run.checkpoints_dir(), data, fingerprint, config, g)?
        }
        None => checkpoint_to_resume(&run.checkpoints_dir(), data, fingerprint, config)?,
    };
    // Rank 0 alone reads the checkpoint; the others receive the parameters from it when the ranks
    // meet ([`agree_and_share`]), and the moments too unless each rank keeps only its share of them.
    let received = if !follows {
        load_checkpoint(&ckpt, &state, vs, opt)?;
        ""
    } else if opt.partition().is_some() {
        load_moments(&ckpt, &state, opt)?;
        " (the parameters from rank 0)"
    } else {
        opt.step = state.step;
        " (the parameters and moments from rank 0)"
    };
    tracing::info!(
        "resuming from {} at step {} (epoch {}){received}",
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
        assert!(
            err.contains("4 micro-batches of 13, which 3 ranks cannot share"),
            "{err}"
        );
        assert_eq!(shares(52, 1, 4).unwrap(), (1, 13));
        assert!(shares(52, 1, 8).is_err());
    }
}
