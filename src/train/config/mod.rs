//! Training configuration: a TOML file in tagfix's own keys, or RAM's YAML configs
//! (`configs/pretrain.yaml`, `configs/finetune.yaml`) exactly as the official repository ships them.
//! Command-line flags override the file; every key has a documented default (see [`TrainConfig`]).
//!
//! The key names are RAM's where RAM has one (`batch_size`, `init_lr`, `min_lr`, `warmup_lr`,
//! `lr_decay_rate`, `max_epoch`, `warmup_steps`, `weight_decay`, `image_size`, `vit`, `class_num`,
//! `train_file`, `image_path_root`), so a YAML file and a TOML file say the same thing. Keys tagfix
//! does not use (`vit_grad_ckpt`, `vit_ckpt_layer`, …) are reported, never silently dropped.
//! Feature-free: nothing here needs libtorch.

use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod cores;
mod file;
mod flags;
mod values;

pub use cores::{
    bound_to_part_of_machine, process_cores, ranks_sharing_cores, shared_cores, torch_threads_for,
};
pub(crate) use file::known_keys;
pub use file::LoadedConfig;

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

impl TrainConfig {
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
}

/// The most micro-batches decoded ahead (each holds a micro-batch of decoded images).
pub const MAX_PREFETCH: usize = 64;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with its sources, as the command line prints it.
    pub(super) fn chain(e: &dyn std::error::Error) -> String {
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
        // BLIP's full list is accepted; a name it does not have is refused by name.
        std::fs::write(
            &p,
            "[random_augment]\naugs = [\"Solarize\", \"Posterize\"]\n",
        )
        .unwrap();
        let c = TrainConfig::load(&p).unwrap().config.random_augment;
        assert_eq!(c.augs, [AugOp::Solarize, AugOp::Posterize]);
        std::fs::write(&p, "[random_augment]\naugs = [\"Cutout\"]\n").unwrap();
        let e = chain(&TrainConfig::load(&p).unwrap_err());
        assert!(e.contains("Cutout"), "{e}");
        let c = TrainConfig {
            random_augment: RandomAugmentConfig {
                magnitude: 12.0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("magnitude"));
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
    fn image_check_defaults_by_set_size() {
        assert_eq!(ImageCheck::default_for(1_000_000), ImageCheck::Full);
        assert_eq!(ImageCheck::default_for(1_000_001), ImageCheck::Header);
        let mut c = TrainConfig::default();
        c.apply_overrides(&["check_images=header".into()]).unwrap();
        assert_eq!(c.check_images, Some(ImageCheck::Header));
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.check_images, Some(ImageCheck::Header));
    }
}
