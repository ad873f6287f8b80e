//! The `tagfix` command line: parses flags and dispatches; all work happens in the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    restore_sigpipe();
    ignore_sigxfsz();
    let args = cli::args::Cli::parse();
    cli::init_logging(&args.global);
    match cli::run(args) {
        Ok(status) => status.into(),
        Err(err) => {
            eprintln!("error: {}", tagfix::error::report(err.as_ref()));
            cli::ExitStatus::of_error(&err).into()
        }
    }
}

/// Rust ignores SIGPIPE, so a reader that goes away (`tagfix plot RUN | head`) turns every later
/// `println!` into a panic. Like any Unix filter, tagfix is ended by the signal instead; outputs
/// to files are unaffected (they go through a temporary file and a rename).
#[cfg(unix)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread starts; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}

/// A file-size limit (`ulimit -f`, set on some shared machines) ends a process writing past it with
/// SIGXFSZ, which leaves the file half-written (a checkpoint's temporary folder, an output's
/// temporary file). Ignored, the write fails with EFBIG ("File too large") and tagfix reports it as
/// the I/O error it is, removing what it had begun to write.
#[cfg(unix)]
fn ignore_sigxfsz() {
    // SAFETY: called first thing in main, before any thread starts; SIG_IGN is a valid handler.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

#[cfg(not(unix))]
fn ignore_sigxfsz() {}
