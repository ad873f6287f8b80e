//! All clap types of the command line, in one place.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tagfix",
    version,
    about = "Audit, repair and train the label vocabulary of RAM / RAM++ image taggers, slot by slot"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Only print errors and results (no progress bars, no info logs).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output (-v debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a vocabulary: where it was found, its slot count, hash and whether it is the official file.
    #[command(after_help = "Example:\n  tagfix vocab ram\n  tagfix vocab my_tag_list.txt --json")]
    Vocab(VocabArgs),
}

#[derive(Debug, Args)]
pub struct VocabArgs {
    /// A tag-list file (line i = slot i) or a preset name (`ram`).
    #[arg(default_value = "ram")]
    pub vocab: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
