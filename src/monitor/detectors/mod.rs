//! Training-health detectors: spike, oscillation, plateau, imbalance and stalled encoder.
//!
//! A [`HealthMonitor`] is fed one [`StepRecord`] at a time (online, while training runs: it warns
//! through `tracing` when a condition starts) and turns each condition into a [`HealthEvent`] once
//! it has ended (or at [`HealthMonitor::finish`]). [`detect`] runs the same over a finished run.
//! Loss-term detectors watch the raw values (a constant weight does not change their verdict);
//! imbalance watches the weighted ones. All thresholds live in [`DetectorConfig`] (TOML, defaults
//! documented per field and in `docs/monitor.md`).

mod checks;
mod config;

use checks::{oscillation_check, plateau_check, spike_check, Finding, Tracker, Window};
pub use config::{
    DetectorConfig, ImbalanceConfig, OscillationConfig, PlateauConfig, SpikeConfig,
    StalledEncoderConfig, MAX_WINDOW,
};

use super::event::{EventKind, HealthEvent};
use super::record::{LossTerm, ModuleGroup, StepRecord};
use std::collections::BTreeMap;

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
