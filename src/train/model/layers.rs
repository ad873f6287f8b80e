//! Building blocks shared by the Swin encoder and the tagging head: the [`TchBuilder`] that creates
//! the variables of the parameter tree ([`model_def`]), `nn.Linear` and `nn.LayerNorm` over its
//! tensors, DropPath, and the trace of intermediates.

use super::swin::{relative_position_index, shift_attention_mask};
use crate::checkpoint::model_def::{self, Buffer, LayerNormParams, LinearParams, ParamBuilder};
use std::fmt::Display;
use tch::nn::{self, Init};
use tch::Tensor;

pub use crate::checkpoint::model_def::WeightInit;

/// How parameters are filled when a model is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamInit {
    /// The initialisation the official code applies (Swin / BERT `_init_weights`, PyTorch defaults
    /// elsewhere). Use this before loading a checkpoint into part of the model.
    Official,
    /// Allocated but not written: for models whose every tensor is loaded next, or whose layout is
    /// only inspected (pages of large CPU tensors are never touched).
    Uninitialized,
}

/// Creates a trainable parameter `name` under `p`.
pub(crate) fn param(p: &nn::Path, name: &str, dims: &[i64], init: Init, mode: ParamInit) -> Tensor {
    let t = match mode {
        ParamInit::Official => nn::init::f_init(init, dims, p.device(), p.kind())
            .unwrap_or_else(|e| panic!("cannot allocate {}: {e}", p.path(name))),
        ParamInit::Uninitialized => Tensor::empty(dims, (p.kind(), p.device())),
    };
    p.add(name, t, true)
}

/// Registers a constant buffer (kept in the state dict, never trained).
pub(crate) fn buffer(p: &nn::Path, name: &str, t: Tensor) -> Tensor {
    p.add(name, t.to_device(p.device()), false)
}

/// Creates the variables of a [`model_def`] definition under an `nn::Path`, so the `VarStore`
/// holds exactly the entries (names, shapes, order) of the recorded state-dict layout.
pub(crate) struct TchBuilder<'a> {
    path: nn::Path<'a>,
    mode: ParamInit,
}

impl<'a> TchBuilder<'a> {
    pub(crate) fn new(path: nn::Path<'a>, mode: ParamInit) -> Self {
        TchBuilder { path, mode }
    }
}

impl ParamBuilder for TchBuilder<'_> {
    type Tensor = Tensor;

    fn sub(&self, name: impl Display) -> Self {
        TchBuilder {
            path: &self.path / name.to_string(),
            mode: self.mode,
        }
    }

    fn param(&self, name: &str, shape: &[usize], init: model_def::Init) -> Tensor {
        let init = match init {
            model_def::Init::Normal { std } => Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            model_def::Init::Uniform { bound } => Init::Uniform {
                lo: -bound,
                up: bound,
            },
            model_def::Init::Const(v) => Init::Const(v),
        };
        param(&self.path, name, &dims(shape), init, self.mode)
    }

    fn buffer(&self, name: &str, b: Buffer) -> Tensor {
        let t = match b {
            Buffer::RelativePositionIndex { window } => {
                Tensor::from_slice(&relative_position_index(window))
            }
            Buffer::ShiftMask {
                resolution,
                window,
                shift,
            } => Tensor::from_slice(&shift_attention_mask(resolution, window, shift)),
        };
        buffer(&self.path, name, t.view(dims(&b.shape()).as_slice()))
    }
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// `nn.Linear`: `weight` [out, in] and optional `bias` [out].
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl From<LinearParams<Tensor>> for Linear {
    fn from(LinearParams { weight, bias }: LinearParams<Tensor>) -> Self {
        Linear { weight, bias }
    }
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `nn.LayerNorm` over the last dimension: `weight` (1) and `bias` (0).
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    dim: i64,
}

impl LayerNorm {
    pub fn new(LayerNormParams { weight, bias }: LayerNormParams<Tensor>, eps: f64) -> Self {
        let dim = weight.size()[0];
        LayerNorm {
            weight,
            bias,
            eps,
            dim,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// Stochastic depth as timm's `drop_path`: in training, each sample's residual branch is dropped
/// with probability `p` and the kept ones are scaled by 1/(1−p); the identity in eval mode.
/// The per-sample factor (0 or 1/(1−p), drawn as ⌊U + 1−p⌋) is built on the [B, 1, …] shape, so
/// the activation sees one broadcast multiply.
pub fn drop_path(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    let keep = 1.0 - p;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    let factor = (Tensor::rand(shape.as_slice(), (x.kind(), x.device())) + keep).floor() / keep;
    x * factor
}

/// Exact (erf) GELU, as `nn.GELU()` and BERT's `gelu`.
pub fn gelu(x: &Tensor) -> Tensor {
    x.gelu("none")
}

/// Collects named intermediate tensors during a forward pass (for parity tests and debugging).
/// Disabled by default: recording then costs nothing.
#[derive(Debug, Default)]
pub struct Trace {
    enabled: bool,
    entries: Vec<(String, Tensor)>,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Self {
        Trace::default()
    }

    /// A trace that records every intermediate the model reports.
    pub fn on() -> Self {
        Trace {
            enabled: true,
            entries: Vec::new(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Records `t` under the name `name()` (evaluated only when enabled).
    pub fn record(&mut self, name: impl FnOnce() -> String, t: &Tensor) {
        if self.enabled {
            self.entries.push((name(), t.shallow_clone()));
        }
    }

    /// The recorded tensors, in recording order.
    pub fn entries(&self) -> &[(String, Tensor)] {
        &self.entries
    }

    /// The tensor recorded under `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn drop_path_keeps_the_random_draws_and_scales_kept_samples() {
        let _torch = crate::train::torch_test_lock();
        let x = Tensor::randn([64, 3, 5], (Kind::Float, Device::Cpu));
        let p = 0.3;
        tch::manual_seed(11);
        let got = drop_path(&x, p, true);
        // The same uniform draws, one per sample, as the former `x / keep * ⌊U + keep⌋`.
        tch::manual_seed(11);
        let kept = (Tensor::rand([64, 1, 1], (Kind::Float, Device::Cpu)) + (1.0 - p)).floor();
        let want = &x / (1.0 - p) * &kept;
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err < 1e-6, "max |diff| {err}");
        let n_kept = kept.sum(Kind::Float).double_value(&[]);
        assert!(n_kept > 0.0 && n_kept < 64.0, "{n_kept} of 64 samples kept");
        // Eval mode and rate 0 are the identity.
        assert!(drop_path(&x, p, false).equal(&x));
        assert!(drop_path(&x, 0.0, true).equal(&x));
    }
}
