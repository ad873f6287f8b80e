//! Training records from RAM-format annotation files, collected through the one record reader
//! ([`super::Records`]): a JSON array or JSON Lines, optionally gzip, one object per image with
//! `image_path`, `union_label_id` (slots) and, when asked for, `caption` (a list of strings, or one
//! string). Only the fields asked for are kept; records are kept in memory (path + slots
//! [+ captions], never a JSON tree) because training shuffles them every epoch.

use super::reader::{Need, RecordSpec, Records};
use super::{AnnotationError, CaptionMode, Pos};
use crate::error::Result;
use crate::strings::{StrList, Strings};
use std::path::{Path, PathBuf};

/// One training image and its positive slots: a view into a [`RecordSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainRecord<'a> {
    /// As written in the annotation (relative to the image root unless absolute).
    pub image_path: &'a str,
    /// Positive slots, ascending, without repeats.
    pub slots: &'a [u32],
    /// Where the record is, for messages.
    pub origin: Origin,
    /// The record's captions, when read with [`ReadOptions::captions`] (else empty).
    pub captions: StrList<'a>,
}

/// Where a record is: its file (an index into [`RecordSet::files`]), its 0-based index there and
/// the line:column where it starts, as every reader of annotations numbers records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub file: usize,
    pub record: u64,
    pub pos: Pos,
}

impl TrainRecord<'_> {
    /// Where the record's image is: `image_path` under `root` unless absolute.
    pub fn image_file(&self, root: &Path) -> PathBuf {
        let p = Path::new(self.image_path);
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
///
/// Kept column by column, because training holds every record of its set (shuffled every epoch) in
/// each rank: all image paths in one string, all slots in one array, each with one offset per
/// record, and the records' start positions. A record costs its path's bytes, 4 bytes a slot and 32
/// bytes (with captions, 8 more and each caption's bytes + 8), not 104 bytes of fields and an
/// allocation per path, slot list and caption as a struct of `String` and `Vec`s
/// (docs/PERFORMANCE.md, "Training records, column by column").
#[derive(Debug, Clone, Default)]
pub struct RecordSet {
    pub files: Vec<PathBuf>,
    /// Record i's image path is `paths.get(i)`.
    paths: Strings,
    slots: Vec<u32>,
    /// Record i's slots are `slots[slot_at[i]..slot_at[i + 1]]`.
    slot_at: Vec<usize>,
    /// Where each record starts in its file.
    positions: Vec<Pos>,
    /// The first record of each file (records are numbered from 0 in each file).
    file_start: Vec<usize>,
    /// Captions, when kept: record i's are `captions.slice(caption_at[i]..caption_at[i + 1])`.
    captions: Strings,
    /// Empty when captions are not kept.
    caption_at: Vec<usize>,
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
        let mut set = RecordSet {
            files: files.to_vec(),
            slot_at: vec![0],
            caption_at: if opts.captions { vec![0] } else { Vec::new() },
            ..RecordSet::default()
        };
        for path in files {
            let before = set.len();
            set.file_start.push(before);
            for rec in Records::open(path, spec)? {
                let rec = rec?;
                debug_assert_eq!(rec.index, (set.len() - before) as u64);
                let mut slots = rec.union_label_id;
                slots.sort_unstable();
                slots.dedup();
                // required: a record without one is an error above
                set.push(
                    rec.image_path.as_deref().unwrap_or_default(),
                    &slots,
                    rec.pos,
                    rec.captions,
                );
            }
            if set.len() == before {
                return Err(AnnotationError::NoRecords { path: path.clone() }.into());
            }
        }
        set.shrink_to_fit();
        Ok(set)
    }

    fn push(&mut self, image_path: &str, slots: &[u32], pos: Pos, captions: Vec<String>) {
        self.paths.push(image_path);
        self.slots.extend_from_slice(slots);
        self.slot_at.push(self.slots.len());
        self.positions.push(pos);
        if !self.caption_at.is_empty() {
            captions.iter().for_each(|c| self.captions.push(c));
            self.caption_at.push(self.captions.len());
        }
    }

    fn shrink_to_fit(&mut self) {
        self.paths.shrink_to_fit();
        self.slots.shrink_to_fit();
        self.slot_at.shrink_to_fit();
        self.positions.shrink_to_fit();
        self.captions.shrink_to_fit();
        self.caption_at.shrink_to_fit();
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Record `i` (panics when `i >= len()`, as indexing does).
    pub fn get(&self, i: usize) -> TrainRecord<'_> {
        let file = self.file_start.partition_point(|&s| s <= i) - 1;
        TrainRecord {
            image_path: self.paths.get(i),
            slots: &self.slots[self.slot_at[i]..self.slot_at[i + 1]],
            origin: Origin {
                file,
                record: (i - self.file_start[file]) as u64,
                pos: self.positions[i],
            },
            captions: match self.caption_at.get(i..i + 2) {
                Some(&[a, b]) => self.captions.slice(a..b),
                _ => StrList::empty(),
            },
        }
    }

    /// The records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = TrainRecord<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Every record's slots, in record order (as [`Self::iter`] without the rest).
    pub fn slot_lists(&self) -> impl ExactSizeIterator<Item = &[u32]> + '_ {
        self.slot_at.windows(2).map(|w| &self.slots[w[0]..w[1]])
    }

    /// Takes the captions out, all of them one after the other, with each record's start in that
    /// list and the end (`len() + 1` offsets); the records keep none.
    pub fn take_captions(&mut self) -> (Strings, Vec<usize>) {
        let captions = std::mem::take(&mut self.captions);
        let at = std::mem::take(&mut self.caption_at);
        (
            captions,
            if at.is_empty() {
                vec![0; self.len() + 1]
            } else {
                at
            },
        )
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

    /// [`Self::origin`] of record `i`.
    pub fn origin_of(&self, i: usize) -> String {
        self.origin(&self.get(i))
    }

    /// A fingerprint of the record order and contents (recorded in checkpoints so `--resume` can
    /// tell that the data changed).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for r in self.iter() {
            h.update(r.image_path.as_bytes());
            h.update([0]);
            for s in r.slots {
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
        assert_eq!(set.len(), 3);
        assert_eq!(set.get(0).slots, [0, 2]);
        assert_eq!(set.get(1).image_path, "y.png");
        let o = set.get(2).origin;
        assert_eq!(
            (o.file, o.record, o.pos),
            (1, 1, Pos { line: 3, column: 1 })
        );
        assert!(set.origin_of(2).ends_with("b.jsonl.gz:3:1: record 1"));
        // Checkpoints record it: the value of the record-per-struct layout, so that `--resume`
        // accepts runs started before the columns.
        assert_eq!(
            set.fingerprint(),
            "098f885df0d830526951bb928bbdd1ace558b213659640a91179589ddb390186"
        );
    }

    #[test]
    fn columns_give_each_record_its_own_fields() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(
            &a,
            "{\"image_path\":\"/abs/a0.jpg\",\"caption\":[\"one\",\"two\"],\"union_label_id\":[3,1]}\n{\"image_path\":\"a1.jpg\",\"caption\":\"three\",\"union_label_id\":[]}\n",
        )
        .unwrap();
        std::fs::write(
            &b,
            "{\"image_path\":\"\",\"caption\":[\"four\"],\"union_label_id\":[0,4,0]}\n",
        )
        .unwrap();
        let opts = ReadOptions {
            num_slots: Some(5),
            captions: true,
        };
        let mut set = RecordSet::read_with(&[a, b], opts).unwrap();
        type Fields<'a> = (&'a str, Vec<u32>, usize, u64, Vec<String>);
        let got: Vec<Fields> = set
            .iter()
            .map(|r| {
                let o = r.origin;
                (
                    r.image_path,
                    r.slots.to_vec(),
                    o.file,
                    o.record,
                    r.captions.iter().map(String::from).collect(),
                )
            })
            .collect();
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                ("/abs/a0.jpg", vec![1, 3], 0, 0, s(&["one", "two"])),
                ("a1.jpg", vec![], 0, 1, s(&["three"])),
                ("", vec![0, 4], 1, 0, s(&["four"])),
            ]
        );
        let slot_lists: Vec<&[u32]> = set.slot_lists().collect();
        assert_eq!(slot_lists, [&[1, 3][..], &[], &[0, 4]]);
        assert_eq!(
            set.get(0).image_file(Path::new("/root")),
            Path::new("/abs/a0.jpg")
        );
        assert_eq!(
            set.get(1).image_file(Path::new("/root")),
            Path::new("/root/a1.jpg")
        );
        let (captions, at) = set.take_captions();
        assert_eq!(
            (captions.iter().collect::<Vec<_>>(), at),
            (vec!["one", "two", "three", "four"], vec![0, 2, 3, 4])
        );
        assert!(set.iter().all(|r| r.captions.is_empty()));
        assert_eq!(set.take_captions(), (Strings::default(), vec![0; 4]));
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
        assert_eq!(set.get(0).captions.to_vec(), ["a dog", "a cat"]);
        assert_eq!(set.get(1).captions.to_vec(), ["one"]);
        assert!(set.get(0).slots.is_empty());
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
