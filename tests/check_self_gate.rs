//! The project gates itself: `tagfix embed` re-embeds the fixture vocabulary with the real MiniLM
//! model, and `tagfix check` compares the result with the committed baseline
//! (fixtures/check/minilm-baseline.safetensors, made by scripts/make-check-fixture.sh) under
//! fixtures/check/policy.toml. A change to tokenisation, pooling, recipe or file writing that moves
//! the embeddings fails here.
#![cfg(feature = "embed")]

use assert_cmd::Command;
use std::path::Path;

#[test]
fn fixture_embeddings_match_the_committed_baseline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("fixtures/check");
    if !root.join("models/minilm/model.onnx").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "models/minilm is missing: run scripts/setup.sh (CI must not skip this test)"
        );
        eprintln!("SKIPPED fixture_embeddings_match_the_committed_baseline: run scripts/setup.sh for models/minilm");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.safetensors");
    let out = Command::cargo_bin("tagfix")
        .unwrap()
        .current_dir(root)
        .args([
            "-q",
            "embed",
            "--model",
            "minilm",
            "--all",
            "--threads",
            "1",
            "--vocab",
        ])
        .arg(fixtures.join("tags.txt"))
        .arg("--out")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "embed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = |candidate: &Path| {
        Command::cargo_bin("tagfix")
            .unwrap()
            .args(["-q", "check", "--format", "json", "--vocab"])
            .arg(fixtures.join("tags.txt"))
            .arg("--policy")
            .arg(fixtures.join("policy.toml"))
            .arg("--baseline")
            .arg(fixtures.join("minilm-baseline.safetensors"))
            .arg("--candidate")
            .arg(candidate)
            .output()
            .unwrap()
    };
    let out = check(&fresh);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The gate is not toothless: the same rows one slot out of place fail it.
    let mut e = tagfix::tensors::EmbeddingFile::read(&fresh, None).unwrap();
    let (first, second) = (e.row(0).to_vec(), e.row(1).to_vec());
    e.row_mut(0).copy_from_slice(&second);
    e.row_mut(1).copy_from_slice(&first);
    let swapped = dir.path().join("swapped.safetensors");
    e.write(&swapped).unwrap();
    assert_eq!(check(&swapped).status.code(), Some(1));
}
