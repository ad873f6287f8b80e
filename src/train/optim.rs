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

use super::config::{Schedule, TrainConfig};
use super::dist::zero::{Partition, Slice};
use super::error::TrainError;
use super::fused::{foreach_norm, fused_adamw, AdamWArgs, StepGuards};
use super::sync::{read_f64, read_f64s};
use crate::error::Result;
use crate::monitor::{GroupNorms, ModuleGroup};
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

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

/// One optimizer device-to-host read, counted by [`super::sync`] (on CUDA each is a host sync).
fn read_scalar(t: &Tensor) -> f64 {
    read_f64(t, "a parameter's norm").unwrap_or(f64::NAN)
}

fn read_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(read_f64s(t, "the optimizer's norms")?)
}

/// Sums squared per-tensor norms into module groups; `GroupNorms` of the square roots.
fn group_norms(entries: impl IntoIterator<Item = (ModuleGroup, f64)>) -> GroupNorms {
    let mut sq: BTreeMap<ModuleGroup, f64> = BTreeMap::new();
    for (g, v) in entries {
        *sq.entry(g).or_default() += v;
    }
    GroupNorms::from_groups(sq.into_iter().map(|(g, v)| (g, v.sqrt())))
}

/// Values per chunk when update norms are measured with the fused path: each chunk's parameters are
/// copied before the update, so this bounds the extra memory (256 MB in f32; a larger single tensor
/// forms its own chunk, as the loop's per-parameter copy does).
const MEASURE_CHUNK_VALUES: i64 = 1 << 26;

/// The monitor's module group of a parameter name.
pub fn module_group(name: &str) -> ModuleGroup {
    match name.split('.').next().unwrap_or(name) {
        "visual_encoder" => ModuleGroup::ImageEncoder,
        "tagging_head" | "fc" => ModuleGroup::TaggingHead,
        "label_embed" => ModuleGroup::LabelEmbed,
        _ => ModuleGroup::Projections,
    }
}

/// Whether AdamW decays a parameter: weight matrices and convolution kernels do; biases, norm
/// weights, scalars (`reweight_scale`) and Swin's relative position tables (timm's
/// `no_weight_decay_keywords`) do not.
pub fn decays(name: &str, dims: usize) -> bool {
    dims >= 2 && !name.ends_with("relative_position_bias_table")
}

/// One trained parameter and its AdamW state.
struct Param {
    name: String,
    var: Tensor,
    decay: bool,
    group: ModuleGroup,
    /// The moments of the values this rank updates: the parameter's shape when it updates all of
    /// it, else flat (the slice's values); empty when it updates none.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The values this rank updates: all of them unless sharded.
    slice: Option<Slice>,
}

impl Param {
    fn numel(&self) -> i64 {
        self.var.numel() as i64
    }

    /// Whether this rank updates every value.
    fn whole(&self) -> bool {
        self.slice.is_some_and(|s| s.start == 0 && s.len == self.numel())
    }

    /// The part of `t` (the parameter or its gradient) this rank updates: `t` itself or a flat view
    /// of the slice. Make views of the parameter under `no_grad`.
    fn part_of(&self, t: &Tensor) -> Option<Tensor> {
        let slice = self.slice?;
        Some(if self.whole() {
            t.shallow_clone()
        } else {
            slice.of(t)
        })
    }
}

/// Which parameters are trained and how; stated in the log at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParamSummary {
    pub trained_tensors: usize,
    pub trained_values: i64,
    pub decayed_tensors: usize,
    pub frozen: Vec<String>,
    pub frozen_values: i64,
}

impl std::fmt::Display for ParamSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "training {} tensors ({} values; weight decay on {}, none on norms/biases/position tables); frozen: {}",
            self.trained_tensors,
            self.trained_values,
            self.decayed_tensors,
            if self.frozen.is_empty() {
                "nothing".to_string()
            } else {
                format!("{} ({} values)", self.frozen.join(", "), self.frozen_values)
            }
        )
    }
}

/// What [`AdamW::update_on_device`] left on the device, to be read in one copy with the caller's own
/// values and handed to [`AdamW::settle`].
pub struct DeviceUpdate {
    /// f64: the gradient norm (before clipping) of each parameter with a gradient, the skip flag (1:
    /// the update was skipped), then the update norms when measured.
    packed: Tensor,
    /// The parameter of each gradient norm.
    with_grad: Vec<usize>,
    /// The parameter of each update norm (`None`: not measured).
    updated: Option<Vec<usize>>,
}

impl DeviceUpdate {
    /// The values to read (f64, on the parameters' device).
    pub fn packed(&self) -> &Tensor {
        &self.packed
    }

    /// How many values [`Self::packed`] holds.
    pub fn len(&self) -> usize {
        self.with_grad.len() + 1 + self.updated.as_ref().map_or(0, Vec::len)
    }

    /// Never: the skip flag is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The per-parameter update norms within [`Self::packed`] (a view), when measured: sharded,
    /// the caller sums them over the ranks before reading.
    pub fn update_norms(&self) -> Option<Tensor> {
        let n = self.updated.as_ref()?.len() as i64;
        Some(self.packed.narrow(0, self.with_grad.len() as i64 + 1, n))
    }
}

/// An update as the host sees it after reading its [`DeviceUpdate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// Gradient norms before clipping, in total and per module group.
    pub grad_norm: GroupNorms,
    /// Update norms per module group, when measured.
    pub update_norm: Option<GroupNorms>,
    /// Whether the update was skipped (a non-finite gradient norm or the caller's flag).
    pub skipped: bool,
}

/// The variables training updates, sorted by name, and their summary: those with `requires_grad`
/// (constant buffers have none) whose names start with none of `frozen_prefixes`; the frozen ones get
/// `requires_grad` off. A prefix matching nothing, or nothing left to train, is an error. Allocates
/// nothing, so `train --dry-run` makes the same checks.
pub fn select_trained(
    vs: &VarStore,
    frozen_prefixes: &[String],
) -> Result<(Vec<(String, Tensor)>, ParamSummary)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for p in frozen_prefixes {
        if !vars.iter().any(|(n, _)| n.starts_with(p.as_str())) {
            return Err(TrainError::FreezeMatchesNothing(p.clone()).into());
        }
    }
    let mut summary = ParamSummary::default();
    let mut trained = Vec::new();
    for (name, var) in vars {
        if !var.requires_grad() {
            continue; // constant buffers
        }
        if frozen_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = var.set_requires_grad(false);
            summary.frozen_values += var.numel() as i64;
            summary.frozen.push(name);
            continue;
        }
        summary.trained_tensors += 1;
        summary.trained_values += var.numel() as i64;
        summary.decayed_tensors += usize::from(decays(&name, var.dim()));
        trained.push((name, var));
    }
    if trained.is_empty() {
        return Err(TrainError::AllFrozen.into());
    }
    Ok((trained, summary))
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

    /// Gradient L2 norms in total and per module group (missing gradients count as zero). The fused
    /// implementation reads them from the device once; the loop once per parameter.
    pub fn grad_norms(&self) -> Result<GroupNorms> {
        if self.imp == OptimizerImpl::Loop {
            return Ok(self.loop_grad_norms());
        }
        let grads: Vec<(ModuleGroup, Tensor)> = self
            .params
            .iter()
            .map(|p| (p.group, p.var.grad()))
            .filter(|(_, g)| g.defined())
            .collect();
        let norms = if grads.is_empty() {
            Vec::new()
        } else {
            let refs: Vec<&Tensor> = grads.iter().map(|(_, g)| g).collect();
            read_vec(&foreach_norm(&refs)?)?
        };
        let present = grads.iter().zip(norms).map(|((g, _), n)| (*g, n * n));
        Ok(group_norms(
            self.params.iter().map(|p| (p.group, 0.0)).chain(present),
        ))
    }

    fn loop_grad_norms(&self) -> GroupNorms {
        group_norms(self.params.iter().map(|p| {
            let g = p.var.grad();
            let v = if g.defined() {
                read_scalar(&g.to_kind(Kind::Double).square().sum(Kind::Double))
            } else {
                0.0
            };
            (p.group, v)
        }))
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

    /// One AdamW update at learning rate `lr`. Returns the update norms per group when
    /// `measure_update` is set (the loop always measures them); the fused path then copies the
    /// parameters chunk by chunk and reads the norms once, otherwise it makes no device-to-host read.
    pub fn step(&mut self, lr: f64, measure_update: bool) -> Result<Option<GroupNorms>> {
        self.step_with(lr, measure_update, |_| Ok(()))
    }

    /// [`Self::step`], sharded: `reduce` sums the per-parameter update measures (f64, on the device)
    /// over the ranks before they are read ([`Self::combine_update_norms`]).
    pub fn step_with(
        &mut self,
        lr: f64,
        measure_update: bool,
        reduce: impl FnOnce(&Tensor) -> Result<()>,
    ) -> Result<Option<GroupNorms>> {
        if self.imp == OptimizerImpl::Loop && self.partition.is_some() {
            return Err(TrainError::ShardedLoop.into());
        }
        self.step += 1;
        match self.imp {
            OptimizerImpl::Loop => Ok(Some(self.loop_step(lr))),
            OptimizerImpl::Fused => {
                let guards = StepGuards::default();
                match tch::no_grad(|| self.fused_step(lr, measure_update, guards))? {
                    None => Ok(None),
                    Some((_, order)) if order.is_empty() => Ok(Some(group_norms([]))),
                    Some((norms, order)) => {
                        self.combine_update_norms(&norms, reduce)?;
                        Ok(Some(self.norms_of(&order, &read_vec(&norms)?)))
                    }
                }
            }
        }
    }

    /// One fused AdamW step that reads nothing from the device: the gradient norms
    /// (`_foreach_norm`); a skip flag, set when their total or `bad` (a one-value flag of the caller,
    /// non-zero for a non-finite loss term) is not finite; clipping to `max_norm` as the kernel's
    /// `grad_scale`; and the update, which the kernel skips when the flag is set. The results stay on
    /// the device ([`DeviceUpdate::packed`]) for the caller to read with its own values and hand to
    /// [`Self::settle`], which also takes the step count back when the update was skipped.
    pub fn update_on_device(
        &mut self,
        lr: f64,
        max_norm: Option<f64>,
        bad: &Tensor,
        measure_update: bool,
    ) -> Result<DeviceUpdate> {
        if self.imp != OptimizerImpl::Fused {
            return Err(TrainError::NoDeviceUpdate.into());
        }
        tch::no_grad(|| {
            let device = self.params[0].var.device();
            let with_grad: Vec<usize> = (0..self.params.len())
                .filter(|&i| self.params[i].var.grad().defined())
                .collect();
            let norms = if with_grad.is_empty() {
                Tensor::zeros([0], (Kind::Double, device))
            } else {
                let grads: Vec<Tensor> = with_grad.iter().map(|&i| self.params[i].var.grad()).collect();
                foreach_norm(&grads.iter().collect::<Vec<_>>())?
            };
            let total = norms.square().sum(Kind::Double).sqrt();
            let found_inf = total
                .isfinite()
                .logical_not()
                .logical_or(&bad.to_device(device).reshape([]).ne(0.0))
                .to_kind(Kind::Float)
                .reshape([1]);
            // PyTorch's clip_grad_norm_ multiplies by max / (norm + 1e-6) when that is below 1; the
            // kernel divides by the inverse.
            let grad_scale = max_norm.map(|m| {
                ((&total + 1e-6) / m)
                    .clamp_min(1.0)
                    .to_kind(Kind::Float)
                    .reshape([1])
            });
            let guards = StepGuards {
                grad_scale: grad_scale.as_ref(),
                found_inf: Some(&found_inf),
            };
            self.step += 1;
            let updates = self.fused_step(lr, measure_update, guards)?;
            let mut parts = vec![norms, found_inf.to_kind(Kind::Double)];
            let updated = updates.map(|(t, order)| {
                parts.push(t);
                order
            });
            Ok(DeviceUpdate {
                packed: Tensor::cat(&parts, 0),
                with_grad,
                updated,
            })
        })
    }

    /// The host side of [`Self::update_on_device`]: `values` are its [`DeviceUpdate::packed`]
    /// values as read. A skipped update does not count as a step.
    pub fn settle(&mut self, update: &DeviceUpdate, values: &[f64]) -> Result<Settled> {
        let k = update.with_grad.len();
        if values.len() != update.len() {
            return Err(TrainError::UpdateReadBack {
                read: values.len(),
                expected: update.len(),
            }
            .into());
        }
        let grad_norm = group_norms(
            self.params.iter().map(|p| (p.group, 0.0)).chain(
                update
                    .with_grad
                    .iter()
                    .zip(&values[..k])
                    .map(|(&i, n)| (self.params[i].group, n * n)),
            ),
        );
        let skipped = values[k] != 0.0;
        if skipped {
            self.step -= 1;
        }
        Ok(Settled {
            grad_norm,
            update_norm: update
                .updated
                .as_ref()
                .map(|order| self.norms_of(order, &values[k + 1..])),
            skipped,
        })
    }

    /// Sharded: turns this rank's per-parameter update measures (the squared norms of its slices,
    /// in place in `measures`, e.g. [`DeviceUpdate::update_norms`]) into the step's update norms:
    /// `reduce` sums them over the ranks, then their square roots are taken. Unsharded they are the
    /// norms already.
    pub fn combine_update_norms(
        &self,
        measures: &Tensor,
        reduce: impl FnOnce(&Tensor) -> Result<()>,
    ) -> Result<()> {
        if self.partition.is_some() {
            reduce(measures)?;
            let _ = measures.shallow_clone().sqrt_();
        }
        Ok(())
    }

    /// Update norms per module group from the per-parameter norms of the parameters `order`.
    fn norms_of(&self, order: &[usize], norms: &[f64]) -> GroupNorms {
        group_norms(
            order
                .iter()
                .zip(norms)
                .map(|(&i, n)| (self.params[i].group, n * n)),
        )
    }

    /// The fused update (both weight-decay groups) under `guards`. When `measure` is set, returns the
    /// update norm of each parameter updated (f64, on the device) and which parameters they are.
    fn fused_step(
        &mut self,
        lr: f64,
        measure: bool,
        guards: StepGuards,
    ) -> Result<Option<(Tensor, Vec<usize>)>> {
        let device = self.params[0].var.device();
        let step = self
            .step_tensor
            .get_or_insert_with(|| Tensor::zeros([], (Kind::Float, device)));
        let _ = step.fill_(self.step as f64);
        let step = step.shallow_clone();
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.var.grad()).collect();
        let (mut norms, mut order) = (Vec::new(), Vec::new());
        for decay in [true, false] {
            let idx: Vec<usize> = (0..self.params.len())
                .filter(|&i| {
                    let p = &self.params[i];
                    p.decay == decay && p.slice.is_some() && grads[i].defined()
                })
                .collect();
            let args = AdamWArgs {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                weight_decay: if decay { self.weight_decay } else { 0.0 },
                eps: self.eps,
            };
            for chunk in chunks(&self.params, &idx, measure) {
                let targets = self.targets(chunk);
                let mut before: Vec<Tensor> = if measure {
                    targets.iter().map(Tensor::copy).collect()
                } else {
                    Vec::new()
                };
                self.fused_call(chunk, &targets, &grads, &step, args, guards)?;
                if measure {
                    for (b, t) in before.iter_mut().zip(&targets) {
                        let _ = b.f_sub_(t);
                    }
                    let refs: Vec<&Tensor> = before.iter().collect();
                    norms.push(foreach_norm(&refs)?);
                    order.extend_from_slice(chunk);
                }
            }
        }
        if !measure {
            return Ok(None);
        }
        let norms = if norms.is_empty() {
            Tensor::zeros([0], (Kind::Double, device))
        } else {
            Tensor::cat(&norms, 0)
        };
        if self.partition.is_some() {
            return Ok(Some(self.every_update_norm(&grads, &norms.square(), &order)));
        }
        Ok(Some((norms, order)))
    }

    /// The values of the parameters `idx` this rank updates (the variables, or views of their
    /// slices; call under `no_grad`).
    fn targets(&self, idx: &[usize]) -> Vec<Tensor> {
        idx.iter()
            .filter_map(|&i| self.params[i].part_of(&self.params[i].var))
            .collect()
    }

    /// Sharded: the squared update norms of this rank's slices of the parameters `order` placed
    /// among those of every parameter with a gradient, in the order an unsharded step measures them,
    /// the others 0. The ranks' vectors then line up: their sum over the ranks is each parameter's
    /// squared update norm.
    fn every_update_norm(
        &self,
        grads: &[Tensor],
        norms: &Tensor,
        order: &[usize],
    ) -> (Tensor, Vec<usize>) {
        let every: Vec<usize> = [true, false]
            .into_iter()
            .flat_map(|decay| {
                (0..self.params.len())
                    .filter(move |&i| self.params[i].decay == decay && grads[i].defined())
            })
            .collect();
        // Where each parameter's measure goes (every parameter updated has a gradient).
        let mut slot = vec![0i64; self.params.len()];
        for (k, &i) in every.iter().enumerate() {
            slot[i] = k as i64;
        }
        let at: Vec<i64> = order.iter().map(|&i| slot[i]).collect();
        let mut full = Tensor::zeros([every.len() as i64], (Kind::Double, norms.device()));
        if !at.is_empty() {
            let index = Tensor::from_slice(&at).to_device(norms.device());
            let _ = full.index_copy_(0, &index, norms);
        }
        (full, every)
    }

    /// One `_fused_adamw_` call over this rank's `targets` ([`Self::targets`]) of the parameters
    /// `idx` (one weight-decay group).
    fn fused_call(
        &self,
        idx: &[usize],
        targets: &[Tensor],
        grads: &[Tensor],
        step: &Tensor,
        a: AdamWArgs,
        guards: StepGuards,
    ) -> Result<()> {
        let params: Vec<&Param> = idx.iter().map(|&i| &self.params[i]).collect();
        let grads: Vec<Tensor> = idx
            .iter()
            .filter_map(|&i| self.params[i].part_of(&grads[i]))
            .collect();
        fused_adamw(
            &targets.iter().collect::<Vec<_>>(),
            &grads.iter().collect::<Vec<_>>(),
            &params.iter().map(|p| &p.exp_avg).collect::<Vec<_>>(),
            &params.iter().map(|p| &p.exp_avg_sq).collect::<Vec<_>>(),
            step,
            a,
            guards,
        )
    }

    fn loop_step(&mut self, lr: f64) -> GroupNorms {
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let mut sq: BTreeMap<ModuleGroup, f64> = BTreeMap::new();
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                let before = p.var.detach().copy();
                if p.decay && self.weight_decay > 0.0 {
                    let _ = p.var.f_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.exp_avg.f_mul_scalar_(self.beta1);
                let _ = p.exp_avg.f_add_(&(&g * (1.0 - self.beta1)));
                let _ = p.exp_avg_sq.f_mul_scalar_(self.beta2);
                let _ = p.exp_avg_sq.f_add_(&(g.square() * (1.0 - self.beta2)));
                let denom = p.exp_avg_sq.sqrt() / bc2.sqrt() + self.eps;
                let update = &p.exp_avg / denom * (lr / bc1);
                let _ = p.var.f_sub_(&update);
                let d = read_scalar(
                    &(&p.var - before)
                        .to_kind(Kind::Double)
                        .square()
                        .sum(Kind::Double),
                );
                *sq.entry(p.group).or_default() += d;
            }
        });
        GroupNorms::from_groups(sq.into_iter().map(|(g, v)| (g, v.sqrt())))
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
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for prefix in ["exp_avg", "exp_avg_sq"] {
                    let key = format!("{prefix}.{}", p.name);
                    let Some(src) = state.get(&key) else {
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
                    if let Some(part) = p.part_of(src) {
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

/// The parameter indices `idx` as one slice, or (when update norms are measured) as consecutive
/// chunks of at most [`MEASURE_CHUNK_VALUES`] values each.
fn chunks<'a>(params: &[Param], idx: &'a [usize], measure: bool) -> Vec<&'a [usize]> {
    if idx.is_empty() {
        return Vec::new();
    }
    if !measure {
        return vec![idx];
    }
    let (mut out, mut start, mut values) = (Vec::new(), 0, 0i64);
    for (k, &i) in idx.iter().enumerate() {
        let n = params[i].slice.map_or(0, |s| s.len);
        if k > start && values + n > MEASURE_CHUNK_VALUES {
            out.push(&idx[start..k]);
            (start, values) = (k, 0);
        }
        values += n;
    }
    out.push(&idx[start..]);
    out
}

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
    use tch::nn::{self, Module};
    use crate::train::sync::thread_host_reads;
    use tch::Device;

    fn cfg() -> TrainConfig {
        TrainConfig {
            weight_decay: 0.05,
            ..Default::default()
        }
    }

    #[test]
    fn groups_by_name_and_freeze() {
        let _torch = crate::train::torch_test_lock();
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _l = nn::linear(&root / "visual_encoder" / "proj", 4, 3, Default::default());
        let _n = nn::layer_norm(
            &root / "tagging_head" / "LayerNorm",
            vec![3],
            Default::default(),
        );
        let _e = root.var("label_embed", &[6, 4], nn::Init::Const(0.1));
        let opt = AdamW::new(&vs, &["label_embed".to_string()], &cfg()).unwrap();
        assert_eq!(opt.summary.frozen, vec!["label_embed".to_string()]);
        assert_eq!(opt.summary.trained_tensors, 4);
        assert_eq!(
            opt.summary.decayed_tensors, 1,
            "only the linear weight decays"
        );
        assert!(!vs.variables()["label_embed"].requires_grad());
        assert!(AdamW::new(&vs, &["nope".to_string()], &cfg()).is_err());
        assert_eq!(module_group("fc.weight"), ModuleGroup::TaggingHead);
        assert_eq!(module_group("image_proj.bias"), ModuleGroup::Projections);
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

    /// The same named parameters (decayed and not, in three module groups, one without a gradient
    /// on odd steps) in a new store.
    fn parity_store() -> VarStore {
        tch::manual_seed(7);
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = nn::linear(
            &root / "visual_encoder" / "proj",
            64,
            48,
            Default::default(),
        );
        let _ = (&root / "visual_encoder").var(
            "relative_position_bias_table",
            &[15, 4],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let _ = nn::layer_norm(
            &root / "tagging_head" / "norm",
            vec![48],
            Default::default(),
        );
        let _ = root.var(
            "label_embed",
            &[300, 48],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let _ = (&root / "image_proj").var(
            "weight",
            &[33, 17],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 0.1,
            },
        );
        vs
    }

    #[test]
    fn fused_adamw_equals_the_loop_over_ten_steps() {
        let _torch = crate::train::torch_test_lock();
        let c = TrainConfig {
            weight_decay: 0.05,
            init_lr: 1e-2,
            warmup_lr: 1e-4,
            min_lr: 1e-4,
            warmup_steps: 4,
            lr_decay_rate: 0.5,
            ..Default::default()
        };
        let sched = LrSchedule::new(&c, 3, 10);
        // The second store copies the first: the global RNG is shared with tests running in
        // parallel, so two seeded initialisations need not draw the same values.
        let (vs_loop, mut vs_fused) = (parity_store(), parity_store());
        vs_fused.copy(&vs_loop).unwrap();
        let mut loop_opt = AdamW::new(&vs_loop, &[], &c).unwrap();
        loop_opt.imp = OptimizerImpl::Loop;
        let mut fused = AdamW::new(&vs_fused, &[], &c).unwrap();
        assert_eq!(fused.imp, OptimizerImpl::Fused, "fused is the default");
        let names: Vec<String> = loop_opt.trained_names().map(String::from).collect();
        for step in 0..10u64 {
            tch::manual_seed(100 + step as i64);
            let grads: Vec<Tensor> = names
                .iter()
                .map(|n| Tensor::randn_like(&vs_loop.variables()[n]) * (1.0 + step as f64))
                .collect();
            let mut norms = Vec::new();
            for (vs, opt) in [(&vs_loop, &mut loop_opt), (&vs_fused, &mut fused)] {
                opt.zero_grad();
                let vars = vs.variables();
                let loss = names
                    .iter()
                    .zip(&grads)
                    .filter(|(n, _)| step % 2 == 0 || n.as_str() != "label_embed")
                    .map(|(n, g)| (&vars[n] * g).sum(Kind::Float))
                    .reduce(|a, b| a + b)
                    .unwrap();
                loss.backward();
                let lr = sched.lr(step);
                if opt.imp == OptimizerImpl::Loop {
                    let g = opt.grad_norms().unwrap();
                    opt.clip_grad_norm(g.total, 20.0);
                    norms.push((g, opt.step(lr, true).unwrap().unwrap()));
                } else {
                    // The trainer's path: norms, clipping and the update on the device, one read.
                    let ok = Tensor::zeros([1], (Kind::Float, Device::Cpu));
                    let u = opt.update_on_device(lr, Some(20.0), &ok, true).unwrap();
                    let values = Vec::<f64>::try_from(u.packed()).unwrap();
                    let settled = opt.settle(&u, &values).unwrap();
                    assert!(!settled.skipped);
                    norms.push((settled.grad_norm, settled.update_norm.unwrap()));
                }
            }
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs());
            let ((g0, u0), (g1, u1)) = (&norms[0], &norms[1]);
            for (x, y) in [(g0, g1), (u0, u1)] {
                assert_eq!(x.iter().count(), y.iter().count(), "step {step}: groups");
                for ((gx, vx), (gy, vy)) in x.iter().zip(y.iter()) {
                    assert_eq!(gx, gy);
                    assert!(close(vx, vy), "step {step}: {gx:?} norm {vx} vs {vy}");
                }
            }
        }
        // Every parameter tensor and moment agrees within 1e-6 relative, in L2: ‖loop − fused‖ ≤
        // 1e-6·‖loop‖. (Not per element: single values that an update carries through zero, or moments
        // of alternating gradients, cancel to a few ulps of the tensor's scale, and the fused kernel
        // rounds differently from the loop — it updates exp_avg as a lerp, for one.)
        let (a, b) = (vs_loop.variables(), vs_fused.variables());
        let state: BTreeMap<_, _> = fused.state_tensors().into_iter().collect();
        let pairs = names
            .iter()
            .map(|n| (n.clone(), a[n].shallow_clone(), b[n].shallow_clone()))
            .chain(
                loop_opt
                    .state_tensors()
                    .into_iter()
                    .map(|(n, t)| (n.clone(), t, state[&n].shallow_clone())),
            );
        for (name, x, y) in pairs {
            let diff = (&x - &y).norm().double_value(&[]);
            let scale = x.norm().double_value(&[]);
            assert!(
                diff <= 1e-6 * scale,
                "{name}: ‖loop − fused‖ = {diff:e}, ‖loop‖ = {scale:e}"
            );
        }
        assert_ne!(a["label_embed"].sum(Kind::Double).double_value(&[]), 0.0);
    }

    #[test]
    fn fused_step_reads_the_device_only_for_norms() {
        let _torch = crate::train::torch_test_lock();
        let vs = parity_store();
        let mut opt = AdamW::new(&vs, &[], &cfg()).unwrap();
        let vars = vs.variables();
        let n = vars.len() as u64;
        let reads = |f: &mut dyn FnMut()| {
            let before = thread_host_reads();
            f();
            thread_host_reads() - before
        };
        vars.values()
            .map(|v| v.square().sum(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap()
            .backward();
        assert_eq!(
            reads(&mut || {
                opt.grad_norms().unwrap();
            }),
            1
        );
        assert_eq!(
            reads(&mut || assert!(opt.step(1e-3, false).unwrap().is_none())),
            0
        );
        assert_eq!(
            reads(&mut || assert!(opt.step(1e-3, true).unwrap().is_some())),
            1
        );
        opt.imp = OptimizerImpl::Loop;
        assert_eq!(
            reads(&mut || {
                opt.grad_norms().unwrap();
            }),
            n
        );
        assert_eq!(
            reads(&mut || {
                opt.step(1e-3, false).unwrap();
            }),
            n
        );
    }

    #[test]
    fn a_device_update_reads_nothing_clips_and_skips_a_flagged_step() {
        let _torch = crate::train::torch_test_lock();
        let vs = parity_store();
        let mut opt = AdamW::new(&vs, &[], &cfg()).unwrap();
        let vars = vs.variables();
        let backward = || {
            vars.values()
                .map(|v| (v * 3.0).square().sum(Kind::Float))
                .reduce(|a, b| a + b)
                .unwrap()
                .backward()
        };
        backward();
        let snapshot = || -> Vec<Tensor> { vars.values().map(|v| v.copy()).collect() };
        let same = |a: &[Tensor], b: &[Tensor]| a.iter().zip(b).all(|(x, y)| x.equal(y));
        let flag = |v: f32| Tensor::from_slice(&[v]);
        let before = snapshot();
        let r0 = thread_host_reads();
        let u = opt.update_on_device(1e-3, Some(0.5), &flag(1.0), false).unwrap();
        assert_eq!(thread_host_reads(), r0, "no read until the caller's");
        let values = Vec::<f64>::try_from(u.packed()).unwrap();
        assert_eq!(values.len(), u.len());
        let s = opt.settle(&u, &values).unwrap();
        assert!(s.skipped && s.update_norm.is_none());
        assert!(s.grad_norm.total > 0.5 && s.grad_norm.total.is_finite());
        assert_eq!(opt.step, 0, "a skipped update is no step");
        assert!(same(&before, &snapshot()), "a skipped update changes nothing");
        // Unflagged, measured: the update runs, clipped to norm 0.5, and reports its norms.
        let u = opt.update_on_device(1e-3, Some(0.5), &flag(0.0), true).unwrap();
        let values = Vec::<f64>::try_from(u.packed()).unwrap();
        let s = opt.settle(&u, &values).unwrap();
        assert!(!s.skipped && s.update_norm.unwrap().total > 0.0);
        assert_eq!(opt.step, 1);
        assert!(!same(&before, &snapshot()));
        let clipped = opt.grad_norms().unwrap().total;
        assert!((clipped - 0.5).abs() < 1e-4, "kernel-clipped gradients: {clipped}");
        // A non-finite gradient skips the step without a flag.
        let after = snapshot();
        opt.zero_grad();
        (&vars["label_embed"] * f64::INFINITY).sum(Kind::Float).backward();
        let u = opt.update_on_device(1e-3, None, &flag(0.0), false).unwrap();
        let values = Vec::<f64>::try_from(u.packed()).unwrap();
        let s = opt.settle(&u, &values).unwrap();
        assert!(s.skipped && !s.grad_norm.total.is_finite());
        assert_eq!(opt.step, 1);
        assert!(same(&after, &snapshot()));
        assert!(opt.settle(&u, &values[1..]).is_err(), "a short read is refused");
    }

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
