//! Training configuration: a TOML file in tagfix's own keys, or RAM's YAML configs
//! (`configs/pretrain.yaml`, `configs/finetune.yaml`) exactly as the official repository ships them.
//! Command-line flags override the file; every key has a documented default (see [`TrainConfig`]).
//!
//! The key names are RAM's where RAM has one (`batch_size`, `init_lr`, `min_lr`, `warmup_lr`,
//! `lr_decay_rate`, `max_epoch`, `warmup_steps`, `weight_decay`, `image_size`, `vit`, `class_num`,
//! `train_file`, `image_path_root`), so a YAML file and a TOML file say the same thing. Keys tagfix
//! does not use (`vit_grad_ckpt`, `vit_ckpt_layer`, …) are reported, never silently dropped.
//! Feature-free: nothing here needs libtorch.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod flags;
mod values;

pub use flags::TrainFlags;
pub use values::*;

/// Why a training configuration was refused: a config file that cannot be read as settings, a
/// `--set` override, or a value out of range. Messages name the file (and line) or the key with the
/// flag that sets it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or YAML (`format`), at `line` (0: unknown).
    #[error("{path}:{line}: not valid {format}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        format: &'static str,
        message: String,
    },
    #[error("{path}: unknown config type: use .toml (tagfix keys) or .yaml (RAM's configs)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: config must be a table of key = value")]
    NotATable { path: PathBuf },
    /// TOML `inf` / `nan` (JSON, which settings pass through, has neither).
    #[error("{}: {} holds inf or nan: settings must be finite numbers", path.display(), setting(key))]
    NonFinite { path: PathBuf, key: String },
    /// A YAML integer TOML cannot write (the run's config.toml could not hold it).
    #[error("{}: `{key}`: integers above {} are not accepted (the run's config.toml could not hold them)", path.display(), i64::MAX)]
    BeyondToml { path: PathBuf, key: String },
    /// The file's values do not fit the settings' types.
    #[error("{path}: bad value")]
    Value {
        path: PathBuf,
        #[source]
        cause: serde_json::Error,
    },
    /// The file's content has no JSON form (e.g. a YAML mapping with non-string keys).
    #[error("{path}")]
    Convert {
        path: PathBuf,
        #[source]
        cause: serde_json::Error,
    },
    #[error("--set `{pair}`: expected KEY=VALUE")]
    SetSyntax { pair: String },
    #[error("--set: unknown config key `{key}`")]
    SetUnknownKey { key: String },
    #[error("--set {key}: `{value}` is not a finite number ({})", setting(key))]
    SetNonFinite { key: String, value: String },
    /// The `--set` values do not fit the settings' types.
    #[error("--set")]
    SetValue {
        #[source]
        cause: serde_json::Error,
    },
    /// A value out of range: `setting` names the key (and its flag), `rule` what it must be.
    #[error("{setting} must be {rule}, got {value}")]
    OutOfRange {
        setting: String,
        rule: String,
        value: String,
    },
    #[error("batch_size (--batch-size) and micro_batch_size (--micro-batch-size) must be >= 1")]
    EmptyBatch,
    #[error("--batch-size {batch} is not a multiple of --micro-batch-size {micro}")]
    NotAMultiple { batch: usize, micro: usize },
    #[error("nothing to train: max_steps (--max-steps) / max_epoch is 0")]
    NothingToTrain,
    #[error("random_augment: {0}")]
    RandomAugment(String),
    /// A `[monitor]` threshold out of range (the message starts with the key below `monitor.`).
    #[error("monitor.{0} (config table [monitor])")]
    Monitor(String),
}

impl ConfigError {
    /// A config file that cannot be read as settings is an input error; a setting refused, usage.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ConfigError::Syntax { .. }
            | ConfigError::UnknownFormat { .. }
            | ConfigError::NotATable { .. }
            | ConfigError::NonFinite { .. }
            | ConfigError::BeyondToml { .. }
            | ConfigError::Value { .. }
            | ConfigError::Convert { .. } => ErrorKind::Input,
            _ => ErrorKind::Usage,
        }
    }
}

/// The resolved training configuration. Defaults are RAM's `pretrain.yaml` values where it has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// `pretrain` (default) or `finetune` (freezes `label_embed` unless `freeze` says otherwise).
    /// Loading RAM's `finetune.yaml` sets it from the file name when the file does not.
    pub stage: Stage,
    /// Model: an official preset (`swin_l_224`, `swin_l_384`, `swin_b_224`, `swin_b_384`), `tiny` (a small
    /// Swin for tests and smoke runs, 64×64 images), or a path to a reference `config.json`. When
    /// unset, RAM's `vit` + `image_size` pick the preset (`swin_l` + 224 → `swin_l_224`).
    pub model: Option<String>,
    /// RAM: `swin_l` or `swin_b`.
    pub vit: String,
    /// RAM: input resolution (224 or 384).
    pub image_size: usize,
    /// Effective batch per optimizer step (RAM: 52).
    pub batch_size: usize,
    /// Images per forward/backward; gradients of `batch_size / micro_batch_size` micro-batches are
    /// accumulated. Unset: equal to `batch_size`. `"auto"`: the largest that fits the device, chosen
    /// when training starts (see [`MicroBatchSize`]).
    pub micro_batch_size: Option<MicroBatchSize>,
    /// AdamW weight decay (not applied to norms, biases, `label_embed`, `reweight_scale` and position tables).
    pub weight_decay: f64,
    /// Peak learning rate after warm-up.
    pub init_lr: f64,
    pub min_lr: f64,
    /// Learning rate at step 0 of the linear warm-up.
    pub warmup_lr: f64,
    /// RAM's per-epoch decay factor.
    pub lr_decay_rate: f64,
    pub max_epoch: usize,
    pub warmup_steps: u64,
    /// Stop after this many optimizer steps (unset: `max_epoch` epochs).
    pub max_steps: Option<u64>,
    pub schedule: Schedule,
    /// Scale `init_lr`, `min_lr` and `warmup_lr` by `batch_size / base_batch_size` (linear scaling).
    pub lr_scale_linear: bool,
    /// Reference batch for linear LR scaling (RAM's 52).
    pub base_batch_size: usize,
    /// Clip the global gradient norm to this value, which must be > 0 (unset: no clipping, as RAM).
    pub grad_clip: Option<f64>,
    /// AdamW betas (each in [0, 1)) and epsilon (> 0); PyTorch's defaults.
    pub betas: (f64, f64),
    pub adam_eps: f64,
    /// Parameter-name prefixes that are not trained. Unset: `["label_embed"]` in fine-tuning, none in
    /// pre-training.
    pub freeze: Option<Vec<String>>,
    pub absent: AbsentPolicy,
    pub loss_weights: LossWeights,
    pub loss_balance: LossBalance,
    /// Steps measured by `loss_balance = "initial"`.
    pub balance_steps: u64,
    pub device: DeviceKind,
    pub precision: Precision,
    /// TF32 for the f32 matrix products and convolutions on CUDA (faster; their inputs rounded to a
    /// 10-bit mantissa). Off: IEEE f32. No effect on the CPU.
    pub tf32: bool,
    /// Gradients between the ranks of a data-parallel run: `f32`, or `bf16` (half the bytes on the
    /// network, each rank's gradient and the sum rounded to bf16). No effect with a single rank.
    pub grad_comm: GradComm,
    /// When the gradients are exchanged: `overlap` (during the backward pass, as DDP) or
    /// `after-backward`. Same sums either way; no effect with a single rank.
    pub grad_sync: GradSync,
    /// Shard the optimizer state over the ranks (ZeRO stage 1, PyTorch's
    /// `ZeroRedundancyOptimizer`): each rank keeps the AdamW moments of, and updates, only its share
    /// of the parameters, then broadcasts them. Same weights and checkpoints as unsharded; no effect
    /// with a single rank.
    pub shard_optimizer: bool,
    pub seed: u64,
    /// Image-decoding threads (0: one per core); at most one per core (see [`TrainConfig::workers`]).
    pub workers: usize,
    /// libtorch intra-op threads (0: libtorch's default, one per core; at most one per core). Small
    /// models run faster with 1: OpenMP's spinning threads lose badly on a busy machine.
    pub threads: usize,
    /// How the images are checked before the first step (`full`, `header`, `none`; unset: `full`
    /// for up to 1 000 000 images, `header` above).
    pub check_images: Option<ImageCheck>,
    /// An image unreadable when its micro-batch is loaded stops the run (`stop`) or is replaced by
    /// another image of its micro-batch (`skip`, logged and counted in the summary).
    pub unreadable_images: UnreadableImages,
    /// Micro-batches prepared ahead of the step, up to this many decoded at once (1..=64: each
    /// holds decoded images; 1 decodes one micro-batch at a time).
    pub prefetch: usize,
    /// Write a checkpoint every this many optimizer steps, every interval of wall-clock time (`"30m"`),
    /// or `"off"` (only the final checkpoint).
    pub checkpoint_every: CheckpointEvery,
    /// Checkpoints kept (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Print a progress line every this many steps.
    pub log_every: u64,
    /// RAM: annotation files (used when `--data` is not given).
    pub train_file: Vec<String>,
    /// RAM: image root (used when `--images` is not given).
    pub image_path_root: String,
    /// RAM: number of classes; checked against the vocabulary when given.
    pub class_num: Option<usize>,
    /// Training-health detector thresholds (`[monitor.spike]`, … ; see `tagfix::monitor`).
    pub monitor: crate::monitor::DetectorConfig,
    /// `[online_teacher]`: compute the teacher signals on every augmented batch through these CLIP
    /// towers (`--teacher online`) instead of reading a teacher file.
    pub online_teacher: Option<crate::teacher::OnlineTeacherConfig>,
    /// Validate every this many optimizer steps (0: only before the first and after the last step)
    /// when the run has validation data (`--val-data`); results go to `validation.jsonl`.
    pub val_every: u64,
    /// Validate on the first this many images of the validation set (unset: all).
    pub val_max_images: Option<usize>,
    /// Images per validation forward pass (unset: the micro-batch size).
    pub val_batch_size: Option<usize>,
    /// RAM's `RandomAugment(2, 5)` in the training transform (`[random_augment]`; on by default, as
    /// RAM trains).
    pub random_augment: RandomAugmentConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            stage: Stage::Pretrain,
            model: None,
            vit: "swin_l".into(),
            image_size: 224,
            batch_size: 52,
            micro_batch_size: None,
            weight_decay: 0.05,
            init_lr: 1e-4,
            min_lr: 5e-7,
            warmup_lr: 5e-7,
            lr_decay_rate: 0.9,
            max_epoch: 5,
            warmup_steps: 3000,
            max_steps: None,
            schedule: Schedule::RamStep,
            lr_scale_linear: false,
            base_batch_size: 52,
            grad_clip: None,
            betas: (0.9, 0.999),
            adam_eps: 1e-8,
            freeze: None,
            absent: AbsentPolicy::default(),
            loss_weights: LossWeights::default(),
            loss_balance: LossBalance::Fixed,
            balance_steps: 20,
            device: DeviceKind::Cpu,
            precision: Precision::F32,
            tf32: false,
            grad_comm: GradComm::F32,
            grad_sync: GradSync::Overlap,
            shard_optimizer: false,
            seed: 0,
            workers: 0,
            threads: 0,
            check_images: None,
            unreadable_images: UnreadableImages::Stop,
            prefetch: 4,
            checkpoint_every: CheckpointEvery::Steps(1000),
            keep_checkpoints: 3,
            log_every: 50,
            train_file: Vec::new(),
            image_path_root: String::new(),
            class_num: None,
            monitor: Default::default(),
            online_teacher: None,
            val_every: 0,
            val_max_images: None,
            val_batch_size: None,
            random_augment: RandomAugmentConfig::default(),
        }
    }
}

/// RAM YAML keys tagfix reads but does not act on; they are listed in the log.
const IGNORED_RAM_KEYS: &[&str] = &["vit_grad_ckpt", "vit_ckpt_layer"];

/// A loaded configuration file and what it did not use.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: TrainConfig,
    /// Keys present in the file that tagfix ignores (RAM-only settings or unknown keys).
    pub ignored_keys: Vec<String>,
}

impl TrainConfig {
    /// Reads a `.toml`, `.yaml` or `.yml` file. Unknown keys are collected in `ignored_keys`; a value of
    /// the wrong type is an error naming the file and key.
    pub fn load(path: &Path) -> Result<LoadedConfig> {
        let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let map = read_table(path, &text)?;
        Ok(Self::from_table(path, map)?)
    }

    /// The settings of a file's top-level table: unknown keys set aside, numbers in strings read as
    /// numbers, the stage taken from a `finetune` file name when the file does not say.
    fn from_table(
        path: &Path,
        mut map: serde_json::Map<String, serde_json::Value>,
    ) -> Result<LoadedConfig, ConfigError> {
        let known = known_keys();
        let mut ignored = Vec::new();
        map.retain(|k, _| {
            let keep = known.contains(&k.as_str());
            if !keep {
                ignored.push(k.clone());
            }
            keep
        });
        if let Some(key) = map.iter().find_map(|(k, v)| beyond_toml(v).then_some(k)) {
            return Err(ConfigError::BeyondToml {
                path: path.into(),
                key: key.clone(),
            });
        }
        let stage_given = map.contains_key("stage");
        // YAML writes 1e-4 as a string ("1e-4" without a dot is not a YAML float); accept numbers in strings.
        for v in map.values_mut() {
            if let serde_json::Value::String(s) = v {
                if let Ok(n) = s.trim().parse::<f64>() {
                    if let Some(num) = serde_json::Number::from_f64(n) {
                        *v = serde_json::Value::Number(num);
                    }
                }
            }
        }
        let mut config: TrainConfig = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|cause| ConfigError::Value {
                path: path.into(),
                cause,
            })?;
        if !stage_given
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.contains("finetune"))
        {
            config.stage = Stage::Finetune;
        }
        ignored.sort();
        Ok(LoadedConfig {
            config,
            ignored_keys: ignored,
        })
    }

    /// The model preset or path the configuration names.
    pub fn model_spec(&self) -> String {
        self.model
            .clone()
            .unwrap_or_else(|| format!("{}_{}", self.vit, self.image_size))
    }

    /// The micro-batch size and the number of micro-batches per step. `auto` counts as the whole
    /// batch until the trainer has chosen the size (`train::micro_auto`) and set it here.
    pub fn accumulation(&self) -> Result<(usize, usize), ConfigError> {
        let micro = match self.micro_batch_size {
            Some(MicroBatchSize::Images(n)) => n,
            None | Some(MicroBatchSize::Auto) => self.batch_size,
        };
        if self.batch_size == 0 || micro == 0 {
            return Err(ConfigError::EmptyBatch);
        }
        if self.batch_size % micro != 0 {
            return Err(ConfigError::NotAMultiple {
                batch: self.batch_size,
                micro,
            });
        }
        Ok((micro, self.batch_size / micro))
    }

    /// Parameter prefixes not trained.
    pub fn frozen_prefixes(&self) -> Vec<String> {
        match (&self.freeze, self.stage) {
            (Some(f), _) => f.clone(),
            (None, Stage::Finetune) => vec!["label_embed".to_string()],
            (None, Stage::Pretrain) => Vec::new(),
        }
    }

    /// Checks value ranges that serde cannot, before anything is loaded: a bad learning rate, beta or
    /// epsilon would otherwise only show as NaN after a step. Messages name the key and its flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.accumulation()?;
        let bad = |key: &str, rule: &str, value: &dyn std::fmt::Display| {
            Err(ConfigError::OutOfRange {
                setting: setting(key),
                rule: rule.into(),
                value: value.to_string(),
            })
        };
        let finite = |v: f64| v.is_finite();
        if !(finite(self.init_lr) && self.init_lr > 0.0) {
            return bad("init_lr", "a finite number > 0", &self.init_lr);
        }
        for (key, v) in [("min_lr", self.min_lr), ("warmup_lr", self.warmup_lr)] {
            if !(finite(v) && v >= 0.0) {
                return bad(key, "a finite number >= 0", &v);
            }
        }
        if self.min_lr > self.init_lr {
            return bad(
                "min_lr",
                &format!("<= init_lr ({})", self.init_lr),
                &self.min_lr,
            );
        }
        if !(self.lr_decay_rate > 0.0 && self.lr_decay_rate <= 1.0) {
            return bad("lr_decay_rate", "in (0, 1]", &self.lr_decay_rate);
        }
        if !(finite(self.weight_decay) && self.weight_decay >= 0.0) {
            return bad("weight_decay", "a finite number >= 0", &self.weight_decay);
        }
        if let Some(c) = self.grad_clip {
            if !(finite(c) && c > 0.0) {
                return bad(
                    "grad_clip",
                    "a finite number > 0 (leave it unset for no clipping)",
                    &c,
                );
            }
        }
        for (i, b) in [self.betas.0, self.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&b) {
                return bad(&format!("betas[{i}]"), "in [0, 1)", &b);
            }
        }
        if !(finite(self.adam_eps) && self.adam_eps > 0.0) {
            return bad("adam_eps", "a finite number > 0", &self.adam_eps);
        }
        let w = self.loss_weights;
        for (term, v) in [("tag", w.tag), ("align", w.align), ("dis", w.dis)] {
            if !(finite(v) && v >= 0.0) {
                return bad(&format!("loss_weights.{term}"), "a finite number >= 0", &v);
            }
        }
        if self.lr_scale_linear && self.base_batch_size == 0 {
            return bad("base_batch_size", ">= 1 with lr_scale_linear", &0);
        }
        if self.max_steps == Some(0) || (self.max_steps.is_none() && self.max_epoch == 0) {
            return Err(ConfigError::NothingToTrain);
        }
        if self.loss_balance == LossBalance::Initial && self.balance_steps == 0 {
            return bad("balance_steps", ">= 1 with loss_balance = initial", &0);
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", ">= 1", &0);
        }
        if !(1..=MAX_PREFETCH).contains(&self.prefetch) {
            return bad(
                "prefetch",
                &format!("in 1..={MAX_PREFETCH}"),
                &self.prefetch,
            );
        }
        if self.val_max_images == Some(0) {
            return bad("val_max_images", ">= 1", &0);
        }
        if self.val_batch_size == Some(0) {
            return bad("val_batch_size", ">= 1", &0);
        }
        self.random_augment.validate()?;
        self.monitor.check().map_err(ConfigError::Monitor)?;
        if let Some((key, value)) = self.first_integer_beyond_toml() {
            return bad(
                &key,
                &format!(
                    "at most {} (config.toml stores it as a TOML integer)",
                    i64::MAX
                ),
                &value,
            );
        }
        Ok(())
    }

    /// The first setting holding an integer TOML cannot write, and its value (a flag such as
    /// `--seed` takes any u64; a config file was checked when read).
    fn first_integer_beyond_toml(&self) -> Option<(String, serde_json::Value)> {
        let serde_json::Value::Object(map) = serde_json::to_value(self).ok()? else {
            return None;
        };
        map.into_iter().find(|(_, v)| beyond_toml(v))
    }

    /// Image-decoding threads the loader starts: `workers`, 0 meaning this process's share of the
    /// cores ([`ranks_sharing_cores`]), and never more than one per core. Decoding is CPU-bound, so
    /// more threads only add memory and contention (`--workers 100000` once spent minutes starting
    /// threads).
    pub fn decode_workers(&self) -> usize {
        self.decode_workers_among(ranks_sharing_cores())
    }

    /// [`Self::decode_workers`] for a process that shares the cores with `sharing` ranks in all.
    pub fn decode_workers_among(&self, sharing: usize) -> usize {
        match self.workers {
            0 => core_share(sharing),
            n => cap_to_cores(n),
        }
    }

    /// libtorch intra-op threads to set: `threads` capped at one per core; 0 leaves libtorch's
    /// default (0), except where several ranks share the cores ([`ranks_sharing_cores`]) and
    /// `OMP_NUM_THREADS` does not say otherwise: then the process's share of the cores, since each
    /// rank's default would be every core.
    pub fn torch_threads(&self) -> usize {
        let omp = std::env::var_os("OMP_NUM_THREADS").is_some();
        self.torch_threads_among(ranks_sharing_cores(), omp)
    }

    /// [`Self::torch_threads`] for `sharing` ranks, `OMP_NUM_THREADS` set or not.
    pub fn torch_threads_among(&self, sharing: usize, omp_num_threads_set: bool) -> usize {
        match self.threads {
            0 if sharing > 1 && !omp_num_threads_set => core_share(sharing),
            n => torch_threads_for(n),
        }
    }

    /// The configuration as TOML (written to the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }

    /// Overrides from a `KEY=VALUE` list (TOML values), as `--set` passes them.
    pub fn apply_overrides(&mut self, pairs: &[String]) -> Result<(), ConfigError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut map: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(serde_json::to_value(&*self).expect("serialisable"))
                .expect("object");
        for pair in pairs {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::SetSyntax { pair: pair.clone() })?;
            let k = k.trim();
            if !known_keys().contains(&k) {
                return Err(ConfigError::SetUnknownKey { key: k.into() });
            }
            let parsed: toml::Value = toml::from_str(&format!("v = {v}"))
                .map(|t: toml::Table| t["v"].clone())
                .unwrap_or_else(|_| toml::Value::String(v.to_string()));
            if has_non_finite(&parsed) {
                return Err(ConfigError::SetNonFinite {
                    key: k.into(),
                    value: v.trim().into(),
                });
            }
            map.insert(k.to_string(), serde_json::to_value(parsed).expect("json"));
        }
        *self = serde_json::from_value(serde_json::to_value(map).expect("json"))
            .map_err(|cause| ConfigError::SetValue { cause })?;
        Ok(())
    }
}

/// The top-level table of a config file's text, as TOML (`.toml`) or YAML (`.yaml`, `.yml`) by its
/// extension. TOML `inf` / `nan` are refused here, naming the key (JSON has no form for them).
fn read_table(
    path: &Path,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let convert = |cause| ConfigError::Convert {
        path: path.into(),
        cause,
    };
    let value = match ext.as_deref() {
        Some("toml") => {
            let v: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.into(),
                line: e
                    .span()
                    .map(|s| text[..s.start].lines().count().max(1))
                    .unwrap_or(0),
                format: "TOML",
                message: e.message().to_string(),
            })?;
            let non_finite = v
                .as_table()
                .and_then(|t| t.iter().find(|(_, x)| has_non_finite(x)));
            if let Some((key, _)) = non_finite {
                return Err(ConfigError::NonFinite {
                    path: path.into(),
                    key: key.clone(),
                });
            }
            serde_json::to_value(v).map_err(convert)?
        }
        Some("yaml" | "yml") => {
            let v: serde_yaml::Value =
                serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
                    path: path.into(),
                    line: e.location().map(|l| l.line()).unwrap_or(0),
                    format: "YAML",
                    message: e.to_string(),
                })?;
            serde_json::to_value(v).map_err(convert)?
        }
        _ => return Err(ConfigError::UnknownFormat { path: path.into() }),
    };
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(ConfigError::NotATable { path: path.into() }),
    }
}

/// Whether a TOML value holds `inf` or `nan` anywhere (JSON, which the overrides pass through, has
/// neither: they would arrive as a confusing "null").
fn has_non_finite(v: &toml::Value) -> bool {
    match v {
        toml::Value::Float(f) => !f.is_finite(),
        toml::Value::Array(a) => a.iter().any(has_non_finite),
        toml::Value::Table(t) => t.values().any(has_non_finite),
        _ => false,
    }
}

/// Whether a value holds an integer TOML cannot write (above `i64::MAX`; YAML reads them as u64).
fn beyond_toml(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_u64() && n.as_i64().is_none(),
        serde_json::Value::Array(a) => a.iter().any(beyond_toml),
        serde_json::Value::Object(o) => o.values().any(beyond_toml),
        _ => false,
    }
}

/// The most micro-batches decoded ahead (each holds a micro-batch of decoded images).
pub const MAX_PREFETCH: usize = 64;

/// libtorch intra-op threads for a `--threads` value: capped at one per core (0: libtorch's default).
pub fn torch_threads_for(requested: usize) -> usize {
    match requested {
        0 => 0,
        n => cap_to_cores(n),
    }
}

/// The processes of this run that share this machine's cores: the launcher's ranks on this machine
/// (torchrun's and `--nproc-per-node`'s `LOCAL_WORLD_SIZE`, Slurm's `SLURM_NTASKS_PER_NODE`), unless
/// this process is bound to part of the machine. torchrun starts every rank on all the cores; Slurm
/// binds each task to its own (`--cpus-per-task`, task affinity) on most clusters but not all, and
/// `taskset` or `numactl` may bind a torchrun rank. A bound process's cores are its own, and
/// [`std::thread::available_parallelism`] already counts only them: then, as in a single-process
/// run, it is 1.
pub fn ranks_sharing_cores() -> usize {
    ranks_sharing_cores_in(
        crate::train::dist::Rendezvous::from_env()
            .ok()
            .flatten()
            .as_ref(),
        bound_to_part_of_machine(),
    )
}

/// [`ranks_sharing_cores`] for the launcher's description `rendezvous` (`None`: no launcher) and
/// whether this process is bound to part of the machine's cores.
fn ranks_sharing_cores_in(
    rendezvous: Option<&crate::train::dist::Rendezvous>,
    bound: bool,
) -> usize {
    match rendezvous {
        Some(r) if !bound => r.local_world_size.unwrap_or(1).max(1),
        _ => 1,
    }
}

/// Whether this process's CPU affinity leaves out some of the machine's online CPUs (Slurm's
/// task binding, `taskset`, `numactl`). Unknown (more than 1024 CPUs, no `sysconf`) counts as not
/// bound.
fn bound_to_part_of_machine() -> bool {
    // SAFETY: `cpu_set_t` is plain data; `sched_getaffinity` writes at most its size into it.
    let mine = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then(|| libc::CPU_COUNT(&set))
    };
    // SAFETY: a plain query.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    matches!(mine, Some(n) if n > 0 && i64::from(n) < online)
}

/// An equal share of the cores among `sharing` processes, at least one.
fn core_share(sharing: usize) -> usize {
    (cap_to_cores(0) / sharing.max(1)).max(1)
}

/// `n` threads (0: one per core), at most one per core.
fn cap_to_cores(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n == 0 {
        cores
    } else {
        n.min(cores)
    }
}

/// How messages name a configuration key: with the `tagfix train` flag that sets it (found in
/// [`TrainFlags`]' clap definition, whose fields are named after the keys), else as the `--set`
/// override.
fn setting(key: &str) -> String {
    use clap::Args;
    let base = key.split(['.', '[']).next().unwrap_or(key);
    let flags = TrainFlags::augment_args(clap::Command::new("train"));
    let long = flags
        .get_arguments()
        .find(|a| a.get_id() == base)
        .and_then(|a| a.get_long());
    match long {
        Some(flag) => format!("{key} (--{flag})"),
        None => format!("{key} (config key; --set {base}=...)"),
    }
}

/// The configuration's keys, sorted: the field names [`TrainConfig`] serialises (also used by the
/// fuzz harness's config generator).
pub(crate) fn known_keys() -> Vec<&'static str> {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        let serde_json::Value::Object(fields) =
            serde_json::to_value(TrainConfig::default()).expect("the config serialises")
        else {
            unreachable!("a struct serialises to an object")
        };
        let keys: Vec<String> = fields.into_iter().map(|(k, _)| k).collect();
        debug_assert!(IGNORED_RAM_KEYS
            .iter()
            .all(|k| !keys.iter().any(|x| x == k)));
        keys
    });
    let mut keys: Vec<&'static str> = keys.iter().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with its sources, as the command line prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text += &format!(": {s}");
            source = s.source();
        }
        text
    }

    #[test]
    fn flags_are_named_after_the_keys_they_set() {
        // `setting` finds a key's flag by the field name, so every flag field must be a key.
        use clap::Args;
        let flags = TrainFlags::augment_args(clap::Command::new("train"));
        let keys = known_keys();
        for arg in flags.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                keys.contains(&id) || id == "no_random_augment",
                "flag field `{id}` is not a config key"
            );
        }
        assert!(keys.contains(&"random_augment") && keys.contains(&"init_lr"));
        assert_eq!(setting("init_lr"), "init_lr (--lr)");
        assert_eq!(
            setting("loss_weights.dis"),
            "loss_weights.dis (--loss-weights)"
        );
        assert_eq!(
            setting("betas[1]"),
            "betas[1] (config key; --set betas=...)"
        );
    }

    #[test]
    fn flags_replace_only_what_they_give() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flags: TrainFlags,
        }
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("train").chain(args.iter().copied()));
            cli.map(|c| c.flags)
        };
        let mut c = TrainConfig {
            batch_size: 8,
            freeze: Some(vec!["x".into()]),
            ..Default::default()
        };
        parse(&[]).unwrap().apply(&mut c);
        assert_eq!(c.batch_size, 8);
        let flags = parse(&[
            "--lr=0.5",
            "--stage=finetune",
            "--device=gpu",
            "--precision=fp32",
            "--check-images=none",
            "--schedule=cosine",
            "--loss-balance=initial",
            "--freeze=none",
            "--no-random-augment",
            "--micro-batch-size=4",
        ])
        .unwrap();
        flags.apply(&mut c);
        assert_eq!(
            (c.init_lr, c.stage, c.device),
            (0.5, Stage::Finetune, DeviceKind::Cuda)
        );
        assert_eq!(
            (c.precision, c.check_images),
            (Precision::F32, Some(ImageCheck::None))
        );
        assert_eq!(
            (c.schedule, c.loss_balance),
            (Schedule::Cosine, LossBalance::Initial)
        );
        assert_eq!(c.freeze, Some(vec![]));
        assert_eq!(c.micro_batch_size, Some(4.into()));
        assert!(!c.random_augment.enabled && c.batch_size == 8);
        assert!(parse(&["--stage=midtrain"]).is_err());
    }

    #[test]
    fn absent_policy_parses() {
        assert_eq!("mask".parse::<AbsentPolicy>().unwrap(), AbsentPolicy::Mask);
        assert_eq!(
            "negative".parse::<AbsentPolicy>().unwrap(),
            AbsentPolicy::Negative
        );
        assert_eq!(
            "smooth=0.1".parse::<AbsentPolicy>().unwrap(),
            AbsentPolicy::Smooth(0.1)
        );
        assert!("smooth=1.5".parse::<AbsentPolicy>().is_err());
        assert!("zero".parse::<AbsentPolicy>().is_err());
    }

    #[test]
    fn loss_weights_parse_partial() {
        let w: LossWeights = "align=2, dis=0".parse().unwrap();
        assert_eq!(
            w,
            LossWeights {
                tag: 1.0,
                align: 2.0,
                dis: 0.0
            }
        );
        assert!("foo=1".parse::<LossWeights>().is_err());
        assert!("tag=-1".parse::<LossWeights>().is_err());
    }

    #[test]
    fn toml_roundtrip_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "model = \"tiny\"\nbatch_size = 8\nmicro_batch_size = 4\nabsent = \"mask\"\nfoo = 3\n[loss_weights]\ntag = 1\nalign = 1\ndis = 5\n",
        )
        .unwrap();
        let l = TrainConfig::load(&p).unwrap();
        assert_eq!(l.ignored_keys, vec!["foo".to_string()]);
        assert_eq!(l.config.accumulation().unwrap(), (4, 2));
        assert_eq!(l.config.absent, AbsentPolicy::Mask);
        assert_eq!(l.config.loss_weights.dis, 5.0);
        let back: TrainConfig = toml::from_str(&l.config.to_toml()).unwrap();
        assert_eq!(back, l.config);
    }

    #[test]
    fn random_augment_and_monitor_tables_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[random_augment]\nops = 3\naugs = [\"Rotate\", \"Equalize\"]\n[monitor.spike]\nwindow = 77\n",
        )
        .unwrap();
        let l = TrainConfig::load(&p).unwrap();
        assert!(l.ignored_keys.is_empty(), "{:?}", l.ignored_keys);
        let ra = &l.config.random_augment;
        assert_eq!(
            (ra.enabled, ra.ops, ra.magnitude, ra.prob),
            (true, 3, 5.0, 0.5)
        );
        assert_eq!(ra.augs, vec![AugOp::Rotate, AugOp::Equalize]);
        assert_ne!(l.config.monitor, crate::monitor::DetectorConfig::default());
        // RAM's defaults: on, RandomAugment(2, 5) over RAM's ten operations.
        let d = TrainConfig::default().random_augment;
        assert_eq!((d.enabled, d.ops, d.magnitude), (true, 2, 5.0));
        assert_eq!(d.augs, AugOp::RAM.to_vec());
        let mut c = TrainConfig::default();
        c.apply_overrides(&["random_augment={enabled=false}".into()])
            .unwrap();
        assert!(!c.random_augment.enabled);
        std::fs::write(&p, "[random_augment]\naugs = [\"Solarize\"]\n").unwrap();
        let e = chain(&TrainConfig::load(&p).unwrap_err());
        assert!(e.contains("Solarize"), "{e}");
        let c = TrainConfig {
            random_augment: RandomAugmentConfig {
                magnitude: 12.0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("magnitude"));
    }

    #[test]
    fn wrong_type_names_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "batch_size = \"many\"\n").unwrap();
        let e = chain(&TrainConfig::load(&p).unwrap_err());
        assert!(
            e.contains("c.toml: bad value: invalid type: string \"many\""),
            "{e}"
        );
    }

    /// Found by probing the flags (docs/reliability.md): `--seed 18446744073709551615` passed, then
    /// writing the run's config.toml panicked.
    #[test]
    fn flags_toml_cannot_hold_are_refused() {
        let cases = [
            (
                TrainConfig {
                    seed: u64::MAX,
                    ..Default::default()
                },
                "seed (--seed)",
            ),
            (
                TrainConfig {
                    balance_steps: i64::MAX as u64 + 1,
                    ..Default::default()
                },
                "balance_steps (--balance-steps)",
            ),
        ];
        for (c, setting) in cases {
            let e = c.validate().unwrap_err().to_string();
            let rule =
                "must be at most 9223372036854775807 (config.toml stores it as a TOML integer)";
            assert!(e.starts_with(&format!("{setting} {rule}, got ")), "{e}");
        }
        let ok = TrainConfig {
            seed: i64::MAX as u64,
            ..Default::default()
        };
        ok.validate().unwrap();
        assert!(ok.to_toml().contains("seed = 9223372036854775807"));
    }

    /// Found by `scripts/fuzz.sh` (target `ram_yaml`): a YAML integer above `i64::MAX` loaded, then
    /// writing the run's config.toml panicked.
    #[test]
    fn integers_toml_cannot_hold_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        for text in [
            "image_size: 9223372036854775808\n",
            "seed: 18446744073709551615\n",
            "random_augment:\n  ops: 9223372036854775808\n",
        ] {
            std::fs::write(&p, text).unwrap();
            let e = TrainConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains("c.yaml") && e.contains("integers above"), "{e}");
        }
        std::fs::write(&p, "seed: 9223372036854775807\n").unwrap();
        let c = TrainConfig::load(&p).unwrap().config;
        assert_eq!(c.seed, i64::MAX as u64);
        assert!(c.to_toml().contains("seed = 9223372036854775807"));
    }

    #[test]
    fn overrides() {
        let mut c = TrainConfig::default();
        c.apply_overrides(&[
            "batch_size=8".into(),
            "absent=\"mask\"".into(),
            "schedule=cosine".into(),
        ])
        .unwrap();
        assert_eq!(c.batch_size, 8);
        assert_eq!(c.absent, AbsentPolicy::Mask);
        assert_eq!(c.schedule, Schedule::Cosine);
        assert!(c.apply_overrides(&["nope=1".into()]).is_err());
    }

    #[test]
    fn micro_batch_size_is_a_number_or_auto() {
        use MicroBatchSize::{Auto, Images};
        for (text, want) in [
            ("micro_batch_size = \"auto\"", Auto),
            ("micro_batch_size = 26", Images(26)),
        ] {
            let c: TrainConfig = toml::from_str(text).unwrap();
            assert_eq!(c.micro_batch_size, Some(want), "{text}");
            let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(back.micro_batch_size, Some(want), "{text} written back");
        }
        let e = toml::from_str::<TrainConfig>("micro_batch_size = \"most\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("neither a number of images nor `auto`"),
            "{e}"
        );
        let mut c = TrainConfig::default();
        c.apply_overrides(&["micro_batch_size=auto".into()])
            .unwrap();
        assert_eq!(c.micro_batch_size, Some(Auto));
        // Until the trainer chooses, `auto` counts as the whole batch.
        assert_eq!(c.accumulation().unwrap(), (52, 1));
        assert_eq!(" 13 ".parse::<MicroBatchSize>(), Ok(Images(13)));
    }

    #[test]
    fn accumulation_must_divide() {
        let c = TrainConfig {
            batch_size: 52,
            micro_batch_size: Some(26.into()),
            ..Default::default()
        };
        assert_eq!(c.accumulation().unwrap(), (26, 2));
        let c = TrainConfig {
            micro_batch_size: Some(10.into()),
            ..c
        };
        assert!(c.accumulation().is_err());
    }

    #[test]
    fn ram_yaml_configs_load() {
        let Some(shared) = crate::testutil::shared_dir_for_test("ram_yaml_configs_load") else {
            return;
        };
        let pre = TrainConfig::load(&shared.join("ram/configs/pretrain.yaml")).unwrap();
        let c = &pre.config;
        assert_eq!(c.stage, Stage::Pretrain);
        assert_eq!(
            (c.batch_size, c.init_lr, c.min_lr, c.warmup_lr),
            (52, 1e-4, 5e-7, 5e-7)
        );
        assert_eq!(
            (c.lr_decay_rate, c.max_epoch, c.warmup_steps),
            (0.9, 5, 3000)
        );
        assert_eq!((c.weight_decay, c.class_num), (0.05, Some(4585)));
        assert_eq!(c.model_spec(), "swin_l_224");
        assert_eq!(c.train_file.len(), 6);
        assert_eq!(pre.ignored_keys, vec!["vit_ckpt_layer", "vit_grad_ckpt"]);
        c.validate().unwrap();

        let fine = TrainConfig::load(&shared.join("ram/configs/finetune.yaml")).unwrap();
        let c = &fine.config;
        assert_eq!(c.stage, Stage::Finetune);
        assert_eq!(
            (c.batch_size, c.init_lr, c.min_lr, c.max_epoch),
            (26, 5e-6, 0.0, 2)
        );
        assert_eq!(c.model_spec(), "swin_l_384");
        assert_eq!(c.frozen_prefixes(), vec!["label_embed".to_string()]);
        c.validate().unwrap();
    }

    #[test]
    fn numeric_settings_are_validated_with_key_and_flag() {
        let check = |c: TrainConfig, needle: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "expected `{needle}` in: {e}");
        };
        let d = TrainConfig::default;
        check(
            TrainConfig {
                init_lr: f64::INFINITY,
                ..d()
            },
            "init_lr (--lr) must be a finite number > 0",
        );
        check(
            TrainConfig {
                betas: (0.9, f64::NAN),
                ..d()
            },
            "betas[1]",
        );
        check(
            TrainConfig {
                adam_eps: 0.0,
                ..d()
            },
            "adam_eps (config key; --set adam_eps=...)",
        );
        check(
            TrainConfig {
                grad_clip: Some(f64::NAN),
                ..d()
            },
            "grad_clip (--grad-clip)",
        );
        check(TrainConfig { min_lr: 1.0, ..d() }, "min_lr");
        check(
            TrainConfig {
                lr_scale_linear: true,
                base_batch_size: 0,
                ..d()
            },
            "base_batch_size",
        );
        check(
            TrainConfig {
                prefetch: 65,
                ..d()
            },
            "prefetch",
        );
        let mut monitor = crate::monitor::DetectorConfig::default();
        monitor.plateau.window = 1;
        check(
            TrainConfig { monitor, ..d() },
            "monitor.plateau.window must be >= 4, got 1",
        );
        d().validate().unwrap();
        TrainConfig {
            grad_clip: Some(1.0),
            betas: (0.0, 0.5),
            ..d()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn checkpoint_every_is_steps_a_duration_or_off() {
        let mut c = TrainConfig::default();
        assert!(c.checkpoint_every.due(2000) && !c.checkpoint_every.due(1500));
        c.apply_overrides(&["checkpoint_every=off".into()]).unwrap();
        assert_eq!(c.checkpoint_every, CheckpointEvery::Off);
        assert!(!c.checkpoint_every.due(1000));
        // written to the run's config.toml and read back on --resume
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.checkpoint_every, CheckpointEvery::Off);
        c.apply_overrides(&["checkpoint_every=7".into()]).unwrap();
        assert_eq!(c.checkpoint_every, CheckpointEvery::Steps(7));
        let e = c
            .apply_overrides(&["checkpoint_every=0".into()])
            .unwrap_err();
        let e = chain(&e);
        assert!(
            e.contains("--set: checkpoint_every (--checkpoint-every) must be >= 1 step or a positive duration, or `off`"),
            "{e}"
        );
        assert!("-3".parse::<CheckpointEvery>().is_err());
        // A duration: wall-clock time between checkpoints, kept as written in config.toml.
        c.apply_overrides(&["checkpoint_every=1h 30m".into()])
            .unwrap();
        let ninety = std::time::Duration::from_secs(90 * 60);
        assert_eq!(c.checkpoint_every, CheckpointEvery::Interval(ninety));
        assert_eq!(c.checkpoint_every.interval(), Some(ninety));
        assert!(!c.checkpoint_every.due(1000), "a duration is no step count");
        assert!(
            c.to_toml().contains("checkpoint_every = \"1h 30m\""),
            "{}",
            c.to_toml()
        );
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.checkpoint_every, c.checkpoint_every);
        for zero in ["0s", "0m"] {
            let e = zero.parse::<CheckpointEvery>().unwrap_err();
            assert!(e.contains("positive duration"), "{e}");
        }
        let e = "30 minits".parse::<CheckpointEvery>().unwrap_err();
        assert!(
            e.contains("`30 minits` is neither a number of steps, a duration"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_numbers_in_a_config_file_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "batch_size = 8\ninit_lr = inf\n").unwrap();
        let e = TrainConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml: init_lr (--lr) holds inf or nan"), "{e}");
    }

    #[test]
    fn image_check_defaults_by_set_size() {
        assert_eq!(ImageCheck::default_for(1_000_000), ImageCheck::Full);
        assert_eq!(ImageCheck::default_for(1_000_001), ImageCheck::Header);
        let mut c = TrainConfig::default();
        c.apply_overrides(&["check_images=header".into()]).unwrap();
        assert_eq!(c.check_images, Some(ImageCheck::Header));
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.check_images, Some(ImageCheck::Header));
    }

    #[test]
    fn workers_and_threads_are_capped_at_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let c = TrainConfig {
            workers: 100_000,
            threads: 100_000,
            ..Default::default()
        };
        assert_eq!((c.decode_workers(), c.torch_threads()), (cores, cores));
        let c = TrainConfig {
            workers: 0,
            threads: 0,
            ..Default::default()
        };
        assert_eq!((c.decode_workers(), c.torch_threads()), (cores, 0));
        let c = TrainConfig {
            workers: 1,
            threads: 1,
            ..Default::default()
        };
        assert_eq!((c.decode_workers(), c.torch_threads()), (1, 1));
    }

    #[test]
    fn ranks_on_one_machine_share_its_cores_unless_told_otherwise() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let auto = TrainConfig::default();
        // 8 ranks (torchrun --nproc-per-node 8): an eighth of the cores each, at least one.
        assert_eq!(auto.decode_workers_among(8), (cores / 8).max(1));
        assert_eq!(auto.torch_threads_among(8, false), (cores / 8).max(1));
        // OMP_NUM_THREADS (torchrun sets 1) is libtorch's to read: left alone.
        assert_eq!(auto.torch_threads_among(8, true), 0);
        // One rank: every core, libtorch's default.
        assert_eq!(
            (
                auto.decode_workers_among(1),
                auto.torch_threads_among(1, false)
            ),
            (cores, 0)
        );
        // Chosen counts stay, capped at the cores.
        let chosen = TrainConfig {
            workers: 3,
            threads: 2,
            ..Default::default()
        };
        assert_eq!(chosen.decode_workers_among(8), 3.min(cores));
        assert_eq!(chosen.torch_threads_among(8, false), 2.min(cores));
        // Who shares: the launcher's ranks on this machine, unless bound to their own cores.
        use crate::train::dist::{Contract, Rendezvous};
        let launched = |contract, local| Rendezvous {
            contract,
            rank: 0,
            world_size: 16,
            local_rank: 0,
            local_world_size: local,
            master_addr: "node0".into(),
            master_port: 29500,
            agent_store: false,
        };
        for bound in [false, true] {
            assert_eq!(ranks_sharing_cores_in(None, bound), 1);
            for contract in [Contract::Torchrun, Contract::Slurm] {
                let r = launched(contract, Some(8));
                assert_eq!(
                    ranks_sharing_cores_in(Some(&r), bound),
                    if bound { 1 } else { 8 },
                    "{contract:?}, bound {bound}"
                );
                // Slurm states the tasks per machine only for a uniform layout.
                let unknown = launched(contract, None);
                assert_eq!(ranks_sharing_cores_in(Some(&unknown), bound), 1);
            }
        }
    }

    #[test]
    fn a_process_pinned_to_one_cpu_is_bound_to_part_of_a_larger_machine() {
        // SAFETY: as in `bound_to_part_of_machine`; only this test's own thread is pinned.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if online < 2 {
            return; // one CPU: nothing to be bound to part of
        }
        std::thread::spawn(|| {
            // SAFETY: pins this test thread alone to CPU 0.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                    0
                );
            }
            assert!(bound_to_part_of_machine());
        })
        .join()
        .unwrap();
    }
}
