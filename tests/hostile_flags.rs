//! Extreme flag values (`u64::MAX`, NaN, sizes no machine holds) end in a clear error (exit 2) or a
//! normal run, never a panic or an abort. Each case here once went wrong: a capacity overflow, an
//! allocation failure, `config.toml` unable to hold the integer and libtorch given -1 threads all
//! panicked or aborted; a NaN bound or Zipf exponent was taken and gave a meaningless result.

mod common;

use common::Context;
use std::process::Output;

const MAX: &str = "18446744073709551615";

/// The exit code, with stderr shown when the process panicked, aborted or was killed.
fn exit_code(out: &Output, what: &str) -> i32 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: panicked:\n{stderr}");
    out.status
        .code()
        .unwrap_or_else(|| panic!("{what}: killed by a signal ({:?}):\n{stderr}", out.status))
}

/// `tagfix subcommand args` run in `cx`'s folder.
fn run_in(cx: &Context, subcommand: &str, args: &[&str]) -> Output {
    cx.cmd(subcommand)
        .args(args)
        .current_dir(cx.dir.path())
        .output()
        .unwrap()
}

/// Runs `subcommand args` in `cx`'s folder; asserts the exit code is `code` and stderr says `says`.
fn refused(cx: &Context, subcommand: &str, args: &[&str], says: &str) {
    let what = format!("tagfix {subcommand} {}", args.join(" "));
    let out = run_in(cx, subcommand, args);
    assert_eq!(exit_code(&out, &what), 2, "{what}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(says),
        "{what}: expected `{says}` in:\n{stderr}"
    );
}

#[test]
fn synthetic_sets_refuse_sizes_no_machine_holds() {
    let cx = Context::new().quiet();
    let images = ["synth-images", "--out", "s"];
    for (flags, says) in [
        (["--count", MAX], "--count must be in 1..=1000000"),
        (["--size", "65535"], "--size must be in 16..=4096"),
        (
            ["--descriptions", "100000000"],
            "--descriptions must be in 1..=256",
        ),
    ] {
        refused(&cx, images[0], &[&images[1..], &flags[..]].concat(), says);
    }
    assert!(!cx.path("s/images").exists(), "nothing is written first");
    std::fs::write(cx.path("tags.txt"), "cat\ndog\nboat\n").unwrap();
    let synth = ["--vocab", "tags.txt", "--records", "3", "--out", "a.json"];
    refused(
        &cx,
        "synth",
        &[&synth[..], &["--zipf", "nan"]].concat(),
        "--zipf must be a finite number >= 0, got NaN",
    );
    assert!(!cx.path("a.json").exists());
}

#[test]
fn check_cuts_huge_candidate_lists_and_refuses_nan_bounds() {
    let cx = Context::new().quiet();
    let fixture = common::crate_root().join("fixtures/check");
    let base = fixture.join("minilm-baseline.safetensors");
    let vocab = fixture.join("tags.txt");
    let common_args: Vec<&std::ffi::OsStr> = vec![
        "--baseline".as_ref(),
        base.as_os_str(),
        "--candidate".as_ref(),
        base.as_os_str(),
        "--vocab".as_ref(),
        vocab.as_os_str(),
        "--search".as_ref(),
        "hnsw".as_ref(),
    ];
    for flag in ["--hnsw-ef", "--hnsw-ef-construction"] {
        let out = cx
            .cmd("check")
            .args(&common_args)
            .args([flag, MAX])
            .output()
            .unwrap();
        // The file compared with itself passes every rule.
        assert_eq!(exit_code(&out, flag), 0, "{flag}");
    }
    let out = cx
        .cmd("check")
        .args(&common_args)
        .args(["--max-mean-shift", "nan"])
        .output()
        .unwrap();
    assert_eq!(exit_code(&out, "--max-mean-shift nan"), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_mean_shift = NaN is not a finite number >= 0"),
        "{stderr}"
    );
}

#[test]
fn repair_refuses_integers_its_training_config_cannot_hold() {
    let cx = Context::new().quiet();
    for flag in ["--seed", "--train-steps"] {
        refused(
            &cx,
            "repair",
            &["--out", "r", flag, MAX],
            "is not in 0..=9223372036854775807",
        );
    }
    assert!(!cx.path("r").exists());
}

#[test]
fn teacher_refuses_captions_cut_to_no_words() {
    let cx = Context::new().quiet();
    let args = [
        "--data",
        "d.json",
        "--images",
        "i",
        "--out",
        "t.safetensors",
        "--max-words",
        "0",
    ];
    refused(&cx, "teacher", &args, "0 is not in 1..");
}

#[test]
fn teacher_refuses_shards_outside_their_set() {
    let cx = Context::new().quiet();
    for (shard, needle) in [
        ("2/2", "must be below the count"),
        ("0/0", "must be below the count"),
        ("18446744073709551616/2", "is not a shard"),
        ("1", "is not a shard"),
        ("-1/4", "unexpected argument"),
        ("1/-4", "is not a shard"),
    ] {
        let args = [
            "--data", "d.json", "--images", "i", "--out", "set", "--shard", shard,
        ];
        refused(&cx, "teacher", &args, needle);
    }
    assert!(!cx.path("set").exists());
}

#[cfg(feature = "train")]
#[test]
fn train_and_tag_take_extreme_integers_without_panicking() {
    let cx = Context::new().quiet();
    let synth = [
        "--out",
        "s",
        "--count",
        "8",
        "--size",
        "32",
        "--descriptions",
        "1",
    ];
    let out = run_in(&cx, "synth-images", &synth);
    assert_eq!(exit_code(&out, "synth-images"), 0);
    let train = [
        "--data",
        "s/train.json",
        "--images",
        "s/images",
        "--manifest",
        "s/manifest.json",
        "--label-embed",
        "s/label_embed.safetensors",
        "--allow-random-encoder",
        "--model",
        "tiny",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--threads",
        "1",
        "--workers",
        "1",
    ];
    for flag in ["--seed", "--balance-steps"] {
        let args = [&train[..], &[flag, MAX, "--out", "bad"]].concat();
        refused(&cx, "train", &args, "must be at most 9223372036854775807");
    }
    assert!(
        !cx.path("bad").exists(),
        "refused before the run folder is made"
    );
    let out = run_in(&cx, "train", &[&train[..], &["--out", "run"]].concat());
    assert_eq!(exit_code(&out, "train"), 0);
    let tag = [
        "--checkpoint",
        "run",
        "--images",
        "s/images",
        "--vocab",
        "s/tags.txt",
    ];
    let out = run_in(&cx, "tag", &[&tag[..], &["--threads", MAX]].concat());
    assert_eq!(exit_code(&out, "tag --threads u64::MAX"), 0);
}
