//! Teacher signals for RAM++'s distillation and alignment losses: CLIP image features of each
//! training image and CLIP text embeddings of its caption.
//!
//! - [`file`]: the precomputed teacher file (`tagfix.teacher/2` safetensors keyed by record), read
//!   by `tagfix train --teacher FILE`, or a set of shard files ([`shard`], `--teacher DIR`);
//! - [`descriptor`]: the image-encoder descriptor (`descriptor.toml`, `kind = "clip-image"`);
//! - [`produce`] (feature `embed`): `tagfix teacher`, which writes the file from RAM-format
//!   annotations through `embed`'s text encoder and an ONNX CLIP image tower;
//! - [`online`] (feature `embed`): the online teacher of `tagfix train --teacher online`, computing
//!   the features of every augmented batch in the data-loading workers.

#[cfg(feature = "embed")]
pub mod caption_cache;
pub mod descriptor;
pub mod file;
#[cfg(feature = "embed")]
pub mod image_encoder;
pub mod keys;
#[cfg(feature = "embed")]
pub mod online;
#[cfg(feature = "embed")]
pub mod produce;
pub mod shard;

pub use descriptor::ImageDescriptor;
pub use file::{TeacherFeatures, TEACHER_DIM};

use crate::error::ErrorKind;
use descriptor::{IMAGE_KIND, MAX_INPUT_SIZE};
use file::TEACHER_SCHEMA;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Why teacher features cannot be produced or read.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("{path}: image root is not a folder")]
    ImageRoot { path: PathBuf },

    #[error(
        "{path}: not a teacher-feature file (tagfix.schema {schema:?}, expected {TEACHER_SCHEMA:?})"
    )]
    NotATeacherFile {
        path: PathBuf,
        schema: Option<String>,
    },

    #[error("{path}: metadata has no tagfix.keys")]
    NoKeys { path: PathBuf },

    /// The keys (the `keys` tensor, or `tagfix.keys` of a `tagfix.teacher/1` file) do not parse.
    #[error("{path}: {what} is not a JSON list of strings")]
    Keys {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: the `keys` tensor is {dtype} {shape:?}; it must be u8 [bytes] (a JSON list in UTF-8)")]
    KeysTensor {
        path: PathBuf,
        dtype: String,
        shape: Vec<usize>,
    },

    #[error("{path}: `{name}` is {dtype}; teacher features are f32, f16 or bf16")]
    FeatureDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    /// A row read after opening failed: the file changed underneath (or a read error).
    #[error("{path}: `{name}` row {row} cannot be read (the file changed since it was opened?)")]
    Row {
        path: PathBuf,
        name: &'static str,
        row: usize,
    },

    /// `tagfix teacher` computed a different number of rows than it has records (a bug).
    #[error("{name}: {got} rows computed for {expected} records")]
    RowCount {
        name: &'static str,
        got: usize,
        expected: usize,
    },

    /// `tagfix teacher` pushed an unreadable image's row into a sink that cannot flag it (a bug).
    #[error(
        "image row {row}: an unreadable image's row in a file written without `image_unreadable`"
    )]
    UnflaggedRow { row: usize },

    #[error("{path}: `image_unreadable` is {dtype} {shape:?}; it must be u8 [{keys}] (one flag per key)")]
    UnreadableTensor {
        path: PathBuf,
        dtype: String,
        shape: Vec<usize>,
        keys: usize,
    },

    #[error(
        "{path}: `image_unreadable` row {row} is {flag}; a flag is 0 (read) or 1 (unreadable)"
    )]
    UnreadableFlag { path: PathBuf, row: usize, flag: u8 },

    /// `tagfix teacher --unreadable-images skip` could read none of the images it was given.
    #[error(
        "none of the {images} images could be read (first: {first}); is --images the right folder?"
    )]
    NoReadableImage { images: usize, first: String },

    #[error("{path}: has no tensor `{name}`")]
    NoTensor { path: PathBuf, name: String },

    #[error(
        "{path}: `{name}` has shape {shape:?}, expected [{keys}, {TEACHER_DIM}] (one row per key)"
    )]
    TensorShape {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
        keys: usize,
    },

    #[error("{path}: `{name}` row {row} ({key}) is not finite")]
    NotFinite {
        path: PathBuf,
        name: String,
        row: usize,
        key: String,
    },

    #[error("{path}: key `{key}` appears twice")]
    KeyTwice { path: PathBuf, key: String },

    #[error("{path}: more than 4294967295 keys (rows are numbered with 32 bits)")]
    TooManyKeys { path: PathBuf },

    /// A teacher set (`--teacher DIR`) whose shards do not form one set.
    #[error("teacher set {dir}: {problem}")]
    Set { dir: PathBuf, problem: String },

    #[error("teacher set: key `{key}` is in {first} and in {second}")]
    KeyInTwoShards {
        key: String,
        first: PathBuf,
        second: PathBuf,
    },

    #[error(
        "image_path `{image}` appears twice ({first} and {second}): the teacher file is keyed by image_path"
    )]
    ImageTwice {
        image: String,
        first: String,
        second: String,
    },

    #[error(
        "{path}: is not an image-encoder descriptor (kind = {kind:?}, expected \"{IMAGE_KIND}\"); \
         text towers are for `--text-model`, image towers for `--image-model`"
    )]
    NotImageDescriptor { path: PathBuf, kind: Option<String> },

    #[error("{path}: input.size = {size} is not between 8 and {MAX_INPUT_SIZE} pixels")]
    InputSize { path: PathBuf, size: u32 },

    #[error("{path}: input.std must be positive, got {std}")]
    InputStd { path: PathBuf, std: f32 },

    #[error("{path}: the image encoder gives {dim}-d features; teacher features are {TEACHER_DIM}-d (CLIP ViT-B)")]
    ImageWidth { path: PathBuf, dim: usize },

    #[error("{path}: the text encoder gives {dim}-d vectors; teacher features are {TEACHER_DIM}-d (CLIP ViT-B)")]
    TextWidth { path: PathBuf, dim: usize },

    #[error(
        "{path}: the text encoder gives {dim}-d vectors; the alignment queries are {TEACHER_DIM}-d"
    )]
    QueryWidth { path: PathBuf, dim: usize },

    #[error("the text encoder gave {0}-d vectors; the alignment queries are {TEACHER_DIM}-d")]
    QueryWidthAtRun(usize),

    #[error(
        "{path}: output `{output}` has shape {dims:?} for {rows} images, expected [{rows}, {dim}]"
    )]
    OutputShape {
        path: PathBuf,
        output: String,
        dims: Vec<usize>,
        rows: usize,
        dim: usize,
    },

    #[error(
        "caption `random` is drawn per training sample (online teacher only); a file takes `first` or `mean`"
    )]
    RandomCaptionInFile,

    #[error(
        "online_teacher.caption: `mean` is for teacher files; online takes `random` (RAM) or `first`"
    )]
    MeanCaptionOnline,

    #[error("online_teacher.device: {0}")]
    Device(String),

    /// An image of a record could not be read (`origin`: file and record).
    #[error("{origin}")]
    Image {
        origin: String,
        #[source]
        source: Box<crate::Error>,
    },

    #[error("the image encoder returned a non-finite feature for {image} ({origin})")]
    NonFiniteFeature { image: String, origin: String },
}

impl TeacherError {
    /// Settings are usage errors; an image that cannot be read is the image's error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TeacherError::RandomCaptionInFile
            | TeacherError::MeanCaptionOnline
            | TeacherError::Device(_)
            | TeacherError::ImageRoot { .. } => ErrorKind::Usage,
            TeacherError::Image { source, .. } => source.kind(),
            _ => ErrorKind::Input,
        }
    }
}

/// Which caption of a record the text teacher embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptionChoice {
    /// `caption[0]`.
    #[default]
    First,
    /// Every caption, each L2-normalised, averaged and renormalised (files only).
    Mean,
    /// A caption drawn per sample, as RAM's dataset does (`np.random.randint(len(caption))`; online
    /// only: the draw is seeded by (seed, epoch, position) like the augmentation).
    Random,
}

impl std::str::FromStr for CaptionChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "first" => Ok(CaptionChoice::First),
            "mean" => Ok(CaptionChoice::Mean),
            "random" => Ok(CaptionChoice::Random),
            other => Err(format!(
                "unknown caption choice `{other}` (first, mean or random)"
            )),
        }
    }
}

impl std::fmt::Display for CaptionChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaptionChoice::First => "first",
            CaptionChoice::Mean => "mean",
            CaptionChoice::Random => "random",
        })
    }
}

/// RAM's caption cleaning before the CLIP text encoder (`pre_caption` in RAM's `data/utils.py`, from
/// BLIP): lower case, `.!"()*#:;~` become spaces, runs of whitespace one space, trimmed, at most
/// `max_words` words (RAM's pre-training uses 30).
pub fn pre_caption(caption: &str, max_words: usize) -> String {
    let lowered: String = caption
        .to_lowercase()
        .chars()
        .map(|c| {
            if matches!(c, '.' | '!' | '"' | '(' | ')' | '*' | '#' | ':' | ';' | '~') {
                ' '
            } else {
                c
            }
        })
        .collect();
    // `re.sub(r"\s{2,}", ' ')`, then strip('\n') and strip(' '), then split(' ').
    let mut collapsed = String::with_capacity(lowered.len());
    let mut run: Vec<char> = Vec::new();
    let flush = |run: &mut Vec<char>, out: &mut String| {
        if run.len() >= 2 {
            out.push(' ');
        } else {
            out.extend(run.iter());
        }
        run.clear();
    };
    for c in lowered.chars() {
        if c.is_whitespace() {
            run.push(c);
        } else {
            flush(&mut run, &mut collapsed);
            collapsed.push(c);
        }
    }
    flush(&mut run, &mut collapsed);
    let trimmed = collapsed.trim_end_matches('\n').trim_matches(' ');
    let words: Vec<&str> = trimmed.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        trimmed.to_string()
    }
}

/// RAM's `max_words` for pre-training captions.
pub const RAM_CAPTION_WORDS: usize = 30;

/// `[online_teacher]` in the training configuration: the encoders of `--teacher online`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineTeacherConfig {
    /// Image-encoder directory or name (`descriptor.toml` with `kind = "clip-image"`).
    pub image_model: String,
    /// Text-encoder directory or name (`clip`, a directory with `descriptor.toml`).
    pub text_model: String,
    /// Where ONNX Runtime runs the towers: `cpu`, `cuda` or `cuda:N` (CUDA needs the onnxruntime-gpu
    /// library; it fails rather than fall back to the CPU).
    #[serde(default = "cpu")]
    pub device: String,
    /// ONNX Runtime intra-op threads per encoder (0: all cores).
    #[serde(default = "one")]
    pub threads: usize,
    /// Images per ONNX Runtime call.
    #[serde(default = "batch")]
    pub batch_size: usize,
    /// Which caption each sample's text feature embeds (`random`, as RAM, or `first`).
    #[serde(default = "random")]
    pub caption: CaptionChoice,
    /// Keep each caption's embedding after its first use (captions do not change between epochs).
    #[serde(default = "yes")]
    pub cache_text: bool,
    /// The most memory kept caption embeddings take in each rank, MiB (2 KB a caption): the first
    /// captions embedded stay, the others are embedded whenever drawn.
    #[serde(default = "cache_mib")]
    pub cache_text_mib: u64,
}

fn cpu() -> String {
    "cpu".into()
}
fn one() -> usize {
    1
}
fn batch() -> usize {
    64
}
fn random() -> CaptionChoice {
    CaptionChoice::Random
}
fn yes() -> bool {
    true
}
/// 4 GiB: two million captions a rank.
fn cache_mib() -> u64 {
    4096
}

impl OnlineTeacherConfig {
    /// With the defaults for everything but the two encoders.
    pub fn new(image_model: String, text_model: String) -> Self {
        OnlineTeacherConfig {
            image_model,
            text_model,
            device: cpu(),
            threads: one(),
            batch_size: batch(),
            caption: random(),
            cache_text: yes(),
            cache_text_mib: cache_mib(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_caption_follows_ram() {
        assert_eq!(
            pre_caption("  A Dog (brown)  runs!\nFast. ", 30),
            "a dog brown runs fast"
        );
        assert_eq!(pre_caption("one two three", 2), "one two");
        // A single inner space is kept; a tab alone is not collapsed (re `\s{2,}` needs two).
        assert_eq!(pre_caption("a\tb", 30), "a\tb");
    }
}
