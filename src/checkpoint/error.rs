//! What can go wrong reading, writing or converting a checkpoint. Every variant names the file, and
//! the archive entry, pickle byte or tensor where it applies; all of them are input errors (exit 2).

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
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },

    /// A written file does not read back as the tensors that were written.
    #[error("{path}: written file does not read back identically")]
    RoundTrip { path: PathBuf },
}

impl CheckpointError {
    /// What kind of failure this is: the file system's for I/O, the input's for everything else.
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            CheckpointError::Io { .. } => crate::error::ErrorKind::Io,
            _ => crate::error::ErrorKind::Input,
        }
    }

    /// A structural problem of the file at `path`.
    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        CheckpointError::Invalid {
            path: path.into(),
            message: message.into(),
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

/// Result alias of the checkpoint module.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
