use super::*;
use std::io::Write;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The error as the CLI prints it: with its sources (`diff` names the first problem as the source
/// of [`AnnotationError::Stopped`]).
fn chain(e: crate::error::Error) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

fn opts(n: usize, keep_going: bool) -> ScanOptions {
    ScanOptions {
        keep_going,
        batch_bytes: 64,
        ..ScanOptions::new(n)
    }
}

const GOOD: &str = r#"[
{"image_path": "a.jpg", "caption": ["x", "y"], "union_label_id": [0, 2, 2], "parse_label_id": [[0], [0, 2]]},
{"image_path": "b.jpg", "caption": ["z"], "union_label_id": [2], "parse_label_id": [[]]}
]"#;

#[test]
fn counts_records_per_slot_once_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", GOOD);
    let b = write(
        dir.path(),
        "b.jsonl",
        "{\"image_path\": \"c.jpg\", \"caption\": [\"q\"], \"union_label_id\": [1], \"parse_label_id\": [[1]]}\r\n",
    );
    let gz = dir.path().join("c.data");
    let mut enc =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), Default::default());
    enc.write_all(
        GOOD.replace("a.jpg", "a2.jpg")
            .replace("b.jpg", "b2.jpg")
            .as_bytes(),
    )
    .unwrap();
    enc.finish().unwrap();
    let scan = scan_files(&[a, b, gz], &opts(4, false)).unwrap();
    assert_eq!(scan.union, vec![2, 1, 4, 0]);
    assert_eq!(scan.parse, vec![2, 1, 2, 0]);
    assert_eq!(scan.records, 5);
    assert_eq!(scan.problems.total(), 0);
    assert_eq!(scan.files[0].layout, Some(Layout::JsonArray));
    assert_eq!(scan.files[1].layout, Some(Layout::JsonLines));
    assert!(scan.files[2].gzip && !scan.files[0].gzip);
}

#[test]
fn first_problem_stops_with_position_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace("[2], \"parse", "[2, 7], \"parse");
    let a = write(dir.path(), "a.json", &text);
    let err = scan_files(std::slice::from_ref(&a), &opts(4, false))
        .map_err(chain)
        .unwrap_err();
    assert!(
        err.contains("a.json:3:1: record 1: union_label_id[1] = 7 is out of range"),
        "{err}"
    );
    let scan = scan_files(&[a], &opts(4, true)).unwrap();
    assert_eq!(scan.problems.count(ProblemCategory::Unknown), 1);
    assert_eq!(scan.unknown_ids.get(&7), Some(&1));
    assert_eq!(scan.union, vec![1, 0, 2, 0]);
}

#[test]
fn syntax_error_inside_a_record_is_placed_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[\n{\"image_path\": \"a.jpg\",\n \"caption\": [\"x\"] \"union_label_id\": [1]}\n]";
    let a = write(dir.path(), "a.json", text);
    let err = scan_files(std::slice::from_ref(&a), &opts(4, false))
        .map_err(chain)
        .unwrap_err();
    assert!(
        err.contains("a.json:3:19: record 0: expected `,` or `}`"),
        "{err}"
    );
    let scan = scan_files(&[a], &opts(4, true)).unwrap();
    assert_eq!(
        scan.problems.counts.get(&ProblemKind::InvalidRecord),
        Some(&1)
    );
}

#[test]
fn duplicates_are_found_across_files_with_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", GOOD);
    let b = write(dir.path(), "b.json", GOOD);
    let err = scan_files(&[a.clone(), b.clone()], &opts(4, false))
        .map_err(chain)
        .unwrap_err();
    assert!(
        err.contains("b.json:2:1: record 0: duplicate image_path \"a.jpg\""),
        "{err}"
    );
    assert!(err.contains("a.json line 2, column 1"), "{err}");
    let scan = scan_files(&[a, b], &opts(4, true)).unwrap();
    assert_eq!(
        scan.problems.counts.get(&ProblemKind::DuplicateImagePath),
        Some(&2)
    );
}

/// Found by `scripts/fuzz.sh` (target `annotations`): the second pass also read the path of records
/// the first pass had refused, found more duplicates than it had counted and underflowed
/// (a panic in debug builds, a huge `details_dropped` in release).
#[test]
fn duplicates_of_unreadable_records_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let text = "{\"image_path\": \"a.jpg\", \"union_label_id\": [1]}\n\
                {\"image_path\": \"b.jpg\", \"union_label_id\": {\"k\": 1}}\n\
                {\"image_path\": \"a.jpg\", \"union_label_id\": [1]}\n\
                {\"image_path\": \"b.jpg\", \"union_label_id\": 1.5}\n";
    let a = write(dir.path(), "a.jsonl", text);
    let scan = scan_files(&[a], &opts(4, true)).unwrap();
    let dups: Vec<_> = scan
        .problems
        .details
        .iter()
        .filter(|p| p.kind == ProblemKind::DuplicateImagePath)
        .collect();
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0].record, Some(2));
    assert_eq!(
        scan.problems.counts.get(&ProblemKind::DuplicateImagePath),
        Some(&1)
    );
    assert_eq!(
        scan.problems.counts.get(&ProblemKind::InvalidRecord),
        Some(&2)
    );
    assert_eq!(scan.problems.details_dropped, 0);
}

#[test]
fn bom_is_an_error_unless_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.json", &format!("\u{feff}{GOOD}"));
    let err = scan_files(std::slice::from_ref(&a), &opts(4, false))
        .map_err(chain)
        .unwrap_err();
    assert!(
        err.contains("a.json:1:1: the file starts with a UTF-8 byte-order mark"),
        "{err}"
    );
    let scan = scan_files(&[a], &opts(4, true)).unwrap();
    assert_eq!(scan.records, 2);
    assert_eq!(
        scan.problems.counts.get(&ProblemKind::ByteOrderMark),
        Some(&1)
    );
}

#[test]
fn details_are_capped_but_counts_are_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("[");
    for i in 0..50 {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            "{{\"image_path\": \"{i}.jpg\", \"caption\": [], \"union_label_id\": [], \"parse_label_id\": []}}\n"
        ));
    }
    text.push(']');
    let a = write(dir.path(), "a.json", &text);
    let o = ScanOptions {
        max_details: 10,
        ..opts(4, true)
    };
    let scan = scan_files(&[a], &o).unwrap();
    assert_eq!(
        scan.problems.counts.get(&ProblemKind::EmptyLabels),
        Some(&100)
    );
    assert_eq!(scan.problems.details.len(), 10);
    assert_eq!(scan.problems.details_dropped, 90);
    assert_eq!(scan.problems.details[0].record, Some(0));
}

#[test]
fn invalid_utf8_anywhere_is_refused_by_diff_and_train_at_the_same_place() {
    let dir = tempfile::tempdir().unwrap();
    // An unread field (caption), an overlong '/' (C0 AF) and a byte that starts no character, in a
    // JSON array (second line of record 1) and in JSON Lines (third line).
    let array = b"[\n{\"image_path\": \"a.jpg\", \"caption\": [\"x\"], \"union_label_id\": [1], \"parse_label_id\": [[1]]},\n{\"image_path\": \"b.jpg\",\n  \"caption\": [\"a \xC0\xAF cat\"], \"union_label_id\": [2], \"parse_label_id\": [[2]]}\n]";
    let lines = b"{\"image_path\": \"a.jpg\", \"caption\": [\"x\"], \"union_label_id\": [1], \"parse_label_id\": [[1]]}\n\n{\"image_path\": \"b.jpg\", \"caption\": [\"\xFF\xFEx\"], \"union_label_id\": [2], \"parse_label_id\": [[2]]}\n";
    for (name, bytes, place, record, byte) in [
        ("a.json", &array[..], "a.json:4:18", 1, "0xC0"),
        ("b.jsonl", &lines[..], "b.jsonl:3:38", 1, "0xFF"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let diff = scan_files(std::slice::from_ref(&p), &opts(4, false))
            .map_err(chain)
            .unwrap_err();
        let expected = format!("{place}: record {record}: invalid UTF-8 (byte {byte})");
        assert!(diff.contains(&expected), "{diff}");
        let scan = scan_files(std::slice::from_ref(&p), &opts(4, true)).unwrap();
        assert_eq!(
            scan.problems.counts.get(&ProblemKind::InvalidUtf8),
            Some(&1)
        );
        let train = crate::annotations::records::RecordSet::read(&[p], 4)
            .map_err(chain)
            .unwrap_err();
        assert!(train.contains(&expected), "{train}");
    }
}

#[test]
fn diff_passes_exactly_what_the_training_reader_reads() {
    let dir = tempfile::tempdir().unwrap();
    let line = |rest: &str| {
        format!("{{\"image_path\": \"a.jpg\", \"union_label_id\": [1], \"parse_label_id\": [[1]], {rest}}}\n")
    };
    for (rest, ok) in [
        ("\"caption\": [\"x\"]", true),
        // a repeated key keeps its last value (as Python's json)
        ("\"caption\": [\"x\"], \"image_path\": \"b.jpg\"", true),
        ("\"caption\": [\"x\", 3]", false),
        ("\"caption\": [\"\\ud800\"]", false),
        ("\"caption\": [\"x\"], \"image_path\": 7", false),
    ] {
        let p = write(dir.path(), "a.jsonl", &line(rest));
        let diff = scan_files(std::slice::from_ref(&p), &opts(4, false));
        let train = crate::annotations::records::RecordSet::read_with(
            &[p],
            crate::annotations::records::ReadOptions {
                num_slots: Some(4),
                captions: true,
            },
        );
        assert_eq!(diff.is_ok(), ok, "{rest}: diff {:?}", diff.err());
        assert_eq!(train.is_ok(), ok, "{rest}: train {:?}", train.err());
        if let Ok(set) = train {
            assert_eq!(set.get(0).captions.to_vec(), ["x"]);
        }
    }
}

/// The error `diff` stops with (the first problem, under [`AnnotationError::Stopped`]).
fn diff_problem(path: &Path, slots: usize) -> String {
    match scan_files(&[path.to_path_buf()], &opts(slots, false)) {
        Err(crate::error::Error::Annotation(AnnotationError::Stopped { first })) => {
            first.to_string()
        }
        other => panic!("diff did not stop at a problem: {other:?}"),
    }
}

#[test]
fn the_same_bad_record_gets_the_same_error_from_diff_train_and_teacher() {
    use crate::annotations::records::{ReadOptions, RecordSet};
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"image_path": "a.jpg", "caption": ["x"], "union_label_id": [1], "parse_label_id": [[1]]}"#;
    // (second record, whether the teacher reads what is wrong with it: it reads no labels)
    let bad: [(&[u8], bool); 6] = [
        (br#"{"caption": ["y"], "union_label_id": [2], "parse_label_id": [[2]]}"#, true),
        (br#"{"image_path": "b.jpg", "caption": ["y", 3], "union_label_id": [2], "parse_label_id": [[2], []]}"#, true),
        (b"{\"image_path\": \"b.jpg\", \"caption\": [\"\xC0\xAF\"], \"union_label_id\": [2], \"parse_label_id\": [[2]]}", true),
        (br#"{"image_path": "b.jpg", "caption": ["y"] "union_label_id": [2]}"#, true),
        (br#"{"image_path": "b.jpg", "caption": ["y"], "union_label_id": [2, 9], "parse_label_id": [[2]]}"#, false),
        (br#"{"image_path": "b.jpg", "caption": ["y"], "union_label_id": [-1], "parse_label_id": [[2]]}"#, false),
    ];
    for (k, (record, teacher_reads_it)) in bad.into_iter().enumerate() {
        for array in [true, false] {
            let mut text = Vec::new();
            text.extend_from_slice(if array { b"[\n  " } else { b"" });
            text.extend_from_slice(good.as_bytes());
            text.extend_from_slice(if array { b",\n  " } else { b"\n" });
            text.extend_from_slice(record);
            text.extend_from_slice(if array { b"\n]\n" } else { b"\n" });
            let p = dir.path().join(format!("bad{k}.json"));
            std::fs::write(&p, &text).unwrap();
            let diff = diff_problem(&p, 4);
            // the bad record's line: after `[` and the good record, or after the good line
            let line = format!("{}:{}:", p.display(), if array { 3 } else { 2 });
            assert!(
                diff.starts_with(&line) && diff.contains(": record 1: "),
                "{diff}"
            );
            let train = RecordSet::read(std::slice::from_ref(&p), 4)
                .unwrap_err()
                .to_string();
            assert_eq!(train, diff, "train and diff");
            let teacher = ReadOptions {
                num_slots: None,
                captions: true,
            };
            let teacher = RecordSet::read_with(std::slice::from_ref(&p), teacher);
            if teacher_reads_it {
                assert_eq!(teacher.unwrap_err().to_string(), diff, "teacher and diff");
            } else {
                assert_eq!(teacher.unwrap().len(), 2);
            }
        }
    }
}
