//! [`TrainError`]: what can go wrong in a training run, by kind. Folded into [`crate::Error`]; the
//! CLI gives [`TrainError::Stopped`] its own exit status (3) because the run's inputs were fine.

use std::path::PathBuf;

/// A libtorch (or other foreign) error kept as the source of a variant; `Box` keeps this module
/// free of the `train` feature's types.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of `tagfix train` (checks before the first step, the run, its checkpoints).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The run was healthy to start but a step went non-finite (a loss term or the gradient norm);
    /// the state before that step is saved in `checkpoint`.
    #[error("step {step}: {reason}; training stopped. The state before this step is saved in {}", .checkpoint.display())]
    Stopped {
        /// The 1-based step that failed.
        step: u64,
        reason: String,
        checkpoint: PathBuf,
    },

    #[error("--device cuda: libtorch sees no CUDA device (no GPU, no driver, or a binary linked without \
             libtorch_cuda: build it with scripts/setup-gpu.sh, docs/guide.md step 5)")]
    NoCuda,

    /// The label embeddings' width does not fit the model (which is not `tiny`).
    #[error("{}: rows have {width} values, but model `{model}` takes {expected}-d label embeddings (CLIP space, \
             as the official checkpoints); embed the tags with a CLIP text tower (`tagfix embed --model clip`), or \
             train the small `model = \"tiny\"`, which follows the embeddings' width", .path.display())]
    EmbeddingWidth {
        path: PathBuf,
        width: usize,
        model: String,
        expected: usize,
    },

    #[error("{}: has {slots} slots but the config says class_num = {class_num}", .manifest.display())]
    ClassCount {
        manifest: PathBuf,
        slots: usize,
        class_num: usize,
    },

    /// The label embeddings' provenance names another vocabulary than the manifest's.
    #[error("{}: was made for another vocabulary (sha256 {embed_sha}…, {embed_tags} tags) than the slot manifest {} \
             (sha256 {manifest_sha}…, {manifest_tags} tags)", .label_embed.display(), .manifest.display())]
    VocabularyMismatch {
        label_embed: PathBuf,
        embed_sha: String,
        embed_tags: usize,
        manifest: PathBuf,
        manifest_sha: String,
        manifest_tags: usize,
    },

    #[error("{}: holds {teacher_dim}-d CLIP teacher features, but the label embeddings {} are {embed_dim}-d: leave \
             out --teacher (the tag loss trains alone) or embed the tags with a CLIP text tower",
            .teacher.display(), .label_embed.display())]
    TeacherWidth {
        teacher: PathBuf,
        teacher_dim: usize,
        label_embed: PathBuf,
        embed_dim: usize,
    },

    #[error("both a teacher file (--teacher FILE) and the online teacher ([online_teacher] / --teacher online) \
             are configured: choose one")]
    TwoTeachers,

    #[error("val_every = {0} but the run has no validation data: give --val-data (a benchmark folder or a \
             RAM-format annotation file)")]
    NoValidationData(u64),

    /// Distributed: the global batch's micro-batches do not divide evenly among the ranks.
    #[error("--batch-size {batch} makes {} micro-batches of {micro}, which {world} ranks cannot share evenly: \
             choose a --micro-batch-size that divides --batch-size / {world}", batch / micro)]
    UnevenShares {
        batch: usize,
        micro: usize,
        world: usize,
    },

    #[error("{records} records are fewer than one batch of {batch}")]
    TooFewRecords { records: usize, batch: usize },

    #[error("{}: --resume: the run has no checkpoint to resume from", .0.display())]
    NothingToResume(PathBuf),

    #[error("{}: already holds a training run: pass --resume to continue it, or choose another --out", .0.display())]
    RunExists(PathBuf),

    #[error("{}: --resume: the training records differ from the checkpoint's ({then} records then, {now} now): the \
             data position would be meaningless", .checkpoint.display())]
    DataChanged {
        checkpoint: PathBuf,
        then: usize,
        now: usize,
    },

    #[error("nothing to do: the run is at step {step} of {total} (raise max_steps to continue)")]
    NothingToDo { step: u64, total: u64 },

    /// Values of the training step could not be copied from the device.
    #[error("cannot read {what} from the device")]
    HostRead {
        what: &'static str,
        #[source]
        source: Source,
    },

    #[error("step {0}: the data loader stopped early")]
    LoaderStopped(u64),

    /// A checkpoint file (`model.safetensors`, `optimizer.safetensors`) could not be written or read.
    #[error("{}: cannot {action} its tensors", .path.display())]
    Tensors {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Source,
    },

    /// A JSON file of the run (`state.json`, `run.json`) is not what it should be.
    #[error("{}: not a {what}", .path.display())]
    RunFile {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: checkpoint schema {found} is not {expected}", .path.display())]
    Schema {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
}

impl TrainError {
    /// Whether the run stopped on its own (exit status 3) rather than on bad input or a fault.
    pub fn is_stopped_run(&self) -> bool {
        matches!(self, TrainError::Stopped { .. })
    }

    /// What kind of failure this is (the CLI's exit status follows from it).
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            TrainError::Stopped { .. } => ErrorKind::Stopped,
            TrainError::NoCuda => ErrorKind::Environment,
            TrainError::TwoTeachers
            | TrainError::NoValidationData(_)
            | TrainError::UnevenShares { .. }
            | TrainError::NothingToResume(_)
            | TrainError::RunExists(_)
            | TrainError::NothingToDo { .. } => ErrorKind::Usage,
            TrainError::EmbeddingWidth { .. }
            | TrainError::ClassCount { .. }
            | TrainError::VocabularyMismatch { .. }
            | TrainError::TeacherWidth { .. }
            | TrainError::TooFewRecords { .. }
            | TrainError::DataChanged { .. }
            | TrainError::RunFile { .. }
            | TrainError::Schema { .. } => ErrorKind::Input,
            TrainError::Tensors { .. } => ErrorKind::Io,
            TrainError::LoaderStopped(_) | TrainError::HostRead { .. } => ErrorKind::Internal,
        }
    }
}
