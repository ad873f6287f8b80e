//! Saving the run's state: periodic checkpoints on the background writer, and the checkpoint a
//! stop signal or a non-finite step saves before the run ends.

use crate::error::Result;
use crate::train::dist::zero;
use crate::train::error::TrainError;
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
            self.write_here(optimizer, state, wait)?
        } else {
            checkpoint_dir(&self.run, state.step)
        };
        if let Some(g) = self.group.as_mut() {
            g.barrier()?;
        }
        Ok(dir)
    }

    /// Writes the checkpoint of this process's parameters and `optimizer` state described by
    /// `state` (in the background unless `wait`), with no collective: rank 0's part of
    /// [`Trainer::save`], and the save of a rank that fails alone.
    pub(super) fn write_here(
        &mut self,
        optimizer: Vec<(String, tch::Tensor)>,
        state: &CheckpointState,
        wait: bool,
    ) -> Result<PathBuf> {
        let snapshot = Snapshot::take(&self.vs, optimizer, state)?;
        let dir = self
            .writer
            .start(&self.run, snapshot, self.config.keep_checkpoints)?;
        if wait {
            self.writer.wait()?;
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
}
