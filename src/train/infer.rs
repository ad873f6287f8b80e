//! Inference with a RAM++ checkpoint — the official `.pth`, a tagfix training checkpoint or any
//! safetensors state dict: which model it holds, loading it with the same report as `train`, RAM's
//! inference transform, and batched scoring of image files. Used by `tagfix tag`,
//! `tagfix eval --checkpoint` and `tagfix export`.

use super::model::{ParamInit, RamPlus, RamPlusConfig};
use super::run_files::{newest_whole_model, WholeModel};
use super::weights::{self, LoadOptions};
use crate::checkpoint::inspect::fit_presets;
use crate::checkpoint::keymap::{checkpoint_keys, LoadReport};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::Thresholds;
use crate::imaging::{normalize_chw, pil_resize, PilFilter};
use crate::manifest::SlotManifest;
use crate::tensors::{self, EmbeddingFile, Layout, Provenance, TensorSet};
use crate::vocab::{parse_lines, Vocabulary};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Why a checkpoint cannot be loaded for inference, or its inputs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{path}: checkpoint not found")]
    NoCheckpoint { path: PathBuf },

    #[error("{path}: folder holds neither model.safetensors nor a training run's checkpoints/")]
    NotACheckpointFolder { path: PathBuf },

    #[error("{path}: no complete checkpoint (step-*/model.safetensors)")]
    NoCompleteCheckpoint { path: PathBuf },

    #[error(
        "{path}: has no `label_embed` [rows, dim]: not a RAM++ state dict (a bare Swin encoder cannot tag)"
    )]
    NoLabelEmbed { path: PathBuf },

    #[error(
        "{path}: label_embed has {rows} rows, not a multiple of {tags} tags (model `{model}`): pass the vocabulary it was trained with"
    )]
    RowsForModel {
        path: PathBuf,
        rows: usize,
        tags: usize,
        model: String,
    },

    #[error("model `tiny` needs the vocabulary (--vocab) for its tag count")]
    TinyNeedsVocabulary,

    #[error(
        "{path}: label_embed has {rows} rows, not a multiple of the vocabulary's {tags} tags: pass the vocabulary \
         the checkpoint was trained with (--vocab), or name the model with --model"
    )]
    RowsForVocabulary {
        path: PathBuf,
        rows: usize,
        tags: usize,
    },

    #[error(
        "{path}: fits no model preset completely (best: {}); name the model with --model (a preset, `tiny` or a reference config.json)",
        .tried.join("; ")
    )]
    NoPresetFits { path: PathBuf, tried: Vec<String> },

    /// `report` is the load table (one line per mismatch).
    #[error("{path}: does not fit model `{model}` ({tags} tags × {descriptions} descriptions):\n{report}")]
    DoesNotFit {
        path: PathBuf,
        model: String,
        tags: usize,
        descriptions: usize,
        report: String,
    },

    #[error("{path}: {names} names for a vocabulary of {slots} slots")]
    NameCount {
        path: PathBuf,
        names: usize,
        slots: usize,
    },

    #[error("reading the scores")]
    Scores(#[source] tch::TchError),

    /// libtorch failed while scoring a batch (out of memory, most often).
    #[error("scoring {images} images at once: libtorch failed: {failure}{}",
            if .failure.out_of_memory { ". A smaller --batch-size needs less memory" } else { "" })]
    Scoring {
        images: usize,
        failure: crate::train::failure::LibtorchFailure,
    },

    /// Open-set label embeddings made by tagfix for another vocabulary than `--vocab`.
    #[error(
        "{path}: label embeddings of another vocabulary ({embed_tags} tags, sha256 {embed_sha}) than \
         {vocab} ({vocab_tags} tags, sha256 {vocab_sha}): pass the tag list they were embedded from"
    )]
    OpenSetVocabulary {
        path: PathBuf,
        embed_sha: String,
        embed_tags: usize,
        vocab: PathBuf,
        vocab_sha: String,
        vocab_tags: usize,
    },

    /// Open-set label embeddings of another width than the checkpoint's.
    #[error(
        "{path}: label embeddings of width {dim}, but the checkpoint's label_embed ({checkpoint}) is \
         {expected} wide: embed the tags with the text model the checkpoint was trained with (RAM++: CLIP \
         ViT-B/16's text tower, `tagfix embed --model clip`)"
    )]
    OpenSetWidth {
        path: PathBuf,
        dim: usize,
        checkpoint: PathBuf,
        expected: usize,
    },

    /// libtorch failed while building the model or loading its weights.
    #[error("{path}: loading the model: libtorch failed: {failure}")]
    Loading {
        path: PathBuf,
        failure: crate::train::failure::LibtorchFailure,
    },
}

impl InferError {
    /// A `tiny` model without its vocabulary is a usage error; libtorch failing is internal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InferError::TinyNeedsVocabulary => ErrorKind::Usage,
            InferError::Scores(_) => ErrorKind::Internal,
            InferError::Scoring { failure, .. } | InferError::Loading { failure, .. } => {
                match failure.out_of_memory {
                    true => ErrorKind::Environment,
                    false => ErrorKind::Internal,
                }
            }
            _ => ErrorKind::Input,
        }
    }
}

/// ImageNet mean and std, as RAM's `get_transform` normalises (training uses CLIP's instead).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How a whole image becomes the model's input: `Resize((S, S))` with a PIL filter (reproduced to
/// the bit by [`pil_resize`]), `ToTensor`, `Normalize(mean, std)`, as CHW floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputTransform {
    pub filter: PilFilter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputTransform {
    /// RAM's inference transform (`ram/transform.py` `get_transform(S)`): bilinear, as
    /// torchvision's `Resize` on a PIL image, and ImageNet's mean and std (`tag`, `eval --checkpoint`).
    pub const OFFICIAL: InputTransform = InputTransform {
        filter: PilFilter::Bilinear,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };

    /// The transform into `out` (3·S·S values) at side `size`.
    pub fn apply(&self, img: &RgbImage, size: u32, out: &mut [f32]) {
        normalize_chw(
            &pil_resize(img, size, size, self.filter),
            &self.mean,
            &self.std,
            out,
        );
    }
}

/// The state-dict file behind `path` (the file itself, `model.safetensors` of a tagfix checkpoint
/// folder, or the newest checkpoint of a training run folder), checked against the `SHA256SUMS`
/// beside it where that lists it: a checkpoint whose bytes changed on the disk is refused rather
/// than evaluated.
pub fn checkpoint_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(InferError::NoCheckpoint { path: path.into() }.into());
        }
        verify_in_checkpoint_folder(path)?;
        return Ok(path.to_path_buf());
    }
    let direct = path.join("model.safetensors");
    if direct.is_file() {
        verify_in_checkpoint_folder(&direct)?;
        return Ok(direct);
    }
    let ckpts = path.join("checkpoints");
    if !ckpts.is_dir() {
        return Err(InferError::NotACheckpointFolder { path: path.into() }.into());
    }
    newest_model_of_run(&ckpts)
}

/// Checks `file` against the `SHA256SUMS` beside it when its folder is a tagfix checkpoint (it has
/// a `state.json`): that list is tagfix's own, so a list that does not read is damage. A list in
/// another folder (a download mirror's, perhaps in another format) is not tagfix's to judge.
fn verify_in_checkpoint_folder(file: &Path) -> Result<()> {
    let checkpoint = file
        .parent()
        .is_some_and(|dir| dir.join("state.json").is_file());
    if checkpoint {
        crate::fsutil::checksums::verify_file(file)?;
    }
    Ok(())
}

/// A run's newest checkpoint whose model is whole ([`newest_whole_model`]), warning of each newer
/// one passed over: the run's latest good model, as a resume continues from its latest good
/// checkpoint.
fn newest_model_of_run(ckpts: &Path) -> Result<PathBuf> {
    let Some(WholeModel { file, skipped }) = newest_whole_model(ckpts)? else {
        return Err(InferError::NoCompleteCheckpoint {
            path: ckpts.to_path_buf(),
        }
        .into());
    };
    for (dir, why) in &skipped {
        tracing::warn!(
            "{}: its model is not whole ({why}); passed over for {}",
            dir.display(),
            file.display()
        );
    }
    Ok(file)
}

/// Label embeddings of new tags in place of the checkpoint's: RAM++'s open-set inference
/// (`inference_ram_plus_openset.py` sets `model.label_embed` to `build_openset_llm_label_embedding`'s
/// rows — CLIP text embeddings of each new tag's LLM descriptions — and `num_class` to their count).
/// In RAM++ only `label_embed` is per tag (`fc` scores any query, each tag's descriptions are
/// weighted among themselves), so the rest of any checkpoint serves any vocabulary.
#[derive(Debug, Clone)]
pub struct OpenSet {
    pub embeddings: EmbeddingFile,
    pub layout: Layout,
}

impl OpenSet {
    /// Reads the label embeddings at `path` for the tags of `vocab`: a whole number of rows per tag
    /// (one, or one per description as `tagfix embed --descriptions` writes them); refused when
    /// tagfix's provenance names another vocabulary.
    pub fn read(path: &Path, vocab: &Vocabulary) -> Result<Self> {
        let embeddings = EmbeddingFile::read(path, None)?;
        let layout = Layout::detect(embeddings.rows, vocab.len(), path)?;
        if let Some(p) = Provenance::from_metadata(&embeddings.metadata, path)? {
            if !p.vocabulary_sha256.is_empty() && p.vocabulary_sha256 != vocab.sha256 {
                return Err(InferError::OpenSetVocabulary {
                    path: path.into(),
                    embed_sha: p.vocabulary_sha256,
                    embed_tags: p.tag_count,
                    vocab: vocab.path.clone(),
                    vocab_sha: vocab.sha256.clone(),
                    vocab_tags: vocab.len(),
                }
                .into());
            }
        }
        Ok(OpenSet { embeddings, layout })
    }

    /// Puts these embeddings in the place of `set`'s `label_embed` (read from `checkpoint`), which
    /// they must match in width.
    fn replace_in(&self, set: &mut TensorSet, checkpoint: &Path) -> Result<()> {
        let e = &self.embeddings;
        let (_, expected) = label_embed_shape(set).ok_or_else(|| InferError::NoLabelEmbed {
            path: checkpoint.into(),
        })?;
        if e.dim != expected {
            return Err(InferError::OpenSetWidth {
                path: e.path.clone(),
                dim: e.dim,
                checkpoint: checkpoint.into(),
                expected,
            }
            .into());
        }
        let tensor = tensors::Tensor::from_f32(vec![e.rows, e.dim], &e.values)?;
        if let Some((_, t)) = set
            .tensors
            .iter_mut()
            .find(|(n, _)| n.trim_start_matches("module.") == "label_embed")
        {
            *t = tensor;
        }
        Ok(())
    }
}

/// Shape of the checkpoint's `label_embed` (DDP prefix ignored).
fn label_embed_shape(set: &TensorSet) -> Option<(usize, usize)> {
    set.tensors
        .iter()
        .find(|(n, _)| n.trim_start_matches("module.") == "label_embed")
        .and_then(|(_, t)| (t.shape.len() == 2).then(|| (t.shape[0], t.shape[1])))
}

/// `cfg` for a vocabulary of `num_class` tags with the checkpoint's description rows per tag.
fn with_classes(mut cfg: RamPlusConfig, num_class: usize, rows: usize) -> Option<RamPlusConfig> {
    if num_class == 0 || rows % num_class != 0 {
        return None;
    }
    cfg.num_class = num_class;
    cfg.des_per_class = rows / num_class;
    Some(cfg)
}

/// The model a checkpoint holds. `spec` names it (a preset such as `swin_l_384`, `tiny`, or a
/// reference `config.json`); without it the presets (and `tiny`) are fitted to the checkpoint's
/// keys and the first that loads completely is taken. `num_class` is the vocabulary's size
/// (default: the preset's, 4585); the description rows per tag follow from `label_embed`.
pub fn resolve_model(
    spec: Option<&str>,
    set: &TensorSet,
    source: &Path,
    num_class: Option<usize>,
) -> Result<RamPlusConfig> {
    let (rows, dim) = label_embed_shape(set).ok_or_else(|| InferError::NoLabelEmbed {
        path: source.into(),
    })?;
    let fit_classes = |cfg: RamPlusConfig| {
        let n = num_class.unwrap_or(cfg.num_class);
        let name = cfg.name.clone();
        with_classes(cfg, n, rows).ok_or_else(|| {
            Error::from(InferError::RowsForModel {
                path: source.into(),
                rows,
                tags: n,
                model: name,
            })
        })
    };
    let tiny = |n: usize| RamPlusConfig::tiny(n, 1).with_joint_dim(dim);
    if let Some(spec) = spec {
        let cfg = match spec {
            "tiny" => tiny(num_class.ok_or(InferError::TinyNeedsVocabulary)?),
            s if s.ends_with(".json") => RamPlusConfig::from_reference_json(Path::new(s))?,
            s => RamPlusConfig::preset(s)?,
        };
        return fit_classes(cfg);
    }
    let mut candidates: Vec<RamPlusConfig> = RamPlusConfig::presets()
        .into_iter()
        .filter_map(|c| {
            let n = num_class.unwrap_or(c.num_class);
            with_classes(c, n, rows)
        })
        .collect();
    if let Some(c) = num_class.and_then(|n| with_classes(tiny(n), n, rows)) {
        candidates.push(c);
    }
    if candidates.is_empty() {
        return Err(InferError::RowsForVocabulary {
            path: source.into(),
            rows,
            tags: num_class.unwrap_or(super::model::config::RAM_NUM_CLASS),
        }
        .into());
    }
    let keys = checkpoint_keys(set);
    let fits = fit_presets(&source.display().to_string(), &keys, &candidates);
    if let Some(best) = fits.iter().find(|f| loads_every_parameter(&f.report)) {
        let name = &best.preset;
        return Ok(candidates
            .into_iter()
            .find(|c| &c.name == name)
            .expect("fitted candidate"));
    }
    let tried: Vec<String> = fits
        .iter()
        .take(3)
        .map(|f| {
            format!(
                "{}: {} of {} parameters, {} shape mismatches",
                f.preset,
                f.report.loaded,
                f.report.expected,
                f.report.shape_mismatched.len()
            )
        })
        .collect();
    Err(InferError::NoPresetFits {
        path: source.into(),
        tried,
    }
    .into())
}

/// Every model parameter comes from the checkpoint with its shape (extra checkpoint tensors are
/// ignored, as the official loaders' `strict=False` does; they stay listed in the report).
fn loads_every_parameter(r: &LoadReport) -> bool {
    r.missing.is_empty() && r.shape_mismatched.is_empty()
}

/// A model loaded from a checkpoint, in eval mode.
pub struct LoadedModel {
    pub vs: VarStore,
    pub model: RamPlus,
    pub config: RamPlusConfig,
    /// What the load did (the same table `train` prints).
    pub report: LoadReport,
    /// The state-dict file read.
    pub checkpoint: PathBuf,
    pub device: Device,
}

/// Reads `path` (see [`checkpoint_file`]), resolves its model and loads every parameter; a
/// checkpoint that leaves a parameter missing or has a tensor of the wrong shape is refused with
/// the load report (bias tables of another window are resized, as `train` loads them). With
/// `open_set`, its label embeddings replace the checkpoint's (`num_class`: its vocabulary's size).
pub fn load_model(
    path: &Path,
    spec: Option<&str>,
    num_class: Option<usize>,
    open_set: Option<&OpenSet>,
    device: Device,
) -> Result<LoadedModel> {
    let file = checkpoint_file(path)?;
    let mut set = tensors::read_any(&file)?;
    if let Some(o) = open_set {
        o.replace_in(&mut set, &file)?;
    }
    let config = resolve_model(spec, &set, &file, num_class)?;
    let vs = VarStore::new(device);
    // Building the model and copying its weights to the device allocate all of its memory.
    let built = || -> Result<_> {
        let model = RamPlus::new(&vs, &config, ParamInit::Uninitialized)?;
        let source = file.display().to_string();
        let report = weights::load_tensor_set(&vs, &source, &set, &LoadOptions::lenient())?;
        Ok((model, report))
    };
    let (model, report) = crate::train::failure::catch_or(built, |failure| {
        InferError::Loading {
            path: file.clone(),
            failure,
        }
        .into()
    })?;
    if !loads_every_parameter(&report) {
        return Err(InferError::DoesNotFit {
            model: config.name,
            tags: config.num_class,
            descriptions: config.des_per_class,
            report: report.to_table(),
            path: file,
        }
        .into());
    }
    Ok(LoadedModel {
        vs,
        model,
        config,
        report,
        checkpoint: file,
        device,
    })
}

impl LoadedModel {
    /// How many batches `tag` and `eval` decode ahead of this model ([`crate::prefetch::batches_ahead`]:
    /// libtorch's threads on the CPU, none of the cores on a GPU).
    pub fn batches_ahead(&self) -> usize {
        crate::prefetch::batches_ahead(model_threads(self.device))
    }

    /// The model's input side S (images are S×S).
    pub fn input_size(&self) -> u32 {
        self.config.swin.img_size as u32
    }

    /// Probabilities [B·num_class] (row-major) of `b` transformed images (`pixels`: B·3·S·S); a
    /// libtorch failure (a batch too large for the memory) is an error, not a panic.
    pub fn score_pixels(&self, pixels: &[f32], b: usize) -> Result<Vec<f32>> {
        crate::train::failure::catch_or(
            || self.score_batch(pixels, b),
            |failure| InferError::Scoring { images: b, failure }.into(),
        )
    }

    /// [`LoadedModel::score_pixels`]'s work.
    fn score_batch(&self, pixels: &[f32], b: usize) -> Result<Vec<f32>> {
        let s = i64::from(self.input_size());
        let x = Tensor::from_slice(pixels)
            .view([b as i64, 3, s, s])
            .to_device(self.device);
        let probs = self.model.tag_probabilities(&x)?;
        let flat = probs
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .reshape([-1]);
        Ok(Vec::try_from(&flat).map_err(InferError::Scores)?)
    }

    /// Decodes `paths` in parallel, applies [`InputTransform::OFFICIAL`] and scores the readable images
    /// in one batch: per path, its probabilities [num_class] or why it could not be read.
    pub fn score_files(&self, paths: &[PathBuf]) -> Result<Vec<Result<Vec<f32>>>> {
        self.score_decoded(decode_batch(
            paths,
            self.input_size(),
            &InputTransform::OFFICIAL,
        ))
    }

    /// [`LoadedModel::score_files`] over `items` (`path` gives each one's image file) in batches of
    /// `batch`, batch k + 1 decoded while batch k is scored when `ahead` is 1 or more
    /// ([`crate::prefetch::in_order`]; 0 decodes and scores one after the other). `consume` gets each
    /// batch's items and their results, in order; its error, or a scoring failure, stops the scoring.
    pub fn score_files_ahead<T: Sync, E: From<Error>>(
        &self,
        items: &[T],
        path: impl Fn(&T) -> &Path + Sync,
        batch: usize,
        ahead: usize,
        mut consume: impl FnMut(&[T], Vec<Result<Vec<f32>>>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let side = self.input_size();
        let chunks: Vec<&[T]> = items.chunks(batch.max(1)).collect();
        crate::prefetch::in_order(
            chunks.len(),
            ahead,
            |k| {
                let paths: Vec<&Path> = chunks[k].iter().map(&path).collect();
                decode_batch(&paths, side, &InputTransform::OFFICIAL)
            },
            |k, decoded| consume(chunks[k], self.score_decoded(decoded)?),
        )
    }

    /// Scores the readable images of a [`decode_batch`] in one batch: per image, its probabilities
    /// `[num_class]` or why it could not be read.
    pub fn score_decoded(&self, decoded: Vec<Result<Vec<f32>>>) -> Result<Vec<Result<Vec<f32>>>> {
        let ok: Vec<&Vec<f32>> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut scores = if ok.is_empty() {
            Vec::new()
        } else {
            let pixels: Vec<f32> = ok.iter().flat_map(|v| v.iter().copied()).collect();
            self.score_pixels(&pixels, ok.len())?
        }
        .into_iter();
        let nc = self.config.num_class;
        Ok(decoded
            .into_iter()
            .map(|r| r.map(|_| scores.by_ref().take(nc).collect()))
            .collect())
    }
}

/// The CPU threads a libtorch model on `device` computes with; `None` on a GPU.
pub fn model_threads(device: Device) -> Option<usize> {
    (device == Device::Cpu).then(|| usize::try_from(tch::get_num_threads()).unwrap_or(1))
}

/// Decodes `paths` in parallel (rayon's threads) and applies `transform` at `side`: per path, its
/// pixels `[3·side·side]` or why it could not be read.
pub fn decode_batch<P: AsRef<Path> + Sync>(
    paths: &[P],
    side: u32,
    transform: &InputTransform,
) -> Vec<Result<Vec<f32>>> {
    let per = 3 * (side * side) as usize;
    paths
        .par_iter()
        .map(|p| {
            let img = crate::imaging::decode(p.as_ref())?;
            let mut buf = vec![0f32; per];
            transform.apply(&img, side, &mut buf);
            Ok(buf)
        })
        .collect()
}

/// What `tag` shows beside a slot's score: its names, threshold and whether the training data
/// lacked it (its label embedding regenerated).
#[derive(Debug, Clone)]
pub struct SlotLabels {
    pub tags: Vec<String>,
    /// Chinese names (the vocabulary's `zh` sidecar), when known.
    pub zh: Option<Vec<String>>,
    pub thresholds: Thresholds,
    /// Per slot: absent from the training data per the slot manifest.
    pub absent: Vec<bool>,
}

/// One slot's prediction for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub slot: usize,
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zh: Option<String>,
    pub score: f32,
    pub threshold: f32,
    /// `score > threshold` (strict, as `generate_tag`).
    pub above: bool,
    /// The slot is absent from the training data: the prediction rests on a regenerated embedding.
    pub absent: bool,
}

impl SlotLabels {
    /// Names from `vocab`, Chinese names from `zh` (else the preset's `zh` sidecar), absent slots
    /// from `manifest`.
    pub fn new(
        vocab: &Vocabulary,
        zh: Option<&Path>,
        thresholds: Thresholds,
        manifest: Option<&SlotManifest>,
    ) -> Result<Self> {
        let sidecar = vocab.preset.as_ref().and_then(|p| {
            p.sidecars
                .iter()
                .find(|(n, _)| n == "zh")
                .map(|(_, path)| path.clone())
        });
        let zh = match zh.map(Path::to_path_buf).or(sidecar) {
            Some(path) => {
                let bytes = crate::fsutil::read(&path).map_err(|e| Error::io(&path, e))?;
                let names = parse_lines(&path, &bytes)?;
                if names.len() != vocab.len() {
                    return Err(InferError::NameCount {
                        path,
                        names: names.len(),
                        slots: vocab.len(),
                    }
                    .into());
                }
                Some(names)
            }
            None => None,
        };
        let mut absent = vec![false; vocab.len()];
        if let Some(m) = manifest {
            for s in m.absent_slots() {
                absent[s] = true;
            }
        }
        Ok(SlotLabels {
            tags: vocab.tags.clone(),
            zh,
            thresholds,
            absent,
        })
    }

    fn prediction(&self, slot: usize, score: f32) -> Prediction {
        let threshold = self.thresholds.values[slot];
        Prediction {
            slot,
            tag: self.tags[slot].clone(),
            zh: self.zh.as_ref().map(|z| z[slot].clone()),
            score,
            threshold,
            above: score > threshold,
            absent: self.absent[slot],
        }
    }

    /// One image's predictions, best first: the slots above their thresholds, or with `top_k` the
    /// k best-scoring slots whether above or not.
    pub fn predictions(&self, row: &[f32], top_k: Option<usize>) -> Vec<Prediction> {
        let mut out: Vec<Prediction> = row
            .iter()
            .enumerate()
            .map(|(slot, &score)| self.prediction(slot, score))
            .filter(|p| top_k.is_some() || p.above)
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.slot.cmp(&b.slot)));
        if let Some(k) = top_k {
            out.truncate(k);
        }
        out
    }
}

/// `generate_tag`'s strings: the tags above their thresholds in slot order joined with " | ", in
/// English and (when known) Chinese.
pub fn tag_strings(preds: &[Prediction]) -> (String, Option<String>) {
    let mut above: Vec<&Prediction> = preds.iter().filter(|p| p.above).collect();
    above.sort_by_key(|p| p.slot);
    let en = above
        .iter()
        .map(|p| p.tag.as_str())
        .collect::<Vec<_>>()
        .join(" | ");
    let zh = above
        .iter()
        .map(|p| p.zh.as_deref())
        .collect::<Option<Vec<_>>>()
        .map(|v| v.join(" | "));
    (en, zh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_whose_bytes_changed_is_refused() {
        use crate::train::run_files::tests::write_checkpoint;
        let run = tempfile::tempdir().unwrap();
        let step = |n: u64| run.path().join(format!("checkpoints/step-{n:08}"));
        write_checkpoint(&step(2), 2);
        let model = step(2).join("model.safetensors");
        for path in [run.path(), &step(2), &model] {
            assert_eq!(checkpoint_file(path).unwrap(), model);
        }
        let mut bytes = std::fs::read(&model).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&model, bytes).unwrap();
        for path in [run.path(), &step(2), &model] {
            let e = crate::error::report(&checkpoint_file(path).unwrap_err());
            assert!(e.contains("its bytes changed"), "{e}");
        }
        // A run folder takes its newest whole model; a damaged newer one is passed over.
        write_checkpoint(&step(1), 1);
        assert_eq!(
            checkpoint_file(run.path()).unwrap(),
            step(1).join("model.safetensors")
        );
        // Without a list (written by another tool or an earlier tagfix) a model is taken as it is.
        std::fs::remove_file(step(2).join("SHA256SUMS")).unwrap();
        assert_eq!(checkpoint_file(run.path()).unwrap(), model);
        // A file beside a list tagfix did not write (BSD's format here) is not judged by it.
        let elsewhere = tempfile::tempdir().unwrap();
        let pth = elsewhere.path().join("ram_plus_swin_large_14m.pth");
        std::fs::write(&pth, b"weights").unwrap();
        std::fs::write(
            elsewhere.path().join("SHA256SUMS"),
            b"SHA256 (x.pth) = 00\n",
        )
        .unwrap();
        assert_eq!(checkpoint_file(&pth).unwrap(), pth);
    }

    #[test]
    fn transform_normalises_with_imagenet_statistics() {
        // A 2×2 image at the model's size is only normalised: (x/255 − mean)/std per channel.
        let img = RgbImage::from_fn(2, 2, |x, y| {
            image::Rgb([(x * 100) as u8, (y * 200) as u8, 51])
        });
        let mut out = vec![0f32; 12];
        InputTransform::OFFICIAL.apply(&img, 2, &mut out);
        let r = |v: f32| (v / 255.0 - 0.485) / 0.229;
        let g = |v: f32| (v / 255.0 - 0.456) / 0.224;
        let b = (51.0 / 255.0 - 0.406) / 0.225;
        assert_eq!(&out[0..4], &[r(0.0), r(100.0), r(0.0), r(100.0)]);
        assert_eq!(&out[4..8], &[g(0.0), g(0.0), g(200.0), g(200.0)]);
        assert_eq!(&out[8..12], &[b; 4]);
    }

    #[test]
    fn transform_downscales_like_pil_bilinear() {
        // 4×4 → 2×2 with columns 0, 70, 140, 210 (rows equal). PIL's antialiased bilinear at scale
        // 2 has support 2: output column 0 (centre 1.0) takes input columns 0, 1, 2 with triangle
        // weights 0.75, 0.75, 0.25 (sum 1.75) -> (0.75·70 + 0.25·140)/1.75 = 50; column 1
        // (centre 3.0) takes 1, 2, 3 with 0.25, 0.75, 0.75 -> (17.5 + 105 + 157.5)/1.75 = 160.
        // (In PIL's 22-bit fixed point: 50.499… and 160.499…, truncated after adding one half.)
        let img = RgbImage::from_fn(4, 4, |x, _| {
            let v = (x * 70) as u8;
            image::Rgb([v, v, v])
        });
        let mut out = vec![0f32; 12];
        InputTransform::OFFICIAL.apply(&img, 2, &mut out);
        let r = |v: f32| (v / 255.0 - 0.485) / 0.229;
        let b = |v: f32| (v / 255.0 - 0.406) / 0.225;
        assert_eq!(&out[0..4], &[r(50.0), r(160.0), r(50.0), r(160.0)]);
        assert_eq!(&out[8..12], &[b(50.0), b(160.0), b(50.0), b(160.0)]);
    }

    #[test]
    fn predictions_above_thresholds_best_first_and_generate_tag_strings() {
        let vocab = Vocabulary::from_tags(["cat", "dog", "sky"].map(String::from).to_vec());
        let labels = SlotLabels {
            zh: Some(["猫", "狗", "天空"].map(String::from).to_vec()),
            absent: vec![false, true, false],
            ..SlotLabels::new(&vocab, None, Thresholds::uniform(0.5, 3), None).unwrap()
        };
        let p = labels.predictions(&[0.6, 0.9, 0.5], None);
        // 0.5 is not above 0.5 (strict, as generate_tag); best first.
        assert_eq!(
            p.iter().map(|p| (p.slot, p.absent)).collect::<Vec<_>>(),
            vec![(1, true), (0, false)]
        );
        assert_eq!(
            tag_strings(&p),
            ("cat | dog".to_string(), Some("猫 | 狗".to_string()))
        );
        let top = labels.predictions(&[0.6, 0.9, 0.5], Some(3));
        assert_eq!(top.len(), 3);
        assert!(!top[2].above && top[2].tag == "sky");
    }
}
