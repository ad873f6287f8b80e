//! Validation inside the training loop: every `val_every` steps the model scores a held-out set in
//! eval mode and [`crate::eval::evaluate`] turns the scores into mAP and precision / recall / F1 at
//! the per-class thresholds, appended to `RUN_DIR/validation.jsonl`.
//!
//! The set is either a benchmark in the official format (a folder with `*_taglist.txt` and
//! `*_annots.txt`; tags mapped to slots by name) or a RAM-format annotation file (records with
//! `image_path` and `union_label_id`, slots used as they are). Images are resized to the model's
//! input (bilinear, as RAM's inference transform `Resize((S, S))`) without augmentation.

use super::data::augment;
use super::model::RamPlus;
pub use super::run_files::ValidationInputs;
use crate::error::{Error, Result};
use crate::eval::{
    evaluate, gather_columns, Benchmark, EvalReport, LabelForm, MappedTag, MatchKind, TagMapping,
    Thresholds,
};
use crate::imaging::PilFilter;
use crate::manifest::SlotManifest;
use crate::share::WorkShare;
use crate::train::config::UnreadableImages;
use crate::train::error::TrainError;
use crate::train::infer::{decode_batch, InputTransform};
use crate::vocab::Vocabulary;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A loaded validation set, its images checked.
#[derive(Debug)]
pub struct ValidationSet {
    pub bench: Benchmark,
    pub mapping: TagMapping,
    pub vocab: Vocabulary,
    pub thresholds: Thresholds,
    pub manifest: SlotManifest,
    /// Image file of each benchmark image.
    pub image_paths: Vec<PathBuf>,
    /// What an image that cannot be read at a validation (its header read at the start) does: stops
    /// the run, or (`skip`) is left out of that validation, counted in its record.
    pub unreadable: UnreadableImages,
}

/// A validation's evaluation and the images left out of it (`unreadable_images = "skip"`).
#[derive(Debug)]
pub struct Validated {
    pub report: EvalReport,
    pub left_out: usize,
}

impl ValidationSet {
    /// Loads the set, keeps its first `max_images` images when given, and opens the header of each
    /// of `share`'s images (so a missing image fails before the first step; a distributed run's ranks
    /// split that check, as they split the training images'), even under `unreadable` = `skip`: a
    /// held-out set that lost images no longer measures what earlier runs measured, so it is mended
    /// or cut on purpose before a run. `skip` applies to an image that fails later, at a validation.
    pub fn open(
        inputs: &ValidationInputs,
        train_images: &Path,
        vocab: Vocabulary,
        manifest: SlotManifest,
        max_images: Option<usize>,
        share: WorkShare,
        unreadable: UnreadableImages,
    ) -> Result<Self> {
        let root = inputs.images.as_deref().unwrap_or(train_images);
        if !root.is_dir() {
            return Err(TrainError::NotAFolder {
                path: root.to_path_buf(),
                what: "validation image root",
            }
            .into());
        }
        let (mut bench, mapping) = if inputs.data.is_dir() {
            let bench = Benchmark::from_dir(&inputs.data)?;
            let mapping = TagMapping::new(&bench.tags, &vocab);
            (bench, mapping)
        } else {
            from_records(&inputs.data, &vocab)?
        };
        if let Some(n) = max_images {
            bench.images.truncate(n);
            bench.labels.truncate(n);
        }
        if bench.images.is_empty() {
            return Err(TrainError::NoValidationImages(inputs.data.clone()).into());
        }
        if mapping.mapped().is_empty() {
            return Err(TrainError::NoValidationTags {
                path: inputs.data.clone(),
                tags: bench.tags.len(),
            }
            .into());
        }
        let thresholds = match &inputs.thresholds {
            Some(p) => Thresholds::read(p, vocab.len())?,
            None => match Thresholds::from_preset(&vocab) {
                Some(t) => t?,
                None => Thresholds {
                    source: "0.5 for every slot (no threshold file given)".into(),
                    ..Thresholds::uniform(0.5, vocab.len())
                },
            },
        };
        let image_paths: Vec<PathBuf> = (0..bench.images.len())
            .map(|i| bench.image_path(root, i))
            .collect();
        let mine = &image_paths[share.range(image_paths.len())];
        let failures: Vec<Error> = mine
            .par_iter()
            .filter_map(|p| augment::probe(p).err())
            .collect();
        let failed = failures.len();
        if let Some(first) = failures.into_iter().next() {
            return Err(TrainError::UnreadableValidationImages {
                failed,
                total: mine.len(),
                part: (!share.is_whole()).then(|| share.to_string()),
                image_root: root.to_path_buf(),
                first: Box::new(first),
            }
            .into());
        }
        Ok(ValidationSet {
            bench,
            mapping,
            vocab,
            thresholds,
            manifest,
            image_paths,
            unreadable,
        })
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        let unmapped = self.mapping.unmapped();
        format!(
            "validation: {} ({} images, {} of {} tags mapped to slots{}), thresholds {}",
            self.bench.name,
            self.image_paths.len(),
            self.mapping.mapped().len(),
            self.bench.tags.len(),
            if unmapped.is_empty() {
                String::new()
            } else {
                format!("; not evaluated: {}", unmapped.join(", "))
            },
            self.thresholds.source
        )
    }

    /// Scores every image with the model in eval mode and evaluates.
    pub fn run(&self, model: &RamPlus, device: Device, batch: usize) -> Result<Validated> {
        let scores = self.score(model, device, batch, &self.image_paths)?;
        self.report(&scores, model.config.num_class)
    }

    /// Sigmoid probabilities `[paths, num_class]` of some of the set's images (a rank's share); under
    /// `skip` an image that cannot be read has a row of [`UNREADABLE_ROW`].
    pub fn score(
        &self,
        model: &RamPlus,
        device: Device,
        batch: usize,
        paths: &[PathBuf],
    ) -> Result<Vec<f32>> {
        let on_unreadable = match self.unreadable {
            UnreadableImages::Stop => OnUnreadable::Fail,
            UnreadableImages::Skip => OnUnreadable::Mark,
        };
        let (scores, _) = score_batches(
            model,
            paths,
            device,
            batch.max(1),
            PilFilter::Bilinear,
            on_unreadable,
        )?;
        Ok(scores)
    }

    /// Evaluates the scores of every image of the set, in order, leaving out the images whose row
    /// is [`UNREADABLE_ROW`].
    pub fn report(&self, scores: &[f32], num_class: usize) -> Result<Validated> {
        let rows = || scores.chunks(num_class.max(1));
        let read: Vec<bool> = rows()
            .map(|row| row.first() != Some(&UNREADABLE_ROW))
            .collect();
        let left_out = read.iter().filter(|&&r| !r).count();
        if left_out == 0 {
            let report = self.evaluate(&self.bench, scores, num_class)?;
            return Ok(Validated { report, left_out });
        }
        if left_out == read.len() {
            return Err(TrainError::NoReadableValidationImage {
                images: left_out,
                benchmark: self.bench.annots_path.clone(),
            }
            .into());
        }
        let scores: Vec<f32> = rows()
            .zip(&read)
            .filter(|(_, &r)| r)
            .flat_map(|(row, _)| row.iter().copied())
            .collect();
        let report = self.evaluate(&self.bench.only_images(&read), &scores, num_class)?;
        Ok(Validated { report, left_out })
    }

    /// The evaluation of `bench` (the set, or the images of it that were read) from its scores.
    fn evaluate(&self, bench: &Benchmark, scores: &[f32], num_class: usize) -> Result<EvalReport> {
        let columns = gather_columns(scores, num_class, &self.mapping)?;
        evaluate(
            bench,
            &self.vocab,
            &self.mapping,
            &columns,
            &self.thresholds,
            Some(&self.manifest),
        )
    }
}

/// A RAM-format annotation file as a benchmark over the slots its records carry (slots kept as
/// they are, so tags that share a name stay apart).
fn from_records(path: &Path, vocab: &Vocabulary) -> Result<(Benchmark, TagMapping)> {
    let set = super::data::RecordSet::read(&[path.to_path_buf()], vocab.len())?;
    let mut slots: Vec<u32> = set.slot_lists().flatten().copied().collect();
    slots.sort_unstable();
    slots.dedup();
    let column = |s: u32| slots.binary_search(&s).expect("collected") as u32;
    let tags: Vec<String> = slots
        .iter()
        .map(|&s| vocab.tags[s as usize].clone())
        .collect();
    let bench = Benchmark {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        taglist_path: path.to_path_buf(),
        annots_path: path.to_path_buf(),
        images: set.iter().map(|r| r.image_path.to_string()).collect(),
        labels: set
            .slot_lists()
            .map(|slots| slots.iter().map(|&s| column(s)).collect())
            .collect(),
        tags: tags.clone(),
        form: LabelForm::Indices,
    };
    let mapping = TagMapping {
        tags: tags
            .into_iter()
            .zip(&slots)
            .map(|(tag, &s)| MappedTag {
                tag,
                slot: Some(s as usize),
                matched: Some(MatchKind::Exact),
            })
            .collect(),
    };
    Ok((bench, mapping))
}

/// Sigmoid tag probabilities `[images, num_class]` (row-major), each image decoded, resized with
/// `filter` to the model's input and CLIP-normalised, in eval mode without gradients. An image
/// that cannot be read is an error.
pub fn score_images(
    model: &RamPlus,
    paths: &[PathBuf],
    device: Device,
    batch: usize,
    filter: PilFilter,
) -> Result<Vec<f32>> {
    let (scores, _) = score_batches(model, paths, device, batch, filter, OnUnreadable::Fail)?;
    Ok(scores)
}

/// [`score_images`] of the images that can be read (each decoded once): their probabilities in
/// order, and how many were left out.
pub fn score_readable_images(
    model: &RamPlus,
    paths: &[PathBuf],
    device: Device,
    batch: usize,
    filter: PilFilter,
) -> Result<(Vec<f32>, usize)> {
    score_batches(model, paths, device, batch, filter, OnUnreadable::LeaveOut)
}

/// The value of every column of an image's row that could not be read (scoring under `skip`): no
/// probability is negative, so it cannot be taken for a score (a diverged model's NaN still is one).
pub const UNREADABLE_ROW: f32 = -1.0;

/// What scoring does with an image that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnUnreadable {
    /// Fails with its error.
    Fail,
    /// Leaves its row out (counted).
    LeaveOut,
    /// Keeps its row, every value [`UNREADABLE_ROW`] (counted), so rows stay in the paths' order.
    Mark,
}

/// Scores `paths` `batch` at a time, doing `on_unreadable` with an image that cannot be read;
/// returns the rows and how many images could not be read.
fn score_batches(
    model: &RamPlus,
    paths: &[PathBuf],
    device: Device,
    batch: usize,
    filter: PilFilter,
    on_unreadable: OnUnreadable,
) -> Result<(Vec<f32>, usize)> {
    let side = model.config.swin.img_size as u32;
    let transform = InputTransform {
        filter,
        mean: augment::CLIP_MEAN,
        std: augment::CLIP_STD,
    };
    let nc = model.config.num_class;
    let mut out = Vec::with_capacity(paths.len() * nc);
    let mut left_out = 0;
    let chunks: Vec<&[PathBuf]> = paths.chunks(batch.max(1)).collect();
    // The next batch is decoded while this one is scored.
    let ahead = crate::prefetch::batches_ahead(crate::train::infer::model_threads(device));
    let decode = |k: usize| decode_batch(chunks[k], side, &transform);
    crate::prefetch::in_order(chunks.len(), ahead, decode, |_, decoded| {
        let mut pixels = Vec::new();
        let mut readable = Vec::with_capacity(decoded.len());
        for outcome in decoded {
            match outcome {
                Ok(image) => {
                    pixels.extend_from_slice(&image);
                    readable.push(true);
                }
                Err(e) if on_unreadable == OnUnreadable::Fail => return Err(e),
                Err(_) => readable.push(false),
            }
        }
        left_out += readable.iter().filter(|&&ok| !ok).count();
        let images = readable.iter().filter(|&&ok| ok).count();
        let rows = if images == 0 {
            Vec::new()
        } else {
            score_pixels(model, &pixels, images, side, device)?
        };
        if on_unreadable != OnUnreadable::Mark {
            out.extend(rows);
            return Ok(());
        }
        let mut scored = rows.chunks(nc);
        for ok in readable {
            match ok {
                true => out.extend_from_slice(scored.next().unwrap_or_default()),
                false => out.extend(std::iter::repeat_n(UNREADABLE_ROW, nc)),
            }
        }
        Ok(())
    })?;
    Ok((out, left_out))
}

/// Tag probabilities of `images` normalised images (CHW, `side` × `side`) in `pixels`, row-major.
fn score_pixels(
    model: &RamPlus,
    pixels: &[f32],
    images: usize,
    side: u32,
    device: Device,
) -> Result<Vec<f32>> {
    let x = Tensor::from_slice(pixels)
        .view([images as i64, 3, side as i64, side as i64])
        .to_device(device);
    let probs = model.tag_probabilities(&x)?;
    let flat = probs
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .reshape([-1]);
    Ok(
        Vec::try_from(&flat).map_err(|e: tch::TchError| TrainError::ReadBack {
            what: "tag probabilities",
            source: Box::new(e),
        })?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::{ParamInit, RamPlusConfig};

    /// Leaving out an unreadable image gives the readable images' scores (one decode each) and
    /// the count; scoring them all fails with the file's error.
    #[test]
    fn unreadable_images_are_left_out_or_fail_the_scoring() {
        tch::manual_seed(3);
        let cfg = RamPlusConfig::tiny(6, 2);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let model = RamPlus::new(&vs, &cfg, ParamInit::Official).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..5)
            .map(|i| dir.path().join(format!("{i}.png")))
            .collect();
        for (i, p) in paths.iter().enumerate() {
            let img = image::RgbImage::from_fn(40 + i as u32, 30, |x, y| {
                image::Rgb([(x * 9) as u8, (y * 7 + i as u32 * 40) as u8, 128])
            });
            img.save(p).unwrap();
        }
        std::fs::write(&paths[1], b"\x89PNG\r\n\x1a\n cut short").unwrap();
        std::fs::remove_file(&paths[3]).unwrap();
        let readable = [paths[0].clone(), paths[2].clone(), paths[4].clone()];
        let score =
            |paths: &[PathBuf]| score_images(&model, paths, Device::Cpu, 2, PilFilter::Bicubic);
        let want = score(&readable).unwrap();
        assert_eq!(want.len(), 3 * 6);
        let (got, left_out) =
            score_readable_images(&model, &paths, Device::Cpu, 2, PilFilter::Bicubic).unwrap();
        assert_eq!(left_out, 2);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(got.len() == want.len() && diff < 1e-6, "{diff}");
        let e = crate::error::report(&score(&paths).unwrap_err());
        assert!(e.contains("1.png"), "{e}");
        // A batch with nothing readable contributes nothing.
        let (none, left_out) =
            score_readable_images(&model, &paths[1..2], Device::Cpu, 2, PilFilter::Bicubic)
                .unwrap();
        assert_eq!((none.len(), left_out), (0, 1));
        // Marked, every image keeps its row in order; an unreadable one's is UNREADABLE_ROW.
        let (marked, left_out) = score_batches(
            &model,
            &paths,
            Device::Cpu,
            2,
            PilFilter::Bicubic,
            OnUnreadable::Mark,
        )
        .unwrap();
        assert_eq!((marked.len(), left_out), (5 * 6, 2));
        let rows: Vec<&[f32]> = marked.chunks(6).collect();
        for (row, want) in [rows[0], rows[2], rows[4]].into_iter().zip(want.chunks(6)) {
            let diff = row
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-6, "{diff}");
        }
        assert!([rows[1], rows[3]]
            .iter()
            .all(|r| r.iter().all(|&v| v == UNREADABLE_ROW)));
    }
}
