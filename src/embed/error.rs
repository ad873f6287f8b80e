//! What can go wrong while embedding: flags, recipes, model files, ONNX Runtime, base files.

use crate::error::ErrorKind;
use crate::vocab::Slot;
use std::path::PathBuf;

/// Why `embed` (or a command using its encoders) cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    // --- flags ---
    #[error("--control {wanted}: only {available} slots have an original row to compare with")]
    TooManyControls { wanted: usize, available: usize },

    #[error("unknown recipe `{0}`: use single, ram-ensemble or templates:FILE")]
    UnknownRecipe(String),

    #[error("with --base, choose the slots to regenerate: --manifest FILE [--absent], --slots LIST or --all")]
    NoSelection,

    #[error(
        "without --base every slot is computed (a full file), but {selected} of {slots} slots were selected: give --base FILE to patch only those, or --all"
    )]
    PartialWithoutBase { selected: usize, slots: usize },

    #[error("without --base every slot is computed (a full file); choose --all or give --base")]
    FullFileNeedsAll,

    #[error(
        "--control compares re-embedded present slots with their original rows: give --base FILE"
    )]
    ControlNeedsBase,

    #[error(
        "{path}: --control stores its rows in a `control` tensor, which only a .safetensors output can hold"
    )]
    ControlNeedsSafetensors { path: PathBuf },

    // --- recipes ---
    #[error("{path}: item {index} is not an object {{tag: [descriptions]}}")]
    DescriptionItem { path: PathBuf, index: usize },

    #[error("{path}: expected a JSON array of {{tag: [descriptions]}} objects or one such object")]
    DescriptionShape { path: PathBuf },

    #[error("{path}: descriptions of `{tag}` are not a list of strings")]
    DescriptionsNotStrings { path: PathBuf, tag: String },

    #[error(
        "{path}: `{tag}` has {count} descriptions but earlier tags have {expected}: the RAM++ layout needs the same number for every tag"
    )]
    UnevenDescriptions {
        path: PathBuf,
        tag: String,
        count: usize,
        expected: usize,
    },

    #[error("{path}: `{tag}` has no descriptions")]
    NoDescriptions { path: PathBuf, tag: String },

    #[error("{path}: `{tag}` is listed twice")]
    TagTwice { path: PathBuf, tag: String },

    /// A recipe file with nothing in it (`what`: tags, templates).
    #[error("{path}: holds no {what}")]
    EmptyRecipe { path: PathBuf, what: &'static str },

    #[error("{path}:{line}: template {template:?} has no `{{}}` for the tag name")]
    TemplateWithoutSlot {
        path: PathBuf,
        line: usize,
        template: String,
    },

    #[error("{path}: has no descriptions for slot {slot} `{tag}`")]
    MissingDescriptions {
        path: PathBuf,
        slot: Slot,
        tag: String,
    },

    // --- models and tokenizers ---
    /// The cause is quoted mid-sentence, so it is a plain field rather than the source.
    #[error("{path}: cannot open the CLIP BPE vocabulary ({cause}); scripts/setup.sh installs it to models/clip-bpe/")]
    BpeMissing {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path}: not a gzip'd UTF-8 BPE merges file")]
    BpeNotGzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: decompresses to more than {limit} bytes, far more than a BPE merges file")]
    BpeTooLarge { path: PathBuf, limit: u64 },

    #[error("{path}: holds {found} merges, CLIP needs {expected}")]
    BpeMergeCount {
        path: PathBuf,
        found: usize,
        expected: usize,
    },

    #[error("{path}:{line}: expected two symbols, found {text:?}")]
    BpeLine {
        path: PathBuf,
        line: usize,
        text: String,
    },

    #[cfg(feature = "embed")]
    #[error("{path}: {action}")]
    Tokenizer {
        path: PathBuf,
        action: String,
        #[source]
        source: tokenizers::Error,
    },

    #[error(
        "{path}: max_length = {max_length} is not between 2 and {} tokens",
        crate::embed::descriptor::MAX_SEQUENCE
    )]
    MaxLength { path: PathBuf, max_length: usize },

    /// The descriptor file cannot be read (`what`: which descriptor, `holds`: what its folder
    /// should hold).
    #[error("{path}: cannot read the {what} ({cause}); {holds}")]
    DescriptorUnreadable {
        path: PathBuf,
        what: String,
        holds: String,
        cause: std::io::Error,
    },

    #[error("{path}: malformed {what}")]
    DescriptorSyntax {
        path: PathBuf,
        what: String,
        #[source]
        source: Box<toml::de::Error>,
    },

    #[error(
        "{path}: model not found (looked for a directory with {descriptor}{searched}): {hint}"
    )]
    ModelNotFound {
        path: PathBuf,
        descriptor: &'static str,
        /// ` in DIR, DIR` when a name was looked up, else empty.
        searched: String,
        hint: &'static str,
    },

    #[error("{path}: ONNX model file not found (named by the {by})")]
    ModelFileMissing { path: PathBuf, by: &'static str },

    /// The descriptor and the ONNX model disagree (inputs, outputs, widths).
    #[error("{descriptor}: does not match {model}: {problem}")]
    DescriptorMismatch {
        descriptor: PathBuf,
        model: PathBuf,
        problem: String,
    },

    #[error("{path}: output `{output}` of shape {dims:?}: {problem}")]
    OutputShape {
        path: PathBuf,
        output: String,
        dims: Vec<usize>,
        problem: String,
    },

    // --- ONNX Runtime ---
    /// ONNX Runtime ended the helper process that opened the model ([`crate::embed::isolate`]).
    #[error(
        "{path}: ONNX Runtime crashed opening this model (its helper process ended by {signal}{}); \
         the file is damaged or not a graph this ONNX Runtime can run: replace it with a whole copy",
        if .said.is_empty() { String::new() } else { format!(": {}", .said) }
    )]
    RuntimeCrashed {
        path: PathBuf,
        signal: String,
        /// The last line it wrote to its standard error.
        said: String,
    },

    /// ONNX Runtime refused the model in the helper process (`tagfix doctor`).
    #[error("{path}: ONNX Runtime cannot open this model ({said})")]
    RuntimeRefused { path: PathBuf, said: String },

    /// The helper process was sent a request it cannot read.
    #[error("{command}: cannot read the request on standard input")]
    HelperRequest {
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "ONNX Runtime library not found at {lib}: run scripts/setup.sh (it installs the onnxruntime 1.31.1 \
         wheel's library to .deps/libonnxruntime.so), or point --ort-lib / ${env} at libonnxruntime.so"
    )]
    RuntimeNotFound { lib: PathBuf, env: &'static str },

    #[cfg(feature = "embed")]
    #[error("cannot load ONNX Runtime from {lib}")]
    RuntimeLoad {
        lib: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },

    /// ONNX Runtime failed at `stage` (setting up, or running the model at `path`).
    #[cfg(feature = "embed")]
    #[error("{}{stage}", .path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Runtime {
        path: Option<PathBuf>,
        stage: String,
        #[source]
        source: ort::Error,
    },

    #[error(
        "--device cuda:{device}: this ONNX Runtime library ({lib}) has no CUDA execution provider \
         (CUDAExecutionProvider; it is a CPU build): install onnxruntime-gpu 1.31.1 with \
         scripts/setup-gpu.sh (into .deps/ort-gpu/) or point --ort-lib / ORT_DYLIB_PATH at its \
         libonnxruntime.so; tagfix does not fall back to the CPU, use --device cpu"
    )]
    NoCudaProvider { device: i32, lib: PathBuf },

    #[error(
        "--device cuda:{device}: the CUDA execution provider of {lib} cannot be loaded, missing: {}; \
         scripts/setup-gpu.sh installs the provider and links torch's CUDA 13 libraries beside it \
         (libcuda.so.1 comes with the NVIDIA driver); tagfix does not fall back to the CPU",
        .missing.join("; ")
    )]
    CudaLibraries {
        device: i32,
        lib: PathBuf,
        missing: Vec<String>,
    },

    #[cfg(feature = "embed")]
    #[error(
        "--device cuda:{device}: the CUDA execution provider could not be registered ({cause}); \
         tagfix does not fall back to the CPU, use --device cpu"
    )]
    CudaProvider { device: i32, cause: ort::Error },

    // --- base files ---
    #[error(
        "{path}: base embeddings are f64; tagfix patches f32, f16 and bf16 files (convert the base to f32 first)"
    )]
    F64Base { path: PathBuf },

    #[error("{path}: was made for another vocabulary (sha256 {file_sha}), not {vocab} (sha256 {vocab_sha})")]
    OtherVocabulary {
        path: PathBuf,
        file_sha: String,
        vocab: PathBuf,
        vocab_sha: String,
    },

    #[error(
        "{path}: is in the {layout} [{rows}, {dim}] but the recipe produces {want}: mixing averaged and per-description rows breaks RAM++"
    )]
    LayoutMismatch {
        path: PathBuf,
        layout: String,
        rows: usize,
        dim: usize,
        want: String,
    },

    #[error(
        "{path}: rows are {file_dim}-dimensional but the model {model} gives {model_dim}-dimensional embeddings: wrong model for this file?"
    )]
    DimMismatch {
        path: PathBuf,
        file_dim: usize,
        model: String,
        model_dim: usize,
    },

    #[error("without a base file every slot must be computed, but slot {0} was not")]
    SlotNotComputed(Slot),
}

impl EmbedError {
    /// Flags are usage errors, ONNX Runtime and missing models the environment's, the rest input
    /// errors.
    pub fn kind(&self) -> ErrorKind {
        use EmbedError::*;
        match self {
            TooManyControls { .. }
            | UnknownRecipe(_)
            | NoSelection
            | PartialWithoutBase { .. }
            | FullFileNeedsAll
            | ControlNeedsBase
            | ControlNeedsSafetensors { .. } => ErrorKind::Usage,
            RuntimeNotFound { .. }
            | NoCudaProvider { .. }
            | CudaLibraries { .. }
            | BpeMissing { .. } => ErrorKind::Environment,
            HelperRequest { .. } => ErrorKind::Usage,
            #[cfg(feature = "embed")]
            RuntimeLoad { .. } | Runtime { .. } | CudaProvider { .. } => ErrorKind::Environment,
            _ => ErrorKind::Input,
        }
    }
}
