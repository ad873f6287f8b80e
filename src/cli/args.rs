//! All clap types of the command line, in one place.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use tagfix::consistency::hnsw::HnswParams;
use tagfix::diff::Check;
use tagfix::train::config::UnreadableImages;

/// Defaults that `repair` also passes to the commands it runs: defined once, here.
pub mod defaults {
    /// `synth --zipf`.
    pub const ZIPF: f64 = 1.0;
    /// `synth-images --size`.
    pub const SYNTH_IMAGE_SIZE: u32 = 64;
    /// `diff --rarest`.
    pub const RAREST: usize = 20;
    /// `diff --max-problems`.
    pub const MAX_PROBLEMS: usize = 1000;
    /// `--batch-size` of the ONNX Runtime commands.
    pub const ORT_BATCH: u64 = 64;
    /// `check --recall-sample`.
    pub const RECALL_SAMPLE: usize = 1000;
}

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

// Parsed once per process, so the largest variant's size (`TrainArgs`) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// What this build and machine provide, each item found or not with the fix: features, the `ram`
    /// vocabulary, ONNX Runtime (and its CUDA provider), models, libtorch, CUDA devices, the plot font.
    #[command(
        after_help = "Example:\n  tagfix doctor\n  tagfix doctor --require train,cuda   # exit 1 unless this binary can train on a GPU\n  tagfix doctor --require onnxruntime-cuda   # exit 1 unless `embed --device cuda` can run\n  tagfix doctor --json"
    )]
    Doctor(DoctorArgs),
    /// Show a vocabulary: where it was found, its slot count, hash and whether it is the official file.
    #[command(after_help = "Example:\n  tagfix vocab ram\n  tagfix vocab my_tag_list.txt --json")]
    Vocab(VocabArgs),
    /// Convert a PyTorch checkpoint (torch.save zip or legacy, `{"model": state_dict}` included) to
    /// safetensors, without Python; unknown pickle globals are refused, never executed. An output
    /// ending in .pth goes the other way: the tensors as they are into `{"model": state_dict}`.
    #[command(
        after_help = "Example:\n  tagfix convert ram_plus_swin_large_14m.pth ram_plus_swin_large_14m.safetensors\n  tagfix convert model.safetensors model.pth"
    )]
    Convert(ConvertArgs),
    /// Write a RAM++ checkpoint (a tagfix training checkpoint or run, safetensors or .pth) for the
    /// official code: `torch.save({"model": state_dict})` with the official key names, order and
    /// dtypes, which `ram_plus(pretrained=OUT.pth)` and `torch.load` read; or, with
    /// --label-embed-only, the label embedding as a bare tensor (feature `train`).
    #[command(after_help = EXPORT_HELP)]
    Export(ExportArgs),
    /// Tag images with a RAM++ checkpoint: RAM's inference transform, the tags above the per-class
    /// thresholds with English and Chinese names and scores, absent slots flagged; the full score
    /// matrix for `tagfix eval` (feature `train`).
    #[command(after_help = TAG_HELP)]
    Tag(TagArgs),
    /// Show a checkpoint's keys, shapes and dtypes, and which RAM++ model preset and layout it fits.
    #[command(
        after_help = "Examples:\n  tagfix inspect ram_plus_swin_large_14m.pth\n  tagfix inspect swin_large_patch4_window7_224_22k.pth --json\n  tagfix inspect model.safetensors --expect swin_l_384\n  tagfix inspect runs/a            # the run's newest whole checkpoint: step, checksums, model"
    )]
    Inspect(InspectArgs),
    /// Audit training annotations against a vocabulary, slot by slot; write the slot manifest.
    #[command(
        after_help = "Examples:\n  tagfix diff --vocab ram --data train.json --out manifest.json\n  \
tagfix diff --vocab ram --data part1.json.gz part2.jsonl --tags my_tag_list.txt --format json\n  \
tagfix diff --vocab ram --data train.json --keep-going --fail-on absent,unknown,malformed\n\n\
Exit status: 0 ok; 1 a --fail-on condition holds; 2 usage or input error (a malformed record stops\n\
the scan unless --keep-going)."
    )]
    Diff(DiffArgs),
    /// Generate a synthetic RAM-format annotation set (Zipf-like tag frequencies, chosen absent slots).
    #[command(
        after_help = "Example:\n  tagfix synth --vocab ram --records 100000 --absent 144 --seed 1 --out data.json"
    )]
    Synth(SynthArgs),
    /// Plot a training run: loss curves per term (raw and weighted, smoothed), learning rate,
    /// gradient norms, and the detected health events (PNG and SVG).
    #[command(
        after_help = "Example:\n  tagfix plot runs/ft1\n  tagfix plot runs/ft1 --out figs --smooth 100 --detect"
    )]
    Plot(PlotArgs),
    /// Compute text embeddings for tag slots with an ONNX text encoder and patch them into an embedding
    /// file in its slot layout: untouched rows stay bit-identical to the base.
    #[command(after_help = "Examples:\n  \
        tagfix embed --model minilm --manifest manifest.json --absent --base base.safetensors --out patched.safetensors --control 200\n  \
        tagfix embed --vocab ram --model minilm --all --out minilm_ram.safetensors\n  \
        tagfix embed --model clip --recipe ram-ensemble --slots 12,40-45 --base ram_tag_embedding_class_4585.pth --out patched.pth\n  \
        tagfix embed --vocab tags.txt --model clip --descriptions descriptions.json --all --out label_embed.safetensors")]
    Embed(EmbedArgs),
    /// Gate an embedding file: drift from a baseline (cosine, kNN overlap, changed rows, mean shift),
    /// or the semantic consistency of a patched file's regenerated rows (calibrated by its control
    /// rows). Exit 0 when every rule holds, 1 when one fails, 2 on bad input.
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),
    /// Evaluate prediction scores on a benchmark: mAP and precision/recall/F1 at the per-class
    /// thresholds, benchmark tags mapped to slots by name, absent slots reported separately. With
    /// --checkpoint the scores come from the model (as `tagfix tag`), on one or more benchmarks.
    #[command(
        after_help = "Examples:\n  tagfix eval --benchmark ../shared/ram/benchmarks/openimages_common_214 --scores preds.csv\n  tagfix eval --benchmark DIR --scores preds.safetensors --manifest manifest.json --format json --out eval.json\n  tagfix eval --checkpoint ram_plus_swin_large_14m.pth --benchmark openimages_common_214 --benchmark openimages_rare_200 \\\n      --images openimages_common_214/imgs --images openimages_rare_200/imgs"
    )]
    Eval(EvalArgs),
    /// The whole repair in one command: diff → embed → check → a short train, on your data or on the
    /// embedded default (the `ram` vocabulary and a synthesized training set with 144 absent slots),
    /// ending with OUT/REPORT.md.
    #[command(after_help = "Examples:\n  \
        tagfix repair --out out/repair\n  \
        tagfix repair --vocab ram --data part1.json.gz part2.json.gz --model clip --base ram_tag_embedding_class_4585.pth --out repair-run")]
    Repair(RepairArgs),
    /// Train RAM++ on RAM-format annotations with the patched label embeddings: absent-slot policy,
    /// balanced losses, gradient accumulation, atomic checkpoints and exact resume (feature `train`).
    #[command(
        after_help = "Examples:\n  tagfix train --config ../shared/ram/configs/pretrain.yaml --data train.json --images imgs/ \\\n      --manifest manifest.json --label-embed patched.safetensors --teacher teacher.safetensors \\\n      --init swin_large_patch4_window7_224_22k.pth --batch-size 52 --micro-batch-size 26 --out runs/a\n  tagfix train --resume runs/a --max-steps 20000\n\nExit status: 0 trained, 2 bad input (checked before the first step) or a fault, 3 the run stopped itself \
                      (a non-finite loss term or gradient norm; the state before that step is checkpointed), 128 + the \
                      signal when SIGTERM, SIGINT or SIGUSR1 stopped it (143, 130, 138: the step in progress finishes and \
                      is checkpointed; continue with --resume)."
    )]
    Train(TrainArgs),
    /// Compute the teacher file for `tagfix train --teacher FILE`: CLIP text embeddings of each
    /// record's caption (embed's text encoder) and CLIP image features of its image (an ONNX image
    /// tower with CLIP preprocessing), keyed by image_path (feature `embed`).
    #[command(after_help = TEACHER_HELP)]
    Teacher(TeacherArgs),
    /// Write a synthetic training set (coloured shapes tagged by colour and shape, some vocabulary
    /// slots absent) with annotations, slot manifest, label embeddings and teacher features.
    #[command(
        name = "synth-images",
        after_help = "Examples:\n  tagfix synth-images --out /tmp/synth --count 256\n  tagfix synth-images --vocab ram --out /tmp/synth-ram --descriptions 1"
    )]
    SynthImages(SynthImagesArgs),
    /// Write the command-line reference (Markdown, docs/cli.md) from these clap definitions.
    #[command(name = "cli-reference", hide = true)]
    CliReference(CliReferenceArgs),
    /// Open the ONNX model named on standard input and exit: the helper process in which tagfix
    /// opens each model first, so that one crashing ONNX Runtime does not end tagfix
    /// (`tagfix::embed::isolate`).
    #[cfg(feature = "embed")]
    #[command(name = "internal-open-onnx", hide = true)]
    InternalOpenOnnx,
}

#[derive(Debug, Args)]
pub struct CliReferenceArgs {
    /// Write the reference here (atomically) instead of to stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Compare with --out instead of writing it: exit 1 when it is stale.
    #[arg(long, requires = "out")]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Vocabulary: a tag-list file (line i = slot i) or a preset (`ram`).
    #[arg(long, default_value = "ram", value_name = "FILE|ram")]
    pub vocab: String,
    /// Annotation files (RAM format). Without any, a training set is synthesized (--records, --absent).
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub data: Vec<PathBuf>,
    /// Records of the synthesized set.
    #[arg(long, default_value_t = 20000)]
    pub records: u64,
    /// Absent slots of the synthesized set.
    #[arg(long, default_value_t = 144)]
    pub absent: usize,
    /// Seed for synthesis, the control sample and the training run (at most 2^63 − 1, which the
    /// run's config.toml can hold).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(..=i64::MAX as u64))]
    pub seed: u64,
    /// Text encoder for the missing rows (`minilm`, `clip`, or a model directory).
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// The label-embedding file to patch [default: the MiniLM embeddings of the RAM vocabulary in the
    /// shared material, standing in for a model's original file].
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// Present slots re-embedded as the control set for `check` (N or `all`).
    #[arg(long, default_value = "200", value_parser = parse_control)]
    pub control: tagfix::embed::plan::ControlSpec,
    /// Record malformed annotation records and go on.
    #[arg(long)]
    pub keep_going: bool,
    /// Optimizer steps of the short training run at the end (the small `tiny` RAM++, 64 px, CPU) on the
    /// embedded default; 0 skips it. Needs the `train` feature.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(..=i64::MAX as u64))]
    pub train_steps: u64,
    /// Synthetic images (coloured shapes tagged with the vocabulary's colour and shape slots) the short
    /// training run trains on; they join the audited data.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..))]
    pub train_images: u64,
    /// Device of the `embed` step's text encoder: cpu, cuda or cuda:N (CUDA needs the onnxruntime-gpu
    /// library: scripts/setup-gpu.sh, or ORT_DYLIB_PATH; never falls back to CPU).
    #[arg(long, default_value = "cpu", value_parser = parse_device_arg, value_name = "DEVICE")]
    pub embed_device: DeviceArg,
    /// Device of the short training run: cpu or cuda (cuda needs the GPU build, `scripts/setup-gpu.sh`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub train_device: tagfix::train::config::DeviceKind,
    /// Output directory (every artefact and REPORT.md go here).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selection").args(["absent", "slots", "all"])))]
pub struct EmbedArgs {
    /// Vocabulary: a tag-list file (line i = slot i) or a preset (`ram`).
    #[arg(long, default_value = "ram")]
    pub vocab: String,
    /// Text encoder: a model directory (ONNX file, tokenizer, descriptor.toml) or a name installed under
    /// models/ (`minilm`, `clip`).
    #[arg(long)]
    pub model: String,
    /// Slot manifest written by `tagfix diff --out` (must be for the same vocabulary).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<std::path::PathBuf>,
    /// Regenerate the slots the manifest lists as absent (the default with --manifest and --base).
    #[arg(long, requires = "manifest")]
    pub absent: bool,
    /// Regenerate these slots, e.g. `3,17,100-120`.
    #[arg(long, value_name = "LIST")]
    pub slots: Option<String>,
    /// Compute every slot (a full file; the default without --base).
    #[arg(long)]
    pub all: bool,
    /// Text recipe: `single` ("a photo of a {}."), `ram-ensemble` (RAM's 63 open-set templates,
    /// averaged) or `templates:FILE` (one template a line, `{}` = tag, `{article}` = a/an).
    #[arg(long, default_value = "single", value_name = "RECIPE")]
    pub recipe: String,
    /// RAM++ tag descriptions (JSON: tag -> list of descriptions); one row per description, the RAM++
    /// layout [tags × k, d].
    #[arg(long, value_name = "FILE", conflicts_with = "recipe")]
    pub descriptions: Option<std::path::PathBuf>,
    /// Base embedding file (.safetensors, .npy, .pth) whose other rows are kept bit-identical.
    #[arg(long, value_name = "FILE")]
    pub base: Option<std::path::PathBuf>,
    /// Tensor to patch when the base file holds several.
    #[arg(long, value_name = "NAME", requires = "base")]
    pub tensor: Option<String>,
    /// Output file: .safetensors (with provenance metadata and the control tensor), .npy, or .pth (a
    /// bare tensor, as RAM's frozen_tag_embedding loads it). Written atomically.
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,
    #[command(flatten)]
    pub ort: OrtArgs,
    /// Also re-embed N present slots (seeded sample) or `all` into the `control` tensor, so `tagfix
    /// check` can calibrate how well regenerated rows match originals. Needs --base.
    #[arg(long, value_name = "N|all", value_parser = parse_control)]
    pub control: Option<tagfix::embed::plan::ControlSpec>,
    /// Seed of the control sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// How ONNX Runtime runs a model (`embed`, `teacher`).
#[derive(Debug, Args)]
pub struct OrtArgs {
    /// cpu, cuda or cuda:N. CUDA fails when its execution provider cannot run; never falls back to
    /// CPU. `teacher` under torchrun or srun: `cuda` is the process's local GPU (LOCAL_RANK,
    /// SLURM_LOCALID).
    #[arg(long, default_value = "cpu", value_parser = parse_device_arg)]
    pub device: DeviceArg,
    /// Texts (or images) per inference batch; texts are length-sorted and padded to their longest.
    #[arg(long, default_value_t = defaults::ORT_BATCH, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// libonnxruntime to load (default: $ORT_DYLIB_PATH, else .deps/ort-gpu/libonnxruntime.so once
    /// scripts/setup-gpu.sh installed onnxruntime-gpu there, else the setup's .deps/libonnxruntime.so).
    #[arg(long, value_name = "FILE")]
    pub ort_lib: Option<std::path::PathBuf>,
}

/// `--device` of ONNX Runtime: the device, and whether it was plain `cuda` (no index), which a
/// launcher's process may take as its local GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceArg {
    pub device: tagfix::embed::Device,
    pub gpu_without_index: bool,
}

/// As given: `cuda` stays `cuda`, so that a command line written back parses to the same.
impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.gpu_without_index {
            true => f.write_str("cuda"),
            false => self.device.fmt(f),
        }
    }
}

fn parse_device_arg(s: &str) -> Result<DeviceArg, String> {
    Ok(DeviceArg {
        device: s.parse()?,
        gpu_without_index: s == "cuda",
    })
}

#[cfg(feature = "embed")]
impl OrtArgs {
    pub fn encoder_options(&self) -> tagfix::embed::encoder::EncoderOptions {
        tagfix::embed::encoder::EncoderOptions {
            device: self.device.device,
            threads: self.threads,
            batch_size: self.batch_size as usize,
            ort_lib: self.ort_lib.clone(),
        }
    }
}

fn parse_control(s: &str) -> Result<tagfix::embed::plan::ControlSpec, String> {
    s.parse()
}

const CHECK_HELP: &str = "\
Modes:
  drift        every slot of the candidate against the same slot of the baseline
  consistency  a patched file from `tagfix embed` against the base it was patched from: its `control`
               rows (present slots re-embedded with the same pipeline) calibrate the regenerated rows
  auto         consistency when the candidate carries a `control` tensor, else drift (default)

Examples:
  tagfix check --baseline fixtures/check/baseline.safetensors --candidate new.safetensors --vocab ram
  tagfix check --base ram_tag_embedding_class_4585.safetensors --patched patched.safetensors --plot plots/
  tagfix check --baseline a.npy --candidate b.npy --policy embeddings.policy.toml --format junit --out check.xml
  tagfix check --baseline a.safetensors --candidate b.safetensors --format github --summary \"$GITHUB_STEP_SUMMARY\"";

/// Which comparison `check` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckModeArg {
    Auto,
    Drift,
    Consistency,
}

impl CheckModeArg {
    /// The mode asked for (`None`: chosen by the candidate, see `CheckOptions::mode`).
    pub fn mode(self) -> Option<tagfix::consistency::Mode> {
        use tagfix::consistency::Mode;
        match self {
            CheckModeArg::Auto => None,
            CheckModeArg::Drift => Some(Mode::Drift),
            CheckModeArg::Consistency => Some(Mode::Consistency),
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Baseline embedding file (.safetensors, .npy, .pth); in consistency mode the base file the
    /// candidate was patched from.
    #[arg(long, visible_alias = "base", value_name = "FILE")]
    pub baseline: std::path::PathBuf,
    /// Candidate embedding file; in consistency mode the patched file `tagfix embed` wrote.
    #[arg(long, visible_alias = "patched", value_name = "FILE")]
    pub candidate: std::path::PathBuf,
    /// Which comparison to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: CheckModeArg,
    /// Vocabulary (tag-list file or `ram`): names slots by tag and refuses files made for another
    /// vocabulary (provenance sha256).
    #[arg(long, value_name = "FILE|ram")]
    pub vocab: Option<String>,
    /// Compare and gate only these slots, e.g. `3,17,100-120` (neighbours still come from every row).
    #[arg(long, value_name = "LIST")]
    pub slots: Option<String>,
    /// Policy file (TOML) with the thresholds; flags below override it. See docs/check.md.
    #[arg(long, value_name = "TOML")]
    pub policy: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub thresholds: tagfix::consistency::policy::PolicyFlags,
    /// Neighbour search: exact (blocked matrix products), hnsw, or auto by size.
    #[arg(long, value_enum, default_value = "auto")]
    pub search: tagfix::consistency::SearchChoice,
    /// HNSW candidate list while searching (higher: better recall, slower).
    #[arg(long, default_value_t = HnswParams::default().ef_search, value_name = "N")]
    pub hnsw_ef: usize,
    /// HNSW links per node and layer, M (higher: better recall, slower build).
    #[arg(long, default_value_t = HnswParams::default().max_connections as u16, value_name = "N",
          value_parser = clap::value_parser!(u16).range(2..=256))]
    pub hnsw_m: u16,
    /// HNSW candidate list while building (higher: better graph, slower build).
    #[arg(long, default_value_t = HnswParams::default().ef_construction, value_name = "N")]
    pub hnsw_ef_construction: usize,
    /// Queries sampled to measure HNSW recall against exact search.
    #[arg(long, default_value_t = defaults::RECALL_SAMPLE, value_name = "N")]
    pub recall_sample: usize,
    /// Tensor to read when a file holds several (default: `embeddings`, `label_embed`, or the only one).
    #[arg(long, value_name = "NAME")]
    pub tensor: Option<String>,
    /// Report format on stdout (or in --out).
    #[arg(long, value_enum, default_value = "table")]
    pub format: tagfix::report::check::CheckFormat,
    /// Write the report to this file (atomically) instead of stdout. Here and below `-` is stdout
    /// (one output at most) and an input file is refused.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    /// Also write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Also write JUnit XML here (one test case per rule).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// Also append a Markdown summary to this file (e.g. "$GITHUB_STEP_SUMMARY").
    #[arg(long, value_name = "FILE")]
    pub summary: Option<std::path::PathBuf>,
    /// Write histograms (PNG and SVG) of per-slot cosine, kNN overlap and neighbourhood score here.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input checkpoint: .pth / .pt / .bin (torch.save) or .safetensors.
    pub input: std::path::PathBuf,
    /// Output file (.safetensors; or .pth for `{"model": state_dict}`), written atomically.
    pub output: std::path::PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

const EXPORT_HELP: &str = "Examples:
  tagfix export runs/a ram_plus_repaired.pth                  # newest checkpoint of a run
  tagfix export runs/a/checkpoints/step-00020000 out.pth --model swin_l_384
  tagfix export runs/a label_embed.pth --label-embed-only     # as RAM loads frozen_tag_embedding/*.pth

The output holds every state-dict entry of the official model (parameters f32, the constant buffers
relative_position_index int64 and attn_mask f32), in the official order, and is read back and
compared before the command succeeds.";

const TAG_HELP: &str = "Examples:
  tagfix tag --checkpoint ram_plus_swin_large_14m.pth --images photos/
  tagfix tag --checkpoint runs/a --images photos/ --manifest manifest.json --format json > tags.jsonl
  tagfix tag --checkpoint runs/a --images imgs/ --scores scores.safetensors --keep-going

Exit status: 0 tagged; 2 usage or input error. Every image's header is read before any output; an
unreadable image stops the command (nothing written to --out or --scores) unless --keep-going, which
reports it by path and goes on.";

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Checkpoint: a tagfix run folder (its newest checkpoint), a checkpoint folder, or a
    /// .safetensors / .pth state dict.
    pub checkpoint: PathBuf,
    /// Output .pth file, written atomically.
    pub output: PathBuf,
    /// The model: a preset (swin_l_384, swin_l_224, swin_b_384, swin_b_224), `tiny`, or a reference
    /// config.json [default: the preset the checkpoint fits].
    #[arg(long, value_name = "PRESET")]
    pub model: Option<String>,
    /// The vocabulary the checkpoint was trained with (tag count) [default: the preset's 4585].
    #[arg(long, value_name = "VOCAB")]
    pub vocab: Option<String>,
    /// Write only the label embedding [rows, dim] as a bare tensor.
    #[arg(long)]
    pub label_embed_only: bool,
    /// Print the summary and the load report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Output formats of `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TagFormat {
    /// One block per image: its tags with Chinese name, score and threshold.
    Table,
    /// JSON Lines, one object per image.
    Json,
    /// One row per (image, tag).
    Csv,
}

/// The per-class thresholds of `tag` and `eval` (one definition for both).
#[derive(Debug, Clone, clap::Args)]
pub struct ThresholdArgs {
    /// Per-slot thresholds, one a line in slot order (as ram_tag_list_threshold.txt) [default: the
    /// vocabulary preset's threshold sidecar, as the official code; `tag` falls back to 0.68, RAM's
    /// default, for a vocabulary without one].
    #[arg(long, value_name = "FILE", conflicts_with = "threshold")]
    pub thresholds: Option<PathBuf>,
    /// One threshold for every slot, in [0, 1].
    #[arg(long, value_name = "P")]
    pub threshold: Option<f32>,
}

impl ThresholdArgs {
    /// The thresholds these flags select for `vocab` (`fallback`: for a vocabulary without a
    /// threshold sidecar). With open-set label embeddings (`--label-embed`) a sidecar's thresholds,
    /// fitted to other embeddings, do not apply: 0.5 for every slot unless a flag says otherwise.
    pub fn choose(
        &self,
        vocab: &tagfix::vocab::Vocabulary,
        fallback: Option<f32>,
        open_set: bool,
    ) -> tagfix::error::Result<tagfix::eval::Thresholds> {
        if open_set && self.thresholds.is_none() && self.threshold.is_none() {
            return Ok(tagfix::eval::Thresholds::open_set(vocab.len()));
        }
        tagfix::eval::Thresholds::choose(
            self.thresholds.as_deref(),
            self.threshold,
            vocab,
            fallback,
        )
    }
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// Checkpoint: the official RAM++ .pth, a tagfix run folder (its newest checkpoint), a
    /// checkpoint folder, or a .safetensors state dict.
    #[arg(long, value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// The model: a preset (swin_l_384, ...), `tiny`, or a reference config.json [default: the
    /// preset the checkpoint fits].
    #[arg(long, value_name = "PRESET")]
    pub model: Option<String>,
    /// Image files or folders (walked recursively for .jpg, .jpeg, .png).
    #[arg(long, value_name = "FILE|DIR", num_args = 1.., required_unless_present = "images_from")]
    pub images: Vec<PathBuf>,
    /// A file listing image files or folders, one a line, as --images takes them (empty lines
    /// skipped; after any --images): for sets too large for a command line, e.g. `jq -r
    /// '.[].image_path' train.json`.
    #[arg(long, value_name = "LIST")]
    pub images_from: Option<PathBuf>,
    /// The vocabulary the checkpoint's slots refer to (a tag-list file or preset name); with
    /// --label-embed, the tags those embeddings are of.
    #[arg(long, default_value = "ram")]
    pub vocab: String,
    /// Label embeddings of other tags in place of the checkpoint's (RAM++ open-set tagging): one row
    /// per tag of --vocab, or one per description of each, as `tagfix embed --model clip
    /// --descriptions` writes them. Thresholds then default to 0.5 for every tag, as
    /// `inference_ram_plus_openset.py`.
    #[arg(long, value_name = "FILE")]
    pub label_embed: Option<PathBuf>,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Chinese tag names, one a line [default: the vocabulary preset's `zh` sidecar].
    #[arg(long, value_name = "FILE")]
    pub zh: Option<PathBuf>,
    /// Slot manifest (from `tagfix diff`): predictions of slots it marks absent are flagged.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// List each image's N best-scoring tags, each marked whether it passes its threshold,
    /// instead of the tags above the thresholds.
    #[arg(long, value_name = "N")]
    pub top_k: Option<usize>,
    /// cpu or cuda (cuda needs the GPU build: scripts/setup-gpu.sh).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: tagfix::train::config::DeviceKind,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch_size: usize,
    /// libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = TagFormat::Table)]
    pub format: TagFormat,
    /// Write the per-image output to FILE (atomically) instead of stdout; with --shard, the set's
    /// folder (created), which gets tags-IIIII-of-NNNNN.jsonl (.csv, .txt by --format).
    #[arg(long, value_name = "FILE|DIR")]
    pub out: Option<PathBuf>,
    /// Write the full [images × slots] score matrix (.safetensors or .csv, as `tagfix eval --scores`
    /// reads it; image ids are the paths relative to the folder given); with --shard, the set's
    /// folder (created), which gets scores-IIIII-of-NNNNN.safetensors (`tagfix eval --scores DIR`
    /// reads the set).
    #[arg(long, value_name = "OUT|DIR")]
    pub scores: Option<PathBuf>,
    /// Tag only shard I of N (I from 0): the I-th of N contiguous blocks of the images in the order
    /// found (folders walked in name order), so that N processes, GPUs or machines share the work;
    /// needs --out DIR. `auto`: this process's place among torchrun's ranks (RANK of WORLD_SIZE), a
    /// Slurm job array's tasks or srun's tasks, as `tagfix teacher --shard auto`; there `--device
    /// cuda` is the process's local GPU (LOCAL_RANK, else SLURM_LOCALID).
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<tagfix::share::shard::ShardSpec>,
    /// Report unreadable or corrupt images by path and go on without them.
    #[arg(long)]
    pub keep_going: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Checkpoint: .safetensors, or .pth / .pt / .bin (torch.save); or a `tagfix train` checkpoint
    /// folder (RUN_DIR/checkpoints/step-N: its model, step and whether its files are whole) or run
    /// folder (its newest whole checkpoint).
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

/// Report formats of `diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
    Markdown,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The vocabulary: a tag-list file (line i = slot i) or a preset name (`ram`).
    #[arg(long, default_value = "ram", value_name = "FILE|ram")]
    pub vocab: String,
    /// Annotation files: JSON array of records, JSON Lines, or gzip of either.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub data: Vec<PathBuf>,
    /// A derived tag list to map onto the vocabulary's slots (exact name, then normalised).
    #[arg(long, value_name = "FILE")]
    pub tags: Option<PathBuf>,
    /// A sidecar aligned with the vocabulary; names containing `threshold` are checked as numbers in [0, 1].
    /// Without any, a preset's own sidecars are checked.
    #[arg(long = "sidecar", value_name = "NAME=FILE", value_parser = parse_sidecar)]
    pub sidecars: Vec<(String, PathBuf)>,
    /// Do not check a preset's sidecars automatically.
    #[arg(long)]
    pub no_preset_sidecars: bool,
    /// Report format on stdout (or in --report).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Write the slot manifest (JSON, docs/formats.md) to this file, atomically (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the report to this file (atomically) instead of stdout (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Exit with status 1 when any of these holds: absent (a slot has no record), unknown (an id names
    /// no slot), malformed (a record problem, with --keep-going), sidecar (a sidecar error),
    /// duplicate-tags (tags equal after normalisation), shift (--tags would shift indices).
    #[arg(long, value_delimiter = ',', value_name = "CHECK,...", value_parser = parse_check)]
    pub fail_on: Vec<Check>,
    /// Record per-record problems and go on instead of stopping at the first one.
    #[arg(long)]
    pub keep_going: bool,
    /// How many of the rarest present tags to list.
    #[arg(long, default_value_t = defaults::RAREST)]
    pub rarest: usize,
    /// How many problems to keep with details (all are counted).
    #[arg(long, default_value_t = defaults::MAX_PROBLEMS)]
    pub max_problems: usize,
}

fn parse_check(s: &str) -> Result<Check, String> {
    Check::ALL
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
            format!("unknown check `{s}` (one of: {})", names.join(", "))
        })
}

fn parse_sidecar(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!(
            "expected NAME=FILE (e.g. zh=ram_tag_list_chinese.txt), got `{s}`"
        )),
    }
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The vocabulary: a tag-list file or a preset name (`ram`).
    #[arg(long, default_value = "ram", value_name = "FILE|ram")]
    pub vocab: String,
    /// Number of records.
    #[arg(long)]
    pub records: u64,
    /// Number of slots no record carries, drawn with --seed.
    #[arg(long, default_value_t = 0, conflicts_with = "absent_slots")]
    pub absent: usize,
    /// Exactly these absent slots, e.g. `3,17,200-210`.
    #[arg(long, value_name = "LIST")]
    pub absent_slots: Option<String>,
    /// Seed: the same seed and flags give the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file (written atomically; `-`: stdout, the summary then goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Write JSON Lines instead of a JSON array.
    #[arg(long)]
    pub jsonl: bool,
    /// Compress with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Zipf exponent of tag frequencies.
    #[arg(long, default_value_t = defaults::ZIPF)]
    pub zipf: f64,
    /// Print the summary (with the absent slots) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Items that must be present (comma-separated): exit 1 when one is not. Any item found broken
    /// (status `error`) also gives exit 1.
    #[arg(long, value_delimiter = ',', value_name = "ITEM,...",
          value_parser = clap::builder::PossibleValuesParser::new(tagfix::doctor::CHECK_NAMES))]
    pub require: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A training run directory (holding metrics.jsonl).
    pub run_dir: PathBuf,
    /// Where the PNG and SVG files go [default: RUN_DIR/plots].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// EMA span in steps for the smoothed curves (1 = no smoothing) [default: a tenth of the run's
    /// steps, at most 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub smooth: Option<u32>,
    /// Re-run the health detectors on metrics.jsonl instead of reading events.jsonl.
    #[arg(long)]
    pub detect: bool,
    /// Detector thresholds (TOML; see docs/monitor.md) for --detect [default: built-in defaults].
    #[arg(long, value_name = "TOML", requires = "detect")]
    pub thresholds: Option<PathBuf>,
    /// Also write the health events as JSON to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("bench").required(true).args(["benchmark", "taglist"])))]
pub struct EvalArgs {
    /// Prediction scores: CSV `image_id,slot_or_tag,score` or safetensors `scores` [images, slots]
    /// with metadata `image_ids` (see docs/formats.md); or a folder holding the score set of `tagfix
    /// tag --shard I/N --scores DIR` (scores-IIIII-of-NNNNN.safetensors, every shard present).
    #[arg(long, value_name = "FILE|DIR", required_unless_present = "checkpoint")]
    pub scores: Option<PathBuf>,
    /// Score the benchmark images with this RAM++ checkpoint instead (as `tagfix tag`: .pth, a
    /// tagfix run or checkpoint folder, .safetensors).
    #[arg(long, value_name = "CKPT", conflicts_with = "scores")]
    pub checkpoint: Option<PathBuf>,
    /// A benchmark folder in the official format (`*_taglist.txt` + `*_annots.txt`), e.g.
    /// ../shared/ram/benchmarks/openimages_common_214. Repeat it with --checkpoint for several
    /// benchmarks side by side.
    #[arg(long, value_name = "DIR")]
    pub benchmark: Vec<PathBuf>,
    /// With --checkpoint: the benchmark's image folder, once for all or once per --benchmark
    /// [default: DIR/imgs, as batch_inference.py].
    #[arg(long, value_name = "IMAGE_ROOT", requires = "checkpoint")]
    pub images: Vec<PathBuf>,
    /// With --checkpoint: the model (preset, `tiny` or reference config.json) [default: the preset
    /// the checkpoint fits].
    #[arg(long, value_name = "PRESET", requires = "checkpoint")]
    pub model: Option<String>,
    /// With --checkpoint: cpu or cuda.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: tagfix::train::config::DeviceKind,
    /// With --checkpoint: images per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch_size: usize,
    /// With --checkpoint: libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// The benchmark's tag list (instead of --benchmark).
    #[arg(
        long,
        value_name = "FILE",
        requires = "annots",
        conflicts_with = "benchmark"
    )]
    pub taglist: Option<PathBuf>,
    /// The benchmark's annotation file (`image_id,tag[,tag…]` or `image_id,i j k`).
    #[arg(long, value_name = "FILE", requires = "taglist")]
    pub annots: Option<PathBuf>,
    /// The vocabulary the scores' slots refer to (a tag-list file or preset name).
    #[arg(long, default_value = "ram")]
    pub vocab: String,
    /// With --checkpoint: label embeddings of the tags of --vocab in place of the checkpoint's
    /// (RAM++ open-set evaluation, e.g. OpenImages-Rare with its LLM tag descriptions embedded by
    /// `tagfix embed --model clip --descriptions`); thresholds then default to 0.5 for every tag.
    #[arg(long, value_name = "FILE", requires = "checkpoint")]
    pub label_embed: Option<PathBuf>,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    /// Slot manifest (from `tagfix diff`): slots it marks absent are reported separately.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = EvalFormat::Table)]
    pub format: EvalFormat,
    /// Write the output to FILE (atomically) instead of stdout (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Table: also list every class.
    #[arg(long)]
    pub per_class: bool,
    /// Also write per-slot thresholds fitted on the benchmark images to FILE (one a line in slot
    /// order, as ram_tag_list_threshold.txt): each slot with positive images gets the threshold
    /// that maximises its F1 there, every other slot keeps its threshold. The report is at the
    /// thresholds before fitting; check the file with --thresholds FILE on other images.
    #[arg(long, value_name = "FILE")]
    pub fit_thresholds: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalFormat {
    /// Summary table (mAP, CP/CR/CF1, OP/OR/OF1 in %).
    Table,
    /// The whole report (fractions in [0, 1]).
    Json,
    /// One row per class.
    Csv,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Configuration: tagfix TOML, or RAM's own YAML (configs/pretrain.yaml, finetune.yaml). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// RAM-format annotation files (JSON array or JSON Lines, optionally .gz); default: the config's train_file.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub data: Vec<std::path::PathBuf>,
    /// Image root the records' image_path values are relative to; default: the config's image_path_root.
    #[arg(long, value_name = "DIR")]
    pub images: Option<std::path::PathBuf>,
    /// Slot manifest written by `tagfix diff` (which slots are absent).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<std::path::PathBuf>,
    /// Label embeddings in RAM++ layout [slots x k, 512] (safetensors, npy or pth), e.g. from `tagfix embed`.
    #[arg(long, value_name = "FILE")]
    pub label_embed: Option<std::path::PathBuf>,
    /// Teacher features: a file (CLIP image features + caption embeddings keyed by image_path, from
    /// `tagfix teacher`), a folder of the shards of `tagfix teacher --shard I/N`, or `online` (computed on every augmented batch through the CLIP towers of
    /// --teacher-image-model / --teacher-text-model or [online_teacher]). Without it only the tag loss
    /// is trained.
    #[arg(long, value_name = "FILE|DIR|online")]
    pub teacher: Option<std::path::PathBuf>,
    /// Online teacher: CLIP image tower (directory with descriptor.toml, kind = "clip-image", or a name).
    #[arg(long, value_name = "DIR|NAME")]
    pub teacher_image_model: Option<String>,
    /// Online teacher: CLIP text tower (directory with descriptor.toml, or a name such as `clip`).
    #[arg(long, value_name = "DIR|NAME")]
    pub teacher_text_model: Option<String>,
    /// Checkpoint(s) to start from (ImageNet Swin or RAM++; .pth or .safetensors), loaded in order.
    #[arg(long, value_name = "CHECKPOINT")]
    pub init: Vec<std::path::PathBuf>,
    /// Vocabulary (file or preset) the manifest must belong to.
    #[arg(long, value_name = "VOCAB")]
    pub vocab: Option<String>,
    /// Train although the image encoder is not loaded from a pretrained checkpoint (prints a loud warning).
    #[arg(long)]
    pub allow_random_encoder: bool,
    #[command(flatten)]
    pub settings: tagfix::train::config::TrainFlags,
    /// Validation data: a benchmark folder in the official format (`*_taglist.txt` + `*_annots.txt`, tags
    /// mapped to slots by name) or a held-out RAM-format annotation file. Results: RUN_DIR/validation.jsonl.
    #[arg(long, value_name = "DIR_OR_FILE")]
    pub val_data: Option<std::path::PathBuf>,
    /// Image root of the validation data [default: --images].
    #[arg(long, value_name = "DIR", requires = "val_data")]
    pub val_images: Option<std::path::PathBuf>,
    /// Per-slot thresholds for validation precision/recall/F1 (one a line, slot order)
    /// [default: the --vocab preset's ram_tag_list_threshold.txt, else 0.5].
    #[arg(long, value_name = "FILE", requires = "val_data")]
    pub val_thresholds: Option<std::path::PathBuf>,
    /// Write the training plots (as `tagfix plot RUN_DIR`) into RUN_DIR/plots at the end of the run.
    #[arg(long)]
    pub plot: bool,
    /// Any config key, as KEY=TOML_VALUE (repeatable), applied after the file and before the flags above.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in RUN_DIR from its newest checkpoint (inputs and config come from the run;
    /// flags still override: settings such as --max-steps, and input paths such as --images or --data
    /// where the run's files are now, each checked again; --teacher online or FILE switches the
    /// teacher; the batch size and seed stay the run's).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<std::path::PathBuf>,
    /// With --out: continue the run there from its newest checkpoint when it has one, else start it
    /// (again from step 0 when an earlier attempt left no checkpoint). For jobs a scheduler restarts
    /// with the same command (torchrun --max-restarts, Slurm --requeue); the inputs must be the run's.
    #[arg(long, requires = "out", conflicts_with = "resume")]
    pub auto_resume: bool,
    /// Run directory (metrics.jsonl, checkpoints/, config.toml).
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<std::path::PathBuf>,
    /// Print the run summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Check everything the run would check before its first step (configuration, inputs, every
    /// image, the model and its weights, --out or the checkpoint to resume), print the plan and
    /// exit: nothing is trained or written. One process, also with --nproc-per-node; under
    /// torchrun or srun rank 0 checks and the other ranks exit at once; exit 2 on what the run
    /// would refuse.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub dist: DistArgs,
}

/// Data-parallel training (docs/distributed.md). Under torchrun or srun the ranks come from their
/// environment; `--nproc-per-node` starts them here.
#[derive(Debug, Clone, Args)]
pub struct DistArgs {
    /// Start N ranks of this command on this machine (torchrun's environment, rendezvous on
    /// 127.0.0.1), print their output prefixed `[rank r]`, and stop all if one fails.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub nproc_per_node: u16,
    /// Process-group backend [default: nccl on cuda, gloo on cpu].
    #[arg(long, value_name = "BACKEND")]
    pub dist_backend: Option<tagfix::train::dist::DistBackend>,
    /// Seconds a rank waits for the others (rendezvous, each collective) before failing with the
    /// rank to blame.
    #[arg(long, value_name = "SECONDS", default_value_t = tagfix::train::dist::DEFAULT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub dist_timeout: u64,
    /// Size of a gradient bucket, one all-reduce each, in MiB (DDP's bucket_cap_mb). Smaller
    /// buckets start sooner during the backward pass; larger ones make fewer calls.
    #[arg(long, value_name = "MIB", default_value_t = tagfix::train::dist::DEFAULT_BUCKET_BYTES as u64 >> 20, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub bucket_cap_mb: u64,
}

const TEACHER_HELP: &str = "\
Examples:
  tagfix teacher --data train.json --images imgs/ --image-model clip-vision --text-model clip --out teacher.safetensors
  tagfix teacher --data part1.json.gz part2.jsonl --images imgs/ --image-model models/clip-vision \\
      --text-model models/clip --caption mean --device cuda --out teacher.safetensors
  # one shard per Slurm array task (0..63), then `tagfix train --teacher teacher/`:
  tagfix teacher --data train.json --images imgs/ --image-model clip-vision --text-model clip \
      --device cuda --shard $SLURM_ARRAY_TASK_ID/64 --out teacher/

Model directories hold model.onnx and descriptor.toml: a text tower as for `tagfix embed`
(scripts/export_clip_text_onnx.py), an image tower with kind = \"clip-image\"
(scripts/export_clip_image_onnx.py). The output is written atomically (docs/formats.md, Teacher features).

Exit status: 0 written; 2 usage or input error (a missing or unreadable image, or under
--unreadable-images skip no readable image at all; a record without a caption, a duplicate
image_path, a model that does not match its descriptor).";

#[derive(Debug, Args)]
pub struct TeacherArgs {
    /// RAM-format annotation files (JSON array or JSON Lines, optionally .gz); rows follow their records.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Image root the records' image_path values are relative to.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// CLIP image tower: a directory with descriptor.toml (kind = "clip-image") or a name under models/.
    #[arg(long, value_name = "DIR|NAME")]
    pub image_model: String,
    /// CLIP text tower: a directory with descriptor.toml or a name under models/ (`clip`).
    #[arg(long, value_name = "DIR|NAME")]
    pub text_model: String,
    /// Which caption a record's text row embeds: first, or mean (every caption, normalised, averaged).
    #[arg(long, default_value = "first", value_parser = ["first", "mean"])]
    pub caption: String,
    /// Words kept per caption by RAM's pre_caption (at least 1: 0 would embed every caption as the
    /// same empty text).
    #[arg(long, default_value_t = tagfix::teacher::RAM_CAPTION_WORDS as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_words: u64,
    /// Output teacher file (.safetensors), written atomically; with --shard, the set's folder
    /// (created), which gets teacher-IIIII-of-NNNNN.safetensors.
    #[arg(long, value_name = "FILE|DIR")]
    pub out: PathBuf,
    /// Compute only shard I of N (I from 0): the I-th of N contiguous blocks of the records, so that
    /// N processes or machines share the work. `tagfix train --teacher DIR` reads the complete set.
    /// `auto`: this process's place among torchrun's ranks (RANK of WORLD_SIZE), a Slurm job array's
    /// tasks (counted from SLURM_ARRAY_TASK_MIN) or srun's tasks (SLURM_PROCID of SLURM_NTASKS).
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<tagfix::share::shard::ShardSpec>,
    /// An image that cannot be read: `stop` with an error, or `skip` it (its image row zeros,
    /// flagged in the file's `image_unreadable`, a warning each; `tagfix train` then treats the
    /// record as an unreadable image: refused under `--unreadable-images stop`, replaced in its
    /// micro-batch under `skip`).
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = UnreadableImages::Stop)]
    pub unreadable_images: UnreadableImages,
    #[command(flatten)]
    pub ort: OrtArgs,
}

#[derive(Debug, Args)]
pub struct SynthImagesArgs {
    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    /// Number of images (1 to 1000000: the set's annotations and teacher features are built in
    /// memory).
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    /// Image side in pixels (16 to 4096).
    #[arg(long, default_value_t = defaults::SYNTH_IMAGE_SIZE)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Description rows per tag in the label embedding file (1 to 256; RAM++ has 51).
    #[arg(long, default_value_t = 3)]
    pub descriptions: usize,
    /// Tag the images in this vocabulary (a tag-list file or `ram`) instead of the generator's own
    /// eight tags; it must hold red, green, blue, yellow, purple, circle, square and triangle.
    #[arg(long, value_name = "FILE|ram")]
    pub vocab: Option<String>,
}
