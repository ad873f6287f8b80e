//! RAM++ (`ram/models/ram_plus.py`, class `RAM_plus`): Swin image encoder → `image_proj` to CLIP's
//! 512-d space; CLIP distillation on the pooled token; description reweighting of the label
//! embeddings by the image; `relu(wordvec_proj(·))` queries through the tagging head; `fc` to one
//! logit per tag; the image–text alignment through the same head; `generate_tag` for inference.

use super::config::RamPlusConfig;
use super::layers::{Linear, ParamInit, TchBuilder, Trace};
use super::loss::{distillation_l1, AsymmetricLoss};
use super::swin::SwinTransformer;
use super::tagging_head::TaggingHead;
use crate::checkpoint::model_def;
use crate::error::Result;
use crate::train::autocast;
use crate::train::error::TrainError;
use tch::nn;
use tch::{Kind, Tensor};

pub use model_def::reweight_scale_init;

/// The RAM++ model. Field names follow the state dict.
#[derive(Debug)]
pub struct RamPlus {
    pub config: RamPlusConfig,
    /// [num_class · des_per_class, 512]; row `c·des + d` is description d of class c.
    pub label_embed: Tensor,
    /// Scalar; the reweighting multiplies by `exp(reweight_scale)`.
    pub reweight_scale: Tensor,
    pub visual_encoder: SwinTransformer,
    pub tagging_head: TaggingHead,
    pub wordvec_proj: Linear,
    pub fc: Linear,
    pub image_proj: Linear,
}

/// What one training step feeds the model (`RAM_plus.forward` arguments).
pub struct RamPlusBatch<'a> {
    /// [B, 3, S, S], CLIP-normalised.
    pub image: &'a Tensor,
    /// [B, num_class] targets, int 0/1 or float in [0, 1].
    pub image_tag: &'a Tensor,
    /// [B, 512] teacher image features for distillation.
    pub clip_feature: &'a Tensor,
    /// [B_t, 512] L2-normalised caption embeddings; caption i belongs to image i.
    pub batch_text_embed: &'a Tensor,
}

/// Image tokens in CLIP space: `image_proj(visual_encoder(image))`, [B, 1+L, 512].
pub struct ImageEmbeds {
    pub visual_encoder_out: Tensor,
    pub image_embeds: Tensor,
}

/// The tag branch of the forward pass.
pub struct TagOutputs {
    /// Normalised pooled image embedding [B, 512].
    pub image_cls_embeds_normalized: Tensor,
    /// [B, num_class, des] description logits and their softmax over descriptions.
    pub reweight_logits: Tensor,
    pub reweight_weights: Tensor,
    /// [B, num_class, 512] image-specific label embeddings.
    pub label_embed_reweight: Tensor,
    /// [B, num_class, H] tagging queries.
    pub label_embed_projected: Tensor,
    /// [B, num_class, H] tagging-head output.
    pub tagging_hidden: Tensor,
    /// [B, num_class]
    pub tagging_logits: Tensor,
}

/// The alignment branch.
pub struct AlignmentOutputs {
    /// [B_t, H] caption queries before they are repeated over the images.
    pub text_embed_projected: Tensor,
    /// [B, B_t, H]
    pub alignment_hidden: Tensor,
    /// [B, B_t]
    pub alignment_logits: Tensor,
    /// [B, B_t] identity target.
    pub alignment_targets: Tensor,
}

/// Everything `forward` computes: the three losses (unweighted, as the official `forward` returns
/// them) and the tensors they came from.
pub struct RamPlusOutputs {
    pub loss_tag: Tensor,
    pub loss_dis: Tensor,
    pub loss_alignment: Tensor,
    pub image: ImageEmbeds,
    pub tags: TagOutputs,
    pub alignment: AlignmentOutputs,
}

/// `generate_tag` results.
pub struct TagPrediction {
    pub logits: Tensor,
    /// sigmoid(logits)
    pub scores: Tensor,
    /// `scores > class_threshold` as 0/1 float.
    pub pred: Tensor,
}

impl RamPlus {
    /// Builds the model at the root of `vs` so that variable names equal the official state-dict keys.
    pub fn new(vs: &nn::VarStore, config: &RamPlusConfig, init: ParamInit) -> Result<Self> {
        Self::new_at(vs.root(), config, init)
    }

    /// Builds the model under path `p`.
    pub fn new_at(p: nn::Path, config: &RamPlusConfig, init: ParamInit) -> Result<Self> {
        config
            .validate()
            .map_err(|problem| TrainError::ModelConfig {
                name: config.name.clone(),
                problem,
            })?;
        // Names, shapes, order and initialisation: the parameter tree of `model_def`.
        // Exhaustive: a parameter added to the definition must be taken here.
        let model_def::RamPlusParams {
            label_embed,
            reweight_scale,
            visual_encoder,
            tagging_head,
            wordvec_proj,
            fc,
            image_proj,
        } = model_def::ram_plus(&TchBuilder::new(p, init), config);
        Ok(RamPlus {
            config: config.clone(),
            label_embed,
            reweight_scale,
            visual_encoder: SwinTransformer::new(&config.swin, visual_encoder),
            tagging_head: TaggingHead::new(&config.tagging_head, tagging_head),
            wordvec_proj: wordvec_proj.into(),
            fc: fc.into(),
            image_proj: image_proj.into(),
        })
    }

    /// Checks an image batch's shape against the configuration.
    pub fn check_image(&self, image: &Tensor) -> Result<()> {
        let s = &self.config.swin;
        let size = image.size();
        let want = [s.in_chans as i64, s.img_size as i64, s.img_size as i64];
        if size.len() != 4 || size[1..] != want {
            return Err(TrainError::ImageShape {
                model: self.config.name.clone(),
                expected: want,
                got: size,
            }
            .into());
        }
        Ok(())
    }

    /// `image_proj(visual_encoder(image))`.
    pub fn image_embeds(&self, image: &Tensor, train: bool, trace: &mut Trace) -> ImageEmbeds {
        let visual_encoder_out = self.visual_encoder.forward_t(image, train, trace);
        let image_embeds = self.image_proj.forward(&visual_encoder_out);
        ImageEmbeds {
            visual_encoder_out,
            image_embeds,
        }
    }

    /// Description reweighting, queries, tagging head and `fc` (shared by `forward` and `generate_tag`).
    pub fn tag_branch(
        &self,
        image_embeds: &Tensor,
        train: bool,
        trace: &mut Trace,
    ) -> Result<TagOutputs> {
        let b = image_embeds.size()[0];
        let nc = self.config.num_class as i64;
        let des = self.config.des_per_class as i64;
        let cls = image_embeds.select(1, 0);
        let cls = &cls / cls.norm_scalaropt_dim(2, [-1], true);
        // (scale · cls) @ Eᵀ: the scale multiplies cls before the product, as Python evaluates it.
        // Under bf16 autocast, one cached cast of the 120M-value table per step serves both
        // products below (cast through their views, it would be cast twice per micro-batch).
        let label_embed = autocast::operand(&self.label_embed, self.label_embed.device())?;
        let reweight_logits = (self.reweight_scale.exp() * &cls)
            .matmul(&label_embed.tr())
            .view([b, nc, des]);
        let reweight_weights = reweight_logits.softmax(2, None::<Kind>);
        // Σ_d w[b,c,d]·E[c,d,:] for all images at once: per class, [B, des] @ [des, 512]. The
        // official per-image loop materialises [num_class, des, 512] per image; this never does.
        let table = label_embed.view([nc, des, self.config.joint_dim as i64]);
        let label_embed_reweight = reweight_weights
            .transpose(0, 1)
            .matmul(&table)
            .transpose(0, 1);
        let label_embed_projected = self.wordvec_proj.forward(&label_embed_reweight).relu();
        let tagging_hidden = self.tagging_head.forward_t(
            &label_embed_projected,
            image_embeds,
            train,
            trace,
            "tagging",
        );
        let tagging_logits = self.fc.forward(&tagging_hidden).squeeze_dim(-1);
        Ok(TagOutputs {
            image_cls_embeds_normalized: cls,
            reweight_logits,
            reweight_weights,
            label_embed_reweight,
            label_embed_projected,
            tagging_hidden,
            tagging_logits,
        })
    }

    /// Every image queried with every caption: [B, B_t] logits against an identity target.
    pub fn alignment_branch(
        &self,
        image_embeds: &Tensor,
        batch_text_embed: &Tensor,
        train: bool,
        trace: &mut Trace,
    ) -> AlignmentOutputs {
        let b = image_embeds.size()[0];
        let bt = batch_text_embed.size()[0];
        let text_embed_projected = self.wordvec_proj.forward(batch_text_embed).relu();
        let queries = text_embed_projected.unsqueeze(0).repeat([b, 1, 1]);
        let alignment_hidden =
            self.tagging_head
                .forward_t(&queries, image_embeds, train, trace, "alignment");
        let alignment_logits = self.fc.forward(&alignment_hidden).squeeze_dim(-1);
        let alignment_targets =
            Tensor::eye_m(b, bt, (alignment_logits.kind(), alignment_logits.device()));
        AlignmentOutputs {
            text_embed_projected,
            alignment_hidden,
            alignment_logits,
            alignment_targets,
        }
    }

    /// `RAM_plus.forward`: the three unweighted losses and the tensors behind them. `train` enables
    /// dropout and DropPath (the official module's `train()` mode).
    pub fn forward_t(
        &self,
        batch: &RamPlusBatch,
        train: bool,
        trace: &mut Trace,
    ) -> Result<RamPlusOutputs> {
        self.check_image(batch.image)?;
        let b = batch.image.size()[0];
        let expect = |name: &'static str, t: &Tensor, shape: &[i64]| -> Result<()> {
            if t.size() != shape {
                return Err(TrainError::InputShape {
                    tensor: name,
                    expected: format!("{shape:?}"),
                    got: t.size(),
                }
                .into());
            }
            Ok(())
        };
        expect(
            "image_tag",
            batch.image_tag,
            &[b, self.config.num_class as i64],
        )?;
        let joint = self.config.joint_dim as i64;
        expect("clip_feature", batch.clip_feature, &[b, joint])?;
        let bt = batch.batch_text_embed.size();
        if bt.len() != 2 || bt[1] != joint {
            return Err(TrainError::InputShape {
                tensor: "batch_text_embed",
                expected: format!("[B_t, {joint}]"),
                got: bt,
            }
            .into());
        }

        let image = self.image_embeds(batch.image, train, trace);
        let loss_dis = distillation_l1(&image.image_embeds.select(1, 0), batch.clip_feature);
        let tags = self.tag_branch(&image.image_embeds, train, trace)?;
        let loss_tag = AsymmetricLoss::TAGGING.sum(&tags.tagging_logits, batch.image_tag);
        let alignment =
            self.alignment_branch(&image.image_embeds, batch.batch_text_embed, train, trace);
        let loss_alignment = AsymmetricLoss::ALIGNMENT
            .sum(&alignment.alignment_logits, &alignment.alignment_targets);
        Ok(RamPlusOutputs {
            loss_tag,
            loss_dis,
            loss_alignment,
            image,
            tags,
            alignment,
        })
    }

    /// The tagging logits [B, num_class] of an image batch in eval mode, without gradients:
    /// `generate_tag`'s steps before the sigmoid.
    pub fn tag_logits(&self, image: &Tensor) -> Result<Tensor> {
        self.check_image(image)?;
        tch::no_grad(|| {
            let mut trace = Trace::off();
            let e = self.image_embeds(image, false, &mut trace);
            Ok(self
                .tag_branch(&e.image_embeds, false, &mut trace)?
                .tagging_logits)
        })
    }

    /// Sigmoid tag probabilities [B, num_class] in eval mode (what `generate_tag` compares with the
    /// thresholds): the one scoring path of `tagfix tag`, `eval --checkpoint` and validation.
    pub fn tag_probabilities(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.tag_logits(image)?.sigmoid())
    }

    /// `RAM_plus.generate_tag` without the string joining: logits, sigmoid scores, and
    /// `scores > threshold` per class (strict), with `delete_tag_index` classes zeroed. Eval mode.
    pub fn generate_tag(
        &self,
        image: &Tensor,
        class_threshold: &Tensor,
        delete_tag_index: &[i64],
    ) -> Result<TagPrediction> {
        let nc = self.config.num_class as i64;
        if class_threshold.size() != [nc] {
            return Err(TrainError::InputShape {
                tensor: "class_threshold",
                expected: format!("[{nc}]"),
                got: class_threshold.size(),
            }
            .into());
        }
        let logits = self.tag_logits(image)?;
        let scores = logits.sigmoid();
        let thr = class_threshold
            .to_kind(scores.kind())
            .to_device(scores.device());
        let mut pred = scores.gt_tensor(&thr).to_kind(scores.kind());
        if !delete_tag_index.is_empty() {
            let idx = Tensor::from_slice(delete_tag_index).to_device(pred.device());
            let _ = pred.index_fill_(1, &idx, 0.0);
        }
        Ok(TagPrediction {
            logits,
            scores,
            pred,
        })
    }
}

/// Joins the predicted tags of each image with `" | "`, as `generate_tag` returns them.
pub fn format_tags(pred: &Tensor, tag_list: &[String]) -> Vec<String> {
    let pred = pred.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let (b, nc) = pred.size2().expect("pred [B, num_class]");
    let flat: Vec<f32> = Vec::try_from(pred.view([-1])).expect("float tensor");
    (0..b as usize)
        .map(|i| {
            let row = &flat[i * nc as usize..(i + 1) * nc as usize];
            row.iter()
                .enumerate()
                .filter(|(_, &v)| v == 1.0)
                .map(|(c, _)| tag_list[c].as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}
