//! Saving the run's state: periodic checkpoints on the background writer, and the checkpoint a
//! stop signal or a non-finite step saves before the run ends.

use crate::error::Result;
use crate::train::dist::zero;
use crate::train::error::TrainError;
use crate::train::failure::{self, LibtorchFailure};
use crate::train::interrupt;
use crate::train::run::{checkpoint_dir, CheckpointState, STATE_SCHEMA};
use crate::train::saver::Snapshot;
use std::path::PathBuf;
use std::time::Instant;

use super::{Doing, Interrupt, Trainer};

impl Trainer {
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

    /// A non-finite step: saves the state before it (`step` steps done) and returns the error
    /// saying where that state is (or the error that kept it from being saved).
    pub(super) fn stop(&mut self, step: u64, reason: String) -> crate::Error {
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

    /// Whether `checkpoint_every` asks for a checkpoint after the current step: its step count, or
    /// its interval of time passed on some rank (the ranks agreed in the step).
    pub fn checkpoint_due(&self) -> bool {
        self.config.checkpoint_every.due(self.step) || self.time_checkpoint
    }

    /// Saves a checkpoint of the current step (keeping the newest `keep_checkpoints`): copies the
    /// tensors to the host and writes them on a background thread while training goes on. Returns
    /// the checkpoint's folder, complete once [`Trainer::wait_for_checkpoint`], the next
    /// checkpoint or [`Trainer::finish`] returns (each reports a failed write).
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        let state = self.state_at(self.step, self.last_wall_s);
        let dir = self.save(&state, false)?;
        if std::mem::take(&mut self.time_checkpoint) {
            let since = self
                .checkpoint_clock
                .map(|t| t.elapsed())
                .unwrap_or_default();
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
    pub(super) fn save(&mut self, state: &CheckpointState, wait: bool) -> Result<PathBuf> {
        let doing = std::mem::replace(&mut self.doing, Doing::Checkpoint);
        let saved = self.save_now(state, wait);
        self.doing = doing;
        saved
    }

    /// [`Trainer::save`]'s work.
    fn save_now(&mut self, state: &CheckpointState, wait: bool) -> Result<PathBuf> {
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

    /// `state.json` of a checkpoint after `step` steps, `wall_s` seconds into the run.
    pub(super) fn state_at(&self, step: u64, wall_s: f64) -> CheckpointState {
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

    /// The error for a libtorch failure caught in the middle of the run
    /// ([`crate::train::failure::catch`]). Where the parameters and moments still hold the state
    /// after the steps taken (one process; not during the optimizer update or a checkpoint), that
    /// state is saved first, so that `--resume` loses nothing; the error says where it is and, for
    /// an exhausted memory, which batch to make smaller.
    pub fn failed(&mut self, failure: LibtorchFailure) -> crate::Error {
        let doing = std::mem::take(&mut self.doing);
        self.bar.abandon();
        let during = match doing {
            Doing::Step | Doing::Update => format!("step {}", self.step + 1),
            Doing::Validation => format!("validation at step {}", self.step),
            Doing::Checkpoint => format!("checkpoint at step {}", self.step),
            Doing::Between => format!("after step {}", self.step),
        };
        let mut then = self.save_after_failure(doing);
        if failure.out_of_memory {
            then.push_str(&self.smaller_batch_hint(doing));
        }
        TrainError::LibtorchFailed {
            during,
            failure,
            then,
        }
        .into()
    }

    /// What [`Trainer::failed`] could save, as a sentence.
    fn save_after_failure(&mut self, doing: Doing) -> String {
        let newest = match crate::train::run::latest_checkpoint(&self.run)
            .ok()
            .flatten()
        {
            Some(dir) => format!("the newest checkpoint is {}", dir.display()),
            None => "no checkpoint of this run is written yet".into(),
        };
        let why_not = match doing {
            _ if self.group.is_some() => Some("the other ranks cannot join a checkpoint now"),
            Doing::Update => {
                Some("the optimizer update was under way, so the parameters may be half-updated")
            }
            Doing::Checkpoint => Some("it was the checkpoint that failed"),
            _ => None,
        };
        if self.step == 0 && doing != Doing::Checkpoint {
            return format!(
                "Nothing was saved (no step was taken); `--auto-resume` starts the run again in {}.",
                self.out.display()
            );
        }
        if let Some(why) = why_not {
            return format!("Nothing was saved ({why}); {newest}.");
        }
        // A checkpoint of this step written before the failure (the one a resume began from, or
        // the periodic one just taken) already holds it.
        let dir = checkpoint_dir(&self.run, self.step);
        let written = self.writer.wait().is_ok_and(|_| dir.is_dir());
        let state = self.state_at(self.step, self.last_wall_s);
        let saved = match written {
            true => Ok(Ok(dir)),
            false => failure::catch(|| self.save(&state, true)),
        };
        match saved {
            // After the last step there is nothing left to resume: the model is trained.
            Ok(Ok(dir)) if self.is_done() => format!(
                "Every step is taken: the trained state after step {} is saved in {}.",
                self.step,
                dir.display()
            ),
            Ok(Ok(dir)) => format!(
                "The state after step {} is saved in {}; continue with `tagfix train --resume {}`.",
                self.step,
                dir.display(),
                self.out.display()
            ),
            Ok(Err(e)) => format!(
                "Saving the state after step {} failed too ({}); {newest}.",
                self.step,
                crate::error::report(&e)
            ),
            Err(again) => format!(
                "Saving the state after step {} failed too ({again}); {newest}.",
                self.step
            ),
        }
    }

    /// For an exhausted memory: the smaller batch that needs less of it.
    fn smaller_batch_hint(&self, doing: Doing) -> String {
        match doing {
            Doing::Step | Doing::Update => {
                let batch = self.config.batch_size;
                let smaller = (1..self.micro).rev().find(|m| batch % m == 0);
                let mut hint = format!(
                    " Each micro-batch of {} images ran out of memory: a smaller --micro-batch-size needs \
                     less (the batch size, {batch}, stays: its micro-batches accumulate to it)",
                    self.micro
                );
                if let Some(m) = smaller {
                    hint.push_str(&format!(", e.g. --micro-batch-size {m}"));
                }
                hint + "."
            }
            Doing::Validation => {
                let batch = self.validator.as_ref().map_or(0, |v| v.batch);
                format!(
                    " Validating {batch} images at a time ran out of memory: `--set val_batch_size=N` \
                     with a smaller N needs less."
                )
            }
            Doing::Checkpoint | Doing::Between => String::new(),
        }
    }
}
