//! Building blocks shared by the Swin encoder and the tagging head: `nn.Linear` and `nn.LayerNorm`
//! with PyTorch's parameter names and init rules, DropPath, and the trace of intermediates.

use tch::nn::{self, Init};
use tch::Tensor;

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

/// How a weight is drawn under [`ParamInit::Official`].
#[derive(Debug, Clone, Copy)]
pub enum WeightInit {
    /// N(0, std²); timm's `trunc_normal_(std)` truncates at ±2 (absolute), i.e. ±100σ for
    /// std 0.02, which is this distribution. Bias 0.
    Normal(f64),
    /// PyTorch's default for `nn.Linear`/`nn.Conv2d` (kaiming-uniform with a=√5): weight and bias
    /// U(−1/√fan_in, 1/√fan_in).
    TorchDefault,
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

/// `nn.Linear`: `weight` [out, in] and optional `bias` [out].
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(
        p: nn::Path,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        init: WeightInit,
        mode: ParamInit,
    ) -> Self {
        let (i, o) = (in_dim as i64, out_dim as i64);
        let (w_init, b_init) = match init {
            WeightInit::Normal(std) => (
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
                Init::Const(0.0),
            ),
            WeightInit::TorchDefault => {
                let bound = 1.0 / (in_dim as f64).sqrt();
                let u = Init::Uniform {
                    lo: -bound,
                    up: bound,
                };
                (u, u)
            }
        };
        let weight = param(&p, "weight", &[o, i], w_init, mode);
        let bias = bias.then(|| param(&p, "bias", &[o], b_init, mode));
        Linear { weight, bias }
    }

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
    pub fn new(p: nn::Path, dim: usize, eps: f64, mode: ParamInit) -> Self {
        let d = dim as i64;
        LayerNorm {
            weight: param(&p, "weight", &[d], Init::Const(1.0), mode),
            bias: param(&p, "bias", &[d], Init::Const(0.0), mode),
            eps,
            dim: d,
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
