//! What each detector computes at one step: the robust statistics over its window ([`Window`],
//! median and MAD), the spike, oscillation and plateau checks, and the [`Tracker`] that turns the
//! per-step findings into events.

use crate::monitor::event::{EventKind, HealthEvent};
use std::collections::{BTreeMap, VecDeque};

use super::config::{OscillationConfig, PlateauConfig, SpikeConfig};

/// What a detector saw at one step: the condition holds, with its numbers.
#[derive(Debug, Clone)]
pub(super) struct Finding {
    /// First step of the evidence (the spike's step, or the start of the window).
    pub(super) since: u64,
    /// How bad it is; an event keeps the numbers of its worst step.
    pub(super) score: f64,
    /// The condition in words, without the step range.
    pub(super) describe: String,
    pub(super) values: BTreeMap<String, f64>,
}

/// An ongoing condition.
#[derive(Debug, Clone)]
pub(super) struct Episode {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) worst: Finding,
}

/// Turns per-step findings for one (kind, subject) into events.
#[derive(Debug)]
pub(super) struct Tracker {
    pub(super) kind: EventKind,
    pub(super) subject: String,
    pub(super) merge_gap: u64,
    pub(super) open: Option<Episode>,
}

impl Tracker {
    pub(super) fn new(kind: EventKind, subject: String, merge_gap: u64) -> Self {
        Tracker {
            kind,
            subject,
            merge_gap,
            open: None,
        }
    }

    /// Feeds one step's verdict; returns the event when a condition has ended.
    pub(super) fn update(
        &mut self,
        step: u64,
        finding: Option<Finding>,
        speak: bool,
    ) -> Option<HealthEvent> {
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

    pub(super) fn close(&mut self) -> Option<HealthEvent> {
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
pub(super) struct Window {
    pub(super) cap: usize,
    pub(super) values: VecDeque<f64>,
}

impl Window {
    pub(super) fn new(cap: usize) -> Self {
        Window {
            cap: cap.max(1),
            values: VecDeque::with_capacity(cap.max(1)),
        }
    }

    pub(super) fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    pub(super) fn is_full(&self) -> bool {
        self.values.len() == self.cap
    }

    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    pub(super) fn to_vec(&self) -> Vec<f64> {
        self.values.iter().copied().collect()
    }

    pub(super) fn median(&self) -> f64 {
        median(&mut self.to_vec())
    }
}

/// Median of a non-empty slice (reorders it).
pub(super) fn median(xs: &mut [f64]) -> f64 {
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
pub(super) fn mad(xs: &[f64], center: f64) -> f64 {
    let mut dev: Vec<f64> = xs.iter().map(|x| (x - center).abs()).collect();
    median(&mut dev)
}

/// Scale of 1.4826 × MAD = σ for normal data.
pub(super) const MAD_TO_SIGMA: f64 = 1.4826;

pub(super) fn spike_check(
    cfg: &SpikeConfig,
    history: &Window,
    step: u64,
    x: f64,
) -> Option<Finding> {
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
pub(super) fn detrend(ys: &[f64]) -> Vec<f64> {
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

pub(super) fn oscillation_check(
    cfg: &OscillationConfig,
    window: &Window,
    step: u64,
) -> Option<Finding> {
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

pub(super) fn plateau_check(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        // |x - 2| = 1, 0, 1, 98 -> median 1
        assert_eq!(mad(&[1.0, 2.0, 3.0, 100.0], 2.0), 1.0);
    }
}
