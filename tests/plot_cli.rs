//! `tagfix plot` on a synthetic run with known events: files written, PNG size, summary, errors;
//! and every plot of a run shaped like the main job's (`tagfix repair`'s 40-step train) looked at.

mod plot_common;

use assert_cmd::Command;
use plot_common::{assert_drawn_png, assert_texts, svg_texts};
use tagfix::monitor::synthetic::{Anomaly, SyntheticRun};
use tagfix::monitor::{DetectorConfig, LossTerm, RunDir, RunMonitor, TermValue};

fn synthetic_run_dir(root: &std::path::Path) -> RunDir {
    let run = SyntheticRun {
        steps: 800,
        anomalies: vec![Anomaly::Spike {
            term: LossTerm::Tag,
            at: 400,
            len: 2,
            factor: 5.0,
        }],
        ..SyntheticRun::default()
    };
    let dir = RunDir::create(root).unwrap();
    let mut m = RunMonitor::start(&dir, DetectorConfig::default()).unwrap();
    for r in run.records() {
        m.record(&r).unwrap();
    }
    m.finish().unwrap();
    dir
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn plot_writes_png_and_svg_per_term_and_lists_events() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synthetic_run_dir(&tmp.path().join("run"));
    let out = Command::cargo_bin("tagfix")
        .unwrap()
        .args(["plot", "-q"])
        .arg(dir.root())
        .args(["--smooth", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("800 steps, 1 health events"), "{stdout}");
    assert!(
        stdout.contains("spike") && stdout.contains("400-401"),
        "{stdout}"
    );
    for name in ["tag", "align", "dis", "total", "grad_norm", "pace"] {
        let png = dir.plots_dir().join(format!("{name}.png"));
        assert_eq!(png_size(&png), (1400, 900));
        let svg = std::fs::read_to_string(dir.plots_dir().join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("learning rate"),
            "{name}.svg"
        );
    }
    assert!(
        !dir.plots_dir().join("validation.png").exists(),
        "no validation.jsonl, no validation figure"
    );
    // The tag weight is 1: one panel; align (weight 10) has raw and weighted panels.
    let tag_svg = dir.plots_dir().join("tag.svg");
    assert_texts(
        &tag_svg,
        &[
            "event: spike",
            "tag loss",
            "thick: EMA over 20 steps; faint: each step",
        ],
    );
    assert!(!svg_texts(&tag_svg).iter().any(|t| t.contains("weighted:")));
    assert_texts(
        &dir.plots_dir().join("align.svg"),
        &[
            "align raw",
            "align weighted",
            "align loss, weighted: raw × 10",
        ],
    );
    let align_svg = std::fs::read_to_string(dir.plots_dir().join("align.svg")).unwrap();
    assert!(
        !align_svg.contains("event: spike"),
        "the tag spike is not an align event"
    );
}

#[test]
fn plot_redetects_with_thresholds_and_prints_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = synthetic_run_dir(&tmp.path().join("run"));
    let cfg = tmp.path().join("thresholds.toml");
    std::fs::write(&cfg, "[spike]\nenabled = false\n").unwrap();
    let out = Command::cargo_bin("tagfix")
        .unwrap()
        .args(["plot", "-q", "--detect", "--json", "--out"])
        .arg(tmp.path().join("figs"))
        .arg("--thresholds")
        .arg(&cfg)
        .arg(dir.root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(events, serde_json::json!([]));
    assert!(tmp.path().join("figs/tag.png").is_file());
}

/// Runs `tagfix plot DIR`.
fn plot(dir: &std::path::Path) -> std::process::Output {
    Command::cargo_bin("tagfix")
        .unwrap()
        .arg("plot")
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn plot_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = plot(tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no metrics.jsonl"));

    std::fs::write(tmp.path().join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let out = plot(tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics.jsonl:1:"), "{err}");
}

#[test]
fn plot_draws_validation_when_the_run_validated() {
    use tagfix::eval::{Counts, Summary};
    use tagfix::monitor::{ValidationRecord, ValidationWriter};
    let tmp = tempfile::tempdir().unwrap();
    let dir = synthetic_run_dir(&tmp.path().join("run"));
    let mut w = ValidationWriter::append(&dir.validation_path()).unwrap();
    for (step, ap) in [
        (0u64, 0.31),
        (200, 0.52),
        (400, 0.64),
        (600, 0.70),
        (800, 0.73),
    ] {
        let counts = Counts {
            positives: 10,
            predicted: 8,
            true_positives: (ap * 10.0) as u64,
        };
        w.write(&ValidationRecord {
            step,
            benchmark: "bench".into(),
            images: 10,
            left_out: 0,
            main: Summary::of([(ap, counts)]),
            absent: Summary::of([(ap / 2.0, counts)]),
        })
        .unwrap();
    }
    drop(w);
    let out = plot(dir.root());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        png_size(&dir.plots_dir().join("validation.png")),
        (1400, 900)
    );
    let svg = std::fs::read_to_string(dir.plots_dir().join("validation.svg")).unwrap();
    for want in [
        "validation on bench",
        "mAP (present slots)",
        "mAP (absent slots)",
        "CF1",
        "learning rate",
        "event: spike",
    ] {
        assert!(svg.contains(want), "validation.svg lacks `{want}`");
    }
    // A malformed validation line is an error naming the file and line.
    std::fs::write(dir.validation_path(), "{\"step\": \"x\"}\n").unwrap();
    let out = plot(dir.root());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("validation.jsonl:1:"), "{err}");
}

/// A run shaped like the main job's training (`tagfix repair`: 40 steps, only the tag term, weight
/// 1, the loss falling from about 700 to 10): every figure is drawn, smoothed over a tenth of the
/// run (not 50 steps, which would show the first steps' level to the end), and its legend names
/// what it shows.
#[test]
fn every_plot_of_a_short_main_job_run_is_drawn_and_labelled() {
    let tmp = tempfile::tempdir().unwrap();
    let run = SyntheticRun {
        steps: 40,
        warmup: 5,
        ..SyntheticRun::default()
    };
    let dir = RunDir::create(&tmp.path().join("train")).unwrap();
    let mut m = RunMonitor::start(&dir, DetectorConfig::default()).unwrap();
    for (i, mut r) in run.records().into_iter().enumerate() {
        let tag = 700.0 * (10.0f64 / 700.0).powf(i as f64 / 39.0);
        r.loss = Default::default();
        r.loss.set(LossTerm::Tag, TermValue::new(tag, 1.0));
        r.total = tag;
        m.record(&r).unwrap();
    }
    m.finish().unwrap();
    let out = plot(dir.root());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("40 steps"));
    let plots = dir.plots_dir();
    let mut names: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grad_norm.png",
            "grad_norm.svg",
            "pace.png",
            "pace.svg",
            "tag.png",
            "tag.svg",
            "total.png",
            "total.svg"
        ]
    );
    for name in ["tag", "total", "grad_norm", "pace"] {
        assert_drawn_png(&plots.join(format!("{name}.png")), (1400, 900));
    }
    let smoothing = "thick: EMA over 4 steps; faint: each step";
    let lr = "learning rate (right axis)";
    // One panel (weight 1), on a log scale (700 → 10), the reduction named.
    let tag = plots.join("tag.svg");
    assert_texts(
        &tag,
        &[
            "tag loss",
            smoothing,
            lr,
            "tag loss: ASL summed over images × tags (weight 1: weighted = raw), log scale",
        ],
    );
    assert_eq!(
        svg_texts(&tag).iter().filter(|t| *t == "step").count(),
        1,
        "one panel"
    );
    // The total is the tag term: drawn once, saying so.
    let total = plots.join("total.svg");
    assert_texts(&total, &["total (= tag weighted)", smoothing, lr]);
    assert!(!svg_texts(&total).iter().any(|t| t == "tag weighted"));
    assert_texts(
        &plots.join("grad_norm.svg"),
        &[
            "image_encoder",
            "tagging_head",
            "projections",
            smoothing,
            lr,
            "gradient norm per module group (before clipping)",
        ],
    );
    // The pace: images per second above, the wait for data below, each with the learning rate.
    let pace = plots.join("pace.svg");
    assert_texts(
        &pace,
        &[
            "images/s",
            "data wait",
            smoothing,
            lr,
            "images per second of each step (validation and checkpoints between steps not counted)",
            "time each step waited for its micro-batches (data loading behind the steps)",
        ],
    );
    assert_eq!(
        svg_texts(&pace).iter().filter(|t| *t == "step").count(),
        2,
        "two panels"
    );
}
