//! Teacher sets: a teacher file split into shards that separate processes compute (`tagfix teacher
//! --shard I/N`, e.g. one Slurm array task or one GPU each), read back together by `tagfix train
//! --teacher DIR`. Computing the CLIP features of a 4M–14M image set is hours of work on one device;
//! shards spread it, and a shard that dies is recomputed alone.
//!
//! Shard I of N holds the records `I·n/N .. (I+1)·n/N` of the annotation files' record order, in a
//! file named `teacher-IIIII-of-NNNNN.safetensors` (I counted from 0, like a Slurm array task id or
//! a torchrun rank), with its place in the metadata (`tagfix.teacher.shard = "I/N"`) and the set's
//! record count (`tagfix.teacher.set_records`).

use super::TeacherError;
use crate::error::Result;
pub use crate::share::shard::{local_gpu, SetNaming, Shard, ShardSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of a teacher set: `teacher-IIIII-of-NNNNN.safetensors`.
pub const TEACHER_SET: SetNaming = SetNaming {
    prefix: "teacher",
    ext: "safetensors",
    what: "teacher shard",
    made_by: "tagfix teacher --shard I/N",
};

/// Metadata key of a shard's place in its set: `"I/N"`.
pub const SHARD_KEY: &str = "tagfix.teacher.shard";
/// Metadata key of the number of records of the whole set.
pub const SET_RECORDS_KEY: &str = "tagfix.teacher.set_records";
/// Metadata that may differ between the shards of one set: what the shard is, which tagfix
/// version computed it, and where its inputs were (nodes may mount them at other paths; that every
/// record has exactly one row is checked by keys). Every other key must be equal, so that no set
/// mixes towers, preprocessing or caption rules.
const PER_SHARD_KEYS: [&str; 4] = [
    SHARD_KEY,
    "tagfix.generator",
    "tagfix.teacher.annotations",
    "tagfix.teacher.image_root",
];

/// The shard files of the teacher set in `dir`, in shard order ([`SetNaming::set_files`]).
pub fn set_files(dir: &Path) -> Result<Vec<PathBuf>> {
    TEACHER_SET.set_files(dir, |problem| set_error(dir, problem))
}

/// Checks that shard `path` (the `position`-th file of the set in `dir`) says it is that shard, and
/// that its metadata equals the first shard's `first` but for [`PER_SHARD_KEYS`].
pub fn check_member(
    dir: &Path,
    path: &Path,
    position: usize,
    count: usize,
    metadata: &BTreeMap<String, String>,
    first: &BTreeMap<String, String>,
) -> Result<()> {
    let expected = Shard {
        index: position,
        count,
    };
    match metadata.get(SHARD_KEY) {
        Some(s) if s.parse::<Shard>() == Ok(expected) => {}
        other => {
            return Err(set_error(
                dir,
                format!(
                    "{} says it is shard {}, its name says {expected}",
                    path.display(),
                    other.map_or("(no tagfix.teacher.shard)", String::as_str)
                ),
            ))
        }
    }
    let shared = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .filter(|(k, _)| !PER_SHARD_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (this, theirs) = (shared(metadata), shared(first));
    let differing = this
        .keys()
        .chain(theirs.keys())
        .find(|k| this.get(*k) != theirs.get(*k));
    if let Some(key) = differing {
        return Err(set_error(
            dir,
            format!(
                "{} was made differently from shard 0: {key} is {} there, {} in shard 0 \
                 (recompute it with the same command and --shard {expected})",
                path.display(),
                shown(this.get(key)),
                shown(theirs.get(key))
            ),
        ));
    }
    Ok(())
}

/// Checks the set's record count against its shards' rows.
pub fn check_record_count(dir: &Path, first: &BTreeMap<String, String>, rows: usize) -> Result<()> {
    match first.get(SET_RECORDS_KEY).map(|s| s.parse::<usize>()) {
        None => Ok(()),
        Some(Ok(n)) if n == rows => Ok(()),
        Some(_) => Err(set_error(
            dir,
            format!(
                "its shards hold {rows} records, their {SET_RECORDS_KEY} says {}",
                shown(first.get(SET_RECORDS_KEY))
            ),
        )),
    }
}

fn shown(value: Option<&String>) -> String {
    value.map_or_else(|| "absent".into(), |v| format!("`{v}`"))
}

fn set_error(dir: &Path, problem: String) -> crate::Error {
    TeacherError::Set {
        dir: dir.into(),
        problem,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_record_count_must_equal_the_shards_rows() {
        let dir = Path::new("set");
        let m = |n: &str| BTreeMap::from([(SET_RECORDS_KEY.to_string(), n.to_string())]);
        check_record_count(dir, &m("10"), 10).unwrap();
        check_record_count(dir, &BTreeMap::new(), 10).unwrap();
        let err = check_record_count(dir, &m("12"), 10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("teacher set set: its shards hold 10 records, their tagfix.teacher.set_records says `12`"),
            "{err}"
        );
    }

    #[test]
    fn a_set_lists_its_shards_in_order_and_names_the_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| std::fs::write(dir.path().join(name), b"").unwrap();
        let err = set_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("holds no teacher shard"), "{err}");
        for i in [2, 0] {
            touch(&TEACHER_SET.file_name(Shard { index: i, count: 4 }));
        }
        touch("notes.txt");
        touch("teacher.safetensors");
        let err = set_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2 of its 4 shards are missing: 1, 3"), "{err}");
        for i in [1, 3] {
            touch(&TEACHER_SET.file_name(Shard { index: i, count: 4 }));
        }
        let files = set_files(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "teacher-00000-of-00004.safetensors");
        assert_eq!(names[3], "teacher-00003-of-00004.safetensors");
        touch(&TEACHER_SET.file_name(Shard { index: 0, count: 2 }));
        let err = set_files(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("one of 2 shards") || err.contains("one of 4 shards"),
            "{err}"
        );
    }

    /// A file named like a shard, but not as tagfix names one, is refused rather than passed over:
    /// `teacher-1-of-2` beside `teacher-00001-of-00002` would otherwise be one shard twice.
    #[test]
    fn files_named_almost_like_shards_are_refused() {
        for odd in [
            "teacher-1-of-2.safetensors",
            "teacher-00002-of-00002.safetensors",
            "teacher-00x01-of-00002.safetensors",
        ] {
            let dir = tempfile::tempdir().unwrap();
            for index in 0..2 {
                std::fs::write(
                    dir.path()
                        .join(TEACHER_SET.file_name(Shard { index, count: 2 })),
                    b"",
                )
                .unwrap();
            }
            std::fs::write(dir.path().join(odd), b"").unwrap();
            let err = set_files(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains(odd) && err.contains("is named like a shard but is not one"),
                "{odd}: {err}"
            );
        }
    }

    /// A file name may claim any count: the missing shards are counted, not enumerated.
    #[test]
    fn a_set_claiming_a_huge_count_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let huge = Shard {
            index: 3,
            count: usize::MAX,
        };
        std::fs::write(dir.path().join(TEACHER_SET.file_name(huge)), b"").unwrap();
        let err = set_files(dir.path()).unwrap_err().to_string();
        let more = usize::MAX - 1 - 10;
        assert!(
            err.contains(&format!("0, 1, 2, 4, 5, 6, 7, 8, 9, 10 and {more} more")),
            "{err}"
        );
    }
}
