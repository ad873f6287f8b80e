//! The library's error type. Every variant names the file (and line / record / slot where it applies)
//! so that the CLI can print it as is; the CLI maps all of them to exit code 2.

use std::path::PathBuf;

/// Errors raised by the tagfix library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The I/O error's message is part of this one's, so it is not also exposed as the source
    /// (which would print it twice in `anyhow`'s `{:#}` chain).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A syntax error at a known position of a file (not inside one record).
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },

    /// A problem with one record of an annotation file (`record` is its 0-based index).
    #[error("{path}:{line}:{column}: record {record}: {message}")]
    Record {
        path: PathBuf,
        line: u64,
        column: u64,
        record: u64,
        message: String,
    },

    #[error("{path}: {message}")]
    InvalidInput { path: PathBuf, message: String },

    #[error("vocabulary preset `{name}`: {message}")]
    Preset { name: String, message: String },

    #[error("{0}")]
    Usage(String),

    /// Training would start with an image encoder that no pretrained checkpoint initialised.
    #[error("image encoder not initialised from a pretrained checkpoint: {0}")]
    EncoderNotInitialised(String),

    /// ONNX Runtime could not be loaded or failed (the message names the library or model file).
    #[error("{0}")]
    Runtime(String),

    #[error("{0}")]
    Other(String),

    /// Reading, writing or converting a checkpoint (`.pth`, its pickle, a model configuration).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// An input file whose content is wrong (not a syntax error at a known line).
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
