//! `tagfix eval` end to end on a small fixture (hand-computed numbers in src/eval/mod.rs) and on
//! the official benchmark format.

mod common;

use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn eval(args: &[&str], dir: &Path) -> std::process::Output {
    common::tagfix()
        .current_dir(dir)
        .arg("eval")
        .args(args)
        .output()
        .unwrap()
}

/// vocab: cat dog red_car tree boat; benchmark: cat, Dog, unicorn, boat.
fn fixture(dir: &Path) {
    write(dir, "vocab.txt", "cat\ndog\nred car\ntree\nboat");
    write(dir, "th.txt", "0.5\n0.55\n0.5\n0.5\n0.5\n");
    write(dir, "b_taglist.txt", "cat\nDog\nunicorn\nboat\n");
    write(
        dir,
        "b_annots.txt",
        "i1,cat,Dog\ni2,Dog\ni3,cat\ni4,Dog,unicorn\n",
    );
    write(
        dir,
        "s.csv",
        "image_id,slot_or_tag,score\ni1,cat,0.9\ni1,dog,0.6\ni1,4,0.1\ni2,0,0.8\ni2,1,0.7\ni2,4,0.2\n\
         i3,0,0.3\ni3,1,0.2\ni3,4,0.3\ni4,0,0.1\ni4,1,0.5\ni4,boat,0.4\n",
    );
}

/// `tagfix eval`'s arguments for [`fixture`]'s benchmark, scores and vocabulary.
const FIXTURE: [&str; 6] = [
    "--benchmark",
    ".",
    "--scores",
    "s.csv",
    "--vocab",
    "vocab.txt",
];

#[test]
fn eval_fixture_table_json_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(d);
    let common = [&FIXTURE[..], &["--thresholds", "th.txt"]].concat();
    let out = eval(&common, d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    // mAP 11/12 = 91.67 %, CF1 21/32 = 65.62 %.
    assert!(
        table.contains("91.67") && table.contains("65.62"),
        "{table}"
    );
    assert!(
        table.contains("unmapped benchmark tags: unicorn"),
        "{table}"
    );

    let out = eval(&[&common[..], &["--format", "json"]].concat(), d);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((v["main"]["map"].as_f64().unwrap() - 11.0 / 12.0).abs() < 1e-12);
    assert_eq!(v["no_positives"], serde_json::json!(["boat"]));

    let out = eval(
        &[&common[..], &["--format", "csv", "--out", "per_class.csv"]].concat(),
        d,
    );
    assert!(out.status.success());
    let csv = std::fs::read_to_string(d.join("per_class.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.lines()
            .nth(2)
            .unwrap()
            .starts_with("Dog,1,dog,normalized,unknown,3,2,2,1,1,"),
        "{csv}"
    );
}

#[test]
fn fitted_thresholds_keep_the_slot_order_and_raise_f1_on_the_benchmark() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(d);
    let common = FIXTURE;
    let out = eval(
        &[
            &common[..],
            &["--thresholds", "th.txt", "--fit-thresholds", "fit.txt"],
        ]
        .concat(),
        d,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The report is at the thresholds given (CF1 65.62 %, as above).
    assert!(String::from_utf8_lossy(&out.stdout).contains("65.62"));
    assert!(
        stderr.contains("thresholds of 2 slots fitted, 3 kept (1 mapped without a positive")
            && stderr.contains("0.6500 → 0.9000"),
        "{stderr}"
    );
    // cat (i1 0.9 +, i2 0.8, i3 0.3 +, i4 0.1): predicting i1..i3 gives F1 0.8, so 0.2; dog's three
    // positives score above its negative (0.5 < 0.2 < …): 0.35. Red car, tree (not in the benchmark)
    // and boat (no positive) keep theirs.
    let fitted = std::fs::read_to_string(d.join("fit.txt")).unwrap();
    assert_eq!(fitted, "0.2\n0.35\n0.5\n0.5\n0.5\n");
    let out = eval(&[&common[..], &["--thresholds", "fit.txt"]].concat(), d);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("90.91"),
        "CF1 at the fitted thresholds: {table}"
    );

    // Never over an input, and nothing half-written.
    let out = eval(
        &[
            &common[..],
            &["--thresholds", "th.txt", "--fit-thresholds", "th.txt"],
        ]
        .concat(),
        d,
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(d.join("th.txt")).unwrap(),
        "0.5\n0.55\n0.5\n0.5\n0.5\n"
    );
}

#[test]
fn eval_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(d);
    let base = ["--benchmark", ".", "--vocab", "vocab.txt", "--scores"];
    // A custom vocabulary has no threshold sidecar.
    let out = eval(&[&base[..], &["s.csv"]].concat(), d);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threshold"));
    write(d, "bad.csv", "i1,cat,0.9\ni2,cat,high\n");
    let out = eval(&[&base[..], &["bad.csv", "--threshold", "0.5"]].concat(), d);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.csv:2:"));
}

#[test]
fn eval_on_the_official_openimages_format() {
    let Some(shared) = common::shared_dir_for_test("eval_on_the_official_openimages_format") else {
        return;
    };
    let shared = shared.canonicalize().unwrap();
    let bench = shared.join("ram/benchmarks/openimages_common_214");
    let annots =
        std::fs::read_to_string(bench.join("openimages_common_214_ram_annots.txt")).unwrap();
    // Perfect scores: each image's ground-truth tags 1, everything else absent (0) -> mAP 100 %.
    let mut csv = String::from("image_id,tag,score\n");
    for line in annots.lines() {
        let mut f = line.split(',');
        let id = f.next().unwrap();
        let tags: Vec<&str> = f.collect();
        if !tags.contains(&"accident") {
            csv.push_str(&format!("{id},accident,0\n"));
        }
        for t in tags {
            csv.push_str(&format!("{id},{t},1\n"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "s.csv", &csv);
    let out = eval(
        &[
            "--benchmark",
            bench.to_str().unwrap(),
            "--scores",
            "s.csv",
            "--format",
            "json",
        ],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], 57224);
    assert_eq!(v["main"]["classes"], 214);
    assert_eq!(v["main"]["map"], 1.0);
    assert!(v["thresholds"]
        .as_str()
        .unwrap()
        .ends_with("ram_tag_list_threshold.txt"));
}

/// The reliability recipes: NaN or out-of-range scores (CSV and safetensors), a NaN or
/// out-of-range threshold, and a benchmark folder with two tag lists are refused with exit 2.
#[test]
fn eval_refuses_unusable_scores_thresholds_and_ambiguous_benchmarks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(d);
    let scores = |name: &str, values: &[f32]| {
        let set = tagfix::tensors::TensorSet {
            tensors: vec![(
                "scores".into(),
                tagfix::tensors::Tensor::from_f32(vec![4, 5], values).unwrap(),
            )],
            metadata: [(
                "image_ids".to_string(),
                "[\"i1\", \"i2\", \"i3\", \"i4\"]".to_string(),
            )]
            .into(),
        };
        tagfix::tensors::safetensors_io::write(&d.join(name), &set).unwrap();
    };
    let mut good = vec![0.25f32; 20];
    scores("good.safetensors", &good);
    good[7] = f32::NAN;
    scores("nan.safetensors", &good);
    good[7] = 1.5;
    scores("big.safetensors", &good);
    write(d, "neg.csv", "i1,cat,0.9\ni2,cat,-0.5\n");
    write(d, "nan.csv", "i1,cat,0.9\ni2,cat,NaN\n");
    write(d, "th_nan.txt", "0.5\nnan\n0.5\n0.5\n0.5\n");
    write(d, "th_big.txt", "0.5\n0.5\n2\n0.5\n0.5\n");
    let base = ["--benchmark", ".", "--vocab", "vocab.txt"];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--scores", "nan.safetensors", "--threshold", "0.5"],
            "nan.safetensors: `scores`[1, 2] (image `i2`, slot 2 `red car`) is NaN: a score must be a number",
        ),
        (
            &["--scores", "big.safetensors", "--threshold", "0.5"],
            "`scores`[1, 2] (image `i2`, slot 2 `red car`) is 1.5: scores are probabilities in [0, 1]",
        ),
        (
            &["--scores", "neg.csv", "--threshold", "0.5"],
            "neg.csv:2: score `-0.5`: scores are probabilities in [0, 1] (apply the sigmoid to logits)",
        ),
        (
            &["--scores", "nan.csv", "--threshold", "0.5"],
            "nan.csv:2: score `NaN`: a score must be a number",
        ),
        (
            &["--scores", "good.safetensors", "--threshold", "NaN"],
            "--threshold must lie in [0, 1], got NaN",
        ),
        (
            &["--scores", "good.safetensors", "--threshold", "1.2"],
            "--threshold must lie in [0, 1], got 1.2",
        ),
        (
            &["--scores", "good.safetensors", "--thresholds", "th_nan.txt"],
            "th_nan.txt:2: threshold `nan` is not a number in [0, 1]",
        ),
        (
            &["--scores", "good.safetensors", "--thresholds", "th_big.txt"],
            "th_big.txt:3: threshold `2` is not a number in [0, 1]",
        ),
    ];
    for (args, message) in cases {
        let out = eval(&[&base[..], args].concat(), d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(message),
            "{args:?}: expected `{message}` in: {err}"
        );
    }
    let ok = eval(
        &[
            &base[..],
            &["--scores", "good.safetensors", "--threshold", "0.5"],
        ]
        .concat(),
        d,
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A second tag list in the folder: which one the annotations index cannot be told.
    write(d, "c_taglist.txt", "cat\n");
    let out = eval(
        &[
            &base[..],
            &["--scores", "good.safetensors", "--threshold", "0.5"],
        ]
        .concat(),
        d,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("holds 2 files ending in `_taglist.txt` (b_taglist.txt, c_taglist.txt)"),
        "{err}"
    );
}

/// `ram_average_precision` against numpy running the official `_average_precision` steps
/// (`ram/utils/metrics.py`: `argsort()[::-1]`, cumulative positives over ranks, sum over the
/// positives / (positives + 1e-8)), restated here, where a Python with numpy is at hand: random
/// scores without ties (numpy's default sort), arrays with ties against `argsort(kind="stable")`
/// — the order tagfix fixes, since numpy's default sort orders ties as its build likes (the
/// AVX-512 numpy 2.4.6 here does not keep them in index order) — and a class without positives.
#[test]
fn ram_average_precision_equals_numpy_get_map_steps() {
    let root = common::crate_root();
    // scripts/setup.sh installs numpy into .venv-fixtures, so under CI a missing numpy is a failure.
    let python = [".venv-fixtures/bin/python", ".venv-bench/bin/python"];
    let Some(py) = python
        .map(|p| root.join(p))
        .into_iter()
        .chain(["python3".into()])
        .find(|py| {
            std::process::Command::new(py)
                .args(["-c", "import numpy"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .or_else(|| {
            common::skip(
                "ram_average_precision_equals_numpy_get_map_steps",
                "no Python here imports numpy (scripts/setup.sh puts one in .venv-fixtures)",
            )
        })
    else {
        return;
    };
    let mut cases: Vec<(Vec<f32>, Vec<bool>)> = Vec::new();
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for n in [5usize, 12, 16, 300] {
        let scores: Vec<f32> = (0..n)
            .map(|_| (next() % 100_000) as f32 / 100_000.0)
            .collect();
        let targets: Vec<bool> = (0..n).map(|_| next() % 3 == 0).collect();
        cases.push((scores, targets));
        // Ties (few distinct values) in a small array.
        let m = n.min(16);
        let tied: Vec<f32> = (0..m).map(|_| (next() % 3) as f32 / 2.0).collect();
        let t: Vec<bool> = (0..m).map(|_| next() % 2 == 0).collect();
        cases.push((tied, t));
    }
    cases.push((vec![0.3, 0.2, 0.9], vec![false, false, false]));
    let input: Vec<String> = cases
        .iter()
        .map(|(s, t)| {
            let s: Vec<String> = s.iter().map(|v| format!("{v:?}")).collect();
            let t: Vec<&str> = t.iter().map(|&b| if b { "1" } else { "0" }).collect();
            format!("{};{}", s.join(","), t.join(","))
        })
        .collect();
    let script = r#"
import sys, numpy as np
for line in sys.stdin.read().split("\n"):
    s, t = line.split(";")
    output = np.array([float(v) for v in s.split(",")], dtype=np.float32)
    target = np.array([float(v) for v in t.split(",")], dtype=np.float32)
    tied = len(np.unique(output)) < len(output)
    indices = (output.argsort(kind="stable") if tied else output.argsort())[::-1]
    ranks = np.cumsum(np.ones((len(output), 1)))
    hit = target[indices] == 1
    positives = np.cumsum(hit)
    total = positives[-1]
    positives[np.logical_not(hit)] = 0
    print(repr(float(np.sum(positives / ranks) / (total + 1e-8))))
"#;
    let mut child = std::process::Command::new(&py)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let want: Vec<f64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(want.len(), cases.len());
    for ((s, t), w) in cases.iter().zip(want) {
        let got = tagfix::eval::metrics::ram_average_precision(s, t);
        assert!(
            (got - w).abs() <= 1e-12,
            "{got} vs numpy {w} for {s:?} {t:?}"
        );
    }
}
