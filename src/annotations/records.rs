//! Training records from RAM-format annotation files: a JSON array or JSON Lines, optionally gzip, one object per image with `image_path`, `union_label_id` (slots) and, when asked for,
//! `caption` (a list of strings, or one string). Other fields (`parse_label_id`, …) are skipped.
//! Records are kept in memory (path + slots [+ captions]) because training shuffles them every epoch.

use super::split::{Pos, Splitter};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One training image and its positive slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainRecord {
    /// As written in the annotation (relative to the image root unless absolute).
    pub image_path: String,
    /// Positive slots, ascending, without repeats.
    pub slots: Vec<u32>,
    /// The annotation file and 1-based record number, for error messages.
    pub origin: (usize, u64),
    /// The record's captions, when read with [`ReadOptions::captions`] (else empty).
    pub captions: Vec<String>,
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

/// RAM writes `caption` as a list; a single string is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum CaptionField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawRecord {
    image_path: Option<String>,
    union_label_id: Option<Vec<i64>>,
    #[serde(default)]
    caption: Option<CaptionField>,
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

/// Records of several annotation files, and the files they came from.
#[derive(Debug, Clone)]
pub struct RecordSet {
    pub files: Vec<PathBuf>,
    pub records: Vec<TrainRecord>,
}

impl RecordSet {
    /// Reads every file; a record without `image_path`/`union_label_id` or with a slot outside
    /// `0..num_slots` is an error naming file, record and slot.
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
            return Err(Error::Usage(
                "no training data: give --data FILE (or train_file in the config)".into(),
            ));
        }
        let mut records = Vec::new();
        for (fi, path) in files.iter().enumerate() {
            let before = records.len();
            read_file(path, fi, opts, &mut records)?;
            if records.len() == before {
                return Err(Error::invalid(path, "holds no records"));
            }
        }
        Ok(RecordSet {
            files: files.to_vec(),
            records,
        })
    }

    /// `file:record` of a record, for messages.
    pub fn origin(&self, r: &TrainRecord) -> String {
        format!("{} record {}", self.files[r.origin.0].display(), r.origin.1)
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

fn read_file(
    path: &Path,
    file_index: usize,
    opts: ReadOptions,
    out: &mut Vec<TrainRecord>,
) -> Result<()> {
    // The annotation scanner's opener and splitter, so that `train` and `teacher` read a file exactly
    // as `diff` audits it (layout, structure, UTF-8) and name problems at the same line:column.
    let (reader, gzip) = super::open(path, indicatif::ProgressBar::hidden())?;
    let mut splitter = Splitter::new(reader, 4 << 20);
    while let Some(batch) = splitter
        .next_batch()
        .map_err(|e| super::split_failure(path, gzip, e))?
    {
        for item in &batch.items {
            let bytes = batch.bytes(item);
            let at_error = |pos: Pos, message: String| Error::Syntax {
                path: path.to_path_buf(),
                line: pos.line,
                column: pos.column,
                message,
            };
            if let Some((pos, message)) = super::invalid_utf8(item.pos, bytes) {
                return Err(at_error(pos, message));
            }
            let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
                let pos = super::absolute(item.pos, e.line(), e.column());
                at_error(
                    pos,
                    format!("not a JSON record: {}", super::serde_message(&e)),
                )
            })?;
            // Through a `Value`, so that a repeated key keeps its last value, as in Python's json
            // and `diff`.
            let raw: RawRecord = serde_json::from_value(value)
                .map_err(|e| at_error(item.pos, format!("not a RAM record: {e}")))?;
            out.push(convert(raw, path, file_index, item.index + 1, opts)?);
        }
    }
    Ok(())
}

fn convert(
    raw: RawRecord,
    path: &Path,
    file_index: usize,
    n: u64,
    opts: ReadOptions,
) -> Result<TrainRecord> {
    let image_path = raw
        .image_path
        .ok_or_else(|| Error::invalid(path, format!("record {n}: no `image_path`")))?;
    let mut slots = Vec::new();
    if let Some(num_slots) = opts.num_slots {
        let ids = raw.union_label_id.ok_or_else(|| {
            Error::invalid(
                path,
                format!("record {n} ({image_path}): no `union_label_id`"),
            )
        })?;
        slots.reserve(ids.len());
        for id in ids {
            if id < 0 || id as usize >= num_slots {
                return Err(Error::invalid(
                    path,
                    format!("record {n} ({image_path}): slot {id} is outside the vocabulary's 0..{num_slots}"),
                ));
            }
            slots.push(id as u32);
        }
        slots.sort_unstable();
        slots.dedup();
    }
    let captions = if opts.captions {
        let c = match raw.caption {
            Some(CaptionField::One(c)) => vec![c],
            Some(CaptionField::Many(c)) => c,
            None => Vec::new(),
        };
        if c.is_empty() {
            return Err(Error::invalid(
                path,
                format!(
                    "record {n} ({image_path}): no caption (`caption` is missing or an empty list)"
                ),
            ));
        }
        c
    } else {
        Vec::new()
    };
    Ok(TrainRecord {
        image_path,
        slots,
        origin: (file_index, n),
        captions,
    })
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
        assert_eq!(set.records[2].origin, (1, 2));
    }

    #[test]
    fn bad_slot_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        std::fs::write(&a, "{\"image_path\":\"x.jpg\",\"union_label_id\":[7]}\n").unwrap();
        let e = RecordSet::read(&[a], 3).unwrap_err().to_string();
        assert!(
            e.contains("a.jsonl") && e.contains("record 1") && e.contains("slot 7"),
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
        assert!(e.contains("record 1 (x.jpg): no caption"), "{e}");
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
            let expected = format!("{}:{place}: invalid UTF-8 (byte 0x", p.display());
            assert!(e.contains(&expected), "{e}");
        }
    }
}
