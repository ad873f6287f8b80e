//! The `tagfix` command line: parses flags and dispatches; all work happens in the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::args::Cli::parse();
    cli::init_logging(&args.global);
    match cli::run(args) {
        Ok(status) => status.into(),
        Err(err) => {
            eprintln!("error: {err:#}");
            cli::ExitStatus::Error.into()
        }
    }
}
