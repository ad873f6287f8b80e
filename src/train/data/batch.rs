//! A micro-batch: which records a step's micro-batch holds, their images decoded and augmented,
//! targets, teacher rows, and the stand-ins for images that cannot be read.

use super::{augment, Augment, Draw, TrainData, TEACHER_DIM};
use crate::error::{Error, Result};
use crate::teacher::online::OnlineTeacher;
use crate::teacher::CaptionChoice;
use crate::train::config::UnreadableImages;
use crate::train::error::TrainError;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Loader settings.
#[derive(Debug, Clone, Copy)]
pub struct LoaderConfig {
    pub micro_batch: usize,
    pub batch: usize,
    pub augment: Augment,
    pub seed: u64,
    /// Decoding threads (0: rayon's default, all cores).
    pub workers: usize,
    /// Micro-batches decoded ahead, up to this many at once (see [`Loader`]).
    pub prefetch: usize,
    /// An image that cannot be read stops the loader, or is replaced ([`SkippedImage`]).
    pub unreadable: UnreadableImages,
}

impl LoaderConfig {
    /// Optimizer steps per epoch (the last incomplete batch is dropped); fewer records than one batch
    /// is an error, so no caller divides by zero epochs.
    pub fn steps_per_epoch(&self, records: usize) -> Result<u64> {
        match (records / self.batch.max(1)) as u64 {
            0 => Err(TrainError::TooFewRecords {
                records,
                batch: self.batch,
            }
            .into()),
            steps => Ok(steps),
        }
    }
}

/// One decoded micro-batch.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// Global optimizer step (from 0) and micro-batch index within it.
    pub step: u64,
    pub micro: usize,
    pub epoch: u64,
    /// Record indices.
    pub indices: Vec<usize>,
    /// `[n, 3, S, S]` RGB8 pixels after augmentation (CHW), as the official transform has them
    /// before `ToTensor` and `Normalize`; the trainer normalises them on the device.
    pub images: Vec<u8>,
    /// `[n, num_slots]` multi-hot.
    pub targets: Vec<f32>,
    /// `[n, 512]` teacher image features / caption embeddings, when a teacher file or the online
    /// teacher was given.
    pub clip_feature: Option<Vec<f32>>,
    pub text_embed: Option<Vec<f32>>,
    /// The augmentation drawn for each image (crop, flip, RandomAugment operations), which the
    /// online teacher also saw.
    pub draws: Vec<Draw>,
    /// The images that could not be read and were replaced (`--unreadable-images skip`).
    pub skipped: Vec<SkippedImage>,
}

/// An image that could not be read when its micro-batch was loaded, and the image of the same
/// micro-batch that took its place: the next readable one after it (wrapping around), augmented
/// with the draw of the unreadable image's position, so the batch keeps its size and the run
/// stays reproducible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedImage {
    /// Position in the micro-batch.
    pub position: usize,
    /// The record whose image could not be read, and the record that took its place.
    pub record: usize,
    pub replaced_by: usize,
    /// The read error and where the record is (file and line).
    pub reason: String,
}

impl MicroBatch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The images CLIP-normalised on the host (`[n, 3, S, S]` floats): what the trainer computes
    /// on the device, for consumers on the host (the online teacher's checks, the upload benchmark).
    pub fn normalized_images(&self) -> Vec<f32> {
        let plane = self.images.len() / (3 * self.len()).max(1);
        let mut out = vec![0f32; self.images.len()];
        for (i, (o, &x)) in out.iter_mut().zip(&self.images).enumerate() {
            let c = (i / plane.max(1)) % 3;
            *o = crate::imaging::normalize_value(x, augment::CLIP_MEAN[c], augment::CLIP_STD[c]);
        }
        out
    }
}

/// splitmix64 over three words: independent seeds for (seed, epoch, position).
pub(super) fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(c.wrapping_mul(0x94D0_49BB_1331_11EB))
        .wrapping_add(0x2545_F491_4F6C_DD1D);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The record order of epoch `epoch` (records numbered with 32 bits, see
/// [`TrainError::TooManyRecords`]; the same permutation as numbering them with `usize`).
pub fn epoch_order(records: usize, seed: u64, epoch: u64) -> Vec<u32> {
    debug_assert!(
        u32::try_from(records).is_ok(),
        "TrainData refuses more records"
    );
    let mut order: Vec<u32> = (0..records as u32).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed, epoch, 0x5EED)));
    order
}

/// Decodes and augments one micro-batch, and computes its online teacher's features.
pub fn load_micro_batch(
    data: &TrainData,
    cfg: &LoaderConfig,
    step: u64,
    micro: usize,
    order: &[u32],
) -> Result<MicroBatch> {
    decode_micro_batch(data, cfg, step, micro, order)?.with_teacher(data, cfg)
}

/// A micro-batch decoded and augmented, its online teacher's features not yet computed: the
/// part the loader's workers do in parallel, several micro-batches at once. The teacher's part
/// runs one micro-batch at a time in order ([`Decoded::with_teacher`]): its encoders are shared
/// behind locks, and the text encoder's tokenizer runs on rayon, so a worker holding the lock
/// could otherwise pick up another micro-batch's job that waits for the same lock.
pub(super) struct Decoded {
    batch: MicroBatch,
    /// Position of the micro-batch's first sample in its epoch's order.
    first: usize,
    /// The online teacher's input pixels, one rendered view per image (empty without it).
    teacher_pixels: Vec<f32>,
}

/// [`load_micro_batch`]'s parallel part: decode, augment, targets, the precomputed teacher's rows.
pub(super) fn decode_micro_batch(
    data: &TrainData,
    cfg: &LoaderConfig,
    step: u64,
    micro: usize,
    order: &[u32],
) -> Result<Decoded> {
    let spe = cfg.steps_per_epoch(data.len())?;
    let epoch = step / spe;
    let first = ((step % spe) as usize) * cfg.batch + micro * cfg.micro_batch;
    let mut indices: Vec<usize> = order[first..first + cfg.micro_batch]
        .iter()
        .map(|&i| i as usize)
        .collect();
    let side = cfg.augment.size as usize;
    let per_image = 3 * side * side;
    let online = data.online_teacher.as_ref();
    let per_teacher = online.map_or(0, OnlineTeacher::pixels_per_image);
    let mut images = vec![0u8; indices.len() * per_image];
    let mut teacher_pixels = vec![0f32; indices.len() * per_teacher];
    let mut teacher_slots: Vec<&mut [f32]> = if per_teacher > 0 {
        teacher_pixels.chunks_mut(per_teacher).collect()
    } else {
        indices.iter().map(|_| <&mut [f32]>::default()).collect()
    };
    let mut draws = vec![Draw::default(); indices.len()];
    // Decodes record `idx`'s image and writes its augmented view at position `k`.
    let fill = |k: usize, idx: usize, out: &mut [u8], teacher_out: &mut [f32]| -> Result<Draw> {
        data.teacher_image_read(idx)?;
        let file = augment::open(&data.image_path(&data.records.get(idx)))?;
        let pos = (first + k) as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed ^ 0xA5A5_A5A5, epoch, pos));
        let view = cfg.augment.augmented_file(file, &mut rng)?;
        augment::to_chw(&view.image, out);
        // The CLIP teacher sees the same augmented view (crop, flip, operations) at its own
        // resolution, as RAM's teacher sees the model's input (that very image at equal sizes).
        if let Some(t) = online {
            if t.input_size() == cfg.augment.size {
                t.render_augmented(&view.image, teacher_out);
            } else {
                let at_its_size = view.on_pixels.image(&view.pixels, t.input_size());
                t.render_augmented(&at_its_size, teacher_out);
            }
        }
        Ok(view.draw)
    };
    let outcomes: Vec<Result<()>> = images
        .par_chunks_mut(per_image)
        .zip(teacher_slots.par_iter_mut())
        .zip(draws.par_iter_mut())
        .zip(indices.par_iter().enumerate())
        .map(|(((out, teacher_out), draw), (k, &idx))| {
            *draw = fill(k, idx, out, teacher_out)?;
            Ok(())
        })
        .collect();
    let failed: Vec<(usize, Error)> = outcomes
        .into_iter()
        .enumerate()
        .filter_map(|(k, r)| r.err().map(|e| (k, e)))
        .collect();
    let mut skipped = Vec::with_capacity(failed.len());
    if cfg.unreadable == UnreadableImages::Stop {
        if let Some((_, e)) = failed.into_iter().next() {
            return Err(e);
        }
    } else if !failed.is_empty() {
        let mut unreadable: Vec<usize> = failed.iter().map(|(k, _)| *k).collect();
        let len = indices.len();
        let none_readable = |first: &Error| TrainError::NoReadableImage {
            step: step + 1,
            micro,
            images: len,
            first: crate::error::report(first),
        };
        for (k, e) in failed {
            let record = indices[k];
            let out = &mut images[k * per_image..(k + 1) * per_image];
            // The stand-in is read again; one that fails now (its file changed or vanished since
            // the first read) is unreadable too, and the next candidate is tried.
            let replaced_by = loop {
                let Some(by) = stand_in(&unreadable, k, len) else {
                    return Err(none_readable(&e).into());
                };
                match fill(k, indices[by], out, teacher_slots[k]) {
                    Ok(d) => {
                        draws[k] = d;
                        break indices[by];
                    }
                    Err(again) => {
                        tracing::warn!(
                            "step {} micro-batch {micro}: the stand-in for an unreadable image could not be read again, trying the next: {}",
                            step + 1,
                            crate::error::report(&again)
                        );
                        unreadable.push(by);
                    }
                }
            };
            let origin = data.records.origin_of(record);
            let reason = format!("{} ({origin})", crate::error::report(&e));
            skipped.push(SkippedImage {
                position: k,
                record,
                replaced_by,
                reason,
            });
            indices[k] = replaced_by;
        }
    }
    drop(teacher_slots);
    let n = data.num_slots;
    let mut targets = vec![0f32; indices.len() * n];
    for (k, &idx) in indices.iter().enumerate() {
        for &s in data.records.get(idx).slots {
            targets[k * n + s as usize] = 1.0;
        }
    }
    let (clip_feature, text_embed) = match &data.teacher {
        Some(t) => {
            let mut c = Vec::with_capacity(indices.len() * TEACHER_DIM);
            let mut x = Vec::with_capacity(indices.len() * TEACHER_DIM);
            for &idx in &indices {
                let row = data.teacher_rows[idx] as usize;
                t.append_image_row(row, &mut c)?;
                t.append_text_row(row, &mut x)?;
            }
            (Some(c), Some(x))
        }
        None => (None, None),
    };
    Ok(Decoded {
        batch: MicroBatch {
            step,
            micro,
            epoch,
            indices,
            images,
            targets,
            clip_feature,
            text_embed,
            draws,
            skipped,
        },
        first,
        teacher_pixels,
    })
}

/// The position whose image takes the place of unreadable position `k` in a micro-batch of `len`
/// images: the next position after `k` that is not `unreadable`, wrapping around; `None` when
/// every position is unreadable.
pub(super) fn stand_in(unreadable: &[usize], k: usize, len: usize) -> Option<usize> {
    (k + 1..len).chain(0..k).find(|r| !unreadable.contains(r))
}

impl Decoded {
    /// The micro-batch with the online teacher's image and caption features, where there is one
    /// and no teacher file.
    pub(super) fn with_teacher(self, data: &TrainData, cfg: &LoaderConfig) -> Result<MicroBatch> {
        let Decoded {
            mut batch,
            first,
            teacher_pixels,
        } = self;
        let Some(t) = data
            .online_teacher
            .as_ref()
            .filter(|_| data.teacher.is_none())
        else {
            return Ok(batch);
        };
        let (step, micro, epoch) = (batch.step, batch.micro, batch.epoch);
        let indices = &batch.indices;
        let describe = |e: Error| TrainError::OnlineTeacher {
            step: step + 1,
            micro,
            records: indices[..indices.len().min(4)].to_vec(),
            source: Box::new(e),
        };
        let c = t.image_features(&teacher_pixels).map_err(describe)?;
        // RAM draws one of the record's captions per sample; the draw has its own stream.
        let picks: Vec<(usize, usize)> = indices
            .iter()
            .enumerate()
            .map(|(k, &idx)| {
                let caption = match t.config.caption {
                    CaptionChoice::Random => {
                        let pos = (first + k) as u64;
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(mix(cfg.seed ^ 0xC0C0_CAFE, epoch, pos));
                        rng.gen_range(0..t.caption_count(idx))
                    }
                    _ => 0,
                };
                (idx, caption)
            })
            .collect();
        let x = t.text_features(&picks).map_err(describe)?;
        (batch.clip_feature, batch.text_embed) = (Some(c), Some(x));
        Ok(batch)
    }
}
