//! The gate: thresholds (from a TOML policy file committed next to the baseline, overridden by flags)
//! turned into one pass/fail result per rule.
//!
//! ```toml
//! # tagfix check policy (every key optional; absent keys take the defaults below)
//! k = 10                      # neighbours for the overlap rules
//! also_k = [5, 20]            # further k reported (not gated)
//! min_cosine = 0.99           # every compared slot: cosine(baseline row, candidate row)
//! min_knn_overlap = 0.9       # mean kNN overlap at k over compared slots
//! min_slot_knn_overlap = 0.5  # (off by default) every compared slot's kNN overlap at k
//! max_changed_rows = 0        # (off by default, drift mode) rows that differ in any bit
//! max_mean_shift = 0.01       # (off by default) distance between the mean unit vectors
//! max_norm_deviation = 0.01   # every compared row: |‖c‖ − ‖b‖| / ‖b‖ (catches a lost L2 normalisation)
//! max_misaligned_slots = 0    # slots holding another slot's baseline row (shuffled order)
//! min_trusted_share = 0.9     # consistency mode: regenerated rows inside the control calibration
//! calibration_quantile = 0.01 # consistency mode: control quantile a trusted row must reach
//! min_search_recall = 0.9     # HNSW recall@k against exact search, measured on a sample
//! ```

use super::compare::Comparison;
use super::report::{Mode, RuleResult, SlotResult};
use crate::error::{Error, Result};
use crate::vocab::Slot;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or a key that is not a policy key (typos are refused, never ignored).
    #[error("{path}: invalid check policy")]
    Parse {
        path: PathBuf,
        #[source]
        cause: toml::de::Error,
    },
    /// A threshold in the file out of range.
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: Threshold },
    /// A threshold out of range once the flags are applied.
    #[error("invalid thresholds: {0}")]
    Thresholds(Threshold),
}

impl PolicyError {
    /// A bad policy file is an input error; a flag out of range, usage.
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            PolicyError::Thresholds(_) => crate::error::ErrorKind::Usage,
            PolicyError::Parse { .. } | PolicyError::File { .. } => crate::error::ErrorKind::Input,
        }
    }
}

/// A threshold out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Threshold {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("{name} = {value} is outside [{low}, 1]")]
    Outside {
        name: &'static str,
        value: f64,
        low: f64,
    },
    #[error("calibration_quantile = {0} is outside [0, 1)")]
    Quantile(f64),
    #[error("{name} = {value} is not a finite number >= 0")]
    NotABound { name: &'static str, value: f64 },
}

/// Thresholds; `None` switches a rule off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub k: usize,
    pub also_k: Vec<usize>,
    pub min_cosine: Option<f64>,
    pub min_knn_overlap: Option<f64>,
    pub min_slot_knn_overlap: Option<f64>,
    pub max_changed_rows: Option<u64>,
    pub max_mean_shift: Option<f64>,
    pub max_norm_deviation: Option<f64>,
    pub max_misaligned_slots: Option<u64>,
    pub min_trusted_share: Option<f64>,
    pub calibration_quantile: f64,
    pub min_search_recall: Option<f64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            k: 10,
            also_k: vec![5, 20],
            min_cosine: Some(0.99),
            min_knn_overlap: Some(0.9),
            min_slot_knn_overlap: None,
            max_changed_rows: None,
            max_mean_shift: None,
            max_norm_deviation: Some(0.01),
            max_misaligned_slots: Some(0),
            min_trusted_share: Some(0.9),
            calibration_quantile: 0.01,
            min_search_recall: Some(0.9),
        }
    }
}

impl Policy {
    /// Reads a policy file; unknown keys and out-of-range values are errors naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let p: Policy = toml::from_str(&text).map_err(|cause| PolicyError::Parse {
            path: path.into(),
            cause,
        })?;
        p.validate().map_err(|problem| PolicyError::File {
            path: path.into(),
            problem,
        })?;
        Ok(p)
    }

    /// The policy `check` gates with: the file (if any; else the defaults), then the flags.
    pub fn resolve(file: Option<&Path>, flags: PolicyFlags) -> Result<Self> {
        let mut p = match file {
            Some(path) => Policy::load(path)?,
            None => Policy::default(),
        };
        flags.apply(&mut p);
        p.validate().map_err(PolicyError::Thresholds)?;
        Ok(p)
    }

    /// Checks ranges; returns the first bad value.
    pub fn validate(&self) -> std::result::Result<(), Threshold> {
        if self.k == 0 || self.also_k.contains(&0) {
            return Err(Threshold::ZeroK);
        }
        for (name, v) in [
            ("min_cosine", self.min_cosine),
            ("min_knn_overlap", self.min_knn_overlap),
            ("min_slot_knn_overlap", self.min_slot_knn_overlap),
            ("min_trusted_share", self.min_trusted_share),
            ("min_search_recall", self.min_search_recall),
        ] {
            if let Some(v) = v {
                let low = if name == "min_cosine" { -1.0 } else { 0.0 };
                if !(low..=1.0).contains(&v) {
                    return Err(Threshold::Outside {
                        name,
                        value: v,
                        low,
                    });
                }
            }
        }
        if !(0.0..1.0).contains(&self.calibration_quantile) {
            return Err(Threshold::Quantile(self.calibration_quantile));
        }
        for (name, v) in [
            ("max_mean_shift", self.max_mean_shift),
            ("max_norm_deviation", self.max_norm_deviation),
        ] {
            // NaN would fail every file and a negative bound every row: a typo, not a gate.
            if let Some(value) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(Threshold::NotABound { name, value });
            }
        }
        Ok(())
    }

    /// All k reported, ascending, the gated `k` included.
    pub fn all_k(&self) -> Vec<usize> {
        let mut ks = self.also_k.clone();
        ks.push(self.k);
        ks.sort_unstable();
        ks.dedup();
        ks
    }

    /// Evaluates every active rule against what a comparison measured.
    pub fn evaluate(&self, r: &Comparison) -> Vec<RuleResult> {
        let mut out = Vec::new();
        let what = match r.mode {
            Mode::Drift => "compared slot",
            Mode::Consistency => "control slot",
        };
        let ki = r.ks.iter().position(|&k| k == self.k).unwrap_or(0);
        if let Some(t) = self.min_cosine {
            let failing = slots_where(r, |s| (s.cosine as f64) < t);
            out.push(RuleResult::at_least(
                "min_cosine",
                format!("cosine of every {what} to its baseline row"),
                t,
                r.summary.cosine.min,
                failing,
            ));
        }
        if let Some(t) = self.min_knn_overlap {
            let observed = r.summary.overlap.get(ki).map_or(1.0, |o| o.dist.mean);
            out.push(RuleResult::at_least(
                "min_knn_overlap",
                format!("mean kNN overlap at k={} over {what}s", self.k),
                t,
                observed,
                vec![],
            ));
        }
        if let Some(t) = self.min_slot_knn_overlap {
            let failing = slots_where(r, |s| (s.overlap[ki] as f64) < t);
            let observed = r.summary.overlap.get(ki).map_or(1.0, |o| o.dist.min);
            out.push(RuleResult::at_least(
                "min_slot_knn_overlap",
                format!("kNN overlap at k={} of every {what}", self.k),
                t,
                observed,
                failing,
            ));
        }
        if let (Some(t), Mode::Drift) = (self.max_changed_rows, r.mode) {
            let failing = slots_where(r, |s| s.changed);
            out.push(RuleResult::at_most(
                "max_changed_rows",
                "rows that differ from the baseline in any bit".into(),
                t as f64,
                r.summary.changed_rows as f64,
                failing,
            ));
        }
        if r.mode == Mode::Consistency {
            out.push(RuleResult::at_most(
                "untouched_rows_identical",
                "rows outside the regenerated slots that differ from the base file".into(),
                0.0,
                r.summary.changed_untouched_rows as f64,
                r.changed_untouched_slots.clone(),
            ));
        }
        if let Some(t) = self.max_mean_shift {
            out.push(RuleResult::at_most(
                "max_mean_shift",
                "distance between the mean unit vectors".into(),
                t,
                r.summary.mean_shift,
                vec![],
            ));
        }
        if let Some(t) = self.max_norm_deviation {
            let failing = slots_where(r, |s| (s.norm_deviation as f64) > t);
            out.push(RuleResult::at_most(
                "max_norm_deviation",
                format!("relative change of row norm of every {what} (normalisation)"),
                t,
                r.summary.max_norm_deviation,
                failing,
            ));
        }
        if let Some(t) = self.max_misaligned_slots {
            let failing = slots_where(r, |s| s.holds_baseline_slot.is_some());
            out.push(RuleResult::at_most(
                "max_misaligned_slots",
                "slots holding the baseline row of another slot (shuffled slot order)".into(),
                t as f64,
                failing.len() as f64,
                failing,
            ));
        }
        if let (Some(t), Some(cal)) = (self.min_trusted_share, &r.calibration) {
            let failing = r
                .regenerated
                .iter()
                .filter(|g| !g.trusted)
                .map(|g| g.slot)
                .collect();
            out.push(RuleResult::at_least(
                "min_trusted_share",
                format!(
                    "share of regenerated slots whose neighbourhood score reaches the control's {} quantile",
                    self.calibration_quantile
                ),
                t,
                cal.trusted_share,
                failing,
            ));
        }
        if let Some(t) = self.min_search_recall {
            for s in r.search.iter().filter(|s| s.stats.recall_sample > 0) {
                out.push(RuleResult::at_least(
                    "min_search_recall",
                    format!(
                        "HNSW recall@{} against exact search ({} space, {} sampled queries)",
                        s.stats.k, s.space, s.stats.recall_sample
                    ),
                    t,
                    s.stats.recall,
                    vec![],
                ));
            }
        }
        out
    }
}

/// The slots of the comparison whose result meets `pred`, in slot order.
fn slots_where(r: &Comparison, pred: impl Fn(&SlotResult) -> bool) -> Vec<Slot> {
    r.slots.iter().filter(|s| pred(s)).map(|s| s.slot).collect()
}

/// The `tagfix check` flags that override a policy key; each field is named after its key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyFlags {
    /// Neighbours for the gated kNN overlap (policy `k`, default 10).
    #[arg(long)]
    pub k: Option<usize>,
    /// Further k to report, comma-separated (policy `also_k`, default 5,20).
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    pub also_k: Option<Vec<usize>>,
    /// Every compared slot's cosine must reach this (default 0.99).
    #[arg(long, value_name = "X")]
    pub min_cosine: Option<f64>,
    /// Mean kNN overlap at k must reach this (default 0.9).
    #[arg(long, value_name = "Y")]
    pub min_knn_overlap: Option<f64>,
    /// Every compared slot's kNN overlap at k must reach this (off by default).
    #[arg(long, value_name = "Y")]
    pub min_slot_knn_overlap: Option<f64>,
    /// At most this many rows may differ in any bit (drift mode; off by default).
    #[arg(long, value_name = "N")]
    pub max_changed_rows: Option<u64>,
    /// Largest distance between the mean unit vectors (off by default).
    #[arg(long, value_name = "X")]
    pub max_mean_shift: Option<f64>,
    /// Largest relative change of a row's norm (default 0.01).
    #[arg(long, value_name = "X")]
    pub max_norm_deviation: Option<f64>,
    /// Consistency mode: share of regenerated slots that must reach the control calibration
    /// (default 0.9).
    #[arg(long, value_name = "X")]
    pub min_trusted_share: Option<f64>,
}

impl PolicyFlags {
    /// Puts every flag given into `policy`. The pattern names every field, so a flag added to
    /// [`PolicyFlags`] without being applied here does not compile.
    #[deny(unused_variables)]
    pub fn apply(self, policy: &mut Policy) {
        let PolicyFlags {
            k,
            also_k,
            min_cosine,
            min_knn_overlap,
            min_slot_knn_overlap,
            max_changed_rows,
            max_mean_shift,
            max_norm_deviation,
            min_trusted_share,
        } = self;
        let p = policy;
        p.k = k.unwrap_or(p.k);
        if let Some(ks) = also_k {
            p.also_k = ks;
        }
        p.min_cosine = min_cosine.or(p.min_cosine);
        p.min_knn_overlap = min_knn_overlap.or(p.min_knn_overlap);
        p.min_slot_knn_overlap = min_slot_knn_overlap.or(p.min_slot_knn_overlap);
        p.max_changed_rows = max_changed_rows.or(p.max_changed_rows);
        p.max_mean_shift = max_mean_shift.or(p.max_mean_shift);
        p.max_norm_deviation = max_norm_deviation.or(p.max_norm_deviation);
        p.min_trusted_share = min_trusted_share.or(p.min_trusted_share);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_file_overrides_defaults_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, "k = 5\nmin_cosine = 0.999\nmax_mean_shift = 0.02\n").unwrap();
        let pol = Policy::load(&p).unwrap();
        assert_eq!(pol.k, 5);
        assert_eq!(pol.min_cosine, Some(0.999));
        assert_eq!(pol.min_knn_overlap, Some(0.9));
        assert_eq!(pol.all_k(), vec![5, 20]);
        std::fs::write(&p, "min_cosin = 0.9\n").unwrap();
        let err = Policy::load(&p).unwrap_err();
        let err = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            err.contains("policy.toml") && err.contains("min_cosin"),
            "{err}"
        );
        std::fs::write(&p, "min_knn_overlap = 1.5\n").unwrap();
        let err = Policy::load(&p).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn flags_override_the_file_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, "k = 5\nmin_cosine = 0.999\nmax_mean_shift = 0.02\n").unwrap();
        let flags = PolicyFlags {
            min_cosine: Some(0.5),
            also_k: Some(vec![3]),
            ..Default::default()
        };
        let pol = Policy::resolve(Some(&p), flags).unwrap();
        assert_eq!((pol.k, pol.min_cosine), (5, Some(0.5)));
        assert_eq!((pol.all_k(), pol.max_mean_shift), (vec![3, 5], Some(0.02)));
        assert_eq!(
            Policy::resolve(None, PolicyFlags::default()).unwrap(),
            Policy::default()
        );
        let bad = PolicyFlags {
            k: Some(0),
            ..Default::default()
        };
        let err = Policy::resolve(None, bad).unwrap_err().to_string();
        assert_eq!(err, "invalid thresholds: k must be at least 1");
        for (flags, message) in [
            (
                PolicyFlags {
                    max_mean_shift: Some(f64::NAN),
                    ..Default::default()
                },
                "max_mean_shift = NaN is not a finite number >= 0",
            ),
            (
                PolicyFlags {
                    max_norm_deviation: Some(-0.5),
                    ..Default::default()
                },
                "max_norm_deviation = -0.5 is not a finite number >= 0",
            ),
        ] {
            let err = Policy::resolve(None, flags).unwrap_err().to_string();
            assert_eq!(err, format!("invalid thresholds: {message}"));
        }
        std::fs::write(&p, "max_mean_shift = inf\n").unwrap();
        let err = Policy::resolve(Some(&p), PolicyFlags::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("max_mean_shift = inf is not a finite number >= 0"),
            "{err}"
        );
    }

    #[test]
    fn flag_help_states_the_policy_defaults() {
        // The flags' help names each key's default; it must be the one `Policy::default` holds.
        use clap::Args;
        let defaults = serde_json::to_value(Policy::default()).unwrap();
        let flags = PolicyFlags::augment_args(clap::Command::new("check"));
        for arg in flags.get_arguments() {
            let key = arg.get_id().as_str();
            let help = arg
                .get_help()
                .expect("every policy flag has help")
                .to_string();
            let stated = match &defaults[key] {
                serde_json::Value::Null => "off by default".to_string(),
                serde_json::Value::Array(ks) => {
                    let ks: Vec<String> = ks.iter().map(|k| k.to_string()).collect();
                    format!("default {}", ks.join(","))
                }
                v => format!("default {v}"),
            };
            assert!(
                help.contains(&stated),
                "--{key}: `{help}` does not say `{stated}`"
            );
        }
    }
}
