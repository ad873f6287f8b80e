//! Synthetic training runs with known health problems: noisy but healthy decaying loss curves of
//! the three RAM++ terms, optionally with one injected anomaly at a known step range. Used by the
//! detector and plot tests and by `examples/synthetic_run.rs` (to see what each event looks like).

use super::record::{GroupNorms, LossTerm, Losses, ModuleGroup, StepRecord, TermValue};
use crate::rng::SplitMix64;

/// One injected problem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Anomaly {
    /// `term` multiplied by `factor` on steps `at..at+len`.
    Spike {
        term: LossTerm,
        at: u64,
        len: u64,
        factor: f64,
    },
    /// `term` multiplied by `1 ± rel_amplitude`, alternating every step, on steps `from..to`.
    Oscillation {
        term: LossTerm,
        from: u64,
        to: u64,
        rel_amplitude: f64,
    },
    /// `term` decays quickly to `level` and stays there (the learning rate stays at its peak).
    Plateau { term: LossTerm, level: f64 },
    /// `term`'s weight multiplied by `factor` for the whole run.
    Imbalance { term: LossTerm, factor: f64 },
    /// The image encoder's gradient and update norms shrink by `factor` from step `from` on.
    StalledEncoder { from: u64, factor: f64 },
}

/// The shape of a synthetic run.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticRun {
    pub steps: u64,
    pub seed: u64,
    /// Peak learning rate (reached after `warmup` steps, then cosine decay to peak/10).
    pub lr: f64,
    pub warmup: u64,
    /// Term weights (tag, align, dis); RAM++'s defaults are 1, 10, 100.
    pub weights: [f64; 3],
    pub anomalies: Vec<Anomaly>,
}

impl Default for SyntheticRun {
    fn default() -> Self {
        SyntheticRun {
            steps: 3000,
            seed: 7,
            lr: 1e-4,
            warmup: 100,
            weights: [1.0, 10.0, 100.0],
            anomalies: Vec::new(),
        }
    }
}

/// Multiplicative noise with relative spread `sd`.
fn noise(rng: &mut SplitMix64, sd: f64) -> f64 {
    (sd * rng.normal()).exp()
}

impl SyntheticRun {
    /// The learning rate at `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if self
            .anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::Plateau { .. }))
        {
            return self.lr;
        }
        if step <= self.warmup {
            return self.lr * step as f64 / self.warmup.max(1) as f64;
        }
        let progress = (step - self.warmup) as f64 / (self.steps - self.warmup).max(1) as f64;
        let floor = self.lr / 10.0;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Generates the records, steps 1..=steps.
    pub fn records(&self) -> Vec<StepRecord> {
        let mut rng = SplitMix64(self.seed);
        let mut wall = 0.0;
        (1..=self.steps)
            .map(|step| {
                let t = step as f64;
                // Healthy curves: power-law decay with multiplicative noise.
                let mut raw = [
                    60.0 * (1.0 + t / 100.0).powf(-0.5) * noise(&mut rng, 0.05),
                    4.0 * (1.0 + t / 200.0).powf(-0.4) * noise(&mut rng, 0.08),
                    (0.2 + 0.6 * (1.0 + t / 300.0).powf(-0.5)) * noise(&mut rng, 0.03),
                ];
                let mut weights = self.weights;
                let mut enc_scale = 1.0;
                for a in &self.anomalies {
                    match *a {
                        Anomaly::Spike {
                            term,
                            at,
                            len,
                            factor,
                        } if (at..at + len).contains(&step) => {
                            raw[term as usize] *= factor;
                        }
                        Anomaly::Oscillation {
                            term,
                            from,
                            to,
                            rel_amplitude,
                        } if (from..to).contains(&step) => {
                            let sign = if step % 2 == 0 { 1.0 } else { -1.0 };
                            raw[term as usize] *= 1.0 + sign * rel_amplitude;
                        }
                        Anomaly::Plateau { term, level } => {
                            let healthy =
                                raw[term as usize] / (0.2 + 0.6 * (1.0 + t / 300.0).powf(-0.5));
                            raw[term as usize] = (level + 0.5 * (-t / 150.0).exp()) * healthy;
                        }
                        Anomaly::Imbalance { term, factor } => weights[term as usize] *= factor,
                        Anomaly::StalledEncoder { from, factor } if step >= from => {
                            enc_scale = factor
                        }
                        _ => {}
                    }
                }
                let mut loss = Losses::default();
                let mut total = 0.0;
                for term in LossTerm::ALL {
                    let v = TermValue::new(raw[term as usize], weights[term as usize]);
                    total += v.weighted;
                    loss.set(term, v);
                }
                let lr = self.lr_at(step);
                let grad_norm = GroupNorms::from_groups([
                    (
                        ModuleGroup::ImageEncoder,
                        1.0 * enc_scale * noise(&mut rng, 0.2),
                    ),
                    (ModuleGroup::TaggingHead, 2.0 * noise(&mut rng, 0.2)),
                    (ModuleGroup::Projections, 0.5 * noise(&mut rng, 0.2)),
                ]);
                let update_norm = GroupNorms::from_groups([
                    (
                        ModuleGroup::ImageEncoder,
                        300.0 * lr * enc_scale * noise(&mut rng, 0.1),
                    ),
                    (ModuleGroup::TaggingHead, 100.0 * lr * noise(&mut rng, 0.1)),
                    (ModuleGroup::Projections, 30.0 * lr * noise(&mut rng, 0.1)),
                ]);
                let step_s = 0.5 * noise(&mut rng, 0.05);
                wall += step_s;
                StepRecord {
                    step,
                    epoch: (step - 1) / 1000,
                    lr,
                    loss,
                    total,
                    grad_norm,
                    update_norm: Some(update_norm),
                    images_per_s: 52.0 / step_s,
                    data_wait_s: 0.01 * noise(&mut rng, 0.5),
                    wall_s: wall,
                }
            })
            .collect()
    }
}
