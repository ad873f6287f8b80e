//! The `state`, `run` and `checksums` targets: the files `tagfix train --resume` reads back, a
//! checkpoint's `state.json` (then the loss weighting continued from it, as the trainer continues
//! it), the run folder's `run.json` (then compared with the inputs of the command, as
//! `--auto-resume` does) and a checkpoint's `SHA256SUMS` (then its files verified against it).

use super::written;
use crate::fsutil::checksums::{self, CHECKSUM_FILE};
use crate::monitor::LossTerm;
use crate::train::config::{LossBalance, LossWeights, TrainConfig};
use crate::train::run_files::{
    read_run_inputs, read_state, write_run_inputs, write_state, CheckpointState, TrainInputs,
    ValidationInputs, CHECKPOINT_FILES, RUN_FILE, STATE_SCHEMA,
};
use crate::train::weighting::{step_losses, LossWeighting};
use std::path::Path;

/// The steps of the run the fuzzed checkpoint is resumed into: a state at or beyond it is refused
/// before any step, as the trainer refuses it.
const TOTAL_STEPS: u64 = 1_000;
/// The checkpoint folder the state is read from (its name is checked against the state's step).
const FOLDER: &str = "step-00000005";

pub(super) fn state_target() -> super::Target {
    super::Target {
        name: "state",
        file: "state.json",
        run: run_state,
        dict: STATE_DICT,
        generate: None,
        seeds: state_seeds,
        shared_seeds: &[],
    }
}

pub(super) fn run_target() -> super::Target {
    super::Target {
        name: "run",
        file: RUN_FILE,
        run: run_run_inputs,
        dict: RUN_DICT,
        generate: None,
        seeds: run_seeds,
        shared_seeds: &[],
    }
}

/// The checksum list of a checkpoint folder (`SHA256SUMS`), verified against the folder's files as a
/// resume and an evaluation verify it.
pub(super) fn checksums_target() -> super::Target {
    super::Target {
        name: "checksums",
        file: CHECKSUM_FILE,
        run: run_checksums,
        dict: CHECKSUMS_DICT,
        generate: None,
        seeds: checksums_seeds,
        shared_seeds: &[],
    }
}

/// Small stand-ins for a checkpoint's files, which the fuzzed list is checked against.
fn write_checkpoint_files(dir: &Path) -> std::io::Result<()> {
    for name in CHECKPOINT_FILES {
        std::fs::write(dir.join(name), name.as_bytes())?;
    }
    Ok(())
}

fn run_checksums(path: &Path, _: &[u8]) {
    let dir = path.parent().unwrap_or(Path::new("."));
    if write_checkpoint_files(dir).is_err() {
        return;
    }
    let _ = checksums::verify_folder(dir, &CHECKPOINT_FILES);
    let _ = checksums::verify_file(&dir.join(CHECKPOINT_FILES[0]));
}

/// The list the saver writes for the stand-in files, and one whose model digest is another's.
fn checksums_seeds() -> Vec<(String, Vec<u8>)> {
    let tmp = tempfile::tempdir().expect("temp dir");
    write_checkpoint_files(tmp.path()).expect("writing the stand-ins");
    checksums::write_checksums(tmp.path(), &CHECKPOINT_FILES).expect("writing a seed");
    let whole = std::fs::read(tmp.path().join(CHECKSUM_FILE)).expect("reading a seed");
    let mut changed = whole.clone();
    changed[0] = if changed[0] == b'0' { b'1' } else { b'0' };
    vec![("whole.txt".into(), whole), ("changed.txt".into(), changed)]
}

/// Reads the input as a checkpoint's state in a `step-00000005` folder, then continues its loss
/// weighting under the seeds' configurations and another over the steps a resume would run.
fn run_state(path: &Path, input: &[u8]) {
    let dir = path.parent().unwrap_or(Path::new(".")).join(FOLDER);
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("state.json"), input).is_err()
    {
        return;
    }
    let Ok(state) = read_state(&dir) else { return };
    if state.step >= TOTAL_STEPS {
        return;
    }
    // The seeds' own settings (so their weighting continues) and one they all differ from.
    let other_weights = LossWeights {
        tag: 2.0,
        ..LossWeights::default()
    };
    let configs = [
        resumed_config(LossBalance::Fixed, 20),
        resumed_config(LossBalance::Initial, 8),
        resumed_config(LossBalance::Initial, 3),
        TrainConfig {
            loss_weights: other_weights,
            ..resumed_config(LossBalance::Initial, 2)
        },
    ];
    for config in configs {
        let (mut weighting, _) = LossWeighting::resumed(state.weighting.clone(), &config);
        for step in state.step..(state.step + 3).min(TOTAL_STEPS) {
            let raw = [
                (LossTerm::Tag, 120.5),
                (LossTerm::Align, 12.25),
                (LossTerm::Dis, 0.0),
            ];
            let _ = weighting.observe(step, &raw);
            let _: f64 = step_losses(&raw, &weighting.weights)
                .iter()
                .map(|(_, v)| v.weighted)
                .sum();
        }
    }
}

fn resumed_config(loss_balance: LossBalance, balance_steps: u64) -> TrainConfig {
    TrainConfig {
        loss_balance,
        balance_steps,
        ..TrainConfig::default()
    }
}

/// Reads the input as `run.json`, compares it with a command's inputs both ways and makes its paths
/// absolute, as a run that records it again does.
fn run_run_inputs(path: &Path, _: &[u8]) {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(recorded) = read_run_inputs(dir) {
        let given = sample_inputs(dir);
        let _ = given.first_difference(&recorded);
        let _ = recorded.first_difference(&given);
        let _ = recorded.absolute();
    }
}

fn sample_inputs(dir: &Path) -> TrainInputs {
    TrainInputs {
        data: vec![dir.join("train_a.json"), dir.join("train_b.json")],
        images: dir.join("images"),
        manifest: dir.join("manifest.json"),
        label_embed: dir.join("label_embed.safetensors"),
        teacher: Some(dir.join("teacher.safetensors")),
        init: vec![dir.join("swin_large_patch4_window7_224_22k.pth")],
        vocab: Some("ram".into()),
        allow_random_encoder: false,
        validation: Some(ValidationInputs {
            data: dir.join("benchmark"),
            images: None,
            thresholds: Some(dir.join("thresholds.txt")),
        }),
    }
}

/// States as the trainer writes them at step 5: a fixed weighting, a balance still measuring, a
/// balance that took effect (with the configured weights it started from).
fn state_seeds() -> Vec<(String, Vec<u8>)> {
    let state = |weighting: LossWeighting| CheckpointState {
        schema: STATE_SCHEMA.into(),
        step: 5,
        epoch: 1,
        step_in_epoch: 1,
        samples_seen: 260,
        seed: 3,
        torch_rng: "reseeded per micro-batch from (seed, step, micro)".into(),
        records: 208,
        data_fingerprint: crate::fsutil::sha256_hex(b"records"),
        weighting,
        wall_s: 12.75,
        model: "swin_l_224".into(),
    };
    let fixed = LossWeighting::new(LossWeights::default(), LossBalance::Fixed, 20);
    let mut measuring = LossWeighting::new(LossWeights::default(), LossBalance::Initial, 8);
    let mut balanced = LossWeighting::new(LossWeights::default(), LossBalance::Initial, 3);
    for step in 0..5 {
        let raw = [
            (LossTerm::Tag, 300.0),
            (LossTerm::Align, 40.0),
            (LossTerm::Dis, 0.28),
        ];
        measuring.observe(step, &raw);
        balanced.observe(step, &raw);
    }
    [
        ("fixed", fixed),
        ("measuring", measuring),
        ("balanced", balanced),
    ]
    .into_iter()
    .map(|(name, weighting)| {
        let tmp = tempfile::tempdir().expect("temp dir");
        write_state(tmp.path(), &state(weighting)).expect("writing a seed");
        let bytes = std::fs::read(tmp.path().join("state.json")).expect("reading a seed");
        (format!("{name}.json"), bytes)
    })
    .collect()
}

/// `run.json` of a run with every input named, and of one with only the required ones.
fn run_seeds() -> Vec<(String, Vec<u8>)> {
    let full = sample_inputs(Path::new("/data/ram"));
    let minimal = TrainInputs {
        teacher: None,
        init: Vec::new(),
        vocab: None,
        validation: None,
        allow_random_encoder: true,
        ..full.clone()
    };
    [("full.json", full), ("minimal.json", minimal)]
        .into_iter()
        .map(|(name, inputs)| {
            let (_, bytes) = written(RUN_FILE, |p| {
                write_run_inputs(p.parent().expect("a temp folder"), &inputs)
            });
            (name.to_string(), bytes)
        })
        .collect()
}

#[rustfmt::skip]
const STATE_DICT: &[&[u8]] = &[
    b"\"tagfix.train-checkpoint/1\"", b"\"schema\"", b"\"step\"", b"\"epoch\"", b"\"step_in_epoch\"",
    b"\"samples_seen\"", b"\"seed\"", b"\"torch_rng\"", b"\"records\"", b"\"data_fingerprint\"",
    b"\"weighting\"", b"\"weights\"", b"\"configured\"", b"\"mode\"", b"\"initial\"", b"\"fixed\"",
    b"\"balance_steps\"", b"\"measured\"", b"\"measured_steps\"", b"\"balanced_at\"", b"\"wall_s\"",
    b"\"model\"", b"\"tag\"", b"\"align\"", b"\"dis\"", b"18446744073709551615", b"999", b"1000",
    b"-1", b"0", b"5", b"1e308", b"-0.0", b"4.9e-324", b"null", b"[0,0,0]",
];

#[rustfmt::skip]
const CHECKSUMS_DICT: &[&[u8]] = &[
    b"  ", b" *", b"\n", b"\r\n", b"\\", b"model.safetensors", b"optimizer.safetensors",
    b"state.json", b"SHA256SUMS", b"..", b"/", b".", b"\0",
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

#[rustfmt::skip]
const RUN_DICT: &[&[u8]] = &[
    b"\"data\"", b"\"images\"", b"\"manifest\"", b"\"label_embed\"", b"\"teacher\"", b"\"init\"",
    b"\"vocab\"", b"\"allow_random_encoder\"", b"\"validation\"", b"\"thresholds\"", b"\"\"",
    b"\"\\u0000\"", b"\"/\"", b"\"..\"", b"\"ram\"", b"true", b"false", b"null", b"[]",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed reads back and reaches the weighting and the comparison.
    #[test]
    fn the_seeds_are_files_a_resume_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(FOLDER);
        std::fs::create_dir(&dir).unwrap();
        let modes: Vec<_> = state_seeds()
            .into_iter()
            .map(|(_, bytes)| {
                std::fs::write(dir.join("state.json"), bytes).unwrap();
                let w = read_state(&dir).unwrap().weighting;
                (w.mode, w.balanced_at)
            })
            .collect();
        assert_eq!(
            modes,
            [
                (LossBalance::Fixed, None),
                (LossBalance::Initial, None),
                (LossBalance::Initial, Some(3))
            ]
        );
        let differences: Vec<_> = run_seeds()
            .into_iter()
            .map(|(_, bytes)| {
                std::fs::write(tmp.path().join(RUN_FILE), bytes).unwrap();
                let read = read_run_inputs(tmp.path()).unwrap();
                read.first_difference(&sample_inputs(Path::new("/data/ram")))
                    .map(|d| d.flag)
            })
            .collect();
        assert_eq!(differences, [None, Some("--teacher")]);
    }

    /// The saver's list verifies the stand-ins; the changed one names the model's digest.
    #[test]
    fn the_checksum_seeds_verify_and_fail_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        write_checkpoint_files(tmp.path()).unwrap();
        let verdicts: Vec<_> = checksums_seeds()
            .into_iter()
            .map(|(_, bytes)| {
                std::fs::write(tmp.path().join(CHECKSUM_FILE), bytes).unwrap();
                checksums::verify_folder(tmp.path(), &CHECKPOINT_FILES).map_err(|e| e.to_string())
            })
            .collect();
        assert_eq!(verdicts[0], Ok(checksums::Verified::Matched));
        let e = verdicts[1].as_ref().unwrap_err();
        assert!(e.contains("model.safetensors: its bytes changed"), "{e}");
    }
}
