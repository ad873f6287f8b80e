//! The query2label tagging head of RAM / RAM++: `ram/models/bert.py` `BertModel` in `mode='tagging'`
//! after `del_selfattention()`. No embeddings, no self-attention: each layer is cross-attention from
//! the queries (label or caption embeddings) to the image tokens, then BERT's feed-forward.
//!
//! Names follow the state dict: `tagging_head.encoder.layer.{l}.crossattention.self.{query,key,value}`,
//! `crossattention.output.{dense,LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`.

use super::config::TaggingHeadConfig;
use super::layers::{gelu, LayerNorm, Linear, Trace};
use crate::checkpoint::model_def::CrossAttentionLayerParams;
use tch::Tensor;

/// One `BertLayer` without self-attention.
#[derive(Debug)]
pub struct CrossAttentionLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attention_output_dense: Linear,
    pub attention_output_norm: LayerNorm,
    pub intermediate_dense: Linear,
    pub output_dense: Linear,
    pub output_norm: LayerNorm,
}

impl CrossAttentionLayer {
    fn new(p: CrossAttentionLayerParams<Tensor>, layer_norm_eps: f64) -> Self {
        // Exhaustive: a parameter added to the definition must be taken here.
        let CrossAttentionLayerParams {
            query,
            key,
            value,
            attention_output_dense,
            attention_output_norm,
            intermediate_dense,
            output_dense,
            output_norm,
        } = p;
        CrossAttentionLayer {
            query: query.into(),
            key: key.into(),
            value: value.into(),
            attention_output_dense: attention_output_dense.into(),
            attention_output_norm: LayerNorm::new(attention_output_norm, layer_norm_eps),
            intermediate_dense: intermediate_dense.into(),
            output_dense: output_dense.into(),
            output_norm: LayerNorm::new(output_norm, layer_norm_eps),
        }
    }

    /// `x` [B, Q, H] queries, `enc` [B, T, E] image tokens → [B, Q, H].
    fn forward(&self, x: &Tensor, enc: &Tensor, cfg: &TaggingHeadConfig, train: bool) -> Tensor {
        let (b, q_len, hidden) = x.size3().expect("queries [B, Q, H]");
        let nh = cfg.num_attention_heads as i64;
        let hd = hidden / nh;
        // transpose_for_scores: [B, *, H] → [B, nh, *, hd]
        let heads = |t: Tensor| {
            let s = t.size();
            t.view([s[0], s[1], nh, hd]).permute([0, 2, 1, 3])
        };
        let q = heads(self.query.forward(x));
        let k = heads(self.key.forward(enc));
        let v = heads(self.value.forward(enc));
        let dropout = if train {
            cfg.attention_probs_dropout_prob
        } else {
            0.0
        };
        let ctx = cross_attention(&q, &k, &v, dropout)
            .permute([0, 2, 1, 3])
            .contiguous()
            .view([b, q_len, hidden]);
        // BertSelfOutput: LayerNorm(dropout(dense(ctx)) + input)
        let a = self
            .attention_output_dense
            .forward(&ctx)
            .dropout(cfg.hidden_dropout_prob, train)
            + x;
        let a = self.attention_output_norm.forward(&a);
        // BertIntermediate + BertOutput
        let inter = gelu(&self.intermediate_dense.forward(&a));
        let out = self
            .output_dense
            .forward(&inter)
            .dropout(cfg.hidden_dropout_prob, train)
            + &a;
        self.output_norm.forward(&out)
    }
}

/// softmax(q·kᵀ/√hd) dropped out with probability `dropout`, times v: one
/// `scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA; on CPU its math path,
/// whose dropout draws what `softmax(..).dropout(..)` drew, or the CPU flash kernel without dropout).
/// BERT's all-ones image mask adds −0.0 to the scores: omitted.
fn cross_attention(q: &Tensor, k: &Tensor, v: &Tensor, dropout: f64) -> Tensor {
    let scale = 1.0 / (q.size()[3] as f64).sqrt();
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, dropout, false, scale, false)
}

/// The tagging head (`tagging_head` in RAM++).
#[derive(Debug)]
pub struct TaggingHead {
    pub config: TaggingHeadConfig,
    pub layers: Vec<CrossAttentionLayer>,
}

impl TaggingHead {
    /// The head over the tensors of
    /// [`model_def::tagging_head`](crate::checkpoint::model_def::tagging_head) (in RAM++:
    /// `tagging_head`).
    pub fn new(cfg: &TaggingHeadConfig, layers: Vec<CrossAttentionLayerParams<Tensor>>) -> Self {
        TaggingHead {
            config: cfg.clone(),
            layers: layers
                .into_iter()
                .map(|l| CrossAttentionLayer::new(l, cfg.layer_norm_eps))
                .collect(),
        }
    }

    /// Runs the queries through every layer; records `debug.tagging_head.{use_name}.layer.{l}`.
    pub fn forward_t(
        &self,
        queries: &Tensor,
        image_embeds: &Tensor,
        train: bool,
        trace: &mut Trace,
        use_name: &str,
    ) -> Tensor {
        let mut x = queries.shallow_clone();
        for (l, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, image_embeds, &self.config, train);
            trace.record(|| format!("debug.tagging_head.{use_name}.layer.{l}"), &x);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// BERT's explicit form: softmax(q·kᵀ / √hd), dropout, ·v.
    fn explicit(q: &Tensor, k: &Tensor, v: &Tensor, dropout: f64) -> Tensor {
        let hd = q.size()[3] as f64;
        (q.matmul(&k.transpose(-1, -2)) / hd.sqrt())
            .softmax(-1, Kind::Float)
            .dropout(dropout, dropout > 0.0)
            .matmul(v)
    }

    #[test]
    fn cross_attention_equals_the_explicit_form_with_the_same_dropout_draws() {
        let _torch = crate::train::torch_test_lock();
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, 2, 7, 16], opts).set_requires_grad(true);
        let k = Tensor::randn([2, 2, 5, 16], opts);
        let v = Tensor::randn([2, 2, 5, 16], opts);
        for dropout in [0.0, 0.1] {
            tch::manual_seed(21);
            let got = cross_attention(&q, &k, &v, dropout);
            tch::manual_seed(21);
            let want = explicit(&q, &k, &v, dropout);
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-5, "dropout {dropout}: max |diff| {err}");
        }
    }
}
