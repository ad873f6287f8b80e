//! The online teacher (`tagfix train --teacher online`) on the synthetic set with the generated CLIP
//! towers (models/clip-tiny-vision, models/clip-tiny): for an un-augmented image it gives exactly the
//! row `tagfix teacher` writes; in the loader it sees each sample's own augmented view (RandomAugment included); a short run
//! with it lowers the distillation loss; conflicting teacher settings are refused.
#![cfg(feature = "train")]

mod common;
mod embed_common;

use common::model_dir_for_test;
use common::train::{dataset, inputs, serial, small_config, train_command};
use embed_common::max_abs_diff;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tagfix::annotations::records::{ReadOptions, RecordSet};
use tagfix::embed::encoder::{EncoderOptions, TextEncoder};
use tagfix::embed::ModelDescriptor;
use tagfix::imaging::decode;
use tagfix::teacher::image_encoder::ImageEncoder;
use tagfix::teacher::produce::{write_teacher_file, TeacherRequest};
use tagfix::teacher::{CaptionChoice, ImageDescriptor, OnlineTeacherConfig, TeacherFeatures};
use tagfix::train::config::{TrainConfig, UnreadableImages};
use tagfix::train::data::synth::SynthDataset;
use tagfix::train::data::{Augment, Loader, LoaderConfig, TeacherSource, TrainData};
use tagfix::train::run::{prepare, train, TrainInputs};

fn towers(test: &str) -> Option<(PathBuf, PathBuf)> {
    Some((
        model_dir_for_test("clip-tiny-vision", test)?,
        model_dir_for_test("clip-tiny", test)?,
    ))
}

fn online_config(vision: &Path, text: &Path, caption: CaptionChoice) -> OnlineTeacherConfig {
    OnlineTeacherConfig {
        caption,
        ..OnlineTeacherConfig::new(vision.display().to_string(), text.display().to_string())
    }
}

/// The synthetic set's records, captions included (as `tagfix teacher` reads them).
fn records_with_captions(ds: &SynthDataset) -> RecordSet {
    RecordSet::read_with(
        std::slice::from_ref(&ds.annotations),
        ReadOptions {
            num_slots: None,
            captions: true,
        },
    )
    .unwrap()
}

/// The teacher file of the synthetic set, as `tagfix teacher` computes it (first caption).
fn teacher_file(ds: &SynthDataset, vision: &Path, text: &Path, out: &Path) -> TeacherFeatures {
    let how = HowToWrite {
        image_batch: 8,
        decode_ahead: 1,
        unreadable: UnreadableImages::Stop,
    };
    write_teacher(ds, vision, text, out, how).unwrap();
    TeacherFeatures::read(out).unwrap()
}

/// The settings of [`write_teacher`] that the tests vary.
#[derive(Debug, Clone, Copy)]
struct HowToWrite {
    image_batch: usize,
    decode_ahead: usize,
    unreadable: UnreadableImages,
}

/// `write_teacher_file` on the synthetic set (first caption, one thread per encoder).
fn write_teacher(
    ds: &SynthDataset,
    vision: &Path,
    text: &Path,
    out: &Path,
    how: HowToWrite,
) -> tagfix::error::Result<()> {
    let opts = EncoderOptions {
        threads: Some(1),
        batch_size: 8,
        ..Default::default()
    };
    let records = records_with_captions(ds);
    let mut image = ImageEncoder::load(ImageDescriptor::read_dir(vision).unwrap(), &opts).unwrap();
    let mut text = TextEncoder::load(ModelDescriptor::read_dir(text).unwrap(), &opts).unwrap();
    let req = TeacherRequest {
        records: &records,
        image_root: &ds.image_root,
        caption: CaptionChoice::First,
        max_words: 30,
        image_batch: how.image_batch,
        decode_ahead: how.decode_ahead,
        shard: None,
        unreadable: how.unreadable,
    };
    let hidden = ProgressBar::hidden();
    write_teacher_file(out, &mut text, &mut image, &req, &hidden, &hidden)?;
    Ok(())
}

#[test]
fn decoding_ahead_writes_what_decoding_in_turn_writes() {
    let Some((vision, text)) = towers("decoding_ahead_writes_what_decoding_in_turn_writes") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 5);
    let written = |name: &str, how: HowToWrite| {
        let out = tmp.path().join(name);
        write_teacher(&ds, &vision, &text, &out, how)
            .map(|()| std::fs::read(&out).unwrap())
            .map_err(|e| tagfix::error::report(&e))
    };
    let how = |decode_ahead, unreadable| HowToWrite {
        image_batch: 3,
        decode_ahead,
        unreadable,
    };
    // Six batches of three images: each is encoded while the next is decoded.
    let in_turn = written("in-turn.safetensors", how(0, UnreadableImages::Stop)).unwrap();
    for ahead in [1, 2] {
        let name = format!("ahead-{ahead}.safetensors");
        let file = written(&name, how(ahead, UnreadableImages::Stop)).unwrap();
        assert!(file == in_turn, "{ahead} batches ahead wrote another file");
    }

    // An image of the fourth batch cannot be read: the same error, or the same flagged file.
    let records = records_with_captions(&ds);
    let broken = records.get(10).image_file(&ds.image_root);
    std::fs::write(&broken, b"not an image").unwrap();
    let stopped = written("stop-0.safetensors", how(0, UnreadableImages::Stop)).unwrap_err();
    assert!(
        stopped.contains("not an image") || stopped.contains(&broken.display().to_string()),
        "{stopped}"
    );
    let skipped = written("skip-0.safetensors", how(0, UnreadableImages::Skip)).unwrap();
    assert!(skipped != in_turn);
    for ahead in [1, 2] {
        let err = written(
            &format!("stop-{ahead}.safetensors"),
            how(ahead, UnreadableImages::Stop),
        );
        assert_eq!(err.unwrap_err(), stopped, "{ahead} ahead");
        assert!(!tmp
            .path()
            .join(format!("stop-{ahead}.safetensors"))
            .exists());
        let file = written(
            &format!("skip-{ahead}.safetensors"),
            how(ahead, UnreadableImages::Skip),
        );
        assert!(file.unwrap() == skipped, "{ahead} ahead, skipping");
    }
}

#[test]
fn online_features_equal_the_file_and_follow_the_augmentation() {
    let Some((vision, text)) = towers("online_features_equal_the_file_and_follow_the_augmentation")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 16, 5);
    let file = teacher_file(&ds, &vision, &text, &tmp.path().join("teacher.safetensors"));
    let cfg = online_config(&vision, &text, CaptionChoice::First);
    let data = Arc::new(
        TrainData::open_with(
            std::slice::from_ref(&ds.annotations),
            &ds.image_root,
            ds.vocabulary_len,
            TeacherSource::Online(&cfg),
        )
        .unwrap(),
    );
    let t = data.online_teacher.as_ref().unwrap();
    let per = t.pixels_per_image();
    // The log line says what a full caption cache would take (512 f32 a caption).
    let captions: usize = (0..data.len()).map(|r| t.caption_count(r)).sum();
    let full = format!(
        "cached (all {captions}: up to {} as",
        indicatif::HumanBytes(captions as u64 * 2048)
    );
    assert!(t.summary.contains(&full), "{}: {full}", t.summary);

    // Un-augmented: the online path gives the file's rows.
    for (i, r) in data.records.iter().enumerate() {
        let img = decode(&data.image_path(&r)).unwrap();
        let mut px = vec![0f32; per];
        t.render_eval(&img, &mut px);
        let online = t.image_features(&px).unwrap();
        let row = file.row_of(r.image_path).unwrap();
        let err = max_abs_diff(&online, &file.image_row(row).unwrap());
        assert!(
            err <= 1e-5,
            "{}: image |online − file| = {err}",
            r.image_path
        );
        let text_online = t.text_features(&[(i, 0)]).unwrap();
        let err = max_abs_diff(&text_online, &file.text_row(row).unwrap());
        assert!(
            err <= 1e-5,
            "{}: text |online − file| = {err}",
            r.image_path
        );
    }

    // In the loader: each sample's feature is the tower on the sample's own augmented view (crop,
    // flip and RandomAugment operations, replayed at the tower's 224 px).
    let loader_cfg = LoaderConfig {
        micro_batch: 4,
        batch: 8,
        augment: Augment::ram(64),
        seed: 2,
        workers: 2,
        prefetch: 2,
        unreadable: UnreadableImages::Stop,
    };
    let mut loader = Loader::start(data.clone(), loader_cfg, 0, 1).unwrap();
    let mb = loader.next_batch().unwrap().unwrap();
    let clip = mb.clip_feature.as_ref().unwrap();
    let texts = mb.text_embed.as_ref().unwrap();
    let mut differs_from_file = 0;
    for (k, &idx) in mb.indices.iter().enumerate() {
        let r = data.records.get(idx);
        let img = decode(&data.image_path(&r)).unwrap();
        let mut px = vec![0f32; per];
        t.render_augmented(&mb.draws[k].image(&img, t.input_size()), &mut px);
        let want = t.image_features(&px).unwrap();
        let got = &clip[k * 512..(k + 1) * 512];
        assert!(max_abs_diff(got, &want) <= 1e-5, "sample {k}");
        let row = file.row_of(r.image_path).unwrap();
        if max_abs_diff(got, &file.image_row(row).unwrap()) > 1e-3 {
            differs_from_file += 1;
        }
        assert!(max_abs_diff(&texts[k * 512..(k + 1) * 512], &file.text_row(row).unwrap()) <= 1e-5);
    }
    assert!(
        differs_from_file >= 3,
        "augmented views give other features than the un-augmented file ({differs_from_file} of 4)"
    );

    // A model at the tower's size and normalisation: the teacher sees exactly the model's input,
    // RandomAugment operations included (RAM pre-training feeds CLIP the model's image).
    let loader_cfg = LoaderConfig {
        micro_batch: 8,
        batch: 8,
        augment: Augment::ram(t.input_size()),
        seed: 4,
        workers: 2,
        prefetch: 1,
        unreadable: UnreadableImages::Stop,
    };
    let mut loader = Loader::start(data.clone(), loader_cfg, 0, 1).unwrap();
    let mb = loader.next_batch().unwrap().unwrap();
    let clip = mb.clip_feature.as_ref().unwrap();
    let with_ops = mb.draws.iter().filter(|d| !d.ops.is_empty()).count();
    assert!(
        with_ops >= 2,
        "{with_ops} of 8 samples drew RandomAugment operations"
    );
    let images = mb.normalized_images();
    for k in 0..mb.len() {
        let want = t.image_features(&images[k * per..(k + 1) * per]).unwrap();
        let err = max_abs_diff(&clip[k * 512..(k + 1) * 512], &want);
        assert!(
            err <= 1e-5,
            "sample {k}: |teacher − tower(model input)| = {err}"
        );
    }
}

/// The caption cache changes no value: with no room for it (`cache_text_mib = 0`) every caption is
/// embedded when drawn and gives the cached embedding, a first and a second time.
#[test]
fn captions_embedded_when_drawn_equal_the_cached_ones() {
    let Some((vision, text)) = towers("captions_embedded_when_drawn_equal_the_cached_ones") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 6, 5);
    let open = |cfg: &OnlineTeacherConfig| {
        TrainData::open_with(
            std::slice::from_ref(&ds.annotations),
            &ds.image_root,
            ds.vocabulary_len,
            TeacherSource::Online(cfg),
        )
        .unwrap()
    };
    let cached = open(&online_config(&vision, &text, CaptionChoice::First));
    let mut cfg = online_config(&vision, &text, CaptionChoice::First);
    cfg.cache_text_mib = 0;
    let uncached = open(&cfg);
    let (a, b) = (
        cached.online_teacher.as_ref().unwrap(),
        uncached.online_teacher.as_ref().unwrap(),
    );
    assert!(
        b.summary.contains("caption embeddings not cached"),
        "{}",
        b.summary
    );
    let picks: Vec<(usize, usize)> = (0..cached.len())
        .flat_map(|r| (0..a.caption_count(r)).map(move |c| (r, c)))
        .collect();
    let want = a.text_features(&picks).unwrap();
    for round in 0..2 {
        assert_eq!(
            a.text_features(&picks).unwrap(),
            want,
            "cached, round {round}"
        );
        let got = b.text_features(&picks).unwrap();
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-6, "uncached, round {round}: {err}");
    }
}

#[test]
fn short_run_with_online_teacher_lowers_distillation() {
    let Some((vision, text)) = towers("short_run_with_online_teacher_lowers_distillation") else {
        return;
    };
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 32, 5);
    let mut cfg = TrainConfig {
        micro_batch_size: Some(4.into()),
        warmup_steps: 5,
        keep_checkpoints: 1,
        ..small_config(40)
    };
    cfg.online_teacher = Some(online_config(&vision, &text, CaptionChoice::Random));
    let inputs = TrainInputs {
        teacher: None,
        ..inputs(&ds)
    };
    let out = tmp.path().join("run");
    let summary = train(prepare(&cfg, &inputs).unwrap(), &out, false).unwrap();
    let (early, late) = (summary.early["dis"], summary.late["dis"]);
    eprintln!(
        "online teacher: dis {early:.4} → {late:.4}, align {:.4} → {:.4}",
        summary.early["align"], summary.late["align"]
    );
    assert!(
        late < 0.7 * early,
        "distillation did not fall: {early} → {late}"
    );
    assert!(summary.late["align"].is_finite());
    // The resolved configuration keeps the online teacher, so --resume finds it again.
    let saved = TrainConfig::load(&out.join("config.toml")).unwrap().config;
    assert_eq!(saved.online_teacher, cfg.online_teacher);

    // A teacher file and the online teacher at once is refused before any step.
    let both = TrainInputs {
        teacher: Some(ds.teacher.clone()),
        ..inputs
    };
    let e = prepare(&cfg, &both).err().unwrap().to_string();
    assert!(e.contains("choose one"), "{e}");
}

#[test]
fn cli_teacher_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path(), 8, 5);
    let base = |extra: &[&str]| {
        let mut c = train_command(&ds);
        c.args(["--quiet", "--max-steps", "1", "--batch-size", "4", "--out"])
            .arg(tmp.path().join("run"))
            .args(extra);
        c.output().unwrap()
    };
    let o = base(&["--teacher", "online"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--teacher-image-model"));
    let o = base(&["--teacher-image-model", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("are for --teacher online"));
    if towers("cli_teacher_flags_are_checked").is_none() {
        return;
    }
    let o = base(&[
        "--teacher",
        "online",
        "--teacher-image-model",
        "clip-tiny",
        "--teacher-text-model",
        "clip-tiny",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not an image-encoder descriptor"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `--resume` with `--teacher online` continues a run begun with a teacher file on the towers, and
/// `--teacher FILE` switches it back: each replaces the other (with a warning) and is recorded for the
/// next resume; `--auto-resume` still refuses another teacher.
#[test]
fn a_resume_switches_between_the_teacher_file_and_the_online_teacher() {
    let Some((vision, text)) =
        towers("a_resume_switches_between_the_teacher_file_and_the_online_teacher")
    else {
        return;
    };
    let _guard = serial();
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(&tmp.path().join("ds"), 8, 5);
    let run = tmp.path().join("run");
    let common = [
        "--batch-size",
        "4",
        "--checkpoint-every",
        "1",
        "--threads",
        "1",
    ];
    let o = train_command(&ds)
        .args(common)
        .args(["--max-steps", "1", "--teacher"])
        .arg(&ds.teacher)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let resume = |steps: &str, teacher: &[&std::ffi::OsStr]| {
        let o = assert_cmd::Command::cargo_bin("tagfix")
            .unwrap()
            .args(["train", "--resume"])
            .arg(&run)
            .args(["--max-steps", steps])
            .args(teacher)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let recorded = || {
        let inputs = tagfix::train::run_files::read_run_inputs(&run).unwrap();
        let cfg = TrainConfig::load(&run.join("config.toml")).unwrap().config;
        (inputs.teacher.is_some(), cfg.online_teacher.is_some())
    };
    let (image_model, text_model) = (vision.as_os_str(), text.as_os_str());
    let online = [
        "--teacher".as_ref(),
        "online".as_ref(),
        "--teacher-image-model".as_ref(),
        image_model,
        "--teacher-text-model".as_ref(),
        text_model,
    ];
    let (code, err) = resume("2", &online);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("--teacher online replaces the teacher file"),
        "{err}"
    );
    assert_eq!(recorded(), (false, true), "the online teacher recorded");
    let (code, err) = resume("3", &["--teacher".as_ref(), ds.teacher.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("--teacher FILE replaces the online teacher"),
        "{err}"
    );
    assert_eq!(recorded(), (true, false), "the teacher file recorded");
    let o = train_command(&ds)
        .args(common)
        .args(["--max-steps", "4", "--auto-resume", "--out"])
        .arg(&run)
        .args(online)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--auto-resume") && err.contains("--teacher"),
        "{err}"
    );
}
