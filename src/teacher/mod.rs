//! Teacher signals for RAM++'s distillation and alignment losses: CLIP image features of each
//! training image and CLIP text embeddings of its caption.
//!
//! - [`file`]: the precomputed teacher file (`tagfix.teacher/1` safetensors keyed by record), read
//!   by `tagfix train --teacher FILE`;
//! - [`descriptor`]: the image-encoder descriptor (`descriptor.toml`, `kind = "clip-image"`);
//! - [`produce`] (feature `embed`): `tagfix teacher`, which writes the file from RAM-format
//!   annotations through `embed`'s text encoder and an ONNX CLIP image tower;
//! - [`online`] (feature `embed`): the online teacher of `tagfix train --teacher online`, computing
//!   the features of every augmented batch in the data-loading workers.

pub mod descriptor;
pub mod file;
#[cfg(feature = "embed")]
pub mod image_encoder;
#[cfg(feature = "embed")]
pub mod online;
#[cfg(feature = "embed")]
pub mod produce;

pub use descriptor::ImageDescriptor;
pub use file::{TeacherFeatures, TEACHER_DIM};

use serde::{Deserialize, Serialize};

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
            cache_text: true,
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
