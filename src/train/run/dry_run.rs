//! `train --dry-run`: what the run would do, checked without taking a step.

use super::resume::checkpoint_to_resume;
use super::Prepared;
use crate::error::Result;
use crate::fsutil::checksums::Verified;
use crate::train::error::TrainError;
use crate::train::run_files::{checkpoint_folders, newest_checkpoint_in, Resumable};
use crate::train::trainer::RunStart;
use crate::train::weighting::LossWeighting;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Tensor;

/// What `tagfix train --dry-run` established: the inputs checked and the model built ([`super::prepare()`]),
/// and `--out` as the run would use it; nothing trained or written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    pub out: PathBuf,
    /// The checkpoint a resume would continue from.
    pub resume_from: Option<PathBuf>,
    /// Whether that checkpoint's files were checked against its `SHA256SUMS` (`false`: it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_verified: Option<bool>,
    /// `--auto-resume` on a folder an earlier attempt left without a checkpoint: its records would
    /// be replaced.
    pub again: bool,
    /// The step the run would start from (the checkpoint's, else 0).
    pub start_step: u64,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    pub records: usize,
    pub batch_size: usize,
    /// The ranks the batch is split among.
    pub world: usize,
    /// `None`: `micro_batch_size = "auto"`, chosen when the run starts.
    pub micro_batch_size: Option<usize>,
    /// The micro-batches each rank accumulates per step (with a fixed micro-batch size).
    pub micro_batches_per_rank: Option<usize>,
    /// The model's parameters (the frozen ones included).
    pub parameters: i64,
    /// What is trained and frozen (`--freeze` checked as the run checks it).
    pub trained: crate::train::optim::ParamSummary,
    /// The model's state per rank before any activation.
    pub memory: crate::train::memory::MemoryPlan,
    /// On a resume whose configuration changed the loss weighting, what the run would change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weighting_change: Option<String>,
    /// The run's checkpoints on the disk: their size, how many are kept, and the space free there.
    pub checkpoints: CheckpointSpace,
    /// Newer checkpoints a resume passes over as damaged, each with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<(PathBuf, String)>,
}

/// What a run's checkpoints take on the disk, for `--dry-run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointSpace {
    /// One checkpoint's files (model, both moments of every trained value, headers), about.
    pub bytes: u64,
    /// `keep_checkpoints`: a checkpoint is written before the oldest kept one is removed, so
    /// `keep + 1` are on the disk at the peak.
    pub keep: usize,
    /// What the run's checkpoints folder holds already (its checkpoints to resume from).
    pub existing: u64,
    /// Free space on the file system of `--out` (`None`: the system cannot say; quotas not counted).
    pub available: Option<u64>,
}

impl CheckpointSpace {
    /// The space the run still needs at its peak beyond what its folder holds.
    pub fn more_needed(&self) -> u64 {
        (self.bytes * (self.keep as u64 + 1)).saturating_sub(self.existing)
    }

    /// Whether the free space is known to be less than [`Self::more_needed`].
    pub fn short(&self) -> bool {
        self.available.is_some_and(|free| free < self.more_needed())
    }

    /// For a run whose tensors are `vs`'s, its trained ones `trained`, writing into `out`.
    pub(in crate::train) fn of_run<'a>(
        vs: &VarStore,
        trained: impl Iterator<Item = &'a Tensor> + Clone,
        keep: usize,
        out: &Path,
    ) -> Self {
        use crate::train::saver::{checkpoint_bytes, tensor_bytes};
        // The model's tensors, then both moments of each trained one.
        let moments = trained.clone().chain(trained).map(tensor_bytes);
        let bytes = checkpoint_bytes(vs.variables().values().map(tensor_bytes).chain(moments));

        // The nearest folder that exists: a new run's --out may not yet (absolute, so that a relative
        // `runs/a` ends at the working folder rather than at an empty path).
        let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
        let available = out
            .ancestors()
            .find(|p| p.is_dir())
            .and_then(crate::fsutil::available_space);
        let folders = checkpoint_folders(
            &out.join(crate::monitor::run_dir::CHECKPOINTS_DIR),
            "state.json",
        )
        .unwrap_or_default();
        let existing = folders.iter().map(|d| crate::fsutil::folder_bytes(d)).sum();
        CheckpointSpace {
            bytes,
            keep,
            existing,
            available,
        }
    }
}

/// Checks `out` as a run begun with `start` would use it, without writing: a new run refuses a
/// folder that holds one; a resume needs a checkpoint whose records are `prepared`'s (its tensors
/// are read when the run starts). A fixed micro-batch size must split the batch evenly among
/// `world` ranks.
pub fn dry_run(prepared: &Prepared, out: &Path, start: RunStart, world: usize) -> Result<DryRun> {
    let checkpoints = out.join(crate::monitor::run_dir::CHECKPOINTS_DIR);
    let (mut start_step, mut weighting_change, mut resume_from) = (0, None, None);
    let mut resume_verified = None;
    let mut passed_over = Vec::new();
    match start {
        RunStart::New
            if newest_checkpoint_in(&checkpoints, "state.json")?.is_some()
                || out.join(crate::monitor::run_dir::METRICS_FILE).exists() =>
        {
            return Err(TrainError::RunExists(out.to_path_buf()).into());
        }
        RunStart::Resume => {
            let Resumable {
                dir: ckpt,
                state,
                verified,
                skipped,
            } = checkpoint_to_resume(
                &checkpoints,
                &prepared.data,
                &prepared.data.records.fingerprint(),
                &prepared.config,
            )?;
            start_step = state.step;
            weighting_change = LossWeighting::resumed(state.weighting, &prepared.config).1;
            resume_from = Some(ckpt);
            resume_verified = Some(verified == Verified::Matched);
            passed_over = skipped;
        }
        RunStart::New | RunStart::Again => {}
    }
    let config = &prepared.config;
    let auto = config.micro_batch_size == Some(crate::train::config::MicroBatchSize::Auto);
    let split = if auto {
        None
    } else {
        Some(crate::train::trainer::accumulation_per_rank(config, world)?)
    };
    let (trained, summary) =
        crate::train::optim::select_trained(&prepared.vs, &config.frozen_prefixes())?;
    let shard_over = if config.shard_optimizer { world } else { 1 };
    let bf16 = config.precision == crate::train::config::Precision::Bf16;
    let memory = crate::train::memory::MemoryPlan::new(&prepared.vs, &trained, shard_over, bf16);
    let checkpoints = CheckpointSpace::of_run(
        &prepared.vs,
        trained.iter().map(|(_, t)| t),
        config.keep_checkpoints,
        out,
    );
    Ok(DryRun {
        out: out.to_path_buf(),
        resume_from,
        resume_verified,
        again: start == RunStart::Again,
        start_step,
        total_steps: prepared.total_steps,
        steps_per_epoch: prepared.steps_per_epoch,
        records: prepared.data.len(),
        batch_size: config.batch_size,
        world,
        micro_batch_size: split.map(|(micro, _)| micro),
        micro_batches_per_rank: split.map(|(_, n)| n),
        parameters: prepared
            .vs
            .variables()
            .values()
            .map(|t| t.numel() as i64)
            .sum(),
        trained: summary,
        memory,
        weighting_change,
        checkpoints,
        passed_over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The space of a run's checkpoints: one checkpoint is the model and both moments of each
    /// trained value (f32), plus headers; the free space is found for a relative `--out` that does
    /// not exist yet (the working folder's file system).
    #[test]
    fn checkpoint_space_counts_model_and_moments_and_finds_a_relative_outs_file_system() {
        let _torch = crate::train::torch_test_lock();
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1000], tch::nn::Init::Const(0.0));
        let space = CheckpointSpace::of_run(&vs, [&w].into_iter(), 2, Path::new("runs/not-yet"));
        // The model's 4000 bytes once, its two moments' each.
        let three = crate::train::saver::checkpoint_bytes([4000, 4000, 4000].into_iter());
        assert_eq!(space.bytes, three);
        assert_eq!((space.keep, space.existing), (2, 0));
        assert!(space.available.is_some(), "{space:?}");
        assert_eq!(space.more_needed(), 3 * space.bytes);
    }
}
