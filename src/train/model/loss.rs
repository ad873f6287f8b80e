//! RAM++'s losses (`ram/models/utils.py` `AsymmetricLoss`, and `F.l1_loss` for distillation).

use tch::{Kind, Reduction, Tensor};

/// Asymmetric loss (Ridnik et al., 2021) with a detached focal weight, as RAM uses it:
/// `p = σ(x)`, `p₋ = min(1 − p + clip, 1)`,
/// `L = y·log(max(p, eps)) + (1−y)·log(max(p₋, eps))`, `w = (1 − pₜ)^(γ₊·y + γ₋·(1−y))` without
/// gradient, loss `−Σ L·w` (a sum, not a mean).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsymmetricLoss {
    pub gamma_neg: f64,
    pub gamma_pos: f64,
    pub clip: f64,
    pub eps: f64,
}

impl AsymmetricLoss {
    /// The tag loss: γ− 7, γ+ 0, clip 0.05.
    pub const TAGGING: Self = AsymmetricLoss {
        gamma_neg: 7.0,
        gamma_pos: 0.0,
        clip: 0.05,
        eps: 1e-8,
    };
    /// The image–text alignment loss: γ− 4, γ+ 0, clip 0.05.
    pub const ALIGNMENT: Self = AsymmetricLoss {
        gamma_neg: 4.0,
        gamma_pos: 0.0,
        clip: 0.05,
        eps: 1e-8,
    };

    /// Per-element loss `−L·w` (same shape as `logits`). `targets` may be integer 0/1 or float in
    /// [0, 1] (soft targets give fractional exponents, as in the official code).
    /// Under bf16/f16 autocast the loss is computed in f32 from the low-precision logits (as
    /// torch.autocast keeps `log` and `sum` in f32), so the summed value keeps its precision.
    pub fn elementwise(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let logits = &at_least_f32(logits);
        let y = targets.to_kind(logits.kind());
        let p = logits.sigmoid();
        let mut xs_neg: Tensor = 1.0 - &p;
        if self.clip > 0.0 {
            xs_neg = (&xs_neg + self.clip).clamp_max(1.0);
        }
        let neg_y = 1.0 - &y;
        let los_pos = &y * p.clamp_min(self.eps).log();
        let los_neg = &neg_y * xs_neg.clamp_min(self.eps).log();
        let loss = los_pos + los_neg;
        if self.gamma_neg > 0.0 || self.gamma_pos > 0.0 {
            let w = tch::no_grad(|| {
                let pt: Tensor = &p * &y + &xs_neg * &neg_y;
                let gamma = &y * self.gamma_pos + &neg_y * self.gamma_neg;
                let one_minus_pt: Tensor = 1.0 - pt;
                one_minus_pt.pow(&gamma)
            });
            -(loss * w)
        } else {
            -loss
        }
    }

    /// The summed loss, as `AsymmetricLoss.forward`.
    pub fn sum(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        let loss = self.elementwise(logits, targets);
        let kind = loss.kind();
        loss.sum(kind)
    }
}

/// `t` in f32 when it is bf16/f16 (autocast outputs), else `t` itself: losses are summed over
/// 10^5 elements and must not be rounded to 8 mantissa bits.
pub fn at_least_f32(t: &Tensor) -> Tensor {
    match t.kind() {
        Kind::BFloat16 | Kind::Half => t.to_kind(Kind::Float),
        _ => t.shallow_clone(),
    }
}

/// CLIP distillation: mean absolute difference between the pooled image embedding and the teacher's
/// image feature (`F.l1_loss(image_cls_embeds, clip_feature)`).
pub fn distillation_l1(image_cls_embeds: &Tensor, clip_feature: &Tensor) -> Tensor {
    at_least_f32(image_cls_embeds).l1_loss(&at_least_f32(clip_feature), Reduction::Mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_zeroes_confident_negatives_and_positives_have_unit_weight() {
        // logits: one confident negative (p < clip), one uncertain negative, one positive.
        let x = Tensor::from_slice(&[-4.0f32, 0.0, 1.0]);
        let y = Tensor::from_slice(&[0i64, 0, 1]);
        let l = AsymmetricLoss::TAGGING.elementwise(&x, &y);
        let v: Vec<f32> = Vec::try_from(&l).unwrap();
        assert_eq!(
            v[0], 0.0,
            "sigmoid(-4)=0.018 < clip: weight (p-0.05)^7 clamps to 0"
        );
        // p = 0.5: p₋ = 0.55, w = (1 - 0.55)^7
        let expect1 = -(0.55f64.ln()) * 0.45f64.powi(7);
        assert!(
            (v[1] as f64 - expect1).abs() < 1e-7,
            "{} vs {expect1}",
            v[1]
        );
        let p: f64 = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((v[2] as f64 + p.ln()).abs() < 1e-6);
        let s = AsymmetricLoss::TAGGING.sum(&x, &y).double_value(&[]);
        assert!((s - v.iter().map(|&a| a as f64).sum::<f64>()).abs() < 1e-6);
    }

    #[test]
    fn focal_weight_carries_no_gradient() {
        let x = Tensor::from_slice(&[0.3f32]).set_requires_grad(true);
        let y = Tensor::from_slice(&[0.0f32]);
        AsymmetricLoss::ALIGNMENT.sum(&x, &y).backward();
        let g = x.grad().double_value(&[0]);
        // d/dx of −log(1 − σ(x) + clip) · w with w constant.
        let p = 1.0 / (1.0 + (-0.3f64).exp());
        let w = (p - 0.05f64).powi(4);
        let expect = p * (1.0 - p) / (1.0 - p + 0.05) * w;
        assert!((g - expect).abs() < 1e-6, "{g} vs {expect}");
        assert_eq!(x.grad().kind(), Kind::Float);
    }

    #[test]
    fn low_precision_logits_give_an_f32_loss() {
        let x = Tensor::from_slice(&[-2.0f32, 0.3, 1.7, -0.4]).to_kind(Kind::BFloat16);
        let y = Tensor::from_slice(&[0i64, 1, 1, 0]);
        let s = AsymmetricLoss::TAGGING.sum(&x, &y);
        assert_eq!(s.kind(), Kind::Float);
        let reference = AsymmetricLoss::TAGGING.sum(&x.to_kind(Kind::Float), &y);
        assert_eq!(s.double_value(&[]), reference.double_value(&[]));
        let d = distillation_l1(&x, &x.ones_like());
        assert_eq!(d.kind(), Kind::Float);
    }
}
