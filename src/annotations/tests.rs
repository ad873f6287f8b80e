use super::*;
use std::io::Write;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
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
        .unwrap_err()
        .to_string();
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
        .unwrap_err()
        .to_string();
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
        .unwrap_err()
        .to_string();
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
        .unwrap_err()
        .to_string();
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
