//! Hugging Face `tokenizer.json` through the `tokenizers` crate (feature `embed`).
//!
//! Whatever padding and truncation the file carries (MiniLM's pads every text to 128) is replaced once
//! at load time: padding to the longest text of a call (on the right, with the file's pad token),
//! truncation to the model's maximum length.

use super::tokenize::{TextTokenizer, TokenMatrix};
use super::EmbedError;
use crate::error::Result;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// A `tokenizer.json` tokenizer with batch-longest padding.
pub struct HfTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pad_id: i64,
    pad_type_id: i64,
}

impl HfTokenizer {
    /// Loads `tokenizer.json`, takes its pad token (id 0 and type 0 without one) and sets
    /// truncation to `max_length`.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        let action = "cannot load tokenizer.json";
        let mut inner =
            guarded(path, action, || Tokenizer::from_file(path))?.map_err(|source| {
                EmbedError::Tokenizer {
                    path: path.into(),
                    action: action.into(),
                    source,
                }
            })?;
        let padding = inner.get_padding().cloned().unwrap_or_default();
        // Padded here, to the longest text of each call (`tokenize`).
        inner.with_padding(None);
        // Special tokens the template adds to a text (MiniLM: [CLS] and [SEP]) must leave room for
        // the text itself (`tokenizers` subtracts without checking).
        let added = guarded(path, action, || {
            use tokenizers::PostProcessor;
            inner
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(false))
        })?;
        if added >= max_length {
            return Err(EmbedError::Tokenizer {
                path: path.into(),
                action: format!(
                    "its template adds {added} special tokens to each text, leaving no room \
                     within the model's max_length of {max_length}"
                ),
                source: "no room for the text".into(),
            }
            .into());
        }
        let truncation = TruncationParams {
            max_length,
            ..Default::default()
        };
        guarded(path, action, || {
            inner.with_truncation(Some(truncation)).map(drop)
        })?
        .map_err(|e| EmbedError::Tokenizer {
            path: path.into(),
            action: format!("cannot set truncation to {max_length}"),
            source: e,
        })?;
        Ok(HfTokenizer {
            inner,
            path: path.to_path_buf(),
            pad_id: i64::from(padding.pad_id),
            pad_type_id: i64::from(padding.pad_type_id),
        })
    }
}

/// Runs `f`, a call into the `tokenizers` crate, with its panics made errors: it panics on some
/// malformed files rather than returning an error (a JSON error inside a decoder, a merge of unknown
/// tokens, a template naming a missing token: found by the `tokenizer_json` fuzz target).
fn guarded<T>(path: &Path, action: &str, f: impl FnOnce() -> T) -> Result<T> {
    crate::train::failure::catch(f).map_err(|failure| {
        EmbedError::Tokenizer {
            path: path.into(),
            action: format!("{action} (the tokenizers library failed on it)"),
            source: failure.message.into(),
        }
        .into()
    })
}

impl TextTokenizer for HfTokenizer {
    /// Each text encoded under [`guarded`] on rayon's threads: the crate's own batch encoding would
    /// panic on its threads, outside the guard.
    fn tokenize(&self, texts: &[&str]) -> Result<TokenMatrix> {
        let action = "tokenizing failed";
        let encodings = texts
            .par_iter()
            .map(|&text| {
                guarded(&self.path, action, || self.inner.encode(text, true))?.map_err(|source| {
                    EmbedError::Tokenizer {
                        path: self.path.clone(),
                        action: action.into(),
                        source,
                    }
                    .into()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let width = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0);
        let mut m = TokenMatrix {
            ids: Vec::with_capacity(texts.len() * width),
            type_ids: Vec::with_capacity(texts.len() * width),
            lengths: Vec::with_capacity(texts.len()),
            width,
            pad_id: self.pad_id,
        };
        for e in &encodings {
            let pad = width - e.get_ids().len();
            m.ids.extend(e.get_ids().iter().map(|&t| i64::from(t)));
            m.ids.extend(std::iter::repeat_n(self.pad_id, pad));
            m.type_ids
                .extend(e.get_type_ids().iter().map(|&t| i64::from(t)));
            m.type_ids
                .extend(std::iter::repeat_n(self.pad_type_id, pad));
            m.lengths
                .push(e.get_attention_mask().iter().filter(|&&a| a != 0).count());
        }
        Ok(m)
    }

    fn describe(&self) -> String {
        format!("tokenizer.json {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer whose template names `[CLS]`, which its special tokens may lack.
    fn tokenizer_json(special: &str) -> String {
        format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "decoder": null,
  "post_processor": {{"type": "TemplateProcessing",
    "single": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}},
               {{"Sequence": {{"id": "A", "type_id": 0}}}}],
    "pair": [{{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}}],
    "special_tokens": {{"{special}": {{"id": "{special}", "ids": [2], "tokens": ["{special}"]}}}}}},
  "model": {{"type": "WordLevel", "vocab": {{"[UNK]": 0, "cat": 1, "[CLS]": 2}}, "unk_token": "[UNK]"}}}}"#
        )
    }

    /// Files the `tokenizers` crate panics on (found by fuzzing) are errors that name the file.
    #[test]
    fn files_the_library_panics_on_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, tokenizer_json("[CLS]")).unwrap();
        let t = HfTokenizer::from_file(&path, 8).unwrap();
        assert_eq!(t.tokenize(&["cat"]).unwrap().ids, [2, 1]);
        // The template's token missing from its special tokens: a panic inside encoding.
        std::fs::write(&path, tokenizer_json("[CLs]")).unwrap();
        let t = HfTokenizer::from_file(&path, 8).unwrap();
        let err = crate::error::report(&t.tokenize(&["cat"]).unwrap_err());
        assert!(
            err.contains("tokenizing failed (the tokenizers library failed on it)"),
            "{err}"
        );
        assert!(err.contains("tokenizer.json"), "{err}");
        // A JSON error inside the decoder's part: a panic inside loading.
        let broken = tokenizer_json("[CLS]").replace(r#""decoder": null"#, r#""decoder": oull"#);
        std::fs::write(&path, broken).unwrap();
        let err = crate::error::report(&HfTokenizer::from_file(&path, 8).err().unwrap());
        assert!(
            err.contains("cannot load tokenizer.json (the tokenizers library failed on it)"),
            "{err}"
        );
        // A template adding as many tokens as the model takes (`tokenizers` would underflow).
        std::fs::write(&path, tokenizer_json("[CLS]")).unwrap();
        HfTokenizer::from_file(&path, 2).unwrap();
        let err = crate::error::report(&HfTokenizer::from_file(&path, 1).err().unwrap());
        assert!(err.contains("adds 1 special tokens"), "{err}");
    }
}
