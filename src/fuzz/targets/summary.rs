//! The `summary` target: a run folder's `summary.json` (`tagfix repair` reads it back for its report),
//! then what is computed from it: the probabilities over slots, the pace line, the events table.

use super::{written, JSON_DICT};
use crate::monitor::{events_table, DetectorConfig, RunPace, RunSummary, ValidationRecord};
use std::path::Path;

pub(super) fn target() -> super::Target {
    super::Target {
        name: "summary",
        file: crate::monitor::run_dir::SUMMARY_FILE,
        run: run_summary,
        dict: JSON_DICT,
        generate: None,
        seeds: summary_seeds,
        shared_seeds: &[],
    }
}

fn run_summary(path: &Path, _: &[u8]) {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(s) = RunSummary::read(dir) {
        let _ = (
            s.absent_probability(),
            s.mean_probability(&[0, 1, 2, usize::MAX]),
        );
        let _ = s.pace.map(|p| p.to_string());
        let _ = events_table(&s.health_events).to_string();
    }
}

/// A summary as `train` writes it: a short synthetic run with a loss spike (so it holds health
/// events), slot probabilities, absent slots, a validation record and the pace.
fn summary_seeds() -> Vec<(String, Vec<u8>)> {
    let records = super::spiky_run(30, 20).records();
    let summary = RunSummary {
        run_dir: "runs/a".into(),
        first_step: 0,
        steps: 30,
        early: [("tag".to_string(), 120.5)].into(),
        late: [("tag".to_string(), 80.25)].into(),
        final_weights: Default::default(),
        checkpoint: "runs/a/checkpoints/step-00000030".into(),
        slot_probabilities: vec![0.5, 0.25, 0.125, 0.0625],
        absent_slots: vec![1, 3],
        health_events: crate::monitor::detect(&records, &DetectorConfig::default()),
        validation: vec![ValidationRecord {
            step: 30,
            benchmark: "synth".into(),
            images: 8,
            left_out: 0,
            main: None,
            absent: None,
        }],
        pace: Some(RunPace {
            seconds: 12.5,
            images_per_s: 25.6,
            data_wait_s: 0.25,
        }),
        skipped_images: 1,
    };
    vec![written(crate::monitor::run_dir::SUMMARY_FILE, |p| {
        summary.write(p.parent().expect("a temp folder"))
    })]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed reads back, with the health events the spike raised.
    #[test]
    fn the_seed_is_a_summary_with_events() {
        let dir = tempfile::tempdir().unwrap();
        let (name, bytes) = summary_seeds().remove(0);
        std::fs::write(dir.path().join(name), bytes).unwrap();
        let s = RunSummary::read(dir.path()).unwrap();
        assert!(!s.health_events.is_empty());
        assert_eq!(s.absent_probability(), Some(0.15625));
    }
}
