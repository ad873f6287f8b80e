//! The model descriptor: a small TOML file beside the ONNX model naming its file, tokenizer, input and
//! output names, pooling and sequence handling, so nothing about a model is hard-coded.
//!
//! ```toml
//! onnx = "model.onnx"
//! max_length = 128          # tokens, special tokens included (CLIP: 77)
//! dynamic_sequence = true   # the model accepts any sequence length <= max_length
//! [tokenizer]
//! kind = "huggingface"      # or "clip-bpe"
//! file = "tokenizer.json"
//! [inputs]
//! input_ids = "input_ids"
//! attention_mask = "attention_mask"   # optional
//! token_type_ids = "token_type_ids"   # optional
//! [output]
//! name = "last_hidden_state"
//! pooling = "mean"          # pooled | mean | cls
//! normalize = true
//! ```

use super::EmbedError;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the descriptor inside a model directory.
pub const DESCRIPTOR_FILE: &str = "descriptor.toml";
/// Environment variable naming the folder that holds named models (`minilm`, `clip`).
pub const MODELS_ENV: &str = "TAGFIX_MODELS";
/// The longest `max_length` a descriptor may name: far above any text encoder tags are embedded with
/// (CLIP 77, BERT 512), and a bound on what padding to it can allocate.
pub const MAX_SEQUENCE: usize = 65_536;

/// Which tokenizer implementation reads the tokenizer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// A Hugging Face `tokenizer.json` (feature `embed`).
    Huggingface,
    /// CLIP's `bpe_simple_vocab_16e6.txt.gz`.
    ClipBpe,
}

/// How a model's output becomes one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The output is already `[batch, dim]` (e.g. CLIP's `text_embeds`).
    Pooled,
    /// Mean of `[batch, seq, dim]` over the attention mask.
    Mean,
    /// Position 0 of `[batch, seq, dim]`.
    Cls,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    pub kind: TokenizerKind,
    /// Relative to the model directory.
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputNames {
    pub input_ids: String,
    pub attention_mask: Option<String>,
    pub token_type_ids: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub pooling: Pooling,
    #[serde(default = "yes")]
    pub normalize: bool,
}

fn yes() -> bool {
    true
}

/// A model descriptor (`descriptor.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDescriptor {
    /// Human name for logs and provenance.
    #[serde(default)]
    pub name: Option<String>,
    /// The ONNX file, relative to the model directory.
    pub onnx: PathBuf,
    pub max_length: usize,
    #[serde(default)]
    pub dynamic_sequence: bool,
    pub tokenizer: TokenizerSpec,
    pub inputs: InputNames,
    pub output: OutputSpec,
    /// The model directory (set when read).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl ModelDescriptor {
    /// Reads `dir/descriptor.toml`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let (path, text) = read_descriptor_text(
            dir,
            "model descriptor",
            &format!("a model directory holds the ONNX file, its tokenizer and {DESCRIPTOR_FILE}"),
        )?;
        let mut d: ModelDescriptor = parse_descriptor(&path, &text, "model descriptor")?;
        if !(2..=MAX_SEQUENCE).contains(&d.max_length) {
            let max_length = d.max_length;
            return Err(EmbedError::MaxLength { path, max_length }.into());
        }
        d.dir = dir.to_path_buf();
        Ok(d)
    }

    /// Path of the ONNX file.
    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(&self.onnx)
    }

    /// Path of the tokenizer file.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(&self.tokenizer.file)
    }

    /// Name for logs and provenance: the `name` field, else the directory.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// Pooling and normalisation, for provenance.
    pub fn pooling_description(&self) -> String {
        let pool = match self.output.pooling {
            Pooling::Pooled => "pooled output",
            Pooling::Mean => "mean over attention mask",
            Pooling::Cls => "first token (CLS)",
        };
        if self.output.normalize {
            format!("{pool}, L2-normalised")
        } else {
            pool.to_string()
        }
    }
}

/// Reads `dir/descriptor.toml`; an unreadable file is an error naming it and what the directory
/// should hold (`holds`).
pub(crate) fn read_descriptor_text(
    dir: &Path,
    what: &str,
    holds: &str,
) -> Result<(PathBuf, String)> {
    let path = dir.join(DESCRIPTOR_FILE);
    match crate::fsutil::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(cause) => Err(EmbedError::DescriptorUnreadable {
            path,
            what: what.into(),
            holds: holds.into(),
            cause,
        }
        .into()),
    }
}

/// Parses a descriptor's TOML (unknown keys refused by the type), naming the file on error.
pub(crate) fn parse_descriptor<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    what: &str,
) -> Result<T> {
    toml::from_str(text).map_err(|source| {
        EmbedError::DescriptorSyntax {
            path: path.into(),
            what: what.into(),
            source: Box::new(source),
        }
        .into()
    })
}

/// Folders searched for a named model: `$TAGFIX_MODELS`, `./models`, the checkout's `models/`.
pub fn model_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = std::env::var_os(MODELS_ENV) {
        dirs.push(PathBuf::from(p));
    }
    dirs.push(PathBuf::from("models"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    dirs
}

/// How to get the model `spec` names (a known name), or what a model directory holds.
pub fn install_hint(spec: &str) -> &'static str {
    match spec {
        "minilm" => "run scripts/setup.sh, which installs it to models/minilm/",
        "clip" => "export a CLIP text tower with scripts/export_clip_text_onnx.py into models/clip/ \
                   (needs open_clip weights and a full PyTorch); scripts/setup.sh generates only the \
                   random-weight test fixture models/clip-tiny/",
        "clip-vision" => "export a CLIP image tower with scripts/export_clip_image_onnx.py into models/clip-vision/ \
                   (needs open_clip weights and a full PyTorch); scripts/setup.sh generates only the \
                   random-weight test fixture models/clip-tiny-vision/",
        _ => "give a directory holding the ONNX model, its tokenizer and descriptor.toml",
    }
}

/// Resolves `--model`: an existing directory, or a name (`minilm`, `clip`, ...) looked up in
/// [`model_search_dirs`].
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let is_name = !spec.is_empty() && !spec.contains(['/', '\\']);
    if is_name {
        if let Some(dir) = model_search_dirs()
            .into_iter()
            .map(|d| d.join(spec))
            .find(|d| d.join(DESCRIPTOR_FILE).is_file())
        {
            return Ok(dir);
        }
    }
    let hint = install_hint(spec);
    let searched: Vec<String> = model_search_dirs()
        .iter()
        .map(|d| d.join(spec).display().to_string())
        .collect();
    Err(EmbedError::ModelNotFound {
        path: as_path.into(),
        descriptor: DESCRIPTOR_FILE,
        searched: if is_name {
            format!(" in {}", searched.join(", "))
        } else {
            String::new()
        },
        hint,
    }
    .into())
}

/// Where to run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// CUDA device index.
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"
name = "all-MiniLM-L6-v2 int8"
onnx = "model.onnx"
max_length = 128
dynamic_sequence = true
[tokenizer]
kind = "huggingface"
file = "tokenizer.json"
[inputs]
input_ids = "input_ids"
attention_mask = "attention_mask"
token_type_ids = "token_type_ids"
[output]
name = "last_hidden_state"
pooling = "mean"
"#;

    #[test]
    fn reads_descriptor_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DESCRIPTOR_FILE), MINILM).unwrap();
        let d = ModelDescriptor::read_dir(dir.path()).unwrap();
        assert_eq!(d.output.pooling, Pooling::Mean);
        assert!(d.output.normalize);
        assert_eq!(d.onnx_path(), dir.path().join("model.onnx"));
        std::fs::write(
            dir.path().join(DESCRIPTOR_FILE),
            format!("{MINILM}\nbogus = 1\n"),
        )
        .unwrap();
        let err = ModelDescriptor::read_dir(dir.path()).unwrap_err();
        assert!(matches!(
            &err,
            crate::Error::Embed(e) if matches!(**e, EmbedError::DescriptorSyntax { .. })
        ));
        // The TOML error naming the key is the source, printed after the message.
        let err = crate::error::report(&err);
        assert!(
            err.contains("malformed model descriptor: ") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn max_lengths_outside_the_bounds_are_refused_with_the_value() {
        let dir = tempfile::tempdir().unwrap();
        for (max_length, ok) in [
            (1u64, false),
            (2, true),
            (65_536, true),
            (65_537, false),
            (1 << 40, false),
        ] {
            let text = MINILM.replace("max_length = 128", &format!("max_length = {max_length}"));
            std::fs::write(dir.path().join(DESCRIPTOR_FILE), text).unwrap();
            match ModelDescriptor::read_dir(dir.path()) {
                Ok(d) => assert!(ok, "{max_length} taken: {}", d.max_length),
                Err(e) => {
                    let e = e.to_string();
                    let want =
                        format!("max_length = {max_length} is not between 2 and 65536 tokens");
                    assert!(!ok && e.contains(&want), "{e}");
                }
            }
        }
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:2".parse::<Device>().unwrap(), Device::Cuda(2));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:-1".parse::<Device>().is_err());
    }

    #[test]
    fn unknown_model_names_the_fix() {
        let err = resolve_model_dir("clip-does-not-exist")
            .unwrap_err()
            .to_string();
        assert!(err.contains("descriptor.toml"), "{err}");
    }
}
