//! Training health: the per-step record a run writes (`metrics.jsonl`), the run-directory layout,
//! and detectors for loss spikes, oscillation, plateaus, imbalance and a stalled
//! image encoder. Feature-free: nothing here needs libtorch.

/// `impl Display` writing `self.name()`.
macro_rules! display_by_name {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

pub mod detectors;
pub mod event;
pub mod record;
pub mod run_dir;
pub mod run_monitor;
pub mod summary;
pub mod synthetic;
pub mod validation;

/// Why a run directory or its files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{path}: run directory does not exist")]
    NoRunDir { path: std::path::PathBuf },

    #[error("{path}: not a training run directory: no {metrics}")]
    NotARunDir {
        path: std::path::PathBuf,
        metrics: &'static str,
    },

    #[error(
        "{path}: already holds a training run (metrics.jsonl is not empty); resume it or choose another output directory"
    )]
    RunExists { path: std::path::PathBuf },

    #[error("{path}: detector config")]
    ConfigSyntax {
        path: std::path::PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("{path}: detector config: {problem}")]
    ConfigRange {
        path: std::path::PathBuf,
        problem: String,
    },

    #[error("{path}:{line}: malformed record")]
    Record {
        path: std::path::PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },

    /// `summary.json` cannot be read as (or written from) a [`RunSummary`].
    #[error("{path}: {problem}")]
    Summary {
        path: std::path::PathBuf,
        problem: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

pub use detectors::{detect, DetectorConfig, HealthMonitor};
pub use event::{read_events, EventKind, EventWriter, HealthEvent};
pub use record::{
    read_all_records, read_records, AtStep, GroupNorms, JsonLines, JsonlWriter, LossTerm, Losses,
    MetricsWriter, ModuleGroup, StepRecord, TermValue,
};
pub use run_dir::RunDir;
pub use run_monitor::RunMonitor;
pub use summary::{events_table, RunPace, RunSummary};
pub use validation::{read_validation, ValidationRecord, ValidationWriter};
