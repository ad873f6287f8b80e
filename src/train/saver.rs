//! Checkpoints written off the training thread. Saving takes two parts: a [`Snapshot`] copies the
//! step's tensors to the host (on CUDA into page-locked memory with non-blocking copies and one
//! synchronisation, so the copies run at the bus's speed), then a background thread writes the
//! files into a hidden folder, renames it into place and prunes old checkpoints while the next
//! steps run. One write is in flight at a time: the next save, [`CheckpointWriter::wait`] or
//! dropping the writer collects its result, so a failed write is reported and never lost.

use super::error::TrainError;
use super::run::{checkpoint_dir, tensors_error, CheckpointState};
use crate::error::{Error, Result};
use crate::fsutil::checksums;
use crate::monitor::RunDir;
use std::path::PathBuf;
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
/// `state.json`) through a hidden temporary folder renamed into place, then keeps the newest
/// `keep` checkpoints. Returns the checkpoint's folder.
pub fn write_checkpoint(run: &RunDir, snapshot: &Snapshot, keep: usize) -> Result<PathBuf> {
    let step = snapshot.state.step;
    let dir = checkpoint_dir(run, step);
    let tmp = run.checkpoints_dir().join(format!(".step-{step:08}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let model_path = tmp.join("model.safetensors");
    Tensor::write_safetensors(&snapshot.model, &model_path)
        .map_err(|e| tensors_error(&model_path, "write", e))?;
    let opt_path = tmp.join("optimizer.safetensors");
    Tensor::write_safetensors(&snapshot.optimizer, &opt_path)
        .map_err(|e| tensors_error(&opt_path, "write", e))?;
    super::run_files::write_state(&tmp, &snapshot.state)?;
    // Read back from the page cache and hashed while the next steps run: a resume or an evaluation
    // then finds bytes that changed on the disk later (`sha256sum -c` checks a copy too).
    checksums::write_checksums(&tmp, &super::run_files::CHECKPOINT_FILES)?;
    // On the disk before the folder appears, so a machine that dies after the rename leaves a whole
    // checkpoint (or, where a disk loses it anyway, one a resume finds damaged and passes over).
    let list = checksums::list_path(&tmp);
    for path in [&model_path, &opt_path, &list, &tmp] {
        crate::fsutil::sync_to_disk(path)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    crate::fsutil::sync_to_disk(&run.checkpoints_dir())?;
    prune(run, keep)?;
    Ok(dir)
}

/// Removes all but the newest `keep` checkpoints.
fn prune(run: &RunDir, keep: usize) -> Result<()> {
    let root = run.checkpoints_dir();
    let mut all: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    all.sort();
    while all.len() > keep {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
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
    use crate::train::optim::AdamW;
    use crate::train::config::TrainConfig;
    use std::path::Path;
    use crate::train::config::{LossBalance, LossWeights};
    use crate::train::objective::LossWeighting;
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
        let mut writer = CheckpointWriter::default();
        let dir = writer.start(&run, snapshot, 2).unwrap();
        assert!(writer.is_writing());
        assert_eq!(writer.wait().unwrap(), Some(dir.clone()));
        assert!(dir.ends_with("step-00000003"));
        let w = saved(&dir, "encoder.weight");
        assert_eq!(w.size(), vec![3, 4]);
        assert_eq!(w.sum(Kind::Float).double_value(&[]), 12.0, "step 3's values");
        assert_eq!(saved(&dir, "head.bias").sum(Kind::Float).double_value(&[]), 8.0);
        assert!(dir.join("optimizer.safetensors").is_file() && dir.join("state.json").is_file());
        // Every file listed in its SHA256SUMS, as `sha256sum -c` reads it.
        let files = crate::train::run_files::CHECKPOINT_FILES;
        assert_eq!(
            checksums::verify_folder(&dir, &files).unwrap(),
            checksums::Verified::Matched
        );
        let listed: Vec<String> = checksums::read_checksums(&dir).unwrap().unwrap().entries
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(listed, files);
        assert_eq!(writer.wait().unwrap(), None, "nothing in flight");
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
        let err = writer.start(&run, snapshot, 2).unwrap_err().to_string();
        assert!(err.contains(".step-00000001.tmp"), "{err}");
        assert!(!writer.is_writing(), "the failed save started nothing");
    }
}
