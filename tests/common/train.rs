//! Setup shared by the training tests: the synthetic dataset, its training inputs, a small
//! configuration of the tiny RAM++, and the lock that runs one training at a time.

use std::path::Path;
use std::process::{Child, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tagfix::train::config::{CheckpointEvery, TrainConfig};
use tagfix::train::data::synth::{generate, SynthDataset, SynthOptions};
use tagfix::train::run::TrainInputs;

/// libtorch's generator and thread count are process-global: tests that train run one at a time so
/// each run's randomness is its own.
static TORCH: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// `tagfix synth-images`' set of `count` 64-px images (three descriptions per tag).
pub fn dataset(dir: &Path, count: usize, seed: u64) -> SynthDataset {
    generate(
        &SynthOptions {
            count,
            size: 64,
            seed,
            descriptions: 3,
            vocab: None,
        },
        dir,
    )
    .unwrap()
}

/// The dataset's files as training inputs, with its teacher file and a random image encoder allowed.
pub fn inputs(ds: &SynthDataset) -> TrainInputs {
    TrainInputs {
        data: vec![ds.annotations.clone()],
        images: ds.image_root.clone(),
        manifest: ds.manifest.clone(),
        label_embed: ds.label_embed.clone(),
        teacher: Some(ds.teacher.clone()),
        init: Vec::new(),
        vocab: None,
        allow_random_encoder: true,
        validation: None,
    }
}

/// `tagfix train` of the tiny model (random encoder allowed) on the dataset's annotations, images,
/// manifest and label embeddings; the caller adds the rest.
pub fn train_command(ds: &SynthDataset) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("tagfix").unwrap();
    c.args(train_argv(ds));
    c
}

/// The arguments of [`train_command`].
pub fn train_argv(ds: &SynthDataset) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = ["train", "--model", "tiny", "--allow-random-encoder"]
        .iter()
        .map(Into::into)
        .collect();
    for (flag, path) in [
        ("--data", &ds.annotations),
        ("--images", &ds.image_root),
        ("--manifest", &ds.manifest),
        ("--label-embed", &ds.label_embed),
    ] {
        a.push(flag.into());
        a.push(path.into());
    }
    a
}

/// The dataset's inputs, validated on its own training images.
pub fn inputs_validated_on_training_images(ds: &SynthDataset) -> TrainInputs {
    TrainInputs {
        validation: Some(tagfix::train::validate::ValidationInputs {
            data: ds.annotations.clone(),
            images: None,
            thresholds: None,
        }),
        ..inputs(ds)
    }
}

/// The tiny model, batch 8, a constant learning rate after 10 warm-up steps, one thread, no
/// intermediate checkpoints.
pub fn small_config(steps: u64) -> TrainConfig {
    TrainConfig {
        model: Some("tiny".into()),
        batch_size: 8,
        micro_batch_size: Some(8.into()),
        init_lr: 2e-3,
        min_lr: 2e-3,
        warmup_lr: 1e-4,
        warmup_steps: 10,
        max_steps: Some(steps),
        workers: 1,
        threads: 1,
        prefetch: 4,
        checkpoint_every: CheckpointEvery::Off,
        keep_checkpoints: 2,
        seed: 3,
        ..Default::default()
    }
}

/// Waits for `child` until `limit`, then kills it (a hang fails the test instead of blocking it).
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let hung = matches!(child.try_wait(), Ok(None));
    if hung {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !hung,
        "still running after {limit:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends `signal` to `child` once `metrics` (a run's `metrics.jsonl`) holds at least `steps` records,
/// as a scheduler's time limit or Ctrl-C would mid-run. Panics when the child ends first or no such
/// step comes within 300 s.
pub fn signal_after_steps(child: &mut Child, metrics: &Path, steps: usize, signal: i32) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let records = || {
        std::fs::read_to_string(metrics)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    while records() < steps {
        assert!(
            Instant::now() < deadline,
            "no step {steps} in {}",
            metrics.display()
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ended before step {steps}: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Sets the child's `resource` limit (soft and hard) to `bytes`.
pub fn limit(c: &mut std::process::Command, resource: libc::__rlimit_resource_t, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; the limit is the child's alone.
    unsafe {
        c.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            match libc::setrlimit(resource, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
}

/// Validation of 4096 images in one batch: more memory than the tests' address-space limit
/// (1.2 GB; the run itself takes ≈ 0.8 GB) leaves, on one rank or on each of two.
pub const VALIDATE_4096_AT_ONCE: [&str; 4] =
    ["--val-max-images", "4096", "--set", "val_batch_size=4096"];
