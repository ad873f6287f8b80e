//! Held-out validation at the current step, scored across the ranks.

use crate::error::Result;
use crate::monitor::{RunDir, ValidationRecord, ValidationWriter};
use crate::train::error::TrainError;
use crate::train::run::validation_line;
use crate::train::validate::ValidationSet;
use tch::{Device, Tensor};

use super::{Doing, Trainer};

impl Trainer {
    /// Whether validation is due after the current step (`val_every`, and always after the last).
    pub fn validation_due(&self) -> bool {
        let every = self.config.val_every;
        (every > 0 && self.step % every == 0) || self.step == self.total_steps
    }

    /// Whether the step a resume began at is due a validation that `validation.jsonl` lacks (see
    /// `Validator::missing_at_resume`). In a distributed run the ranks agree through one small
    /// all-reduce (any rank that finds it missing counts), so that all validate or none.
    pub fn validation_missing(&mut self) -> Result<bool> {
        let Some(v) = self.validator.as_ref() else {
            return Ok(false);
        };
        if v.resumed_at != Some(self.step) || !self.validation_due() {
            return Ok(false);
        }
        let mine = v.missing_at_resume;
        match self.group.as_mut() {
            None => Ok(mine),
            Some(g) => Ok(g.all_reduce_scalars(&[f64::from(u8::from(mine))])?[0] > 0.0),
        }
    }

    /// Validates the model at the current step (nothing when the run has no validation data):
    /// appends the record to `validation.jsonl`, logs it and returns it.
    pub fn validate(&mut self) -> Result<Option<ValidationRecord>> {
        let Some(v) = self.validator.as_mut() else {
            return Ok(None);
        };
        self.doing = Doing::Validation;
        let report = match self.group.as_mut() {
            None => v.set.run(&self.model, self.device, v.batch)?,
            Some(g) => {
                // Each rank scores its share of the images; the gathered scores are the whole set's.
                let all: Vec<usize> = (0..v.set.image_paths.len()).collect();
                let share = crate::train::dist::shard(&all, g.rank(), g.world_size());
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
        self.doing = Doing::Between;
        Ok(Some(rec))
    }
}

/// Held-out validation: the set, where its records go, and those of this invocation.
pub(super) struct Validator {
    pub(super) set: ValidationSet,
    /// `None` on ranks other than 0 (rank 0 alone writes the run's files).
    pub(super) writer: Option<ValidationWriter>,
    pub(super) batch: usize,
    pub(super) records: Vec<ValidationRecord>,
    /// The step this invocation resumed at (every rank).
    pub(super) resumed_at: Option<u64>,
    /// Resumed at a step whose validation `validation.jsonl` lacks: it failed (out of memory, most
    /// often, and the run saved that step before it stopped), or a stop signal came before it.
    pub(super) missing_at_resume: bool,
}

impl Validator {
    /// Opens `validation.jsonl`: truncated for a new run, cut back to `step` on resume.
    pub(super) fn open(
        set: ValidationSet,
        run: &RunDir,
        resume_at: Option<u64>,
        batch: usize,
        writes: bool,
    ) -> Result<Self> {
        let path = run.validation_path();
        let lacks = |held: &[ValidationRecord], step: u64| !held.iter().any(|r| r.step == step);
        let (writer, missing_at_resume) = match resume_at {
            // The other ranks read the file rank 0 rewrites (atomically; the record at `step`
            // stays); one that cannot says nothing is missing, and rank 0's word carries the
            // all-reduce of [`Trainer::validation_missing`].
            Some(step) if !writes => {
                let held = crate::monitor::read_validation(&path);
                (None, held.is_ok_and(|held| lacks(&held, step)))
            }
            _ if !writes => (None, false),
            Some(step) => {
                let (writer, held) = ValidationWriter::resume_keeping(&path, step)?;
                (Some(writer), lacks(&held, step))
            }
            None => {
                crate::fsutil::write_bytes_atomic(&path, b"")?;
                (Some(ValidationWriter::append(&path)?), false)
            }
        };
        Ok(Validator {
            set,
            writer,
            batch,
            records: Vec::new(),
            resumed_at: resume_at,
            missing_at_resume,
        })
    }
}
