//! The AdamW update: ATen's fused kernel (one call per weight-decay group; norms by
//! `_foreach_norm`), the same on the device without a host read ([`AdamW::update_on_device`], then
//! [`AdamW::settle`]), and the original per-parameter loop kept for the parity test and the benchmark.

use super::{AdamW, OptimizerImpl, Param};
use crate::error::Result;
use crate::monitor::{GroupNorms, ModuleGroup};
use crate::train::error::TrainError;
use crate::train::fused::{foreach_norm, fused_adamw, AdamWArgs, StepGuards};
use crate::train::sync::{read_f64, read_f64s};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// One optimizer device-to-host read, counted by [`crate::train::sync`] (on CUDA each is a host sync).
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

impl AdamW {
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
                let grads: Vec<Tensor> = with_grad
                    .iter()
                    .map(|&i| self.params[i].var.grad())
                    .collect();
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
            return Ok(Some(self.every_update_norm(
                &grads,
                &norms.square(),
                &order,
            )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::TrainConfig;
    use crate::train::optim::tests::cfg;
    use crate::train::optim::LrSchedule;
    use crate::train::sync::thread_host_reads;
    use tch::nn;
    use tch::nn::VarStore;
    use tch::Device;

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
        let u = opt
            .update_on_device(1e-3, Some(0.5), &flag(1.0), false)
            .unwrap();
        assert_eq!(thread_host_reads(), r0, "no read until the caller's");
        let values = Vec::<f64>::try_from(u.packed()).unwrap();
        assert_eq!(values.len(), u.len());
        let s = opt.settle(&u, &values).unwrap();
        assert!(s.skipped && s.update_norm.is_none());
        assert!(s.grad_norm.total > 0.5 && s.grad_norm.total.is_finite());
        assert_eq!(opt.step, 0, "a skipped update is no step");
        assert!(
            same(&before, &snapshot()),
            "a skipped update changes nothing"
        );
        // Unflagged, measured: the update runs, clipped to norm 0.5, and reports its norms.
        let u = opt
            .update_on_device(1e-3, Some(0.5), &flag(0.0), true)
            .unwrap();
        let values = Vec::<f64>::try_from(u.packed()).unwrap();
        let s = opt.settle(&u, &values).unwrap();
        assert!(!s.skipped && s.update_norm.unwrap().total > 0.0);
        assert_eq!(opt.step, 1);
        assert!(!same(&before, &snapshot()));
        let clipped = opt.grad_norms().unwrap().total;
        assert!(
            (clipped - 0.5).abs() < 1e-4,
            "kernel-clipped gradients: {clipped}"
        );
        // A non-finite gradient skips the step without a flag.
        let after = snapshot();
        opt.zero_grad();
        (&vars["label_embed"] * f64::INFINITY)
            .sum(Kind::Float)
            .backward();
        let u = opt.update_on_device(1e-3, None, &flag(0.0), false).unwrap();
        let values = Vec::<f64>::try_from(u.packed()).unwrap();
        let s = opt.settle(&u, &values).unwrap();
        assert!(s.skipped && !s.grad_norm.total.is_finite());
        assert_eq!(opt.step, 1);
        assert!(same(&after, &snapshot()));
        assert!(
            opt.settle(&u, &values[1..]).is_err(),
            "a short read is refused"
        );
    }
}
