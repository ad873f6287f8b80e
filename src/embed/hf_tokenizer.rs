//! Hugging Face `tokenizer.json` through the `tokenizers` crate (feature `embed`).
//!
//! Whatever padding and truncation the file carries (MiniLM's pads every text to 128) is replaced once
//! at load time: padding to the longest text of a call, truncation to the model's maximum length.

use super::tokenize::{TextTokenizer, TokenMatrix};
use super::EmbedError;
use crate::error::Result;
use std::path::{Path, PathBuf};
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// A `tokenizer.json` tokenizer with batch-longest padding.
pub struct HfTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pad_id: i64,
}

impl HfTokenizer {
    /// Loads `tokenizer.json`, sets batch-longest right padding (keeping the file's pad token) and
    /// truncation to `max_length`.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|source| EmbedError::Tokenizer {
            path: path.into(),
            action: "cannot load tokenizer.json".into(),
            source,
        })?;
        let file_padding = inner.get_padding().cloned().unwrap_or_default();
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            ..file_padding
        };
        let pad_id = i64::from(padding.pad_id);
        inner.with_padding(Some(padding));
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Tokenizer {
                path: path.into(),
                action: format!("cannot set truncation to {max_length}"),
                source: e,
            })?;
        Ok(HfTokenizer {
            inner,
            path: path.to_path_buf(),
            pad_id,
        })
    }
}

impl TextTokenizer for HfTokenizer {
    fn tokenize(&self, texts: &[&str]) -> Result<TokenMatrix> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|source| EmbedError::Tokenizer {
                path: self.path.clone(),
                action: "tokenizing failed".into(),
                source,
            })?;
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut m = TokenMatrix {
            ids: Vec::with_capacity(texts.len() * width),
            type_ids: Vec::with_capacity(texts.len() * width),
            lengths: Vec::with_capacity(texts.len()),
            width,
            pad_id: self.pad_id,
        };
        for e in &encodings {
            debug_assert_eq!(e.get_ids().len(), width);
            m.ids.extend(e.get_ids().iter().map(|&t| i64::from(t)));
            m.type_ids
                .extend(e.get_type_ids().iter().map(|&t| i64::from(t)));
            m.lengths
                .push(e.get_attention_mask().iter().filter(|&&a| a != 0).count());
        }
        Ok(m)
    }

    fn describe(&self) -> String {
        format!("tokenizer.json {}", self.path.display())
    }
}
