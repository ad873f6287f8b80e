//! A run that stops itself on a non-finite loss exits with its own status, 3 (bad input is 2), after
//! saving the state before the failing step; a run a stop signal ends (SIGTERM, SIGINT) saves the step
//! in progress and exits with 128 + the signal, and `--resume` finishes it; `--auto-resume` starts,
//! continues and starts again; `--dry-run` checks a run's start without writing.
#![cfg(feature = "train")]

mod common;

use common::train::{
    dataset, limit, serial, signal_after_steps, train_argv, wait_bounded, VALIDATE_4096_AT_ONCE,
};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A run of 100000 steps without periodic checkpoints into `run`, for a test to signal; `stdio` makes
/// its stdout and stderr.
fn spawn_endless(
    ds: &tagfix::train::data::synth::SynthDataset,
    run: &std::path::Path,
    stdio: fn() -> Stdio,
    validate_every_step: bool,
) -> std::process::Child {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("tagfix"));
    c.args(train_argv(ds));
    if validate_every_step {
        c.arg("--val-data").arg(&ds.annotations).args([
            "--val-every",
            "1",
            "--val-max-images",
            "4",
        ]);
    }
    c.args([
        "--max-steps",
        "100000",
        "--batch-size",
        "4",
        "--workers",
        "1",
    ])
    .args(["--threads", "1", "--checkpoint-every", "off", "--out"])
    .arg(run)
    .stdout(stdio())
    .stderr(stdio())
    .spawn()
    .unwrap()
}

/// A checkpoint the file system cannot take (here a file-size limit, as `ulimit -f` sets on shared
/// machines; a full disk or quota fails the same write) stops the run with an error naming the
/// newest checkpoint, and leaves no partial files; the next start removes those a killed process
/// left, and the resume goes on.
#[test]
fn a_checkpoint_that_cannot_be_written_leaves_nothing_and_names_the_newest() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 16, 4);
    let run = tmp.path().join("run");
    let train = |max_steps: &str, file_limit: Option<u64>| {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("tagfix"));
        c.args(train_argv(&ds))
            .args(["--batch-size", "4", "--workers", "1", "--threads", "1"])
            .args(["--checkpoint-every", "1", "--max-steps", max_steps, "--out"])
            .arg(&run);
        if run.exists() {
            c.arg("--resume").arg(&run);
        }
        if let Some(bytes) = file_limit {
            limit(&mut c, libc::RLIMIT_FSIZE, bytes);
        }
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = train("1", None);
    assert_eq!(code, Some(0), "{err}");
    let ckpts = run.join("checkpoints");
    let size = |name: &str| {
        std::fs::metadata(ckpts.join("step-00000001").join(name))
            .unwrap()
            .len()
    };
    let (model, moments) = (size("model.safetensors"), size("optimizer.safetensors"));
    assert!(model < moments, "{model} {moments}");
    // What a process killed while writing step 7 left.
    let killed = ckpts.join(".step-00000007.tmp");
    std::fs::create_dir(&killed).unwrap();
    std::fs::write(killed.join("model.safetensors"), vec![0u8; 1000]).unwrap();
    // The model file fits under the limit, the optimizer state does not.
    let (code, err) = train("2", Some(moments - 1));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(".step-00000007.tmp (1000 B): a checkpoint whose write never finished"),
        "{err}"
    );
    assert!(
        err.contains("step-00000002: checkpoint not written (its partial files removed); the newest written is ")
            && err.contains("step-00000001, which --resume continues from")
            // The file and the system's words, not Rust's debug form of the error.
            && err.contains(".step-00000002.tmp/optimizer.safetensors: File too large (os error 27)"),
        "{err}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["step-00000001"]);
    let (code, err) = train("2", None);
    assert_eq!(code, Some(0), "{err}");
    let list = tagfix::fsutil::checksums::verify_folder(
        &ckpts.join("step-00000002"),
        &tagfix::train::run_files::CHECKPOINT_FILES,
    );
    assert_eq!(list.unwrap(), tagfix::fsutil::checksums::Verified::Matched);
}

/// Runs tagfix with `args`, its address space limited to `address_space` bytes where given, and
/// with the threads that take address space independent of the machine's core count; returns the
/// exit status and standard error.
fn tagfix_limited(args: &[&std::ffi::OsStr], address_space: Option<u64>) -> (Option<i32>, String) {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("tagfix"));
    c.args(args).args(["--threads", "1"]);
    c.env("RAYON_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MALLOC_ARENA_MAX", "2");
    if let Some(bytes) = address_space {
        limit(&mut c, libc::RLIMIT_AS, bytes);
    }
    let o = c.output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// libtorch running out of memory in the middle of a run (here the host's, under an address-space
/// limit, in a validation of every image in one batch) ended it with Rust's panic message, exit
/// status 101 and the steps since the last checkpoint lost. Now the run saves those steps, exits 2
/// saying where they are and which batch to make smaller, and `--resume` goes on from them. A step
/// whose micro-batch is too large names a smaller `--micro-batch-size`; `tagfix tag` with a batch too
/// large for the memory likewise exits 2 and writes nothing.
#[test]
fn running_out_of_memory_saves_the_steps_taken_and_names_the_batch_to_make_smaller() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 4096, 4);
    let run = tmp.path().join("run");
    // `tagfix train` into `dir`: a new run there, or a resume of the one it holds.
    let train_in = |dir: &std::path::Path, args: &[&str], address_space: Option<u64>| {
        let mut argv: Vec<std::ffi::OsString> = if dir.exists() {
            vec!["train".into(), "--resume".into(), dir.into()]
        } else {
            let mut a = train_argv(&ds);
            a.extend(["--out".into(), dir.into()]);
            a
        };
        argv.extend(
            ["--workers", "1"]
                .into_iter()
                .chain(args.iter().copied())
                .map(Into::into),
        );
        let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        tagfix_limited(&argv, address_space)
    };
    let train = |args: &[&str], address_space: Option<u64>| train_in(&run, args, address_space);
    // The run takes ≈ 0.8 GB of address space; validating 4096 images at once takes over 1.5 GB.
    let limit = Some(1_200_000_000);
    let annotations = ds.annotations.to_str().unwrap();
    let (code, err) = train(
        &[
            "--batch-size",
            "64",
            "--max-steps",
            "1",
            "--val-data",
            annotations,
            "--val-max-images",
            "64",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = train(
        &[
            &["--max-steps", "4", "--val-every", "3"][..],
            &VALIDATE_4096_AT_ONCE,
        ]
        .concat(),
        limit,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(
            "validation at step 3: libtorch failed: DefaultCPUAllocator: can't allocate memory"
        ) && err.contains("The state after step 3 is saved in ")
            && err.contains("step-00000003; continue with `tagfix train --resume ")
            && err.contains(
                "Validating 4096 images at a time ran out of memory: `--set val_batch_size=N`"
            ),
        "{err}"
    );
    let saved = run.join("checkpoints").join("step-00000003");
    let (state, verified) = tagfix::train::run_files::read_whole_checkpoint(&saved).unwrap();
    assert_eq!(
        (state.step, verified),
        (3, tagfix::fsutil::checksums::Verified::Matched)
    );
    let (code, err) = train(
        &["--val-max-images", "64", "--set", "val_batch_size=64"],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("resuming from ") && err.contains("at step 3"),
        "{err}"
    );
    // After the last step only the validation that failed is left: the message says the model is
    // trained, and a resume runs that validation.
    let (code, err) = train(
        &[&["--max-steps", "5"][..], &VALIDATE_4096_AT_ONCE].concat(),
        limit,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("validation at step 5: libtorch failed: ")
            && err.contains("Every step is taken: the trained state after step 5 is saved in ")
            && err.contains("; `tagfix train --resume ")
            && err.contains(" runs the validation that failed."),
        "{err}"
    );
    let (code, err) = train(
        &["--val-max-images", "64", "--set", "val_batch_size=64"],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    // Each validation that failed is run by the resume that follows it.
    let validated: Vec<u64> = tagfix::monitor::read_validation(&run.join("validation.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(validated, [0, 1, 3, 4, 5]);

    // In a step: a resume whose micro-batch is the whole batch of 2048 images (step 1's 64 fit).
    let big = tmp.path().join("big");
    let train_big = |args: &[&str], address_space: Option<u64>| train_in(&big, args, address_space);
    let (code, err) = train_big(
        &[
            "--batch-size",
            "2048",
            "--micro-batch-size",
            "64",
            "--max-steps",
            "1",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = train_big(&["--micro-batch-size", "2048", "--max-steps", "2"], limit);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("panicked")
            && err.contains("step 2: libtorch failed: DefaultCPUAllocator: can't allocate memory")
            && err.contains("The state after step 1 is saved in ")
            && err.contains(
                "Each micro-batch of 2048 images ran out of memory: a smaller --micro-batch-size needs \
                 less (the batch size, 2048, stays: its micro-batches accumulate to it), e.g. \
                 --micro-batch-size 1024."
            ),
        "{err}"
    );

    let tags = tmp.path().join("tags.jsonl");
    let argv: Vec<std::ffi::OsString> = vec![
        "tag".into(),
        "--checkpoint".into(),
        run.clone().into(),
        "--model".into(),
        "tiny".into(),
        "--vocab".into(),
        ds.vocabulary.clone().into(),
        "--images".into(),
        ds.image_root.clone().into(),
        "--batch-size".into(),
        "4096".into(),
        "--out".into(),
        tags.clone().into(),
    ];
    let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
    let (code, err) = tagfix_limited(&argv, limit);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("panicked")
            && err.contains("scoring 4096 images at once: libtorch failed: DefaultCPUAllocator")
            && err.contains("A smaller --batch-size needs less memory"),
        "{err}"
    );
    assert!(!tags.exists(), "nothing written");
}

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
        let mut child = spawn_endless(&ds, &run, Stdio::piped, true);
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
        // The signal stopped the run after a step and before that step's validation: the resume
        // runs it first, so every step has its record.
        let validated: Vec<u64> = tagfix::monitor::read_validation(&run.join("validation.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(validated, (0..=logged + 2).collect::<Vec<_>>(), "{name}");
    }
}

/// A run started with paths relative to the dataset's folder resumes from another working folder:
/// run.json records them absolute.
#[test]
fn a_run_started_with_relative_paths_resumes_from_another_folder() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds_dir = tmp.path().join("ds");
    let ds = dataset(&ds_dir, 16, 6);
    let run = tmp.path().join("run");
    let relative = |p: &std::path::Path| p.strip_prefix(&ds_dir).unwrap().to_path_buf();
    let common = ["--batch-size", "4", "--workers", "1", "--threads", "1"];
    let started = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .current_dir(&ds_dir)
        .args([
            "train",
            "--model",
            "tiny",
            "--allow-random-encoder",
            "--max-steps",
            "2",
        ])
        .args(common)
        .arg("--data")
        .arg(relative(&ds.annotations))
        .arg("--images")
        .arg(relative(&ds.image_root))
        .arg("--manifest")
        .arg(relative(&ds.manifest))
        .arg("--label-embed")
        .arg(relative(&ds.label_embed))
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        recorded["images"].as_str().map(std::path::PathBuf::from),
        Some(ds.image_root.clone())
    );
    let resumed = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .current_dir(tmp.path())
        .args(["train", "--max-steps", "3", "--resume"])
        .arg(&run)
        .args(common)
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
}

/// `--auto-resume`, the one command a scheduler restarts: it starts a new run, continues one with a
/// checkpoint from there, starts again from step 0 where a killed attempt left no checkpoint, and
/// refuses a run folder started with other inputs.
#[test]
fn auto_resume_starts_continues_and_starts_again() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 16, 3);
    let run = tmp.path().join("run");
    let train = |steps: &str, out: &std::path::Path| {
        Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
            .args(train_argv(&ds))
            .args(["--auto-resume", "--max-steps", steps, "--batch-size", "4"])
            .args([
                "--workers",
                "1",
                "--threads",
                "1",
                "--checkpoint-every",
                "1",
            ])
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let steps = |out: &std::path::Path| -> Vec<u64> {
        tagfix::monitor::read_all_records(&out.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect()
    };
    let o = train("2", &run);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(steps(&run), [1, 2]);
    // The same command with more steps continues from the checkpoint of step 2.
    let o = train("4", &run);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("resuming from") && err.contains("at step 2"),
        "{err}"
    );
    assert_eq!(steps(&run), [1, 2, 3, 4]);
    // Other inputs than the run's: refused, naming the flag, the run left as it was.
    let other = tmp.path().join("other-label-embed.safetensors");
    std::fs::copy(&ds.label_embed, &other).unwrap();
    let mut argv: Vec<std::ffi::OsString> = train_argv(&ds);
    let at = argv.iter().position(|a| a == "--label-embed").unwrap();
    argv[at + 1] = other.into();
    let o = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .args(argv)
        .args(["--auto-resume", "--max-steps", "6", "--batch-size", "4"])
        .args(["--workers", "1", "--threads", "1", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--auto-resume") && err.contains("was started with --label-embed"),
        "{err}"
    );
    assert_eq!(steps(&run), [1, 2, 3, 4]);

    // An attempt killed before its first checkpoint: a plain new run refuses the folder, the
    // auto-resuming one trains it again from step 0 and replaces the dead attempt's records.
    let dead = tmp.path().join("dead");
    let mut child = spawn_endless(&ds, &dead, Stdio::null, false);
    signal_after_steps(&mut child, &dead.join("metrics.jsonl"), 3, libc::SIGKILL);
    let _ = wait_bounded(child, Duration::from_secs(60));
    assert!(steps(&dead).len() >= 3);
    let plain = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .args(train_argv(&ds))
        .args([
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--workers",
            "1",
            "--out",
        ])
        .arg(&dead)
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(2));
    let o = train("2", &dead);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("training it again from step 0"), "{err}");
    assert_eq!(steps(&dead), [1, 2]);
}

/// `--dry-run` checks what the run would check before its first step and writes nothing: a new run
/// prints its plan and leaves no folder; a folder that holds a run is refused as the run would
/// refuse it; `--resume` and `--auto-resume` say where they would continue; a missing image fails.
#[test]
fn a_dry_run_checks_the_start_and_writes_nothing() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 16, 4);
    let run = tmp.path().join("run");
    let train = |extra: &[&str], out: Option<&std::path::Path>| {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("tagfix"));
        c.args(train_argv(&ds))
            .args(["--batch-size", "4", "--workers", "1", "--threads", "1"])
            .args(extra);
        if let Some(out) = out {
            c.arg("--out").arg(out);
        }
        let o = c.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let (code, out, err) = train(&["--max-steps", "2", "--dry-run"], Some(&run));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("dry run: every input checked; nothing trained or written")
            && out.contains("steps 0..2 (a new run in ")
            && out.contains("16 records, 4 steps per epoch; batch 4 = 1 micro-batch(es) of 4"),
        "{out}"
    );
    assert!(!run.exists(), "a dry run writes nothing");
    // What the checkpoints take on the disk, and what is free there (--out does not exist yet).
    assert!(
        out.contains("checkpoints: ")
            && out
                .contains(" each; up to 4 on the disk while one is written (keep_checkpoints = 3)")
            && out.contains(" free there")
            && !out.contains("there already"),
        "{out}"
    );
    // What is trained, and the model's state per rank before activations.
    assert!(
        out.contains("training ") && out.contains(" tensors (") && out.contains("frozen: nothing"),
        "{out}"
    );
    assert!(
        out.contains("memory per rank before activations: ")
            && out.contains("= parameters ")
            && out.contains(", gradients ")
            && out.contains(", AdamW moments ")
            && out.contains("the activations come on top"),
        "{out}"
    );
    // The plan with --json: the parts add up; sharded over 2 ranks the moments halve (about).
    let plan = |extra: &[&str]| -> serde_json::Value {
        let args = [&["--max-steps", "2", "--dry-run", "--json"], extra].concat();
        let (code, out, err) = train(&args, Some(&run));
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let whole = plan(&[]);
    let m = &whole["memory"];
    let bytes = |k: &str| m[k].as_u64().unwrap();
    assert_eq!(bytes("optimizer"), 2 * bytes("gradients"), "{m}");
    assert!(
        bytes("parameters") >= bytes("gradients") && bytes("gradients") > 0,
        "{m}"
    );
    let sharded = plan(&[
        "--nproc-per-node",
        "2",
        "--micro-batch-size",
        "2",
        "--shard-optimizer",
        "--precision",
        "bf16",
    ]);
    let s = &sharded["memory"];
    assert_eq!(s["optimizer_shared_by"], 2, "{s}");
    let half = bytes("optimizer") / 2;
    let share = s["optimizer"].as_u64().unwrap();
    assert!(
        share >= half && share <= half + 2 * 4 * 64,
        "{share} vs {half}"
    );
    assert!(s["bf16_casts"].as_u64().unwrap() > 0, "{s}");
    // --freeze is checked as the run checks it.
    let (code, _, err) = train(
        &[
            "--max-steps",
            "2",
            "--dry-run",
            "--freeze",
            "no_such_module",
        ],
        Some(&run),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no_such_module"), "{err}");
    assert!(!run.exists());
    // The batch's split among the ranks of --nproc-per-node (the run's check, made in one process).
    let ranks = ["--max-steps", "2", "--dry-run", "--nproc-per-node"];
    let (code, out, err) = train(
        &[&ranks[..], &["2", "--micro-batch-size", "2"]].concat(),
        Some(&run),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("batch 4 = 2 ranks × 1 micro-batch(es) of 2"),
        "{out}"
    );
    let (code, _, err) = train(&[&ranks[..], &["3"]].concat(), Some(&run));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("which 3 ranks cannot share evenly"), "{err}");
    assert!(!run.exists());
    // Under a launcher (torchrun's variables) rank 0 checks and prints the plan for the job's
    // ranks; the others do nothing.
    let launched = |rank: &str, extra: &[&str]| {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("tagfix"));
        c.args(train_argv(&ds))
            .args(extra)
            .args([
                "--batch-size",
                "4",
                "--micro-batch-size",
                "2",
                "--workers",
                "1",
            ])
            .args(["--threads", "1", "--max-steps", "2", "--dry-run", "--out"])
            .arg(&run);
        for (k, v) in [("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", "2")] {
            c.env(k, v);
        }
        c.env("LOCAL_WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", "29999");
        let o = c.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let (code, out, err) = launched("0", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("batch 4 = 2 ranks × 1 micro-batch(es) of 2"),
        "{out}"
    );
    let (code, out, err) = launched("1", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("rank 1 of 2: the dry run checks in one process, rank 0"),
        "{err}"
    );
    // --nproc-per-node inside a launcher's rank is refused, as the run refuses it.
    let (code, _, err) = launched("0", &["--nproc-per-node", "2"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("give the rank count to the launcher only"),
        "{err}"
    );
    // So does the run itself, before it starts anything.
    let o = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .args(train_argv(&ds))
        .args(["--batch-size", "4", "--nproc-per-node", "2", "--out"])
        .arg(&run)
        .envs([("RANK", "1"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "2")])
        .envs([("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")])
        .env("MASTER_PORT", "29999")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("this process is already rank 1 of 2 (torchrun)"),
        "{err}"
    );
    assert!(!run.exists());

    let (code, _, err) = train(&["--max-steps", "2", "--checkpoint-every", "1"], Some(&run));
    assert_eq!(code, Some(0), "{err}");
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let (code, _, err) = train(&["--max-steps", "2", "--dry-run"], Some(&run));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("already holds a training run"), "{err}");
    let resume = run.to_str().unwrap();
    for how in [&["--resume", resume][..], &["--auto-resume"]] {
        let out_flag = (how[0] == "--auto-resume").then_some(run.as_path());
        let mut args = vec!["--max-steps", "4", "--dry-run"];
        args.extend_from_slice(how);
        let (code, out, err) = train(&args, out_flag);
        assert_eq!(code, Some(0), "{how:?}: {err}");
        assert!(
            out.contains("steps 2..4 (resuming at step 2 from ")
                && out.contains("step-00000002, its files checked against its SHA256SUMS")
                && out.contains("of it there already"),
            "{how:?}: {out}"
        );
    }
    // The size a checkpoint is planned at covers the files a checkpoint of the run holds.
    let resume_plan = || -> serde_json::Value {
        let args = [
            "--max-steps",
            "4",
            "--dry-run",
            "--json",
            "--resume",
            resume,
        ];
        let (code, out, err) = train(&args, None);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let space = &resume_plan()["checkpoints"];
    let written = |step: &str| {
        std::fs::read_dir(run.join("checkpoints").join(step))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum::<u64>()
    };
    let (one, two) = (written("step-00000001"), written("step-00000002"));
    let planned = space["bytes"].as_u64().unwrap();
    assert!(
        planned >= two && planned <= two + (2 << 20),
        "{space} {two}"
    );
    assert_eq!(space["existing"].as_u64().unwrap(), one + two, "{space}");
    // The newest checkpoint cut short (its machine died before the disk had it): the resume passes
    // over it to the one before, with a warning.
    let model = run.join("checkpoints/step-00000002/model.safetensors");
    let whole = std::fs::read(&model).unwrap();
    std::fs::write(&model, &whole[..whole.len() / 2]).unwrap();
    let resumes_from_step_1 = |why: &str| {
        let (code, out, err) = train(&["--max-steps", "4", "--dry-run", "--resume", resume], None);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("steps 1..4 (resuming at step 1 from "),
            "{out}"
        );
        assert!(
            err.contains("step-00000002 is not whole (")
                && err.contains(why)
                && err.contains("passed over for "),
            "{err}"
        );
    };
    resumes_from_step_1("model.safetensors");
    let plan = resume_plan();
    assert!(
        plan["resume_from"]
            .as_str()
            .unwrap()
            .ends_with("step-00000001"),
        "{plan}"
    );
    assert!(
        plan["passed_over"][0][0]
            .as_str()
            .unwrap()
            .ends_with("step-00000002"),
        "{plan}"
    );
    std::fs::write(&model, whole).unwrap();
    // One bit of the newest optimizer state flipped on the disk (its length and header intact):
    // found by the checkpoint's SHA256SUMS and passed over the same way.
    let moments = run.join("checkpoints/step-00000002/optimizer.safetensors");
    let mut flipped = std::fs::read(&moments).unwrap();
    let middle = flipped.len() - 5;
    flipped[middle] ^= 0x10;
    std::fs::write(&moments, &flipped).unwrap();
    resumes_from_step_1("optimizer.safetensors: its bytes changed since they were written");
    flipped[middle] ^= 0x10;
    std::fs::write(&moments, &flipped).unwrap();
    // Another batch size: each step would stand for other data; refused, pointing at micro-batches.
    let other_batch = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .args(train_argv(&ds))
        .args([
            "--batch-size",
            "8",
            "--max-steps",
            "4",
            "--dry-run",
            "--resume",
            resume,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other_batch.stderr);
    assert_eq!(other_batch.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "the checkpoint's steps are batches of 4 images, this configuration's batch is 8"
        ) && err.contains("Resume with --batch-size 4"),
        "{err}"
    );
    // The images moved (a dataset mounted elsewhere): `--images` says where; the run's other inputs
    // come from run.json. Without it the resume fails on the recorded root.
    let moved = tmp.path().join("moved-images");
    std::fs::rename(&ds.image_root, &moved).unwrap();
    let resume_moved = |extra: &[&std::ffi::OsStr]| {
        let o = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
            .args([
                "train",
                "--batch-size",
                "4",
                "--max-steps",
                "4",
                "--dry-run",
                "--resume",
                resume,
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = resume_moved(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("its inputs are those ")
            && err.contains("run.json records (give --data, --images"),
        "{err}"
    );
    let (code, err) = resume_moved(&["--images".as_ref(), moved.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "--resume: --images {} (the run recorded {})",
            moved.display(),
            ds.image_root.display()
        )),
        "{err}"
    );
    std::fs::rename(&moved, &ds.image_root).unwrap();
    // Other loss weights than the checkpoint's: the resume would train with them, and says so.
    let (code, out, err) = train(
        &[
            "--max-steps",
            "4",
            "--dry-run",
            "--resume",
            resume,
            "--loss-weights",
            "tag=3",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(
            "loss weighting changed since the checkpoint: fixed tag=1,align=10,dis=100 → fixed \
             tag=3,align=10,dis=100"
        ),
        "{out}"
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    let saved = std::fs::read_dir(run.join("checkpoints")).unwrap().count();
    assert_eq!(saved, 2, "no checkpoint added");
    // An earlier attempt's records without a checkpoint: --auto-resume would start again.
    let attempt = tmp.path().join("attempt");
    std::fs::create_dir(&attempt).unwrap();
    std::fs::write(attempt.join("metrics.jsonl"), &metrics).unwrap();
    let (code, out, err) = train(
        &["--max-steps", "2", "--dry-run", "--auto-resume"],
        Some(&attempt),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("steps 0..2 (again from the start in "),
        "{out}"
    );
    assert_eq!(
        std::fs::read(attempt.join("metrics.jsonl")).unwrap(),
        metrics
    );

    // Records edited since the checkpoint: the resume is refused (the run's own refusal).
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&ds.annotations).unwrap()).unwrap();
    let kept = serde_json::to_vec(&records[..records.len() - 1]).unwrap();
    let original = std::fs::read(&ds.annotations).unwrap();
    std::fs::write(&ds.annotations, kept).unwrap();
    let (code, _, err) = train(&["--max-steps", "4", "--dry-run", "--resume", resume], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the training records differ from the checkpoint's (16 records then, 15 now)"),
        "{err}"
    );
    std::fs::write(&ds.annotations, original).unwrap();

    // The images are checked as the run checks them.
    let image = std::fs::read_dir(&ds.image_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    std::fs::remove_file(&image).unwrap();
    let other = tmp.path().join("other");
    let (code, _, err) = train(&["--max-steps", "2", "--dry-run"], Some(&other));
    assert_eq!(code, Some(2), "{err}");
    let name = image.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name), "{err}");
    assert!(!other.exists());
}
