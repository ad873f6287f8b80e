//! The online teacher of `tagfix train --teacher online` (feature `embed`): CLIP image features of
//! each sample's *augmented* view (the model's crop, flip and RandomAugment operations, replayed at
//! the image tower's resolution; the model's very image when the sizes agree) and CLIP text embeddings of its caption, computed through ONNX Runtime
//! in the data loader, ahead of the training step.
//!
//! Caption embeddings depend only on (record, caption), so each is computed once and kept
//! (`cache_text`); image features change with every augmentation and are always computed.

use super::descriptor::ImageDescriptor;
use super::file::TEACHER_DIM;
use super::image_encoder::ImageEncoder;
use super::TeacherError;
use super::{pre_caption, CaptionChoice, OnlineTeacherConfig, RAM_CAPTION_WORDS};
use crate::annotations::records::RecordSet;
use crate::embed::descriptor::{resolve_model_dir, Device, ModelDescriptor};
use crate::embed::encoder::{l2_normalize, EncoderOptions, TextEncoder};
use crate::error::Result;
use crate::imaging::{eval_transform, normalize_chw};
use crate::strings::Strings;
use image::RgbImage;
use indicatif::ProgressBar;
use std::sync::{Mutex, OnceLock};

/// Image and text towers plus the captions of every record.
pub struct OnlineTeacher {
    image: Mutex<ImageEncoder>,
    text: Mutex<TextEncoder>,
    /// The image tower's descriptor (input size and normalisation), readable without the lock.
    pub image_descriptor: ImageDescriptor,
    /// Cleaned captions (`pre_caption`), all records, flat; record r owns `offsets[r]..offsets[r+1]`.
    captions: Strings,
    offsets: Vec<usize>,
    /// Each caption's embedding once computed, with `cache_text` (else empty).
    cache: Vec<OnceLock<Box<[f32]>>>,
    pub config: OnlineTeacherConfig,
    /// One line for the log: models, providers, caption rule.
    pub summary: String,
}

impl std::fmt::Debug for OnlineTeacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineTeacher")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl OnlineTeacher {
    /// Loads both towers (on `config.device`) and takes the records' captions (they must have been read with
    /// captions; every record needs at least one).
    pub fn load(config: &OnlineTeacherConfig, records: &mut RecordSet) -> Result<Self> {
        let device: Device = config.device.parse().map_err(TeacherError::Device)?;
        let opts = EncoderOptions {
            device,
            threads: (config.threads > 0).then_some(config.threads),
            batch_size: config.batch_size.max(1),
            ort_lib: None,
        };
        let image_descriptor = ImageDescriptor::resolve(&config.image_model)?;
        let image = ImageEncoder::load(image_descriptor.clone(), &opts)?;
        image.check_teacher_dim()?;
        let text_dir = resolve_model_dir(&config.text_model)?;
        let text = TextEncoder::load(ModelDescriptor::read_dir(&text_dir)?, &opts)?;
        if let Some(d) = text.dim.filter(|d| *d != TEACHER_DIM) {
            return Err(TeacherError::QueryWidth {
                path: text.descriptor.onnx_path(),
                dim: d,
            }
            .into());
        }
        if config.caption == CaptionChoice::Mean {
            return Err(TeacherError::MeanCaptionOnline.into());
        }
        // The reader (captions: true) refuses records without a caption.
        let (raw, offsets) = records.take_captions();
        let captions: Strings = raw
            .iter()
            .map(|c| pre_caption(c, RAM_CAPTION_WORDS))
            .collect();
        drop(raw);
        let summary = format!(
            "online teacher: image {} ({}, {}), text {} ({}); caption {}{}",
            image.descriptor.display_name(),
            image.provider,
            image.descriptor.preprocessing_description(),
            text.descriptor.display_name(),
            text.provider,
            config.caption,
            if config.cache_text {
                // Each embedding stays once computed: say what a full cache takes (every caption seen).
                let full = indicatif::HumanBytes((captions.len() * TEACHER_DIM * 4) as u64);
                format!(", caption embeddings cached (up to {full} as captions are seen; `cache_text = false` keeps none)")
            } else {
                String::new()
            }
        );
        Ok(OnlineTeacher {
            cache: if config.cache_text {
                (0..captions.len()).map(|_| OnceLock::new()).collect()
            } else {
                Vec::new()
            },
            image: Mutex::new(image),
            text: Mutex::new(text),
            image_descriptor,
            captions,
            offsets,
            config: config.clone(),
            summary,
        })
    }

    /// Values per rendered teacher image (`3·S·S`).
    pub fn pixels_per_image(&self) -> usize {
        let s = self.image_descriptor.input.size as usize;
        3 * s * s
    }

    /// Side of the image tower's square input.
    pub fn input_size(&self) -> u32 {
        self.image_descriptor.input.size
    }

    /// The teacher's input from an augmented view already rendered at [`Self::input_size`]
    /// (the training transform's draw replayed at that size): the tower's normalisation only.
    pub fn render_augmented(&self, view: &RgbImage, out: &mut [f32]) {
        let input = &self.image_descriptor.input;
        assert_eq!(
            (view.width(), view.height()),
            (input.size, input.size),
            "augmented view at the tower's input size"
        );
        normalize_chw(view, &input.mean, &input.std, out);
    }

    /// The teacher's input for an un-augmented image: the tower's evaluation transform, as
    /// `tagfix teacher` renders it.
    pub fn render_eval(&self, img: &RgbImage, out: &mut [f32]) {
        eval_transform(img, &self.image_descriptor.input, out);
    }

    /// Image features `[n, 512]` of `n` rendered inputs.
    pub fn image_features(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        self.image
            .lock()
            .expect("image encoder lock")
            .encode(pixels)
    }

    /// Number of captions of record `record`.
    pub fn caption_count(&self, record: usize) -> usize {
        self.offsets[record + 1] - self.offsets[record]
    }

    /// Text features `[n, 512]` (L2-normalised) of `(record, caption index)` pairs; captions already
    /// embedded come from the cache, the others are embedded in one batch.
    pub fn text_features(&self, picks: &[(usize, usize)]) -> Result<Vec<f32>> {
        let flat: Vec<usize> = picks
            .iter()
            .map(|&(r, c)| {
                assert!(c < self.caption_count(r), "caption index in range");
                self.offsets[r] + c
            })
            .collect();
        let mut missing: Vec<usize> = flat
            .iter()
            .copied()
            .filter(|&i| !self.config.cache_text || self.cache[i].get().is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let mut fresh = std::collections::HashMap::new();
        if !missing.is_empty() {
            let texts: Vec<&str> = missing.iter().map(|&i| self.captions.get(i)).collect();
            let (vectors, dim) = self
                .text
                .lock()
                .expect("text encoder lock")
                .encode(&texts, &ProgressBar::hidden())?;
            if dim != TEACHER_DIM {
                return Err(TeacherError::QueryWidthAtRun(dim).into());
            }
            for (k, &i) in missing.iter().enumerate() {
                let mut v = vectors[k * dim..(k + 1) * dim].to_vec();
                l2_normalize(&mut v);
                if self.config.cache_text {
                    let _ = self.cache[i].set(v.into_boxed_slice());
                } else {
                    fresh.insert(i, v);
                }
            }
        }
        let mut out = Vec::with_capacity(flat.len() * TEACHER_DIM);
        for i in flat {
            match self.cache.get(i).and_then(OnceLock::get) {
                Some(v) => out.extend_from_slice(v),
                None => out.extend_from_slice(&fresh[&i]),
            }
        }
        Ok(out)
    }
}
