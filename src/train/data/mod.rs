//! Training data: RAM-format records, images under a root folder, optional teacher features, and a
//! loader that decodes and augments micro-batches on worker threads ahead of the training step.
//!
//! Reproducibility: epoch `e` visits the records in a permutation drawn from `(seed, e)`, dropping
//! the last incomplete batch (as RAM's loader, `drop_last=True`); the augmentation of the sample at
//! position `i` of epoch `e` draws from its own generator seeded by `(seed, e, i)`. A batch's contents
//! therefore depend only on the seed and the global step, not on thread count or timing, and the
//! data position of a checkpoint is its step.

pub mod augment;
pub mod randaugment;
pub mod synth;

pub use crate::annotations::records::{RecordSet, TrainRecord};
pub use crate::teacher::file::{TeacherFeatures, TEACHER_DIM};
pub use augment::{Augment, Draw};

use crate::annotations::records::ReadOptions;
use crate::teacher::online::OnlineTeacher;
use crate::teacher::{CaptionChoice, OnlineTeacherConfig};
use crate::share::WorkShare;
use crate::train::config::{ImageCheck, UnreadableImages};
use rand::Rng;

use crate::error::{Error, Result};
use crate::train::error::TrainError;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Where the teacher signals (distillation target, alignment queries) come from.
#[derive(Debug, Clone, Copy)]
pub enum TeacherSource<'a> {
    /// No teacher: only the tag loss is trained.
    None,
    /// A precomputed teacher file (`tagfix teacher`, `tagfix synth-images`).
    File(&'a Path),
    /// CLIP towers through ONNX Runtime on every augmented batch.
    Online(&'a OnlineTeacherConfig),
}

/// Records, image root and teacher features, checked against each other.
#[derive(Debug)]
pub struct TrainData {
    pub records: RecordSet,
    pub image_root: PathBuf,
    pub teacher: Option<TeacherFeatures>,
    /// Teacher row of each record (the teacher's key index numbers rows with 32 bits).
    teacher_rows: Vec<u32>,
    /// The online teacher (`--teacher online`): the loader renders its inputs and computes its features.
    pub online_teacher: Option<OnlineTeacher>,
    pub num_slots: usize,
}

impl TrainData {
    /// Reads the annotation files and the teacher file; every record must have teacher features.
    pub fn open(
        files: &[PathBuf],
        image_root: &Path,
        num_slots: usize,
        teacher: Option<&Path>,
    ) -> Result<Self> {
        Self::open_with(
            files,
            image_root,
            num_slots,
            teacher.map_or(TeacherSource::None, TeacherSource::File),
        )
    }

    /// Reads the annotation files and sets up the teacher: a file must have a row for every record;
    /// the online teacher needs a caption in every record and loads both encoders.
    pub fn open_with(
        files: &[PathBuf],
        image_root: &Path,
        num_slots: usize,
        source: TeacherSource<'_>,
    ) -> Result<Self> {
        Self::open_checking(files, image_root, num_slots, source, WorkShare::WHOLE)
    }

    /// [`Self::open_with`] that checks the values of `share`'s rows of a teacher file only (a
    /// distributed run's ranks split that check).
    pub fn open_checking(
        files: &[PathBuf],
        image_root: &Path,
        num_slots: usize,
        source: TeacherSource<'_>,
        share: WorkShare,
    ) -> Result<Self> {
        if !image_root.is_dir() {
            return Err(TrainError::NotAFolder {
                path: image_root.to_path_buf(),
                what: "image root",
            }
            .into());
        }
        let online = matches!(source, TeacherSource::Online(_));
        let mut records = RecordSet::read_with(
            files,
            ReadOptions {
                num_slots: Some(num_slots),
                captions: online,
            },
        )?;
        if u32::try_from(records.len()).is_err() {
            return Err(TrainError::TooManyRecords {
                records: records.len(),
            }
            .into());
        }
        let online_teacher = match source {
            TeacherSource::Online(cfg) => Some(OnlineTeacher::load(cfg, &mut records)?),
            _ => None,
        };
        let (teacher, teacher_rows) = match source {
            TeacherSource::None | TeacherSource::Online(_) => (None, Vec::new()),
            TeacherSource::File(p) => {
                let t = TeacherFeatures::read_checking(p, share)?;
                let mut rows = Vec::with_capacity(records.len());
                let (mut missing, mut first_missing) = (0, None);
                for r in records.iter() {
                    match t.row_of(r.image_path) {
                        Some(i) => rows.push(i as u32),
                        None => {
                            missing += 1;
                            first_missing.get_or_insert(r);
                        }
                    }
                }
                if let Some(first) = first_missing {
                    return Err(TrainError::TeacherRowsMissing {
                        teacher: p.to_path_buf(),
                        missing,
                        records: records.len(),
                        image: first.image_path.to_string(),
                        origin: records.origin(&first),
                    }
                    .into());
                }
                (Some(t), rows)
            }
        };
        Ok(TrainData {
            records,
            image_root: image_root.to_path_buf(),
            teacher,
            teacher_rows,
            online_teacher,
            num_slots,
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Where a record's image is.
    pub fn image_path(&self, r: &TrainRecord) -> PathBuf {
        r.image_file(&self.image_root)
    }

    /// Reads every image ahead of training (in parallel, with a progress bar): decoded in full
    /// (`Full`: truncated and corrupt bodies are found too) or only its header (`Header`: missing,
    /// unknown-format, empty or oversized images). Failures are reported before training starts,
    /// the first few named with their record and the total counted.
    pub fn check_images(&self, mode: ImageCheck) -> Result<()> {
        self.check_images_of(mode, WorkShare::WHOLE, UnreadableImages::Stop)
            .map(drop)
    }

    /// [`Self::check_images`] for `share`'s records only (a distributed run's ranks split the
    /// check, so that each image is read once in the run). Under [`UnreadableImages::Skip`]
    /// failures are a warning, unless no image of the share can be read, and their number is
    /// returned.
    pub fn check_images_of(
        &self,
        mode: ImageCheck,
        share: WorkShare,
        unreadable: UnreadableImages,
    ) -> Result<usize> {
        let read: Option<fn(&Path) -> Result<()>> = match mode {
            ImageCheck::None => None,
            ImageCheck::Header => Some(|p| augment::probe(p).map(drop)),
            ImageCheck::Full => Some(|p| augment::decode(p).map(drop)),
        };
        let flagged = self.teacher.as_ref().map_or(0, |t| t.unreadable_images());
        if read.is_none() && flagged == 0 {
            return Ok(0);
        }
        let part = share.range(self.len());
        let total = part.len();
        // The first share's rank speaks for all (they check equal shares side by side).
        let bar = if share.index() == 0 && read.is_some() {
            crate::progress::stderr_bar("checking images", total as u64, false)
        } else {
            indicatif::ProgressBar::hidden()
        };
        // Records the teacher file could not read count as unreadable whatever the check mode:
        // knowing them costs no I/O.
        let failures: Vec<(usize, Error)> = part
            .into_par_iter()
            .filter_map(|i| {
                let result = self.teacher_image_read(i).and_then(|()| match read {
                    Some(read) => read(&self.image_path(&self.records.get(i))),
                    None => Ok(()),
                });
                bar.inc(1);
                result.err().map(|e| (i, e))
            })
            .collect();
        bar.finish_and_clear();
        if failures.is_empty() {
            return Ok(0);
        }
        let examples: Vec<String> = failures
            .iter()
            .take(5)
            .map(|(i, e)| {
                format!(
                    "{} ({})",
                    crate::error::report(e),
                    self.records.origin_of(*i)
                )
            })
            .collect();
        let error = TrainError::UnreadableImages {
            failed: failures.len(),
            total,
            part: (!share.is_whole()).then(|| share.to_string()),
            image_root: self.image_root.clone(),
            examples,
        };
        if unreadable == UnreadableImages::Skip && failures.len() < total {
            tracing::warn!("{error}; each is replaced in its micro-batch (--unreadable-images skip)");
            return Ok(failures.len());
        }
        Err(error.into())
    }

    /// Refuses record `idx` when its teacher row is a flagged row of zeros (`tagfix teacher
    /// --unreadable-images skip` could not read its image): for training its image is unreadable.
    fn teacher_image_read(&self, idx: usize) -> Result<()> {
        match &self.teacher {
            Some(t) if t.image_unreadable(self.teacher_rows[idx] as usize) => {
                Err(TrainError::TeacherImageUnreadable {
                    teacher: t.path.clone(),
                    image: self.records.get(idx).image_path.to_string(),
                }
                .into())
            }
            _ => Ok(()),
        }
    }

    /// Slots the data carries that `absent` (from the manifest) says no record carries.
    pub fn check_absent(&self, absent: &[usize], manifest: &Path) -> Result<()> {
        let mut is_absent = vec![false; self.num_slots];
        for &s in absent {
            is_absent[s] = true;
        }
        if let Some(r) = self
            .records
            .iter()
            .find(|r| r.slots.iter().any(|&s| is_absent[s as usize]))
        {
            let s = r.slots.iter().find(|&&s| is_absent[s as usize]).unwrap();
            return Err(TrainError::AbsentSlotCarried {
                manifest: manifest.to_path_buf(),
                slot: *s,
                origin: self.records.origin(&r),
            }
            .into());
        }
        Ok(())
    }
}

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
fn mix(a: u64, b: u64, c: u64) -> u64 {
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
    debug_assert!(u32::try_from(records).is_ok(), "TrainData refuses more records");
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
struct Decoded {
    batch: MicroBatch,
    /// Position of the micro-batch's first sample in its epoch's order.
    first: usize,
    /// The online teacher's input pixels, one rendered view per image (empty without it).
    teacher_pixels: Vec<f32>,
}

/// [`load_micro_batch`]'s parallel part: decode, augment, targets, the precomputed teacher's rows.
fn decode_micro_batch(
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
        let img = augment::decode(&data.image_path(&data.records.get(idx)))?;
        let pos = (first + k) as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed ^ 0xA5A5_A5A5, epoch, pos));
        let (d, augmented) = cfg.augment.augmented(&img, &mut rng);
        augment::to_chw(&augmented, out);
        // The CLIP teacher sees the same augmented view (crop, flip, operations) at its own
        // resolution, as RAM's teacher sees the model's input (that very image at equal sizes).
        if let Some(t) = online {
            if t.input_size() == cfg.augment.size {
                t.render_augmented(&augmented, teacher_out);
            } else {
                t.render_augmented(&d.image(&img, t.input_size()), teacher_out);
            }
        }
        Ok(d)
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
fn stand_in(unreadable: &[usize], k: usize, len: usize) -> Option<usize> {
    (k + 1..len)
        .chain(0..k)
        .find(|r| !unreadable.contains(r))
}

impl Decoded {
    /// The micro-batch with the online teacher's image and caption features, where there is one
    /// and no teacher file.
    fn with_teacher(self, data: &TrainData, cfg: &LoaderConfig) -> Result<MicroBatch> {
        let Decoded {
            mut batch,
            first,
            teacher_pixels,
        } = self;
        let Some(t) = data.online_teacher.as_ref().filter(|_| data.teacher.is_none()) else {
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

/// Background loader: a producer thread hands out micro-batches `[start_step, end_step)` in order
/// through a bounded channel of `prefetch` micro-batches. Up to `prefetch` micro-batches are decoded
/// at once on the worker pool, their images in parallel, so a worker done with its share of one
/// micro-batch starts on the next instead of waiting for the slowest image of the first (with one
/// at a time, 26 images on 16 workers kept 6 of them idle for the second half of every micro-batch).
/// Each image's augmentation depends only on its position in the epoch, so the batches are the
/// same whatever order the workers finish in.
pub struct Loader {
    rx: Option<Receiver<Result<MicroBatch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Loader {
    /// Starts the producer. `accumulation` micro-batches make one step.
    pub fn start(
        data: Arc<TrainData>,
        cfg: LoaderConfig,
        start_step: u64,
        end_step: u64,
    ) -> Result<Self> {
        let all = 0..cfg.batch / cfg.micro_batch.max(1);
        Self::start_micro_range(data, cfg, start_step, end_step, all)
    }

    /// Starts a producer of only the micro-batches `micros` of each step (a rank's share of the
    /// global batch in distributed training). A micro-batch's samples, their augmentation and its
    /// [`MicroBatch::micro`] index are those of the one-rank run.
    pub fn start_micro_range(
        data: Arc<TrainData>,
        cfg: LoaderConfig,
        start_step: u64,
        end_step: u64,
        micros: std::ops::Range<usize>,
    ) -> Result<Self> {
        let schedule = Schedule {
            steps_per_epoch: cfg.steps_per_epoch(data.len())?,
            data,
            cfg,
            next: (start_step..end_step)
                .flat_map(move |step| micros.clone().map(move |micro| (step, micro))),
            order: None,
            decode: decode_micro_batch,
        };
        Self::spawn(schedule)
    }

    /// Starts the producer thread and its worker pool on `schedule`.
    fn spawn<I>(schedule: Schedule<I>) -> Result<Self>
    where
        I: Iterator<Item = (u64, usize)> + Send + 'static,
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(schedule.cfg.workers)
            .thread_name(|i| format!("tagfix-data-{i}"))
            .build()
            .map_err(|e| TrainError::Threads {
                what: "data threads",
                source: Box::new(e),
            })?;
        let prefetch = schedule.cfg.prefetch.max(1);
        let (tx, rx) = sync_channel(prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tagfix-loader".into())
            .spawn(move || produce(schedule, &pool, prefetch, &tx, &stop2))
            .map_err(|e| TrainError::Threads {
                what: "the loader thread",
                source: Box::new(e),
            })?;
        Ok(Loader {
            rx: Some(rx),
            stop,
            handle: Some(handle),
        })
    }

    /// The next micro-batch; `None` when the range is exhausted.
    pub fn next_batch(&mut self) -> Option<Result<MicroBatch>> {
        self.rx.as_ref()?.recv().ok()
    }
}

/// How the loader's workers decode a micro-batch: [`decode_micro_batch`] (a test swaps it).
type DecodeJob = fn(&TrainData, &LoaderConfig, u64, usize, &[u32]) -> Result<Decoded>;

/// The micro-batches a loader produces, in order, with the current epoch's sample order.
struct Schedule<I> {
    data: Arc<TrainData>,
    cfg: LoaderConfig,
    steps_per_epoch: u64,
    next: I,
    order: Option<(u64, Arc<Vec<u32>>)>,
    decode: DecodeJob,
}

impl<I: Iterator<Item = (u64, usize)>> Schedule<I> {
    /// The next micro-batch's job: step, micro-batch index and its epoch's order.
    fn next_job(&mut self) -> Option<(u64, usize, Arc<Vec<u32>>)> {
        let (step, micro) = self.next.next()?;
        let epoch = step / self.steps_per_epoch;
        let order = match &self.order {
            Some((e, order)) if *e == epoch => order.clone(),
            _ => {
                let order = Arc::new(epoch_order(self.data.len(), self.cfg.seed, epoch));
                self.order = Some((epoch, order.clone()));
                order
            }
        };
        Some((step, micro, order))
    }
}

/// The producer thread: keeps up to `in_flight` micro-batches decoding on `pool`, adds the online
/// teacher's features to each in schedule order and sends it to `tx`; stops after the last, at the
/// first error, or when the loader is dropped.
fn produce<I: Iterator<Item = (u64, usize)>>(
    mut schedule: Schedule<I>,
    pool: &rayon::ThreadPool,
    in_flight: usize,
    tx: &SyncSender<Result<MicroBatch>>,
    stop: &AtomicBool,
) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut finished: BTreeMap<u64, Result<Decoded>> = BTreeMap::new();
    let (mut issued, mut sent) = (0u64, 0u64);
    loop {
        while issued - sent < in_flight as u64 && !stop.load(Ordering::Relaxed) {
            let Some((step, micro, order)) = schedule.next_job() else {
                break;
            };
            let (data, cfg, done_tx, seq) = (schedule.data.clone(), schedule.cfg, done_tx.clone(), issued);
            let decode = schedule.decode;
            pool.spawn(move || {
                let item = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    decode(&data, &cfg, step, micro, &order)
                }))
                .unwrap_or_else(|panic| {
                    Err(TrainError::LoaderPanicked {
                        step: step + 1,
                        micro,
                        reason: crate::train::error::panic_text(panic.as_ref()),
                    }
                    .into())
                });
                // The producer may have stopped; then nobody waits for this result.
                let _ = done_tx.send((seq, item));
            });
            issued += 1;
        }
        if sent == issued {
            return;
        }
        let item = loop {
            if let Some(item) = finished.remove(&sent) {
                break item;
            }
            // Every job sends once, and this thread holds a sender, so this waits for a job.
            let Ok((seq, item)) = done_rx.recv() else {
                return;
            };
            finished.insert(seq, item);
        };
        sent += 1;
        // The online teacher's part, in order on this thread (see `Decoded`).
        let item = item.and_then(|d| d.with_teacher(&schedule.data, &schedule.cfg));
        // After an error nothing more is sent; jobs still running finish into a closed channel.
        let failed = item.is_err();
        if tx.send(item).is_err() || failed || stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full channel.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_differ_and_are_permutations() {
        let a = epoch_order(50, 3, 0);
        let b = epoch_order(50, 3, 1);
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(50, 3, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        // The order runs started with `usize` record numbers followed, so that they resume exactly.
        for epoch in 0..3 {
            let mut wide: Vec<usize> = (0..1000).collect();
            wide.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(7, epoch, 0x5EED)));
            let narrow: Vec<usize> = epoch_order(1000, 7, epoch)
                .into_iter()
                .map(|i| i as usize)
                .collect();
            assert_eq!(narrow, wide);
        }
    }

    /// A synthetic set of 24 records (32 px images) in `dir`, its images checked.
    fn synth_data(dir: &Path) -> Arc<TrainData> {
        let ds = synth::generate(
            &synth::SynthOptions {
                count: 24,
                size: 32,
                seed: 9,
                ..Default::default()
            },
            dir,
        )
        .unwrap();
        let data = Arc::new(
            TrainData::open(
                std::slice::from_ref(&ds.annotations),
                &ds.image_root,
                ds.vocabulary_len,
                Some(&ds.teacher),
            )
            .unwrap(),
        );
        data.check_images(ImageCheck::Full).unwrap();
        data
    }

    /// Two micro-batches of `micro_batch` 16-px images per step.
    fn small_loader(micro_batch: usize, workers: usize, prefetch: usize) -> LoaderConfig {
        LoaderConfig {
            micro_batch,
            batch: 2 * micro_batch,
            augment: Augment::ram(16),
            seed: 5,
            workers,
            prefetch,
            unreadable: UnreadableImages::Stop,
        }
    }

    fn drain(mut l: Loader) -> Vec<Result<MicroBatch>> {
        std::iter::from_fn(|| l.next_batch()).collect()
    }

    #[test]
    fn micro_batches_decoded_at_once_arrive_in_order_and_equal_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let data = synth_data(dir.path());
        let cfg = |workers, prefetch| small_loader(3, workers, prefetch);
        let run = |workers, prefetch| -> Vec<MicroBatch> {
            drain(Loader::start(data.clone(), cfg(workers, prefetch), 0, 9).unwrap())
                .into_iter()
                .map(|b| b.unwrap())
                .collect()
        };
        let one_at_a_time = run(1, 1);
        assert_eq!(one_at_a_time.len(), 18, "9 steps × 2 micro-batches");
        for (i, b) in one_at_a_time.iter().enumerate() {
            assert_eq!((b.step, b.micro), ((i / 2) as u64, i % 2));
        }
        for (workers, prefetch) in [(2, 4), (2, 64), (3, 2)] {
            let many = run(workers, prefetch);
            assert_eq!(many.len(), one_at_a_time.len());
            for (a, b) in one_at_a_time.iter().zip(&many) {
                assert_eq!((a.step, a.micro, a.epoch), (b.step, b.micro, b.epoch));
                assert_eq!(a.indices, b.indices);
                assert_eq!(a.images, b.images, "{workers} workers, {prefetch} at once");
                assert_eq!(a.targets, b.targets);
                assert_eq!(a.clip_feature, b.clip_feature);
            }
        }
    }

    #[test]
    fn an_unreadable_image_stops_the_loader_after_the_batches_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = synth_data(dir.path());
        let cfg = small_loader(2, 2, 8);
        // The image of the 7th sample of epoch 0 (micro-batch 3) disappears after the check.
        let order = epoch_order(data.len(), cfg.seed, 0);
        let victim = data.image_path(&data.records.get(order[6] as usize));
        std::fs::remove_file(&victim).unwrap();
        let got = drain(Loader::start(data.clone(), cfg, 0, 6).unwrap());
        assert_eq!(got.len(), 4, "three micro-batches, then the error, then nothing");
        assert!(got[..3].iter().all(Result::is_ok));
        let name = victim.file_name().unwrap().to_string_lossy().into_owned();
        let e = got[3].as_ref().unwrap_err().to_string();
        assert!(e.contains(&name), "{e}");
    }

    #[test]
    fn stand_ins_are_the_next_readable_positions_wrapping_around() {
        let all = |unreadable: &[usize], len| -> Option<Vec<usize>> {
            unreadable.iter().map(|&k| stand_in(unreadable, k, len)).collect()
        };
        assert_eq!(all(&[], 3), Some(vec![]));
        assert_eq!(all(&[1], 3), Some(vec![2]));
        assert_eq!(all(&[1, 2], 3), Some(vec![0, 0]));
        assert_eq!(all(&[0, 2, 3], 5), Some(vec![1, 4, 4]));
        assert_eq!(all(&[0, 1, 2], 3), None);
        assert_eq!(stand_in(&[0], 0, 1), None);
    }

    /// [`small_loader`] (micro-batches of 3) under `--unreadable-images skip`, and its first epoch's
    /// order of `data`'s records.
    fn skipping_loader(data: &TrainData) -> (LoaderConfig, Vec<u32>) {
        let skip = LoaderConfig {
            unreadable: UnreadableImages::Skip,
            ..small_loader(3, 2, 4)
        };
        (skip, epoch_order(data.len(), skip.seed, 0))
    }

    /// Writes `image` to the first reader of the FIFO `fifo`, then junk to the next one. A reader
    /// is there when a non-blocking open for writing succeeds; the junk waits until the first
    /// reader has closed (an open failing with ENXIO), so that it cannot be appended to the image.
    /// A second reader already waiting before that gap is seen gets an empty file instead (also
    /// unreadable). Gives up after 20 s, so a test that never reads again does not keep it.
    #[cfg(unix)]
    fn serve_once_then_junk(fifo: &Path, image: &[u8]) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(fifo) {
            let _ = w.write_all(image);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut first_reader_gone = false;
        while std::time::Instant::now() < deadline {
            let open = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo);
            match open {
                Ok(mut w) if first_reader_gone => {
                    let _ = w.write_all(b"junk, not an image");
                    return;
                }
                Ok(_) => {}
                Err(e) => first_reader_gone |= e.raw_os_error() == Some(libc::ENXIO),
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// A stand-in whose file changed between its two reads (a FIFO here: the first open gives
    /// the image, the second junk) is unreadable too: the next readable position stands in.
    #[cfg(unix)]
    #[test]
    fn a_stand_in_that_fails_when_read_again_gives_way_to_the_next() {
        use rustix::fs::{mknodat, FileType, Mode, CWD};
        let dir = tempfile::tempdir().unwrap();
        let data = synth_data(dir.path());
        let (skip, order) = skipping_loader(&data);
        let record = |pos: usize| order[pos] as usize;
        let path = |pos: usize| data.image_path(&data.records.get(record(pos)));
        // Micro-batch 1 is positions 3, 4, 5: 5 is gone, so 3 (wrapping around) stands in for it,
        // but 3 is a FIFO that serves its image once.
        let image = std::fs::read(path(3)).unwrap();
        std::fs::remove_file(path(3)).unwrap();
        mknodat(CWD, path(3), FileType::Fifo, Mode::from(0o600), 0).unwrap();
        std::fs::remove_file(path(5)).unwrap();
        let fifo = path(3);
        std::thread::spawn(move || serve_once_then_junk(&fifo, &image));
        let got: Vec<MicroBatch> = drain(Loader::start(data.clone(), skip, 0, 1).unwrap())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let hit = &got[1];
        assert_eq!(hit.indices, [record(3), record(4), record(4)]);
        let skipped: Vec<(usize, usize, usize)> = hit
            .skipped
            .iter()
            .map(|s| (s.position, s.record, s.replaced_by))
            .collect();
        assert_eq!(skipped, [(2, record(5), record(4))]);
        let n = data.num_slots;
        assert_eq!(hit.targets[2 * n..], hit.targets[n..2 * n]);
    }

    #[test]
    fn skipped_images_are_replaced_by_the_next_readable_image_of_their_micro_batch() {
        let dir = tempfile::tempdir().unwrap();
        let data = synth_data(dir.path());
        let (skip, order) = skipping_loader(&data);
        // Positions 1 and 2 of micro-batch 1 (samples 4 and 5) unreadable: both take the image of
        // position 0 (wrapping around), each with its own position's augmentation.
        let record = |pos: usize| order[pos] as usize;
        let path = |pos: usize| data.image_path(&data.records.get(record(pos)));
        let intact = drain(Loader::start(data.clone(), skip, 0, 2).unwrap());
        std::fs::write(path(4), b"not an image").unwrap();
        std::fs::remove_file(path(5)).unwrap();
        let got: Vec<MicroBatch> = drain(Loader::start(data.clone(), skip, 0, 2).unwrap())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 4);
        let hit = &got[1];
        assert_eq!(hit.indices, [record(3), record(3), record(3)]);
        let skipped: Vec<(usize, usize, usize)> = hit
            .skipped
            .iter()
            .map(|s| (s.position, s.record, s.replaced_by))
            .collect();
        assert_eq!(skipped, [(1, record(4), record(3)), (2, record(5), record(3))]);
        let name = |pos| path(pos).file_name().unwrap().to_string_lossy().into_owned();
        assert!(hit.skipped[0].reason.contains(&name(4)), "{:?}", hit.skipped);
        assert!(hit.skipped[1].reason.contains(&name(5)), "{:?}", hit.skipped);
        assert!(hit.skipped[0].reason.contains(": record"), "{:?}", hit.skipped);
        let n = data.num_slots;
        for k in 1..3 {
            assert_eq!(hit.targets[k * n..(k + 1) * n], hit.targets[..n]);
        }
        // The other micro-batches are untouched; the same file at position 4 gives position 4's
        // view of the stand-in.
        for (a, b) in intact.iter().zip(&got).filter(|(_, b)| b.skipped.is_empty()) {
            assert_eq!(a.as_ref().unwrap().images, b.images);
        }
        std::fs::copy(path(3), path(4)).unwrap();
        std::fs::copy(path(3), path(5)).unwrap();
        let copied = drain(Loader::start(data.clone(), skip, 0, 1).unwrap());
        let copied = copied[1].as_ref().unwrap();
        assert!(copied.skipped.is_empty());
        assert_eq!(copied.images, hit.images);
        assert_eq!(copied.draws, hit.draws);
        assert_ne!(hit.images[..16 * 16 * 3], hit.images[16 * 16 * 3..2 * 16 * 16 * 3]);

        // With none of a micro-batch readable, nothing can stand in: the loader stops.
        for pos in 3..6 {
            std::fs::remove_file(path(pos)).unwrap();
        }
        let got = drain(Loader::start(data.clone(), skip, 0, 2).unwrap());
        assert_eq!(got.len(), 2);
        let e = got[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("none of the 3 images of micro-batch 1"), "{e}");

        // The check before training warns and counts under `skip`, and refuses when nothing of
        // the share can be read.
        let whole = WorkShare::WHOLE;
        let checked = data.check_images_of(ImageCheck::Header, whole, UnreadableImages::Skip);
        assert_eq!(checked.unwrap(), 3);
        assert!(data.check_images(ImageCheck::Header).is_err());
        for pos in 0..data.len() {
            let _ = std::fs::remove_file(path(pos));
        }
        let e = data
            .check_images_of(ImageCheck::Header, whole, UnreadableImages::Skip)
            .unwrap_err()
            .to_string();
        assert!(e.contains("24 of 24 training images"), "{e}");
    }

    /// Records whose teacher row is flagged (`tagfix teacher --unreadable-images skip` could not
    /// read their image) are unreadable images for training, whatever their files hold now.
    #[test]
    fn records_the_teacher_could_not_read_are_unreadable_images() {
        use crate::teacher::file::{write_streamed, ImageRows};
        let dir = tempfile::tempdir().unwrap();
        let data = synth_data(dir.path());
        let (skip, order) = skipping_loader(&data);
        let record = |pos: usize| order[pos] as usize;
        // The synthetic set's teacher file again, the rows of the records at positions 4 and 5
        // (micro-batch 1) flagged.
        let t = data.teacher.as_ref().unwrap();
        let keys: Vec<String> = t.keys().iter().map(|k| k.to_string()).collect();
        let row = |pos| t.row_of(data.records.get(record(pos)).image_path).unwrap();
        let flagged = [row(4), row(5)];
        let teacher = dir.path().join("flagged.safetensors");
        write_streamed(
            &teacher,
            &keys,
            Default::default(),
            ImageRows::MayBeUnreadable,
            |sink| {
                for r in 0..keys.len() {
                    match flagged.contains(&r) {
                        true => sink.push_unreadable()?,
                        false => sink.push(&t.image_row(r)?)?,
                    }
                }
                Ok(())
            },
            |sink| (0..keys.len()).try_for_each(|r| sink.push(&t.text_row(r)?)),
        )
        .unwrap();
        let open = || {
            let files = &data.records.files;
            Arc::new(TrainData::open(files, &data.image_root, data.num_slots, Some(&teacher)).unwrap())
        };
        let flagged_data = open();
        let got: Vec<MicroBatch> = drain(Loader::start(flagged_data.clone(), skip, 0, 2).unwrap())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got[1].indices, [record(3), record(3), record(3)]);
        assert_eq!(got[1].skipped.len(), 2);
        for s in &got[1].skipped {
            assert!(s.reason.contains("flagged.safetensors has no image features"), "{}", s.reason);
        }
        // The stand-ins' teacher rows come with them.
        let mut stand_in = Vec::new();
        flagged_data.teacher.as_ref().unwrap().append_image_row(row(3), &mut stand_in).unwrap();
        assert_eq!(got[1].clip_feature.as_ref().unwrap()[TEACHER_DIM..2 * TEACHER_DIM], stand_in[..]);
        // Under `stop` the loader refuses them, and so does the check before training in any mode
        // (knowing them costs no reading); under `skip` the check counts them once.
        let stop = small_loader(3, 2, 4);
        let got = drain(Loader::start(flagged_data.clone(), stop, 0, 2).unwrap());
        let e = got[1].as_ref().unwrap_err().to_string();
        let image = data.records.get(record(4)).image_path.to_string();
        assert!(e.contains(&image) || e.contains(data.records.get(record(5)).image_path), "{e}");
        let whole = WorkShare::WHOLE;
        for mode in [ImageCheck::None, ImageCheck::Header, ImageCheck::Full] {
            let e = flagged_data
                .check_images_of(mode, whole, UnreadableImages::Stop)
                .unwrap_err()
                .to_string();
            assert!(e.contains("2 of 24 training images"), "{mode:?}: {e}");
            let skipped = flagged_data.check_images_of(mode, whole, UnreadableImages::Skip);
            assert_eq!(skipped.unwrap(), 2, "{mode:?}");
        }
        assert_eq!(data.check_images_of(ImageCheck::None, whole, UnreadableImages::Stop).unwrap(), 0);
    }

    #[test]
    fn a_panicking_job_stops_the_loader_with_an_error_naming_its_micro_batch() {
        let dir = tempfile::tempdir().unwrap();
        let data = synth_data(dir.path());
        let cfg = small_loader(2, 2, 4);
        let schedule = Schedule {
            steps_per_epoch: cfg.steps_per_epoch(data.len()).unwrap(),
            data,
            cfg,
            next: (0..5u64).flat_map(|step| (0..2).map(move |micro| (step, micro))),
            order: None,
            decode: |data, cfg, step, micro, order| {
                assert!((step, micro) != (2, 1), "a bug in the augmentation");
                decode_micro_batch(data, cfg, step, micro, order)
            },
        };
        let got = drain(Loader::spawn(schedule).unwrap());
        assert_eq!(got.len(), 6, "five micro-batches, then the panic as an error");
        assert!(got[..5].iter().all(Result::is_ok));
        let e = got[5].as_ref().unwrap_err();
        let Error::Train(train) = e else {
            panic!("{e:?}")
        };
        assert!(
            matches!(
                train.as_ref(),
                TrainError::LoaderPanicked { step: 3, micro: 1, reason }
                    if reason.contains("a bug in the augmentation")
            ),
            "{e:?}"
        );
    }

    #[test]
    fn loader_is_reproducible_and_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let data = synth_data(dir.path());
        let cfg = LoaderConfig {
            seed: 1,
            ..small_loader(4, 2, 2)
        };
        let collect = |start, end| -> Vec<MicroBatch> {
            drain(Loader::start(data.clone(), cfg, start, end).unwrap())
                .into_iter()
                .map(|b| b.unwrap())
                .collect()
        };
        let full = collect(0, 6);
        assert_eq!(full.len(), 12, "6 steps × 2 micro-batches");
        assert_eq!(
            (full[6].step, full[6].epoch),
            (3, 1),
            "3 steps per epoch of 24 records"
        );
        let tail = collect(4, 6);
        assert_eq!(tail.len(), 4);
        for (a, b) in full[8..].iter().zip(&tail) {
            assert_eq!((a.step, a.micro, &a.indices), (b.step, b.micro, &b.indices));
            assert_eq!(a.images, b.images, "same augmentation after a restart");
            assert_eq!(a.targets, b.targets);
            assert_eq!(a.clip_feature, b.clip_feature);
        }
        // An early drop does not hang.
        let mut l = Loader::start(data.clone(), cfg, 0, 100).unwrap();
        l.next_batch().unwrap().unwrap();
        drop(l);
    }
}
