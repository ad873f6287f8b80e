//! The run-directory contract: where a training run keeps its files (documented in
//! `docs/formats.md`, "Run directory").

use super::MonitorError;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// File names inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const VALIDATION_FILE: &str = "validation.jsonl";
pub const CONFIG_FILE: &str = "config.toml";
pub const SUMMARY_FILE: &str = "summary.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const PLOTS_DIR: &str = "plots";

/// A training run's directory:
///
/// ```text
/// RUN_DIR/
///   config.toml        the resolved configuration the run used (written once at start)
///   metrics.jsonl      one StepRecord per optimizer step, appended and flushed per line
///   events.jsonl       one HealthEvent per line (spike, oscillation, plateau, imbalance, stalled encoder)
///   validation.jsonl   one ValidationRecord per periodic validation (mAP, P/R/F1)
///   summary.json       the RunSummary of the last `tagfix train` invocation (written at its end)
///   checkpoints/       checkpoints, owned by `tagfix train`
///   plots/             `tagfix plot` output (PNG and SVG)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates the directory (and `checkpoints/`) when missing; an existing run is reused (resume).
    pub fn create(root: &Path) -> Result<Self> {
        let dir = RunDir {
            root: root.to_path_buf(),
        };
        let ckpt = dir.checkpoints_dir();
        std::fs::create_dir_all(&ckpt).map_err(|e| Error::io(&ckpt, e))?;
        Ok(dir)
    }

    /// Opens an existing run directory; it must hold `metrics.jsonl`.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(MonitorError::NoRunDir { path: root.into() }.into());
        }
        let dir = RunDir {
            root: root.to_path_buf(),
        };
        if !dir.metrics_path().is_file() {
            return Err(MonitorError::NotARunDir {
                path: root.into(),
                metrics: METRICS_FILE,
            }
            .into());
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }
    pub fn events_path(&self) -> PathBuf {
        self.root.join(EVENTS_FILE)
    }
    pub fn validation_path(&self) -> PathBuf {
        self.root.join(VALIDATION_FILE)
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }
    pub fn plots_dir(&self) -> PathBuf {
        self.root.join(PLOTS_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open_requires_metrics() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("run");
        let dir = RunDir::create(&root).unwrap();
        assert!(dir.checkpoints_dir().is_dir());
        let err = RunDir::open(&root).unwrap_err().to_string();
        assert!(err.contains("no metrics.jsonl"), "{err}");
        std::fs::write(dir.metrics_path(), "").unwrap();
        assert_eq!(RunDir::open(&root).unwrap(), dir);
        assert!(RunDir::open(&tmp.path().join("missing")).is_err());
    }
}
