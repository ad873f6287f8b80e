//! Training-health detectors: spike, oscillation, plateau, imbalance and stalled encoder.
//!
//! A [`HealthMonitor`] is fed one [`StepRecord`] at a time (online, while training runs: it warns
//! through `tracing` when a condition starts) and turns each condition into a [`HealthEvent`] once
//! it has ended (or at [`HealthMonitor::finish`]). [`detect`] runs the same over a finished run.
//! Loss-term detectors watch the raw values (a constant weight does not change their verdict);
//! imbalance watches the weighted ones. All thresholds live in [`DetectorConfig`] (TOML, defaults
//! documented per field and in `docs/monitor.md`).

use super::event::{EventKind, HealthEvent};
use super::record::{LossTerm, ModuleGroup, StepRecord};
use super::MonitorError;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// Every detector's thresholds. In a TOML file, each detector is a table (`[spike]`, …), or a
/// sub-table of the training config's `[monitor]`; missing keys take their defaults.
/// Longest detector window, in steps: far beyond any useful one (the defaults are 20 to 200), small
/// enough that its history buffer is always allocated.
pub const MAX_WINDOW: usize = 1_000_000;

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

/// What a detector saw at one step: the condition holds, with its numbers.
#[derive(Debug, Clone)]
struct Finding {
    /// First step of the evidence (the spike's step, or the start of the window).
    since: u64,
    /// How bad it is; an event keeps the numbers of its worst step.
    score: f64,
    /// The condition in words, without the step range.
    describe: String,
    values: BTreeMap<String, f64>,
}

/// An ongoing condition.
#[derive(Debug, Clone)]
struct Episode {
    first: u64,
    last: u64,
    worst: Finding,
}

/// Turns per-step findings for one (kind, subject) into events.
#[derive(Debug)]
struct Tracker {
    kind: EventKind,
    subject: String,
    merge_gap: u64,
    open: Option<Episode>,
}

impl Tracker {
    fn new(kind: EventKind, subject: String, merge_gap: u64) -> Self {
        Tracker {
            kind,
            subject,
            merge_gap,
            open: None,
        }
    }

    /// Feeds one step's verdict; returns the event when a condition has ended.
    fn update(&mut self, step: u64, finding: Option<Finding>, speak: bool) -> Option<HealthEvent> {
        match (finding, self.open.as_mut()) {
            (Some(f), Some(ep)) => {
                ep.last = step;
                if f.score > ep.worst.score {
                    ep.worst = f;
                }
                None
            }
            (Some(f), None) => {
                if speak {
                    tracing::warn!(
                        "training health: {} in {} at step {step}: {}",
                        self.kind,
                        self.subject,
                        f.describe
                    );
                }
                self.open = Some(Episode {
                    first: f.since.min(step),
                    last: step,
                    worst: f,
                });
                None
            }
            (None, Some(ep)) if step.saturating_sub(ep.last) > self.merge_gap => {
                let event = self.close();
                if speak {
                    if let Some(e) = &event {
                        tracing::info!("training health: {} ended: {}", e.kind, e.message);
                    }
                }
                event
            }
            (None, _) => None,
        }
    }

    fn close(&mut self) -> Option<HealthEvent> {
        let ep = self.open.take()?;
        let range = if ep.first == ep.last {
            format!("step {}", ep.first)
        } else {
            format!("steps {}-{}", ep.first, ep.last)
        };
        Some(HealthEvent {
            kind: self.kind,
            subject: self.subject.clone(),
            first_step: ep.first,
            last_step: ep.last,
            message: format!("{range}: {} {}", self.subject, ep.worst.describe),
            values: ep.worst.values,
        })
    }
}

/// A bounded history of the latest values.
#[derive(Debug, Default, Clone)]
struct Window {
    cap: usize,
    values: VecDeque<f64>,
}

impl Window {
    fn new(cap: usize) -> Self {
        Window {
            cap: cap.max(1),
            values: VecDeque::with_capacity(cap.max(1)),
        }
    }

    fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    fn is_full(&self) -> bool {
        self.values.len() == self.cap
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn to_vec(&self) -> Vec<f64> {
        self.values.iter().copied().collect()
    }

    fn median(&self) -> f64 {
        median(&mut self.to_vec())
    }
}

/// Median of a non-empty slice (reorders it).
fn median(xs: &mut [f64]) -> f64 {
    let n = xs.len();
    let mid = n / 2;
    let (_, &mut upper, _) = xs.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    if n % 2 == 1 {
        upper
    } else {
        let lower = xs[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
}

/// Median absolute deviation around `center`.
fn mad(xs: &[f64], center: f64) -> f64 {
    let mut dev: Vec<f64> = xs.iter().map(|x| (x - center).abs()).collect();
    median(&mut dev)
}

/// Scale of 1.4826 × MAD = σ for normal data.
const MAD_TO_SIGMA: f64 = 1.4826;

fn spike_check(cfg: &SpikeConfig, history: &Window, step: u64, x: f64) -> Option<Finding> {
    if history.len() < cfg.min_history.max(3) {
        return None;
    }
    let hist = history.to_vec();
    let med = median(&mut hist.clone());
    let sigma = MAD_TO_SIGMA * mad(&hist, med);
    let jump = x - med;
    let needed = (cfg.mads * sigma).max(cfg.min_rel_jump * med.abs());
    if !(jump > needed && jump > 0.0) {
        return None;
    }
    let in_mads = if sigma > 0.0 {
        jump / sigma
    } else {
        f64::INFINITY
    };
    Some(Finding {
        since: step,
        score: x / med.abs().max(f64::MIN_POSITIVE),
        describe: format!(
            "jumped to {x:.4} (recent median {med:.4}, robust sd {sigma:.3e}: {:.1}x the median, {} robust sd above)",
            x / med,
            if in_mads.is_finite() { format!("{in_mads:.1}") } else { "inf".into() }
        ),
        values: BTreeMap::from([
            ("value".into(), x),
            ("median".into(), med),
            ("robust_sd".into(), sigma),
            ("ratio".into(), x / med),
        ]),
    })
}

/// Residuals of `ys` around their least-squares line.
fn detrend(ys: &[f64]) -> Vec<f64> {
    let n = ys.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (y - mean_y);
        sxx += dx * dx;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    ys.iter()
        .enumerate()
        .map(|(i, y)| y - mean_y - slope * (i as f64 - mean_x))
        .collect()
}

fn oscillation_check(cfg: &OscillationConfig, window: &Window, step: u64) -> Option<Finding> {
    if !window.is_full() || window.len() < 2 * cfg.max_lag.max(1) + 4 {
        return None;
    }
    let ys = window.to_vec();
    let resid = detrend(&ys);
    let energy: f64 = resid.iter().map(|r| r * r).sum();
    if energy <= 0.0 {
        return None;
    }
    let (lag, rho) = (1..=cfg.max_lag.max(1))
        .map(|k| {
            let c: f64 = resid.iter().zip(&resid[k..]).map(|(a, b)| a * b).sum();
            (k, c / energy)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let level = median(&mut ys.clone()).abs();
    let sd = (energy / resid.len() as f64).sqrt();
    let rel_amplitude = if level > 0.0 {
        sd / level
    } else {
        f64::INFINITY
    };
    if rho > -cfg.min_anticorrelation || rel_amplitude < cfg.min_rel_amplitude {
        return None;
    }
    let diffs: Vec<f64> = ys.windows(2).map(|w| w[1] - w[0]).collect();
    let flips = diffs.windows(2).filter(|d| d[0] * d[1] < 0.0).count();
    let alternation = flips as f64 / (diffs.len() - 1) as f64;
    Some(Finding {
        since: (step + 1).saturating_sub(ys.len() as u64),
        score: -rho,
        describe: format!(
            "alternates up/down with period ~{} steps: residual autocorrelation {rho:.2} at lag {lag}, swing sd {sd:.4} ({:.1}% of its level {level:.4}), direction flips on {:.0}% of steps",
            2 * lag,
            100.0 * rel_amplitude,
            100.0 * alternation
        ),
        values: BTreeMap::from([
            ("autocorrelation".into(), rho),
            ("lag".into(), lag as f64),
            ("residual_sd".into(), sd),
            ("rel_amplitude".into(), rel_amplitude),
            ("level".into(), level),
            ("alternation".into(), alternation),
        ]),
    })
}

fn plateau_check(
    cfg: &PlateauConfig,
    window: &Window,
    step: u64,
    lr: f64,
    max_lr: f64,
) -> Option<Finding> {
    if !window.is_full() || window.len() < 4 {
        return None;
    }
    if lr < cfg.min_lr || lr < cfg.small_lr_ratio * max_lr {
        return None;
    }
    let ys = window.to_vec();
    let half = ys.len() / 2;
    let m1 = median(&mut ys[..half].to_vec());
    let m2 = median(&mut ys[ys.len() - half..].to_vec());
    let improvement = (m1 - m2) / m1.abs().max(f64::MIN_POSITIVE);
    if improvement >= cfg.min_rel_improvement {
        return None;
    }
    Some(Finding {
        since: (step + 1).saturating_sub(ys.len() as u64),
        score: -improvement,
        describe: format!(
            "stopped improving near {m2:.4}: median {m1:.4} -> {m2:.4} ({:+.2}%) over {} steps while lr = {lr:.2e} ({:.0}% of its peak)",
            -100.0 * improvement,
            ys.len(),
            100.0 * lr / max_lr
        ),
        values: BTreeMap::from([
            ("level".into(), m2),
            ("previous_level".into(), m1),
            ("rel_improvement".into(), improvement),
            ("lr".into(), lr),
            ("max_lr".into(), max_lr),
        ]),
    })
}

/// Per-term state of the loss-term detectors.
#[derive(Debug)]
struct TermState {
    spike: Window,
    oscillation: Window,
    plateau: Window,
    share: Window,
}

/// Feeds [`StepRecord`]s to every detector and collects the events.
#[derive(Debug)]
pub struct HealthMonitor {
    config: DetectorConfig,
    speak: bool,
    terms: BTreeMap<LossTerm, TermState>,
    grad_ratio: Window,
    update_ratio: Window,
    max_lr: f64,
    trackers: BTreeMap<(EventKind, String), Tracker>,
    events: Vec<HealthEvent>,
}

impl HealthMonitor {
    /// A monitor that warns through `tracing` when a condition starts (for use while training).
    pub fn new(config: DetectorConfig) -> Self {
        HealthMonitor {
            grad_ratio: Window::new(config.stalled_encoder.window),
            update_ratio: Window::new(config.stalled_encoder.window),
            config,
            speak: true,
            terms: BTreeMap::new(),
            max_lr: 0.0,
            trackers: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// A monitor that only collects events (for analysing a finished run).
    pub fn quiet(config: DetectorConfig) -> Self {
        HealthMonitor {
            speak: false,
            ..Self::new(config)
        }
    }

    /// Turns the `tracing` warnings on or off.
    pub fn set_speak(&mut self, speak: bool) {
        self.speak = speak;
    }

    /// The thresholds in use.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Feeds one step. Returns the events that ended with it (each also kept for [`Self::events`]).
    pub fn observe(&mut self, rec: &StepRecord) -> Vec<HealthEvent> {
        if rec.lr.is_finite() {
            self.max_lr = self.max_lr.max(rec.lr);
        }
        let mut findings: Vec<(EventKind, String, u64, Option<Finding>)> = Vec::new();
        self.observe_terms(rec, &mut findings);
        self.observe_imbalance(rec, &mut findings);
        self.observe_encoder(rec, &mut findings);
        let mut ended = Vec::new();
        for (kind, subject, gap, finding) in findings {
            let tracker = self
                .trackers
                .entry((kind, subject.clone()))
                .or_insert_with(|| Tracker::new(kind, subject, gap));
            if let Some(ev) = tracker.update(rec.step, finding, self.speak) {
                ended.push(ev);
            }
        }
        // Conditions that no detector re-examined this step still age out.
        for tracker in self.trackers.values_mut() {
            if let Some(ep) = &tracker.open {
                if rec.step.saturating_sub(ep.last) > tracker.merge_gap {
                    ended.extend(tracker.close());
                }
            }
        }
        self.events.extend(ended.iter().cloned());
        ended
    }

    fn observe_terms(
        &mut self,
        rec: &StepRecord,
        out: &mut Vec<(EventKind, String, u64, Option<Finding>)>,
    ) {
        let cfg = &self.config;
        for (term, value) in rec.loss.iter() {
            let x = value.raw;
            if !x.is_finite() {
                continue;
            }
            let st = self.terms.entry(term).or_insert_with(|| TermState {
                spike: Window::new(cfg.spike.window),
                oscillation: Window::new(cfg.oscillation.window),
                plateau: Window::new(cfg.plateau.window),
                share: Window::new(cfg.imbalance.window),
            });
            let subject = term.name().to_string();
            if cfg.spike.enabled {
                let f = spike_check(&cfg.spike, &st.spike, rec.step, x);
                out.push((EventKind::Spike, subject.clone(), cfg.spike.merge_gap, f));
            }
            st.spike.push(x);
            st.oscillation.push(x);
            st.plateau.push(x);
            if cfg.oscillation.enabled {
                let f = oscillation_check(&cfg.oscillation, &st.oscillation, rec.step);
                out.push((
                    EventKind::Oscillation,
                    subject.clone(),
                    cfg.oscillation.merge_gap,
                    f,
                ));
            }
            if cfg.plateau.enabled {
                let f = plateau_check(&cfg.plateau, &st.plateau, rec.step, rec.lr, self.max_lr);
                out.push((EventKind::Plateau, subject, cfg.plateau.merge_gap, f));
            }
        }
    }

    fn observe_imbalance(
        &mut self,
        rec: &StepRecord,
        out: &mut Vec<(EventKind, String, u64, Option<Finding>)>,
    ) {
        let cfg = &self.config.imbalance;
        let weighted: Vec<(LossTerm, f64)> = rec
            .loss
            .iter()
            .map(|(t, v)| (t, v.weighted.abs()))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let sum: f64 = weighted.iter().map(|(_, v)| v).sum();
        if !cfg.enabled || weighted.len() < 2 || sum <= 0.0 {
            return;
        }
        for (term, v) in &weighted {
            if let Some(st) = self.terms.get_mut(term) {
                st.share.push(v / sum);
            }
        }
        let shares: Vec<(LossTerm, f64)> = weighted
            .iter()
            .filter_map(|(t, _)| {
                let st = self.terms.get(t)?;
                st.share.is_full().then(|| (*t, st.share.median()))
            })
            .collect();
        for (term, share) in &shares {
            let finding = (*share >= cfg.max_share).then(|| {
                let others = shares
                    .iter()
                    .filter(|(t, _)| t != term)
                    .map(|(t, s)| format!("{t} {:.1}%", 100.0 * s))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut values = BTreeMap::from([("share".to_string(), *share)]);
                for (t, s) in &shares {
                    values.insert(format!("share_{t}"), *s);
                }
                Finding {
                    since: (rec.step + 1).saturating_sub(cfg.window as u64),
                    score: *share,
                    describe: format!(
                        "dominates the total loss: {:.1}% of the weighted sum (median over {} steps; {others})",
                        100.0 * share,
                        cfg.window
                    ),
                    values,
                }
            });
            out.push((
                EventKind::Imbalance,
                format!("{term}.weighted"),
                cfg.merge_gap,
                finding,
            ));
        }
    }

    fn observe_encoder(
        &mut self,
        rec: &StepRecord,
        out: &mut Vec<(EventKind, String, u64, Option<Finding>)>,
    ) {
        let cfg = &self.config.stalled_encoder;
        if !cfg.enabled {
            return;
        }
        let ratio = |norms: &super::record::GroupNorms| -> Option<(f64, f64, f64)> {
            let enc = norms.image_encoder?;
            let others = norms
                .iter()
                .filter(|(g, _)| *g != ModuleGroup::ImageEncoder)
                .map(|(_, v)| v)
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            (enc.is_finite() && others > 0.0).then_some((enc / others, enc, others))
        };
        let grad = ratio(&rec.grad_norm);
        if let Some((r, _, _)) = grad {
            self.grad_ratio.push(r);
        }
        let update = rec.update_norm.as_ref().and_then(ratio);
        if let Some((r, _, _)) = update {
            self.update_ratio.push(r);
        }
        if grad.is_none() && update.is_none() {
            return;
        }
        let g = self.grad_ratio.is_full().then(|| self.grad_ratio.median());
        let u = self
            .update_ratio
            .is_full()
            .then(|| self.update_ratio.median());
        let stalled_grad = g.filter(|r| *r < cfg.min_grad_ratio);
        let stalled_update = u.filter(|r| *r < cfg.min_update_ratio);
        let finding = (stalled_grad.is_some() || stalled_update.is_some()).then(|| {
            let mut values = BTreeMap::new();
            let mut parts = Vec::new();
            if let Some(r) = g {
                values.insert("grad_ratio".to_string(), r);
                parts.push(format!("gradient norm {r:.2e}"));
            }
            if let Some(r) = u {
                values.insert("update_ratio".to_string(), r);
                parts.push(format!("update norm {r:.2e}"));
            }
            if let Some((_, enc, others)) = grad {
                values.insert("encoder_grad_norm".to_string(), enc);
                values.insert("max_other_grad_norm".to_string(), others);
            }
            let worst = stalled_grad
                .into_iter()
                .chain(stalled_update)
                .fold(f64::INFINITY, f64::min);
            Finding {
                since: (rec.step + 1).saturating_sub(cfg.window as u64),
                score: -worst.max(f64::MIN_POSITIVE).ln(),
                describe: format!(
                    "is barely learning: its {} relative to the largest other group (median over {} steps)",
                    parts.join(", "),
                    cfg.window
                ),
                values,
            }
        });
        out.push((
            EventKind::StalledEncoder,
            ModuleGroup::ImageEncoder.name().to_string(),
            cfg.merge_gap,
            finding,
        ));
    }

    /// Ends every open condition (end of training). Returns those events.
    pub fn finish(&mut self) -> Vec<HealthEvent> {
        let ended: Vec<HealthEvent> = self
            .trackers
            .values_mut()
            .filter_map(Tracker::close)
            .collect();
        self.events.extend(ended.iter().cloned());
        self.events.sort_by_key(|e| (e.first_step, e.kind));
        ended
    }

    /// Every event that has ended so far.
    pub fn events(&self) -> &[HealthEvent] {
        &self.events
    }
}

/// Runs every detector over a finished run's records (quietly) and returns the events, ordered by
/// first step.
pub fn detect<'a>(
    records: impl IntoIterator<Item = &'a StepRecord>,
    config: &DetectorConfig,
) -> Vec<HealthEvent> {
    let mut monitor = HealthMonitor::quiet(config.clone());
    for rec in records {
        monitor.observe(rec);
    }
    monitor.finish();
    monitor.events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::synthetic::{Anomaly, SyntheticRun};

    fn events_of(run: &SyntheticRun) -> Vec<HealthEvent> {
        detect(&run.records(), &DetectorConfig::default())
    }

    fn with(anomaly: Anomaly) -> SyntheticRun {
        SyntheticRun {
            anomalies: vec![anomaly],
            ..SyntheticRun::default()
        }
    }

    /// The only events are of `kind` on `subject`; returns them.
    fn only(events: &[HealthEvent], kind: EventKind, subject: &str) -> Vec<HealthEvent> {
        for e in events {
            assert!(
                e.kind == kind && e.subject == subject,
                "unexpected event {e:?} (expected only {kind} on {subject})"
            );
        }
        assert!(
            !events.is_empty(),
            "expected a {kind} event on {subject}, got none"
        );
        events.to_vec()
    }

    #[test]
    fn median_and_mad() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        // |x - 2| = 1, 0, 1, 98 -> median 1
        assert_eq!(mad(&[1.0, 2.0, 3.0, 100.0], 2.0), 1.0);
    }

    #[test]
    fn clean_curves_stay_quiet() {
        for seed in 1..=6 {
            let run = SyntheticRun {
                seed,
                ..SyntheticRun::default()
            };
            let events = events_of(&run);
            assert!(events.is_empty(), "seed {seed}: {events:#?}");
        }
    }

    #[test]
    fn spike_fires_at_its_steps() {
        let events = events_of(&with(Anomaly::Spike {
            term: LossTerm::Tag,
            at: 1500,
            len: 3,
            factor: 4.0,
        }));
        let e = &only(&events, EventKind::Spike, "tag")[0];
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!((e.first_step, e.last_step), (1500, 1502));
        assert!((e.values["ratio"] - 4.0).abs() < 1.0, "{e:?}");
    }

    #[test]
    fn oscillation_fires_over_its_range() {
        let events = events_of(&with(Anomaly::Oscillation {
            term: LossTerm::Align,
            from: 2000,
            to: 2200,
            rel_amplitude: 0.3,
        }));
        let ev = only(&events, EventKind::Oscillation, "align");
        assert_eq!(ev.len(), 1, "{ev:#?}");
        let e = &ev[0];
        // The window (100 steps) that first shows it starts before the oscillation; it stops being
        // detected once the oscillating part leaves the window.
        assert!(e.first_step >= 2000 - 100 && e.first_step <= 2000, "{e:?}");
        assert!(e.last_step >= 2200 && e.last_step <= 2200 + 100, "{e:?}");
        assert_eq!(e.values["lag"], 1.0);
        assert!(e.values["autocorrelation"] < -0.8, "{e:?}");
    }

    #[test]
    fn distillation_parked_near_0_28_is_a_plateau() {
        let events = events_of(&with(Anomaly::Plateau {
            term: LossTerm::Dis,
            level: 0.28,
        }));
        let ev = only(&events, EventKind::Plateau, "dis");
        assert_eq!(ev.len(), 1, "{ev:#?}");
        let e = &ev[0];
        // Flat from ~step 700 (0.5·e^{-t/150} < 1% of 0.28 from t ≈ 700); a 1000-step window
        // whose halves no longer differ by 1% ends around 700 + 3/4·1000.
        assert!(e.first_step <= 1000, "{e:?}");
        assert_eq!(e.last_step, 3000);
        assert!((e.values["level"] - 0.28).abs() < 0.01, "{e:?}");
        assert!(e.message.contains("0.28"), "{}", e.message);
    }

    #[test]
    fn plateau_is_not_reported_once_the_lr_is_small() {
        let mut cfg = DetectorConfig::default();
        cfg.plateau.small_lr_ratio = 1.5; // every lr counts as small
        let run = with(Anomaly::Plateau {
            term: LossTerm::Dis,
            level: 0.28,
        });
        assert!(detect(&run.records(), &cfg).is_empty());
    }

    #[test]
    fn dominant_weighted_term_is_an_imbalance() {
        let events = events_of(&with(Anomaly::Imbalance {
            term: LossTerm::Dis,
            factor: 10.0,
        }));
        let ev = only(&events, EventKind::Imbalance, "dis.weighted");
        assert_eq!(ev.len(), 1, "{ev:#?}");
        assert!(ev[0].values["share"] >= 0.9);
        assert_eq!(ev[0].last_step, 3000);
    }

    #[test]
    fn stalled_encoder_fires_after_it_stalls() {
        let events = events_of(&with(Anomaly::StalledEncoder {
            from: 500,
            factor: 1e-5,
        }));
        let ev = only(&events, EventKind::StalledEncoder, "image_encoder");
        assert_eq!(ev.len(), 1, "{ev:#?}");
        let e = &ev[0];
        // The 50-step median crosses once half the window is stalled: at step 525.
        assert!(e.first_step >= 450 && e.first_step <= 500, "{e:?}");
        assert_eq!(e.last_step, 3000);
        assert!(e.values["grad_ratio"] < 1e-3 && e.values["update_ratio"] < 1e-3);
    }

    #[test]
    fn online_monitor_reports_an_event_when_it_ends() {
        let run = with(Anomaly::Spike {
            term: LossTerm::Align,
            at: 800,
            len: 1,
            factor: 6.0,
        });
        let mut m = HealthMonitor::quiet(DetectorConfig::default());
        let mut ended_at = None;
        for rec in run.records() {
            if !m.observe(&rec).is_empty() {
                ended_at.get_or_insert(rec.step);
            }
        }
        // Closed once merge_gap (10) quiet steps have passed.
        assert_eq!(ended_at, Some(811));
        assert_eq!(m.events().len(), 1);
    }

    #[test]
    fn config_from_toml_with_defaults_and_unknown_keys() {
        let cfg: DetectorConfig = toml::from_str("[spike]\nmads = 4.0\n").unwrap();
        assert_eq!(cfg.spike.mads, 4.0);
        assert_eq!(cfg.spike.window, 100);
        assert_eq!(cfg.plateau, PlateauConfig::default());
        assert!(toml::from_str::<DetectorConfig>("[spike]\nmad = 4.0\n").is_err());
    }

    #[test]
    fn thresholds_out_of_range_are_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.toml");
        for (text, want) in [
            (
                "[plateau]\nwindow = 1\n",
                "plateau.window must be >= 4, got 1",
            ),
            (
                "[spike]\nwindow = 10\n",
                "spike.window must be >= 20, got 10",
            ),
            (
                "[oscillation]\nmax_lag = 5\nwindow = 12\n",
                "oscillation.window must be >= 14, got 12",
            ),
            (
                "[spike]\nmads = nan\n",
                "spike.mads must be a finite number >= 0, got NaN",
            ),
            (
                "[imbalance]\nmax_share = -1\n",
                "imbalance.max_share must be a finite number >= 0",
            ),
            (
                "[stalled_encoder]\nwindow = 9223372036854775807\n",
                "stalled_encoder.window must be <= 1000000, got 9223372036854775807",
            ),
            (
                "[oscillation]\nmax_lag = 9223372036854775807\n",
                "oscillation.max_lag must be <= 1000000",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = DetectorConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains("d.toml") && e.contains(want), "{e}");
        }
        DetectorConfig::default().check().unwrap();
    }
}
