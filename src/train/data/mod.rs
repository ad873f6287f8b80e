//! Training data: RAM-format records, images under a root folder, optional teacher features, and a
//! loader that decodes and augments micro-batches on worker threads ahead of the training step.
//!
//! Reproducibility: epoch `e` visits the records in a permutation drawn from `(seed, e)`, dropping
//! the last incomplete batch (as RAM's loader, `drop_last=True`); the augmentation of the sample at
//! position `i` of epoch `e` draws from its own generator seeded by `(seed, e, i)`. A batch's contents
//! therefore depend only on the seed and the global step, not on thread count or timing, and the
//! data position of a checkpoint is its step.

pub mod augment;
mod batch;
mod loader;
pub mod randaugment;
pub mod synth;

pub use crate::annotations::records::{RecordSet, TrainRecord};
pub use crate::teacher::file::{TeacherFeatures, TEACHER_DIM};
pub use augment::{Augment, Draw};
pub use batch::{epoch_order, load_micro_batch, LoaderConfig, MicroBatch, SkippedImage};
pub use loader::Loader;

use crate::annotations::records::ReadOptions;
use crate::share::WorkShare;
use crate::teacher::online::OnlineTeacher;
use crate::teacher::OnlineTeacherConfig;
use crate::train::config::{ImageCheck, UnreadableImages};

use crate::error::{Error, Result};
use crate::train::error::TrainError;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

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
            tracing::warn!(
                "{error}; each is replaced in its micro-batch (--unreadable-images skip)"
            );
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

#[cfg(test)]
mod tests {
    use super::batch::{decode_micro_batch, mix, stand_in};
    use super::loader::Schedule;
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::sync::Arc;

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
        assert_eq!(
            got.len(),
            4,
            "three micro-batches, then the error, then nothing"
        );
        assert!(got[..3].iter().all(Result::is_ok));
        let name = victim.file_name().unwrap().to_string_lossy().into_owned();
        let e = got[3].as_ref().unwrap_err().to_string();
        assert!(e.contains(&name), "{e}");
    }

    #[test]
    fn stand_ins_are_the_next_readable_positions_wrapping_around() {
        let all = |unreadable: &[usize], len| -> Option<Vec<usize>> {
            unreadable
                .iter()
                .map(|&k| stand_in(unreadable, k, len))
                .collect()
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

    /// A micro-batch's skips as (position, unreadable record, the record standing in).
    fn skips(batch: &MicroBatch) -> Vec<(usize, usize, usize)> {
        let skip = |s: &SkippedImage| (s.position, s.record, s.replaced_by);
        batch.skipped.iter().map(skip).collect()
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
        assert_eq!(skips(hit), [(2, record(5), record(4))]);
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
        assert_eq!(
            skips(hit),
            [(1, record(4), record(3)), (2, record(5), record(3))]
        );
        let name = |pos| {
            path(pos)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        assert!(
            hit.skipped[0].reason.contains(&name(4)),
            "{:?}",
            hit.skipped
        );
        assert!(
            hit.skipped[1].reason.contains(&name(5)),
            "{:?}",
            hit.skipped
        );
        assert!(
            hit.skipped[0].reason.contains(": record"),
            "{:?}",
            hit.skipped
        );
        let n = data.num_slots;
        for k in 1..3 {
            assert_eq!(hit.targets[k * n..(k + 1) * n], hit.targets[..n]);
        }
        // The other micro-batches are untouched; the same file at position 4 gives position 4's
        // view of the stand-in.
        for (a, b) in intact
            .iter()
            .zip(&got)
            .filter(|(_, b)| b.skipped.is_empty())
        {
            assert_eq!(a.as_ref().unwrap().images, b.images);
        }
        std::fs::copy(path(3), path(4)).unwrap();
        std::fs::copy(path(3), path(5)).unwrap();
        let copied = drain(Loader::start(data.clone(), skip, 0, 1).unwrap());
        let copied = copied[1].as_ref().unwrap();
        assert!(copied.skipped.is_empty());
        assert_eq!(copied.images, hit.images);
        assert_eq!(copied.draws, hit.draws);
        assert_ne!(
            hit.images[..16 * 16 * 3],
            hit.images[16 * 16 * 3..2 * 16 * 16 * 3]
        );

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
            Arc::new(
                TrainData::open(files, &data.image_root, data.num_slots, Some(&teacher)).unwrap(),
            )
        };
        let flagged_data = open();
        let got: Vec<MicroBatch> = drain(Loader::start(flagged_data.clone(), skip, 0, 2).unwrap())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got[1].indices, [record(3), record(3), record(3)]);
        assert_eq!(got[1].skipped.len(), 2);
        for s in &got[1].skipped {
            assert!(
                s.reason
                    .contains("flagged.safetensors has no image features"),
                "{}",
                s.reason
            );
        }
        // The stand-ins' teacher rows come with them.
        let mut stand_in = Vec::new();
        flagged_data
            .teacher
            .as_ref()
            .unwrap()
            .append_image_row(row(3), &mut stand_in)
            .unwrap();
        assert_eq!(
            got[1].clip_feature.as_ref().unwrap()[TEACHER_DIM..2 * TEACHER_DIM],
            stand_in[..]
        );
        // Under `stop` the loader refuses them, and so does the check before training in any mode
        // (knowing them costs no reading); under `skip` the check counts them once.
        let stop = small_loader(3, 2, 4);
        let got = drain(Loader::start(flagged_data.clone(), stop, 0, 2).unwrap());
        let e = got[1].as_ref().unwrap_err().to_string();
        let image = data.records.get(record(4)).image_path.to_string();
        assert!(
            e.contains(&image) || e.contains(data.records.get(record(5)).image_path),
            "{e}"
        );
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
        assert_eq!(
            data.check_images_of(ImageCheck::None, whole, UnreadableImages::Stop)
                .unwrap(),
            0
        );
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
        assert_eq!(
            got.len(),
            6,
            "five micro-batches, then the panic as an error"
        );
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
