//! Health events (`RUN_DIR/events.jsonl`): what a detector found, naming the term, the step range
//! and the numbers behind the verdict.

use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What a detector found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A term jumped far above its recent robust level (median + k·MAD).
    Spike,
    /// A term alternated up/down beyond its noise over a window.
    Oscillation,
    /// A term stopped improving while the learning rate was not small.
    Plateau,
    /// One weighted term dominated the total loss.
    Imbalance,
    /// The image encoder's gradient or update norm was negligible next to the other groups'.
    StalledEncoder,
}

impl EventKind {
    /// The name used in JSON, logs and plots.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Spike => "spike",
            EventKind::Oscillation => "oscillation",
            EventKind::Plateau => "plateau",
            EventKind::Imbalance => "imbalance",
            EventKind::StalledEncoder => "stalled_encoder",
        }
    }
}

display_by_name!(EventKind);

/// One detected event: one line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthEvent {
    pub kind: EventKind,
    /// What it concerns: a loss term with its variant (`tag`, `dis.weighted`), or a module group
    /// (`image_encoder`).
    pub subject: String,
    /// First and last step (inclusive) the condition held.
    pub first_step: u64,
    pub last_step: u64,
    /// One readable sentence with the numbers.
    pub message: String,
    /// The numbers behind the verdict (names depend on the detector; see `docs/formats.md`).
    pub values: BTreeMap<String, f64>,
}

/// Appends [`HealthEvent`]s to `events.jsonl`, one line each, flushed per line.
pub type EventWriter = super::record::JsonlWriter<HealthEvent>;

/// Reads every event of an `events.jsonl` file; a malformed line is an error naming `file:line`.
pub fn read_events(path: &Path) -> Result<Vec<HealthEvent>> {
    super::record::read_jsonl(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let ev = HealthEvent {
            kind: EventKind::StalledEncoder,
            subject: "image_encoder".into(),
            first_step: 10,
            last_step: 40,
            message: "m".into(),
            values: BTreeMap::from([("ratio".to_string(), 1e-4)]),
        };
        let mut w = EventWriter::append(&path).unwrap();
        w.write(&ev).unwrap();
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.contains("\"kind\":\"stalled_encoder\""), "{line}");
        assert_eq!(read_events(&path).unwrap(), vec![ev]);
    }
}
