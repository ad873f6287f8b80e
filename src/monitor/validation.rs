//! Periodic validation results (`RUN_DIR/validation.jsonl`): one line per evaluation during
//! training, the summary of an [`crate::eval::EvalReport`].

use super::record::{AtStep, JsonlWriter};
use crate::error::Result;
use crate::eval::{EvalReport, Summary};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One validation: the benchmark's averages over the present (or all) slots and, with a slot
/// manifest, over the absent ones. Fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRecord {
    pub step: u64,
    pub benchmark: String,
    /// The images evaluated.
    pub images: usize,
    /// Images of the set left out because they could not be read (`unreadable_images = "skip"`);
    /// absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub left_out: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent: Option<Summary>,
}

impl ValidationRecord {
    /// The record of an evaluation at `step` that left `left_out` unreadable images out.
    pub fn from_report(step: u64, report: &EvalReport, left_out: usize) -> Self {
        ValidationRecord {
            step,
            benchmark: report.benchmark.clone(),
            images: report.images,
            left_out,
            main: report.main,
            absent: report.absent,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl AtStep for ValidationRecord {
    fn at_step(&self) -> u64 {
        self.step
    }
}

/// Appends [`ValidationRecord`]s to `validation.jsonl` (`resume` drops lines after a checkpoint).
pub type ValidationWriter = JsonlWriter<ValidationRecord>;

/// Reads `validation.jsonl`; a malformed line is an error naming `file:line`.
pub fn read_validation(path: &Path) -> Result<Vec<ValidationRecord>> {
    super::record::read_jsonl(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validation.jsonl");
        let rec = ValidationRecord {
            step: 500,
            benchmark: "openimages_common_214".into(),
            images: 10,
            left_out: 0,
            main: Summary::of([(
                0.5,
                crate::eval::Counts {
                    positives: 2,
                    predicted: 1,
                    true_positives: 1,
                },
            )]),
            absent: None,
        };
        let mut w = ValidationWriter::append(&path).unwrap();
        w.write(&rec).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"map\":0.5") && !text.contains("absent"),
            "{text}"
        );
        assert_eq!(read_validation(&path).unwrap(), vec![rec.clone()]);
        // Images left out are written when there are some.
        let left_out = ValidationRecord {
            left_out: 2,
            ..rec.clone()
        };
        let line = serde_json::to_string(&left_out).unwrap();
        assert!(line.contains("\"left_out\":2"), "{line}");
        assert!(!text.contains("left_out"), "{text}");
        // Resuming from step 400 drops the later line.
        drop(w);
        let w = ValidationWriter::resume(&path, 400).unwrap();
        drop(w);
        assert!(read_validation(&path).unwrap().is_empty());
        let w = ValidationWriter::resume(&path, 500);
        assert!(w.is_ok());
    }
}
