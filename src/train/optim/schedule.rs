//! The learning rate at each optimizer step: warm-up, then RAM's per-epoch decay or cosine.

use crate::train::config::{Schedule, TrainConfig};

/// The learning rate at each optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub init_lr: f64,
    pub min_lr: f64,
    pub warmup_lr: f64,
    pub warmup_steps: u64,
    pub decay_rate: f64,
    pub kind: Schedule,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// From the configuration; with `lr_scale_linear`, the rates are multiplied by
    /// `batch_size / base_batch_size`.
    pub fn new(cfg: &TrainConfig, steps_per_epoch: u64, total_steps: u64) -> Self {
        let scale = if cfg.lr_scale_linear {
            cfg.batch_size as f64 / cfg.base_batch_size.max(1) as f64
        } else {
            1.0
        };
        LrSchedule {
            init_lr: cfg.init_lr * scale,
            min_lr: cfg.min_lr * scale,
            warmup_lr: cfg.warmup_lr * scale,
            warmup_steps: cfg.warmup_steps,
            decay_rate: cfg.lr_decay_rate,
            kind: cfg.schedule,
            steps_per_epoch: steps_per_epoch.max(1),
            total_steps,
        }
    }

    /// Learning rate of step `step` (0-based). Warm-up: linear from `warmup_lr` to `init_lr` over
    /// `warmup_steps` (RAM's `warmup_lr_schedule`, applied in epoch 0; here by global step). Then
    /// `ram-step`: `max(min_lr, init_lr · decay_rate^epoch)`; `cosine`: from `init_lr` to `min_lr`
    /// over the steps after warm-up.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * f;
        }
        match self.kind {
            Schedule::RamStep => {
                let epoch = (step / self.steps_per_epoch) as i32;
                (self.init_lr * self.decay_rate.powi(epoch)).max(self.min_lr)
            }
            Schedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let f = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr
                    + 0.5 * (self.init_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * f).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let _torch = crate::train::torch_test_lock();
        let c = TrainConfig {
            init_lr: 1e-4,
            warmup_lr: 1e-6,
            min_lr: 1e-6,
            warmup_steps: 10,
            lr_decay_rate: 0.5,
            ..Default::default()
        };
        let s = LrSchedule::new(&c, 100, 1000);
        assert_eq!(s.lr(0), 1e-6);
        assert!((s.lr(5) - (1e-6 + 0.5 * (1e-4 - 1e-6))).abs() < 1e-12);
        assert_eq!(s.lr(50), 1e-4);
        assert_eq!(s.lr(150), 0.5e-4);
        assert_eq!(s.lr(999), 1e-6, "clamped at min_lr");
        let cos = LrSchedule::new(
            &TrainConfig {
                schedule: Schedule::Cosine,
                ..c.clone()
            },
            100,
            1010,
        );
        assert!((cos.lr(10) - 1e-4).abs() < 1e-12);
        assert!((cos.lr(1010) - 1e-6).abs() < 1e-12);
        let scaled = LrSchedule::new(
            &TrainConfig {
                lr_scale_linear: true,
                batch_size: 104,
                ..c
            },
            100,
            1000,
        );
        assert_eq!(scaled.init_lr, 2e-4);
    }
}
