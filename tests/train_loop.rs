//! The training loop on the synthetic dataset with the tiny RAM++ (CPU): losses fall, the absent-slot
//! policies do what they say, gradient accumulation equals the full batch, resume equals an
//! uninterrupted run, and bad inputs fail before the first step.
#![cfg(feature = "train")]

mod common;

use common::train::{
    dataset, inputs, inputs_validated_on_training_images, serial, small_config, train_command,
};
use std::path::{Path, PathBuf};
use tagfix::monitor::read_all_records;
use tagfix::train::config::{
    AbsentPolicy, CheckpointEvery, LossBalance, MicroBatchSize, TrainConfig, UnreadableImages,
};
use tagfix::train::data::synth::SynthDataset;
use tagfix::train::run::{prepare, train, RunSummary, TrainInputs, Trainer};

fn run(cfg: &TrainConfig, inp: &TrainInputs, out: &Path) -> RunSummary {
    let p = prepare(cfg, inp).unwrap();
    train(p, out, false).unwrap()
}

#[test]
fn losses_fall_and_absent_policies_hold() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 64, 1);
    let inp = inputs(&ds);
    let eps = 0.2;
    let steps = 200;

    let smooth = run(
        &TrainConfig {
            absent: AbsentPolicy::Smooth(eps),
            ..small_config(steps)
        },
        &inp,
        &tmp.path().join("smooth"),
    );
    for term in ["tag", "align", "dis"] {
        let (e, l) = (smooth.early[term], smooth.late[term]);
        assert!(l < 0.9 * e, "{term}: {e} → {l} did not fall");
    }
    let p_smooth = smooth.absent_probability().unwrap();
    assert!(
        (p_smooth - eps).abs() < 0.06,
        "smooth={eps}: absent slots settle at {p_smooth}"
    );

    let negative = run(
        &TrainConfig {
            absent: AbsentPolicy::Negative,
            ..small_config(steps)
        },
        &inp,
        &tmp.path().join("negative"),
    );
    let p_neg = negative.absent_probability().unwrap();
    assert!(
        p_neg < 0.05,
        "negative: absent slots should collapse toward 0, mean p = {p_neg}"
    );
    eprintln!("absent mean probability: smooth={eps} → {p_smooth:.4}, negative → {p_neg:.4}");

    // The metrics log has one record per step with raw and weighted terms.
    let recs = read_all_records(&tmp.path().join("smooth/metrics.jsonl")).unwrap();
    assert_eq!(recs.len() as u64, steps);
    let r = &recs[5];
    let dis = r.loss.dis.unwrap();
    assert!((dis.weighted - 100.0 * dis.raw).abs() < 1e-9 * dis.weighted.abs().max(1.0));
    assert!(r.grad_norm.image_encoder.unwrap() > 0.0);
    // Update norms are measured on logging steps only (every `log_every`, 50 by default).
    let log_every = small_config(steps).log_every;
    for r in &recs {
        assert_eq!(
            r.update_norm.is_some(),
            r.step % log_every == 0,
            "step {}",
            r.step
        );
    }
    assert!(recs[49].update_norm.unwrap().image_encoder.unwrap() > 0.0);
}

#[test]
fn resume_equals_uninterrupted_run() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 32, 2);
    // Validation on 8 of the training images every 3 steps: it must not disturb the trajectory.
    let inp = inputs_validated_on_training_images(&ds);
    let cfg = TrainConfig {
        batch_size: 8,
        micro_batch_size: Some(4.into()),
        checkpoint_every: CheckpointEvery::Steps(3),
        loss_balance: LossBalance::Initial,
        balance_steps: 4,
        val_every: 3,
        val_max_images: Some(8),
        ..small_config(10)
    };
    let full_dir = tmp.path().join("full");
    run(&cfg, &inp, &full_dir);

    let part_dir = tmp.path().join("part");
    let first = TrainConfig {
        max_steps: Some(6),
        ..cfg.clone()
    };
    run(&first, &inp, &part_dir);
    // Simulate the interrupted run having logged past its last checkpoint.
    let resumed = train(prepare(&cfg, &inp).unwrap(), &part_dir, true).unwrap();
    assert_eq!(resumed.first_step, 6);

    let a = read_all_records(&full_dir.join("metrics.jsonl")).unwrap();
    let b = read_all_records(&part_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 10);
    assert_eq!(b.len(), 10);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert_eq!(
            x.loss, y.loss,
            "step {}: losses differ after resume",
            x.step
        );
        assert_eq!(x.total, y.total);
        assert_eq!(x.lr, y.lr);
        assert_eq!(x.grad_norm, y.grad_norm, "step {}", x.step);
    }
    let va = tagfix::monitor::read_validation(&full_dir.join("validation.jsonl")).unwrap();
    let vb = tagfix::monitor::read_validation(&part_dir.join("validation.jsonl")).unwrap();
    assert_eq!(
        va.iter().map(|v| v.step).collect::<Vec<_>>(),
        vec![0, 3, 6, 9, 10]
    );
    assert_eq!(va, vb, "validation after resume differs");
    assert_eq!(resumed.validation.len(), 2, "steps 9 and 10");
    // Balanced weights were measured before the interruption and carried over.
    assert_ne!(
        a[9].loss.dis.unwrap().weighted / a[9].loss.dis.unwrap().raw,
        100.0
    );
    // keep_checkpoints = 2: only the newest two remain.
    let kept: Vec<PathBuf> = std::fs::read_dir(part_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(part_dir
        .join("checkpoints/step-00000010/optimizer.safetensors")
        .is_file());
    // A second plain run into the same folder is refused.
    let err = match train(prepare(&cfg, &inp).unwrap(), &part_dir, false) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("reused run dir"),
    };
    assert!(err.contains("--resume"), "{err}");
}

/// A resume whose configuration changes the loss weights trains with them from the resumed step on
/// (the checkpoint's weighting is kept only when the configuration asks for it); a checkpoint whose
/// `state.json` cannot be continued, another batch size or another seed is refused before anything is
/// written; a metrics line the stopped run left unfinished is dropped.
#[test]
fn a_resume_with_other_loss_weights_uses_them_and_a_damaged_state_is_refused() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 5);
    let inp = inputs(&ds);
    let cfg = TrainConfig {
        batch_size: 4,
        micro_batch_size: Some(4.into()),
        checkpoint_every: CheckpointEvery::Steps(2),
        ..small_config(2)
    };
    let dir = tmp.path().join("run");
    run(&cfg, &inp, &dir);
    let heavier = TrainConfig {
        loss_weights: "tag=2".parse().unwrap(),
        max_steps: Some(4),
        ..cfg.clone()
    };
    let state = dir.join("checkpoints/step-00000002/state.json");
    let good = std::fs::read(&state).unwrap();
    let metrics = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    let mut damaged: serde_json::Value = serde_json::from_slice(&good).unwrap();
    damaged["weighting"]["weights"]["tag"] = (-1.0).into();
    std::fs::write(&state, serde_json::to_vec(&damaged).unwrap()).unwrap();
    let err = match train(prepare(&heavier, &inp).unwrap(), &dir, true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("resumed from a damaged state"),
    };
    assert!(
        err.contains("loss weighting: weights tag=-1,align=10,dis=100"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), metrics);

    std::fs::write(&state, good).unwrap();
    // Another batch size is refused before the checkpoint's tensors are read.
    let other_batch = TrainConfig {
        batch_size: 8,
        micro_batch_size: Some(8.into()),
        ..heavier.clone()
    };
    let err = match train(prepare(&other_batch, &inp).unwrap(), &dir, true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("resumed with another batch size"),
    };
    assert!(
        err.contains("batches of 4 images, this configuration's batch is 8"),
        "{err}"
    );
    let other_seed = TrainConfig {
        seed: 4,
        ..heavier.clone()
    };
    let err = match train(prepare(&other_seed, &inp).unwrap(), &dir, true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("resumed with another seed"),
    };
    assert!(
        err.contains("from seed 3, this configuration's seed is 4") && err.contains("--seed 3"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), metrics);
    // The stopped run's last metrics line cut short (killed mid-write): the resume drops it.
    let mut torn = metrics.clone();
    torn.extend_from_slice(&metrics[..metrics.len() / 3]);
    std::fs::write(dir.join("metrics.jsonl"), torn).unwrap();
    let summary = train(prepare(&heavier, &inp).unwrap(), &dir, true).unwrap();
    assert_eq!(summary.final_weights.tag, 2.0);
    let records = read_all_records(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), 4);
    for r in &records {
        let tag = r.loss.tag.unwrap();
        let weight = if r.step <= 2 { 1.0 } else { 2.0 };
        assert_eq!(tag.weighted, tag.raw * weight, "step {}", r.step);
    }
}

#[test]
fn micro_batch_size_auto_takes_the_whole_batch_on_the_cpu_and_is_recorded() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 4);
    let inp = inputs(&ds);
    let fixed = TrainConfig {
        batch_size: 8,
        micro_batch_size: Some(8.into()),
        ..small_config(2)
    };
    let auto = TrainConfig {
        micro_batch_size: Some(MicroBatchSize::Auto),
        ..fixed.clone()
    };
    run(&fixed, &inp, &tmp.path().join("fixed"));
    run(&auto, &inp, &tmp.path().join("auto"));
    // The run's config.toml (what --resume reads) holds the number chosen, not `auto`.
    let saved = TrainConfig::load(&tmp.path().join("auto/config.toml")).unwrap();
    assert_eq!(saved.config.micro_batch_size, Some(8.into()));
    let a = read_all_records(&tmp.path().join("fixed/metrics.jsonl")).unwrap();
    let b = read_all_records(&tmp.path().join("auto/metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss, y.loss, "step {}", x.step);
        assert_eq!(x.total, y.total, "step {}", x.step);
    }
}

#[test]
fn non_finite_loss_stops_with_checkpoint() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 3);
    let cfg = TrainConfig {
        batch_size: 8,
        micro_batch_size: Some(8.into()),
        init_lr: 1e30,
        warmup_steps: 0,
        ..small_config(20)
    };
    let out = tmp.path().join("run");
    let err = match train(prepare(&cfg, &inputs(&ds)).unwrap(), &out, false) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a learning rate of 1e30 should blow up"),
    };
    assert!(
        err.contains("step ") && (err.contains("loss term `") || err.contains("gradient norm")),
        "{err}"
    );
    assert!(err.contains("checkpoints/step-"), "{err}");
    let ckpt = tagfix::train::run::latest_checkpoint(&tagfix::monitor::RunDir::open(&out).unwrap())
        .unwrap()
        .unwrap();
    assert!(ckpt.join("model.safetensors").is_file());

    // The command exits 3 (a stopped run), not 2 (bad input), and says where the state is.
    let cli_out = tmp.path().join("cli-run");
    let out = train_command(&ds)
        .arg("--quiet")
        .args(["--batch-size", "8", "--max-steps", "20", "--lr", "1e30"])
        .args([
            "--set",
            "warmup_steps=0",
            "--workers",
            "1",
            "--threads",
            "1",
        ])
        .arg("--out")
        .arg(&cli_out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("training stopped") && stderr.contains("checkpoints/step-"),
        "{stderr}"
    );
    // Bad input still exits 2.
    let out = assert_cmd::Command::cargo_bin("tagfix")
        .unwrap()
        .args(["--quiet", "train", "--resume"])
        .arg(tmp.path().join("no-such-run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The Trainer's pieces one at a time: each step's record is the line `metrics.jsonl` gets, the
/// due checks follow `val_every` / `checkpoint_every`, a checkpoint lands at the current step, and
/// finishing after a checkpoint of the last step keeps it.
#[test]
fn trainer_steps_validates_and_checkpoints_when_asked() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 4);
    let inp = inputs_validated_on_training_images(&ds);
    let cfg = TrainConfig {
        val_every: 2,
        val_max_images: Some(4),
        checkpoint_every: CheckpointEvery::Steps(3),
        ..small_config(4)
    };
    let out = tmp.path().join("run");
    let mut t = Trainer::new(prepare(&cfg, &inp).unwrap(), &out, false).unwrap();
    assert!(t.at_start() && !t.is_done());
    assert_eq!(t.validate().unwrap().unwrap().step, 0);
    let mut records = Vec::new();
    let mut due = Vec::new();
    while !t.is_done() {
        records.push(t.step().unwrap());
        due.push((t.current_step(), t.validation_due(), t.checkpoint_due()));
    }
    assert_eq!(
        due,
        vec![
            (1, false, false),
            (2, true, false),
            (3, false, true),
            (4, true, false)
        ]
    );
    assert_eq!(
        read_all_records(&out.join("metrics.jsonl")).unwrap(),
        records
    );
    let ckpt = t.checkpoint().unwrap();
    assert!(ckpt.ends_with("step-00000004"), "{}", ckpt.display());
    let summary = t.finish().unwrap();
    assert_eq!(summary.checkpoint, ckpt);
    assert_eq!((summary.first_step, summary.steps), (0, 4));
    assert_eq!(summary.validation.len(), 1, "only the one asked for");
    // The pace of the 4 steps of 8 images (validation between them included).
    let pace = summary.pace.expect("steps were taken");
    assert!(
        pace.seconds > 0.0 && pace.data_wait_s <= pace.seconds,
        "{pace:?}"
    );
    let images = pace.images_per_s * pace.seconds;
    assert!((images - 32.0).abs() < 1e-6, "{pace:?}");
}

/// `checkpoint_every` as a duration: a checkpoint is due after the first step that ends the interval
/// after the loop's start or the last checkpoint, and saving restarts the clock. A nanosecond has
/// always passed by the end of a step; an hour never has in this test.
#[test]
fn a_checkpoint_interval_of_time_makes_checkpoints_due_when_it_has_passed() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 4);
    let inp = inputs(&ds);
    let due_after_each_step = |every: &str, out: &str| {
        let cfg = TrainConfig {
            checkpoint_every: every.parse().unwrap(),
            ..small_config(3)
        };
        let mut t =
            Trainer::new(prepare(&cfg, &inp).unwrap(), &tmp.path().join(out), false).unwrap();
        let mut due = Vec::new();
        while !t.is_done() {
            t.step().unwrap();
            due.push(t.checkpoint_due());
            if t.checkpoint_due() {
                let dir = t.checkpoint().unwrap();
                assert!(dir.ends_with(format!("step-{:08}", t.current_step())));
                assert!(!t.checkpoint_due(), "saved: the clock starts again");
            }
        }
        t.finish().unwrap();
        due
    };
    assert_eq!(due_after_each_step("1ns", "often"), [true, true, true]);
    // Every step saved; the newest `keep_checkpoints` (2) kept.
    let mut saved: Vec<_> = std::fs::read_dir(tmp.path().join("often/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    saved.sort();
    assert_eq!(saved, ["step-00000002", "step-00000003"]);
    assert_eq!(due_after_each_step("1h", "rarely"), [false, false, false]);
}

/// Checkpoints are written by a background thread: the write of one checkpoint can fail after
/// `checkpoint` has returned, and that failure must come back from `finish` (naming the folder),
/// not be lost; a later good checkpoint is complete when `wait_for_checkpoint` returns.
#[test]
fn a_checkpoint_written_in_the_background_reports_its_failure() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 4);
    let inp = inputs(&ds);
    let cfg = TrainConfig {
        checkpoint_every: CheckpointEvery::Steps(100),
        ..small_config(3)
    };
    let out = tmp.path().join("run");
    let mut t = Trainer::new(prepare(&cfg, &inp).unwrap(), &out, false).unwrap();
    t.step().unwrap();
    let first = t.checkpoint().unwrap();
    assert_eq!(t.wait_for_checkpoint().unwrap(), Some(first.clone()));
    assert!(first.join("state.json").is_file() && first.join("model.safetensors").is_file());
    // A file where the checkpoints folder is: the next write cannot make its folder.
    let checkpoints = out.join("checkpoints");
    std::fs::remove_dir_all(&checkpoints).unwrap();
    std::fs::write(&checkpoints, b"not a folder").unwrap();
    t.step().unwrap();
    t.checkpoint()
        .expect("the copy is taken; the write fails later, on its thread");
    let err = t.finish().expect_err("finish reports the failed write");
    let err = tagfix::error::report(&err);
    assert!(
        err.contains("step-00000002: checkpoint not written (its partial files removed)")
            && err.contains(".step-00000002.tmp"),
        "{err}"
    );
}

fn prepare_err(cfg: &TrainConfig, inp: &TrainInputs) -> String {
    match prepare(cfg, inp) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("prepare accepted bad input"),
    }
}

#[test]
fn bad_inputs_fail_before_the_first_step() {
    let _guard = serial();
    use tagfix::tensors::EmbeddingFile;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("a"), 12, 4);
    let cfg = small_config(5);
    let good = inputs(&ds);
    prepare(&cfg, &good).unwrap();

    // Embedding file with the wrong row count.
    let mut emb = EmbeddingFile::read(&ds.label_embed, None).unwrap();
    emb.rows += 1;
    emb.values.extend(vec![0.0; emb.dim]);
    let wrong_rows = tmp.path().join("rows.safetensors");
    emb.write(&wrong_rows).unwrap();
    let e = prepare_err(
        &cfg,
        &TrainInputs {
            label_embed: wrong_rows,
            ..good.clone()
        },
    );
    assert!(e.contains("rows.safetensors") && e.contains("rows"), "{e}");

    // Embeddings and manifest of another vocabulary (one tag renamed).
    let other_dir = tmp.path().join("b");
    std::fs::create_dir_all(&other_dir).unwrap();
    let mut tags = tagfix::train::data::synth::vocabulary_tags();
    tags[0] = "crimson".into();
    let other_vocab = tagfix::vocab::Vocabulary::from_tags(tags);
    let mut foreign = EmbeddingFile::read(&ds.label_embed, None).unwrap();
    foreign.metadata.insert(
        "tagfix.vocabulary_sha256".into(),
        other_vocab.sha256.clone(),
    );
    let foreign_path = other_dir.join("foreign.safetensors");
    foreign.write(&foreign_path).unwrap();
    let e = prepare_err(
        &cfg,
        &TrainInputs {
            label_embed: foreign_path,
            ..good.clone()
        },
    );
    assert!(
        e.contains("foreign.safetensors") && e.contains("another vocabulary"),
        "{e}"
    );

    let m = tagfix::manifest::SlotManifest::read(&ds.manifest).unwrap();
    let union: Vec<u64> = m.slots.iter().map(|s| s.union).collect();
    let other_manifest = tagfix::manifest::SlotManifest::from_counts(
        &other_vocab,
        &union,
        &union,
        m.inputs.clone(),
        0,
    );
    let other_manifest_path = other_dir.join("manifest.json");
    other_manifest.write(&other_manifest_path).unwrap();
    let e = prepare_err(
        &cfg,
        &TrainInputs {
            manifest: other_manifest_path.clone(),
            ..good.clone()
        },
    );
    assert!(
        e.contains("another vocabulary") && e.contains("manifest.json"),
        "{e}"
    );
    let e = prepare_err(
        &cfg,
        &TrainInputs {
            manifest: other_manifest_path,
            vocab: Some(ds.vocabulary.display().to_string()),
            ..good.clone()
        },
    );
    assert!(
        e.contains("manifest.json") && e.contains("different vocabulary"),
        "{e}"
    );

    // A configuration's class_num that is not the manifest's slot count.
    let e = prepare_err(
        &TrainConfig {
            class_num: Some(9),
            ..cfg.clone()
        },
        &good,
    );
    assert!(
        e.contains("manifest.json") && e.contains("8 slots") && e.contains("class_num = 9"),
        "{e}"
    );

    // Fewer records than one batch, and validation asked for without validation data.
    let e = prepare_err(
        &TrainConfig {
            batch_size: 16,
            micro_batch_size: Some(16.into()),
            ..cfg.clone()
        },
        &good,
    );
    assert!(
        e.contains("12 records are fewer than one batch of 16"),
        "{e}"
    );
    let e = prepare_err(
        &TrainConfig {
            val_every: 2,
            ..cfg.clone()
        },
        &good,
    );
    assert!(
        e.contains("val_every = 2") && e.contains("--val-data"),
        "{e}"
    );

    // The pretrained-encoder refusal of weights.rs is honoured.
    let e = prepare_err(
        &cfg,
        &TrainInputs {
            allow_random_encoder: false,
            ..inputs(&ds)
        },
    );
    assert!(e.contains("--allow-random-encoder"), "{e}");

    // Unreadable and missing images, named with their record.
    std::fs::write(ds.image_root.join("00001.png"), b"garbage").unwrap();
    std::fs::remove_file(ds.image_root.join("00004.png")).unwrap();
    let e = prepare_err(&cfg, &good);
    assert!(e.contains("2 of 12 training images"), "{e}");
    assert!(
        e.contains("00001.png") && e.contains("00004.png") && e.contains(": record 1)"),
        "{e}"
    );
}

/// A small model follows its label embeddings' width (384-d, as MiniLM's); the official presets and
/// 512-d teacher features refuse it with the fix.
#[test]
fn tiny_model_trains_on_label_embeddings_of_another_width() {
    let _guard = serial();
    use tagfix::tensors::EmbeddingFile;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("a"), 16, 5);
    let mut emb = EmbeddingFile::read(&ds.label_embed, None).unwrap();
    let narrow: Vec<f32> = emb
        .values
        .chunks(emb.dim)
        .flat_map(|row| row[..384].to_vec())
        .collect();
    emb = EmbeddingFile {
        values: narrow,
        dim: 384,
        ..emb
    };
    let path = tmp.path().join("narrow.safetensors");
    emb.write(&path).unwrap();
    let inp = TrainInputs {
        label_embed: path,
        teacher: None,
        ..inputs(&ds)
    };
    let e = prepare_err(
        &TrainConfig {
            model: Some("swin_b_224".into()),
            ..small_config(3)
        },
        &inp,
    );
    assert!(
        e.contains("narrow.safetensors") && e.contains("384") && e.contains("--model clip"),
        "{e}"
    );
    let e = prepare_err(
        &small_config(3),
        &TrainInputs {
            teacher: Some(ds.teacher.clone()),
            ..inp.clone()
        },
    );
    assert!(
        e.contains("teacher.safetensors") && e.contains("--teacher"),
        "{e}"
    );

    let summary = run(&small_config(3), &inp, &tmp.path().join("run"));
    assert_eq!(summary.early.keys().collect::<Vec<_>>(), ["tag"]);
    let model =
        tagfix::tensors::safetensors_io::read(&summary.checkpoint.join("model.safetensors"))
            .unwrap();
    let shape = |k: &str| model.get(k).unwrap().shape.clone();
    assert_eq!(shape("label_embed"), [ds.vocabulary_len * 3, 384]);
    assert_eq!(shape("image_proj.weight")[0], 384);
    assert_eq!(shape("wordvec_proj.weight")[1], 384);
}

#[test]
fn accumulated_gradients_equal_full_batch() {
    let _guard = serial();
    use tagfix::train::config::AbsentPolicy;
    use tagfix::train::model::RamPlusConfig;
    use tagfix::train::model::{ParamInit, RamPlus};
    use tagfix::train::objective::{micro_losses, AbsentSlots, MicroInputs};
    use tch::{Device, Kind, Tensor};

    tch::manual_seed(11);
    let cfg = RamPlusConfig::tiny(6, 2);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = RamPlus::new(&vs, &cfg, ParamInit::Official).unwrap();
    tch::no_grad(|| {
        let mut e = vs.variables()["label_embed"].shallow_clone();
        e.copy_(&Tensor::randn([12, 512], (Kind::Float, Device::Cpu)));
    });
    let b = 8i64;
    let images = Tensor::randn([b, 3, 64, 64], (Kind::Float, Device::Cpu));
    let targets = Tensor::randint(2, [b, 6], (Kind::Float, Device::Cpu));
    let clip = Tensor::randn([b, 512], (Kind::Float, Device::Cpu));
    let absent = AbsentSlots::new(6, &[], AbsentPolicy::Negative, Device::Cpu);
    let grads = |parts: i64| -> Vec<(String, Tensor)> {
        vs.variables().values().for_each(|v| {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        });
        let m = b / parts;
        for k in 0..parts {
            let x = MicroInputs {
                images: &images.narrow(0, k * m, m),
                targets: &targets.narrow(0, k * m, m),
                clip_feature: Some(&clip.narrow(0, k * m, m)),
                text_embed: None,
                mean_share: m as f64 / b as f64,
            };
            let l = micro_losses(&model, &x, &absent, false).unwrap();
            (&l.tag + l.dis.unwrap() * 100.0).backward();
        }
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n, t.grad().copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let full = grads(1);
    let accumulated = grads(4);
    // Tolerance as the parity tests: max|diff| <= 1e-4·max|ref| + 1e-6·(largest gradient), the second
    // part for gradients that are analytically zero (cross-attention key biases) and hold only noise.
    let global = full
        .iter()
        .map(|(_, a)| a.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    let mut worst = 0.0f64;
    for ((n, a), (_, c)) in full.iter().zip(&accumulated) {
        let scale = a.abs().max().double_value(&[]);
        let diff = (a - c).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4 * scale + 1e-6 * global,
            "{n}: accumulated gradient differs by {diff} (max |g| {scale})"
        );
        if scale > 1e-3 * global {
            worst = worst.max(diff / scale);
        }
    }
    eprintln!(
        "accumulation vs full batch: worst relative difference {worst:.2e} over {} tensors",
        full.len()
    );
}

#[test]
fn bf16_autocast_trains_close_to_f32() {
    let _guard = serial();
    use tagfix::train::config::Precision;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 32, 5);
    let inp = inputs(&ds);
    let steps = 40;
    let f32_run = run(&small_config(steps), &inp, &tmp.path().join("f32"));
    let bf16_run = run(
        &TrainConfig {
            precision: Precision::Bf16,
            ..small_config(steps)
        },
        &inp,
        &tmp.path().join("bf16"),
    );
    let f32_recs = read_all_records(&tmp.path().join("f32/metrics.jsonl")).unwrap();
    let bf16_recs = read_all_records(&tmp.path().join("bf16/metrics.jsonl")).unwrap();
    // Same seed, same data: the first step's terms differ only by bf16 rounding of the matrix products.
    let (a, b) = (&f32_recs[0].loss, &bf16_recs[0].loss);
    for (term, x, y) in [
        ("tag", a.tag.unwrap().raw, b.tag.unwrap().raw),
        ("align", a.align.unwrap().raw, b.align.unwrap().raw),
        ("dis", a.dis.unwrap().raw, b.dis.unwrap().raw),
    ] {
        assert!(
            x != y,
            "{term}: bf16 gave the f32 value bit for bit: autocast did not engage"
        );
        assert!(
            (x - y).abs() < 0.03 * x.abs(),
            "{term}: step 1 f32 {x} vs bf16 {y}"
        );
    }
    for term in ["tag", "align", "dis"] {
        let (e, l) = (bf16_run.early[term], bf16_run.late[term]);
        assert!(l < e, "bf16 {term}: {e} → {l} did not fall");
    }
    // Parameters (and therefore checkpoints) stay f32 under autocast.
    let ckpt = safetensors::SafeTensors::deserialize(
        &std::fs::read(bf16_run.checkpoint.join("model.safetensors")).unwrap(),
    )
    .unwrap()
    .tensors()
    .into_iter()
    .map(|(_, v)| v.dtype())
    .collect::<std::collections::BTreeSet<_>>();
    assert!(ckpt.contains(&safetensors::Dtype::F32) && !ckpt.contains(&safetensors::Dtype::BF16));
    eprintln!(
        "step-1 tag f32 {} bf16 {}; f32 late {:?}",
        a.tag.unwrap().raw,
        b.tag.unwrap().raw,
        f32_run.late
    );
}

/// `tagfix train --val-data DIR --val-every N --plot` on the synthetic set with the tiny model (tag
/// loss only: with the teacher's align/dis terms at weights 10/100 the tiny model learns the tags
/// far slower): the validation mAP on held-out synthetic images (a benchmark folder: tag list +
/// `image_id,tag` lines, with a tag no slot has) rises, `validation.jsonl` has a line per
/// validation, and the plots include the validation figure. A RAM-format annotation file works as
/// validation data too.
#[test]
fn validation_in_the_loop_rises_and_is_plotted() {
    let _guard = serial();
    use tagfix::monitor::read_validation;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("train"), 64, 7);
    let held_out = dataset(&tmp.path().join("val"), 48, 8);

    // The held-out annotations as an official-format benchmark folder.
    let bench = tmp.path().join("bench");
    std::fs::create_dir_all(&bench).unwrap();
    let tags = tagfix::train::data::synth::vocabulary_tags();
    std::fs::write(
        bench.join("synth_taglist.txt"),
        format!("{}\nunicorn\n", tags.join("\n")),
    )
    .unwrap();
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&held_out.annotations).unwrap()).unwrap();
    let lines: Vec<String> = records
        .iter()
        .map(|r| {
            let names: Vec<&str> = r["union_label_id"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| tags[s.as_u64().unwrap() as usize].as_str())
                .collect();
            format!("{},{}", r["image_path"].as_str().unwrap(), names.join(","))
        })
        .collect();
    std::fs::write(bench.join("synth_annots.txt"), lines.join("\n")).unwrap();

    let run_dir = tmp.path().join("run");
    let out = train_command(&ds)
        .arg("--val-data")
        .arg(&bench)
        .arg("--val-images")
        .arg(&held_out.image_root)
        .args([
            "--val-every",
            "40",
            "--max-steps",
            "160",
            "--batch-size",
            "8",
        ])
        .args([
            "--lr",
            "5e-4",
            "--set",
            "min_lr=5e-4",
            "--set",
            "warmup_lr=1e-5",
        ])
        .args(["--set", "warmup_steps=10", "--seed", "3", "--workers", "1"])
        .args(["--threads", "1", "--checkpoint-every", "off", "--plot"])
        .arg("--out")
        .arg(&run_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("8 of 9 tags mapped"), "{stderr}");
    // stderr is a pipe, as a job's log file is: no bar is drawn, a progress line stands for it on
    // each logging step (log_every 50), in plain text.
    assert!(
        stderr.contains("step 50/160 (31 %): tag ")
            && stderr.contains(" images/s, ")
            && stderr.contains(" % waiting for data | eta "),
        "{stderr}"
    );
    assert!(stderr.contains("step 150/160 (93 %): "), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a log file: {stderr}"
    );
    let stamped =
        regex::Regex::new(r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +INFO step 50/160 ").unwrap();
    assert!(
        stamped.is_match(&stderr),
        "each log line has its UTC time: {stderr}"
    );

    let v = read_validation(&run_dir.join("validation.jsonl")).unwrap();
    let steps: Vec<u64> = v.iter().map(|r| r.step).collect();
    assert_eq!(steps, vec![0, 40, 80, 120, 160]);
    let maps: Vec<f64> = v.iter().map(|r| r.main.unwrap().map).collect();
    eprintln!("validation mAP by step: {steps:?} -> {maps:?}");
    assert!(v.iter().all(|r| r.images == 48 && r.benchmark == "synth"));
    // Six drawn tags have positives; purple and triangle (absent, never drawn) have none.
    assert_eq!(v[0].main.unwrap().classes, 6);
    assert!(
        maps[1] > maps[0] && maps[4] > maps[0] + 0.25 && maps[4] > 0.75,
        "validation mAP did not rise: {maps:?}"
    );
    assert!(stdout.contains("validation at step 160"), "{stdout}");
    assert!(
        stdout.contains("  steps took ") && stdout.contains(" % waiting for data"),
        "{stdout}"
    );
    for name in ["validation", "tag", "total", "grad_norm"] {
        for ext in ["png", "svg"] {
            let f = run_dir.join(format!("plots/{name}.{ext}"));
            assert!(
                std::fs::metadata(&f).is_ok_and(|m| m.len() > 1000),
                "{}",
                f.display()
            );
        }
    }
    let svg = std::fs::read_to_string(run_dir.join("plots/validation.svg")).unwrap();
    assert!(svg.contains("mAP (present slots)") && svg.contains("learning rate"));

    // A held-out RAM-format annotation file: slots used as they are, the same images.
    let mut inp = inputs(&ds);
    inp.validation = Some(tagfix::train::validate::ValidationInputs {
        data: held_out.annotations.clone(),
        images: Some(held_out.image_root.clone()),
        thresholds: None,
    });
    let cfg = TrainConfig {
        val_every: 2,
        val_max_images: Some(20),
        ..small_config(2)
    };
    let mut p = prepare(&cfg, &inp).unwrap();
    let set = p.validation.as_mut().unwrap();
    assert_eq!((set.image_paths.len(), set.mapping.mapped().len()), (20, 6));
    let validated = set.run(&p.model, p.device, 7).unwrap();
    let report = &validated.report;
    assert_eq!((report.images, validated.left_out), (20, 0));
    assert!(report.main.is_some() && report.unmapped.is_empty());
    // An image that cannot be read any more (damaged after the start): it fails the validation, or
    // under unreadable_images = "skip" each validation leaves it out and counts it.
    std::fs::write(&set.image_paths[3], b"not an image").unwrap();
    let e = set.run(&p.model, p.device, 7).unwrap_err().to_string();
    assert!(e.contains("image"), "{e}");
    set.unreadable = UnreadableImages::Skip;
    let validated = set.run(&p.model, p.device, 7).unwrap();
    assert_eq!((validated.report.images, validated.left_out), (19, 1));
    assert!(validated.report.main.is_some());
    // Found at the start, it is refused under "skip" too: the set is mended or cut on purpose.
    let skip = TrainConfig {
        unreadable_images: UnreadableImages::Skip,
        ..cfg.clone()
    };
    assert!(prepare_err(&skip, &inp).contains("1 of 20 validation images"));
    // val_every without validation data is refused before the first step.
    let e = prepare_err(&cfg, &inputs(&ds));
    assert!(e.contains("--val-data"), "{e}");
}

/// A PNG claiming `w`×`h` pixels: signature, IHDR, a few bytes of IDAT and IEND (with their CRCs).
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

/// The reliability recipes: truncated image bodies and a header claiming 100000×100000 pixels are
/// found by the default full pre-check, before the first step (they used to stop the run after a
/// step or two); `header` finds only the oversized one, `none` nothing. A caption byte that is not
/// UTF-8 is named at its line:column; `workers = 100000` trains on one thread per core.
#[test]
fn image_pre_check_decodes_every_image_and_bounds_its_size() {
    let _guard = serial();
    use tagfix::train::config::ImageCheck;
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("a"), 12, 4);
    let good = inputs(&ds);
    let cfg = TrainConfig {
        workers: 100_000,
        ..small_config(2)
    };
    run(&cfg, &good, &tmp.path().join("run"));

    let mut images: Vec<PathBuf> = std::fs::read_dir(&ds.image_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    let of = |ext: &str| -> Vec<PathBuf> {
        images
            .iter()
            .filter(|p| p.extension().unwrap() == ext)
            .cloned()
            .collect()
    };
    let (pngs, jpgs) = (of("png"), of("jpg"));
    assert!(pngs.len() >= 2 && !jpgs.is_empty(), "{images:?}");
    for cut in [&pngs[0], &jpgs[0]] {
        let bytes = std::fs::read(cut).unwrap();
        std::fs::write(cut, &bytes[..bytes.len() / 2]).unwrap();
    }
    std::fs::write(&pngs[1], png_header_only(100_000, 100_000)).unwrap();
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();

    let e = prepare_err(&cfg, &good);
    assert!(e.contains("3 of 12 training images"), "{e}");
    for p in [&pngs[0], &jpgs[0], &pngs[1]] {
        assert!(e.contains(&name(p)), "{e}");
    }
    assert!(e.contains("claims 100000×100000 pixels"), "{e}");
    let header = TrainConfig {
        check_images: Some(ImageCheck::Header),
        ..cfg.clone()
    };
    let e = prepare_err(&header, &good);
    assert!(e.contains("1 of 12 training images"), "{e}");
    assert!(e.contains(&name(&pngs[1])), "{e}");
    let none = TrainConfig {
        check_images: Some(ImageCheck::None),
        ..cfg.clone()
    };
    prepare(&none, &good).unwrap();

    // One caption byte corrupted (as in ../shared/reliability/diff_passes_train_refuses_badutf8.json).
    let mut text = std::fs::read(&ds.annotations).unwrap();
    let at = text
        .windows(12)
        .position(|w| w == b"\"caption\":[\"")
        .unwrap()
        + 14;
    text[at] = 0xFF;
    std::fs::write(&ds.annotations, &text).unwrap();
    let line = text[..at].iter().filter(|b| **b == b'\n').count() + 1;
    let column = at
        - text[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    let e = prepare_err(&none, &good);
    assert!(
        e.contains(&format!(
            ":{line}:{column}: record 0: invalid UTF-8 (byte 0xFF)"
        )),
        "{e}"
    );
}

/// A step reads the device once (its packed losses and norms), logging steps included; the earlier
/// flow, kept as `StepSync::PerMicroBatch`, reads each micro-batch's terms and weighted total, then
/// the gradient norms. Both train the same: equal losses and gradient norms.
#[test]
fn a_step_reads_the_device_once() {
    use tagfix::train::sync::thread_host_reads;
    use tagfix::train::trainer::StepSync;
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 5);
    let cfg = TrainConfig {
        micro_batch_size: Some(4.into()),
        log_every: 2,
        ..small_config(4)
    };
    let run = |sync: StepSync, name: &str| {
        let mut t = Trainer::new(
            prepare(&cfg, &inputs(&ds)).unwrap(),
            &tmp.path().join(name),
            false,
        )
        .unwrap();
        t.set_step_sync(sync);
        let mut steps = Vec::new();
        while !t.is_done() {
            let before = thread_host_reads();
            let record = t.step().unwrap();
            steps.push((record, thread_host_reads() - before));
        }
        steps
    };
    let once = run(StepSync::Once, "once");
    let synced = run(StepSync::PerMicroBatch, "synced");
    for ((a, reads_once), (b, reads_synced)) in once.iter().zip(&synced) {
        let logging = a.step % 2 == 0;
        assert!(a.update_norm.is_some() == logging && b.update_norm.is_some() == logging);
        assert_eq!(*reads_once, 1, "step {}: one read", a.step);
        // Two micro-batches' terms and weighted totals, then the gradient norms (and the update
        // norms on a logging step).
        let terms = a.loss.iter().count() as u64;
        assert!(terms >= 2, "tag and the teacher's terms");
        let expected = 2 * (terms + 1) + 1 + u64::from(logging);
        assert_eq!(*reads_synced, expected, "step {}", a.step);
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1e-12);
        assert!(
            close(a.total, b.total),
            "step {}: {} vs {}",
            a.step,
            a.total,
            b.total
        );
        assert!(
            close(a.grad_norm.total, b.grad_norm.total),
            "step {}",
            a.step
        );
    }
}

/// A stop request (what SIGTERM/SIGINT/SIGUSR1 set) ends the run after the step in progress with a
/// complete checkpoint of that step, through either way a step reads the device, and `--resume`
/// from it reproduces the uninterrupted run.
#[test]
fn a_stop_request_checkpoints_the_step_in_progress_and_resume_goes_on_exactly() {
    use tagfix::train::error::TrainError;
    use tagfix::train::interrupt::SIGTERM;
    use tagfix::train::run::StopRequest;
    use tagfix::train::trainer::StepSync;
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 32, 5);
    let inp = inputs(&ds);
    let cfg = TrainConfig {
        batch_size: 8,
        micro_batch_size: Some(4.into()),
        ..small_config(8)
    };
    let full_dir = tmp.path().join("full");
    run(&cfg, &inp, &full_dir);

    for (sync, name) in [
        (StepSync::Once, "once"),
        (StepSync::PerMicroBatch, "per-micro-batch"),
    ] {
        let part_dir = tmp.path().join(name);
        let stop = StopRequest::new();
        let mut trainer = Trainer::new(prepare(&cfg, &inp).unwrap(), &part_dir, false).unwrap();
        trainer.set_step_sync(sync);
        trainer.stop_on(stop.clone());
        for _ in 0..3 {
            trainer.step().unwrap();
            assert!(!trainer.interrupt_due(), "{name}: no stop was asked for");
        }
        stop.request(SIGTERM);
        trainer.step().unwrap();
        assert!(trainer.interrupt_due(), "{name}");
        let checkpoint = match trainer.interrupt() {
            tagfix::Error::Train(e) => match *e {
                TrainError::Interrupted {
                    step: 4,
                    signal: s,
                    from_other_rank: false,
                    checkpoint,
                    ..
                } if s == SIGTERM => checkpoint,
                other => panic!("{name}: {other}"),
            },
            other => panic!("{name}: {other}"),
        };
        assert_eq!(checkpoint, part_dir.join("checkpoints/step-00000004"));
        assert!(checkpoint.join("optimizer.safetensors").is_file());
        drop(trainer);

        let resumed = train(prepare(&cfg, &inp).unwrap(), &part_dir, true).unwrap();
        assert_eq!(resumed.first_step, 4, "{name}");
        let a = read_all_records(&full_dir.join("metrics.jsonl")).unwrap();
        let b = read_all_records(&part_dir.join("metrics.jsonl")).unwrap();
        assert_eq!(b.len(), 8, "{name}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.step, &x.loss, x.total),
                (y.step, &y.loss, y.total),
                "{name}"
            );
        }
    }

    // Through `train_until`: a request standing before the run stops it after its first step.
    let early = tmp.path().join("early");
    let stop = StopRequest::new();
    stop.request(SIGTERM);
    let err = tagfix::train::run::train_until(prepare(&cfg, &inp).unwrap(), &early, false, stop)
        .expect_err("stopped");
    assert!(
        matches!(err.kind(), tagfix::error::ErrorKind::Interrupted { signal } if signal == SIGTERM),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("SIGTERM") && text.contains("--resume"),
        "{text}"
    );
    assert!(early.join("checkpoints/step-00000001/state.json").is_file());
    // A request that comes with the last step changes nothing: the run is complete.
    let last = tmp.path().join("last");
    let stop = StopRequest::new();
    let mut trainer = Trainer::new(
        prepare(
            &TrainConfig {
                max_steps: Some(1),
                ..cfg.clone()
            },
            &inp,
        )
        .unwrap(),
        &last,
        false,
    )
    .unwrap();
    trainer.stop_on(stop.clone());
    stop.request(SIGTERM);
    trainer.step().unwrap();
    assert!(trainer.is_done() && !trainer.interrupt_due());
}

/// A teacher set (`--teacher DIR`, the shards of `tagfix teacher --shard I/N`) trains exactly as the
/// one file it was split from: same rows, same losses step for step.
#[test]
fn a_teacher_set_trains_exactly_as_its_single_file() {
    use tagfix::teacher::shard::{Shard, SET_RECORDS_KEY, SHARD_KEY, TEACHER_SET};
    use tagfix::teacher::{TeacherFeatures, TEACHER_DIM};
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 4);
    let whole = TeacherFeatures::read(&ds.teacher).unwrap();
    let set = tmp.path().join("teacher-set");
    std::fs::create_dir(&set).unwrap();
    let keys: Vec<String> = whole.keys().iter().map(|k| k.to_string()).collect();
    // The stored values (text rows as written, before the reader's re-normalisation).
    let stored = tagfix::tensors::safetensors_io::read(&ds.teacher).unwrap();
    let values = |name: &str| stored.get(name).unwrap().to_f32().unwrap();
    let (all_image, all_text) = (values("image_features"), values("text_features"));
    for index in 0..3 {
        let shard = Shard { index, count: 3 };
        let rows = shard.range(keys.len());
        let cut = |v: &[f32]| v[rows.start * TEACHER_DIM..rows.end * TEACHER_DIM].to_vec();
        let (image, text) = (cut(&all_image), cut(&all_text));
        let metadata = [
            (SHARD_KEY.to_string(), shard.to_string()),
            (SET_RECORDS_KEY.to_string(), keys.len().to_string()),
        ]
        .into();
        TeacherFeatures::write_with_metadata(
            &set.join(TEACHER_SET.file_name(shard)),
            &keys[rows],
            &image,
            &text,
            metadata,
        )
        .unwrap();
    }
    let cfg = small_config(4);
    run(&cfg, &inputs(&ds), &tmp.path().join("file"));
    let from_set = TrainInputs {
        teacher: Some(set.clone()),
        ..inputs(&ds)
    };
    run(&cfg, &from_set, &tmp.path().join("set-run"));
    let a = read_all_records(&tmp.path().join("file/metrics.jsonl")).unwrap();
    let b = read_all_records(&tmp.path().join("set-run/metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert!(x.loss.dis.is_some(), "the teacher's terms are trained");
        assert_eq!(x.loss, y.loss, "step {}", x.step);
    }
    // A set with a shard missing is refused before any step, naming it.
    std::fs::remove_file(set.join(TEACHER_SET.file_name(Shard { index: 1, count: 3 }))).unwrap();
    let err = prepare_err(&cfg, &from_set);
    assert!(err.contains("1 of its 3 shards are missing: 1"), "{err}");
}

/// Trains the 16-image set for 6 steps of 8 (3 epochs) into `dir/out`, with `extra` flags.
fn three_epochs(ds: &SynthDataset, dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    train_command(ds)
        .args(["--batch-size", "8", "--max-steps", "6", "--workers", "1"])
        .args(["--threads", "1", "--out"])
        .arg(dir.join(out))
        .args(extra)
        .output()
        .unwrap()
}

/// Asserts that [`three_epochs`] under `--unreadable-images skip` finished, replacing its one
/// unreadable image once an epoch: warned, printed and counted in the summary.
fn assert_skipped_each_epoch(out: &std::process::Output, run: &Path) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("skipped an unreadable image").count(),
        3,
        "{stderr}"
    );
    assert!(stdout.contains("unreadable images skipped: 3"), "{stdout}");
    assert_eq!(RunSummary::read(run).unwrap().skipped_images, 3);
}

/// `--unreadable-images`: an image that breaks after the check stops the run (`stop`, the
/// default) or is replaced in its micro-batch, named in the log and counted (`skip`).
#[test]
fn unreadable_images_stop_the_run_or_are_skipped_and_counted() {
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 4);
    let victim = ds.image_root.join("00006.png");
    std::fs::write(&victim, b"\x89PNG\r\n\x1a\n cut short").unwrap();
    // Not checked ahead: the default policy stops at the step that loads it.
    let out = three_epochs(&ds, tmp.path(), "stop", &["--check-images", "none"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("00006.png"), "{stderr}");

    // Skipped: the check warns, each of the 3 epochs replaces it once, the summary counts them.
    let out = three_epochs(&ds, tmp.path(), "skip", &["--unreadable-images", "skip"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 16 training images") && stderr.contains("00006.png"),
        "{stderr}"
    );
    assert_skipped_each_epoch(&out, &tmp.path().join("skip"));
}

/// A teacher file made with `tagfix teacher --unreadable-images skip` flags the records whose image
/// it could not read (a row of zeros): training refuses them before the first step under `stop`,
/// even when the image reads now, and skips them like unreadable images under `skip`.
#[test]
fn records_a_teacher_file_flags_as_unreadable_are_refused_or_skipped() {
    use tagfix::teacher::file::{write_streamed, ImageRows};
    use tagfix::teacher::TeacherFeatures;
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 4);
    let t = TeacherFeatures::read(&ds.teacher).unwrap();
    let keys: Vec<String> = t.keys().iter().map(|k| k.to_string()).collect();
    let flagged = t.row_of("00006.png").unwrap();
    write_streamed(
        &ds.teacher,
        &keys,
        Default::default(),
        ImageRows::MayBeUnreadable,
        |sink| {
            for row in 0..keys.len() {
                match row == flagged {
                    true => sink.push_unreadable()?,
                    false => sink.push(&t.image_row(row)?)?,
                }
            }
            Ok(())
        },
        |sink| (0..keys.len()).try_for_each(|row| sink.push(&t.text_row(row)?)),
    )
    .unwrap();
    let teacher = ds.teacher.to_str().unwrap();
    let out = three_epochs(
        &ds,
        tmp.path(),
        "stop",
        &["--teacher", teacher, "--check-images", "none"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("1 of 16 training images")
            && stderr.contains("00006.png: the teacher file")
            && stderr.contains("has no image features for it"),
        "{stderr}"
    );
    assert!(!tmp.path().join("stop").join("summary.json").exists());

    let skip = ["--teacher", teacher, "--unreadable-images", "skip"];
    let out = three_epochs(&ds, tmp.path(), "skip", &skip);
    assert_skipped_each_epoch(&out, &tmp.path().join("skip"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(1 row(s) flagged: images `tagfix teacher` could not read)")
            && stderr.contains("1 unreadable, to be skipped"),
        "{stderr}"
    );
}
