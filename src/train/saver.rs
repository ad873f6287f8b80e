//! Checkpoints written off the training thread. Saving takes two parts: a [`Snapshot`] copies the
//! step's tensors to the host (on CUDA into page-locked memory with non-blocking copies and one
//! synchronisation, so the copies run at the bus's speed), then a background thread writes the
//! files into a hidden folder, renames it into place and prunes old checkpoints while the next
//! steps run. One write is in flight at a time: the next save, [`CheckpointWriter::wait`] or
//! dropping the writer collects its result, so a failed write is reported and never lost.

use super::error::TrainError;
use super::run::{checkpoint_dir, CheckpointState};
use crate::error::{Error, Result};
use crate::fsutil::checksums;
use crate::monitor::RunDir;
use crate::tensors::safetensors_io::{self, StreamedTensor};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// A checkpoint's contents on the host, independent of the training tensors: the next optimizer
/// step may update those in place while this is written.
pub struct Snapshot {
    model: Vec<(String, Tensor)>,
    optimizer: Vec<(String, Tensor)>,
    state: CheckpointState,
}

impl Snapshot {
    /// Copies the model's parameters (sorted by name) and the optimizer state (the whole, as
    /// [`super::optim::AdamW::state_tensors`] names it) to the host.
    pub fn take(
        vs: &VarStore,
        optimizer: Vec<(String, Tensor)>,
        state: &CheckpointState,
    ) -> Result<Self> {
        let mut model = vs
            .variables()
            .into_iter()
            .map(|(n, t)| host_copy(&t).map(|c| (n, c)))
            .collect::<Result<Vec<_>>>()?;
        model.sort_by(|a, b| a.0.cmp(&b.0));
        let optimizer = optimizer
            .into_iter()
            .map(|(n, t)| host_copy(&t).map(|c| (n, c)))
            .collect::<Result<Vec<_>>>()?;
        if let Device::Cuda(index) = vs.device() {
            // The non-blocking copies above are queued on the stream; wait for them once.
            tch::Cuda::synchronize(index as i64);
        }
        Ok(Snapshot {
            model,
            optimizer,
            state: state.clone(),
        })
    }

    /// Optimizer steps completed at this snapshot.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The bytes its files take on the disk ([`checkpoint_bytes`]).
    pub fn bytes(&self) -> u64 {
        checkpoint_bytes(
            self.model
                .iter()
                .chain(&self.optimizer)
                .map(|(_, t)| tensor_bytes(t)),
        )
    }
}

/// The bytes a checkpoint of tensors with these values' sizes ([`tensor_bytes`]; the model's, then
/// the optimizer's) takes on the disk, about: the values, a header line per tensor, and a megabyte
/// for `state.json`, `SHA256SUMS` and the file system's blocks.
pub fn checkpoint_bytes(tensors: impl Iterator<Item = u64>) -> u64 {
    let (mut data, mut count) = (0u64, 0u64);
    for bytes in tensors {
        data += bytes;
        count += 1;
    }
    data + 256 * count + (1 << 20)
}

/// The bytes of `t`'s values.
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// An owned host copy of `t`. From CUDA, `to(cpu, non_blocking=true)` allocates the destination
/// in page-locked memory (ATen's `_to_copy` pins it for a non-blocking device-to-host copy), which
/// lets the copy run asynchronously; on the CPU it is a plain copy.
fn host_copy(t: &Tensor) -> Result<Tensor> {
    t.detach()
        .f_to_device_(Device::Cpu, t.kind(), true, true)
        .map_err(|e| {
            TrainError::HostRead {
                what: "a checkpoint tensor",
                source: Box::new(e),
            }
            .into()
        })
}

/// Writes `snapshot` as `RUN_DIR/checkpoints/step-NNNNNNNN/` (model, optimizer state,
/// `state.json`, `SHA256SUMS`) through a hidden temporary folder renamed into place, then keeps the
/// newest `keep` checkpoints. Returns the checkpoint's folder. A checkpoint the file system has no
/// room for is refused before anything is written; one whose write fails (a full disk or quota)
/// leaves nothing behind, and the error names the newest checkpoint a resume continues from.
pub fn write_checkpoint(run: &RunDir, snapshot: &Snapshot, keep: usize) -> Result<PathBuf> {
    let step = snapshot.state.step;
    let dir = checkpoint_dir(run, step);
    let tmp = unfinished_dir(run, step);
    let _ = std::fs::remove_dir_all(&tmp);
    let written = ensure_space(&run.checkpoints_dir(), snapshot.bytes())
        .and_then(|()| write_files(&tmp, snapshot));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(TrainError::CheckpointNotWritten {
            dir,
            newest: super::run::latest_checkpoint(run).ok().flatten(),
            source: Box::new(e),
        }
        .into());
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    crate::fsutil::sync_to_disk(&run.checkpoints_dir())?;
    prune(run, keep)?;
    Ok(dir)
}

/// The hidden folder a checkpoint of `step` is written into before its rename.
fn unfinished_dir(run: &RunDir, step: u64) -> PathBuf {
    run.checkpoints_dir().join(format!(".step-{step:08}.tmp"))
}

/// Refuses a checkpoint of `needed` bytes where the file system of `dir` reports less free space
/// (where it reports none, the write itself finds out).
fn ensure_space(dir: &Path, needed: u64) -> Result<()> {
    match crate::fsutil::available_space(dir) {
        Some(available) if available < needed => Err(TrainError::NoSpaceForCheckpoint {
            dir: dir.to_path_buf(),
            needed,
            available,
        }
        .into()),
        _ => Ok(()),
    }
}

/// The checkpoint's files in `tmp`, hashed as they are written (the optimizer's on a second thread
/// while this one writes the model's) and flushed to the disk.
fn write_files(tmp: &Path, snapshot: &Snapshot) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    let [model_name, opt_name, state_name] = super::run_files::CHECKPOINT_FILES;
    // Handles on the same host storage, to move to the second thread (a `Tensor` is not `Sync`).
    let optimizer: Vec<_> = snapshot
        .optimizer
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let opt_path = tmp.join(opt_name);
    let opt_path = opt_path.as_path();
    let (model_digest, opt_digest) = std::thread::scope(|scope| {
        let opt = std::thread::Builder::new()
            .name("tagfix-checkpoint-optimizer".into())
            .spawn_scoped(scope, move || write_tensor_file(opt_path, &optimizer));
        let model = write_tensor_file(&tmp.join(model_name), &snapshot.model);
        let opt = match opt {
            Ok(handle) => handle.join().unwrap_or_else(|panic| {
                Err(TrainError::CheckpointWriter {
                    dir: tmp.to_path_buf(),
                    reason: crate::train::error::panic_text(panic.as_ref()),
                }
                .into())
            }),
            // No second thread to be had: written on this one.
            Err(_) => write_tensor_file(opt_path, &snapshot.optimizer),
        };
        (model, opt)
    });
    super::run_files::write_state(tmp, &snapshot.state)?;
    let state_digest = crate::fsutil::sha256_file(&tmp.join(state_name))?;
    // `sha256sum -c` checks the folder, a copy of it too; a resume or an evaluation finds bytes
    // that changed on the disk after this write.
    let list = checksums::ChecksumList {
        entries: vec![
            (model_name.to_string(), model_digest?),
            (opt_name.to_string(), opt_digest?),
            (state_name.to_string(), state_digest),
        ],
    };
    checksums::write_list(tmp, &list)?;
    // Each file was synced before its rename ([`crate::fsutil::write_atomic`]); the folder's entries
    // too before the folder appears, so a machine that dies after the rename leaves a whole
    // checkpoint (or, where a disk loses it anyway, one a resume finds damaged and passes over).
    crate::fsutil::sync_to_disk(tmp)
}

/// Writes host tensors as the safetensors file `path` a bounded piece at a time (no second copy of
/// a tensor in memory, I/O errors naming the file), returning the file's SHA-256.
fn write_tensor_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<String> {
    let streamed = tensors
        .iter()
        .map(|(name, t)| {
            Ok(StreamedTensor {
                name: name.clone(),
                dtype: super::weights::dtype_of(t.kind())?,
                shape: t.size().iter().map(|&d| d as usize).collect(),
                write: Box::new(move |w: &mut dyn std::io::Write| write_values(t, w)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors_io::write_streamed_sha256(path, streamed, &Default::default())
}

/// The most bytes of a tensor [`write_values`] copies out at a time.
const PIECE_BYTES: usize = 8 << 20;

/// Writes a host tensor's values to `w` (in memory order: the snapshot's copies are contiguous),
/// through a buffer of at most [`PIECE_BYTES`].
fn write_values(t: &Tensor, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let flat = t.f_reshape([-1]).map_err(std::io::Error::other)?;
    let (count, width) = (flat.numel(), t.kind().elt_size_in_bytes());
    let per_piece = (PIECE_BYTES / width).max(1);
    let mut buf = vec![0u8; per_piece.min(count) * width];
    let mut start = 0;
    while start < count {
        let n = per_piece.min(count - start);
        let bytes = &mut buf[..n * width];
        flat.f_narrow(0, start as i64, n as i64)
            .and_then(|piece| piece.f_copy_data_u8(bytes, n))
            .map_err(std::io::Error::other)?;
        w.write_all(bytes)?;
        start += n;
    }
    Ok(())
}

/// Removes the hidden folders of checkpoints whose write never finished (a process killed while
/// writing; each can hold gigabytes) from a run's checkpoints folder; returns them with their sizes.
/// Only the run's writer may call it, before its first write.
pub fn remove_unfinished(run: &RunDir) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(run.checkpoints_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let unfinished = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".step-") && n.ends_with(".tmp"));
        if unfinished && path.is_dir() {
            let bytes = crate::fsutil::folder_bytes(&path);
            if std::fs::remove_dir_all(&path).is_ok() {
                removed.push((path, bytes));
            }
        }
    }
    removed.sort();
    removed
}

/// Removes all but the newest `keep` checkpoints (`step-N` folders; other folders a person put
/// there are left alone).
fn prune(run: &RunDir, keep: usize) -> Result<()> {
    let all = super::run_files::step_folders(&run.checkpoints_dir())?;
    for old in &all[..all.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(())
}

/// Writes checkpoints on a background thread, one at a time.
#[derive(Default)]
pub struct CheckpointWriter {
    pending: Option<(PathBuf, JoinHandle<Result<PathBuf>>)>,
}

impl CheckpointWriter {
    /// Waits for the previous write (returning its error, if it failed), then starts writing
    /// `snapshot` and returns the folder it will be in once written.
    pub fn start(&mut self, run: &RunDir, snapshot: Snapshot, keep: usize) -> Result<PathBuf> {
        self.wait()?;
        let dir = checkpoint_dir(run, snapshot.step());
        let run = run.clone();
        let handle = std::thread::Builder::new()
            .name("tagfix-checkpoint".into())
            .spawn(move || write_checkpoint(&run, &snapshot, keep))
            .map_err(|e| TrainError::CheckpointWriter {
                dir: dir.clone(),
                reason: format!("cannot start a thread: {e}"),
            })?;
        self.pending = Some((dir.clone(), handle));
        Ok(dir)
    }

    /// Waits for the write in flight: its folder once complete, `None` when nothing was being
    /// written.
    pub fn wait(&mut self) -> Result<Option<PathBuf>> {
        let Some((dir, handle)) = self.pending.take() else {
            return Ok(None);
        };
        match handle.join() {
            Ok(written) => written.map(Some),
            Err(panic) => Err(TrainError::CheckpointWriter {
                dir,
                reason: crate::train::error::panic_text(panic.as_ref()),
            }
            .into()),
        }
    }

    /// Whether a write is in flight (started and not yet collected).
    #[cfg(test)]
    fn is_writing(&self) -> bool {
        self.pending.is_some()
    }
}

impl Drop for CheckpointWriter {
    /// A run ending on an error still finishes the checkpoint it started.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!("{}", crate::error::report(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::TrainConfig;
    use crate::train::config::{LossBalance, LossWeights};
    use crate::train::objective::LossWeighting;
    use crate::train::optim::AdamW;
    use std::path::Path;
    use tch::nn::Init;
    use tch::Kind;

    fn state(step: u64) -> CheckpointState {
        CheckpointState {
            schema: super::super::run::STATE_SCHEMA.into(),
            step,
            epoch: 0,
            step_in_epoch: step,
            samples_seen: step * 4,
            seed: 0,
            torch_rng: "test".into(),
            records: 8,
            data_fingerprint: "f".into(),
            weighting: LossWeighting::new(LossWeights::default(), LossBalance::Initial, 2),
            wall_s: 0.0,
            model: "tiny".into(),
        }
    }

    /// A run folder in a temporary directory (kept alive by the first value) and a small model
    /// with its optimizer.
    fn fresh_run() -> (tempfile::TempDir, RunDir, VarStore, AdamW) {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let (vs, opt) = model();
        (tmp, run, vs, opt)
    }

    fn model() -> (VarStore, AdamW) {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = (&root / "encoder").var("weight", &[3, 4], Init::Const(1.0));
        let _ = (&root / "head").var("bias", &[4], Init::Const(2.0));
        let opt = AdamW::new(&vs, &[], &TrainConfig::default()).unwrap();
        (vs, opt)
    }

    fn saved(dir: &Path, name: &str) -> Tensor {
        Tensor::read_safetensors(dir.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    }

    #[test]
    fn a_snapshot_keeps_the_values_of_its_step_while_training_goes_on() {
        let _torch = crate::train::torch_test_lock();
        let (_tmp, run, vs, opt) = fresh_run();
        let snapshot = Snapshot::take(&vs, opt.state_tensors(), &state(3)).unwrap();
        // The next optimizer step updates the parameters in place before the file is written.
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let _ = t.fill_(9.0);
            }
        });
        let expected_bytes = snapshot.bytes();
        let mut writer = CheckpointWriter::default();
        let dir = writer.start(&run, snapshot, 2).unwrap();
        assert!(writer.is_writing());
        assert_eq!(writer.wait().unwrap(), Some(dir.clone()));
        assert!(dir.ends_with("step-00000003"));
        let w = saved(&dir, "encoder.weight");
        assert_eq!(w.size(), vec![3, 4]);
        assert_eq!(
            w.sum(Kind::Float).double_value(&[]),
            12.0,
            "step 3's values"
        );
        assert_eq!(
            saved(&dir, "head.bias").sum(Kind::Float).double_value(&[]),
            8.0
        );
        assert!(dir.join("optimizer.safetensors").is_file() && dir.join("state.json").is_file());
        // Every file listed in its SHA256SUMS, as `sha256sum -c` reads it.
        let files = crate::train::run_files::CHECKPOINT_FILES;
        assert_eq!(
            checksums::verify_folder(&dir, &files).unwrap(),
            checksums::Verified::Matched
        );
        let listed: Vec<String> = checksums::read_checksums(&dir)
            .unwrap()
            .unwrap()
            .entries
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(listed, files);
        // The space the writer asks the file system for covers what it wrote.
        let written: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(written <= expected_bytes, "{written} > {expected_bytes}");
        assert_eq!(writer.wait().unwrap(), None, "nothing in flight");
    }

    #[test]
    fn tensor_files_read_back_as_tch_writes_them_and_hash_to_their_bytes() {
        let _torch = crate::train::torch_test_lock();
        let tmp = tempfile::tempdir().unwrap();
        // Over two pieces, bf16, an integer, a scalar, an empty tensor, a transposed (strided) view.
        let long = (PIECE_BYTES / 4 + 3) as i64;
        let tensors: Vec<(String, Tensor)> = vec![
            (
                "long".into(),
                Tensor::arange(long, (Kind::Float, Device::Cpu)),
            ),
            (
                "half".into(),
                Tensor::randn([5, 7], (Kind::BFloat16, Device::Cpu)),
            ),
            ("count".into(), Tensor::from_slice(&[3i64, -1])),
            ("scalar".into(), Tensor::from(2.5f64)),
            (
                "none".into(),
                Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
            ),
            (
                "strided".into(),
                Tensor::randn([3, 4], (Kind::Float, Device::Cpu)).tr(),
            ),
        ];
        let ours = tmp.path().join("ours.safetensors");
        let digest = write_tensor_file(&ours, &tensors).unwrap();
        assert_eq!(digest, crate::fsutil::sha256_file(&ours).unwrap());
        let theirs = tmp.path().join("tch.safetensors");
        // tch's writer takes contiguous tensors only.
        let contiguous: Vec<_> = tensors.iter().map(|(n, t)| (n, t.contiguous())).collect();
        Tensor::write_safetensors(&contiguous, &theirs).unwrap();
        let read = |p: &Path| {
            let mut all = Tensor::read_safetensors(p).unwrap();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        let (ours, theirs) = (read(&ours), read(&theirs));
        assert_eq!(ours.len(), tensors.len());
        for ((n, a), (m, b)) in ours.iter().zip(&theirs) {
            assert_eq!((n, a.kind(), a.size()), (m, b.kind(), b.size()));
            assert!(a.equal(b), "{n}");
        }
    }

    #[test]
    fn a_checkpoint_larger_than_the_free_space_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        ensure_space(dir.path(), 1).unwrap();
        let e = ensure_space(dir.path(), u64::MAX).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Io);
        assert!(
            e.to_string()
                .contains("is free on its file system: free space"),
            "{e}"
        );
    }

    #[test]
    fn unfinished_writes_are_removed_and_checkpoints_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let root = run.checkpoints_dir();
        for name in [".step-00000003.tmp", "step-00000002"] {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join("model.safetensors"), [0u8; 10]).unwrap();
        }
        std::fs::write(root.join(".step-00000004.tmp"), b"a file, not ours").unwrap();
        let removed = remove_unfinished(&run);
        assert_eq!(removed, vec![(root.join(".step-00000003.tmp"), 10)]);
        assert!(root.join("step-00000002/model.safetensors").is_file());
        assert!(root.join(".step-00000004.tmp").is_file());
        assert!(remove_unfinished(&run).is_empty());
    }

    #[test]
    fn writes_follow_one_another_and_keep_the_newest() {
        let _torch = crate::train::torch_test_lock();
        let (_tmp, run, vs, opt) = fresh_run();
        let mut writer = CheckpointWriter::default();
        for step in 1..=4 {
            let snapshot = Snapshot::take(&vs, opt.state_tensors(), &state(step)).unwrap();
            writer.start(&run, snapshot, 2).unwrap();
        }
        writer.wait().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(run.checkpoints_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["step-00000003", "step-00000004"]);
    }

    #[test]
    fn pruning_keeps_the_newest_steps_and_what_a_person_named_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let root = run.checkpoints_dir();
        // Step 100000000 has a ninth digit: by name it would sort before step 99999999.
        for name in [
            "step-99999999",
            "step-100000000",
            "step-00000400-best",
            "step-00000005",
        ] {
            std::fs::create_dir_all(root.join(name)).unwrap();
        }
        prune(&run, 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["step-00000400-best", "step-100000000", "step-99999999"]
        );
    }

    #[test]
    fn a_failed_write_is_reported_by_the_next_save() {
        let _torch = crate::train::torch_test_lock();
        let (_tmp, run, vs, opt) = fresh_run();
        // A file where the checkpoints folder should be: the write cannot create its folder.
        std::fs::remove_dir_all(run.checkpoints_dir()).unwrap();
        std::fs::write(run.checkpoints_dir(), b"not a folder").unwrap();
        let mut writer = CheckpointWriter::default();
        let snapshot = Snapshot::take(&vs, opt.state_tensors(), &state(1)).unwrap();
        writer.start(&run, snapshot, 2).unwrap();
        let snapshot = Snapshot::take(&vs, opt.state_tensors(), &state(2)).unwrap();
        let err = crate::error::report(&writer.start(&run, snapshot, 2).unwrap_err());
        assert!(
            err.contains("step-00000001: checkpoint not written")
                && err.contains("no checkpoint of this run is written yet")
                && err.contains(".step-00000001.tmp"),
            "{err}"
        );
        assert!(!writer.is_writing(), "the failed save started nothing");
    }
}
