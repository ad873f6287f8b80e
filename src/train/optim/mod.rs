//! Optimisation: AdamW with parameter groups chosen by name (weight decay on weight matrices only),
//! frozen parameters, warm-up then RAM's per-epoch decay or cosine, global gradient-norm clipping,
//! optional linear LR scaling, and gradient norms per module group for the metrics log.
//!
//! AdamW keeps its own state (moments and step) rather than tch's optimizer, so that it can be saved
//! to and restored from a checkpoint exactly. The update runs as ATen's fused AdamW
//! ([`OptimizerImpl::Fused`], one `_fused_adamw_` call per weight-decay group, norms through
//! `_foreach_norm` and one device-to-host read); the original per-parameter loop
//! ([`OptimizerImpl::Loop`], PyTorch's `torch.optim.AdamW` formula written out) stays selectable for the
//! parity test and `scripts/bench-optim.sh`.
//!
//! In a data-parallel run the state can be sharded ([`AdamW::shard`], ZeRO stage 1): each rank keeps
//! the moments of, and updates, only its slice of the parameters; [`super::dist::zero`] then
//! broadcasts each slice from its rank and gathers the state for checkpoints.
//!
//! The parameters and their groups are in `params`, the learning-rate schedule in `schedule`, the
//! update itself (fused, on the device, and the loop) in `update`.

mod params;
mod schedule;
mod update;

pub use params::{decays, module_group, select_trained, ParamSummary};
pub use schedule::LrSchedule;
pub use update::{DeviceUpdate, Settled};

use super::config::TrainConfig;
use super::dist::zero::{Partition, Slice};
use super::error::TrainError;
use crate::error::Result;
use params::Param;
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::Tensor;

/// Which AdamW implementation runs the update (the same formula and state either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizerImpl {
    /// The original loop: ~19 kernels per parameter, a copy of each parameter and one device-to-host
    /// read per parameter for the update norm, one more per parameter for the gradient norms.
    Loop,
    /// ATen's fused AdamW, one call per weight-decay group; gradient norms by `_foreach_norm` with one
    /// device-to-host read; update norms only when asked for (logging steps).
    #[default]
    Fused,
}

/// AdamW over the trainable variables of a [`VarStore`].
pub struct AdamW {
    params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates applied so far.
    pub step: u64,
    pub summary: ParamSummary,
    /// The implementation used by [`Self::grad_norms`] and [`Self::step`].
    pub imp: OptimizerImpl,
    /// The fused kernel's step counter (0-dim f32 on the parameters' device), refilled each step.
    step_tensor: Option<Tensor>,
    /// Sharded ([`Self::shard`]): how the values are split over the ranks.
    partition: Option<Partition>,
}

/// What [`AdamW::shard`] left this rank, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSummary {
    pub rank: usize,
    pub world: usize,
    /// The values this rank updates, and of how many tensors (wholly or in part).
    pub values: i64,
    pub tensors: usize,
    pub total_values: i64,
    pub total_tensors: usize,
}

impl std::fmt::Display for ShardSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |values: i64| 2.0 * 4.0 * values as f64 / 1e6;
        write!(
            f,
            "optimizer state sharded over {} ranks: rank {} updates {} of {} values (in {} of {} \
             tensors; moments {:.1} MB instead of {:.1} MB)",
            self.world,
            self.rank,
            self.values,
            self.total_values,
            self.tensors,
            self.total_tensors,
            mb(self.values),
            mb(self.total_values)
        )
    }
}

impl AdamW {
    /// Collects the trainable variables (sorted by name), freezing those whose names start with one
    /// of `frozen_prefixes` (`requires_grad` off). A prefix matching nothing is an error.
    pub fn new(vs: &VarStore, frozen_prefixes: &[String], cfg: &TrainConfig) -> Result<Self> {
        let (trained, summary) = select_trained(vs, frozen_prefixes)?;
        let mut params = Vec::new();
        for (name, var) in trained {
            let decay = decays(&name, var.dim());
            params.push(Param {
                group: module_group(&name),
                exp_avg: var.zeros_like(),
                exp_avg_sq: var.zeros_like(),
                slice: Some(Slice {
                    param: params.len(),
                    start: 0,
                    len: var.numel() as i64,
                }),
                name,
                var,
                decay,
            });
        }
        Ok(AdamW {
            params,
            beta1: cfg.betas.0,
            beta2: cfg.betas.1,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
            step: 0,
            summary,
            imp: OptimizerImpl::default(),
            step_tensor: None,
            partition: None,
        })
    }

    /// Shards the state over `world` ranks ([`Partition`]): this rank (`rank`) keeps the moments of,
    /// and updates, only its slice of the values; the rest of the moments are freed. Call it before
    /// [`Self::load_state`] and before any step. The parameters must be contiguous (they are, as
    /// created), so that a slice is a view.
    pub fn shard(&mut self, rank: usize, world: usize) -> Result<ShardSummary> {
        if let Some(p) = self.params.iter().find(|p| !p.var.is_contiguous()) {
            return Err(TrainError::ShardNonContiguous(p.name.clone()).into());
        }
        let sizes: Vec<i64> = self.params.iter().map(Param::numel).collect();
        let partition = Partition::new(&sizes, world);
        let mine = partition.slices(rank);
        for p in &mut self.params {
            p.slice = None;
        }
        for sl in &mine {
            self.params[sl.param].slice = Some(*sl);
        }
        for p in &mut self.params {
            let (kind, device) = (p.var.kind(), p.var.device());
            let moments = match p.slice {
                _ if p.whole() => None,
                Some(slice) => Some(Tensor::zeros([slice.len], (kind, device))),
                None => Some(Tensor::empty([0], (kind, device))),
            };
            if let Some(m) = moments {
                p.exp_avg_sq = m.zeros_like();
                p.exp_avg = m;
            }
        }
        let summary = ShardSummary {
            rank,
            world: partition.world(),
            values: partition.share(rank),
            tensors: mine.len(),
            total_values: sizes.iter().sum(),
            total_tensors: self.params.len(),
        };
        self.partition = Some(partition);
        Ok(summary)
    }

    /// Sharded: how the values are split over the ranks.
    pub fn partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// Sets every trained parameter's gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The trained parameters, in parameter order (shallow: the variables themselves).
    pub fn trained_vars(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.var.shallow_clone()).collect()
    }

    /// The defined gradients of the trained parameters, in parameter order (shallow: writing to
    /// them writes the gradients; distributed training sums them across ranks).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.var.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// Scales gradients so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`
    /// formula, `max_norm / (norm + 1e-6)`). Returns the factor applied (1 when none).
    pub fn clip_grad_norm(&mut self, total_norm: f64, max_norm: f64) -> f64 {
        let coef = max_norm / (total_norm + 1e-6);
        if coef >= 1.0 {
            return 1.0;
        }
        tch::no_grad(|| {
            for p in &mut self.params {
                let mut g = p.var.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(coef);
                }
            }
        });
        coef
    }

    /// The optimizer state as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) for a checkpoint.
    /// Sharded, only the parameters this rank updates whole: [`super::dist::zero::gather_state`]
    /// assembles the whole state from every rank's [`Self::state_slices`].
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in self.params.iter().filter(|p| p.whole()) {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        out
    }

    /// The moments of each slice this rank updates, flat (`[len]`), in parameter order.
    pub fn state_slices(&self) -> Vec<(Slice, Tensor, Tensor)> {
        self.params
            .iter()
            .filter_map(|p| {
                let slice = p.slice?;
                Some((slice, p.exp_avg.reshape([-1]), p.exp_avg_sq.reshape([-1])))
            })
            .collect()
    }

    /// Restores the state written by [`Self::state_tensors`]; every trained parameter must be present
    /// with its shape (the same model and the same frozen set). Sharded, each rank keeps its slices.
    pub fn load_state(
        &mut self,
        state: &BTreeMap<String, Tensor>,
        step: u64,
        source: &str,
    ) -> Result<()> {
        self.load_state_from(
            |key| Ok(state.get(key).map(Tensor::shallow_clone)),
            step,
            source,
        )
    }

    /// [`Self::load_state`] from a source that hands out one tensor at a time (`read(key)`: the
    /// tensor of that name, or `None`), so that a checkpoint's moments need not all be in memory
    /// before they are copied into place.
    pub fn load_state_from(
        &mut self,
        mut read: impl FnMut(&str) -> Result<Option<Tensor>>,
        step: u64,
        source: &str,
    ) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for prefix in ["exp_avg", "exp_avg_sq"] {
                    let key = format!("{prefix}.{}", p.name);
                    let Some(src) = read(&key)? else {
                        return Err(TrainError::OptimizerStateMissing {
                            checkpoint: source.to_string(),
                            key,
                        }
                        .into());
                    };
                    if src.size() != p.var.size() {
                        return Err(TrainError::OptimizerStateShape {
                            checkpoint: source.to_string(),
                            key,
                            state: src.size(),
                            param: p.var.size(),
                        }
                        .into());
                    }
                    if let Some(part) = p.part_of(&src) {
                        let dst = match prefix {
                            "exp_avg" => &mut p.exp_avg,
                            _ => &mut p.exp_avg_sq,
                        };
                        dst.copy_(&part.to_kind(dst.kind()).to_device(dst.device()));
                    }
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }

    /// Names of the trained parameters.
    pub fn trained_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};
    use tch::{Device, Kind};

    /// AdamW's settings of the tests (weight decay on, so that it shows).
    pub(super) fn cfg() -> TrainConfig {
        TrainConfig {
            weight_decay: 0.05,
            ..Default::default()
        }
    }

    #[test]
    fn adamw_matches_pytorch_formula() {
        let _torch = crate::train::torch_test_lock();
        // One parameter, two steps, checked against the closed form of torch.optim.AdamW.
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2, 1], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, &[], &cfg()).unwrap();
        let (lr, wd, b1, b2, eps) = (0.1, 0.05, 0.9, 0.999, 1e-8);
        let mut p = 1.0f64;
        let (mut m, mut v) = (0.0f64, 0.0f64);
        for t in 1..=2 {
            opt.zero_grad();
            (&w * 3.0).sum(Kind::Float).backward(); // gradient 3
            opt.step(lr, false).unwrap();
            let g = 3.0;
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mh = m / (1.0 - b1.powi(t));
            let vh = v / (1.0 - b2.powi(t));
            p -= lr * mh / (vh.sqrt() + eps);
            assert!((w.double_value(&[0, 0]) - p).abs() < 1e-6, "step {t}");
        }
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let _torch = crate::train::torch_test_lock();
        let vs = VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let mut opt = AdamW::new(&vs, &[], &cfg()).unwrap();
        let x = Tensor::ones([4, 3], (Kind::Float, Device::Cpu)) * 10.0;
        lin.forward(&x).sum(Kind::Float).backward();
        let before = opt.grad_norms().unwrap().total;
        assert!(before > 1.0);
        opt.clip_grad_norm(before, 1.0);
        assert!((opt.grad_norms().unwrap().total - 1.0).abs() < 1e-4);
    }
}
