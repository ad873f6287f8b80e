//! The library's error type. Each module has its own error enum whose variants say what failed and
//! keep the file (and line / record / slot where it applies); they fold into [`Error`] through
//! `#[from]`. An underlying error (I/O, JSON, ONNX Runtime, ...) is kept as the `#[source]`, not
//! repeated in the message: [`report`] (and `anyhow`'s `{:#}`) print the whole chain. The CLI
//! derives its exit status from [`Error::kind`].

use std::path::PathBuf;

/// What kind of failure an error is; the CLI derives its exit status from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The flags contradict each other or name nothing usable.
    Usage,
    /// An input file is missing, malformed or does not fit the others.
    Input,
    /// Reading or writing the file system failed.
    Io,
    /// Something the command needs from the machine (ONNX Runtime, a model, a device) is missing
    /// or failed.
    Environment,
    /// A consistency check inside tagfix failed (a bug, or libtorch failing).
    Internal,
    /// A long run stopped on purpose (a non-finite loss) after saving its state.
    Stopped,
    /// A long run stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after saving its state; the exit
    /// status is 128 + `signal`, as for a process the signal ended.
    Interrupted { signal: i32 },
}

/// Errors raised by the tagfix library: `Io` and one variant per module's error enum (a training
/// run that stopped itself is [`crate::train::error::TrainError::Stopped`]). There is no free-text
/// variant: a new failure gets a variant in its module's enum.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The I/O error's message is part of this one's, so it is not also exposed as the source
    /// (which would print it twice in `anyhow`'s `{:#}` chain).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error(transparent)]
    File(#[from] crate::fsutil::FileError),

    #[error(transparent)]
    Vocab(Box<crate::vocab::VocabError>),

    /// A slot list given on the command line (`--slots`, `--absent-slots`).
    #[error(transparent)]
    SlotList(#[from] crate::vocab::SlotListError),

    #[error(transparent)]
    Embed(Box<crate::embed::EmbedError>),

    #[error(transparent)]
    Eval(Box<crate::eval::EvalError>),

    #[error(transparent)]
    Manifest(Box<crate::manifest::ManifestError>),

    #[error(transparent)]
    Tensor(#[from] crate::tensors::TensorError),

    #[error(transparent)]
    Teacher(#[from] crate::teacher::TeacherError),

    #[error(transparent)]
    Monitor(Box<crate::monitor::MonitorError>),

    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),

    #[error(transparent)]
    Report(#[from] crate::report::ReportError),

    #[error(transparent)]
    Synth(#[from] crate::synth::SynthError),

    #[cfg(feature = "embed")]
    #[error(transparent)]
    Image(#[from] crate::imaging::ImageError),

    #[cfg(feature = "train")]
    #[error(transparent)]
    Infer(Box<crate::train::infer::InferError>),

    #[cfg(feature = "train")]
    #[error(transparent)]
    Export(#[from] crate::train::export::ExportError),

    /// Distributed training: environment, rendezvous, a collective, the agreement check, the launcher.
    #[error(transparent)]
    Dist(Box<crate::train::dist::DistError>),

    #[error(transparent)]
    Annotation(#[from] crate::annotations::AnnotationError),

    /// A training configuration refused (file, `--set` or a value out of range).
    #[error(transparent)]
    Config(#[from] crate::train::config::ConfigError),

    /// A `check` policy refused (file or threshold out of range).
    #[error(transparent)]
    Policy(Box<crate::consistency::policy::PolicyError>),

    /// `check` inputs that cannot be compared.
    #[error(transparent)]
    Check(Box<crate::consistency::compare::CheckError>),

    /// A training run's failure (its own exit status when the run stopped on a non-finite step).
    #[error(transparent)]
    Train(Box<crate::train::error::TrainError>),

    /// Reading, writing or converting a checkpoint (`.pth`, its pickle, a model configuration).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// The module errors of more than a dozen words travel boxed, so that `Result<_, Error>`, which
/// nearly every function returns, stays small (clippy's `result_large_err`); `?` boxes them.
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(Box::new(e))
            }
        })*
    };
}

#[cfg(feature = "train")]
boxed_from!(Infer(crate::train::infer::InferError));

boxed_from!(
    Vocab(crate::vocab::VocabError),
    Embed(crate::embed::EmbedError),
    Eval(crate::eval::EvalError),
    Manifest(crate::manifest::ManifestError),
    Monitor(crate::monitor::MonitorError),
    Dist(crate::train::dist::DistError),
    Policy(crate::consistency::policy::PolicyError),
    Check(crate::consistency::compare::CheckError),
    Train(crate::train::error::TrainError),
);

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::File(e) => e.kind(),
            Error::Vocab(_) | Error::Manifest(_) | Error::Tensor(_) => ErrorKind::Input,
            Error::SlotList(_) => ErrorKind::Usage,
            Error::Embed(e) => e.kind(),
            Error::Eval(e) => e.kind(),
            Error::Teacher(e) => e.kind(),
            Error::Monitor(_) => ErrorKind::Input,
            Error::Plot(e) => e.kind(),
            Error::Report(_) => ErrorKind::Io,
            Error::Synth(_) => ErrorKind::Usage,
            #[cfg(feature = "embed")]
            Error::Image(_) => ErrorKind::Input,
            #[cfg(feature = "train")]
            Error::Infer(e) => e.kind(),
            #[cfg(feature = "train")]
            Error::Export(e) => e.kind(),
            Error::Annotation(e) => e.kind(),
            Error::Config(e) => e.kind(),
            Error::Policy(e) => e.kind(),
            Error::Check(e) => e.kind(),
            Error::Dist(e) => e.kind(),
            Error::Train(e) => e.kind(),
            Error::Checkpoint(e) => e.kind(),
        }
    }
}

/// The error's message followed by each of its sources (`message: cause: ...`), as the CLI prints
/// it. A source whose text the message already ends with (an error that quotes its cause) is not
/// repeated.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: cannot read")]
    struct Outer {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn report_prints_the_chain_once() {
        let inner = std::io::Error::other("disk on fire");
        let e = Outer {
            path: "a.bin".into(),
            source: inner,
        };
        assert_eq!(report(&e), "a.bin: cannot read: disk on fire");
        // A message that already ends with its cause is not extended.
        let quoted = anyhow::Error::new(std::io::Error::other("gone")).context("a.bin: gone");
        assert_eq!(report(quoted.as_ref()), "a.bin: gone");
    }

    #[test]
    fn module_errors_keep_their_kind() {
        let usage: Error = crate::embed::EmbedError::NoSelection.into();
        assert_eq!(usage.kind(), ErrorKind::Usage);
        let input: Error = crate::vocab::VocabError::Empty {
            path: "v.txt".into(),
        }
        .into();
        assert_eq!(input.kind(), ErrorKind::Input);
        assert_eq!(input.to_string(), "v.txt: vocabulary file is empty");
        let no_data: Error = crate::annotations::AnnotationError::NoFiles.into();
        assert_eq!(no_data.kind(), ErrorKind::Usage);
    }

    /// Nearly every function returns `Result<_, Error>`: the error stays a few words, its large
    /// module errors boxed (clippy's `result_large_err` warns from 128 bytes).
    #[test]
    fn the_error_stays_small() {
        let size = std::mem::size_of::<Error>();
        assert!(
            size < 128,
            "Error is {size} bytes: box the new large variant"
        );
    }
}
