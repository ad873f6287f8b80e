//! The end of a run: its [`RunSummary`] (`summary.json`, written by `tagfix train`, read by
//! `tagfix repair`) and the health events as a table (stdout) — machine-readable events are
//! `events.jsonl` itself.

use super::event::HealthEvent;
use super::run_dir::SUMMARY_FILE;
use super::validation::ValidationRecord;
use super::MonitorError;
use crate::error::{Error, Result};
use crate::train::config::LossWeights;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a finished run reports. Feature-free, so a build without libtorch reads what a training
/// build wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub first_step: u64,
    pub steps: u64,
    /// Mean raw value of each term over the first and the last `min(20, steps/4)` steps of this
    /// invocation.
    pub early: BTreeMap<String, f64>,
    pub late: BTreeMap<String, f64>,
    pub final_weights: LossWeights,
    pub checkpoint: PathBuf,
    /// Mean predicted probability per slot over (up to 256) training images, un-augmented, eval mode.
    pub slot_probabilities: Vec<f64>,
    pub absent_slots: Vec<usize>,
    /// What the training-health detectors found over the whole run (`events.jsonl`).
    pub health_events: Vec<HealthEvent>,
    /// The validations of this invocation (also in `validation.jsonl`).
    pub validation: Vec<ValidationRecord>,
    /// How fast this invocation's steps went (absent in summaries written before it was kept, and
    /// when no step was taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace: Option<RunPace>,
    /// Training images that could not be read and were replaced in their micro-batches during
    /// this invocation, over every rank (`--unreadable-images skip`; each is named in the log).
    #[serde(default)]
    pub skipped_images: u64,
}

/// The pace of a run's steps, from the start of its first step to the end of its last (validation
/// and checkpoints between them included; the final checkpoint not).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunPace {
    pub seconds: f64,
    /// Images of the global batch per second, over every rank.
    pub images_per_s: f64,
    /// Seconds rank 0 waited for its next micro-batch.
    pub data_wait_s: f64,
}

impl std::fmt::Display for RunPace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = if self.seconds > 0.0 {
            100.0 * self.data_wait_s / self.seconds
        } else {
            0.0
        };
        write!(
            f,
            "{:.1} s, {:.1} images/s, {waiting:.0} % waiting for data",
            self.seconds, self.images_per_s
        )
    }
}

impl RunSummary {
    /// Mean predicted probability over the absent slots.
    pub fn absent_probability(&self) -> Option<f64> {
        self.mean_probability(&self.absent_slots)
    }

    /// Mean predicted probability over `slots` (those the summary has a probability for).
    pub fn mean_probability(&self, slots: &[usize]) -> Option<f64> {
        let p: Vec<f64> = slots
            .iter()
            .filter_map(|&s| self.slot_probabilities.get(s).copied())
            .collect();
        (!p.is_empty()).then(|| p.iter().sum::<f64>() / p.len() as f64)
    }

    /// Writes `RUN_DIR/summary.json` atomically.
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(SUMMARY_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|source| MonitorError::Summary {
            path: path.clone(),
            problem: "cannot serialise the run summary",
            source,
        })?;
        crate::fsutil::write_bytes_atomic(&path, &json)
    }

    /// Reads `RUN_DIR/summary.json`.
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(SUMMARY_FILE);
        let bytes = crate::fsutil::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| {
            MonitorError::Summary {
                path,
                problem: "not a run summary",
                source,
            }
            .into()
        })
    }
}

/// One row per event: kind, subject, steps, message.
pub fn events_table(events: &[HealthEvent]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_content_arrangement(ContentArrangement::Dynamic);
    if table.width().is_none() {
        table.set_width(120); // not a terminal: wrap for a readable log
    }
    table.set_header(["event", "subject", "steps", "what"]);
    for e in events {
        let steps = if e.first_step == e.last_step {
            e.first_step.to_string()
        } else {
            format!("{}-{}", e.first_step, e.last_step)
        };
        // The message starts with the step range and subject, already in their own columns.
        let what = e
            .message
            .split_once(": ")
            .map(|(_, rest)| rest.strip_prefix(&e.subject).unwrap_or(rest).trim_start())
            .unwrap_or(&e.message);
        table.add_row([e.kind.name(), e.subject.as_str(), steps.as_str(), what]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(dir: &Path) -> RunSummary {
        RunSummary {
            run_dir: dir.to_path_buf(),
            first_step: 0,
            steps: 4,
            early: BTreeMap::from([("tag".to_string(), 185.25)]),
            late: BTreeMap::from([("tag".to_string(), 10.6875)]),
            final_weights: LossWeights::default(),
            checkpoint: dir.join("checkpoints/step-00000004"),
            slot_probabilities: vec![0.5, 0.25, 0.125],
            absent_slots: vec![1, 2],
            health_events: Vec::new(),
            validation: Vec::new(),
            pace: Some(RunPace {
                seconds: 12.5,
                images_per_s: 25.6,
                data_wait_s: 0.25,
            }),
            skipped_images: 2,
        }
    }

    #[test]
    fn a_written_summary_reads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let s = summary(dir.path());
        s.write(dir.path()).unwrap();
        assert_eq!(RunSummary::read(dir.path()).unwrap(), s);
    }

    #[test]
    fn a_summary_written_before_the_pace_was_kept_reads_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = summary(dir.path());
        s.pace = None;
        s.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(SUMMARY_FILE)).unwrap();
        assert!(!text.contains("pace"), "{text}");
        assert_eq!(RunSummary::read(dir.path()).unwrap(), s);
        let pace = summary(dir.path()).pace.unwrap();
        assert_eq!(
            pace.to_string(),
            "12.5 s, 25.6 images/s, 2 % waiting for data"
        );
    }

    #[test]
    fn probabilities_average_the_slots_it_has() {
        let s = summary(Path::new("run"));
        assert_eq!(s.absent_probability(), Some(0.1875));
        assert_eq!(s.mean_probability(&[0, 7]), Some(0.5));
        assert_eq!(s.mean_probability(&[7]), None);
    }

    #[test]
    fn a_file_that_is_not_a_summary_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SUMMARY_FILE), b"{\"steps\": 3}").unwrap();
        let err = RunSummary::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("summary.json") && err.contains("not a run summary"),
            "{err}"
        );
    }
}
