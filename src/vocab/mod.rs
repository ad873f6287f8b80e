//! Vocabularies: a tag list where line i is slot i, named presets (`ram`), and name normalisation.
//!
//! Slot numbers are the identity of a tag everywhere in tagfix: embeddings, thresholds, sidecars and
//! checkpoints are all indexed by slot, so a vocabulary is never re-sorted or compacted.

mod derived;
mod normalize;
mod preset;
mod sidecar;
pub mod slot_list;

pub use derived::{map_derived, DerivedReport, DerivedRow, IndexShift, MatchRule};
pub use normalize::normalize_tag;
pub use preset::{Preset, PresetSidecar, PresetStatus, ResolvedPreset};
pub use sidecar::{check_sidecar, Severity, SidecarIssue, SidecarKind, SidecarReport};
pub use slot_list::SlotListError;

use crate::error::{Error, Result};
use crate::fsutil::sha256_hex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a vocabulary, or a file made for one, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error(
        "{path}: vocabulary file not found (give a tag-list file, one tag a line, or a preset: {presets})"
    )]
    NotFound { path: PathBuf, presets: String },

    #[error("{path}: vocabulary file is empty")]
    Empty { path: PathBuf },

    #[error("{path}: the derived tag list is empty")]
    DerivedEmpty { path: PathBuf },

    #[error("{path}:{line}: empty tag at slot {slot}")]
    EmptyTag {
        path: PathBuf,
        line: usize,
        slot: usize,
    },

    #[error("{path}:{line}: invalid UTF-8")]
    InvalidUtf8 {
        path: PathBuf,
        line: usize,
        #[source]
        source: std::string::FromUtf8Error,
    },

    /// A file produced for another vocabulary (hashes shortened to 12 hex digits).
    #[error(
        "{path}: was made for a different vocabulary ({file_tags} tags, sha256 {file_sha}…) than {vocab} \
         ({vocab_tags} tags, sha256 {vocab_sha}…); regenerate it with this vocabulary"
    )]
    OtherVocabulary {
        path: PathBuf,
        file_tags: usize,
        file_sha: String,
        vocab: PathBuf,
        vocab_tags: usize,
        vocab_sha: String,
    },

    #[error(
        "vocabulary preset `{name}`: {file} not found (searched: {searched}); set {env_var} to the directory \
         holding it, point {shared_env} at the shared material folder (its ram/data/; default ../shared), or \
         pass the file with --vocab FILE"
    )]
    PresetNotFound {
        name: String,
        file: String,
        searched: String,
        env_var: String,
        shared_env: &'static str,
    },
}

/// A slot number: the 0-based line index of a tag in the vocabulary file.
pub type Slot = usize;

/// A loaded vocabulary.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// Tags in slot order.
    pub tags: Vec<String>,
    /// Where it was read from.
    pub path: PathBuf,
    /// sha256 of the file's bytes: the identity downstream files are checked against.
    pub sha256: String,
    /// The preset it was resolved from, with its verification status.
    pub preset: Option<ResolvedPreset>,
}

/// How a vocabulary is identified inside other files (slot manifest, embedding metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabularyId {
    /// Preset name (`ram`) when the vocabulary was given as a preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The file it was read from.
    pub path: String,
    /// sha256 of the tag-list file.
    pub sha256: String,
    /// Number of slots.
    pub tag_count: usize,
}

impl Vocabulary {
    /// Loads a vocabulary from `spec`: either a preset name (`ram`) or a path to a tag-list file.
    pub fn load(spec: &str) -> Result<Self> {
        if let Some(preset) = Preset::builtin(spec) {
            let resolved = preset.resolve()?;
            let mut vocab = Self::from_file(&resolved.path)?;
            vocab.preset = Some(resolved);
            return Ok(vocab);
        }
        let path = Path::new(spec);
        if !path.exists() {
            return Err(VocabError::NotFound {
                path: path.into(),
                presets: Preset::names().join(", "),
            }
            .into());
        }
        Self::from_file(path)
    }

    /// Reads a tag-list file. Accepts a UTF-8 BOM, CRLF line ends and a missing or present final
    /// newline; refuses empty files, empty lines and invalid UTF-8 with the offending line named.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::fsutil::read(path).map_err(|e| Error::io(path, e))?;
        let tags = parse_lines(path, &bytes)?;
        if tags.is_empty() {
            return Err(VocabError::Empty { path: path.into() }.into());
        }
        for (i, t) in tags.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(VocabError::EmptyTag {
                    path: path.to_path_buf(),
                    line: i + 1,
                    slot: i,
                }
                .into());
            }
        }
        Ok(Vocabulary {
            tags,
            path: path.to_path_buf(),
            sha256: sha256_hex(&bytes),
            preset: None,
        })
    }

    /// Builds an in-memory vocabulary (tests, synthetic data). The hash covers the tags joined by `\n`.
    pub fn from_tags(tags: Vec<String>) -> Self {
        let sha256 = sha256_hex(tags.join("\n").as_bytes());
        Vocabulary {
            tags,
            path: PathBuf::from("<memory>"),
            sha256,
            preset: None,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// True when the vocabulary has no slots (never the case for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The tag at `slot`.
    pub fn tag(&self, slot: Slot) -> Option<&str> {
        self.tags.get(slot).map(String::as_str)
    }

    /// Groups of slots whose tags are equal after [`normalize_tag`] (each group ascending).
    pub fn normalized_duplicates(&self) -> Vec<Vec<Slot>> {
        let mut by_name: std::collections::HashMap<String, Vec<Slot>> = Default::default();
        for (slot, tag) in self.tags.iter().enumerate() {
            by_name.entry(normalize_tag(tag)).or_default().push(slot);
        }
        let mut groups: Vec<Vec<Slot>> = by_name.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        groups
    }

    /// The identity recorded in downstream files.
    pub fn id(&self) -> VocabularyId {
        VocabularyId {
            preset: self.preset.as_ref().map(|p| p.name.clone()),
            path: self.path.display().to_string(),
            sha256: self.sha256.clone(),
            tag_count: self.len(),
        }
    }

    /// Checks that a file produced for vocabulary `other` belongs to this one (same hash and size).
    pub fn check_id(&self, other: &VocabularyId, what: &Path) -> Result<()> {
        if other.sha256 != self.sha256 || other.tag_count != self.len() {
            return Err(VocabError::OtherVocabulary {
                path: what.into(),
                file_tags: other.tag_count,
                file_sha: other.sha256.chars().take(12).collect(),
                vocab: self.path.clone(),
                vocab_tags: self.len(),
                vocab_sha: self.sha256.chars().take(12).collect(),
            }
            .into());
        }
        Ok(())
    }
}

/// Splits a text file into lines the way RAM reads tag lists (line i = slot i), naming the first
/// invalid UTF-8 line. A final newline does not start a new slot.
pub fn parse_lines(path: &Path, bytes: &[u8]) -> Result<Vec<String>, VocabError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            String::from_utf8(line.to_vec()).map_err(|source| VocabError::InvalidUtf8 {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_slots_with_bom_crlf_and_final_newline() {
        let p = Path::new("x.txt");
        assert_eq!(
            parse_lines(p, b"\xEF\xBB\xBFa\r\nb\r\n").unwrap(),
            ["a", "b"]
        );
        assert_eq!(parse_lines(p, b"a\nb").unwrap(), ["a", "b"]);
        assert_eq!(parse_lines(p, b"a\n\nb\n").unwrap(), ["a", "", "b"]);
        let err = parse_lines(p, b"a\n\xFF\n").unwrap_err().to_string();
        assert!(err.contains("x.txt:2"), "{err}");
    }

    #[test]
    fn empty_line_is_an_error_naming_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.txt");
        std::fs::write(&f, "cat\n\ndog\n").unwrap();
        let err = Vocabulary::from_file(&f).unwrap_err().to_string();
        assert!(err.contains(":2: empty tag at slot 1"), "{err}");
        std::fs::write(&f, "").unwrap();
        assert!(Vocabulary::from_file(&f)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn duplicates_after_normalisation() {
        let v = Vocabulary::from_tags(
            ["Cat", "dog", "cat ", "Dog", "emu"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(v.normalized_duplicates(), vec![vec![0, 2], vec![1, 3]]);
    }

    #[test]
    fn id_mismatch_is_reported() {
        let a = Vocabulary::from_tags(vec!["cat".into(), "dog".into()]);
        let b = Vocabulary::from_tags(vec!["cat".into(), "dot".into()]);
        assert!(a.check_id(&a.id(), Path::new("m.json")).is_ok());
        let err = a
            .check_id(&b.id(), Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("different vocabulary"), "{err}");
    }
}
