//! The training objective: RAM++'s three losses on one micro-batch, with the absent-slot policy
//! applied to the tag loss, and the per-term weights (fixed or balanced on the first steps).
//!
//! Reduction across micro-batches (so that accumulated gradients equal the full batch's): the tag
//! and alignment losses are sums (ASL), so micro-batch values simply add up; the distillation loss is
//! a mean, so each micro-batch's value is scaled by `micro / batch`. The alignment targets pair the
//! images and captions of one micro-batch (the diagonal of a `micro × micro` block), as each GPU does
//! with its local batch in RAM's distributed training.

use super::config::{AbsentPolicy, LossWeights};
use super::model::loss::{distillation_l1, AsymmetricLoss};
use super::model::{RamPlus, Trace};
pub use super::weighting::{step_losses, weight_of, LossWeighting};
use crate::monitor::LossTerm;
use tch::{Kind, Reduction, Tensor};

/// Which slots are absent, as a `[num_class]` float mask (1 = absent), and the policy for them.
pub struct AbsentSlots {
    pub mask: Tensor,
    pub policy: AbsentPolicy,
    pub count: usize,
}

impl AbsentSlots {
    pub fn new(
        num_class: usize,
        absent: &[usize],
        policy: AbsentPolicy,
        device: tch::Device,
    ) -> Self {
        let mut m = vec![0f32; num_class];
        for &s in absent {
            m[s] = 1.0;
        }
        AbsentSlots {
            mask: Tensor::from_slice(&m).to_device(device),
            policy,
            count: absent.len(),
        }
    }
}

/// The tag loss of `[B, C]` logits against multi-hot targets: ASL (γ− 7, γ+ 0, clip 0.05) on the
/// present slots, and on the absent ones, by policy:
/// - `smooth=ε`: the KL divergence between Bernoulli(ε) and the prediction (binary cross-entropy with
///   target ε minus its minimum `H(ε)`): zero exactly at p = ε, so the logits are pulled to
///   `logit(ε)` from either side;
/// - `negative`: binary cross-entropy with target 0 (the same form with ε = 0): p → 0;
/// - `mask`: nothing;
/// - `asl`: ASL like every other negative, as RAM trains.
pub fn tag_loss(logits: &Tensor, targets: &Tensor, absent: &AbsentSlots) -> Tensor {
    let asl = AsymmetricLoss::TAGGING.elementwise(logits, targets);
    if absent.count == 0 || absent.policy == AbsentPolicy::Asl {
        return asl.sum(Kind::Float);
    }
    let present: Tensor = 1.0 - &absent.mask;
    let on_absent = match absent.policy {
        AbsentPolicy::Mask | AbsentPolicy::Asl => None,
        AbsentPolicy::Negative => Some(smoothed_bce(logits, 0.0)),
        AbsentPolicy::Smooth(eps) => Some(smoothed_bce(logits, eps)),
    };
    match on_absent {
        None => (asl * present).sum(Kind::Float),
        Some(l) => (asl * present + l * &absent.mask).sum(Kind::Float),
    }
}

/// Element-wise `BCE(x, ε) − H(ε)`: zero at σ(x) = ε (for ε = 0, plain BCE with target 0).
fn smoothed_bce(logits: &Tensor, eps: f64) -> Tensor {
    let logits = &crate::train::model::loss::at_least_f32(logits);
    let target = logits.full_like(eps);
    let bce =
        logits.binary_cross_entropy_with_logits::<Tensor>(&target, None, None, Reduction::None);
    let entropy = if eps > 0.0 {
        -(eps * eps.ln() + (1.0 - eps) * (1.0 - eps).ln())
    } else {
        0.0
    };
    bce - entropy
}

/// One micro-batch's inputs on the device.
pub struct MicroInputs<'a> {
    pub images: &'a Tensor,
    pub targets: &'a Tensor,
    pub clip_feature: Option<&'a Tensor>,
    pub text_embed: Option<&'a Tensor>,
    /// `micro / batch`: the distillation loss's share of the batch mean.
    pub mean_share: f64,
}

/// Raw loss terms of one micro-batch (graph attached), before weighting.
pub struct MicroLosses {
    pub tag: Tensor,
    pub align: Option<Tensor>,
    pub dis: Option<Tensor>,
    /// `[B, C]` tag logits (for diagnostics).
    pub tag_logits: Tensor,
}

/// Forward pass and raw losses of one micro-batch.
pub fn micro_losses(
    model: &RamPlus,
    x: &MicroInputs,
    absent: &AbsentSlots,
    train: bool,
) -> crate::error::Result<MicroLosses> {
    let mut trace = Trace::off();
    let image = model.image_embeds(x.images, train, &mut trace);
    let tags = model.tag_branch(&image.image_embeds, train, &mut trace)?;
    let tag = tag_loss(&tags.tagging_logits, x.targets, absent);
    let dis = x
        .clip_feature
        .map(|c| distillation_l1(&image.image_embeds.select(1, 0), c) * x.mean_share);
    let align = x.text_embed.map(|t| {
        let a = model.alignment_branch(&image.image_embeds, t, train, &mut trace);
        AsymmetricLoss::ALIGNMENT.sum(&a.alignment_logits, &a.alignment_targets)
    });
    Ok(MicroLosses {
        tag,
        align,
        dis,
        tag_logits: tags.tagging_logits,
    })
}

impl MicroLosses {
    /// The terms present, with their tensors.
    pub fn terms(&self) -> Vec<(LossTerm, &Tensor)> {
        let mut v = vec![(LossTerm::Tag, &self.tag)];
        if let Some(a) = &self.align {
            v.push((LossTerm::Align, a));
        }
        if let Some(d) = &self.dis {
            v.push((LossTerm::Dis, d));
        }
        v
    }

    /// `Σ weight · term`, the tensor to back-propagate.
    pub fn weighted_sum(&self, w: &LossWeights) -> Tensor {
        let mut total = &self.tag * w.tag;
        if let Some(a) = &self.align {
            total += a * w.align;
        }
        if let Some(d) = &self.dis {
            total += d * w.dis;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn absent_policies_shape_the_absent_gradient() {
        // Two slots, slot 1 absent; both targets 0; logits 0 (p = 0.5).
        let mk = |policy| AbsentSlots::new(2, &[1], policy, Device::Cpu);
        let grad = |policy, logit: f32| {
            let x = Tensor::from_slice(&[0.0f32, logit])
                .view([1, 2])
                .set_requires_grad(true);
            let y = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu));
            tag_loss(&x, &y, &mk(policy)).backward();
            x.grad().double_value(&[0, 1])
        };
        assert_eq!(grad(AbsentPolicy::Mask, 0.0), 0.0);
        assert!(grad(AbsentPolicy::Negative, 0.0) > 0.0, "pushed down");
        assert!(
            grad(AbsentPolicy::Negative, -6.0) > 0.0,
            "still pushed down at p < 0.01"
        );
        assert!(grad(AbsentPolicy::Asl, 0.0) > 0.0);
        // smooth=0.1: pushed down above logit(0.1), pushed up below it, zero at it.
        let eps = 0.1f64;
        let at = (eps / (1.0 - eps)).ln() as f32;
        assert!(grad(AbsentPolicy::Smooth(eps), at + 1.0) > 0.0);
        assert!(grad(AbsentPolicy::Smooth(eps), at - 1.0) < 0.0);
        assert!(grad(AbsentPolicy::Smooth(eps), at).abs() < 1e-6);
        // Under asl, a slot below the clip gets no gradient: ASL stops pushing at p < 0.05.
        assert_eq!(grad(AbsentPolicy::Asl, -4.0), 0.0);
        // KL form: the loss at p = ε is 0.
        let x = Tensor::from_slice(&[30.0f32, at]).view([1, 2]);
        let y = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let l = tag_loss(&x, &y, &mk(AbsentPolicy::Smooth(eps))).double_value(&[]);
        assert!(l.abs() < 1e-5, "{l}");
    }
}
