//! The loss terms' weights: fixed, or balanced on the first steps (`loss_balance = initial`), and
//! stored in every checkpoint so a resumed run keeps the balanced weights. Free of libtorch, so the
//! checkpoint's `state.json` can be read and checked (and fuzzed) without it.

use super::config::{LossBalance, LossWeights, TrainConfig};
use crate::monitor::{LossTerm, Losses, TermValue};

/// The weight of a term.
pub fn weight_of(w: &LossWeights, t: LossTerm) -> f64 {
    match t {
        LossTerm::Tag => w.tag,
        LossTerm::Align => w.align,
        LossTerm::Dis => w.dis,
    }
}

fn set_weight(w: &mut LossWeights, t: LossTerm, v: f64) {
    match t {
        LossTerm::Tag => w.tag = v,
        LossTerm::Align => w.align = v,
        LossTerm::Dis => w.dis = v,
    }
}

/// Raw and weighted values of a step's terms for the metrics log.
pub fn step_losses(raw: &[(LossTerm, f64)], w: &LossWeights) -> Losses {
    let mut l = Losses::default();
    for &(t, v) in raw {
        l.set(t, TermValue::new(v, weight_of(w, t)));
    }
    l
}

/// Loss weights, fixed or balanced on the first steps. Serialised into checkpoints.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossWeighting {
    /// The weights in use.
    pub weights: LossWeights,
    /// The configured `loss_weights` the run started from (`weights` until a balance changes them);
    /// absent in checkpoints written before it was recorded, where it equals `weights` unless
    /// balanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured: Option<LossWeights>,
    pub mode: LossBalance,
    pub balance_steps: u64,
    /// Sums of the raw terms over the measured steps (tag, align, dis) and how many steps.
    pub measured: [f64; 3],
    pub measured_steps: u64,
    /// Step at which the balanced weights took effect.
    pub balanced_at: Option<u64>,
}

impl LossWeighting {
    pub fn new(weights: LossWeights, mode: LossBalance, balance_steps: u64) -> Self {
        LossWeighting {
            weights,
            configured: Some(weights),
            mode,
            balance_steps,
            measured: [0.0; 3],
            measured_steps: 0,
            balanced_at: None,
        }
    }

    /// The weighting a run configured as `config` starts from.
    pub fn of_config(config: &TrainConfig) -> Self {
        LossWeighting::new(
            config.loss_weights,
            config.loss_balance,
            config.balance_steps,
        )
    }

    /// The weighting a resumed run continues with: the checkpoint's `saved` one (balanced weights
    /// included) when `config` asks for the weighting it was started with; else the configured one,
    /// from the resumed step on (a balance measures its steps anew), with a line saying what changed.
    /// A checkpoint of an older tagfix, balanced before it recorded the configured weights, keeps
    /// its weighting unless the mode or the balance steps changed.
    pub fn resumed(saved: LossWeighting, config: &TrainConfig) -> (LossWeighting, Option<String>) {
        let fresh = LossWeighting::of_config(config);
        let same_weights = saved
            .started_from()
            .is_none_or(|w| w == config.loss_weights);
        let same_balance = saved.mode == fresh.mode
            && (saved.mode == LossBalance::Fixed || saved.balance_steps == fresh.balance_steps);
        if same_weights && same_balance {
            return (saved, None);
        }
        let describe = |w: &LossWeighting| match w.mode {
            LossBalance::Fixed => format!("fixed {}", w.weights),
            LossBalance::Initial => format!(
                "balanced over {} steps from {}",
                w.balance_steps,
                w.started_from()
                    .map_or("unrecorded weights".to_string(), |c| c.to_string())
            ),
        };
        let note = format!(
            "loss weighting changed since the checkpoint: {} → {}; the checkpoint's weights {} are \
             replaced{}",
            describe(&saved),
            describe(&fresh),
            saved.weights,
            match fresh.mode {
                LossBalance::Initial => format!(
                    ", and the balance measures the next {} steps",
                    fresh.balance_steps
                ),
                LossBalance::Fixed => String::new(),
            }
        );
        (fresh, Some(note))
    }

    /// The configured weights the weighting started from, where known.
    fn started_from(&self) -> Option<LossWeights> {
        self.configured
            .or(self.balanced_at.is_none().then_some(self.weights))
    }

    /// Why a stored weighting (a checkpoint's, at optimizer step `step`) cannot be continued: weights
    /// and measured sums must be finite and ≥ 0; a balance must have steps to measure, not have
    /// measured more than them, and not have taken effect after `step`.
    pub fn problem(&self, step: u64) -> Option<String> {
        let finite = |w: &LossWeights| {
            [w.tag, w.align, w.dis]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0)
        };
        if !finite(&self.weights) {
            return Some(format!(
                "weights {} are not all finite and >= 0",
                self.weights
            ));
        }
        if let Some(c) = self.configured.filter(|c| !finite(c)) {
            return Some(format!(
                "configured weights {c} are not all finite and >= 0"
            ));
        }
        if !self.measured.iter().all(|v| v.is_finite() && *v >= 0.0) {
            return Some(format!(
                "measured sums {:?} are not all finite and >= 0",
                self.measured
            ));
        }
        if self.mode == LossBalance::Initial && self.balance_steps == 0 {
            return Some("balance over 0 steps".into());
        }
        let unbalanced = self.balanced_at.is_none();
        if self.measured_steps > self.balance_steps
            || (unbalanced
                && self.mode == LossBalance::Initial
                && self.measured_steps == self.balance_steps)
        {
            return Some(format!(
                "{} steps measured for a balance over {}{}",
                self.measured_steps,
                self.balance_steps,
                if unbalanced {
                    " that has not taken effect"
                } else {
                    ""
                }
            ));
        }
        match self.balanced_at {
            Some(at) if at > step => Some(format!(
                "balance took effect at step {at}, after step {step}"
            )),
            _ => None,
        }
    }

    /// Records a finished step's raw terms. Under `initial`, after `balance_steps` steps the weights
    /// are set so every present term's weighted mean equals the tag term's (the tag weight is kept);
    /// returns a description of the change when it happens.
    pub fn observe(&mut self, step: u64, raw: &[(LossTerm, f64)]) -> Option<String> {
        if self.mode != LossBalance::Initial || self.balanced_at.is_some() {
            return None;
        }
        for &(t, v) in raw {
            self.measured[t as usize] += v.abs();
        }
        self.measured_steps += 1;
        if self.measured_steps < self.balance_steps {
            return None;
        }
        let n = self.measured_steps as f64;
        let mean = |t: LossTerm| self.measured[t as usize] / n;
        let target = self.weights.tag * mean(LossTerm::Tag);
        let mut parts = Vec::new();
        for &(t, _) in raw {
            let m = mean(t);
            // A term measured as (nearly) 0 keeps its weight rather than an infinite one.
            if t != LossTerm::Tag && m > 0.0 && target > 0.0 && (target / m).is_finite() {
                set_weight(&mut self.weights, t, target / m);
            }
            parts.push(format!(
                "{t}: mean raw {m:.4} → weight {:.4}",
                weight_of(&self.weights, t)
            ));
        }
        self.balanced_at = Some(step + 1);
        Some(format!(
            "loss balance over the first {} steps: {}",
            self.measured_steps,
            parts.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_equalises_weighted_terms() {
        let mut w = LossWeighting::new(LossWeights::default(), LossBalance::Initial, 2);
        let raw = [
            (LossTerm::Tag, 20.0),
            (LossTerm::Align, 4.0),
            (LossTerm::Dis, 0.5),
        ];
        assert!(w.observe(0, &raw).is_none());
        let msg = w.observe(1, &raw).unwrap();
        assert!(msg.contains("first 2 steps"), "{msg}");
        assert_eq!(w.weights.tag, 1.0);
        assert!((w.weights.align * 4.0 - 20.0).abs() < 1e-9);
        assert!((w.weights.dis * 0.5 - 20.0).abs() < 1e-9);
        assert_eq!(w.balanced_at, Some(2));
        let before = w.weights;
        assert!(w.observe(2, &raw).is_none());
        assert_eq!(w.weights, before, "fixed afterwards");
    }

    fn config(weights: &str, mode: LossBalance, steps: u64) -> TrainConfig {
        TrainConfig {
            loss_weights: weights.parse().unwrap(),
            loss_balance: mode,
            balance_steps: steps,
            ..TrainConfig::default()
        }
    }

    /// A balanced weighting after `steps` measured steps.
    fn balanced(steps: u64) -> LossWeighting {
        let mut w = LossWeighting::new(LossWeights::default(), LossBalance::Initial, steps);
        let raw = [(LossTerm::Tag, 20.0), (LossTerm::Align, 4.0)];
        for s in 0..steps {
            w.observe(s, &raw);
        }
        w
    }

    #[test]
    fn a_resume_keeps_the_checkpoints_weighting_unless_the_config_changed_it() {
        let saved = balanced(2);
        let same = config("tag=1,align=10,dis=100", LossBalance::Initial, 2);
        assert_eq!(
            LossWeighting::resumed(saved.clone(), &same),
            (saved.clone(), None)
        );
        // New fixed weights replace the balanced ones.
        let fixed = config("tag=1,align=2,dis=50", LossBalance::Fixed, 2);
        let (w, note) = LossWeighting::resumed(saved.clone(), &fixed);
        assert_eq!(w, LossWeighting::of_config(&fixed));
        let note = note.unwrap();
        assert!(
            note.contains(
                "balanced over 2 steps from tag=1,align=10,dis=100 → fixed tag=1,align=2,dis=50"
            ),
            "{note}"
        );
        assert!(
            note.contains("weights tag=1,align=5,dis=100 are replaced"),
            "{note}"
        );
        // Another balance window measures anew.
        let longer = config("tag=1,align=10,dis=100", LossBalance::Initial, 5);
        let (w, note) = LossWeighting::resumed(saved.clone(), &longer);
        assert_eq!((w.measured_steps, w.balanced_at), (0, None));
        assert!(note
            .unwrap()
            .ends_with("the balance measures the next 5 steps"));
        // A fixed run's steps setting does not matter.
        let fixed_run = LossWeighting::of_config(&config("tag=1", LossBalance::Fixed, 20));
        let other_steps = config("tag=1", LossBalance::Fixed, 7);
        assert_eq!(
            LossWeighting::resumed(fixed_run.clone(), &other_steps).1,
            None
        );
    }

    #[test]
    fn an_older_checkpoint_without_configured_weights_keeps_its_balance() {
        let mut saved = balanced(2);
        saved.configured = None;
        let any_weights = config("tag=3", LossBalance::Initial, 2);
        assert_eq!(LossWeighting::resumed(saved.clone(), &any_weights).1, None);
        // Unbalanced, its weights are the configured ones.
        let mut fixed = LossWeighting::of_config(&config("tag=1", LossBalance::Fixed, 2));
        fixed.configured = None;
        assert!(LossWeighting::resumed(fixed, &any_weights).1.is_some());
        // The field is optional in state.json.
        let mut json = serde_json::to_value(balanced(2)).unwrap();
        json.as_object_mut().unwrap().remove("configured");
        let read: LossWeighting = serde_json::from_value(json).unwrap();
        assert_eq!(read.configured, None);
    }

    #[test]
    fn weights_show_as_the_flag_takes_them() {
        let w = |tag, align, dis| LossWeights { tag, align, dis }.to_string();
        assert_eq!(w(1.0, 10.0, 100.0), "tag=1,align=10,dis=100");
        assert_eq!(w(1.0, 3.098_765, 412.0), "tag=1,align=3.0988,dis=412");
        assert_eq!(w(0.0, 2.5e-5, -2.0), "tag=0,align=2.500e-5,dis=-2");
        assert_eq!(w(f64::INFINITY, f64::NAN, 0.5), "tag=inf,align=NaN,dis=0.5");
        assert_eq!(
            "tag=1,align=3.0988,dis=412"
                .parse::<LossWeights>()
                .unwrap()
                .to_string(),
            w(1.0, 3.0988, 412.0)
        );
    }

    #[test]
    fn stored_weightings_that_cannot_continue_are_named() {
        assert_eq!(balanced(2).problem(2), None);
        assert_eq!(balanced(1).problem(5), None);
        let with = |f: &dyn Fn(&mut LossWeighting)| {
            let mut w = balanced(2);
            f(&mut w);
            w.problem(2).unwrap_or_default()
        };
        assert!(with(&|w| w.weights.align = -1.0).contains("weights"));
        assert!(with(&|w| w.configured = Some(LossWeights {
            dis: f64::INFINITY,
            ..LossWeights::default()
        }))
        .contains("configured"));
        assert!(with(&|w| w.measured[1] = f64::NAN).contains("measured sums"));
        assert!(with(&|w| w.measured_steps = 3).contains("3 steps measured for a balance over 2"));
        assert!(with(&|w| w.balanced_at = Some(3)).contains("after step 2"));
        assert!(with(&|w| w.balance_steps = 0).contains("0 steps"));
        // Unbalanced with every step measured: the next observe would not balance again.
        let mut w = balanced(1);
        w.balanced_at = None;
        assert!(w.problem(1).unwrap().contains("not taken effect"));
        // A term measured as 0 keeps a finite weight.
        let mut w = LossWeighting::new(LossWeights::default(), LossBalance::Initial, 1);
        w.observe(0, &[(LossTerm::Tag, 20.0), (LossTerm::Align, 1e-320)]);
        assert!(w.weights.align.is_finite() && w.problem(1).is_none());
    }
}
