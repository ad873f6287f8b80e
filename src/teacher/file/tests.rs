//! Tests of the teacher file: written with [`super::write_streamed`], read back as
//! [`super::TeacherFeatures`], damaged in every way a reader must refuse.

use super::*;
use crate::tensors::safetensors_io;

#[test]
fn roundtrip_and_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let keys = vec!["a.png".to_string(), "b.png".to_string()];
    let image: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let text: Vec<f32> = (0..1024)
        .map(|i| if i % 512 == 0 { 2.0 } else { 0.0 })
        .collect();
    TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
    let t = TeacherFeatures::read(&p).unwrap();
    assert_eq!(t.row_of("b.png"), Some(1));
    assert_eq!(t.image_row(1).unwrap()[0], 512.0);
    assert_eq!(
        t.text_row(0).unwrap()[0],
        1.0,
        "text rows are L2-normalised"
    );
    assert!(t.row_of("c.png").is_none());
    assert!(t.image_row(2).is_err(), "a row past the end is an error");
}

fn rows(n: usize, value: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    (0..n * TEACHER_DIM)
        .map(|i| value(i / TEACHER_DIM, i % TEACHER_DIM))
        .collect()
}

/// The keys live in a tensor, so the header stays small however many records there are (a
/// header over 100 MB is refused by every safetensors reader).
#[test]
fn keys_are_a_tensor_and_the_header_does_not_grow_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let n = 3000;
    let keys: Vec<String> = (0..n)
        .map(|i| format!("cc3m/train/{:05}/{i:09}.jpg", i / 100))
        .collect();
    let image = rows(n, |r, c| (r * 7 + c) as f32);
    let text = rows(n, |r, c| if c == r % TEACHER_DIM { 3.0 } else { 0.0 });
    TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert!(header < 1024, "{header}-byte header");
    let t = TeacherFeatures::read(&p).unwrap();
    assert_eq!(t.metadata["tagfix.schema"], TEACHER_SCHEMA);
    assert_eq!(
        t.keys(),
        keys.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let row = t.row_of("cc3m/train/00017/000001717.jpg").unwrap();
    assert_eq!(row, 1717);
    assert_eq!(t.image_row(row).unwrap(), image[row * 512..(row + 1) * 512]);
    let unit = t.text_row(row).unwrap();
    assert_eq!(unit[row % TEACHER_DIM], 1.0);
}

/// Files of the first layout (keys in the metadata) and f16/bf16 features still read.
/// A `keys` tensor that is not a JSON array of strings, or holds another number of keys than
/// the features have rows, is refused with the file and what is wrong.
#[test]
fn keys_that_do_not_fit_the_rows_are_refused() {
    use crate::tensors::{Tensor, TensorSet};
    let dir = tempfile::tempdir().unwrap();
    let file = |keys: &str| {
        let zeros = rows(2, |_, _| 0.5);
        let set = TensorSet {
            tensors: vec![
                (
                    IMAGE_FEATURES.into(),
                    Tensor::from_f32(vec![2, TEACHER_DIM], &zeros).unwrap(),
                ),
                (
                    TEXT_FEATURES.into(),
                    Tensor::from_f32(vec![2, TEACHER_DIM], &zeros).unwrap(),
                ),
                (
                    KEYS.into(),
                    Tensor::new(DType::U8, vec![keys.len()], keys.as_bytes().to_vec()).unwrap(),
                ),
            ],
            metadata: [("tagfix.schema".to_string(), TEACHER_SCHEMA.to_string())].into(),
        };
        let p = dir.path().join("t.safetensors");
        safetensors_io::write(&p, &set).unwrap();
        TeacherFeatures::read(&p).map(|t| t.keys().join(","))
    };
    assert_eq!(file(r#"["a.jpg", "b\u00e9.jpg"]"#).unwrap(), "a.jpg,bé.jpg");
    for (keys, says) in [
        (r#"["a.jpg", 2]"#, "the `keys` tensor"),
        (r#"["a.jpg", "b.jpg""#, "the `keys` tensor"),
        (r#"{"a.jpg": 0}"#, "the `keys` tensor"),
        (r#"["a.jpg", "a.jpg"]"#, "key `a.jpg` appears twice"),
        (r#"["a.jpg"]"#, "image_features"),
        (r#"["a.jpg", "b.jpg", "c.jpg"]"#, "image_features"),
    ] {
        let err = file(keys).unwrap_err().to_string();
        assert!(
            err.contains("t.safetensors") && err.contains(says),
            "{keys}: {err}"
        );
    }
}

#[test]
fn version_1_files_and_half_precision_features_are_read() {
    use crate::tensors::{Tensor, TensorSet};
    let dir = tempfile::tempdir().unwrap();
    let keys = vec!["a.jpg".to_string(), "b.jpg".to_string()];
    let image = rows(2, |r, c| (r + c) as f32 / 4.0);
    let half: Vec<u8> = image
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let text = rows(2, |_, c| if c == 0 { 1.0 } else { 0.0 });
    let v1 = TensorSet {
        tensors: vec![
            (
                IMAGE_FEATURES.into(),
                Tensor::new(DType::F16, vec![2, TEACHER_DIM], half).unwrap(),
            ),
            (
                TEXT_FEATURES.into(),
                Tensor::from_f32(vec![2, TEACHER_DIM], &text).unwrap(),
            ),
        ],
        metadata: [
            ("tagfix.schema".to_string(), TEACHER_SCHEMA_V1.to_string()),
            (
                "tagfix.keys".to_string(),
                serde_json::to_string(&keys).unwrap(),
            ),
        ]
        .into(),
    };
    let p = dir.path().join("v1.safetensors");
    safetensors_io::write(&p, &v1).unwrap();
    let t = TeacherFeatures::read(&p).unwrap();
    assert_eq!(t.row_of("b.jpg"), Some(1));
    assert_eq!(t.image_row(1).unwrap(), image[512..]);
    assert_eq!(t.text_row(0).unwrap(), text[..512]);
}

/// A producer's own error comes back as it is, a wrong row count is refused, and neither leaves
/// a file.
#[test]
fn a_failing_or_short_producer_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let keys = vec!["a".to_string(), "b".to_string()];
    let two = rows(2, |_, _| 1.0);
    let err = write_streamed(
        &p,
        &keys,
        BTreeMap::new(),
        ImageRows::AllRead,
        |sink| sink.push(&two),
        |_| Err(TeacherError::RandomCaptionInFile.into()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("caption `random`"), "{err}");
    let err = write_streamed(
        &p,
        &keys,
        BTreeMap::new(),
        ImageRows::AllRead,
        |sink| sink.push(&two[..TEACHER_DIM]),
        |sink| sink.push(&two),
    )
    .unwrap_err();
    assert!(err.to_string().contains("1 rows computed for 2"), "{err}");
    // An unreadable image's row needs a file that flags it; text rows never take one.
    for (rows, image_unreadable) in [
        (ImageRows::AllRead, true),
        (ImageRows::MayBeUnreadable, false),
    ] {
        let err = write_streamed(
            &p,
            &keys,
            BTreeMap::new(),
            rows,
            |sink| match image_unreadable {
                true => sink
                    .push_unreadable()
                    .and_then(|()| sink.push(&two[..TEACHER_DIM])),
                false => sink.push(&two),
            },
            |sink| {
                sink.push_unreadable()
                    .and_then(|()| sink.push(&two[..TEACHER_DIM]))
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("without `image_unreadable`"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Rows pushed as unreadable are zeros flagged in `image_unreadable`, read back per row (in a
/// shard set too); a file written without such rows has no flags.
#[test]
fn unreadable_images_are_flagged_rows_of_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..5).map(|i| format!("{i}.jpg")).collect();
    let image = rows(5, |r, c| (r * 10 + c) as f32 + 1.0);
    let text = rows(5, |r, c| if c == r { 1.0 } else { 0.0 });
    let write = |path: &Path, range: Range<usize>, bad: &[usize], metadata| {
        write_streamed(
            path,
            &keys[range.clone()],
            metadata,
            ImageRows::MayBeUnreadable,
            |sink| {
                for r in range.clone() {
                    match bad.contains(&r) {
                        true => sink.push_unreadable()?,
                        false => sink.push(&image[r * TEACHER_DIM..(r + 1) * TEACHER_DIM])?,
                    }
                }
                Ok(())
            },
            |sink| sink.push(&text[range.start * TEACHER_DIM..range.end * TEACHER_DIM]),
        )
    };
    let p = dir.path().join("t.safetensors");
    write(&p, 0..5, &[1, 4], BTreeMap::new()).unwrap();
    let t = TeacherFeatures::read(&p).unwrap();
    let flagged: Vec<usize> = (0..6).filter(|&r| t.image_unreadable(r)).collect();
    assert_eq!((flagged, t.unreadable_images()), (vec![1, 4], 2));
    assert_eq!(t.image_row(1).unwrap(), vec![0.0; TEACHER_DIM]);
    assert_eq!(t.image_row(2).unwrap()[3], 24.0);
    assert_eq!(t.text_row(4).unwrap()[4], 1.0, "caption rows are all there");
    TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
    let t = TeacherFeatures::read(&p).unwrap();
    assert!((0..5).all(|r| !t.image_unreadable(r)));
    // Shards: each file flags its own rows, the set numbers them in set order.
    let set = dir.path().join("set");
    std::fs::create_dir(&set).unwrap();
    for index in 0..2 {
        let shard = shard::Shard { index, count: 2 };
        let metadata = [
            (shard::SHARD_KEY.to_string(), shard.to_string()),
            (shard::SET_RECORDS_KEY.to_string(), "5".to_string()),
        ]
        .into();
        write(
            &set.join(shard::TEACHER_SET.file_name(shard)),
            shard.range(5),
            &[0, 3],
            metadata,
        )
        .unwrap();
    }
    let t = TeacherFeatures::read(&set).unwrap();
    let flagged: Vec<usize> = (0..5).filter(|&r| t.image_unreadable(r)).collect();
    assert_eq!(flagged, vec![0, 3]);
}

/// Flags that are not u8 [keys] of 0 and 1 are refused, naming the file and what is wrong.
#[test]
fn bad_unreadable_flags_are_refused() {
    use crate::tensors::{Tensor, TensorSet};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let read = |flags: Tensor| {
        let half = rows(2, |_, _| 0.5);
        let keys = br#"["a.jpg","b.jpg"]"#.to_vec();
        let set = TensorSet {
            tensors: vec![
                (
                    IMAGE_FEATURES.into(),
                    Tensor::from_f32(vec![2, TEACHER_DIM], &half).unwrap(),
                ),
                (
                    TEXT_FEATURES.into(),
                    Tensor::from_f32(vec![2, TEACHER_DIM], &half).unwrap(),
                ),
                (
                    KEYS.into(),
                    Tensor::new(DType::U8, vec![keys.len()], keys).unwrap(),
                ),
                (IMAGE_UNREADABLE.into(), flags),
            ],
            metadata: [("tagfix.schema".to_string(), TEACHER_SCHEMA.to_string())].into(),
        };
        safetensors_io::write(&p, &set).unwrap();
        TeacherFeatures::read(&p).map(|t| t.unreadable_images())
    };
    let u8s = |v: &[u8]| Tensor::new(DType::U8, vec![v.len()], v.to_vec()).unwrap();
    assert_eq!(read(u8s(&[0, 1])).unwrap(), 1);
    for (flags, says) in [
        (
            u8s(&[0, 1, 0]),
            "`image_unreadable` is u8 [3]; it must be u8 [2]",
        ),
        (u8s(&[1]), "`image_unreadable` is u8 [1]"),
        (
            Tensor::from_f32(vec![2], &[0.0, 1.0]).unwrap(),
            "`image_unreadable` is f32 [2]",
        ),
        (u8s(&[0, 2]), "`image_unreadable` row 1 is 2"),
    ] {
        let err = read(flags).unwrap_err().to_string();
        assert!(err.contains("t.safetensors") && err.contains(says), "{err}");
    }
}

/// Every value is checked on opening (a block at a time); the error names the row and its key.
#[test]
fn a_non_finite_value_is_named_with_its_row_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    // Blocks are checked in parallel; the first bad row is named, not the first one found.
    let n = 3 * CHECK_ROWS + 5;
    let keys: Vec<String> = (0..n).map(|i| format!("{i}.jpg")).collect();
    let image = rows(n, |_, _| 0.5);
    let text = rows(n, |r, c| match (r, c) {
        (r, 9) if r == CHECK_ROWS + 3 => f32::NAN,
        (r, 0) if r == 3 * CHECK_ROWS + 1 => f32::INFINITY,
        (r, 5) if r == 2 * CHECK_ROWS => f32::NAN,
        _ => 1.0,
    });
    TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
    let err = TeacherFeatures::read(&p).unwrap_err().to_string();
    let row = CHECK_ROWS + 3;
    assert!(
        err.contains(&format!(
            "`text_features` row {row} ({row}.jpg) is not finite"
        )),
        "{err}"
    );
}

/// Split among ranks, the check of the values finds a bad row in exactly the part holding it,
/// within one file and across a set's shards.
#[test]
fn each_part_checks_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let n = 2 * CHECK_ROWS + 11;
    let bad = CHECK_ROWS + 7;
    let keys: Vec<String> = (0..n).map(|i| format!("{i}.jpg")).collect();
    let image = rows(n, |r, c| if (r, c) == (bad, 3) { f32::NAN } else { 0.5 });
    let text = rows(n, |_, _| 1.0);
    TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
    let set = dir.path().join("set");
    std::fs::create_dir(&set).unwrap();
    for index in 0..2 {
        // The bad row is the second shard's third.
        let shard = shard::Shard { index, count: 2 };
        let range = shard.range(n);
        let metadata: BTreeMap<String, String> = [
            (shard::SHARD_KEY.to_string(), shard.to_string()),
            (shard::SET_RECORDS_KEY.to_string(), n.to_string()),
        ]
        .into_iter()
        .collect();
        let slice = |t: &[f32]| t[range.start * TEACHER_DIM..range.end * TEACHER_DIM].to_vec();
        TeacherFeatures::write_with_metadata(
            &set.join(shard::TEACHER_SET.file_name(shard)),
            &keys[range.clone()],
            &slice(&image),
            &slice(&text),
            metadata,
        )
        .unwrap();
    }
    for path in [&p, &set] {
        for count in [1, 2, 3, 7] {
            let mut found = Vec::new();
            for index in 0..count {
                let share = WorkShare::new(index, count).unwrap();
                if let Err(e) = TeacherFeatures::read_checking(path, share) {
                    assert!(e.to_string().contains(&format!("({bad}.jpg)")), "{e}");
                    found.push(index);
                }
            }
            let holder = (0..count)
                .find(|&i| WorkShare::new(i, count).unwrap().range(n).contains(&bad))
                .unwrap();
            assert_eq!(found, [holder], "{}, {count} parts", path.display());
        }
    }
}

/// Writes shard `index` of `count` of a set of `keys` into `dir`, with `provenance`.
fn write_shard(
    dir: &Path,
    index: usize,
    count: usize,
    keys: &[String],
    provenance: &str,
) -> PathBuf {
    let shard = shard::Shard { index, count };
    let range = shard.range(keys.len());
    let image = rows(keys.len(), |r, c| (r * 1000 + c) as f32);
    let text = rows(keys.len(), |r, c| if c == r { 1.0 } else { 0.0 });
    let metadata: BTreeMap<String, String> = [
        (shard::SHARD_KEY, shard.to_string()),
        (shard::SET_RECORDS_KEY, keys.len().to_string()),
        ("tagfix.teacher.image_model_sha256", provenance.to_string()),
        ("tagfix.generator", format!("tagfix 0.{index}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let path = dir.join(shard::TEACHER_SET.file_name(shard));
    let cut = |v: &[f32]| v[range.start * TEACHER_DIM..range.end * TEACHER_DIM].to_vec();
    TeacherFeatures::write_with_metadata(
        &path,
        &keys[range.clone()],
        &cut(&image),
        &cut(&text),
        metadata,
    )
    .unwrap();
    path
}

/// The shards of a set read as one file of all their rows, in shard order.
#[test]
fn a_set_of_shards_reads_as_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("img/{i}.jpg")).collect();
    for i in [2, 0, 1] {
        write_shard(dir.path(), i, 3, &keys, "abc");
    }
    let t = TeacherFeatures::read(dir.path()).unwrap();
    assert_eq!(t.len(), 10);
    assert_eq!(t.files().len(), 3);
    assert_eq!(
        t.keys(),
        keys.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(!t.metadata.contains_key(shard::SHARD_KEY));
    for (row, key) in keys.iter().enumerate() {
        assert_eq!(t.row_of(key), Some(row));
        assert_eq!(
            t.image_row(row).unwrap()[7],
            (row * 1000 + 7) as f32,
            "{key}"
        );
        assert_eq!(t.text_row(row).unwrap()[row], 1.0, "{key}");
    }
    assert!(t.image_row(10).is_err(), "a row past the set's end");
}

/// Shards that do not form one set are refused, naming the file and what differs.
#[test]
fn shards_that_do_not_belong_together_are_refused() {
    let keys: Vec<String> = (0..6).map(|i| format!("{i}.jpg")).collect();
    let read = |dir: &Path| TeacherFeatures::read(dir).unwrap_err().to_string();
    // Another image tower in one shard.
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, 2, &keys, "abc");
    write_shard(dir.path(), 1, 2, &keys, "xyz");
    let err = read(dir.path());
    assert!(
        err.contains("teacher-00001-of-00002.safetensors was made differently from shard 0: tagfix.teacher.image_model_sha256 is `xyz` there, `abc` in shard 0"),
        "{err}"
    );
    // A shard file renamed to another place in the set.
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, 2, &keys, "abc");
    let one = write_shard(dir.path(), 1, 2, &keys, "abc");
    std::fs::copy(dir.path().join("teacher-00000-of-00002.safetensors"), &one).unwrap();
    let err = read(dir.path());
    assert!(
        err.contains("says it is shard 0/2, its name says 1/2"),
        "{err}"
    );
    // Two sets' shards: a record in both.
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, 2, &keys, "abc");
    let overlap: Vec<String> = keys.iter().rev().cloned().collect();
    write_shard(dir.path(), 1, 2, &overlap, "abc");
    let err = read(dir.path());
    assert!(err.contains("key `2.jpg` is in"), "{err}");
    assert!(
        err.contains("teacher-00000-of-00002.safetensors and in"),
        "{err}"
    );
    // A shard of another split of the records.
    let dir = tempfile::tempdir().unwrap();
    write_shard(dir.path(), 0, 2, &keys, "abc");
    write_shard(dir.path(), 1, 2, &keys[..4], "abc");
    let err = read(dir.path());
    assert!(
        err.contains("tagfix.teacher.set_records is `4` there, `6` in shard 0"),
        "{err}"
    );
}

/// A non-finite value in a shard is named with that shard's file and its row there.
#[test]
fn a_non_finite_value_in_a_shard_names_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..4).map(|i| format!("{i}.jpg")).collect();
    write_shard(dir.path(), 0, 2, &keys, "abc");
    let shard = shard::Shard { index: 1, count: 2 };
    let mut text = rows(2, |_, _| 1.0);
    text[TEACHER_DIM + 3] = f32::INFINITY;
    let metadata: BTreeMap<String, String> = [
        (shard::SHARD_KEY.to_string(), "1/2".to_string()),
        (shard::SET_RECORDS_KEY.to_string(), "4".to_string()),
        (
            "tagfix.teacher.image_model_sha256".to_string(),
            "abc".to_string(),
        ),
    ]
    .into();
    let path = dir.path().join(shard::TEACHER_SET.file_name(shard));
    TeacherFeatures::write_with_metadata(&path, &keys[2..], &rows(2, |_, _| 0.0), &text, metadata)
        .unwrap();
    let err = TeacherFeatures::read(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(
            "teacher-00001-of-00002.safetensors: `text_features` row 1 (3.jpg) is not finite"
        ),
        "{err}"
    );
}

/// A file cut short after it was opened gives an error for the rows it lost, not a panic.
#[test]
fn a_file_truncated_after_opening_fails_row_reads_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let keys = vec!["a".to_string(), "b".to_string()];
    TeacherFeatures::write(&p, &keys, &rows(2, |_, _| 1.0), &rows(2, |_, _| 1.0)).unwrap();
    let t = TeacherFeatures::read(&p).unwrap();
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert!(t.text_row(1).is_err());
}
