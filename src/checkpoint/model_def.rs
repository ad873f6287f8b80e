//! The RAM++ parameter tree, written once: each module's parameters and buffers — name, shape,
//! initialisation — in `state_dict` order, as functions generic over a [`ParamBuilder`].
//!
//! Two builders walk the same functions, so a parameter defined here appears in both with the same
//! name, shape and position:
//! - [`LayoutRecorder`] (no libtorch) records [`StateEntry`]s:
//!   [`RamPlusConfig::state_dict_layout`], which `inspect`, `convert` and export's key order use;
//! - the `train` feature's `TchBuilder` (`train::model::layers`) creates the `VarStore` variables
//!   under an `nn::Path`, and the libtorch modules take their tensors from the structs returned here
//!   (by exhaustive destructuring: a parameter added here that a module does not take fails to
//!   compile).
//!
//! Creation order is the walk order, which is the official `state_dict` order and also fixes the
//! order of the RNG draws of [`Init`] (so training runs resume and reproduce exactly).
//! Only what the forward pass needs besides the tensors (eps, heads, drop rates) stays with the
//! libtorch modules.

use super::model_config::{
    BlockGeometry, EntryDtype, EntryKind, RamPlusConfig, StateEntry, SwinConfig, TaggingHeadConfig,
};
use std::cell::RefCell;
use std::fmt::Display;

/// Init std of Swin's Linear weights and bias tables (`trunc_normal_(std=.02)`).
pub const SWIN_INIT_STD: f64 = 0.02;

/// How a parameter is filled under the official initialisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²).
    Normal {
        std: f64,
    },
    /// U(−bound, bound).
    Uniform {
        bound: f64,
    },
    Const(f64),
}

/// How a Linear (or Conv2d) weight and its bias are drawn.
#[derive(Debug, Clone, Copy)]
pub enum WeightInit {
    /// N(0, std²); timm's `trunc_normal_(std)` truncates at ±2 (absolute), i.e. ±100σ for
    /// std 0.02, which is this distribution. Bias 0.
    Normal(f64),
    /// PyTorch's default for `nn.Linear`/`nn.Conv2d` (kaiming-uniform with a=√5): weight and bias
    /// U(−1/√fan_in, 1/√fan_in).
    TorchDefault,
}

impl WeightInit {
    /// (weight, bias) rules for a layer with `fan_in` inputs per output.
    pub fn rules(self, fan_in: usize) -> (Init, Init) {
        match self {
            WeightInit::Normal(std) => (Init::Normal { std }, Init::Const(0.0)),
            WeightInit::TorchDefault => {
                let u = Init::Uniform {
                    bound: 1.0 / (fan_in as f64).sqrt(),
                };
                (u, u)
            }
        }
    }
}

/// A constant buffer, always computed from the geometry (never trained, never loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// Swin's `relative_position_index` of a `window`×`window` window: int64 [N, N].
    RelativePositionIndex { window: usize },
    /// The shifted-window `attn_mask`: f32 [nW, N, N].
    ShiftMask {
        resolution: usize,
        window: usize,
        shift: usize,
    },
}

impl Buffer {
    pub fn shape(&self) -> Vec<usize> {
        match *self {
            Buffer::RelativePositionIndex { window } => vec![window * window; 2],
            Buffer::ShiftMask {
                resolution, window, ..
            } => {
                let n = window * window;
                vec![(resolution / window).pow(2), n, n]
            }
        }
    }

    pub fn dtype(&self) -> EntryDtype {
        match self {
            Buffer::RelativePositionIndex { .. } => EntryDtype::Int64,
            Buffer::ShiftMask { .. } => EntryDtype::Float32,
        }
    }
}

/// What a module definition creates its entries through. Names join with `.` like `nn::Path`.
pub trait ParamBuilder: Sized {
    /// A created entry: a tensor in the model, `()` in the layout.
    type Tensor;
    /// The builder of sub-module `name`.
    fn sub(&self, name: impl Display) -> Self;
    /// A trainable float parameter.
    fn param(&self, name: &str, shape: &[usize], init: Init) -> Self::Tensor;
    /// A constant buffer.
    fn buffer(&self, name: &str, buffer: Buffer) -> Self::Tensor;
}

/// Records what a definition creates as [`StateEntry`]s, in creation order.
pub struct LayoutRecorder<'a> {
    prefix: String,
    out: &'a RefCell<Vec<StateEntry>>,
}

impl LayoutRecorder<'_> {
    /// The entries `define` creates at the root.
    pub fn record(define: impl FnOnce(&LayoutRecorder)) -> Vec<StateEntry> {
        let out = RefCell::new(Vec::new());
        define(&LayoutRecorder {
            prefix: String::new(),
            out: &out,
        });
        out.into_inner()
    }

    fn push(&self, name: &str, shape: Vec<usize>, dtype: EntryDtype, kind: EntryKind) {
        self.out.borrow_mut().push(StateEntry {
            name: self.sub(name).prefix,
            shape,
            dtype,
            kind,
        });
    }
}

impl ParamBuilder for LayoutRecorder<'_> {
    type Tensor = ();

    fn sub(&self, name: impl Display) -> Self {
        LayoutRecorder {
            prefix: if self.prefix.is_empty() {
                name.to_string()
            } else {
                format!("{}.{name}", self.prefix)
            },
            out: self.out,
        }
    }

    fn param(&self, name: &str, shape: &[usize], _: Init) {
        self.push(
            name,
            shape.to_vec(),
            EntryDtype::Float32,
            EntryKind::Parameter,
        );
    }

    fn buffer(&self, name: &str, buffer: Buffer) {
        self.push(name, buffer.shape(), buffer.dtype(), EntryKind::Buffer);
    }
}

/// `nn.Linear`: `weight` [out, in] and optional `bias` [out].
pub struct LinearParams<T> {
    pub weight: T,
    pub bias: Option<T>,
}

pub fn linear<B: ParamBuilder>(
    p: &B,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    init: WeightInit,
) -> LinearParams<B::Tensor> {
    let (w, b) = init.rules(in_dim);
    LinearParams {
        weight: p.param("weight", &[out_dim, in_dim], w),
        bias: bias.then(|| p.param("bias", &[out_dim], b)),
    }
}

/// `nn.LayerNorm(dim)`: `weight` (1) and `bias` (0).
pub struct LayerNormParams<T> {
    pub weight: T,
    pub bias: T,
}

pub fn layer_norm<B: ParamBuilder>(p: &B, dim: usize) -> LayerNormParams<B::Tensor> {
    LayerNormParams {
        weight: p.param("weight", &[dim], Init::Const(1.0)),
        bias: p.param("bias", &[dim], Init::Const(0.0)),
    }
}

/// Swin `WindowAttention`.
pub struct WindowAttentionParams<T> {
    pub relative_position_bias_table: T,
    pub relative_position_index: T,
    pub qkv: LinearParams<T>,
    pub proj: LinearParams<T>,
}

pub fn window_attention<B: ParamBuilder>(
    p: &B,
    g: &BlockGeometry,
    qkv_bias: bool,
) -> WindowAttentionParams<B::Tensor> {
    let init = WeightInit::Normal(SWIN_INIT_STD);
    let relative_position_bias_table = p.param(
        "relative_position_bias_table",
        &[(2 * g.window - 1).pow(2), g.num_heads],
        Init::Normal { std: SWIN_INIT_STD },
    );
    let relative_position_index = p.buffer(
        "relative_position_index",
        Buffer::RelativePositionIndex { window: g.window },
    );
    let qkv = linear(&p.sub("qkv"), g.dim, 3 * g.dim, qkv_bias, init);
    let proj = linear(&p.sub("proj"), g.dim, g.dim, true, init);
    WindowAttentionParams {
        relative_position_bias_table,
        relative_position_index,
        qkv,
        proj,
    }
}

/// `SwinTransformerBlock`: its own buffer first, as in the official module.
pub struct SwinBlockParams<T> {
    /// The geometry the block was defined for.
    pub geometry: BlockGeometry,
    pub attn_mask: Option<T>,
    pub norm1: LayerNormParams<T>,
    pub attn: WindowAttentionParams<T>,
    pub norm2: LayerNormParams<T>,
    pub fc1: LinearParams<T>,
    pub fc2: LinearParams<T>,
}

pub fn swin_block<B: ParamBuilder>(
    p: &B,
    g: &BlockGeometry,
    cfg: &SwinConfig,
) -> SwinBlockParams<B::Tensor> {
    let attn_mask = (g.shift > 0).then(|| {
        p.buffer(
            "attn_mask",
            Buffer::ShiftMask {
                resolution: g.resolution,
                window: g.window,
                shift: g.shift,
            },
        )
    });
    let hidden = (g.dim as f64 * cfg.mlp_ratio) as usize;
    let init = WeightInit::Normal(SWIN_INIT_STD);
    let norm1 = layer_norm(&p.sub("norm1"), g.dim);
    let attn = window_attention(&p.sub("attn"), g, cfg.qkv_bias);
    let norm2 = layer_norm(&p.sub("norm2"), g.dim);
    let mlp = p.sub("mlp");
    let fc1 = linear(&mlp.sub("fc1"), g.dim, hidden, true, init);
    let fc2 = linear(&mlp.sub("fc2"), hidden, g.dim, true, init);
    SwinBlockParams {
        geometry: *g,
        attn_mask,
        norm1,
        attn,
        norm2,
        fc1,
        fc2,
    }
}

/// `PatchMerging(dim)`: Linear(4·dim → 2·dim, no bias), LayerNorm(4·dim).
pub struct PatchMergingParams<T> {
    pub reduction: LinearParams<T>,
    pub norm: LayerNormParams<T>,
}

pub fn patch_merging<B: ParamBuilder>(p: &B, dim: usize) -> PatchMergingParams<B::Tensor> {
    let init = WeightInit::Normal(SWIN_INIT_STD);
    PatchMergingParams {
        reduction: linear(&p.sub("reduction"), 4 * dim, 2 * dim, false, init),
        norm: layer_norm(&p.sub("norm"), 4 * dim),
    }
}

/// One stage (`BasicLayer`): blocks, then patch merging except after the last stage.
pub struct SwinStageParams<T> {
    pub blocks: Vec<SwinBlockParams<T>>,
    pub downsample: Option<PatchMergingParams<T>>,
}

/// `nn.Conv2d` with bias: `weight` [out, in, k, k], `bias` [out].
pub struct Conv2dParams<T> {
    pub weight: T,
    pub bias: T,
}

/// The Swin encoder: `PatchEmbed` (a Conv2d with PyTorch's default init, then LayerNorm), the
/// stages, the final LayerNorm.
pub struct SwinParams<T> {
    pub patch_embed_proj: Conv2dParams<T>,
    pub patch_embed_norm: LayerNormParams<T>,
    pub layers: Vec<SwinStageParams<T>>,
    pub norm: LayerNormParams<T>,
}

pub fn swin<B: ParamBuilder>(p: &B, cfg: &SwinConfig) -> SwinParams<B::Tensor> {
    let pe = p.sub("patch_embed");
    let proj = pe.sub("proj");
    let (c, k) = (cfg.embed_dim, cfg.patch_size);
    let (w, b) = WeightInit::TorchDefault.rules(cfg.in_chans * k * k);
    let patch_embed_proj = Conv2dParams {
        weight: proj.param("weight", &[c, cfg.in_chans, k, k], w),
        bias: proj.param("bias", &[c], b),
    };
    let patch_embed_norm = layer_norm(&pe.sub("norm"), c);
    let geometry = cfg.blocks();
    let layers = (0..cfg.depths.len())
        .map(|stage| {
            let lp = p.sub("layers").sub(stage);
            let blocks = geometry
                .iter()
                .filter(|g| g.stage == stage)
                .map(|g| swin_block(&lp.sub("blocks").sub(g.block), g, cfg))
                .collect();
            let downsample = (stage + 1 < cfg.depths.len())
                .then(|| patch_merging(&lp.sub("downsample"), cfg.embed_dim << stage));
            SwinStageParams { blocks, downsample }
        })
        .collect();
    let norm = layer_norm(&p.sub("norm"), cfg.vision_width());
    SwinParams {
        patch_embed_proj,
        patch_embed_norm,
        layers,
        norm,
    }
}

/// One query2label layer (`BertLayer` without self-attention).
pub struct CrossAttentionLayerParams<T> {
    pub query: LinearParams<T>,
    pub key: LinearParams<T>,
    pub value: LinearParams<T>,
    pub attention_output_dense: LinearParams<T>,
    pub attention_output_norm: LayerNormParams<T>,
    pub intermediate_dense: LinearParams<T>,
    pub output_dense: LinearParams<T>,
    pub output_norm: LayerNormParams<T>,
}

pub fn cross_attention_layer<B: ParamBuilder>(
    p: &B,
    cfg: &TaggingHeadConfig,
) -> CrossAttentionLayerParams<B::Tensor> {
    let (h, e, i) = (cfg.hidden_size, cfg.encoder_width, cfg.intermediate_size);
    // BertPreTrainedModel._init_weights: Linear N(0, initializer_range), bias 0; LayerNorm (1, 0).
    let init = WeightInit::Normal(cfg.initializer_range);
    let ca = p.sub("crossattention");
    let sa = ca.sub("self");
    let ca_out = ca.sub("output");
    let out = p.sub("output");
    CrossAttentionLayerParams {
        query: linear(&sa.sub("query"), h, h, true, init),
        key: linear(&sa.sub("key"), e, h, true, init),
        value: linear(&sa.sub("value"), e, h, true, init),
        attention_output_dense: linear(&ca_out.sub("dense"), h, h, true, init),
        attention_output_norm: layer_norm(&ca_out.sub("LayerNorm"), h),
        intermediate_dense: linear(&p.sub("intermediate").sub("dense"), h, i, true, init),
        output_dense: linear(&out.sub("dense"), i, h, true, init),
        output_norm: layer_norm(&out.sub("LayerNorm"), h),
    }
}

/// The tagging head's layers (`encoder.layer.{l}`).
pub fn tagging_head<B: ParamBuilder>(
    p: &B,
    cfg: &TaggingHeadConfig,
) -> Vec<CrossAttentionLayerParams<B::Tensor>> {
    let layers = p.sub("encoder").sub("layer");
    (0..cfg.num_hidden_layers)
        .map(|l| cross_attention_layer(&layers.sub(l), cfg))
        .collect()
}

/// `log(1/0.07)`: the initial value of `reweight_scale` (CLIP's temperature).
pub fn reweight_scale_init() -> f64 {
    (1.0f64 / 0.07).ln()
}

/// `RAM_plus`, at the root of the state dict.
pub struct RamPlusParams<T> {
    pub label_embed: T,
    pub reweight_scale: T,
    pub visual_encoder: SwinParams<T>,
    pub tagging_head: Vec<CrossAttentionLayerParams<T>>,
    pub wordvec_proj: LinearParams<T>,
    pub fc: LinearParams<T>,
    pub image_proj: LinearParams<T>,
}

pub fn ram_plus<B: ParamBuilder>(p: &B, cfg: &RamPlusConfig) -> RamPlusParams<B::Tensor> {
    let h = cfg.tagging_head.hidden_size;
    let torch_default = WeightInit::TorchDefault;
    // RAM_plus.__init__: label_embed zeros (filled from the embedding file), reweight_scale log(1/0.07).
    RamPlusParams {
        label_embed: p.param(
            "label_embed",
            &[cfg.num_class * cfg.des_per_class, cfg.joint_dim],
            Init::Const(0.0),
        ),
        reweight_scale: p.param("reweight_scale", &[], Init::Const(reweight_scale_init())),
        visual_encoder: swin(&p.sub("visual_encoder"), &cfg.swin),
        tagging_head: tagging_head(&p.sub("tagging_head"), &cfg.tagging_head),
        wordvec_proj: linear(
            &p.sub("wordvec_proj"),
            cfg.joint_dim,
            h,
            true,
            torch_default,
        ),
        fc: linear(&p.sub("fc"), h, 1, true, torch_default),
        image_proj: linear(
            &p.sub("image_proj"),
            cfg.swin.vision_width(),
            cfg.joint_dim,
            true,
            torch_default,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_joins_names_and_keeps_creation_order() {
        let cfg = RamPlusConfig::tiny(3, 2);
        let layout = LayoutRecorder::record(|b| {
            ram_plus(b, &cfg);
        });
        let names: Vec<_> = layout.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names[..3],
            [
                "label_embed",
                "reweight_scale",
                "visual_encoder.patch_embed.proj.weight"
            ]
        );
        assert_eq!(layout[0].shape, [6, cfg.joint_dim]);
        assert!(layout[1].shape.is_empty());
        let last = layout.last().unwrap();
        assert_eq!(last.name, "image_proj.bias");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "names are unique");
        let index = layout
            .iter()
            .find(|e| e.name.ends_with(".attn.relative_position_index"))
            .unwrap();
        assert_eq!(
            (index.dtype, index.kind),
            (EntryDtype::Int64, EntryKind::Buffer)
        );
    }

    #[test]
    fn torch_default_bound_is_one_over_sqrt_fan_in() {
        let (w, b) = WeightInit::TorchDefault.rules(16);
        assert_eq!(w, Init::Uniform { bound: 0.25 });
        assert_eq!(b, w);
        let (w, b) = WeightInit::Normal(0.02).rules(16);
        assert_eq!((w, b), (Init::Normal { std: 0.02 }, Init::Const(0.0)));
    }
}
