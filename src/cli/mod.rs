//! Subcommand dispatch and the process exit status. One file per subcommand; clap types live in
//! [`args`].

pub mod args;
mod argv;
mod check;
mod convert;
mod diff;
mod doctor;
mod embed;
mod eval;
mod export;
mod inspect;
#[cfg(any(feature = "embed", feature = "train"))]
mod launcher;
mod plot;
mod reference;
mod repair;
mod synth;
mod synth_images;
mod tag;
mod teacher;
mod train;
mod vocab;

use args::{Cli, Command, GlobalArgs};
use tagfix::error::ErrorKind;

/// The process exit status a CI job can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the command ran and found nothing wrong.
    Success,
    /// 1: the command ran and a requested check failed.
    Failure,
    /// 2: usage or input error (or a fault, e.g. a checkpoint that could not be written).
    Error,
    /// 3: a training run stopped itself: a loss term or the gradient norm went non-finite (the state
    /// before that step is checkpointed). Its inputs were fine; a lower learning rate may not be.
    Stopped,
    /// 128 + the signal: a training run stopped on SIGTERM, SIGINT or SIGUSR1 after saving a
    /// checkpoint of its last step (143, 130, 138 on Linux), the status a shell gives a process that
    /// signal ended; `--resume` goes on from the checkpoint.
    Interrupted(i32),
}

impl ExitStatus {
    /// The status of a command that failed with `err`, from the kind of the library error in its
    /// chain (errors raised here at the CLI edge are usage errors).
    pub fn of_error(err: &anyhow::Error) -> Self {
        let kind = err
            .chain()
            .find_map(|e| {
                e.downcast_ref::<tagfix::Error>()
                    .map(tagfix::Error::kind)
                    .or_else(|| {
                        e.downcast_ref::<tagfix::train::error::TrainError>()
                            .map(tagfix::train::error::TrainError::kind)
                    })
            })
            .unwrap_or(ErrorKind::Usage);
        Self::of_kind(kind)
    }

    fn of_kind(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Stopped => ExitStatus::Stopped,
            ErrorKind::Interrupted { signal } => ExitStatus::Interrupted(signal),
            ErrorKind::Usage
            | ErrorKind::Input
            | ErrorKind::Io
            | ErrorKind::Environment
            | ErrorKind::Internal => ExitStatus::Error,
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        match s {
            ExitStatus::Success => 0.into(),
            ExitStatus::Failure => 1.into(),
            ExitStatus::Error => 2.into(),
            ExitStatus::Stopped => 3.into(),
            ExitStatus::Interrupted(signal) => {
                let code = tagfix::train::interrupt::exit_code(signal);
                u8::try_from(code).unwrap_or(1).into()
            }
        }
    }
}

/// Writes `text` to stdout. A reader that went away (`| head`) ends the output quietly, as SIGPIPE
/// would: a rank of a distributed run ignores that signal (`train::dist::ignore_sigpipe`), and
/// `println!` would panic there instead.
#[cfg(feature = "train")]
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

/// Sets up `tracing` on stderr: `--quiet` shows errors only, `-v` debug; `RUST_LOG` overrides.
pub fn init_logging(global: &GlobalArgs) {
    let default = if global.quiet {
        "error"
    } else if global.verbose > 0 {
        "debug"
    } else {
        // hnsw_rs logs every graph parameter at info level.
        "info,hnsw_rs=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A terminal's reader is watching: colours, no time. A job's log file is read hours later:
    // plain text, each line with its UTC time.
    let _ = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        log.without_time().try_init()
    } else {
        log.with_ansi(false).with_timer(UtcSeconds).try_init()
    };
}

/// Log lines' time in a log file: UTC, RFC 3339, to the second.
struct UtcSeconds;

impl tracing_subscriber::fmt::time::FormatTime for UtcSeconds {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        write!(w, "{now}")
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    #[cfg(feature = "embed")]
    if !matches!(cli.command, Command::InternalOpenOnnx) {
        // ONNX models are opened in a helper process (this executable) before this one opens them.
        if let Ok(exe) = std::env::current_exe() {
            tagfix::embed::isolate::use_helper(exe);
        }
    }
    match cli.command {
        Command::Vocab(a) => vocab::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Diff(a) => diff::run(a, &cli.global),
        Command::Synth(a) => synth::run(a, &cli.global),
        Command::Plot(a) => plot::run(a),
        Command::Embed(a) => embed::run(a, &cli.global),
        Command::Check(a) => check::run(a),
        Command::Eval(a) => eval::run(a, &cli.global),
        Command::Export(a) => export::run(a),
        Command::Tag(a) => tag::run(a, &cli.global),
        Command::Repair(a) => repair::run(a, &cli.global),
        Command::Train(a) => train::run(a),
        Command::Teacher(a) => teacher::run(a, &cli.global),
        Command::SynthImages(a) => synth_images::run(a),
        Command::CliReference(a) => reference::run(a),
        Command::Doctor(a) => doctor::run(a),
        #[cfg(feature = "embed")]
        Command::InternalOpenOnnx => {
            tagfix::embed::isolate::serve(std::io::stdin().lock())?;
            Ok(ExitStatus::Success)
        }
    }
}

/// A progress bar on stderr named `what` ([`tagfix::progress::stderr_bar`]: plain lines in a log),
/// hidden with `--quiet`.
pub fn progress_bar(
    global: &GlobalArgs,
    what: &str,
    total: u64,
    bytes: bool,
) -> indicatif::ProgressBar {
    if global.quiet {
        return indicatif::ProgressBar::hidden();
    }
    tagfix::progress::stderr_bar(what, total, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "embed")]
    #[test]
    fn the_onnx_helper_is_reached_by_the_name_the_library_starts_it_with() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["tagfix", tagfix::embed::isolate::HELPER_COMMAND]).unwrap();
        assert!(matches!(cli.command, Command::InternalOpenOnnx));
    }

    #[test]
    fn exit_status_follows_the_library_error_kind() {
        let stopped = tagfix::train::error::TrainError::Stopped {
            step: 3,
            reason: "loss term `tag` is NaN".into(),
            checkpoint: "runs/a/checkpoints/step-2".into(),
        };
        let err = anyhow::Error::from(stopped).context("training");
        assert_eq!(ExitStatus::of_error(&err), ExitStatus::Stopped);
        let interrupted = tagfix::train::error::TrainError::Interrupted {
            step: 7,
            signal: 10,
            from_other_rank: true,
            checkpoint: "runs/a/checkpoints/step-7".into(),
            run_dir: "runs/a".into(),
        };
        assert!(interrupted
            .to_string()
            .starts_with("SIGUSR1 to another rank after step 7"));
        let status = ExitStatus::of_error(&anyhow::Error::from(interrupted));
        assert_eq!(
            status,
            ExitStatus::Interrupted(10),
            "from another rank: the signal the ranks agreed on"
        );
        let input: tagfix::Error = tagfix::vocab::VocabError::Empty {
            path: "v.txt".into(),
        }
        .into();
        assert_eq!(
            ExitStatus::of_error(&anyhow::Error::from(input)),
            ExitStatus::Error
        );
        // An error raised at the CLI edge is a usage error.
        assert_eq!(
            ExitStatus::of_error(&anyhow::anyhow!("--batch-size must be at least 1")),
            ExitStatus::Error
        );
    }
}
