//! The project gates itself: `tagfix embed` re-embeds the fixture vocabulary with the real MiniLM
//! model, and `tagfix check` compares the result with the committed baseline
//! (fixtures/check/minilm-baseline.safetensors, made by scripts/make-check-fixture.sh) under
//! fixtures/check/policy.toml. A change to tokenisation, pooling, recipe or file writing that moves
//! the embeddings fails here.
#![cfg(feature = "embed")]

mod common;

use common::Context;
use std::path::Path;

#[test]
fn fixture_embeddings_match_the_committed_baseline() {
    let root = common::crate_root();
    let fixtures = root.join("fixtures/check");
    let test = "fixture_embeddings_match_the_committed_baseline";
    if common::setup_file("models/minilm/model.onnx", test).is_none() {
        return;
    }
    let ctx = Context::new()
        .quiet()
        .flag("--vocab", fixtures.join("tags.txt"));
    let fresh = ctx.path("fresh.safetensors");
    let out = ctx
        .cmd("embed")
        .current_dir(root)
        .args(["--model", "minilm", "--all", "--threads", "1"])
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
        ctx.cmd("check")
            .args(["--format", "json"])
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
    let swapped = ctx.path("swapped.safetensors");
    e.write(&swapped).unwrap();
    assert_eq!(check(&swapped).status.code(), Some(1));
}
