//! What can go wrong reading, writing or converting a checkpoint or choosing a model configuration.
//! Every variant about a file names it, and the archive entry, pickle byte or tensor where it
//! applies; all of them exit 2.

use std::path::PathBuf;

/// An error of the checkpoint readers and writers.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be opened, read or written.
    #[error("{path}: {action}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A folder given as a checkpoint that is neither a tagfix checkpoint nor a training run.
    #[error(
        "{}: a folder, but neither a tagfix checkpoint (step-N/ with state.json) nor a training run \
         (with checkpoints/): give a checkpoint file or one of those",
        .path.display()
    )]
    NotACheckpointFolder { path: PathBuf },

    /// A training run's folder without any checkpoint yet.
    #[error("{}: the run has no checkpoint yet", .path.display())]
    NoTrainingCheckpoint { path: PathBuf },

    /// The zip container of a `torch.save` file is unreadable.
    #[error(
        "{path}: damaged torch.save archive; the file may be truncated — re-download or re-save it"
    )]
    Archive {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },

    /// One entry of the archive is missing or cannot be read to its end.
    #[error("{path}: archive entry {entry}: {problem}")]
    Entry {
        path: PathBuf,
        entry: String,
        problem: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The pickle names a global a tensor checkpoint never needs (it could run code in Python).
    #[error(
        "{path}: pickle byte {offset}: refusing to load: the pickle names the global `{global}`, which a \
         tensor checkpoint never needs (it could run code if unpickled by Python). Nothing was executed. \
         Only tensors, storages and OrderedDict are accepted"
    )]
    RefusedGlobal {
        path: PathBuf,
        offset: usize,
        global: String,
    },

    /// The pickle is damaged, crafted, or uses something a tensor checkpoint does not.
    #[error("{path}: pickle byte {offset}: {message}")]
    Pickle {
        path: PathBuf,
        offset: usize,
        message: String,
    },

    /// One tensor's view does not fit its storage, or cannot be materialised.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },

    /// The file's structure is not that of a tensor checkpoint (wrong container, missing or repeated
    /// parts, storages shorter than declared).
    #[error("{path}: {problem}")]
    Structure {
        path: PathBuf,
        problem: StructureProblem,
    },

    /// A written file does not read back as the tensors that were written.
    #[error("{path}: written file does not read back identically")]
    RoundTrip { path: PathBuf },

    /// The file holds no tensors to convert.
    #[error("{path}: holds no tensors")]
    NoTensors { path: PathBuf },

    /// `convert` writes safetensors or `.pth`, named by the output's extension.
    #[error("output {path} must end in .safetensors (or .pth for the other direction)")]
    OutputFormat { path: PathBuf },

    #[error("unknown model preset `{name}` (known: {})", .known.join(", "))]
    UnknownPreset {
        name: String,
        known: &'static [&'static str],
    },

    /// A reference fixture's `config.json` that does not parse.
    #[error("{path}: not a reference config.json")]
    ReferenceConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A model configuration read from `path` that cannot be built (`problem` says which dimension
    /// does not fit).
    #[error("{path}: {problem}")]
    ModelConfig { path: PathBuf, problem: String },
}

impl CheckpointError {
    /// What kind of failure this is: the file system's for I/O, a usage error for flags that name
    /// nothing usable, the input's for everything else.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            CheckpointError::Io { .. } => ErrorKind::Io,
            CheckpointError::OutputFormat { .. } | CheckpointError::UnknownPreset { .. } => {
                ErrorKind::Usage
            }
            _ => ErrorKind::Input,
        }
    }

    /// A structural problem of the file at `path`.
    pub(crate) fn structure(path: impl Into<PathBuf>, problem: StructureProblem) -> Self {
        CheckpointError::Structure {
            path: path.into(),
            problem,
        }
    }

    /// An I/O failure on `path` while doing `action` ("cannot open", "cannot read", ...).
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        CheckpointError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

/// What is wrong with the structure of a `torch.save` file (`key`: a storage's key in the pickle).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructureProblem {
    #[error("empty file, not a PyTorch checkpoint")]
    Empty,
    #[error("not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)")]
    NotACheckpoint,
    #[error("torch.save archive without data.pkl")]
    NoDataPkl,
    #[error("not a PyTorch checkpoint (legacy magic number missing)")]
    NoLegacyMagic,
    #[error("legacy checkpoint: storage key list missing")]
    NoStorageKeys,
    #[error("legacy checkpoint: storage key is not a string")]
    StorageKeyNotString,
    #[error("legacy checkpoint: storage {key} is listed but the pickle never declares it")]
    ListedUndeclared { key: String },
    #[error("legacy checkpoint: storage {key} is listed twice")]
    ListedTwice { key: String },
    #[error("legacy checkpoint truncated inside storage {key}")]
    LegacyTruncated { key: String },
    #[error("legacy checkpoint: storage {key} holds {found} elements, but the pickle declares {declared}")]
    LegacyCount {
        key: String,
        found: u64,
        declared: usize,
    },
    /// A tensor views a storage the pickle never declares.
    #[error("storage {key} is never declared")]
    Undeclared { key: String },
    /// A tensor views a storage the legacy file does not hold.
    #[error("storage {key} missing")]
    StorageMissing { key: String },
    #[error("storage {key} holds {bytes} bytes, but the pickle declares {numel} {dtype} elements; the file is \
             truncated or damaged")]
    StorageShort {
        key: String,
        bytes: usize,
        numel: usize,
        dtype: crate::tensors::DType,
    },
    /// `found` is the pickle type's name (`list`, `int`, ...).
    #[error("holds a {found} at the top level, not a tensor or a dict of tensors")]
    TopLevel { found: &'static str },
    #[error("state-dict key is a {found}, not a string")]
    KeyNotString { found: &'static str },
    /// `dict` is "state-dict" or "top-level".
    #[error("{dict} key `{key}` appears more than once; a dict saved by torch.save cannot repeat a key, so the \
             file was edited or damaged (refusing rather than picking one)")]
    RepeatedKey { dict: &'static str, key: String },
}

/// Result alias of the checkpoint module.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
