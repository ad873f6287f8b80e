//! The end of a run: the last checkpoint and the run's summary.

use crate::error::Result;
use crate::monitor::events_table;
use crate::train::dist::ProcessGroup;
use crate::train::run::{checkpoint_dir, slot_probabilities, RunSummary};
use crate::train::sync::read_f64s;
use std::collections::BTreeMap;
use tch::Tensor;

use super::losses::RawTerms;
use super::Trainer;

impl Trainer {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::LossTerm;

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
}
