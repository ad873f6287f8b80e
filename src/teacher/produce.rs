//! `tagfix teacher` (feature `embed`): the teacher file from RAM-format annotations. Captions go
//! through `embed`'s text encoder (RAM's `pre_caption`, then the CLIP text tower), images through an
//! ONNX CLIP image tower with its descriptor's evaluation transform; rows follow the records, keyed
//! by `image_path`, exactly as [`super::file::TeacherFeatures`] reads them.

use super::file::TEACHER_DIM;
use super::image_encoder::ImageEncoder;
use super::TeacherError;
use super::{pre_caption, CaptionChoice};
use crate::annotations::records::RecordSet;
use crate::embed::encoder::{l2_normalize, TextEncoder};
use crate::error::Result;
use crate::imaging::{decode, eval_transform};
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
}

/// The computed rows and their provenance, ready for [`super::file::TeacherFeatures::write_with_metadata`].
#[derive(Debug, Clone)]
pub struct TeacherOutput {
    pub keys: Vec<String>,
    pub image: Vec<f32>,
    pub text: Vec<f32>,
    pub metadata: BTreeMap<String, String>,
}

/// Checks that keys are unique (the file is keyed by `image_path`).
fn unique_keys(records: &RecordSet) -> Result<Vec<String>> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(records.records.len());
    for (i, r) in records.records.iter().enumerate() {
        if let Some(&first) = seen.get(r.image_path.as_str()) {
            return Err(TeacherError::ImageTwice {
                image: r.image_path.clone(),
                first: records.origin(&records.records[first]),
                second: records.origin(r),
            }
            .into());
        }
        seen.insert(&r.image_path, i);
    }
    Ok(records
        .records
        .iter()
        .map(|r| r.image_path.clone())
        .collect())
}

/// Caption text features: `[n, 512]`, one L2-normalised row per record.
pub fn caption_features(
    text: &mut TextEncoder,
    req: &TeacherRequest<'_>,
    progress: &ProgressBar,
) -> Result<Vec<f32>> {
    let mut texts = Vec::new();
    let mut counts = Vec::with_capacity(req.records.records.len());
    for r in &req.records.records {
        let chosen: &[String] = match req.caption {
            // The reader (captions: true) refuses records without one.
            CaptionChoice::First => &r.captions[..1],
            CaptionChoice::Mean => &r.captions,
            CaptionChoice::Random => return Err(TeacherError::RandomCaptionInFile.into()),
        };
        counts.push(chosen.len());
        texts.extend(chosen.iter().map(|c| pre_caption(c, req.max_words)));
    }
    progress.set_length(texts.len() as u64);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (vectors, dim) = text.encode(&refs, progress)?;
    if dim != TEACHER_DIM {
        return Err(TeacherError::TextWidth {
            path: text.descriptor.onnx_path(),
            dim,
        }
        .into());
    }
    let mut out = Vec::with_capacity(counts.len() * dim);
    let mut at = 0;
    for n in counts {
        let mut mean = vec![0f32; dim];
        for v in vectors[at * dim..(at + n) * dim].chunks(dim) {
            let mut unit = v.to_vec();
            l2_normalize(&mut unit);
            mean.iter_mut().zip(&unit).for_each(|(m, u)| *m += u);
        }
        l2_normalize(&mut mean);
        out.extend(mean);
        at += n;
    }
    Ok(out)
}

/// Image features: `[n, 512]`, each image decoded and brought to the encoder's input by its
/// descriptor's evaluation transform (decoding in parallel, one ONNX Runtime call per batch).
pub fn image_features(
    image: &mut ImageEncoder,
    req: &TeacherRequest<'_>,
    progress: &ProgressBar,
) -> Result<Vec<f32>> {
    image.check_teacher_dim()?;
    let per = image.pixels_per_image();
    let input = image.descriptor.input.clone();
    let records = &req.records.records;
    progress.set_length(records.len() as u64);
    let mut out = Vec::with_capacity(records.len() * TEACHER_DIM);
    for chunk in records.chunks(req.image_batch.max(1)) {
        let mut pixels = vec![0f32; chunk.len() * per];
        pixels
            .par_chunks_mut(per)
            .zip(chunk.par_iter())
            .try_for_each(|(buf, r)| -> Result<()> {
                let path = r.image_file(req.image_root);
                let img = decode(&path).map_err(|e| TeacherError::Image {
                    origin: req.records.origin(r),
                    source: Box::new(e),
                })?;
                eval_transform(&img, &input, buf);
                Ok(())
            })?;
        out.extend(image.encode(&pixels)?);
        progress.inc(chunk.len() as u64);
    }
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        let r = &records[i / TEACHER_DIM];
        return Err(TeacherError::NonFiniteFeature {
            image: r.image_path.clone(),
            origin: req.records.origin(r),
        }
        .into());
    }
    Ok(out)
}

/// Computes both teachers and the provenance metadata (`tagfix.teacher.*`).
pub fn produce(
    text: &mut TextEncoder,
    image: &mut ImageEncoder,
    req: &TeacherRequest<'_>,
    text_progress: &ProgressBar,
    image_progress: &ProgressBar,
) -> Result<TeacherOutput> {
    let keys = unique_keys(req.records)?;
    let text_rows = caption_features(text, req, text_progress)?;
    text_progress.finish_and_clear();
    let image_rows = image_features(image, req, image_progress)?;
    image_progress.finish_and_clear();
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
    Ok(TeacherOutput {
        keys,
        image: image_rows,
        text: text_rows,
        metadata: m,
    })
}
