//! Data-parallel training on CPU (Gloo over loopback, two real `tagfix train` processes) against
//! the one-rank run of the same global batch on the tiny RAM++: parameters, logged losses and
//! validation agree; torchrun's variables, Slurm's and `--nproc-per-node` all launch it; a 2-rank run
//! resumes on 1 rank and a 1-rank run on 2; a killed rank stops the other with its name and leaves the
//! newest checkpoint intact; a run that stops itself exits 3 through the launcher; a stop signal to the
//! launcher or to one rank stops every rank after the same step with a checkpoint; ranks that disagree
//! on the configuration are refused before the first step.
#![cfg(feature = "train")]

mod common;

use common::train::{
    dataset, limit, serial, signal_after_steps, train_argv, train_command, wait_bounded,
    VALIDATE_4096_AT_ONCE,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tagfix::monitor::{read_all_records, read_validation};
use tagfix::train::data::synth::SynthDataset;
use tch::Tensor;

/// Settings shared by every run: the global batch is 4 (or `batch`), micro-batches of 2.
fn run_args(ds: &SynthDataset, out: &Path, batch: &str, steps: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "--quiet",
        "--batch-size",
        batch,
        "--micro-batch-size",
        "2",
        "--max-steps",
        steps,
        "--seed",
        "3",
        "--workers",
        "1",
        "--threads",
        "1",
        "--checkpoint-every",
        "off",
        "--val-every",
        "5",
        "--val-max-images",
        "12",
        // A constant learning rate after warm-up: a run cut short takes the same steps.
        "--lr",
        "2e-3",
        "--set",
        "min_lr=2e-3",
        "--set",
        "warmup_lr=1e-4",
        "--set",
        "warmup_steps=2",
        "--dist-timeout",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("--teacher".into());
    a.push(ds.teacher.display().to_string());
    a.push("--val-data".into());
    a.push(ds.annotations.display().to_string());
    a.push("--out".into());
    a.push(out.display().to_string());
    a
}

/// Changes a setting of [`run_args`]: `--flag`'s value, or `--set key=`'s.
fn set_value(args: &mut [String], flag_or_key: &str, value: &str) {
    if let Some(at) = args.iter().position(|a| a == flag_or_key) {
        args[at + 1] = value.into();
        return;
    }
    let prefix = format!("{flag_or_key}=");
    let at = args.iter().position(|a| a.starts_with(&prefix)).unwrap();
    args[at] = format!("{prefix}{value}");
}

/// Runs `command` to success and returns its log (stderr, then stdout).
fn logged(command: &mut assert_cmd::Command, what: &str) -> String {
    let o = command.output().unwrap();
    check(&o, what);
    String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A launch contract: the variables that make a process rank `rank` of two.
#[derive(Clone, Copy)]
enum Contract {
    Torchrun,
    Slurm,
}

/// Two ranks started by hand with `contract`'s variables (`extra[r]` added to rank r's arguments),
/// still running.
fn spawn_ranks(
    ds: &SynthDataset,
    args: &[String],
    extra: [&[&str]; 2],
    contract: Contract,
) -> Vec<Child> {
    let port = tagfix::train::dist::launch::free_port("127.0.0.1").unwrap();
    (0..2)
        .map(|rank| {
            let mut c = rank_command(rank, port, contract);
            c.args(train_argv(ds)).args(args).args(extra[rank]);
            c.spawn().unwrap()
        })
        .collect()
}

/// `tagfix` as rank `rank` of two meeting at `port` on loopback, with `contract`'s variables; its
/// output piped.
fn rank_command(rank: usize, port: u16, contract: Contract) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("tagfix"));
    {
        let r = rank.to_string();
        let vars: [(&str, &str); 4] = match contract {
            Contract::Torchrun => [
                ("RANK", r.as_str()),
                ("LOCAL_RANK", r.as_str()),
                ("WORLD_SIZE", "2"),
                ("LOCAL_WORLD_SIZE", "2"),
            ],
            Contract::Slurm => [
                ("SLURM_PROCID", r.as_str()),
                ("SLURM_LOCALID", r.as_str()),
                ("SLURM_NTASKS", "2"),
                ("SLURM_NTASKS_PER_NODE", "2"),
            ],
        };
        // Only the one contract's variables (torchrun's would win over Slurm's).
        for v in ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"] {
            c.env_remove(v);
        }
        c.envs(vars)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    c
}

/// Two ranks started by hand with `contract`'s variables, run to the end.
fn run_ranks(
    ds: &SynthDataset,
    args: &[String],
    extra: [&[&str]; 2],
    contract: Contract,
) -> Vec<Output> {
    spawn_ranks(ds, args, extra, contract)
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// Two ranks started by hand with torchrun's variables.
fn torchrun(ds: &SynthDataset, args: &[String], extra: [&[&str]; 2]) -> Vec<Output> {
    run_ranks(ds, args, extra, Contract::Torchrun)
}

fn params(run: &Path, step: u64) -> BTreeMap<String, Tensor> {
    let f = run.join(format!("checkpoints/step-{step:08}/model.safetensors"));
    Tensor::read_safetensors(&f).unwrap().into_iter().collect()
}

/// Every parameter within `tol` relative to the larger of its largest |value| and 1e-2 (a floor for
/// parameters that are near 0, e.g. attention key biases, whose gradient is 0 up to rounding).
fn assert_params_close(a: &Path, b: &Path, step: u64, tol: f64) {
    let worst = worst_param_difference(a, b, step);
    assert!(
        worst.0 <= tol,
        "{}: {} differs by {:.3e}",
        b.display(),
        worst.1,
        worst.0
    );
}

/// The largest relative difference of a parameter between two runs at `step` (see
/// [`assert_params_close`]), and the parameter's name.
fn worst_param_difference(a: &Path, b: &Path, step: u64) -> (f64, String) {
    let (pa, pb) = (params(a, step), params(b, step));
    assert_eq!(pa.len(), pb.len());
    let mut worst = (0.0, String::new());
    for (name, x) in &pa {
        let y = &pb[name];
        let diff = (x - y).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1e-2);
        if diff / scale > worst.0 {
            worst = (diff / scale, name.clone());
        }
    }
    eprintln!(
        "{}: worst relative parameter difference {:.3e} ({})",
        b.display(),
        worst.0,
        worst.1
    );
    worst
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

/// Logged losses and gradient norms within `tol` relative, step by step; validation mAP equal.
fn assert_logs_close(a: &Path, b: &Path, tol: f64) {
    let (ra, rb) = (
        read_all_records(&a.join("metrics.jsonl")).unwrap(),
        read_all_records(&b.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x.step, y.step);
        assert!(
            rel(x.total, y.total) <= tol,
            "step {}: total {} vs {}",
            x.step,
            x.total,
            y.total
        );
        for (t, p, q) in [
            ("tag", x.loss.tag, y.loss.tag),
            ("align", x.loss.align, y.loss.align),
            ("dis", x.loss.dis, y.loss.dis),
        ] {
            let (p, q) = (p.map(|v| v.raw), q.map(|v| v.raw));
            assert_eq!(p.is_some(), q.is_some(), "step {}: {t}", x.step);
            if let (Some(p), Some(q)) = (p, q) {
                assert!(rel(p, q) <= tol, "step {}: {t} {p} vs {q}", x.step);
            }
        }
        assert!(
            rel(x.grad_norm.total, y.grad_norm.total) <= 1e-5,
            "step {}: grad norm {} vs {}",
            x.step,
            x.grad_norm.total,
            y.grad_norm.total
        );
    }
    let (va, vb) = (
        read_validation(&a.join("validation.jsonl")).unwrap(),
        read_validation(&b.join("validation.jsonl")).unwrap(),
    );
    // (A resumed run also validated where its first part ended.)
    let vb: Vec<_> = vb
        .into_iter()
        .filter(|y| va.iter().any(|x| x.step == y.step))
        .collect();
    assert_eq!(va.len(), vb.len());
    for (x, y) in va.iter().zip(&vb) {
        assert_eq!((x.step, x.images), (y.step, y.images));
        let (mx, my) = (x.main.unwrap().map, y.main.unwrap().map);
        assert!(
            rel(mx, my) <= 1e-6,
            "validation at {}: mAP {mx} vs {my}",
            x.step
        );
    }
}

#[test]
fn two_ranks_train_as_one_rank_with_the_same_global_batch() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 11);
    let one = tmp.path().join("one");
    check(
        &train_command(&ds)
            .args(run_args(&ds, &one, "4", "5"))
            .output()
            .unwrap(),
        "one rank",
    );

    // `--nproc-per-node 2`: the built-in launcher.
    let launched = tmp.path().join("launched");
    let out = train_command(&ds)
        .args(run_args(&ds, &launched, "4", "5"))
        .args(["--nproc-per-node", "2"])
        .output()
        .unwrap();
    check(&out, "--nproc-per-node 2");
    assert_params_close(&one, &launched, 5, 1e-5);
    assert_logs_close(&one, &launched, 1e-6);

    // torchrun's variables, two processes started by hand.
    let by_env = tmp.path().join("torchrun");
    for (r, o) in torchrun(&ds, &run_args(&ds, &by_env, "4", "5"), [&[], &[]])
        .iter()
        .enumerate()
    {
        check(o, &format!("torchrun rank {r}"));
    }
    assert_params_close(&one, &by_env, 5, 1e-5);
    assert_logs_close(&one, &by_env, 1e-6);
    // Rank 0 alone wrote the run's files.
    assert!(by_env.join("summary.json").is_file());

    // Slurm's variables (as `srun` sets them), two processes started by hand.
    let slurm = tmp.path().join("slurm");
    let outs = run_ranks(
        &ds,
        &run_args(&ds, &slurm, "4", "5"),
        [&[], &[]],
        Contract::Slurm,
    );
    for (r, o) in outs.iter().enumerate() {
        check(o, &format!("Slurm rank {r}"));
    }
    assert_params_close(&one, &slurm, 5, 1e-5);
    assert_logs_close(&one, &slurm, 1e-6);
}

/// `--grad-comm bf16` sends the gradients as bf16: the run is recorded so, trains close to the f32
/// exchange (each gradient rounded to 8 bits of mantissa), and is not the f32 run; one rank alone
/// trains exactly as with f32.
#[test]
fn gradients_exchanged_as_bf16_train_close_to_f32() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 13);
    let run = |name: &str, comm: &str| {
        let out = tmp.path().join(name);
        let o = train_command(&ds)
            .args(run_args(&ds, &out, "4", "5"))
            .args(["--nproc-per-node", "2", "--grad-comm", comm])
            // As in the accumulation case: AdamW's eps 1e-8 would turn the rounding of gradients
            // whose true value is 0 (attention key biases) into full-size updates of random sign.
            .args(["--set", "adam_eps=1e-4"])
            .output()
            .unwrap();
        check(&o, name);
        out
    };
    // A single rank (torchrun's variables with WORLD_SIZE=1) exchanges nothing: bf16 changes nothing.
    let alone = |name: &str, comm: &str| {
        let out = tmp.path().join(name);
        let port = tagfix::train::dist::launch::free_port("127.0.0.1").unwrap();
        let o = train_command(&ds)
            .args(run_args(&ds, &out, "4", "2"))
            .args(["--grad-comm", comm, "--set", "adam_eps=1e-4"])
            .envs([
                ("RANK", "0"),
                ("LOCAL_RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("LOCAL_WORLD_SIZE", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", &port.to_string()),
            ])
            .output()
            .unwrap();
        check(&o, name);
        out
    };
    let (one_f32, one_bf16) = (alone("one-f32", "f32"), alone("one-bf16", "bf16"));
    assert_eq!(worst_param_difference(&one_f32, &one_bf16, 2).0, 0.0);
    let (f32_run, bf16_run) = (run("f32", "f32"), run("bf16", "bf16"));
    let config = std::fs::read_to_string(bf16_run.join("config.toml")).unwrap();
    assert!(config.contains("grad_comm = \"bf16\""), "{config}");
    let (worst, _) = worst_param_difference(&f32_run, &bf16_run, 5);
    assert!(
        worst > 0.0,
        "bf16 exchange left every parameter bit-identical"
    );
    // Per parameter, AdamW's first steps move each value by about ±lr whatever the gradient's size,
    // so a gradient whose two halves nearly cancel may flip its step; the losses and the gradient
    // norm show whether the run as a whole trains the same.
    let (ra, rb) = (
        read_all_records(&f32_run.join("metrics.jsonl")).unwrap(),
        read_all_records(&bf16_run.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        let (loss, norm) = (
            rel(x.total, y.total),
            rel(x.grad_norm.total, y.grad_norm.total),
        );
        eprintln!(
            "step {}: loss {loss:.2e}, gradient norm {norm:.2e} relative",
            x.step
        );
        assert!(
            loss <= 1e-3,
            "step {}: loss {} vs {}",
            x.step,
            x.total,
            y.total
        );
        assert!(
            norm <= 1e-2,
            "step {}: gradient norm {} vs {}",
            x.step,
            x.grad_norm.total,
            y.grad_norm.total
        );
    }
}

/// `--grad-sync overlap` (the default: each gradient bucket's all-reduce starts during the last
/// micro-batch's backward pass) and `after-backward` train bit-identically: with two ranks each sum
/// is one addition, whatever the buckets. Two micro-batches per rank, so one backward pass
/// accumulates locally before the armed one.
#[test]
fn gradients_exchanged_during_the_backward_pass_train_exactly_as_after_it() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 14);
    let run = |name: &str, sync: &str| {
        let out = tmp.path().join(name);
        let log = logged(
            train_command(&ds)
                .args(run_args(&ds, &out, "8", "5"))
                .args(["--nproc-per-node", "2", "--grad-sync", sync])
                .args(["--bucket-cap-mb", "1"])
                .env("RUST_LOG", "tagfix=debug"),
            name,
        );
        (out, log)
    };
    let ((during, log), (after, after_log)) =
        (run("during", "overlap"), run("after", "after-backward"));
    // Each rank logs each step's exchange; from the second step on (buckets rebuilt in the order
    // the gradients became ready) buckets start while the backward pass is still computing. The
    // gradients are copied into the buckets at the first step and again at the second (rebuilt
    // buckets); from then on they are views of the buckets and nothing is copied.
    let exchanges = |rank: usize| -> Vec<(usize, usize, usize)> {
        let prefix = format!("[rank {rank}]");
        log.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| {
                let rest = l.split("gradient exchange: ").nth(1)?;
                let mut w = rest.split(' ');
                let overlapped = w.next()?.parse().ok()?;
                let total = w.nth(1)?.parse().ok()?;
                let copied = rest.split('(').nth(1)?.split(' ').next()?.parse().ok()?;
                Some((overlapped, total, copied))
            })
            .collect()
    };
    for rank in 0..2 {
        let steps = exchanges(rank);
        eprintln!("rank {rank}: (overlapped, buckets, copied) per step {steps:?}");
        assert_eq!(steps.len(), 5, "{log}");
        assert!(
            steps[1..].iter().all(|(overlapped, _, _)| *overlapped > 0),
            "{steps:?}"
        );
        let copied: Vec<usize> = steps.iter().map(|s| s.2).collect();
        assert!(copied[0] > 0 && copied[1] == copied[0], "{steps:?}");
        assert_eq!(copied[2..], [0, 0, 0], "{steps:?}");
    }
    assert_eq!(
        after_log
            .matches("gradient exchange: after the backward pass")
            .count(),
        2 * 5,
        "{after_log}"
    );
    let config = std::fs::read_to_string(after.join("config.toml")).unwrap();
    assert!(
        config.contains("grad_sync = \"after-backward\""),
        "{config}"
    );
    assert_eq!(worst_param_difference(&during, &after, 5).0, 0.0);
    let (ra, rb) = (
        read_all_records(&during.join("metrics.jsonl")).unwrap(),
        read_all_records(&after.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(ra.len(), 5);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((x.total, x.grad_norm.total), (y.total, y.grad_norm.total));
    }
}

/// With the optimizer state sharded (`--shard-optimizer`, ZeRO stage 1) two ranks train exactly as
/// with the whole state on each: the same parameters and checkpointed moments (gathered on rank 0),
/// losses and gradient norms (update norms to rounding: summed from the ranks' slices); each rank
/// says what it keeps; and a sharded run stopped at step 3 resumes, sharded, to the same step 5.
#[test]
fn a_sharded_optimizer_state_trains_exactly_as_the_whole_state() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 15);
    let run = |name: &str, steps: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let log = logged(
            train_command(&ds)
                .args(run_args(&ds, &out, "8", steps))
                .args(["--nproc-per-node", "2", "--set", "log_every=1"])
                .args(extra)
                .env("RUST_LOG", "tagfix=info"),
            name,
        );
        (out, log)
    };
    let (whole, _) = run("whole", "5", &[]);
    let (sharded, log) = run("sharded", "5", &["--shard-optimizer"]);
    for rank in 0..2 {
        let line = log
            .lines()
            .find(|l| {
                l.starts_with(&format!("[rank {rank}]")) && l.contains("optimizer state sharded")
            })
            .unwrap_or_else(|| panic!("rank {rank} states its shard:\n{log}"));
        assert!(line.contains(&format!("rank {rank} updates")), "{line}");
    }
    assert!(!log.contains("single rank"), "{log}");
    assert_eq!(worst_param_difference(&whole, &sharded, 5).0, 0.0);
    let moments = |run: &Path| -> BTreeMap<String, Tensor> {
        let f = run.join("checkpoints/step-00000005/optimizer.safetensors");
        Tensor::read_safetensors(&f).unwrap().into_iter().collect()
    };
    let (a, b) = (moments(&whole), moments(&sharded));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name}");
    }
    let config = std::fs::read_to_string(sharded.join("config.toml")).unwrap();
    assert!(config.contains("shard_optimizer = true"), "{config}");
    let records = |run: &Path| read_all_records(&run.join("metrics.jsonl")).unwrap();
    let (ra, rb) = (records(&whole), records(&sharded));
    assert_eq!(ra.len(), 5);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(
            (x.total, x.grad_norm),
            (y.total, y.grad_norm),
            "step {}",
            x.step
        );
        // Update norms: the sharded ranks' squared norms are summed, then square-rooted.
        let (u, v) = (x.update_norm.unwrap(), y.update_norm.unwrap());
        assert_eq!(u.iter().count(), v.iter().count());
        for ((g, a), (h, b)) in u.iter().zip(v.iter()) {
            assert_eq!(g, h);
            assert!(
                rel(a, b) <= 1e-12,
                "step {}: {g:?} update norm {a} vs {b}",
                x.step
            );
        }
    }
    // Stopped at step 3 and resumed: each rank loads its share of the checkpoint's moments.
    let (split, _) = run("split", "3", &["--shard-optimizer"]);
    let out = train_command(&ds)
        .args(["--resume"])
        .arg(&split)
        .args(["--max-steps", "5", "--workers", "1", "--threads", "1"])
        .args(["--nproc-per-node", "2"])
        .output()
        .unwrap();
    check(&out, "resumed sharded");
    assert_eq!(worst_param_difference(&whole, &split, 5).0, 0.0);
    let c = moments(&split);
    for (name, t) in &a {
        assert!(t.equal(&c[name]), "resumed: {name}");
    }
}

/// The ranks split the checks before the first step (each image read once in the run): an
/// unreadable training image in rank 1's part stops the run with exit 2, rank 1 naming the image and
/// its part, rank 0 naming rank 1; so does an unreadable validation image in rank 1's part.
#[test]
fn an_unreadable_image_in_one_ranks_part_of_the_check_stops_every_rank() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 16, 15);
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ds.annotations).unwrap()).unwrap();
    let last = records.as_array().unwrap().last().unwrap()["image_path"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(ds.image_root.join(&last), b"not an image").unwrap();
    // A two-rank run with `--check-images CHECK` that stops before its first step with exit 2: its output.
    let refused = |name: &str, check: &str| {
        let o = train_command(&ds)
            .args(run_args(&ds, &tmp.path().join(name), "4", "2"))
            .args(["--nproc-per-node", "2", "--check-images", check])
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}");
        text
    };
    let text = refused("run", "full");
    let rank1 = text
        .lines()
        .find(|l| l.starts_with("[rank 1]") && l.contains("cannot be read"))
        .unwrap_or_else(|| panic!("rank 1 names the image: {text}"));
    assert!(
        rank1.contains("1 of 8 training images (part 2 of 2 of the set"),
        "{rank1}"
    );
    assert!(text.contains(&last), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("[rank 0]") && l.contains("rank 1")),
        "rank 0 names rank 1: {text}"
    );
    // The validation images' check is split too: the first 12 records validate, records 6..12 are
    // rank 1's part (the training images are not checked here).
    let eighth = ds
        .image_root
        .join(records[8]["image_path"].as_str().unwrap());
    let intact = std::fs::read(&eighth).unwrap();
    std::fs::write(&eighth, b"not an image either").unwrap();
    let text = refused("val", "none");
    assert!(
        text.lines().any(|l| l.starts_with("[rank 1]")
            && l.contains("1 of 6 validation images (part 2 of 2 of the set")),
        "{text}"
    );
    assert!(
        !text.contains("part 1 of 2"),
        "rank 0 found nothing in its part: {text}"
    );
    // `--unreadable-images skip`: rank 1's check warns, a whole epoch (4 steps of 4) loads the
    // image once on whichever rank, and rank 0's summary counts the skips of both ranks.
    std::fs::write(&eighth, intact).unwrap();
    let run = tmp.path().join("skip");
    let mut args = run_args(&ds, &run, "4", "4");
    args.retain(|a| a != "--quiet"); // the skips are warnings
    let o = train_command(&ds)
        .args(args)
        .args(["--nproc-per-node", "2", "--check-images", "full"])
        .args(["--unreadable-images", "skip"])
        .output()
        .unwrap();
    check(&o, "skipping run");
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        text.matches("skipped an unreadable image").count(),
        1,
        "{text}"
    );
    let summary = tagfix::monitor::RunSummary::read(&run).unwrap();
    assert_eq!(summary.skipped_images, 1);
}

#[test]
fn accumulation_across_two_ranks_and_resume_across_world_sizes() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 12);
    // Global batch 8 in micro-batches of 2: 4 on one rank, 2 on each of two. The gradient sums then
    // differ in rounding ((g0+g1)+g2)+g3 vs (g0+g1)+(g2+g3); AdamW with eps 1e-8 would turn that
    // rounding noise on parameters whose true gradient is 0 (attention key biases) into full-size
    // updates of random sign, so this case uses eps 1e-4, far below the true gradients of the others.
    let eps = ["--set", "adam_eps=1e-4"];
    let one = tmp.path().join("one");
    check(
        &train_command(&ds)
            .args(run_args(&ds, &one, "8", "5"))
            .args(eps)
            .output()
            .unwrap(),
        "one rank",
    );
    // Two ranks to step 3, resumed on one to step 5, and one rank resumed on two: as if the run had
    // never stopped.
    let two = tmp.path().join("two");
    split_run(&ds, &two, &eps, [&["--nproc-per-node", "2"], &[]]);
    assert_params_close(&one, &two, 5, 1e-5);
    assert_logs_close(&one, &two, 1e-6);
    let grown = tmp.path().join("grown");
    split_run(&ds, &grown, &eps, [&[], &["--nproc-per-node", "2"]]);
    assert_params_close(&one, &grown, 5, 1e-5);
    assert_logs_close(&one, &grown, 1e-6);
}

/// A run of global batch 8 to step 3 with `extra[0]`, resumed to step 5 with `extra[1]`.
fn split_run(ds: &SynthDataset, run: &Path, settings: &[&str], extra: [&[&str]; 2]) {
    let out = train_command(ds)
        .args(run_args(ds, run, "8", "3"))
        .args(settings)
        .args(extra[0])
        .output()
        .unwrap();
    check(&out, &format!("3 steps {:?}", extra[0]));
    let out = train_command(ds)
        .args(["--resume"])
        .arg(run)
        .args(["--max-steps", "5", "--workers", "1", "--threads", "1"])
        .args(extra[1])
        .output()
        .unwrap();
    check(&out, &format!("resume {:?}", extra[1]));
}

#[test]
fn ranks_that_disagree_on_the_configuration_are_refused_before_the_first_step() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 16, 13);
    let run = tmp.path().join("run");
    let other = ["--set", "weight_decay=0.01"];
    let outs = torchrun(&ds, &run_args(&ds, &run, "4", "3"), [&[], &other]);
    for (r, o) in outs.iter().enumerate() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "rank {r}: {err}");
        assert!(err.contains("rank 1"), "rank {r}: {err}");
    }
    let err = String::from_utf8_lossy(&outs[1].stderr);
    assert!(err.contains("config_sha256"), "{err}");
    // No step was taken.
    let metrics = run.join("metrics.jsonl");
    assert!(!metrics.exists() || std::fs::read(&metrics).unwrap().is_empty());
}

#[test]
fn a_rank_killed_mid_run_stops_the_other_with_its_name_and_an_intact_checkpoint() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 14);
    let run = tmp.path().join("run");
    let mut args = run_args(&ds, &run, "4", "100000");
    set_value(&mut args, "--checkpoint-every", "2");
    set_value(&mut args, "--dist-timeout", "10");
    let mut ranks = spawn_ranks(&ds, &args, [&[], &[]], Contract::Torchrun).into_iter();
    let (rank0, mut rank1) = (ranks.next().unwrap(), ranks.next().unwrap());
    // Rank 1 dies without a word once rank 0 has written its first checkpoint.
    let first = run.join("checkpoints/step-00000002/state.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !first.is_file() {
        assert!(Instant::now() < deadline, "no checkpoint at step 2");
        if !matches!(rank1.try_wait(), Ok(None)) {
            let out = rank1.wait_with_output().unwrap();
            panic!(
                "rank 1 ended before the first checkpoint: {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    rank1.kill().unwrap();
    let _ = rank1.wait();

    // Rank 0 stops on its own (the limit only keeps a hang from blocking the test).
    let out = wait_bounded(rank0, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("rank 0:\n{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rank 1"), "{err}");
    assert!(err.contains("last at step"), "{err}");

    // The newest checkpoint is complete and loads; no half-written one is left behind.
    let ckpts = run.join("checkpoints");
    let newest = tagfix::train::run::newest_checkpoint_in(&ckpts, "state.json")
        .unwrap()
        .expect("a checkpoint");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(!Tensor::read_safetensors(newest.join(f)).unwrap().is_empty());
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(newest.join("state.json")).unwrap()).unwrap();
    assert!(state["step"].as_u64().unwrap() >= 2, "{state}");
    for e in std::fs::read_dir(&ckpts).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name.starts_with("step-"), "left behind: {name}");
    }
}

/// libtorch running out of memory on one rank (rank 1's address space limited; it validates its
/// half of 4096 images in one batch) while rank 0 waits for its scores: rank 1 saves the state
/// after the steps taken for both ranks (every rank holds the same parameters and moments), rank 0's
/// error names rank 1 and where that state is, and the run resumes from it. Before, a distributed
/// run saved nothing and lost the steps since its last checkpoint.
#[test]
fn a_rank_out_of_memory_saves_the_steps_taken_for_every_rank() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 4096, 4);
    let run = tmp.path().join("run");
    let mut args = run_args(&ds, &run, "4", "1");
    args.extend(["--nproc-per-node".into(), "2".into()]);
    check(&train_command(&ds).args(&args).output().unwrap(), "step 1");
    let resume = |extra: &[&str]| {
        let mut a: Vec<String> = ["--resume"].map(String::from).to_vec();
        a.push(run.display().to_string());
        a.extend(["--workers", "1", "--threads", "1"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let big = resume(
        &[
            &["--max-steps", "4", "--val-every", "3"][..],
            &VALIDATE_4096_AT_ONCE,
        ]
        .concat(),
    );
    let outs = ranks_failing(&ds, &big, [false, true]);
    let saved = "The state after step 3 is saved in ";
    let (rank0, rank1) = (&outs[0], &outs[1]);
    eprintln!("rank 0:\n{rank0}\nrank 1:\n{rank1}");
    assert!(!rank1.contains("panicked"), "{rank1}");
    assert!(
        rank1.contains("validation at step 3: libtorch failed: ")
            && rank1.contains(saved)
            && rank1.contains("Validating 2048 images at a time ran out of memory"),
        "rank 1:\n{rank1}"
    );
    assert!(
        rank0.contains("rank 1 failed: ") && rank0.contains(saved),
        "rank 0:\n{rank0}"
    );
    assert_whole_checkpoint(&run, 3);
    let out = train_command(&ds)
        .args(resume(&["--max-steps", "4", "--nproc-per-node", "2"]))
        .output()
        .unwrap();
    check(&out, "resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resuming from ") && err.contains("at step 3"),
        "{err}"
    );
    assert_eq!(saved_and_logged(&run), (4, 4));

    // Both ranks out of memory in the same validation: one writes the checkpoint, the other waits
    // for it and says which rank saved it where.
    let both = resume(&[&["--max-steps", "6"][..], &VALIDATE_4096_AT_ONCE].concat());
    let outs = ranks_failing(&ds, &both, [true, true]);
    eprintln!("both ranks:\n{}", outs.join("\n"));
    let trained = "Every step is taken: the trained state after step 6 is saved in ";
    let waited: Vec<_> = outs
        .iter()
        .filter(|err| err.contains(" saves for every rank. "))
        .collect();
    assert_eq!(waited.len(), 1, "{outs:#?}");
    assert!(outs.iter().all(|err| err.contains(trained)), "{outs:#?}");
    assert_whole_checkpoint(&run, 6);
    // The resume that follows runs the validation that failed, on both ranks, and nothing else.
    let out = train_command(&ds)
        .args(resume(&["--nproc-per-node", "2"]))
        .output()
        .unwrap();
    check(&out, "the validation left");
    let validated: Vec<u64> = read_validation(&run.join("validation.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(validated, [0, 1, 3, 4, 6]);
}

/// The run's checkpoint of `step` is whole: it reads, and its files match their `SHA256SUMS`.
fn assert_whole_checkpoint(run: &Path, step: u64) {
    let dir = run.join("checkpoints").join(format!("step-{step:08}"));
    let (state, verified) = tagfix::train::run_files::read_whole_checkpoint(&dir).unwrap();
    assert_eq!(
        (state.step, verified),
        (step, tagfix::fsutil::checksums::Verified::Matched)
    );
}

/// Two ranks of `tagfix train` with `args`, rank r's address space [`limited`] where `limits[r]`:
/// each must exit 2; their standard errors.
fn ranks_failing(ds: &SynthDataset, args: &[String], limits: [bool; 2]) -> Vec<String> {
    let port = tagfix::train::dist::launch::free_port("127.0.0.1").unwrap();
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            let mut c = rank_command(rank, port, Contract::Torchrun);
            c.args(train_argv(ds)).args(args);
            if limits[rank] {
                limited(&mut c);
            }
            c.spawn().unwrap()
        })
        .collect();
    ranks
        .into_iter()
        .map(|r| {
            let out = wait_bounded(r, Duration::from_secs(300));
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(2), "{err}");
            err
        })
        .collect()
}

/// Limits a rank's address space to 1.2 GB, with the threads that take address space independent
/// of the machine's core count. The run takes ≈ 0.8 GB; validating 2048 images at once more.
fn limited(c: &mut Command) {
    c.env("RAYON_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MALLOC_ARENA_MAX", "2");
    limit(c, libc::RLIMIT_AS, 1_200_000_000);
}

/// Rank 0 alone verifies the checkpoint a distributed resume continues from (reading and hashing
/// every file), tells the other ranks which one it is and sends them its parameters and moments:
/// with a bit of the newest checkpoint flipped on the disk, both ranks resume from the one before,
/// and only rank 0, which hashed the files, says why. (That the moments arrive whole is
/// `accumulation_across_two_ranks_and_resume_across_world_sizes`: a run resumed on two ranks
/// trains as the uninterrupted one.)
#[test]
fn rank_0_chooses_the_checkpoint_a_distributed_resume_continues_from() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 18);
    let run = tmp.path().join("run");
    let mut args = run_args(&ds, &run, "4", "2");
    set_value(&mut args, "--checkpoint-every", "1");
    args.extend(["--nproc-per-node".into(), "2".into()]);
    check(&train_command(&ds).args(&args).output().unwrap(), "2 steps");
    let moments = run.join("checkpoints/step-00000002/optimizer.safetensors");
    let mut flipped = std::fs::read(&moments).unwrap();
    let middle = flipped.len() - 5;
    flipped[middle] ^= 0x10;
    std::fs::write(&moments, &flipped).unwrap();
    let out = train_command(&ds)
        .arg("--resume")
        .arg(&run)
        .args(["--max-steps", "3", "--workers", "1", "--threads", "1"])
        .args(["--nproc-per-node", "2"])
        .output()
        .unwrap();
    check(&out, "resume");
    let err = String::from_utf8_lossy(&out.stderr);
    // Rank 0 alone reads it; rank 1 receives the parameters and moments from rank 0.
    for (r, end) in [
        (0, "step-00000001 at step 1 (epoch 0)"),
        (1, " from rank 0)"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&format!("[rank {r}] "))
                && l.contains("resuming from ")
                && l.contains("step-00000001 at step 1")
                && l.ends_with(end)),
            "rank {r}:\n{err}"
        );
    }
    let passed_over = |r: usize| {
        err.lines().any(|l| {
            l.starts_with(&format!("[rank {r}] "))
                && l.contains("step-00000002 is not whole (")
                && l.contains("its bytes changed since they were written")
        })
    };
    assert!(passed_over(0) && !passed_over(1), "{err}");
    assert_eq!(saved_and_logged(&run), (3, 3));
}

#[test]
fn a_run_that_stops_itself_on_two_ranks_exits_3_with_a_checkpoint() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 16, 15);
    let run = tmp.path().join("run");
    // A learning rate near f32's largest value overflows the weights in the first update.
    let mut args = run_args(&ds, &run, "4", "5");
    for key in ["--lr", "min_lr", "warmup_lr"] {
        set_value(&mut args, key, "1e38");
    }
    let out = train_command(&ds)
        .args(args)
        .args(["--nproc-per-node", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
    let saved = tagfix::train::run::newest_checkpoint_in(&run.join("checkpoints"), "state.json");
    assert!(saved.unwrap().is_some(), "the last good state is saved");
}

/// `--checkpoint-every` as a duration on two ranks: each rank's clock votes in the step's summed
/// values, so both save after the same steps (a rank saving alone would leave the other waiting in
/// the checkpoint's barrier until `--dist-timeout`).
#[test]
fn a_checkpoint_interval_of_time_saves_on_both_ranks_after_the_same_steps() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 16, 16);
    let run = tmp.path().join("run");
    let mut args = run_args(&ds, &run, "4", "3");
    set_value(&mut args, "--checkpoint-every", "1ns");
    args.retain(|a| a != "--quiet");
    let outs = torchrun(&ds, &args, [&[], &[]]);
    for (r, o) in outs.iter().enumerate() {
        check(o, &format!("rank {r}"));
    }
    let log = String::from_utf8_lossy(&outs[0].stderr);
    for step in 1..=3 {
        assert!(run
            .join(format!("checkpoints/step-{step:08}/state.json"))
            .is_file());
    }
    assert!(
        log.contains("checkpoint at step 2: ") && log.contains("(checkpoint_every = 1ns)"),
        "{log}"
    );
}

/// The step a run's newest checkpoint holds, and how many steps its metrics log.
fn saved_and_logged(run: &Path) -> (u64, u64) {
    let newest = tagfix::train::run::newest_checkpoint_in(&run.join("checkpoints"), "state.json")
        .unwrap()
        .expect("a checkpoint");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(newest.join("state.json")).unwrap()).unwrap();
    let logged = read_all_records(&run.join("metrics.jsonl")).unwrap().len() as u64;
    (state["step"].as_u64().unwrap(), logged)
}

#[test]
fn sigterm_to_the_launcher_stops_both_ranks_after_the_same_step_and_resume_finishes() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 16);
    let run = tmp.path().join("run");
    let mut launcher = Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .args(train_argv(&ds))
        .args(run_args(&ds, &run, "4", "100000"))
        .args(["--nproc-per-node", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    signal_after_steps(&mut launcher, &run.join("metrics.jsonl"), 2, libc::SIGTERM);
    let out = wait_bounded(launcher, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(143), "{err}");
    for line in [
        "SIGTERM: the ranks stop after the current step",
        "[rank 0] SIGTERM: training stops after the current step",
        "[rank 1] SIGTERM: training stops after the current step",
        "the ranks stopped on SIGTERM, after saving a checkpoint",
    ] {
        assert!(err.contains(line), "missing {line:?}:\n{err}");
    }
    let (saved, logged) = saved_and_logged(&run);
    assert_eq!(saved, logged, "the checkpoint holds the last step logged");

    let more = (logged + 2).to_string();
    let out = train_command(&ds)
        .args(["--resume"])
        .arg(&run)
        .args(["--max-steps", &more, "--nproc-per-node", "2"])
        .output()
        .unwrap();
    check(&out, "resume on 2 ranks");
    assert_eq!(saved_and_logged(&run), (logged + 2, logged + 2));
}

/// A signal that reaches one rank only (a `kill` of its process): the ranks vote through the step's
/// loss sums, so both stop after the same step and rank 0 saves it.
#[test]
fn a_stop_signal_to_one_rank_stops_both_after_the_same_step() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("data"), 32, 17);
    let run = tmp.path().join("run");
    let args = run_args(&ds, &run, "4", "100000");
    let mut ranks = spawn_ranks(&ds, &args, [&[], &[]], Contract::Torchrun).into_iter();
    let (rank0, mut rank1) = (ranks.next().unwrap(), ranks.next().unwrap());
    signal_after_steps(&mut rank1, &run.join("metrics.jsonl"), 2, libc::SIGUSR1);
    let one = wait_bounded(rank1, Duration::from_secs(120));
    let zero = wait_bounded(rank0, Duration::from_secs(120));
    let (err0, err1) = (
        String::from_utf8_lossy(&zero.stderr),
        String::from_utf8_lossy(&one.stderr),
    );
    assert_eq!(one.status.code(), Some(128 + libc::SIGUSR1), "{err1}");
    assert!(err1.contains("SIGUSR1 after step"), "{err1}");
    // Rank 0 stops for the signal rank 1 received, and says where it arrived.
    assert_eq!(zero.status.code(), Some(128 + libc::SIGUSR1), "{err0}");
    assert!(
        err0.contains("SIGUSR1 to another rank after step"),
        "{err0}"
    );
    let (saved, logged) = saved_and_logged(&run);
    assert_eq!(saved, logged);
    for err in [&err0, &err1] {
        assert!(err.contains(&format!("after step {saved}:")), "{err}");
    }
}
