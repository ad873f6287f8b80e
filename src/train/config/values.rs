//! The configuration's value types: the domain enums and small structs of [`super::TrainConfig`]'s
//! keys, with how each is written in a file and on the command line.

use super::ConfigError;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// What happens to the tag loss of the slots the manifest marks absent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum AbsentPolicy {
    /// Targets become `eps` instead of 0, with the label-smoothed binary cross-entropy
    /// `−[ε·log p + (1−ε)·log(1−p)]` in place of the asymmetric loss for those slots. Its minimum is at
    /// `p = ε`, so the slots' logits settle near `logit(ε)` rather than being driven towards −∞.
    /// (ASL itself cannot do this: its clip and focal weight `(p−0.05)^7` give a soft target no
    /// gradient below p = 0.05 and almost none above.)
    Smooth(f64),
    /// Left out of the tag loss: those slots' logits receive no gradient from it and only move
    /// through the parameters they share with other slots (tagging head, `fc`, projections).
    Mask,
    /// Plain negatives, for comparison: hard target 0 with the same plain binary cross-entropy as
    /// `smooth` (i.e. `smooth` with ε = 0), so the two runs differ only in the target. Nothing stops the
    /// push: the slots' probabilities collapse toward 0 and their logits drift to −∞.
    Negative,
    /// RAM's own treatment: absent slots are ordinary ASL negatives (γ− 7, clip 0.05). The push
    /// weakens as `(p − 0.05)^7` and stops below p = 0.05, so over a short run the probabilities fall
    /// slowly from their start; over RAM's long schedules they end near the clip.
    Asl,
}

impl Default for AbsentPolicy {
    fn default() -> Self {
        AbsentPolicy::Smooth(0.05)
    }
}

impl std::str::FromStr for AbsentPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "mask" => Ok(AbsentPolicy::Mask),
            "negative" => Ok(AbsentPolicy::Negative),
            "asl" => Ok(AbsentPolicy::Asl),
            "smooth" => Ok(AbsentPolicy::default()),
            other => {
                let eps = other
                    .strip_prefix("smooth=")
                    .ok_or_else(|| format!("unknown absent-tag policy `{other}` (use smooth=EPS, mask, negative or asl)"))?;
                let eps: f64 = eps
                    .parse()
                    .map_err(|_| format!("smooth=EPS: `{eps}` is not a number"))?;
                if !(eps > 0.0 && eps < 1.0) {
                    return Err(format!("smooth=EPS: EPS must lie in (0, 1), got {eps}"));
                }
                Ok(AbsentPolicy::Smooth(eps))
            }
        }
    }
}

impl std::fmt::Display for AbsentPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbsentPolicy::Smooth(e) => write!(f, "smooth={e}"),
            AbsentPolicy::Mask => f.write_str("mask"),
            AbsentPolicy::Negative => f.write_str("negative"),
            AbsentPolicy::Asl => f.write_str("asl"),
        }
    }
}

impl From<AbsentPolicy> for String {
    fn from(p: AbsentPolicy) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for AbsentPolicy {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// Per-term loss weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    pub tag: f64,
    pub align: f64,
    pub dis: f64,
}

impl Default for LossWeights {
    /// tag 1, alignment 10, distillation 100.
    fn default() -> Self {
        LossWeights {
            tag: 1.0,
            align: 10.0,
            dis: 100.0,
        }
    }
}

impl std::fmt::Display for LossWeights {
    /// As `--loss-weights` takes them, to 4 decimals (4 digits in exponent form below 0.01):
    /// `tag=1,align=10,dis=100`, `align=3.0988`, `dis=2.500e-5`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |v: f64| match v {
            0.0 => "0".to_string(),
            v if v.abs() < 0.01 && v.is_finite() => format!("{v:.3e}"),
            v => {
                let s = format!("{v:.4}");
                match s.contains('.') {
                    true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
                    false => s,
                }
            }
        };
        write!(
            f,
            "tag={},align={},dis={}",
            short(self.tag),
            short(self.align),
            short(self.dis)
        )
    }
}

impl std::str::FromStr for LossWeights {
    type Err = String;
    /// `tag=1,align=10,dis=100`; terms left out keep their default.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut w = LossWeights::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("`{part}`: expected TERM=WEIGHT (terms: tag, align, dis)")
            })?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: weight is not a number"))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("`{part}`: weight must be finite and >= 0"));
            }
            match k.trim() {
                "tag" => w.tag = v,
                "align" | "alignment" => w.align = v,
                "dis" | "distill" | "distillation" => w.dis = v,
                other => {
                    return Err(format!(
                        "unknown loss term `{other}` (terms: tag, align, dis)"
                    ))
                }
            }
        }
        Ok(w)
    }
}

/// How the loss weights are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossBalance {
    /// Use `loss_weights` as given.
    Fixed,
    /// Measure each raw term over the first `balance_steps` steps (trained with `loss_weights`), then
    /// fix weights so the weighted terms have equal mean magnitude (the tag term keeps its weight; the
    /// others are scaled to match it).
    Initial,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// RAM's `step_lr_schedule`: `max(min_lr, init_lr · lr_decay_rate^epoch)` per epoch.
    RamStep,
    /// Cosine from `init_lr` down to `min_lr` over the run's total steps.
    Cosine,
}

/// Training stage: decides defaults such as which parameters are frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Pretrain,
    Finetune,
}

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    #[value(alias = "gpu")]
    Cuda,
}

/// Arithmetic of the forward and backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[value(alias = "fp32")]
    F32,
    /// bf16 autocast (`torch.autocast(dtype=torch.bfloat16)`): matrix products in bf16, parameters,
    /// gradients and optimizer state in f32. Meant for CUDA; on CPU it runs (for tests) but is slow
    /// unless the processor has bf16 instructions.
    Bf16,
}

/// How the ranks of a data-parallel run exchange gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GradComm {
    /// The gradients as they are (f32): the sum equals the one-rank run's up to summation order.
    #[default]
    #[value(alias = "fp32")]
    F32,
    /// Sent and summed as bf16, half the bytes (DDP's `bf16_compress_hook`): each rank's gradient
    /// and the sum rounded to an 8-bit mantissa (≈ 0.4 %); the optimizer still sees f32.
    Bf16,
}

/// When the ranks of a data-parallel run exchange a step's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GradSync {
    /// During the last micro-batch's backward pass, each bucket as soon as its gradients are
    /// complete (DDP's overlap: the network works while the backward pass computes).
    #[default]
    Overlap,
    /// After the backward pass, all buckets at once (no hooks in the backward pass).
    AfterBackward,
}

/// One operation of RAM's `RandomAugment` (`ram/data/randaugment.py`), named as RAM's `augs` list
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AugOp {
    Identity,
    AutoContrast,
    Equalize,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    // In BLIP's full list (`func_dict`), not in RAM's training list.
    Solarize,
    Color,
    Contrast,
    Posterize,
}

impl AugOp {
    /// Every operation of BLIP's `RandomAugment` (its `func_dict`), all implemented.
    pub const ALL: [AugOp; 14] = [
        AugOp::Identity,
        AugOp::AutoContrast,
        AugOp::Equalize,
        AugOp::Brightness,
        AugOp::Sharpness,
        AugOp::ShearX,
        AugOp::ShearY,
        AugOp::TranslateX,
        AugOp::TranslateY,
        AugOp::Rotate,
        AugOp::Solarize,
        AugOp::Color,
        AugOp::Contrast,
        AugOp::Posterize,
    ];

    /// RAM's training list, in RAM's order (`transform_train` in `ram/data/__init__.py`).
    pub const RAM: [AugOp; 10] = [
        AugOp::Identity,
        AugOp::AutoContrast,
        AugOp::Brightness,
        AugOp::Sharpness,
        AugOp::Equalize,
        AugOp::ShearX,
        AugOp::ShearY,
        AugOp::TranslateX,
        AugOp::TranslateY,
        AugOp::Rotate,
    ];
}

/// RAM's `RandomAugment(N, M)` after the crop and flip: per image, `ops` operations are drawn
/// uniformly with replacement from `augs`, and each is applied with probability `prob` at magnitude
/// `magnitude` (of 10). RAM trains with `RandomAugment(2, 5, augs=[…10 ops…])`, the default here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomAugmentConfig {
    pub enabled: bool,
    /// Operations drawn per image (RAM's N).
    pub ops: usize,
    /// Magnitude on RAM's 0–10 scale (RAM's M): shear 0.3·M/10, translation M pixels, rotation
    /// 3·M degrees, brightness/sharpness/color/contrast factor 0.1 + 1.8·M/10 (1.0, i.e. unchanged,
    /// at M = 5), solarize threshold ⌊25.6·M⌋, posterize to ⌊0.4·M⌋ bits.
    pub magnitude: f64,
    /// Probability that a drawn operation is applied (RAM: 0.5).
    pub prob: f64,
    /// Operations drawn from.
    pub augs: Vec<AugOp>,
}

impl Default for RandomAugmentConfig {
    fn default() -> Self {
        RandomAugmentConfig {
            enabled: true,
            ops: 2,
            magnitude: 5.0,
            prob: 0.5,
            augs: AugOp::RAM.to_vec(),
        }
    }
}

impl RandomAugmentConfig {
    /// Refuses operation lists, counts and probabilities RandomAugment cannot run.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::RandomAugment(m));
        if !self.enabled {
            return Ok(());
        }
        if self.ops == 0 || self.ops > 16 {
            return bad(format!("ops must lie in 1..=16, got {}", self.ops));
        }
        if !(0.0..=10.0).contains(&self.magnitude) {
            return bad(format!(
                "magnitude must lie in [0, 10], got {}",
                self.magnitude
            ));
        }
        if !(0.0..=1.0).contains(&self.prob) {
            return bad(format!("prob must lie in [0, 1], got {}", self.prob));
        }
        if self.augs.is_empty() {
            return bad("augs is empty (set enabled = false to turn RandomAugment off)".into());
        }
        for (i, op) in self.augs.iter().enumerate() {
            if self.augs[..i].contains(op) {
                return bad(format!("augs lists {op:?} twice"));
            }
        }
        Ok(())
    }
}

/// How thoroughly `train` reads the images before the first step (`--check-images`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImageCheck {
    /// Decode every image: truncated or corrupt bodies are found before training, not at the step
    /// that loads them.
    Full,
    /// Read the headers only: missing files, unknown formats, zero or oversized dimensions.
    Header,
    /// Read nothing ahead: a bad image stops the run when its batch is loaded.
    None,
}

impl ImageCheck {
    /// Sets up to this many images are decoded in full by default; larger ones get headers only.
    pub const FULL_BY_DEFAULT_UP_TO: usize = 1_000_000;

    /// The check for a set of `images` when `--check-images` is not given.
    pub fn default_for(images: usize) -> Self {
        if images <= Self::FULL_BY_DEFAULT_UP_TO {
            ImageCheck::Full
        } else {
            ImageCheck::Header
        }
    }
}

/// What training (when a micro-batch is loaded) and `tagfix teacher` do with an image that cannot
/// be read (`--unreadable-images`); rebuilt web-scale sets hold a few truncated or vanished files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnreadableImages {
    /// Stop with an error naming the image and its record.
    #[default]
    Stop,
    /// Go on, each skip logged and counted. Training: the image's place in its micro-batch is
    /// taken by the next readable image of that micro-batch (with its own augmentation draw), and
    /// the check before the first step warns instead of refusing. `tagfix teacher`: the image's
    /// row is zeros, flagged in the file's `image_unreadable`.
    Skip,
}

/// How often a checkpoint is written: every `N >= 1` optimizer steps, every interval of wall-clock
/// time (`30m`, `2h`, `1h 30m`: what a cluster's preemptions cost is time, not steps), or `off`
/// (only the final checkpoint). 0 is refused rather than read as "never", so that turning
/// checkpoints off is a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum CheckpointEvery {
    Steps(u64),
    /// After the first step that ends this long after the loop's start or the last periodic
    /// checkpoint (ranks agree through the step's summed votes).
    Interval(std::time::Duration),
    Off,
}

impl CheckpointEvery {
    /// Whether a step count asks for a checkpoint after `done` steps.
    pub fn due(self, done: u64) -> bool {
        matches!(self, CheckpointEvery::Steps(n) if done % n == 0)
    }

    /// The wall-clock interval, when checkpoints follow the time.
    pub fn interval(self) -> Option<std::time::Duration> {
        match self {
            CheckpointEvery::Interval(d) => Some(d),
            _ => None,
        }
    }
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        const ZERO: &str = "checkpoint_every (--checkpoint-every) must be >= 1 step or a positive duration, or `off` for only the final checkpoint";
        match s.trim() {
            "off" => Ok(CheckpointEvery::Off),
            n => match (n.parse::<u64>(), humantime::parse_duration(n)) {
                (Ok(0), _) => Err(ZERO.into()),
                (Ok(n), _) => Ok(CheckpointEvery::Steps(n)),
                (Err(_), Ok(d)) if d.is_zero() => Err(ZERO.into()),
                (Err(_), Ok(d)) => Ok(CheckpointEvery::Interval(d)),
                (Err(_), Err(e)) => Err(format!(
                    "checkpoint_every (--checkpoint-every): `{n}` is neither a number of steps, a duration (`30m`, `2h`: {e}) nor `off`"
                )),
            },
        }
    }
}

impl TryFrom<serde_json::Value> for CheckpointEvery {
    type Error = String;
    fn try_from(v: serde_json::Value) -> std::result::Result<Self, String> {
        number_or_word(
            &v,
            "checkpoint_every (--checkpoint-every)",
            "a number of steps, a duration nor `off`",
        )
    }
}

/// A setting that is a whole number or a word (`off`, `auto`), read as its flag reads it: a string
/// as given, a number (YAML's numbers in strings arrive as floats, see `TrainConfig::load`) as its
/// integer's text. Other values fail naming `setting` and the `expected` forms ("neither …").
fn number_or_word<T: std::str::FromStr<Err = String>>(
    v: &serde_json::Value,
    setting: &str,
    expected: &str,
) -> std::result::Result<T, String> {
    match v {
        serde_json::Value::String(s) => s.parse(),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => n.to_string().parse(),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1e19 => {
                (f as u64).to_string().parse()
            }
            _ => Err(format!("{setting}: {n} is neither {expected}")),
        },
        other => Err(format!("{setting}: {other} is neither {expected}")),
    }
}

impl From<CheckpointEvery> for serde_json::Value {
    fn from(c: CheckpointEvery) -> Self {
        match c {
            CheckpointEvery::Steps(n) => n.into(),
            CheckpointEvery::Interval(d) => humantime::format_duration(d).to_string().into(),
            CheckpointEvery::Off => "off".into(),
        }
    }
}

impl std::fmt::Display for CheckpointEvery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointEvery::Steps(n) => write!(f, "{n}"),
            CheckpointEvery::Interval(d) => write!(f, "{}", humantime::format_duration(*d)),
            CheckpointEvery::Off => f.write_str("off"),
        }
    }
}

/// Images per forward/backward pass: a number, or `auto`, the largest divisor of the per-rank batch
/// whose forward and backward pass fit the device's memory (the whole per-rank batch on the CPU),
/// found once when training starts; the run's `config.toml` records the number chosen, so
/// `--resume` continues with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum MicroBatchSize {
    Images(usize),
    Auto,
}

impl From<usize> for MicroBatchSize {
    fn from(n: usize) -> Self {
        MicroBatchSize::Images(n)
    }
}

impl std::str::FromStr for MicroBatchSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(MicroBatchSize::Auto),
            n => n.parse().map(MicroBatchSize::Images).map_err(|_| {
                format!("micro_batch_size (--micro-batch-size): `{n}` is neither a number of images nor `auto`")
            }),
        }
    }
}

impl TryFrom<serde_json::Value> for MicroBatchSize {
    type Error = String;
    fn try_from(v: serde_json::Value) -> std::result::Result<Self, String> {
        number_or_word(
            &v,
            "micro_batch_size (--micro-batch-size)",
            "a number of images nor `auto`",
        )
    }
}

impl From<MicroBatchSize> for serde_json::Value {
    fn from(m: MicroBatchSize) -> Self {
        match m {
            MicroBatchSize::Images(n) => n.into(),
            MicroBatchSize::Auto => "auto".into(),
        }
    }
}

impl std::fmt::Display for MicroBatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MicroBatchSize::Images(n) => write!(f, "{n}"),
            MicroBatchSize::Auto => f.write_str("auto"),
        }
    }
}
