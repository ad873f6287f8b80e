//! Swin Transformer image encoder, as `ram/models/swin_transformer.py` (recognize-anything, itself
//! Microsoft's Swin v1): patch embedding, windowed attention with relative position bias, shifted
//! windows with their attention mask, patch merging, the window clamped to small resolutions, the
//! final LayerNorm, and RAM's addition: the average-pooled token prepended to the patch tokens.
//!
//! The parameters are those of [`model_def::swin`](crate::checkpoint::model_def::swin): names equal
//! the official state-dict keys under the path the encoder is built at (`visual_encoder.` in RAM++).

use super::config::{BlockGeometry, SwinConfig};
use super::layers::{drop_path, gelu, LayerNorm, Linear, Trace};
use crate::checkpoint::model_def::{
    Conv2dParams, PatchMergingParams, SwinBlockParams, SwinParams, SwinStageParams,
    WindowAttentionParams,
};
use tch::{Kind, Tensor};

/// LayerNorm eps of every Swin norm (`nn.LayerNorm` default).
const SWIN_LN_EPS: f64 = 1e-5;
/// Value the shift mask puts between tokens of different regions (not −inf).
pub const ATTN_MASK_FILL: f32 = -100.0;

/// `relative_position_index` of a `ws`×`ws` window: entry (i, j) = (hᵢ−hⱼ+ws−1)·(2ws−1) + (wᵢ−wⱼ+ws−1)
/// (`WindowAttention.__init__`).
pub fn relative_position_index(ws: usize) -> Vec<i64> {
    let n = ws * ws;
    let w = ws as i64;
    let mut out = Vec::with_capacity(n * n);
    for i in 0..n as i64 {
        for j in 0..n as i64 {
            let (hi, wi, hj, wj) = (i / w, i % w, j / w, j % w);
            out.push((hi - hj + w - 1) * (2 * w - 1) + (wi - wj + w - 1));
        }
    }
    out
}

/// The shifted-window attention mask [nW, N, N] (`SwinTransformerBlock.__init__`): the H×W map is
/// labelled by the 3×3 regions the cyclic shift creates, partitioned into windows; tokens of
/// different regions get [`ATTN_MASK_FILL`].
pub fn shift_attention_mask(res: usize, ws: usize, shift: usize) -> Vec<f32> {
    let region = |x: usize| -> usize {
        if x < res - ws {
            0
        } else if x < res - shift {
            1
        } else {
            2
        }
    };
    let per_side = res / ws;
    let n = ws * ws;
    let mut out = Vec::with_capacity(per_side * per_side * n * n);
    for wh in 0..per_side {
        for ww in 0..per_side {
            let label: Vec<usize> = (0..n)
                .map(|t| region(wh * ws + t / ws) * 3 + region(ww * ws + t % ws))
                .collect();
            for i in 0..n {
                for j in 0..n {
                    out.push(if label[i] == label[j] {
                        0.0
                    } else {
                        ATTN_MASK_FILL
                    });
                }
            }
        }
    }
    out
}

/// `WindowAttention`: multi-head attention inside a window with a learned relative position bias.
#[derive(Debug)]
pub struct WindowAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub relative_position_bias_table: Tensor,
    pub relative_position_index: Tensor,
    num_heads: i64,
    window: i64,
}

impl WindowAttention {
    fn new(p: WindowAttentionParams<Tensor>, g: &BlockGeometry) -> Self {
        // Exhaustive: a parameter added to the definition must be taken here.
        let WindowAttentionParams {
            relative_position_bias_table,
            relative_position_index,
            qkv,
            proj,
        } = p;
        WindowAttention {
            qkv: qkv.into(),
            proj: proj.into(),
            relative_position_bias_table,
            relative_position_index,
            num_heads: g.num_heads as i64,
            window: g.window as i64,
        }
    }

    /// The gathered bias [nH, N, N].
    pub fn relative_position_bias(&self) -> Tensor {
        let n = self.window * self.window;
        self.relative_position_bias_table
            .index_select(0, &self.relative_position_index.view([-1]))
            .view([n, n, -1])
            .permute([2, 0, 1])
            .contiguous()
    }

    /// `x`: [B·nW, N, C] window tokens; `mask`: [nW, N, N] for shifted windows; `bias`: [nH, N, N].
    ///
    /// One `scaled_dot_product_attention` (fused kernels on CUDA), with the bias and the shift mask
    /// summed into one additive float mask that keeps the bias table's gradient. So that the mask
    /// broadcasts over the batch without a per-image copy, an image's windows are folded into the
    /// head dimension: q, k, v [B, nW·nH, N, hd] and the mask [1, nW·nH, N, N] (nW = 1 unshifted).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, bias: &Tensor) -> Tensor {
        let (b_, n, c) = x.size3().expect("window tokens [B*nW, N, C]");
        let nh = self.num_heads;
        let hd = c / nh;
        let nw = mask.map_or(1, |m| m.size()[0]);
        let qkv = self
            .qkv
            .forward(x)
            .view([b_ / nw, nw, n, 3, nh, hd])
            .permute([3, 0, 1, 4, 2, 5])
            .reshape([3, b_ / nw, nw * nh, n, hd]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let attn_mask = match mask {
            Some(mask) => bias.unsqueeze(0) + mask.unsqueeze(1),
            None => bias.unsqueeze(0),
        }
        .view([1, nw * nh, n, n]);
        // Swin scales q before the product (BERT divides the scores after it); SDPA's own scale is
        // then 1, which its CPU math path applies exactly, keeping the reference's rounding.
        let q = q * (hd as f64).powf(-0.5);
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(attn_mask),
            0.0,
            false,
            1.0,
            false,
        );
        let out = out
            .reshape([b_ / nw, nw, nh, n, hd])
            .permute([0, 1, 3, 2, 4])
            .reshape([b_, n, c]);
        self.proj.forward(&out)
    }
}

/// `SwinTransformerBlock`: (shifted) window attention and MLP, each with a residual and DropPath.
#[derive(Debug)]
pub struct SwinBlock {
    pub geometry: BlockGeometry,
    pub norm1: LayerNorm,
    pub attn: WindowAttention,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub attn_mask: Option<Tensor>,
    drop_path: f64,
}

impl SwinBlock {
    fn new(p: SwinBlockParams<Tensor>, drop_path: f64) -> Self {
        let SwinBlockParams {
            geometry,
            attn_mask,
            norm1,
            attn,
            norm2,
            fc1,
            fc2,
        } = p;
        SwinBlock {
            geometry,
            norm1: LayerNorm::new(norm1, SWIN_LN_EPS),
            attn: WindowAttention::new(attn, &geometry),
            norm2: LayerNorm::new(norm2, SWIN_LN_EPS),
            fc1: fc1.into(),
            fc2: fc2.into(),
            attn_mask,
            drop_path,
        }
    }

    fn forward(&self, x: &Tensor, train: bool, bias: &Tensor) -> Tensor {
        let g = &self.geometry;
        let (b, l, c) = x.size3().expect("tokens [B, L, C]");
        let (h, ws, s) = (g.resolution as i64, g.window as i64, g.shift as i64);
        assert_eq!(l, h * h, "input feature has wrong size");
        let shortcut = x;
        let mut x = self.norm1.forward(x).view([b, h, h, c]);
        if s > 0 {
            x = x.roll([-s, -s], [1, 2]);
        }
        // window_partition: image-major, then window row, window column; row-major inside.
        let windows = x
            .view([b, h / ws, ws, h / ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .contiguous()
            .view([-1, ws * ws, c]);
        let attn = self.attn.forward(&windows, self.attn_mask.as_ref(), bias);
        // window_reverse
        let mut x = attn
            .view([b, h / ws, h / ws, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .contiguous()
            .view([b, h, h, c]);
        if s > 0 {
            x = x.roll([s, s], [1, 2]);
        }
        let x = shortcut + drop_path(&x.view([b, h * h, c]), self.drop_path, train);
        let mlp = self
            .fc2
            .forward(&gelu(&self.fc1.forward(&self.norm2.forward(&x))));
        &x + drop_path(&mlp, self.drop_path, train)
    }
}

/// `PatchMerging`: 2×2 neighbouring tokens concatenated (x0..x3), LayerNorm(4C), Linear(4C→2C, no bias).
#[derive(Debug)]
pub struct PatchMerging {
    pub reduction: Linear,
    pub norm: LayerNorm,
    resolution: i64,
}

impl PatchMerging {
    fn new(p: PatchMergingParams<Tensor>, resolution: usize) -> Self {
        let PatchMergingParams { reduction, norm } = p;
        PatchMerging {
            reduction: reduction.into(),
            norm: LayerNorm::new(norm, SWIN_LN_EPS),
            resolution: resolution as i64,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, _, c) = x.size3().expect("tokens [B, L, C]");
        let h = self.resolution;
        let x = x.view([b, h, h, c]);
        let even = |t: &Tensor, dim: i64, start: i64| t.slice(dim, start, h, 2);
        let x0 = even(&even(&x, 1, 0), 2, 0);
        let x1 = even(&even(&x, 1, 1), 2, 0);
        let x2 = even(&even(&x, 1, 0), 2, 1);
        let x3 = even(&even(&x, 1, 1), 2, 1);
        let x = Tensor::cat(&[x0, x1, x2, x3], -1).view([b, -1, 4 * c]);
        self.reduction.forward(&self.norm.forward(&x))
    }
}

/// One stage (`BasicLayer`): its blocks, then patch merging except after the last stage.
#[derive(Debug)]
pub struct SwinStage {
    pub blocks: Vec<SwinBlock>,
    pub downsample: Option<PatchMerging>,
}

/// The Swin Transformer encoder of RAM / RAM++.
#[derive(Debug)]
pub struct SwinTransformer {
    pub config: SwinConfig,
    pub patch_embed_proj_weight: Tensor,
    pub patch_embed_proj_bias: Tensor,
    pub patch_embed_norm: LayerNorm,
    pub layers: Vec<SwinStage>,
    pub norm: LayerNorm,
}

impl SwinTransformer {
    /// The encoder over the tensors of [`model_def::swin`](crate::checkpoint::model_def::swin)
    /// (in RAM++: `visual_encoder`). The config must be valid ([`SwinConfig::validate`]).
    pub fn new(cfg: &SwinConfig, p: SwinParams<Tensor>) -> Self {
        let SwinParams {
            patch_embed_proj:
                Conv2dParams {
                    weight: patch_embed_proj_weight,
                    bias: patch_embed_proj_bias,
                },
            patch_embed_norm,
            layers,
            norm,
        } = p;
        let rates = cfg.drop_path_rates();
        let mut res = cfg.patches_per_side();
        let mut flat = 0;
        let layers = layers
            .into_iter()
            .map(|SwinStageParams { blocks, downsample }| {
                let blocks = blocks
                    .into_iter()
                    .map(|b| {
                        flat += 1;
                        SwinBlock::new(b, rates[flat - 1])
                    })
                    .collect();
                let downsample = downsample.map(|d| PatchMerging::new(d, res));
                res /= 2;
                SwinStage { blocks, downsample }
            })
            .collect();
        SwinTransformer {
            config: cfg.clone(),
            patch_embed_proj_weight,
            patch_embed_proj_bias,
            patch_embed_norm: LayerNorm::new(patch_embed_norm, SWIN_LN_EPS),
            layers,
            norm: LayerNorm::new(norm, SWIN_LN_EPS),
        }
    }

    /// `image` [B, 3, S, S] → [B, 1+L, C_final]: the mean of the final-normed tokens, then the tokens.
    /// Records `debug.swin.*` intermediates in `trace`.
    pub fn forward_t(&self, image: &Tensor, train: bool, trace: &mut Trace) -> Tensor {
        let k = self.config.patch_size as i64;
        let x = image.conv2d(
            &self.patch_embed_proj_weight,
            Some(&self.patch_embed_proj_bias),
            [k, k],
            [0, 0],
            [1, 1],
            1,
        );
        let mut x = self
            .patch_embed_norm
            .forward(&x.flatten(2, -1).transpose(1, 2));
        trace.record(|| "debug.swin.patch_embed".into(), &x);
        for (i, stage) in self.layers.iter().enumerate() {
            for (j, block) in stage.blocks.iter().enumerate() {
                let bias = block.attn.relative_position_bias();
                if j == 0 {
                    trace.record(
                        || format!("debug.swin.layers.{i}.blocks.0.relative_position_bias"),
                        &bias,
                    );
                }
                x = block.forward(&x, train, &bias);
                trace.record(|| format!("debug.swin.layers.{i}.blocks.{j}"), &x);
            }
            if let Some(down) = &stage.downsample {
                x = down.forward(&x);
                trace.record(|| format!("debug.swin.layers.{i}.downsample"), &x);
            }
        }
        let x = self.norm.forward(&x);
        trace.record(|| "debug.swin.norm".into(), &x);
        // AdaptiveAvgPool1d(1) over the tokens, prepended as token 0.
        let pooled = x.mean_dim(1, true, None::<Kind>);
        Tensor::cat(&[pooled, x], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::model_def;
    use crate::train::model::layers::TchBuilder;
    use crate::train::model::ParamInit;
    use tch::{nn, Device};

    /// A window attention of `dim` 8, window 4 and 2 heads (with qkv bias) under `vs`'s root.
    fn attention(vs: &nn::VarStore) -> WindowAttention {
        let g = BlockGeometry {
            stage: 0,
            block: 0,
            resolution: 8,
            dim: 8,
            num_heads: 2,
            window: 4,
            shift: 0,
        };
        let builder = TchBuilder::new(vs.root() / "attn", ParamInit::Official);
        WindowAttention::new(model_def::window_attention(&builder, &g, true), &g)
    }

    /// The official module's explicit form: (q·hd^-½)·kᵀ + bias (+ shift mask per window), softmax, ·v.
    fn explicit(a: &WindowAttention, x: &Tensor, mask: Option<&Tensor>, bias: &Tensor) -> Tensor {
        let (b_, n, c) = x.size3().unwrap();
        let (nh, hd) = (a.num_heads, c / a.num_heads);
        let qkv = a
            .qkv
            .forward(x)
            .reshape([b_, n, 3, nh, hd])
            .permute([2, 0, 3, 1, 4]);
        let q = qkv.get(0) * (hd as f64).powf(-0.5);
        let mut attn = q.matmul(&qkv.get(1).transpose(-2, -1)) + bias.unsqueeze(0);
        if let Some(mask) = mask {
            let nw = mask.size()[0];
            attn = (attn.view([b_ / nw, nw, nh, n, n]) + mask.unsqueeze(1).unsqueeze(0))
                .view([-1, nh, n, n]);
        }
        let out = attn.softmax(-1, Kind::Float).matmul(&qkv.get(2));
        a.proj.forward(&out.transpose(1, 2).reshape([b_, n, c]))
    }

    fn max_rel(got: &Tensor, want: &Tensor) -> f64 {
        (got - want).abs().max().double_value(&[]) / want.abs().max().double_value(&[])
    }

    /// 2 images of 8×8 tokens, windows 4×4 (4 per image), 2 heads of width 4; shifted by 2 or not.
    /// Returns the attention output and the gradients of the bias table and the qkv weight for a
    /// fixed upstream gradient.
    fn run(shifted: bool, sdpa: bool) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let a = attention(&vs);
        let mask =
            shifted.then(|| Tensor::from_slice(&shift_attention_mask(8, 4, 2)).view([4, 16, 16]));
        let x = Tensor::randn([8, 16, 8], (Kind::Float, Device::Cpu));
        let upstream = Tensor::randn([8, 16, 8], (Kind::Float, Device::Cpu));
        let bias = a.relative_position_bias();
        let y = if sdpa {
            a.forward(&x, mask.as_ref(), &bias)
        } else {
            explicit(&a, &x, mask.as_ref(), &bias)
        };
        (&y * &upstream).sum(Kind::Float).backward();
        let grad = |t: &Tensor| t.grad().detach().copy();
        (
            y.detach(),
            grad(&a.relative_position_bias_table),
            grad(&a.qkv.weight),
        )
    }

    #[test]
    fn sdpa_window_attention_equals_the_explicit_form_and_trains_the_bias_table() {
        let _torch = crate::train::torch_test_lock();
        for shifted in [false, true] {
            let (y, table, qkv) = run(shifted, true);
            let (y0, table0, qkv0) = run(shifted, false);
            assert!(max_rel(&y, &y0) < 1e-6, "output, shifted {shifted}");
            assert!(table.abs().sum(Kind::Float).double_value(&[]) > 0.0);
            assert!(
                max_rel(&table, &table0) < 1e-5,
                "bias table grad, shifted {shifted}"
            );
            assert!(max_rel(&qkv, &qkv0) < 1e-5, "qkv grad, shifted {shifted}");
        }
    }

    #[test]
    fn sdpa_window_attention_without_grad_equals_the_explicit_form() {
        let _torch = crate::train::torch_test_lock();
        // Without autograd the mask needs no gradient and the CPU fused kernel may take it.
        tch::manual_seed(6);
        let vs = nn::VarStore::new(Device::Cpu);
        let a = attention(&vs);
        let mask = Tensor::from_slice(&shift_attention_mask(8, 4, 2)).view([4, 16, 16]);
        let x = Tensor::randn([8, 16, 8], (Kind::Float, Device::Cpu));
        tch::no_grad(|| {
            let bias = a.relative_position_bias();
            for mask in [None, Some(&mask)] {
                let got = a.forward(&x, mask, &bias);
                assert!(max_rel(&got, &explicit(&a, &x, mask, &bias)) < 1e-5);
            }
        });
    }
}
