//! Data-parallel training on PyTorch's own distributed engine (c10d): the rendezvous environment
//! (torchrun's and Slurm's contracts), a process group over `c10d::ProcessGroupGloo` (CPU) or
//! `c10d::ProcessGroupNCCL` (CUDA, GPU build), the collectives the trainer needs (bucketed gradient
//! all-reduce, parameter broadcast, scalar all-reduce, all-gather, barrier), the agreement check run
//! before the first step, batch sharding, and the single-node launcher behind `--nproc-per-node`.
//!
//! The environment, sharding and the launcher need no native library; the process group and the
//! agreement check need feature `train` (the C++ shim `src/train/dist.cpp`). docs/distributed.md
//! describes the semantics.

mod env;
pub mod launch;
mod shard;

#[cfg(feature = "train")]
mod agree;
#[cfg(feature = "train")]
mod ffi;
#[cfg(feature = "train")]
mod group;
#[cfg(feature = "train")]
pub mod zero;

#[cfg(feature = "train")]
pub use agree::Fingerprint;
pub use env::{Contract, Rendezvous};
#[cfg(feature = "train")]
pub use group::{AgentStore, GroupOptions, OverlapStats, ProcessGroup};
pub use shard::{shard, Share};

use std::fmt;
use std::time::Duration;

/// The c10d backend of a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// `ProcessGroupGloo`: CPU tensors, TCP between ranks.
    Gloo,
    /// `ProcessGroupNCCL`: CUDA tensors (NVLink / InfiniBand); only in the GPU build.
    Nccl,
}

impl DistBackend {
    /// The backend PyTorch picks for a device: NCCL for CUDA, Gloo for the CPU.
    pub fn for_cuda(cuda: bool) -> Self {
        if cuda {
            DistBackend::Nccl
        } else {
            DistBackend::Gloo
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DistBackend::Gloo => "gloo",
            DistBackend::Nccl => "nccl",
        }
    }
}

impl fmt::Display for DistBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The distributed backends this build has: Gloo always with feature `train`, NCCL in the GPU build
/// (`TAGFIX_LINK_CUDA=1`). Empty without feature `train`.
pub fn available_backends() -> Vec<DistBackend> {
    #[cfg(feature = "train")]
    {
        let mut out = vec![DistBackend::Gloo];
        if ffi::has_nccl() {
            out.push(DistBackend::Nccl);
        }
        out
    }
    #[cfg(not(feature = "train"))]
    Vec::new()
}

/// Default of `--dist-timeout`: how long a collective (or the rendezvous) waits for the other ranks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes per flattened gradient bucket: DDP's default `bucket_cap_mb=25`.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Why a rank is held responsible for a failed collective (see [`DistError::Collective`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspect {
    /// Its heartbeat in the store stopped without it reporting an error: it crashed or was killed.
    Died { rank: usize, last_step: Option<u64> },
    /// It still beats but has not reached this collective: it hangs (or is slow) elsewhere.
    Behind {
        rank: usize,
        at: u64,
        last_step: Option<u64>,
    },
    /// It reported an error of its own before this rank's collective failed.
    Failed { rank: usize, message: String },
    /// The rendezvous store, served by rank 0, cannot be reached: rank 0 is gone.
    StoreHostGone,
}

impl Suspect {
    /// The rank blamed.
    pub fn rank(&self) -> usize {
        match self {
            Suspect::Died { rank, .. }
            | Suspect::Behind { rank, .. }
            | Suspect::Failed { rank, .. } => *rank,
            Suspect::StoreHostGone => 0,
        }
    }
}

fn step_suffix(step: &Option<u64>) -> String {
    step.map(|s| format!(", last at step {s}"))
        .unwrap_or_default()
}

impl fmt::Display for Suspect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Suspect::Died { rank, last_step } => write!(
                f,
                "rank {rank} died (its heartbeat stopped{})",
                step_suffix(last_step)
            ),
            Suspect::Behind {
                rank,
                at,
                last_step,
            } => write!(
                f,
                "rank {rank} hangs (still at collective {at}{})",
                step_suffix(last_step)
            ),
            Suspect::Failed { rank, message } => write!(f, "rank {rank} failed: {message}"),
            Suspect::StoreHostGone => {
                f.write_str("rank 0 is gone (the rendezvous store it serves cannot be reached)")
            }
        }
    }
}

/// Errors of distributed training: the environment, the rendezvous, a collective, the agreement
/// check and the launcher. Each names the rank it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// torchrun's or Slurm's variables are incomplete or invalid.
    #[error("distributed environment ({contract}): {message}")]
    Env {
        contract: &'static str,
        message: String,
    },

    /// The ranks could not meet at MASTER_ADDR:MASTER_PORT within the timeout.
    #[error("rendezvous at {addr}:{port} as rank {rank} of {world_size}: {message}")]
    Rendezvous {
        addr: String,
        port: u16,
        rank: usize,
        world_size: usize,
        message: String,
    },

    /// A collective failed or timed out; `suspect` is the rank the store's records blame, if any.
    #[error("{op} on rank {rank}{} failed: {}{message}", step.map(|s| format!(" at step {s}")).unwrap_or_default(), suspect.as_ref().map(|s| format!("{s}; ")).unwrap_or_default())]
    Collective {
        op: &'static str,
        rank: usize,
        step: Option<u64>,
        suspect: Option<Suspect>,
        message: String,
    },

    /// Ranks disagree on the run's inputs before the first step.
    #[error("rank {rank} disagrees with rank 0 on {field}: {value} (rank 0: {expected}); refusing to train")]
    Disagreement {
        rank: usize,
        field: &'static str,
        value: String,
        expected: String,
    },

    #[error("--dist-backend nccl: this tagfix was built without NCCL (build it with TAGFIX_LINK_CUDA=1, \
             scripts/setup-gpu.sh)")]
    NoNccl,

    #[error("--nproc-per-node must be at least 1")]
    NoProcesses,

    #[error("broadcast from rank {root} in a world of {world_size}")]
    BroadcastRoot { root: usize, world_size: usize },

    /// `op` was given a tensor that holds nothing (a parameter without a gradient?).
    #[error("{op}: an undefined tensor (a parameter without a gradient?)")]
    UndefinedTensor { op: &'static str },

    /// A collective after one that failed: the group cannot be used any more.
    #[error("hooking the gradient exchange into the backward pass on rank {rank}: {message}")]
    Overlap { rank: usize, message: String },
    #[error("{op}: the process group failed earlier on rank {rank}")]
    GroupFailed { op: &'static str, rank: usize },

    /// A collective's result could not be read back to the host (`what`: "the reduced scalars", ...).
    #[error("reading {what}")]
    ReadBack {
        what: &'static str,
        #[source]
        source: crate::train::error::Source,
    },

    #[error("encoding the fingerprint")]
    EncodeFingerprint(#[source] serde_json::Error),

    #[error("rank {rank} sent an unreadable fingerprint")]
    UnreadableFingerprint {
        rank: usize,
        #[source]
        source: serde_json::Error,
    },

    /// The launcher could not start a rank.
    #[error("starting rank {rank} ({program})")]
    Spawn {
        rank: usize,
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A rank started by the launcher failed; the others were stopped. `code` is its exit status
    /// (`None` when a signal ended it): a rank that stopped its run itself (3) makes the launch exit 3.
    #[error("rank {rank} {status}; the other ranks were stopped")]
    RankFailed {
        rank: usize,
        status: String,
        code: Option<i32>,
    },

    /// The ranks stopped on a stop signal (to the launcher or to a rank), each after the same step,
    /// whose checkpoint rank 0 saved and named.
    #[error("the ranks stopped on {}, after saving a checkpoint (rank 0 names it above); continue with `--resume`",
            crate::train::interrupt::signal_name(*.signal))]
    Interrupted { signal: i32 },

    /// The launcher found no free TCP port for the rendezvous, or lost a rank's process.
    #[error("launcher: {message}")]
    Launcher {
        message: String,
        #[source]
        source: std::io::Error,
    },
}

impl DistError {
    /// The kind of failure, for the CLI's exit status.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            DistError::Env { .. } | DistError::NoNccl | DistError::NoProcesses => ErrorKind::Usage,
            DistError::Disagreement { .. } | DistError::UnreadableFingerprint { .. } => {
                ErrorKind::Input
            }
            DistError::BroadcastRoot { .. }
            | DistError::UndefinedTensor { .. }
            | DistError::ReadBack { .. }
            | DistError::Overlap { .. }
            | DistError::EncodeFingerprint(_) => ErrorKind::Internal,
            DistError::GroupFailed { .. } => ErrorKind::Environment,
            DistError::RankFailed { code: Some(3), .. } => ErrorKind::Stopped,
            DistError::Interrupted { signal } => ErrorKind::Interrupted { signal: *signal },
            DistError::Rendezvous { .. }
            | DistError::Collective { .. }
            | DistError::Spawn { .. }
            | DistError::RankFailed { .. }
            | DistError::Launcher { .. } => ErrorKind::Environment,
        }
    }
}
