//! The online teacher of `tagfix train --teacher online` (feature `embed`): CLIP image features of
//! each sample's *augmented* view (the model's crop, flip and RandomAugment operations, replayed at
//! the image tower's resolution; the model's very image when the sizes agree) and CLIP text embeddings of its caption, computed through ONNX Runtime
//! in the data loader, ahead of the training step.
//!
//! Caption embeddings depend only on (record, caption), so each is computed once and kept
//! (`cache_text`, up to `cache_text_mib` in each rank: [`CaptionCache`]); image features change
//! with every augmentation and are always computed.

use super::caption_cache::CaptionCache;
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
use std::sync::Mutex;

/// Image and text towers plus the captions of every record.
pub struct OnlineTeacher {
    image: Mutex<ImageEncoder>,
    text: Mutex<TextEncoder>,
    /// The image tower's descriptor (input size and normalisation), readable without the lock.
    pub image_descriptor: ImageDescriptor,
    /// Cleaned captions (`pre_caption`), all records, flat; record r owns `offsets[r]..offsets[r+1]`.
    captions: Strings,
    offsets: Vec<usize>,
    /// Caption embeddings once computed, up to the budget (none without `cache_text`).
    cache: CaptionCache,
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
        let cache = CaptionCache::new(captions.len(), TEACHER_DIM, cache_budget(config));
        let summary = format!(
            "online teacher: image {} ({}, {}), text {} ({}); caption {}{}",
            image.descriptor.display_name(),
            image.provider,
            image.descriptor.preprocessing_description(),
            text.descriptor.display_name(),
            text.provider,
            config.caption,
            cache_summary(&cache, captions.len())
        );
        Ok(OnlineTeacher {
            cache,
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
        self.image_descriptor.input.pixels_per_image()
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
            .filter(|&i| !self.cache.contains(i))
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
                self.cache.insert(i, &v);
                fresh.insert(i, v);
            }
        }
        let mut out = Vec::with_capacity(flat.len() * TEACHER_DIM);
        for i in flat {
            match fresh.get(&i) {
                Some(v) => out.extend_from_slice(v),
                None => {
                    let kept = self.cache.get_into(i, &mut out);
                    debug_assert!(kept, "a caption not embedded now is kept");
                }
            }
        }
        Ok(out)
    }
}

/// The bytes `config` lets the caption cache keep in each rank.
fn cache_budget(config: &OnlineTeacherConfig) -> u64 {
    if config.cache_text {
        config.cache_text_mib.saturating_mul(1 << 20)
    } else {
        0
    }
}

/// The log's words on the caption cache of `captions` captions: how many of their embeddings it can
/// keep.
fn cache_summary(cache: &CaptionCache, captions: usize) -> String {
    let row = (TEACHER_DIM * std::mem::size_of::<f32>()) as u64;
    let keep = cache.capacity() as u64;
    if keep == 0 {
        return ", caption embeddings not cached (each embedded when drawn)".to_string();
    }
    let all = indicatif::HumanBytes(captions as u64 * row);
    if keep == captions as u64 {
        format!(", caption embeddings cached (all {captions}: up to {all} as captions are seen)")
    } else {
        format!(
            ", caption embeddings cached for {keep} of {captions} captions ({:.0} %: {}; all would take \
             {all}; raise cache_text_mib to keep more)",
            100.0 * keep as f64 / captions as f64,
            indicatif::HumanBytes(keep * row)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_says_how_many_captions_the_cache_keeps() {
        let mut config = OnlineTeacherConfig::new("v".into(), "t".into());
        assert_eq!(cache_budget(&config), 4 << 30);
        let summary = |config: &OnlineTeacherConfig, captions: usize| {
            let cache = CaptionCache::new(captions, TEACHER_DIM, cache_budget(config));
            cache_summary(&cache, captions)
        };
        let all = summary(&config, 1024);
        assert!(all.contains("cached (all 1024: up to 2.00 MiB"), "{all}");
        config.cache_text_mib = 1; // 512 captions of 2 KB
        let part = summary(&config, 1024);
        assert!(
            part.contains(
                "cached for 512 of 1024 captions (50 %: 1.00 MiB; all would take 2.00 MiB;"
            ),
            "{part}"
        );
        config.cache_text = false;
        assert!(summary(&config, 1000).contains("not cached"));
        config.cache_text = true;
        config.cache_text_mib = 0;
        assert!(summary(&config, 1000).contains("not cached"));
        config.cache_text_mib = u64::MAX;
        assert_eq!(cache_budget(&config), u64::MAX);
    }
}
