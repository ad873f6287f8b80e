//! Training records from RAM-format annotation files, collected through the one record reader
//! ([`super::Records`]): a JSON array or JSON Lines, optionally gzip, one object per image with
//! `image_path`, `union_label_id` (slots) and, when asked for, `caption` (a list of strings, or one
//! string). Only the fields asked for are kept; records are kept in memory (path + slots
//! [+ captions], never a JSON tree) because training shuffles them every epoch.

use super::reader::{Need, RecordSpec, Records};
use super::{AnnotationError, CaptionMode, Pos};
use crate::error::Result;
use std::path::{Path, PathBuf};

/// One training image and its positive slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainRecord {
    /// As written in the annotation (relative to the image root unless absolute).
    pub image_path: String,
    /// Positive slots, ascending, without repeats.
    pub slots: Vec<u32>,
    /// Where the record is, for messages.
    pub origin: Origin,
    /// The record's captions, when read with [`ReadOptions::captions`] (else empty).
    pub captions: Vec<String>,
}

/// Where a record is: its file (an index into [`RecordSet::files`]), its 0-based index there and
/// the line:column where it starts, as every reader of annotations numbers records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub file: usize,
    pub record: u64,
    pub pos: Pos,
}

impl TrainRecord {
    /// Where the record's image is: `image_path` under `root` unless absolute.
    pub fn image_file(&self, root: &Path) -> PathBuf {
        let p = Path::new(&self.image_path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    }
}

/// What [`RecordSet::read_with`] requires and keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Slots of the vocabulary: `union_label_id` is required and checked against it. `None`: the
    /// labels are neither required nor read (e.g. for `tagfix teacher`).
    pub num_slots: Option<usize>,
    /// Keep the captions; every record must then have at least one.
    pub captions: bool,
}

impl ReadOptions {
    /// The fields required and kept: `image_path` always, the labels and captions when asked for.
    /// `parse_label_id` is not read by training.
    pub fn spec(self) -> RecordSpec {
        RecordSpec {
            image_path: Need::Required,
            caption: if self.captions {
                Need::NonEmpty
            } else {
                Need::Ignored
            },
            union_label_id: if self.num_slots.is_some() {
                Need::Required
            } else {
                Need::Ignored
            },
            parse_label_id: Need::Ignored,
            slot_count: self.num_slots.unwrap_or(0),
            captions: CaptionMode {
                keep: self.captions,
                allow_string: true,
            },
        }
    }
}

/// Records of several annotation files, and the files they came from.
#[derive(Debug, Clone)]
pub struct RecordSet {
    pub files: Vec<PathBuf>,
    pub records: Vec<TrainRecord>,
}

impl RecordSet {
    /// Reads every file; a record without `image_path`/`union_label_id` or with a slot outside
    /// `0..num_slots` is an error naming file, line:column, record and slot.
    pub fn read(files: &[PathBuf], num_slots: usize) -> Result<Self> {
        Self::read_with(
            files,
            ReadOptions {
                num_slots: Some(num_slots),
                captions: false,
            },
        )
    }

    /// Reads every file with explicit requirements (see [`ReadOptions`]).
    pub fn read_with(files: &[PathBuf], opts: ReadOptions) -> Result<Self> {
        if files.is_empty() {
            return Err(AnnotationError::NoFiles.into());
        }
        let spec = opts.spec();
        let mut records = Vec::new();
        for (file, path) in files.iter().enumerate() {
            let before = records.len();
            for rec in Records::open(path, spec)? {
                let rec = rec?;
                let mut slots = rec.union_label_id;
                slots.sort_unstable();
                slots.dedup();
                records.push(TrainRecord {
                    // required: a record without one is an error above
                    image_path: rec.image_path.unwrap_or_default(),
                    slots,
                    origin: Origin {
                        file,
                        record: rec.index,
                        pos: rec.pos,
                    },
                    captions: rec.captions,
                });
            }
            if records.len() == before {
                return Err(AnnotationError::NoRecords { path: path.clone() }.into());
            }
        }
        Ok(RecordSet {
            files: files.to_vec(),
            records,
        })
    }

    /// `file:line:column: record N` of a record (0-based, as every annotation message numbers it).
    pub fn origin(&self, r: &TrainRecord) -> String {
        let o = r.origin;
        format!(
            "{}:{}:{}: record {}",
            self.files[o.file].display(),
            o.pos.line,
            o.pos.column,
            o.record
        )
    }

    /// A fingerprint of the record order and contents (recorded in checkpoints so `--resume` can
    /// tell that the data changed).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for r in &self.records {
            h.update(r.image_path.as_bytes());
            h.update([0]);
            for s in &r.slots {
                h.update(s.to_le_bytes());
            }
            h.update([1]);
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_array_jsonl_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(
            &a,
            r#"[{"image_path":"x.jpg","caption":["c"],"union_label_id":[2,0,2],"parse_label_id":[[0]]}]"#,
        )
        .unwrap();
        let b = dir.path().join("b.jsonl.gz");
        let mut gz =
            flate2::write::GzEncoder::new(std::fs::File::create(&b).unwrap(), Default::default());
        gz.write_all(b"{\"image_path\":\"y.png\",\"union_label_id\":[1]}\n\n{\"image_path\":\"z.png\",\"union_label_id\":[]}\n")
            .unwrap();
        gz.finish().unwrap();
        let set = RecordSet::read(&[a, b], 3).unwrap();
        assert_eq!(set.records.len(), 3);
        assert_eq!(set.records[0].slots, vec![0, 2]);
        assert_eq!(set.records[1].image_path, "y.png");
        let o = set.records[2].origin;
        assert_eq!(
            (o.file, o.record, o.pos),
            (1, 1, Pos { line: 3, column: 1 })
        );
        assert!(set
            .origin(&set.records[2])
            .ends_with("b.jsonl.gz:3:1: record 1"));
    }

    #[test]
    fn bad_slot_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        std::fs::write(&a, "{\"image_path\":\"x.jpg\",\"union_label_id\":[7]}\n").unwrap();
        let e = RecordSet::read(&[a], 3).unwrap_err().to_string();
        assert!(
            e.contains("a.jsonl:1:1: record 0: union_label_id[0] = 7 is out of range: the vocabulary has 3 slots"),
            "{e}"
        );
    }

    #[test]
    fn captions_are_read_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        std::fs::write(
            &a,
            "{\"image_path\":\"x.jpg\",\"caption\":[\"a dog\",\"a cat\"]}\n{\"image_path\":\"y.jpg\",\"caption\":\"one\"}\n",
        )
        .unwrap();
        let opts = ReadOptions {
            num_slots: None,
            captions: true,
        };
        let set = RecordSet::read_with(std::slice::from_ref(&a), opts).unwrap();
        assert_eq!(set.records[0].captions, vec!["a dog", "a cat"]);
        assert_eq!(set.records[1].captions, vec!["one"]);
        assert!(set.records[0].slots.is_empty());
        std::fs::write(&a, "{\"image_path\":\"x.jpg\",\"caption\":[]}\n").unwrap();
        let e = RecordSet::read_with(&[a], opts).unwrap_err().to_string();
        assert!(
            e.contains("a.jsonl:1:1: record 0: caption is an empty list"),
            "{e}"
        );
    }

    #[test]
    fn reliability_reproducers_name_the_invalid_byte() {
        // The file `diff` once passed and `train` refused with "stream did not contain valid UTF-8".
        let Some(shared) = crate::testutil::shared_dir_for_test("records_reproducers") else {
            return;
        };
        for (name, place) in [
            ("diff_passes_train_refuses_badutf8.json", "1:32"),
            ("diff_accepts_invalid_utf8_caption.jsonl", "4:54"),
            ("diff_accepts_overlong_utf8.jsonl", "1:40"),
        ] {
            let p = shared.join("reliability").join(name);
            let e = RecordSet::read(std::slice::from_ref(&p), 4585)
                .unwrap_err()
                .to_string();
            let expected = format!("{}:{place}: record ", p.display());
            assert!(e.starts_with(&expected), "{e}");
            assert!(e.contains(": invalid UTF-8 (byte 0x"), "{e}");
        }
    }
}
