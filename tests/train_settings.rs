//! `tagfix train` refuses every out-of-range numeric setting before reading any input (any build:
//! the configuration is resolved first), with exit 2 and a message naming the key and its flag.

use assert_cmd::Command;

fn train(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("tagfix")
        .unwrap()
        .current_dir(dir.path())
        .args(["--quiet", "train", "--out", "run"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        !dir.path().join("run").exists(),
        "{args:?}: a run directory was created"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reliability_recipes_are_refused_with_the_flag_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "inf"], "init_lr (--lr) must be a finite number > 0, got inf"),
        (&["--lr", "NaN"], "init_lr (--lr) must be a finite number > 0, got NaN"),
        (&["--lr", "0"], "init_lr (--lr) must be a finite number > 0, got 0"),
        (&["--set", "betas=[1.5, 2.0]"], "betas[0] (config key; --set betas=...) must be in [0, 1), got 1.5"),
        (&["--set", "betas=[0.9, 1.0]"], "betas[1] (config key; --set betas=...) must be in [0, 1), got 1"),
        (&["--grad-clip=-1"], "grad_clip (--grad-clip) must be a finite number > 0 (leave it unset for no clipping), got -1"),
        (&["--grad-clip", "0"], "grad_clip (--grad-clip) must be a finite number > 0"),
        (&["--set", "adam_eps=-1"], "adam_eps (config key; --set adam_eps=...) must be a finite number > 0, got -1"),
        (&["--set", "min_lr=1.0"], "min_lr (config key; --set min_lr=...) must be <= init_lr (0.0001), got 1"),
        (&["--set", "warmup_lr=nan"], "--set warmup_lr: `nan` is not a finite number"),
        (&["--set", "weight_decay=-0.1"], "weight_decay (config key; --set weight_decay=...) must be a finite number >= 0"),
        (&["--set", "lr_decay_rate=1.5"], "lr_decay_rate (config key; --set lr_decay_rate=...) must be in (0, 1]"),
        (&["--set", "loss_weights={tag=1, align=inf, dis=1}"], "--set loss_weights: `{tag=1, align=inf, dis=1}` is not a finite number"),
        (&["--set", "loss_weights={tag=1, align=-2, dis=1}"], "loss_weights.align (--loss-weights) must be a finite number >= 0, got -2"),
        (&["--set", "prefetch=0"], "prefetch (config key; --set prefetch=...) must be in 1..=64, got 0"),
        (&["--batch-size", "0"], "batch_size (--batch-size) and micro_batch_size (--micro-batch-size) must be >= 1"),
        (&["--keep-checkpoints", "0"], "keep_checkpoints (--keep-checkpoints) must be >= 1, got 0"),
        (&["--checkpoint-every", "0"], "checkpoint_every (--checkpoint-every) must be >= 1 step or a positive duration, or `off` for only the final checkpoint"),
        (&["--set", "checkpoint_every=0"], "checkpoint_every (--checkpoint-every) must be >= 1 step or a positive duration, or `off`"),
        (&["--checkpoint-every", "0s"], "must be >= 1 step or a positive duration"),
        (&["--checkpoint-every", "soon"], "`soon` is neither a number of steps, a duration (`30m`, `2h`: "),
    ];
    for (args, message) in cases {
        let (code, err) = train(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(message),
            "{args:?}: expected `{message}` in: {err}"
        );
    }
}

#[test]
fn checkpoint_every_off_and_a_worker_count_beyond_the_cores_pass_the_settings_check() {
    // Both settings are valid: the command goes on to ask for its inputs (or, without the `train`
    // feature, says so), it does not stop at the settings.
    for args in [
        &["--checkpoint-every", "off"][..],
        &["--set", "checkpoint_every=\"off\""],
        &["--workers", "100000"],
    ] {
        let (code, err) = train(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("is required") || err.contains("without the `train` feature"),
            "{args:?}: {err}"
        );
    }
}
