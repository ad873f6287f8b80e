//! RAM++ model configuration: named presets for the official Swin-B / Swin-L models at 224 and 384,
//! small configurations read from a reference fixture's `config.json`, and the state-dict layout
//! (every key, shape, dtype and kind) a configuration implies.
//!
//! Nothing here needs libtorch, so `tagfix inspect` can tell which preset a checkpoint fits in a
//! build without the `train` feature.

use super::CheckpointError;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Number of classes of the RAM / RAM++ paper vocabulary.
pub const RAM_NUM_CLASS: usize = 4585;
/// Descriptions per class in RAM++'s `label_embed` (LLM tag descriptions).
pub const RAM_PLUS_DES_PER_CLASS: usize = 51;
/// Width of CLIP's joint embedding space: `label_embed` rows, `image_proj` output, teacher features.
pub const CLIP_DIM: usize = 512;

/// The Swin Transformer image encoder (`ram/models/swin_transformer.py`, `SwinTransformer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    /// Input resolution the encoder is built for (square).
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    /// Channels after patch embedding; doubles at every patch merging.
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    /// Attention window before clamping to the stage resolution.
    pub window_size: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// Stochastic depth, spread linearly over all blocks (RAM passes 0.1).
    pub drop_path_rate: f64,
}

/// The query2label tagging head (`ram/models/bert.py` `BertModel` with self-attention deleted),
/// from `configs/q2l_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaggingHeadConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// Width of the image tokens the cross-attention reads (RAM++ forces 512).
    pub encoder_width: usize,
    /// Standard deviation of BERT's weight init.
    pub initializer_range: f64,
}

/// A complete RAM++ configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RamPlusConfig {
    /// Preset name, or where the configuration came from.
    pub name: String,
    pub swin: SwinConfig,
    pub tagging_head: TaggingHeadConfig,
    pub num_class: usize,
    /// Descriptions per class: `label_embed` has `num_class * des_per_class` rows.
    pub des_per_class: usize,
    /// Width of the joint image–text space: `label_embed` rows, `image_proj` output, the tagging
    /// head's `encoder_width` and teacher features. [`CLIP_DIM`] in every official preset; a small
    /// configuration may follow its label embeddings (384 for MiniLM).
    #[serde(default = "clip_dim")]
    pub joint_dim: usize,
}

fn clip_dim() -> usize {
    CLIP_DIM
}

/// The largest model a configuration may describe: each bound well above every official RAM++ (Swin-L
/// 384: 4 stages of at most 18 blocks, windows of 12, 1536 channels, 329 M parameters), so that a configuration
/// file cannot make tagfix record billions of blocks or ask libtorch for more than any card holds.
pub mod limits {
    /// Swin stages.
    pub const STAGES: usize = 8;
    /// Blocks in a Swin stage, and tagging-head layers.
    pub const DEPTH: usize = 64;
    /// Input side in pixels.
    pub const SIDE: usize = 8192;
    /// Input channels.
    pub const CHANNELS: usize = 64;
    /// Attention window side.
    pub const WINDOW: usize = 64;
    /// Channels of any layer (the widest Swin stage, the head, the joint space).
    pub const WIDTH: usize = 1 << 16;
    /// Swin MLP width over its input's.
    pub const MLP_RATIO: f64 = 64.0;
    /// Tags.
    pub const CLASSES: usize = 1 << 20;
    /// Descriptions per tag (RAM++: 51).
    pub const DESCRIPTIONS: usize = 1 << 10;
    /// Values in the state dict, parameters and buffers: 2^34 (64 GiB in f32).
    pub const ELEMENTS: usize = 1 << 34;

    pub(super) fn at_most(what: &str, value: usize, max: usize) -> Result<(), String> {
        match value <= max {
            true => Ok(()),
            false => Err(format!(
                "{what} {value} is more than the {max} tagfix builds"
            )),
        }
    }

    pub(super) fn fraction(what: &str, value: f64) -> Result<(), String> {
        match (0.0..=1.0).contains(&value) {
            true => Ok(()),
            false => Err(format!("{what} {value} must be within [0, 1]")),
        }
    }
}

/// Names of the official presets, in the order `tagfix inspect` tries them.
pub const PRESET_NAMES: [&str; 4] = ["swin_l_224", "swin_l_384", "swin_b_224", "swin_b_384"];

/// Geometry of one Swin block after the window clamp (`SwinTransformerBlock.__init__`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeometry {
    pub stage: usize,
    pub block: usize,
    /// Tokens per side at this stage.
    pub resolution: usize,
    pub dim: usize,
    pub num_heads: usize,
    /// Effective window: `min(resolution, window_size)` when the resolution does not exceed it.
    pub window: usize,
    /// Cyclic shift: 0 on even blocks and on clamped stages, `window_size / 2` otherwise.
    pub shift: usize,
}

/// dtype of a state-dict entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryDtype {
    Float32,
    Int64,
}

/// Whether an entry is a trainable parameter or a constant buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Parameter,
    Buffer,
}

/// One key of the model's `state_dict`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: EntryDtype,
    pub kind: EntryKind,
}

impl SwinConfig {
    /// The official Swin configs (`configs/swin/config_swin{B,L}_{224,384}.json`) as RAM_plus builds
    /// them: patch 4, mlp ratio 4, qkv bias, drop path 0.1, no absolute position embedding.
    fn official(
        embed_dim: usize,
        num_heads: [usize; 4],
        img_size: usize,
        window_size: usize,
    ) -> Self {
        SwinConfig {
            img_size,
            patch_size: 4,
            in_chans: 3,
            embed_dim,
            depths: vec![2, 2, 18, 2],
            num_heads: num_heads.to_vec(),
            window_size,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop_path_rate: 0.1,
        }
    }

    /// Channels of the final stage (`vision_width` in RAM's configs).
    pub fn vision_width(&self) -> usize {
        self.embed_dim << (self.depths.len() - 1)
    }

    /// Tokens per side after patch embedding.
    pub fn patches_per_side(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Swin tokens of the output, not counting the prepended pooled token.
    pub fn num_tokens(&self) -> usize {
        let last = self.patches_per_side() >> (self.depths.len() - 1);
        last * last
    }

    /// Geometry of every block, stage by stage.
    pub fn blocks(&self) -> Vec<BlockGeometry> {
        let mut out = Vec::new();
        let mut res = self.patches_per_side();
        for (stage, &depth) in self.depths.iter().enumerate() {
            let clamped = res <= self.window_size;
            for block in 0..depth {
                let (window, shift) = if clamped {
                    (res, 0)
                } else if block % 2 == 1 {
                    (self.window_size, self.window_size / 2)
                } else {
                    (self.window_size, 0)
                };
                out.push(BlockGeometry {
                    stage,
                    block,
                    resolution: res,
                    dim: self.embed_dim << stage,
                    num_heads: self.num_heads[stage],
                    window,
                    shift,
                });
            }
            res /= 2;
        }
        out
    }

    /// Drop-path rate of each block (`torch.linspace(0, drop_path_rate, sum(depths))`).
    pub fn drop_path_rates(&self) -> Vec<f64> {
        let n: usize = self.depths.iter().sum();
        (0..n)
            .map(|i| {
                if n > 1 {
                    self.drop_path_rate * i as f64 / (n - 1) as f64
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Checks that the geometry is buildable: every stage divides into whole windows and merges,
    /// every size within [`limits`] (so that no configuration file makes tagfix build billions of
    /// blocks or overflow a width).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return Err(format!(
                "depths ({:?}) and num_heads ({:?}) must be non-empty and of equal length",
                self.depths, self.num_heads
            ));
        }
        let stages = self.depths.len();
        limits::at_most("swin stages (depths)", stages, limits::STAGES)?;
        for &depth in &self.depths {
            limits::at_most("swin blocks in a stage (depths)", depth, limits::DEPTH)?;
        }
        limits::at_most("swin img_size", self.img_size, limits::SIDE)?;
        limits::at_most("swin in_chans", self.in_chans, limits::CHANNELS)?;
        limits::at_most("swin window_size", self.window_size, limits::WINDOW)?;
        // The widest stage is embed_dim << (stages - 1).
        limits::at_most(
            "swin embed_dim",
            self.embed_dim,
            limits::WIDTH >> (stages - 1),
        )?;
        limits::fraction("swin drop_path_rate", self.drop_path_rate)?;
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= limits::MLP_RATIO) {
            return Err(format!(
                "swin mlp_ratio {} must be above 0 and at most {}",
                self.mlp_ratio,
                limits::MLP_RATIO
            ));
        }
        if self.patch_size == 0
            || self.img_size < self.patch_size
            || self.img_size % self.patch_size != 0
        {
            return Err(format!(
                "img_size {} is not a positive multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if self.window_size == 0 {
            return Err("window_size must be positive".into());
        }
        let mut res = self.patches_per_side();
        for (stage, heads) in self.num_heads.iter().enumerate() {
            let dim = self.embed_dim << stage;
            if *heads == 0 || dim % heads != 0 {
                return Err(format!(
                    "stage {stage}: dim {dim} is not divisible by {heads} heads"
                ));
            }
            let window = res.min(self.window_size);
            if res % window != 0 {
                return Err(format!(
                    "stage {stage}: resolution {res} is not a multiple of the window {window}"
                ));
            }
            if stage + 1 < self.depths.len() && res % 2 != 0 {
                return Err(format!(
                    "stage {stage}: odd resolution {res} cannot be merged"
                ));
            }
            res /= 2;
        }
        Ok(())
    }
}

impl TaggingHeadConfig {
    /// `configs/q2l_config.json` with RAM++'s `encoder_width = 512`.
    pub fn official() -> Self {
        TaggingHeadConfig {
            hidden_size: 768,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 3072,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            encoder_width: CLIP_DIM,
            initializer_range: 0.02,
        }
    }
}

impl RamPlusConfig {
    /// An official preset by name: `swin_b_224`, `swin_b_384`, `swin_l_224`, `swin_l_384`.
    pub fn preset(name: &str) -> Result<Self> {
        let swin = match name {
            "swin_b_224" => SwinConfig::official(128, [4, 8, 16, 32], 224, 7),
            "swin_b_384" => SwinConfig::official(128, [4, 8, 16, 32], 384, 12),
            "swin_l_224" => SwinConfig::official(192, [6, 12, 24, 48], 224, 7),
            "swin_l_384" => SwinConfig::official(192, [6, 12, 24, 48], 384, 12),
            other => {
                return Err(CheckpointError::UnknownPreset {
                    name: other.to_string(),
                    known: &PRESET_NAMES,
                }
                .into())
            }
        };
        Ok(RamPlusConfig {
            name: name.to_string(),
            swin,
            tagging_head: TaggingHeadConfig::official(),
            num_class: RAM_NUM_CLASS,
            des_per_class: RAM_PLUS_DES_PER_CLASS,
            joint_dim: CLIP_DIM,
        })
    }

    /// A small configuration for CPU tests and experiments, with the geometry of the reference
    /// fixture `tiny/`: 64×64 images, Swin embed 16, depths [2,2,2,2], heads [2,2,4,4], window 4
    /// (shifted windows with masks in stages 0–1, clamped windows in stages 2–3); tagging head
    /// hidden 32, 2 layers, 2 heads, intermediate 64.
    pub fn tiny(num_class: usize, des_per_class: usize) -> Self {
        RamPlusConfig {
            name: "tiny".into(),
            swin: SwinConfig {
                img_size: 64,
                patch_size: 4,
                in_chans: 3,
                embed_dim: 16,
                depths: vec![2, 2, 2, 2],
                num_heads: vec![2, 2, 4, 4],
                window_size: 4,
                mlp_ratio: 4.0,
                qkv_bias: true,
                drop_path_rate: 0.1,
            },
            tagging_head: TaggingHeadConfig {
                hidden_size: 32,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                intermediate_size: 64,
                ..TaggingHeadConfig::official()
            },
            num_class,
            des_per_class,
            joint_dim: CLIP_DIM,
        }
    }

    /// The same model with a joint space `dim` wide (label embeddings, `image_proj` output and the
    /// tagging head's `encoder_width`), e.g. 384 for MiniLM label embeddings.
    pub fn with_joint_dim(mut self, dim: usize) -> Self {
        self.joint_dim = dim;
        self.tagging_head.encoder_width = dim;
        self
    }

    /// All official presets.
    pub fn presets() -> Vec<Self> {
        PRESET_NAMES
            .iter()
            .map(|n| Self::preset(n).expect("known preset"))
            .collect()
    }

    /// Reads the model description of a reference fixture's `config.json` (the `tiny*/` folders
    /// under `ram/reference/`): its `swin`, `q2l`, `num_class` and `des_per_class` fields.
    pub fn from_reference_json(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: RefConfig =
            serde_json::from_str(&text).map_err(|source| CheckpointError::ReferenceConfig {
                path: path.to_path_buf(),
                source,
            })?;
        let q = raw.q2l.config_json;
        let cfg = RamPlusConfig {
            name: format!(
                "reference:{}",
                raw.variant.unwrap_or_else(|| path.display().to_string())
            ),
            swin: SwinConfig {
                img_size: raw.swin.img_size,
                patch_size: raw.swin.patch_size,
                in_chans: raw.swin.in_chans,
                embed_dim: raw.swin.embed_dim,
                depths: raw.swin.depths,
                num_heads: raw.swin.num_heads,
                window_size: raw.swin.window_size,
                mlp_ratio: raw.swin.mlp_ratio,
                qkv_bias: raw.swin.qkv_bias,
                drop_path_rate: raw.swin.drop_path_rate,
            },
            tagging_head: TaggingHeadConfig {
                hidden_size: q.hidden_size,
                num_hidden_layers: q.num_hidden_layers,
                num_attention_heads: q.num_attention_heads,
                intermediate_size: q.intermediate_size,
                layer_norm_eps: q.layer_norm_eps,
                hidden_dropout_prob: q.hidden_dropout_prob,
                attention_probs_dropout_prob: q.attention_probs_dropout_prob,
                encoder_width: raw.q2l.encoder_width_override.unwrap_or(CLIP_DIM),
                initializer_range: q.initializer_range,
            },
            num_class: raw.num_class,
            des_per_class: raw.des_per_class,
            joint_dim: CLIP_DIM,
        };
        cfg.validate()
            .map_err(|problem| CheckpointError::ModelConfig {
                path: path.to_path_buf(),
                problem,
            })?;
        Ok(cfg)
    }

    /// Checks that the configuration describes a buildable model of at most
    /// [`limits::ELEMENTS`] values.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.swin.validate()?;
        let t = &self.tagging_head;
        if t.num_attention_heads == 0 || t.hidden_size % t.num_attention_heads != 0 {
            return Err(format!(
                "tagging head: hidden_size {} is not divisible by {} heads",
                t.hidden_size, t.num_attention_heads
            ));
        }
        limits::at_most("tagging head hidden_size", t.hidden_size, limits::WIDTH)?;
        limits::at_most(
            "tagging head intermediate_size",
            t.intermediate_size,
            limits::WIDTH * 4,
        )?;
        limits::at_most("tagging head encoder_width", t.encoder_width, limits::WIDTH)?;
        limits::at_most("tagging head layers", t.num_hidden_layers, limits::DEPTH)?;
        limits::fraction("tagging head hidden_dropout_prob", t.hidden_dropout_prob)?;
        limits::fraction(
            "tagging head attention_probs_dropout_prob",
            t.attention_probs_dropout_prob,
        )?;
        if !(t.layer_norm_eps > 0.0 && t.layer_norm_eps < 1.0) {
            return Err(format!(
                "tagging head layer_norm_eps {} must be above 0 and below 1",
                t.layer_norm_eps
            ));
        }
        if !(t.initializer_range >= 0.0 && t.initializer_range <= 1.0) {
            return Err(format!(
                "tagging head initializer_range {} must be within [0, 1]",
                t.initializer_range
            ));
        }
        if self.num_class == 0 || self.des_per_class == 0 {
            return Err("num_class and des_per_class must be positive".into());
        }
        if self.joint_dim == 0 {
            return Err("joint_dim must be positive".into());
        }
        limits::at_most("num_class", self.num_class, limits::CLASSES)?;
        limits::at_most("des_per_class", self.des_per_class, limits::DESCRIPTIONS)?;
        limits::at_most("joint_dim", self.joint_dim, limits::WIDTH)?;
        let values = self
            .state_dict_layout()
            .iter()
            .map(|e| e.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)))
            .try_fold(0usize, |sum, n| sum.checked_add(n?));
        match values {
            Some(n) if n <= limits::ELEMENTS => Ok(()),
            _ => Err(format!(
                "the model would hold {} values, more than the {} tagfix builds",
                values.map_or("more than 2^64".into(), |n| n.to_string()),
                limits::ELEMENTS
            )),
        }
    }

    /// The model's `state_dict` keys, shapes, dtypes and kinds, in `state_dict` order (root
    /// parameters, `visual_encoder`, `tagging_head`, `wordvec_proj`, `fc`, `image_proj`): the
    /// parameter tree of [`model_def::ram_plus`](super::model_def::ram_plus), recorded.
    pub fn state_dict_layout(&self) -> Vec<StateEntry> {
        super::model_def::LayoutRecorder::record(|b| {
            super::model_def::ram_plus(b, self);
        })
    }

    /// Number of trainable parameters (elements), buffers excluded.
    pub fn num_parameters(&self) -> usize {
        self.state_dict_layout()
            .iter()
            .filter(|e| e.kind == EntryKind::Parameter)
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }
}

/// Top-level module group of a state-dict key (`visual_encoder`, `tagging_head`, `label_embed`, ...).
pub fn module_group(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

// Serde mirror of the parts of a reference `config.json` that describe the model.
#[derive(Deserialize)]
struct RefConfig {
    variant: Option<String>,
    num_class: usize,
    des_per_class: usize,
    swin: RefSwin,
    q2l: RefQ2l,
}

#[derive(Deserialize)]
struct RefSwin {
    img_size: usize,
    patch_size: usize,
    in_chans: usize,
    embed_dim: usize,
    depths: Vec<usize>,
    num_heads: Vec<usize>,
    window_size: usize,
    mlp_ratio: f64,
    qkv_bias: bool,
    drop_path_rate: f64,
}

#[derive(Deserialize)]
struct RefQ2l {
    config_json: RefBert,
    encoder_width_override: Option<usize>,
}

#[derive(Deserialize)]
struct RefBert {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    layer_norm_eps: f64,
    hidden_dropout_prob: f64,
    attention_probs_dropout_prob: f64,
    initializer_range: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_parameter_counts() {
        // Totals from the key manifests in ../shared/ram/reference (also checked there by tests/).
        let expect = [
            ("swin_l_224", 329_290_006),
            ("swin_l_384", 329_493_046),
            ("swin_b_224", 220_775_610),
            ("swin_b_384", 220_910_970),
        ];
        for (name, n) in expect {
            let cfg = RamPlusConfig::preset(name).unwrap();
            assert_eq!(cfg.num_parameters(), n, "{name}");
            assert_eq!(cfg.state_dict_layout().len(), 402, "{name}");
        }
    }

    #[test]
    fn window_clamp_and_shift() {
        let cfg = RamPlusConfig::preset("swin_l_224").unwrap();
        let blocks = cfg.swin.blocks();
        assert_eq!(blocks.len(), 24);
        let last = blocks.last().unwrap();
        assert_eq!((last.resolution, last.window, last.shift), (7, 7, 0));
        assert_eq!((blocks[1].window, blocks[1].shift), (7, 3));
        assert_eq!(cfg.swin.num_tokens(), 49);
        assert_eq!(cfg.swin.vision_width(), 1536);
        let rates = cfg.swin.drop_path_rates();
        assert_eq!(rates[0], 0.0);
        assert!((rates[23] - 0.1).abs() < 1e-12);
    }

    #[test]
    fn unknown_preset_is_a_usage_error() {
        let err = RamPlusConfig::preset("swin_t_224").unwrap_err().to_string();
        assert!(err.contains("swin_l_224"), "{err}");
    }

    #[test]
    fn invalid_geometry_is_refused() {
        let mut cfg = RamPlusConfig::preset("swin_b_224").unwrap();
        cfg.swin.img_size = 200; // 50 patches: stage 0 not a multiple of window 7
        assert!(cfg.validate().is_err());
    }

    /// Sizes no model has are refused by name before anything is recorded or built; every preset
    /// and the tiny test model pass.
    #[test]
    fn sizes_past_the_limits_are_refused() {
        for cfg in RamPlusConfig::presets()
            .into_iter()
            .chain([RamPlusConfig::tiny(4585, 51).with_joint_dim(384)])
        {
            cfg.validate().unwrap();
        }
        let base = RamPlusConfig::preset("swin_l_224").unwrap();
        type Change = Box<dyn Fn(&mut RamPlusConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "blocks in a stage",
                Box::new(|c| c.swin.depths[2] = 1 << 40),
            ),
            (
                "stages",
                Box::new(|c| {
                    c.swin.depths = vec![1; 70];
                    c.swin.num_heads = vec![1; 70];
                }),
            ),
            ("embed_dim", Box::new(|c| c.swin.embed_dim = usize::MAX / 2)),
            ("img_size", Box::new(|c| c.swin.img_size = usize::MAX - 3)),
            ("img_size", Box::new(|c| c.swin.img_size = 0)),
            ("mlp_ratio", Box::new(|c| c.swin.mlp_ratio = 1e12)),
            ("mlp_ratio", Box::new(|c| c.swin.mlp_ratio = f64::NAN)),
            ("drop_path_rate", Box::new(|c| c.swin.drop_path_rate = 2.0)),
            (
                "layer_norm_eps",
                Box::new(|c| c.tagging_head.layer_norm_eps = 0.0),
            ),
            (
                "layers",
                Box::new(|c| c.tagging_head.num_hidden_layers = 1 << 30),
            ),
            ("num_class", Box::new(|c| c.num_class = 1 << 40)),
            ("des_per_class", Box::new(|c| c.des_per_class = 1 << 20)),
            // Each size allowed, the whole too large: 2^20 tags × 1024 descriptions × 512.
            (
                "values",
                Box::new(|c| {
                    c.num_class = 1 << 20;
                    c.des_per_class = 1 << 10;
                }),
            ),
        ];
        for (says, change) in cases {
            let mut cfg = base.clone();
            change(&mut cfg);
            let err = cfg.validate().unwrap_err();
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}
