//! The `tagfix` command line: parses flags and dispatches; all work happens in the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    restore_sigpipe();
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
