//! A run that stops itself on a non-finite loss exits with its own status, 3 (bad input is 2), after
//! saving the state before the failing step; a run a stop signal ends (SIGTERM, SIGINT) saves the step
//! in progress and exits with 128 + the signal, and `--resume` finishes it.
#![cfg(feature = "train")]

mod common;

use common::train::{dataset, serial, signal_after_steps, train_argv, wait_bounded};
use std::process::{Command, Stdio};
use std::time::Duration;

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

#[test]
fn a_stop_signal_mid_run_checkpoints_the_step_and_exits_128_plus_the_signal() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 16, 2);
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let run = tmp.path().join(name);
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
            .args(train_argv(&ds))
            .args([
                "--max-steps",
                "100000",
                "--batch-size",
                "4",
                "--workers",
                "1",
            ])
            .args(["--threads", "1", "--checkpoint-every", "off", "--out"])
            .arg(&run)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        signal_after_steps(&mut child, &run.join("metrics.jsonl"), 3, signal);
        // Without the handler the run would go on for 100000 steps (or die without a checkpoint).
        let out = wait_bounded(child, Duration::from_secs(120));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + signal), "{name}: {err}");
        assert!(
            err.contains(&format!("{name}: training stops after the current step")),
            "{name}: {err}"
        );
        assert!(
            err.contains("continue with `tagfix train --resume"),
            "{err}"
        );

        // The checkpoint holds the last step logged, and nothing half-written is left.
        let logged = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count() as u64;
        let newest =
            tagfix::train::run::newest_checkpoint_in(&run.join("checkpoints"), "state.json")
                .unwrap()
                .expect("a checkpoint");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(newest.join("state.json")).unwrap()).unwrap();
        assert_eq!(state["step"].as_u64(), Some(logged), "{name}: {state}");
        assert!(logged >= 3);
        assert_eq!(
            std::fs::read_dir(run.join("checkpoints")).unwrap().count(),
            1
        );

        // `--resume` goes on from it.
        let more = (logged + 2).to_string();
        let out = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
            .args(["train", "--quiet", "--max-steps", &more, "--resume"])
            .arg(&run)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: resume: {err}");
        let steps: Vec<u64> = tagfix::monitor::read_all_records(&run.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, (1..=logged + 2).collect::<Vec<_>>(), "{name}");
    }
}
