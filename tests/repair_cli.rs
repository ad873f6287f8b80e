//! `tagfix repair` end to end on the embedded default (real RAM vocabulary, real MiniLM model).
#![cfg(feature = "embed")]

mod common;

use assert_cmd::Command;

#[test]
fn repair_runs_the_whole_pipeline_and_reports() {
    let Some(shared) = common::shared_dir_for_test("repair_cli") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A space in the path: the report's command lines must quote it.
    let out = dir.path().join("run dir");
    let assert = Command::cargo_bin("tagfix")
        .unwrap()
        .env("TAGFIX_SHARED", &shared)
        .args([
            "--quiet",
            "repair",
            "--records",
            "3000",
            "--absent",
            "144",
            "--control",
            "50",
            "--train-steps",
            "24",
            "--out",
        ])
        .arg(&out)
        .assert()
        .code(0);
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    assert!(stdout.contains("# tagfix repair report"));
    assert!(report.contains("**144 slots are absent**"), "{report}");
    assert!(report.contains("144 rows regenerated in place"), "{report}");
    assert!(report.contains("Verdict: **PASS**"), "{report}");
    // Each step's line splits, as a shell splits it, into the words of its command line.
    let steps: Vec<Vec<String>> = report
        .lines()
        .skip_while(|l| !l.starts_with("## Steps"))
        .take_while(|l| !l.starts_with("## On real data"))
        .filter_map(|l| l.split_once("    # "))
        .map(|(line, _)| shlex::split(line).unwrap_or_else(|| panic!("unquotable: {line}")))
        .collect();
    assert!(steps.len() >= 4, "{report}");
    for words in &steps {
        assert_eq!(words[0], "tagfix", "{words:?}");
    }
    let diff = steps.iter().find(|w| w[1] == "diff").expect("a diff step");
    let manifest_arg = diff.iter().position(|w| w == "--out").map(|i| &diff[i + 1]);
    assert_eq!(
        manifest_arg.map(std::path::PathBuf::from),
        Some(out.join("manifest.json"))
    );
    for f in [
        "manifest.json",
        "diff.md",
        "embeddings.safetensors",
        "check.md",
        "check.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The manifest's absent slots are exactly the regenerated rows of the patched file.
    let manifest = tagfix::manifest::SlotManifest::read(&out.join("manifest.json")).unwrap();
    let emb = tagfix::tensors::EmbeddingFile::read(
        &out.join("embeddings.safetensors"),
        Some("embeddings"),
    )
    .unwrap();
    let prov = tagfix::tensors::Provenance::from_metadata(&emb.metadata, &out.join("e"))
        .unwrap()
        .unwrap();
    assert_eq!(prov.regenerated_slots, manifest.absent_slots());

    // The short train: the small RAM++ on the synthetic images with the patched 384-d MiniLM rows.
    assert!(report.contains("## Trained (train)"), "{report}");
    if cfg!(feature = "train") {
        let run = out.join("train");
        let records = tagfix::monitor::read_all_records(&run.join("metrics.jsonl")).unwrap();
        assert_eq!(records.len(), 24);
        assert!(run
            .join("checkpoints/step-00000024/model.safetensors")
            .is_file());
        let summary = tagfix::monitor::RunSummary::read(&run).unwrap();
        let (early, late) = (summary.early["tag"], summary.late["tag"]);
        assert!(late < early, "tag loss {early} → {late} did not fall");
        // Four significant digits of the summary's means, e.g. "`tag`: 185.3 → 10.69".
        let line = report
            .lines()
            .find_map(|l| l.trim().strip_prefix("- `tag`: "))
            .unwrap_or_else(|| panic!("no tag loss line: {report}"));
        let shown: Vec<f64> = line.split(" → ").map(|v| v.parse().unwrap()).collect();
        for (shown, exact) in shown.iter().zip([early, late]) {
            assert!((shown - exact).abs() <= 1e-3 * exact, "{line} vs {exact}");
        }
        // The training curves are drawn and listed.
        for name in ["tag", "total", "grad_norm"] {
            assert!(run.join(format!("plots/{name}.png")).is_file(), "{name}");
        }
        assert!(
            report.contains("- training curves (PNG, SVG): `"),
            "{report}"
        );
        // The image set's tags are real RAM slots, so they are present in the manifest.
        for tag in ["red", "circle"] {
            let slot = manifest.slots.iter().find(|s| s.tag == tag).unwrap();
            assert_eq!(slot.status, tagfix::manifest::SlotStatus::Present, "{tag}");
            assert!(
                report.contains(&format!("{} `{tag}`", slot.slot)),
                "{report}"
            );
        }
        assert!(report.contains("--device cuda"), "{report}");
    } else {
        assert!(report.contains("without the `train` feature"), "{report}");
    }
}

#[test]
fn repair_without_a_base_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.json");
    std::fs::write(
        &data,
        r#"[{"image_path":"a.jpg","caption":["x"],"union_label_id":[0],"parse_label_id":[[0]]}]"#,
    )
    .unwrap();
    let vocab = dir.path().join("v.txt");
    std::fs::write(&vocab, "cat\ndog\n").unwrap();
    let assert = Command::cargo_bin("tagfix")
        .unwrap()
        .env("TAGFIX_SHARED", dir.path().join("nowhere"))
        .args(["--quiet", "repair", "--vocab"])
        .arg(&vocab)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("run"))
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(stderr.contains("--base FILE"), "{stderr}");
}
