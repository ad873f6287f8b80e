//! What can go wrong reading an annotation file. Every variant names the file; problems in the
//! stream name the line:column, and problems of one record also its 0-based index and kind, in the
//! same words whichever command (`diff`, `train`, `teacher`, `repair`) read it.

use super::ProblemKind;
use std::path::PathBuf;

/// An annotation file that cannot be read as RAM-format records.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    #[error("{path}: cannot read the annotation file")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: gzip stream is corrupt or truncated")]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: is a directory, not an annotation file")]
    Directory { path: PathBuf },

    /// The file's structure is broken (not inside one record): the rest cannot be read.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },

    /// A problem with one record (`record` is its 0-based index, as in Python's list).
    #[error("{path}:{line}:{column}: record {record}: {message}")]
    Record {
        path: PathBuf,
        line: u64,
        column: u64,
        record: u64,
        kind: ProblemKind,
        message: String,
    },

    #[error("{path}: holds no records")]
    NoRecords { path: PathBuf },

    /// A command that reads annotations was given no file.
    #[error("no training data: give --data FILE (or train_file in the config)")]
    NoFiles,

    /// `diff` without `keep_going` stops at the first problem it would otherwise record.
    #[error("stopped at the first problem (--keep-going records such problems and continues)")]
    Stopped {
        #[source]
        first: Box<AnnotationError>,
    },
}

impl AnnotationError {
    /// What kind of failure this is: no file given is a usage error, a file that cannot be read an
    /// I/O error, anything in a file an input error.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            AnnotationError::NoFiles => ErrorKind::Usage,
            AnnotationError::Io { .. } => ErrorKind::Io,
            _ => ErrorKind::Input,
        }
    }
}
