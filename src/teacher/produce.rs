//! `tagfix teacher` (feature `embed`): the teacher file from RAM-format annotations. Captions go
//! through `embed`'s text encoder (RAM's `pre_caption`, then the CLIP text tower), images through an
//! ONNX CLIP image tower with its descriptor's evaluation transform; rows follow the records, keyed
//! by `image_path`, exactly as [`super::file::TeacherFeatures`] reads them.

use super::descriptor::ImageInput;
use super::file::{write_streamed, ImageRows, RowSink, TEACHER_DIM};
use super::image_encoder::ImageEncoder;
use super::shard::{Shard, SET_RECORDS_KEY, SHARD_KEY};
use super::TeacherError;
use super::{pre_caption, CaptionChoice};
use crate::annotations::records::{RecordSet, TrainRecord};
use crate::embed::encoder::{l2_normalize, TextEncoder};
use crate::error::Result;
use crate::imaging::{decode, eval_transform, keep_images};
use crate::train::config::UnreadableImages;
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What to compute.
#[derive(Debug, Clone)]
pub struct TeacherRequest<'a> {
    pub records: &'a RecordSet,
    /// Folder the records' relative `image_path` values are under.
    pub image_root: &'a Path,
    /// `first` or `mean` (a file holds one row per record; `random` is for the online teacher).
    pub caption: CaptionChoice,
    /// `pre_caption`'s word limit (RAM: 30).
    pub max_words: usize,
    /// Images decoded and encoded per ONNX Runtime call.
    pub image_batch: usize,
    /// Batches of images decoded ahead while the encoder runs ([`crate::prefetch::in_order`]; 0
    /// decodes and encodes one after the other).
    pub decode_ahead: usize,
    /// Compute only this shard of the records (`--shard I/N`, [`super::shard`]).
    pub shard: Option<Shard>,
    /// An image that cannot be read stops the run, or gets a row of zeros flagged in the file's
    /// `image_unreadable` (`--unreadable-images skip`).
    pub unreadable: UnreadableImages,
}

impl TeacherRequest<'_> {
    /// The records to compute: all, or the shard's block.
    pub fn selected(&self) -> std::ops::Range<usize> {
        let n = self.records.len();
        match self.shard {
            Some(shard) => shard.range(n),
            None => 0..n,
        }
    }

    /// How many chunks of `size` (≥ 1) records [`Self::selected`] makes.
    fn chunk_count(&self, size: usize) -> usize {
        self.selected().len().div_ceil(size)
    }

    /// Chunk `k` of [`Self::selected`]'s records, `size` (≥ 1) at a time.
    fn chunk(&self, k: usize, size: usize) -> Vec<TrainRecord<'_>> {
        let range = self.selected();
        let start = range.start + k * size;
        (start..(start + size).min(range.end))
            .map(|i| self.records.get(i))
            .collect()
    }
}

/// Checks that keys are unique (the file is keyed by `image_path`).
fn unique_keys(records: &RecordSet) -> Result<Vec<String>> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        if let Some(&first) = seen.get(r.image_path) {
            return Err(TeacherError::ImageTwice {
                image: r.image_path.to_string(),
                first: records.origin_of(first),
                second: records.origin(&r),
            }
            .into());
        }
        seen.insert(r.image_path, i);
    }
    Ok(records.iter().map(|r| r.image_path.to_string()).collect())
}

/// Records whose captions are embedded per text-encoder call: bounds memory (the captions' vectors
/// of one chunk) whatever the set's size.
const CAPTION_CHUNK: usize = 4096;

/// Caption text features into `sink`: one L2-normalised row per record, a chunk of records at a time.
pub fn caption_rows(
    text: &mut TextEncoder,
    req: &TeacherRequest<'_>,
    progress: &ProgressBar,
    sink: &mut RowSink,
) -> Result<()> {
    let chosen = |r: &TrainRecord| -> Result<std::ops::Range<usize>> {
        match req.caption {
            // The reader (captions: true) refuses records without one.
            CaptionChoice::First => Ok(0..1),
            CaptionChoice::Mean => Ok(0..r.captions.len()),
            CaptionChoice::Random => Err(TeacherError::RandomCaptionInFile.into()),
        }
    };
    let mut total = 0;
    for i in req.selected() {
        total += chosen(&req.records.get(i))?.len();
    }
    progress.set_length(total as u64);
    for k in 0..req.chunk_count(CAPTION_CHUNK) {
        let chunk = req.chunk(k, CAPTION_CHUNK);
        let mut texts = Vec::new();
        let mut counts = Vec::with_capacity(chunk.len());
        for r in &chunk {
            let captions = r.captions.slice(chosen(r)?);
            counts.push(captions.len());
            texts.extend(captions.iter().map(|c| pre_caption(c, req.max_words)));
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (vectors, dim) = text.encode(&refs, progress)?;
        if dim != TEACHER_DIM {
            return Err(TeacherError::TextWidth {
                path: text.descriptor.onnx_path(),
                dim,
            }
            .into());
        }
        let mut rows = Vec::with_capacity(counts.len() * dim);
        let mut at = 0;
        for n in counts {
            let mut mean = vec![0f32; dim];
            for v in vectors[at * dim..(at + n) * dim].chunks(dim) {
                let mut unit = v.to_vec();
                l2_normalize(&mut unit);
                mean.iter_mut().zip(&unit).for_each(|(m, u)| *m += u);
            }
            l2_normalize(&mut mean);
            rows.extend(mean);
            at += n;
        }
        sink.push(&rows)?;
    }
    Ok(())
}

/// Image features into `sink`: each image decoded and brought to the encoder's input by its
/// descriptor's evaluation transform (decoding in parallel, one ONNX Runtime call per batch).
/// Under [`UnreadableImages::Skip`] an image that cannot be read gets a flagged row of zeros and a
/// warning; the number of such images is returned. None readable at all is an error.
pub fn image_rows(
    image: &mut ImageEncoder,
    req: &TeacherRequest<'_>,
    progress: &ProgressBar,
    sink: &mut RowSink,
) -> Result<usize> {
    image.check_teacher_dim()?;
    let per = image.pixels_per_image();
    progress.set_length(req.selected().len() as u64);
    let mut skipped = 0;
    let mut first_failure = None;
    let size = req.image_batch.max(1);
    let input = image.descriptor.input.clone();
    // Chunk k + 1 is decoded while chunk k is encoded.
    crate::prefetch::in_order(
        req.chunk_count(size),
        req.decode_ahead,
        |k| {
            let chunk = req.chunk(k, size);
            let decoded = decode_images(&input, req, &chunk);
            (chunk, decoded)
        },
        |_, (chunk, decoded)| -> Result<()> {
            let (mut pixels, readable) = readable_images(req, decoded, &mut |reason| {
                first_failure.get_or_insert(reason);
                skipped += 1;
            })?;
            let features = match keep_images(&mut pixels, per, &readable) {
                0 => Vec::new(),
                n => image.encode(&pixels[..n * per])?,
            };
            push_image_rows(sink, req, &chunk, &readable, &features)?;
            progress.inc(chunk.len() as u64);
            Ok(())
        },
    )?;
    let images = req.selected().len();
    if images > 0 && skipped == images {
        return Err(TeacherError::NoReadableImage {
            images,
            first: first_failure.unwrap_or_default(),
        }
        .into());
    }
    Ok(skipped)
}

/// The encoder's input pixels of `chunk`'s images, decoded in parallel (rayon's threads), and per
/// image whether it could be read.
fn decode_images(
    input: &ImageInput,
    req: &TeacherRequest<'_>,
    chunk: &[TrainRecord<'_>],
) -> (Vec<f32>, Vec<Result<()>>) {
    let per = input.pixels_per_image();
    let mut pixels = vec![0f32; chunk.len() * per];
    let read: Vec<Result<()>> = pixels
        .par_chunks_mut(per)
        .zip(chunk.par_iter())
        .map(|(buf, r)| {
            let img = decode(&r.image_file(req.image_root)).map_err(|e| TeacherError::Image {
                origin: req.records.origin(r),
                source: Box::new(e),
            })?;
            eval_transform(&img, input, buf);
            Ok(())
        })
        .collect();
    (pixels, read)
}

/// A [`decode_images`] result's pixels and which images could be read. An unreadable image is an
/// error under [`UnreadableImages::Stop`]; under `Skip` it is warned about and its reason passed to
/// `skipped`.
fn readable_images(
    req: &TeacherRequest<'_>,
    (pixels, read): (Vec<f32>, Vec<Result<()>>),
    skipped: &mut dyn FnMut(String),
) -> Result<(Vec<f32>, Vec<bool>)> {
    let mut readable = vec![true; read.len()];
    for (k, outcome) in read.into_iter().enumerate() {
        let Err(e) = outcome else { continue };
        if req.unreadable == UnreadableImages::Stop {
            return Err(e);
        }
        let reason = crate::error::report(&e);
        tracing::warn!(
            "skipped an unreadable image: {reason}; its image_features row is zeros, flagged in image_unreadable"
        );
        skipped(reason);
        readable[k] = false;
    }
    Ok((pixels, readable))
}

/// `chunk`'s image rows into `sink`: the readable images' `features` (in order, each checked to be
/// finite), a flagged row of zeros for each of the others.
fn push_image_rows(
    sink: &mut RowSink,
    req: &TeacherRequest<'_>,
    chunk: &[TrainRecord<'_>],
    readable: &[bool],
    features: &[f32],
) -> Result<()> {
    let mut rows = features.chunks(TEACHER_DIM);
    for (r, &read) in chunk.iter().zip(readable) {
        if !read {
            sink.push_unreadable()?;
            continue;
        }
        let row = rows.next().unwrap_or_default();
        if row.len() != TEACHER_DIM || row.iter().any(|v| !v.is_finite()) {
            return Err(TeacherError::NonFiniteFeature {
                image: r.image_path.to_string(),
                origin: req.records.origin(r),
            }
            .into());
        }
        sink.push(row)?;
    }
    Ok(())
}

/// What [`write_teacher_file`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeacherWritten {
    /// Records (rows) in the file.
    pub rows: usize,
    /// Of them, images that could not be read (`--unreadable-images skip`): flagged rows of zeros.
    pub unreadable_images: usize,
}

/// Computes both teachers and writes the teacher file `out` as the rows come (image features, then
/// caption embeddings; memory stays that of a batch, whatever the record count), with the
/// provenance metadata (`tagfix.teacher.*`). A failure leaves no file.
pub fn write_teacher_file(
    out: &Path,
    text: &mut TextEncoder,
    image: &mut ImageEncoder,
    req: &TeacherRequest<'_>,
    text_progress: &ProgressBar,
    image_progress: &ProgressBar,
) -> Result<TeacherWritten> {
    // Keys are checked over the whole set, so that every shard refuses a repeated image_path.
    let all_keys = unique_keys(req.records)?;
    let keys = match req.shard {
        Some(shard) => &all_keys[shard.range(all_keys.len())],
        None => &all_keys[..],
    };
    if req.caption == CaptionChoice::Random {
        return Err(TeacherError::RandomCaptionInFile.into());
    }
    check_caption_width(text, req)?;
    let metadata = provenance(text, image, req);
    let rows = match req.unreadable {
        UnreadableImages::Stop => ImageRows::AllRead,
        UnreadableImages::Skip => ImageRows::MayBeUnreadable,
    };
    let mut unreadable_images = 0;
    write_streamed(
        out,
        keys,
        metadata,
        rows,
        |sink| {
            unreadable_images = image_rows(image, req, image_progress, sink)?;
            image_progress.finish_and_clear();
            Ok(())
        },
        |sink| {
            caption_rows(text, req, text_progress, sink)?;
            text_progress.finish_and_clear();
            Ok(())
        },
    )?;
    Ok(TeacherWritten {
        rows: keys.len(),
        unreadable_images,
    })
}

/// Embeds one caption to learn the text tower's width before the image pass: the captions are
/// written after the images, and a wrong tower should not cost a pass over the whole set first.
fn check_caption_width(text: &mut TextEncoder, req: &TeacherRequest<'_>) -> Result<()> {
    let first = req.selected().next().map(|i| req.records.get(i));
    let Some(caption) = first.as_ref().and_then(|r| r.captions.first()) else {
        return Ok(());
    };
    let (_, dim) = text.encode(
        &[&pre_caption(caption, req.max_words)],
        &ProgressBar::hidden(),
    )?;
    if dim != TEACHER_DIM {
        return Err(TeacherError::TextWidth {
            path: text.descriptor.onnx_path(),
            dim,
        }
        .into());
    }
    Ok(())
}

/// What made the file: inputs, towers, preprocessing and caption rule (`tagfix.teacher.*`).
fn provenance(
    text: &TextEncoder,
    image: &ImageEncoder,
    req: &TeacherRequest<'_>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let files: Vec<String> = req
        .records
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    m.insert(
        "tagfix.teacher.annotations".into(),
        serde_json::to_string(&files).expect("json"),
    );
    m.insert(
        "tagfix.teacher.image_root".into(),
        req.image_root.display().to_string(),
    );
    m.insert(
        "tagfix.teacher.image_model".into(),
        image.descriptor.display_name(),
    );
    m.insert(
        "tagfix.teacher.image_model_sha256".into(),
        image.model_sha256.clone(),
    );
    m.insert(
        "tagfix.teacher.image_preprocessing".into(),
        image.descriptor.preprocessing_description(),
    );
    m.insert(
        "tagfix.teacher.image_normalized".into(),
        image.descriptor.output.normalize.to_string(),
    );
    m.insert(
        "tagfix.teacher.text_model".into(),
        text.descriptor.display_name(),
    );
    m.insert(
        "tagfix.teacher.text_model_sha256".into(),
        text.model_sha256.clone(),
    );
    m.insert(
        "tagfix.teacher.tokenizer".into(),
        text.tokenizer_description(),
    );
    m.insert(
        "tagfix.teacher.caption".into(),
        format!(
            "{} (pre_caption: lower case, punctuation removed, at most {} words), L2-normalised",
            req.caption, req.max_words
        ),
    );
    m.insert(
        "tagfix.generator".into(),
        format!("tagfix {}", env!("CARGO_PKG_VERSION")),
    );
    if let Some(shard) = req.shard {
        m.insert(SHARD_KEY.into(), shard.to_string());
        m.insert(SET_RECORDS_KEY.into(), req.records.len().to_string());
    }
    m
}
