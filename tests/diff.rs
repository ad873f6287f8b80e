//! `tagfix diff` and `tagfix synth` end to end: the real RAM vocabulary with 144 absent slots, an
//! independent count of every slot, the index shift of a compacted tag list, and every kind of bad
//! input with its error text and exit status.

mod common;

use assert_cmd::Command;
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tagfix() -> Command {
    let mut c = common::tagfix();
    c.arg("--quiet");
    c
}

/// The real RAM tag list from ../shared; `None` (with the reason printed) when absent, a failure
/// under CI.
fn real_vocabulary(test: &str) -> Option<Vec<String>> {
    let p = common::shared_file("ram/data/ram_tag_list.txt", test)?;
    Some(
        std::fs::read_to_string(p)
            .unwrap()
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect(),
    )
}

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Per slot: records whose union / parse ids hold it, counted straight from the JSON.
fn independent_counts(files: &[Value], slots: usize) -> (Vec<u64>, Vec<u64>) {
    let (mut union, mut parse) = (vec![0u64; slots], vec![0u64; slots]);
    for records in files {
        for r in records.as_array().unwrap() {
            let u: HashSet<u64> = r["union_label_id"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let p: HashSet<u64> = r["parse_label_id"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|l| l.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
                .collect();
            u.into_iter().for_each(|s| union[s as usize] += 1);
            p.into_iter().for_each(|s| parse[s as usize] += 1);
        }
    }
    (union, parse)
}

fn read_records(path: &Path, gzip: bool, jsonl: bool) -> Value {
    let mut text = String::new();
    let file = std::fs::File::open(path).unwrap();
    if gzip {
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text).unwrap();
    } else {
        std::io::Read::read_to_string(&mut std::io::BufReader::new(file), &mut text).unwrap();
    }
    if jsonl {
        Value::Array(
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

fn synth(dir: &Path, name: &str, records: u64, extra: &[&str]) -> (PathBuf, Vec<usize>) {
    let out = dir.join(name);
    let summary = run_json(
        tagfix()
            .args([
                "synth",
                "--vocab",
                "ram",
                "--records",
                &records.to_string(),
                "--json",
                "--out",
            ])
            .arg(&out)
            .args(extra),
    );
    let absent = summary["absent_slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    (out, absent)
}

#[test]
fn real_vocabulary_with_144_absent_slots_is_reported_exactly() {
    let Some(tags) = real_vocabulary("real_vocabulary_with_144_absent_slots_is_reported_exactly")
    else {
        return;
    };
    assert_eq!(tags.len(), 4585);
    let dir = tempfile::tempdir().unwrap();
    let (a, absent) = synth(
        dir.path(),
        "a.json",
        3000,
        &["--absent", "144", "--seed", "42"],
    );
    assert_eq!(absent.len(), 144);
    let list: Vec<String> = absent.iter().map(|s| s.to_string()).collect();
    // a second file, JSON Lines + gzip, with the same absent slots and other image paths
    let (b, absent_b) = synth(
        dir.path(),
        "b.jsonl.gz",
        1500,
        &[
            "--absent-slots",
            &list.join(","),
            "--seed",
            "43",
            "--jsonl",
            "--gzip",
        ],
    );
    assert_eq!(absent_b, absent);
    // synth names images by record number: give the second set its own paths
    let b_text = read_records(&b, true, true);
    let renamed: Vec<String> = b_text
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["image_path"] =
                Value::String(format!("second/{}", r["image_path"].as_str().unwrap()));
            r.to_string()
        })
        .collect();
    let mut gz =
        flate2::write::GzEncoder::new(std::fs::File::create(&b).unwrap(), Default::default());
    gz.write_all((renamed.join("\n") + "\n").as_bytes())
        .unwrap();
    gz.finish().unwrap();

    let manifest_path = dir.path().join("manifest.json");
    let report = run_json(
        tagfix()
            .args(["diff", "--vocab", "ram", "--format", "json", "--data"])
            .arg(&a)
            .arg(&b)
            .arg("--out")
            .arg(&manifest_path),
    );
    let reported: Vec<(usize, String)> = report["absent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["slot"].as_u64().unwrap() as usize,
                e["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(usize, String)> = absent.iter().map(|s| (*s, tags[*s].clone())).collect();
    assert_eq!(reported, expected);
    assert_eq!(report["summary"]["absent"], 144);
    assert_eq!(report["summary"]["present"], 4585 - 144);
    assert_eq!(report["summary"]["records"], 4500);
    assert_eq!(report["preset_status"], "official");
    assert!(report["sidecars_source"]
        .as_str()
        .unwrap()
        .contains("preset `ram`"));

    let (union, parse) = independent_counts(
        &[read_records(&a, false, false), read_records(&b, true, true)],
        4585,
    );
    let slots = report["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 4585);
    for (i, s) in slots.iter().enumerate() {
        assert_eq!(s["slot"], i);
        assert_eq!(s["tag"], tags[i].as_str());
        assert_eq!(s["union"], union[i], "union count of slot {i}");
        assert_eq!(s["parse"], parse[i], "parse count of slot {i}");
        let status = if union[i] > 0 { "present" } else { "absent" };
        assert_eq!(s["status"], status, "slot {i}");
    }

    let manifest = tagfix::manifest::SlotManifest::read(&manifest_path).unwrap();
    assert_eq!(manifest.absent_slots(), absent);
    assert_eq!(manifest.summary.records, 4500);
    assert_eq!(manifest.inputs.len(), 2);
    let vocab = tagfix::vocab::Vocabulary::load("ram").unwrap();
    manifest.check_vocabulary(&vocab, &manifest_path).unwrap();
}

#[test]
fn compacted_tag_list_gets_the_right_index_shift_report() {
    let Some(tags) = real_vocabulary("compacted_tag_list_gets_the_right_index_shift_report") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (data, absent) = synth(
        dir.path(),
        "d.json",
        2000,
        &["--absent", "144", "--seed", "5"],
    );
    let absent_set: BTreeSet<usize> = absent.iter().copied().collect();
    let mut compacted: Vec<String> = (0..tags.len())
        .filter(|s| !absent_set.contains(s))
        .map(|s| tags[s].clone())
        .collect();
    assert_eq!(compacted.len(), 4441);
    // two rows as a user might have retyped them: matched after normalisation
    let (k1, k2) = (10, 4000);
    let original = (compacted[k1].clone(), compacted[k2].clone());
    compacted[k1] = format!(" {} ", compacted[k1].to_uppercase());
    compacted[k2] = compacted[k2].replace(' ', "_");
    let list = dir.path().join("tag_list_4441.txt");
    std::fs::write(&list, compacted.join("\n") + "\n").unwrap();

    let report = run_json(
        tagfix()
            .args(["diff", "--vocab", "ram", "--format", "json", "--data"])
            .arg(&data)
            .arg("--tags")
            .arg(&list),
    );
    let d = &report["derived"];
    assert_eq!(d["rows"], 4441);
    // independent: row j is misaligned when its tag is not slot j's tag
    let misaligned: Vec<usize> = (0..4441)
        .filter(|&j| original_tag(&compacted, &original, j, k1, k2) != tags[j])
        .collect();
    assert_eq!(d["shift"]["first_misaligned_row"], misaligned[0]);
    assert_eq!(misaligned[0], absent[0]);
    assert_eq!(d["shift"]["misaligned_rows"], misaligned.len());
    assert_eq!(d["dropped_slots"], serde_json::json!(absent));
    assert_eq!(d["dropped_but_present"], serde_json::json!([]));
    assert_eq!(d["absent_but_kept"], serde_json::json!([]));
    let normalized_rows: Vec<u64> = d["mapping"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["rule"] == "normalized")
        .map(|m| m["row"].as_u64().unwrap())
        .collect();
    // a tag with no space is unchanged by `_`-replacement and then matches exactly
    let expect_k2 = original.1.contains(' ');
    assert_eq!(
        normalized_rows,
        if expect_k2 {
            vec![k1 as u64, k2 as u64]
        } else {
            vec![k1 as u64]
        }
    );
    assert_eq!(d["exact"], 4441 - normalized_rows.len());
    let old_to_new = d["old_to_new"].as_array().unwrap();
    for (old, new) in old_to_new.iter().enumerate() {
        if absent_set.contains(&old) {
            assert!(new.is_null(), "slot {old} is dropped");
        } else {
            let below = absent_set.range(..old).count();
            assert_eq!(new, &serde_json::json!(old - below), "slot {old}");
        }
    }
    // the readable report says it too, and --fail-on shift turns it into exit status 1
    let out = tagfix()
        .args(["diff", "--vocab", "ram", "--data"])
        .arg(&data)
        .arg("--tags")
        .arg(&list)
        .args(["--fail-on", "shift"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "{} rows would point at the wrong tag; the first is row {}",
            misaligned.len(),
            absent[0]
        )),
        "{text}"
    );
    assert!(
        text.contains("the dropped slots are exactly the absent ones"),
        "{text}"
    );
}

fn original_tag<'a>(
    rows: &'a [String],
    original: &'a (String, String),
    j: usize,
    k1: usize,
    k2: usize,
) -> &'a str {
    if j == k1 {
        &original.0
    } else if j == k2 {
        &original.1
    } else {
        &rows[j]
    }
}

// ----- small vocabulary, bad inputs -----

const TAGS: &str = "cat\ndog\nemu\nfox\ngnu\n";

fn rec(path: &str, union: &str, parse: &str) -> String {
    format!(
        r#"{{"image_path": "{path}", "caption": ["a caption"], "union_label_id": {union}, "parse_label_id": {parse}}}"#
    )
}

struct Case {
    dir: tempfile::TempDir,
    vocab: PathBuf,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vocab = dir.path().join("tags.txt");
        std::fs::write(&vocab, TAGS).unwrap();
        Case { dir, vocab }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn array(&self, name: &str, records: &[String]) -> PathBuf {
        self.file(name, format!("[\n{}\n]\n", records.join(",\n")).as_bytes())
    }

    fn diff(&self, data: &Path, extra: &[&str]) -> std::process::Output {
        tagfix()
            .arg("diff")
            .arg("--vocab")
            .arg(&self.vocab)
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(self.dir.path().join("manifest.json"))
            .args(extra)
            .output()
            .unwrap()
    }

    /// Exit status 2, the message on stderr, and no manifest left behind.
    fn expect_error(&self, data: &Path, extra: &[&str], needle: &str) {
        let out = self.diff(data, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {err}");
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
        assert!(
            !self.dir.path().join("manifest.json").exists(),
            "a manifest was written on error"
        );
        let leftovers: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

fn good_records() -> Vec<String> {
    vec![
        rec("a.jpg", "[0, 1]", "[[0]]"),
        rec("b.jpg", "[1, 2]", "[[2]]"),
        rec("c.jpg", "[3, 4]", "[[]]"),
    ]
}

#[test]
fn per_record_problems_name_file_line_column_and_record() {
    let c = Case::new();
    let cases: Vec<(&str, String, &str)> = vec![
        ("range.json", rec("x.jpg", "[0, 5]", "[[0]]"), "union_label_id[1] = 5 is out of range: the vocabulary has 5 slots (0..=4)"),
        ("negative.json", rec("x.jpg", "[-1]", "[[0]]"), "union_label_id[0] = -1 is negative"),
        ("float.json", rec("x.jpg", "[1.5]", "[[0]]"), "union_label_id[0] = 1.5 is not an integer label id"),
        ("string.json", rec("x.jpg", "[0]", "[[\"2\"]]"), "parse_label_id[0][0] = \"2\" is not an integer label id"),
        ("parse_range.json", rec("x.jpg", "[0]", "[[0, 9]]"), "parse_label_id[0][1] = 9 is out of range"),
        ("empty.json", rec("x.jpg", "[]", "[[]]"), "union_label_id is empty: the record carries no tag"),
        ("mismatch.json", rec("x.jpg", "[0]", "[[0], [1]]"), "parse_label_id holds 2 lists for 1 captions"),
        ("missing.json", r#"{"image_path": "x.jpg", "caption": ["c"], "parse_label_id": [[0]]}"#.to_string(), "missing field `union_label_id`"),
        ("type.json", r#"{"image_path": "x.jpg", "caption": "c", "union_label_id": [0], "parse_label_id": [[0]]}"#.to_string(), "invalid type: string \"c\", expected a list of captions"),
        ("dup.json", rec("a.jpg", "[0]", "[[0]]"), "duplicate image_path \"a.jpg\": the same as record 0 (line 2, column 1)"),
    ];
    for (name, bad, message) in cases {
        let mut records = good_records();
        records.insert(2, bad);
        let data = c.array(name, &records);
        let column = if name == "type.json" { 38 } else { 1 };
        c.expect_error(
            &data,
            &[],
            &format!("{name}:4:{column}: record 2: {message}"),
        );
        // --keep-going records it and continues: exit 0, or 1 under --fail-on
        let out = c.diff(&data, &["--keep-going", "--format", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["summary"]["records"], 4, "{name}");
        assert_eq!(report["problems"]["details"][0]["record"], 2, "{name}");
        assert_eq!(report["problems"]["details"][0]["line"], 4, "{name}");
        assert!(c.dir.path().join("manifest.json").exists());
        let category =
            if name == "range.json" || name == "negative.json" || name == "parse_range.json" {
                "unknown"
            } else {
                "malformed"
            };
        let out = c.diff(&data, &["--keep-going", "--fail-on", category]);
        assert_eq!(out.status.code(), Some(1), "{name} --fail-on {category}");
        std::fs::remove_file(c.dir.path().join("manifest.json")).unwrap();
    }
}

#[test]
fn syntax_errors_and_truncation_are_located() {
    let c = Case::new();
    let mut records = good_records();
    records[1] = r#"{"image_path": "b.jpg", "caption": ["a caption"] "union_label_id": [1], "parse_label_id": [[2]]}"#.into();
    let bad = c.array("syntax.json", &records);
    c.expect_error(&bad, &[], "syntax.json:3:50: record 1: expected `,` or `}`");

    let whole = format!("[\n{}\n]\n", good_records().join(",\n"));
    let cut = c.file("cut.json", &whole.as_bytes()[..whole.len() - 30]);
    c.expect_error(&cut, &[], "cut.json:4:");
    c.expect_error(
        &cut,
        &[],
        "record 2: the file ends inside record 2 (which starts at line 4, column 1): truncated?",
    );
    let open = c.file(
        "open.json",
        format!("[\n{},\n", good_records()[0]).as_bytes(),
    );
    c.expect_error(
        &open,
        &[],
        "the file ends before the array's closing `]` (after 1 records): truncated?",
    );
    let jsonl_cut = c.file(
        "cut.jsonl",
        format!("{}\n{}", good_records()[0], &good_records()[1][..40]).as_bytes(),
    );
    c.expect_error(&jsonl_cut, &[], "cut.jsonl:2:40: record 1: EOF while parsing a string: the record is cut short (truncated file?)");
    let trailing = c.file(
        "comma.json",
        format!("[\n{},\n]", good_records()[0]).as_bytes(),
    );
    c.expect_error(
        &trailing,
        &[],
        "comma.json:3:1: record 1: expected record 1 after `,`, found `]`",
    );

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    gz.write_all(whole.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let gz_cut = c.file("cut.json.gz", &gz[..gz.len() / 2]);
    c.expect_error(
        &gz_cut,
        &[],
        "cut.json.gz: gzip stream is corrupt or truncated",
    );
}

#[test]
fn empty_missing_bom_crlf_and_non_json_inputs() {
    let c = Case::new();
    let empty = c.file("empty.json", b"");
    c.expect_error(
        &empty,
        &[],
        "empty.json:1:1: the file is empty (expected a JSON array of records or JSON Lines)",
    );
    let blank = c.file("blank.jsonl", b"\n  \n");
    c.expect_error(&blank, &[], "blank.jsonl:3:1: the file is empty");
    c.expect_error(
        &c.dir.path().join("nope.json"),
        &[],
        "nope.json: cannot read annotation file",
    );
    c.expect_error(c.dir.path(), &[], "is a directory, not an annotation file");
    let text = c.file("notes.txt", b"hello\n");
    c.expect_error(
        &text,
        &[],
        "notes.txt:1:1: expected `[` (a JSON array of records) or `{` (JSON Lines), found `h`",
    );

    let with_bom = c.file(
        "bom.json",
        format!("\u{feff}[\n{}\n]\n", good_records().join(",\n")).as_bytes(),
    );
    c.expect_error(&with_bom, &[], "bom.json:1:1: the file starts with a UTF-8 byte-order mark (BOM); RAM's loader (Python json.load) refuses it");
    let out = c.diff(&with_bom, &["--keep-going", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["records"], 3);
    assert_eq!(report["problems"]["counts"]["byte-order-mark"], 1);
    std::fs::remove_file(c.dir.path().join("manifest.json")).unwrap();

    // CRLF is valid JSON (and Python reads it): counted normally, positions still right
    let crlf = c.file(
        "crlf.json",
        format!("[\r\n{}\r\n]\r\n", good_records().join(",\r\n")).as_bytes(),
    );
    let out = c.diff(&crlf, &["--format", "csv"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1,dog,present,2,0"));
    std::fs::remove_file(c.dir.path().join("manifest.json")).unwrap();
    let mut records = good_records();
    records[2] = rec("c.jpg", "[3, 7]", "[[]]");
    let crlf_bad = c.file("crlf_bad.jsonl", (records.join("\r\n") + "\r\n").as_bytes());
    c.expect_error(
        &crlf_bad,
        &[],
        "crlf_bad.jsonl:3:1: record 2: union_label_id[1] = 7 is out of range",
    );
}

#[test]
fn fail_on_absent_formats_and_sidecars() {
    let c = Case::new();
    let data = c.array(
        "d.json",
        &[
            rec("a.jpg", "[0, 1]", "[[0]]"),
            rec("b.jpg", "[1, 3]", "[[3]]"),
        ],
    );
    let out = c.diff(&data, &[]);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Absent slots (2)") && table.contains("emu") && table.contains("gnu"),
        "{table}"
    );
    let out = c.diff(&data, &["--fail-on", "absent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("check failed (--fail-on absent): 2 of 5 slots are absent"));

    let out = c.diff(&data, &["--format", "csv"]);
    let csv = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "slot,tag,status,union,parse");
    assert_eq!(
        lines[1..],
        [
            "0,cat,present,1,1",
            "1,dog,present,2,0",
            "2,emu,absent,0,0",
            "3,fox,present,1,1",
            "4,gnu,absent,0,0"
        ]
    );
    let out = c.diff(&data, &["--format", "markdown"]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("## Absent slots (2)") && md.contains("| 2    | emu |"),
        "{md}"
    );

    let zh = c.file("zh.txt", "猫 \n狗\n\n狐\n角马\n".as_bytes());
    let th = c.file("th.txt", b"0.5\n0.7\n1.5\nx\n");
    let out = c.diff(
        &data,
        &[
            "--format",
            "json",
            "--sidecar",
            &format!("zh={}", zh.display()),
            "--sidecar",
            &format!("threshold={}", th.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let zh_issues = &report["sidecars"][0]["issues"];
    assert_eq!(zh_issues[0]["severity"], "warning");
    let find = |issues: &Value, what: &str| -> Value {
        issues
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["message"].as_str().unwrap().contains(what))
            .unwrap_or_else(|| panic!("{what}: {issues}"))["lines"]
            .clone()
    };
    assert_eq!(
        find(zh_issues, "trailing whitespace"),
        serde_json::json!([1])
    );
    assert_eq!(find(zh_issues, "empty line"), serde_json::json!([3]));
    let th_issues = &report["sidecars"][1]["issues"];
    assert_eq!(
        find(th_issues, "4 lines for 5 slots"),
        serde_json::json!([5])
    );
    assert_eq!(find(th_issues, "outside [0, 1]"), serde_json::json!([3]));
    assert_eq!(find(th_issues, "not a number"), serde_json::json!([4]));
    let out = c.diff(
        &data,
        &[
            "--sidecar",
            &format!("threshold={}", th.display()),
            "--fail-on",
            "sidecar",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sidecar errors in threshold"));
}

#[test]
fn synth_is_atomic_and_refuses_bad_requests() {
    let c = Case::new();
    let out = tagfix()
        .args(["synth", "--records", "10", "--absent", "5", "--vocab"])
        .arg(&c.vocab)
        .arg("--out")
        .arg(c.dir.path().join("all_absent.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 absent slots leave no present slot"));
    assert!(!c.dir.path().join("all_absent.json").exists());
    let out = tagfix()
        .args([
            "synth",
            "--records",
            "10",
            "--absent-slots",
            "1,9",
            "--vocab",
        ])
        .arg(&c.vocab)
        .arg("--out")
        .arg(c.dir.path().join("x.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "--absent-slots `1,9`: slot 9 is out of range: the vocabulary has 5 slots (0..=4)"
    ));
    let out = tagfix()
        .args(["synth", "--records", "10", "--vocab"])
        .arg(&c.vocab)
        .arg("--out")
        .arg(c.dir.path().join("missing_dir/x.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// The reliability reproducers (`../shared/reliability/`): invalid UTF-8 in a field `diff` never
/// reads (a caption) is a problem at the byte's file:line:column, as `train` and `teacher` report it.
#[test]
fn invalid_utf8_reproducers_are_refused_at_the_byte() {
    let Some(shared) = common::shared_dir_for_test("invalid_utf8_reproducers") else {
        return;
    };
    let c = Case {
        vocab: "ram".into(),
        ..Case::new()
    };
    for (name, place, record, byte) in [
        ("diff_accepts_invalid_utf8_caption.jsonl", "4:54", 3, "0xFF"),
        ("diff_accepts_overlong_utf8.jsonl", "1:40", 0, "0xC0"),
        ("diff_passes_train_refuses_badutf8.json", "1:32", 0, "0xFF"),
    ] {
        let data = shared.join("reliability").join(name);
        c.expect_error(
            &data,
            &[],
            &format!(
                "{}:{place}: record {record}: invalid UTF-8 (byte {byte})",
                data.display()
            ),
        );
        let out = c.diff(&data, &["--keep-going", "--format", "json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["problems"]["counts"]["invalid-utf8"], 1, "{name}");
        let out = c.diff(&data, &["--keep-going", "--fail-on", "malformed"]);
        assert_eq!(out.status.code(), Some(1), "{name} --fail-on malformed");
        std::fs::remove_file(c.dir.path().join("manifest.json")).unwrap();
    }
}
