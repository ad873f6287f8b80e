//! The slot manifest: what `diff` found out about a training set, handed to `embed` and `train`.
//!
//! A versioned JSON document (schema in `docs/formats.md`). It names its vocabulary by sha256 so a
//! consumer can refuse a manifest made for another vocabulary, and lists every slot with its status
//! and counts. Nothing downstream re-derives which slots are absent.

use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::vocab::{Slot, Vocabulary, VocabularyId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a slot manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "{path}: not a slot manifest (schema {schema:?}, expected {MANIFEST_SCHEMA:?}); write one with `tagfix diff --out`"
    )]
    NotAManifest { path: PathBuf, schema: String },

    #[error(
        "{path}: slot manifest version {version} is not supported (this tagfix reads version {MANIFEST_VERSION})"
    )]
    Version { path: PathBuf, version: u64 },

    #[error("{path}: malformed slot manifest")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: lists {listed} slots but its vocabulary has {tags}")]
    SlotCount {
        path: PathBuf,
        listed: usize,
        tags: usize,
    },

    #[error("{path}: slot entries out of order: entry {entry} is slot {slot}")]
    OutOfOrder {
        path: PathBuf,
        entry: usize,
        slot: Slot,
    },

    #[error(
        "{path}: slot {slot} is `{manifest_tag}` in the manifest but `{vocab_tag}` in {vocab}"
    )]
    TagMismatch {
        path: PathBuf,
        slot: Slot,
        manifest_tag: String,
        vocab_tag: String,
        vocab: PathBuf,
    },
}

/// Value of the `schema` field.
pub const MANIFEST_SCHEMA: &str = "tagfix.slot-manifest";
/// Current schema version. Readers accept this version only.
pub const MANIFEST_VERSION: u32 = 1;

/// Whether the training data covers a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotStatus {
    /// At least one record carries the slot in `union_label_id`.
    Present,
    /// No record carries it.
    Absent,
}

/// One slot of the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotEntry {
    pub slot: Slot,
    pub tag: String,
    pub status: SlotStatus,
    /// Records whose `union_label_id` holds the slot.
    pub union: u64,
    /// Records whose `parse_label_id` (any caption) holds the slot.
    pub parse: u64,
}

/// An annotation file that went into the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: String,
    pub bytes: u64,
    pub records: u64,
}

/// Totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSummary {
    pub slots: usize,
    pub present: usize,
    pub absent: usize,
    pub records: u64,
    /// Number of problems `diff` reported (details are in its report, not here).
    pub problems: u64,
}

/// The slot manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotManifest {
    pub schema: String,
    pub version: u32,
    /// `tagfix <version>` that wrote it.
    pub generator: String,
    pub vocabulary: VocabularyId,
    pub inputs: Vec<InputFile>,
    pub summary: ManifestSummary,
    /// Every slot in slot order (`slots[i].slot == i`).
    pub slots: Vec<SlotEntry>,
}

impl SlotManifest {
    /// Builds a manifest from per-slot counts (`union[i]`, `parse[i]` for slot i).
    pub fn from_counts(
        vocab: &Vocabulary,
        union: &[u64],
        parse: &[u64],
        inputs: Vec<InputFile>,
        problems: u64,
    ) -> Self {
        assert_eq!(union.len(), vocab.len());
        assert_eq!(parse.len(), vocab.len());
        let slots: Vec<SlotEntry> = vocab
            .tags
            .iter()
            .enumerate()
            .map(|(slot, tag)| SlotEntry {
                slot,
                tag: tag.clone(),
                status: if union[slot] > 0 {
                    SlotStatus::Present
                } else {
                    SlotStatus::Absent
                },
                union: union[slot],
                parse: parse[slot],
            })
            .collect();
        let absent = slots
            .iter()
            .filter(|s| s.status == SlotStatus::Absent)
            .count();
        SlotManifest {
            schema: MANIFEST_SCHEMA.to_string(),
            version: MANIFEST_VERSION,
            generator: format!("tagfix {}", env!("CARGO_PKG_VERSION")),
            vocabulary: vocab.id(),
            summary: ManifestSummary {
                slots: slots.len(),
                present: slots.len() - absent,
                absent,
                records: inputs.iter().map(|i| i.records).sum(),
                problems,
            },
            inputs,
            slots,
        }
    }

    /// Slots no record carries, ascending.
    pub fn absent_slots(&self) -> Vec<Slot> {
        self.slots_with(SlotStatus::Absent)
    }

    /// Slots at least one record carries, ascending.
    pub fn present_slots(&self) -> Vec<Slot> {
        self.slots_with(SlotStatus::Present)
    }

    fn slots_with(&self, status: SlotStatus) -> Vec<Slot> {
        self.slots
            .iter()
            .filter(|s| s.status == status)
            .map(|s| s.slot)
            .collect()
    }

    /// Reads and validates a manifest file (schema, version, slot order, internal consistency).
    pub fn read(path: &Path) -> Result<Self> {
        let value = crate::fsutil::read_json(path)?;
        match value.get("schema").and_then(|s| s.as_str()) {
            Some(MANIFEST_SCHEMA) => {}
            other => {
                return Err(ManifestError::NotAManifest {
                    path: path.into(),
                    schema: other.unwrap_or("missing").into(),
                }
                .into())
            }
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(MANIFEST_VERSION) {
            return Err(ManifestError::Version {
                path: path.into(),
                version,
            }
            .into());
        }
        let manifest: SlotManifest =
            serde_json::from_value(value).map_err(|source| ManifestError::Malformed {
                path: path.into(),
                source,
            })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if self.slots.len() != self.vocabulary.tag_count {
            return Err(ManifestError::SlotCount {
                path: path.into(),
                listed: self.slots.len(),
                tags: self.vocabulary.tag_count,
            }
            .into());
        }
        if let Some((i, s)) = self.slots.iter().enumerate().find(|(i, s)| s.slot != *i) {
            return Err(ManifestError::OutOfOrder {
                path: path.into(),
                entry: i,
                slot: s.slot,
            }
            .into());
        }
        Ok(())
    }

    /// Reads an optional `--manifest` and checks it against `vocab`.
    pub fn read_for(path: Option<&Path>, vocab: &Vocabulary) -> Result<Option<Self>> {
        path.map(|p| {
            let m = Self::read(p)?;
            m.check_vocabulary(vocab, p)?;
            Ok(m)
        })
        .transpose()
    }

    /// Checks the manifest belongs to `vocab` (hash and size) and that tags agree slot by slot.
    pub fn check_vocabulary(&self, vocab: &Vocabulary, path: &Path) -> Result<()> {
        vocab.check_id(&self.vocabulary, path)?;
        if let Some(s) = self.slots.iter().find(|s| vocab.tags[s.slot] != s.tag) {
            return Err(ManifestError::TagMismatch {
                path: path.into(),
                slot: s.slot,
                manifest_tag: s.tag.clone(),
                vocab_tag: vocab.tags[s.slot].clone(),
                vocab: vocab.path.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Writes the manifest atomically as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)?;
            w.write_all(b"\n")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vocabulary, SlotManifest) {
        let v = Vocabulary::from_tags(vec!["cat".into(), "dog".into(), "emu".into()]);
        let m = SlotManifest::from_counts(
            &v,
            &[3, 0, 1],
            &[2, 0, 0],
            vec![InputFile {
                path: "a.json".into(),
                bytes: 10,
                records: 4,
            }],
            0,
        );
        (v, m)
    }

    #[test]
    fn roundtrip_and_absent_slots() {
        let (v, m) = sample();
        assert_eq!(m.absent_slots(), vec![1]);
        assert_eq!(m.present_slots(), vec![0, 2]);
        assert_eq!(m.summary.records, 4);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        m.write(&p).unwrap();
        let back = SlotManifest::read(&p).unwrap();
        assert_eq!(back, m);
        back.check_vocabulary(&v, &p).unwrap();
    }

    #[test]
    fn refuses_other_schema_version_and_vocabulary() {
        let (_, m) = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let mut value = serde_json::to_value(&m).unwrap();
        value["version"] = 99.into();
        std::fs::write(&p, value.to_string()).unwrap();
        assert!(SlotManifest::read(&p)
            .unwrap_err()
            .to_string()
            .contains("version 99"));
        std::fs::write(&p, "{\"schema\": \"x\"}").unwrap();
        assert!(SlotManifest::read(&p)
            .unwrap_err()
            .to_string()
            .contains("not a slot manifest"));
        let other = Vocabulary::from_tags(vec!["a".into(), "b".into(), "c".into()]);
        assert!(m.check_vocabulary(&other, &p).is_err());
    }
}
