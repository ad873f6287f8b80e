//! A run that stops itself on a non-finite loss exits with its own status, 3 (bad input is 2), after
//! saving the state before the failing step.
#![cfg(feature = "train")]

mod common;

use common::train::{dataset, serial};

#[test]
fn a_diverging_run_exits_3_with_a_checkpoint() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 16, 1);
    let run = tmp.path().join("run");
    // A learning rate near f32's largest value overflows the weights in the first update.
    let out = assert_cmd::Command::cargo_bin("tagfix")
        .unwrap()
        .args(["train", "--model", "tiny", "--allow-random-encoder"])
        .arg("--data")
        .arg(&ds.annotations)
        .arg("--images")
        .arg(&ds.image_root)
        .arg("--manifest")
        .arg(&ds.manifest)
        .arg("--label-embed")
        .arg(&ds.label_embed)
        .args(["--max-steps", "5", "--batch-size", "4", "--lr", "1e38"])
        .args(["--set", "warmup_lr=1e38", "--set", "min_lr=1e38"])
        .args(["--workers", "1", "--threads", "1", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("is NaN") || err.contains("is inf"),
        "names the non-finite value: {err}"
    );
    assert!(
        err.contains("training stopped. The state before this step is saved in"),
        "{err}"
    );
    let saved = std::fs::read_dir(run.join("checkpoints")).unwrap().count();
    assert!(saved > 0, "a checkpoint of the last good state");
}
