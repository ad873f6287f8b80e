//! `tagfix repair` end to end on the embedded default (real RAM vocabulary, real MiniLM model).
#![cfg(feature = "embed")]

use assert_cmd::Command;

#[test]
fn repair_runs_the_whole_pipeline_and_reports() {
    let Some(shared) = tagfix::fsutil::shared_dir_for_test("repair_cli") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
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
