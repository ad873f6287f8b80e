//! The detectors' thresholds ([`DetectorConfig`]): one table per detector, each field's default
//! documented where it is defined (and in `docs/monitor.md`).

use crate::error::{Error, Result};
use crate::monitor::MonitorError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Longest detector window, in steps: far beyond any useful one (the defaults are 20 to 200), small
/// enough that its history buffer is always allocated.
pub const MAX_WINDOW: usize = 1_000_000;

/// Every detector's thresholds. In a TOML file, each detector is a table (`[spike]`, …), or a
/// sub-table of the training config's `[monitor]`; missing keys take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    pub spike: SpikeConfig,
    pub oscillation: OscillationConfig,
    pub plateau: PlateauConfig,
    pub imbalance: ImbalanceConfig,
    pub stalled_encoder: StalledEncoderConfig,
}

impl DetectorConfig {
    /// Reads a TOML file of thresholds (unknown keys are an error naming the file).
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = toml::from_str(&text).map_err(|source| MonitorError::ConfigSyntax {
            path: path.into(),
            source,
        })?;
        cfg.check().map_err(|problem| MonitorError::ConfigRange {
            path: path.into(),
            problem,
        })?;
        Ok(cfg)
    }

    /// Checks the ranges serde cannot: every window long enough for its detector to ever fire (a
    /// shorter one would silently never report) and at most [`MAX_WINDOW`] steps (the windows are
    /// allocated up front: `window = 9223372036854775807` overflowed), thresholds finite and >= 0.
    /// The error names the key, e.g. `plateau.window must be >= 4, got 1`.
    pub fn check(&self) -> std::result::Result<(), String> {
        let (s, o) = (&self.spike, &self.oscillation);
        let windows = [
            ("oscillation.max_lag", o.max_lag, 1),
            ("spike.min_history", s.min_history, 3),
            ("spike.window", s.window, s.min_history.max(3)),
            (
                "oscillation.window",
                o.window,
                o.max_lag.saturating_mul(2).saturating_add(4),
            ),
            ("plateau.window", self.plateau.window, 4),
            ("imbalance.window", self.imbalance.window, 1),
            ("stalled_encoder.window", self.stalled_encoder.window, 1),
        ];
        if let Some((key, v, _)) = windows.iter().find(|(_, v, _)| *v > MAX_WINDOW) {
            return Err(format!("{key} must be <= {MAX_WINDOW}, got {v}"));
        }
        if let Some((key, v, min)) = windows.into_iter().find(|(_, v, min)| v < min) {
            return Err(format!("{key} must be >= {min}, got {v}"));
        }
        let thresholds = [
            ("spike.mads", self.spike.mads),
            ("spike.min_rel_jump", self.spike.min_rel_jump),
            (
                "oscillation.min_anticorrelation",
                self.oscillation.min_anticorrelation,
            ),
            (
                "oscillation.min_rel_amplitude",
                self.oscillation.min_rel_amplitude,
            ),
            (
                "plateau.min_rel_improvement",
                self.plateau.min_rel_improvement,
            ),
            ("plateau.small_lr_ratio", self.plateau.small_lr_ratio),
            ("plateau.min_lr", self.plateau.min_lr),
            ("imbalance.max_share", self.imbalance.max_share),
            (
                "stalled_encoder.min_grad_ratio",
                self.stalled_encoder.min_grad_ratio,
            ),
            (
                "stalled_encoder.min_update_ratio",
                self.stalled_encoder.min_update_ratio,
            ),
        ];
        match thresholds
            .into_iter()
            .find(|(_, v)| !(v.is_finite() && *v >= 0.0))
        {
            Some((key, v)) => Err(format!("{key} must be a finite number >= 0, got {v}")),
            None => Ok(()),
        }
    }
}

/// Spike: a loss term jumps far above its recent robust level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpikeConfig {
    pub enabled: bool,
    /// Steps of history the robust level (median) and spread (MAD) are taken over. Default 100.
    pub window: usize,
    /// History needed before the detector speaks. Default 20.
    pub min_history: usize,
    /// A spike lies more than this many robust standard deviations (1.4826 × MAD) above the median.
    /// Default 6.
    pub mads: f64,
    /// … and at least this fraction above the median (guards against a near-zero MAD). Default 0.25.
    pub min_rel_jump: f64,
    /// Spikes at most this many steps apart are one event. Default 10.
    pub merge_gap: u64,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        SpikeConfig {
            enabled: true,
            window: 100,
            min_history: 20,
            mads: 6.0,
            min_rel_jump: 0.25,
            merge_gap: 10,
        }
    }
}

/// Oscillation: a term alternates up/down beyond its noise over a window. Measured as the
/// autocorrelation of the window's residuals around a linear trend at lags 1..=`max_lag`: noise
/// gives ≈ 0 (± 1/√window), a period-2·lag swing gives ≈ −1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OscillationConfig {
    pub enabled: bool,
    /// Steps per window. Default 100.
    pub window: usize,
    /// Largest lag looked at (periods 2 to 2·max_lag steps). Default 3.
    pub max_lag: usize,
    /// Fires when the residual autocorrelation at some lag is at or below −this. Default 0.5.
    pub min_anticorrelation: f64,
    /// … and the residuals' standard deviation is at least this fraction of the term's median.
    /// Default 0.01.
    pub min_rel_amplitude: f64,
    /// Detections at most this many steps apart are one event. Default 25.
    pub merge_gap: u64,
}

impl Default for OscillationConfig {
    fn default() -> Self {
        OscillationConfig {
            enabled: true,
            window: 100,
            max_lag: 3,
            min_anticorrelation: 0.5,
            min_rel_amplitude: 0.01,
            merge_gap: 25,
        }
    }
}

/// Plateau: a term stops improving while the learning rate is not small. Compares the medians of
/// the window's two halves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlateauConfig {
    pub enabled: bool,
    /// Steps per window. Default 1000.
    pub window: usize,
    /// Fires when the second half's median is less than this fraction below the first half's.
    /// Default 0.01 (1 %).
    pub min_rel_improvement: f64,
    /// The learning rate counts as small below this fraction of the largest seen so far. Default 0.1.
    pub small_lr_ratio: f64,
    /// … or below this absolute value. Default 0.
    pub min_lr: f64,
    /// Detections at most this many steps apart are one event. Default 100.
    pub merge_gap: u64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        PlateauConfig {
            enabled: true,
            window: 1000,
            min_rel_improvement: 0.01,
            small_lr_ratio: 0.1,
            min_lr: 0.0,
            merge_gap: 100,
        }
    }
}

/// Imbalance: one weighted term makes up most of the total loss (and so of the gradient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImbalanceConfig {
    pub enabled: bool,
    /// Steps the share is taken over (median). Default 100.
    pub window: usize,
    /// Fires when one term's median share of the summed weighted terms reaches this. Default 0.9.
    pub max_share: f64,
    /// Detections at most this many steps apart are one event. Default 50.
    pub merge_gap: u64,
}

impl Default for ImbalanceConfig {
    fn default() -> Self {
        ImbalanceConfig {
            enabled: true,
            window: 100,
            max_share: 0.9,
            merge_gap: 50,
        }
    }
}

/// Stalled encoder: the image encoder's gradient or update norm is negligible next to the largest
/// other group's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StalledEncoderConfig {
    pub enabled: bool,
    /// Steps the ratios are taken over (median). Default 50.
    pub window: usize,
    /// Fires when encoder grad norm / largest other group's is below this. Default 1e-3.
    pub min_grad_ratio: f64,
    /// … or encoder update norm / largest other group's is below this. Default 1e-3.
    pub min_update_ratio: f64,
    /// Detections at most this many steps apart are one event. Default 50.
    pub merge_gap: u64,
}

impl Default for StalledEncoderConfig {
    fn default() -> Self {
        StalledEncoderConfig {
            enabled: true,
            window: 50,
            min_grad_ratio: 1e-3,
            min_update_ratio: 1e-3,
            merge_gap: 50,
        }
    }
}
