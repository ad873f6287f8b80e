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
    /// Convert a PyTorch checkpoint (torch.save zip or legacy, `{"model": state_dict}` included) to
    /// safetensors, without Python; unknown pickle globals are refused, never executed.
    #[command(
        after_help = "Example:\n  tagfix convert ram_plus_swin_large_14m.pth ram_plus_swin_large_14m.safetensors"
    )]
    Convert(ConvertArgs),
    /// Show a checkpoint's keys, shapes and dtypes, and which RAM++ model preset and layout it fits.
    #[command(
        after_help = "Examples:\n  tagfix inspect ram_plus_swin_large_14m.pth\n  tagfix inspect swin_large_patch4_window7_224_22k.pth --json\n  tagfix inspect model.safetensors --expect swin_l_384"
    )]
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input checkpoint: .pth / .pt / .bin (torch.save) or .safetensors.
    pub input: std::path::PathBuf,
    /// Output file (.safetensors), written atomically.
    pub output: std::path::PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Checkpoint: .safetensors, or .pth / .pt / .bin (torch.save).
    pub checkpoint: std::path::PathBuf,
    /// Print everything as JSON (keys, groups, fits with their load reports).
    #[arg(long)]
    pub json: bool,
    /// List every key with its shape and dtype.
    #[arg(long)]
    pub keys: bool,
    /// Also fit a model described by a reference `config.json` (as in ram/reference/tiny/).
    #[arg(long, value_name = "CONFIG_JSON")]
    pub model_config: Option<std::path::PathBuf>,
    /// Exit with status 1 unless the whole model of this preset loads from the checkpoint
    /// (exactly, or after resizing bias tables).
    #[arg(long, value_name = "PRESET")]
    pub expect: Option<String>,
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
