//! `tagfix teacher` and the ONNX CLIP image tower on the generated fixtures (models/clip-tiny-vision,
//! models/clip-tiny): the image tower equals the generator's numpy forward, the teacher file holds
//! exactly what the two towers give for each record (read back by the training reader), and bad
//! inputs fail with exit 2, a message naming file and record, and no output.
#![cfg(feature = "embed")]

mod common;
mod embed_common;

use assert_cmd::Command;
use common::model_dir_for_test;
use embed_common::max_abs_diff;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use tagfix::embed::encoder::{l2_normalize, EncoderOptions, TextEncoder};
use tagfix::embed::ModelDescriptor;
use tagfix::imaging::{decode, eval_transform};
use tagfix::teacher::image_encoder::ImageEncoder;
use tagfix::teacher::{pre_caption, ImageDescriptor, TeacherFeatures, TEACHER_DIM};

fn towers(test: &str) -> Option<(PathBuf, PathBuf)> {
    Some((
        model_dir_for_test("clip-tiny-vision", test)?,
        model_dir_for_test("clip-tiny", test)?,
    ))
}

fn opts() -> EncoderOptions {
    EncoderOptions {
        threads: Some(1),
        batch_size: 2,
        ..Default::default()
    }
}

#[test]
fn image_tower_matches_numpy_forward() {
    let Some((vision, _)) = towers("image_tower_matches_numpy_forward") else {
        return;
    };
    let mut enc = ImageEncoder::load(ImageDescriptor::read_dir(&vision).unwrap(), &opts()).unwrap();
    assert_eq!((enc.dim, enc.size()), (512, 224));
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vision.join("expected.json")).unwrap())
            .unwrap();
    // pixel_values[b, c, y, x] = sin(0.05·(x+1)·(c+1) + 0.031·y·(b+1)) · 1.5, as the generator.
    let s = 224usize;
    let mut pixels = vec![0f32; 2 * 3 * s * s];
    for b in 0..2 {
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let v = (0.05 * (x as f64 + 1.0) * (c as f64 + 1.0)
                        + 0.031 * y as f64 * (b as f64 + 1.0))
                        .sin()
                        * 1.5;
                    pixels[((b * 3 + c) * s + y) * s + x] = v as f32;
                }
            }
        }
    }
    let got = enc.encode(&pixels).unwrap();
    let want: Vec<f32> = expected["image_embeds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let err = max_abs_diff(&got, &want);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    assert!(
        err < 1e-4 * scale.max(1.0),
        "max |ONNX − numpy| = {err} (scale {scale})"
    );
    // Batching does not change a row: image 1 alone equals row 1 of the pair.
    let alone = enc.encode(&pixels[3 * s * s..]).unwrap();
    assert!(max_abs_diff(&alone, &got[512..]) < 1e-5);
}

/// Three images of different shapes and their annotations (captions with RAM-style punctuation).
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    let pattern = |w: u32, h: u32, k: u32| {
        image::RgbImage::from_fn(w, h, move |x, y| {
            image::Rgb([
                ((x * 7 + y * k) % 256) as u8,
                ((x * k + 3 * y) % 256) as u8,
                ((x + y) * 5 % 256) as u8,
            ])
        })
    };
    pattern(300, 200, 3).save(images.join("wide.png")).unwrap();
    pattern(224, 224, 5)
        .save(images.join("sub/square.png"))
        .unwrap();
    pattern(150, 260, 9).save(images.join("tall.jpg")).unwrap();
    let data = dir.join("train.json");
    std::fs::write(
        &data,
        r#"[
 {"image_path": "wide.png", "caption": ["A red Car, parked.", "a car"], "union_label_id": [1], "parse_label_id": [[1], [1]]},
 {"image_path": "sub/square.png", "caption": ["Two dogs (playing)!"], "union_label_id": [2], "parse_label_id": [[2]]},
 {"image_path": "tall.jpg", "caption": ["a tall building"], "union_label_id": [0], "parse_label_id": [[0]]}
]"#,
    )
    .unwrap();
    (data, images)
}

fn teacher_cmd(data: &Path, images: &Path, vision: &Path, text: &Path, out: &Path) -> Command {
    let mut cmd = Command::cargo_bin("tagfix").unwrap();
    cmd.args(["--quiet", "teacher", "--data"])
        .arg(data)
        .arg("--images")
        .arg(images)
        .arg("--image-model")
        .arg(vision)
        .arg("--text-model")
        .arg(text)
        .arg("--out")
        .arg(out)
        .args(["--threads", "1", "--batch-size", "2"]);
    cmd
}

#[test]
fn teacher_file_holds_what_the_towers_give() {
    let Some((vision, text_dir)) = towers("teacher_file_holds_what_the_towers_give") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, images) = dataset(tmp.path());
    let out = tmp.path().join("teacher.safetensors");
    let output = teacher_cmd(&data, &images, &vision, &text_dir, &out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("3 records"), "{stdout}");

    let t = TeacherFeatures::read(&out).unwrap();
    assert_eq!(t.keys(), vec!["wide.png", "sub/square.png", "tall.jpg"]);
    for key in [
        "tagfix.teacher.image_model_sha256",
        "tagfix.teacher.text_model_sha256",
        "tagfix.teacher.image_preprocessing",
        "tagfix.teacher.caption",
        "tagfix.generator",
    ] {
        assert!(t.metadata.contains_key(key), "missing {key}");
    }
    assert!(t.metadata["tagfix.teacher.image_preprocessing"].contains("centre crop 224"));

    // Image rows: the descriptor's evaluation transform, then the tower.
    let desc = ImageDescriptor::read_dir(&vision).unwrap();
    let mut enc = ImageEncoder::load(desc.clone(), &opts()).unwrap();
    for (row, name) in ["wide.png", "sub/square.png", "tall.jpg"]
        .iter()
        .enumerate()
    {
        let img = decode(&images.join(name)).unwrap();
        let mut px = vec![0f32; 3 * 224 * 224];
        eval_transform(&img, &desc.input, &mut px);
        let want = enc.encode(&px).unwrap();
        let err = max_abs_diff(&t.image_row(row).unwrap(), &want);
        assert!(err < 1e-5, "{name}: |file − tower| = {err}");
    }
    // The square 224 image is fed unchanged: its row is the tower on its raw normalised pixels.
    let sq = decode(&images.join("sub/square.png")).unwrap();
    let mut raw = vec![0f32; 3 * 224 * 224];
    tagfix::imaging::normalize_chw(&sq, &desc.input.mean, &desc.input.std, &mut raw);
    assert!(max_abs_diff(&t.image_row(1).unwrap(), &enc.encode(&raw).unwrap()) < 1e-5);
    // Different images, different features.
    assert!(max_abs_diff(&t.image_row(0).unwrap(), &t.image_row(2).unwrap()) > 1e-3);

    // Text rows: pre_caption of caption[0], the CLIP text tower, L2-normalised.
    let mut text =
        TextEncoder::load(ModelDescriptor::read_dir(&text_dir).unwrap(), &opts()).unwrap();
    let captions = [
        "A red Car, parked.",
        "Two dogs (playing)!",
        "a tall building",
    ];
    let cleaned: Vec<String> = captions.iter().map(|c| pre_caption(c, 30)).collect();
    assert_eq!(cleaned[0], "a red car, parked");
    let refs: Vec<&str> = cleaned.iter().map(String::as_str).collect();
    let (vectors, dim) = text.encode(&refs, &ProgressBar::hidden()).unwrap();
    assert_eq!(dim, TEACHER_DIM);
    for row in 0..3 {
        let mut want = vectors[row * dim..(row + 1) * dim].to_vec();
        l2_normalize(&mut want);
        let err = max_abs_diff(&t.text_row(row).unwrap(), &want);
        assert!(err < 1e-5, "caption {row}: {err}");
    }

    // --caption mean: record 0 averages its two captions, so its row changes; the others do not.
    let mean_out = tmp.path().join("mean.safetensors");
    teacher_cmd(&data, &images, &vision, &text_dir, &mean_out)
        .args(["--caption", "mean"])
        .assert()
        .success();
    let m = TeacherFeatures::read(&mean_out).unwrap();
    assert!(max_abs_diff(&m.text_row(0).unwrap(), &t.text_row(0).unwrap()) > 1e-3);
    assert!(max_abs_diff(&m.text_row(1).unwrap(), &t.text_row(1).unwrap()) < 1e-6);
    assert_eq!(m.image_row(2).unwrap(), t.image_row(2).unwrap());
}

/// `--shard I/N` splits the work: the shards' folder reads (as `tagfix train --teacher DIR` reads
/// it) as the unsharded file, row for row.
#[test]
fn shards_of_the_teacher_read_as_the_whole_file() {
    let Some((vision, text_dir)) = towers("shards_of_the_teacher_read_as_the_whole_file") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, images) = dataset(tmp.path());
    let whole = tmp.path().join("teacher.safetensors");
    teacher_cmd(&data, &images, &vision, &text_dir, &whole)
        .assert()
        .success();
    let set = tmp.path().join("set");
    // A shard refused at its inputs (annotations that are not there) leaves no folder behind.
    let missing = tmp.path().join("no-such-annotations.json");
    let o = teacher_cmd(&missing, &images, &vision, &text_dir, &set)
        .args(["--shard", "0/2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(!set.exists(), "an empty shard folder was left");
    // Shard 1 as task 2 of a Slurm job array 1-2 (`--shard auto`), shard 0 given.
    let array = [
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_MAX", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
    ];
    for (flag, env, says) in [
        ("auto", &array[..], "shard 1/2 (--shard auto: SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_MIN=1, SLURM_ARRAY_TASK_COUNT=2): records"),
        ("0/2", &[][..], "shard 0/2: records"),
    ] {
        let output = teacher_cmd(&data, &images, &vision, &text_dir, &set)
            .args(["--shard", flag])
            .env_remove("RANK")
            .env_remove("WORLD_SIZE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains(says), "{stdout}");
    }
    assert!(set.join("teacher-00000-of-00002.safetensors").is_file());
    let (t, s) = (
        TeacherFeatures::read(&whole).unwrap(),
        TeacherFeatures::read(&set).unwrap(),
    );
    assert_eq!(s.keys(), t.keys());
    assert_eq!(s.files().len(), 2);
    for row in 0..t.len() {
        let image = max_abs_diff(&s.image_row(row).unwrap(), &t.image_row(row).unwrap());
        let text = max_abs_diff(&s.text_row(row).unwrap(), &t.text_row(row).unwrap());
        assert!(image < 1e-5 && text < 1e-5, "row {row}: {image} {text}");
    }
    // A shard past the count is a usage error; one shard alone is not a set.
    let o = teacher_cmd(&data, &images, &vision, &text_dir, &set)
        .args(["--shard", "2/2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be below the count"));
    // `auto` outside any launcher says what it looked for.
    let o = teacher_cmd(&data, &images, &vision, &text_dir, &set)
        .args(["--shard", "auto"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_PROCID")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no launcher's variables"));
    std::fs::remove_file(set.join("teacher-00001-of-00002.safetensors")).unwrap();
    let err = TeacherFeatures::read(&set).unwrap_err().to_string();
    assert!(err.contains("1 of its 2 shards are missing: 1"), "{err}");
}

#[test]
fn under_a_launcher_cuda_is_the_processs_local_gpu() {
    let Some((vision, text_dir)) = towers("under_a_launcher_cuda_is_the_processs_local_gpu") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, images) = dataset(tmp.path());
    let out = tmp.path().join("t.safetensors");
    // The CPU build of ONNX Runtime here has no CUDA provider: the refusal names the device chosen.
    let stderr = |device: &str, env: &[(&str, &str)]| {
        let mut cmd = teacher_cmd(&data, &images, &vision, &text_dir, &out);
        cmd.args(["--device", device])
            .env_remove("LOCAL_RANK")
            .env_remove("SLURM_LOCALID")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .envs(env.iter().copied());
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(!out.exists());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert!(stderr("cuda", &[]).contains("--device cuda:0:"));
    assert!(stderr("cuda", &[("LOCAL_RANK", "3")]).contains("--device cuda:3:"));
    let bound = [("SLURM_LOCALID", "3"), ("CUDA_VISIBLE_DEVICES", "GPU-5f2a")];
    assert!(stderr("cuda", &bound).contains("--device cuda:0:"));
    // An index given is kept.
    assert!(stderr("cuda:1", &[("LOCAL_RANK", "3")]).contains("--device cuda:1:"));
    let err = stderr("cuda", &[("LOCAL_RANK", "three")]);
    assert!(err.contains("LOCAL_RANK=\"three\""), "{err}");
}

#[test]
fn processes_of_a_launcher_share_the_cores_and_write_the_same_file() {
    let Some((vision, text_dir)) =
        towers("processes_of_a_launcher_share_the_cores_and_write_the_same_file")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, images) = dataset(tmp.path());
    let alone = tmp.path().join("alone.safetensors");
    teacher_cmd(&data, &images, &vision, &text_dir, &alone)
        .assert()
        .success();
    // Rank 0 of two that torchrun started on this machine (not bound to part of it).
    let shared = tmp.path().join("shared.safetensors");
    let torchrun = [
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    let o = teacher_cmd(&data, &images, &vision, &text_dir, &shared)
        .env_remove("RAYON_NUM_THREADS")
        .envs(torchrun)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let cores = std::thread::available_parallelism().unwrap().get();
    let line = format!(
        "2 processes share this machine's cores: each decodes on {} threads",
        (cores / 2).max(1)
    );
    // A process bound to part of the machine (a cpuset, taskset) has its cores to itself.
    match tagfix::train::config::bound_to_part_of_machine() {
        false => assert!(err.contains(&line), "expected `{line}` in {err}"),
        true => assert!(!err.contains("processes share"), "{err}"),
    }
    // The same rows.
    let rows = |p: &Path| {
        let t = tagfix::teacher::TeacherFeatures::read(p).unwrap();
        (0..3).map(|r| t.image_row(r).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(rows(&alone), rows(&shared));
}

#[test]
fn bad_inputs_fail_with_exit_2_and_no_output() {
    let Some((vision, text_dir)) = towers("bad_inputs_fail_with_exit_2_and_no_output") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, images) = dataset(tmp.path());
    let out = tmp.path().join("t.safetensors");
    let fails = |data: &Path, vision: &Path, needle: &str| {
        let o = teacher_cmd(data, &images, vision, &text_dir, &out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{needle}: {err}");
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
        assert!(!out.exists(), "no output after a failure");
    };
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // A missing image: the path and the record are named.
    let missing = write(
        "missing.jsonl",
        "{\"image_path\":\"wide.png\",\"caption\":[\"x\"]}\n{\"image_path\":\"nope.png\",\"caption\":[\"y\"]}\n",
    );
    fails(&missing, &vision, "nope.png");
    fails(&missing, &vision, "missing.jsonl:2:1: record 1");
    // A record without a caption.
    let nocap = write(
        "nocap.jsonl",
        "{\"image_path\":\"wide.png\",\"caption\":[]}\n",
    );
    fails(
        &nocap,
        &vision,
        "nocap.jsonl:1:1: record 0: caption is an empty list",
    );
    // A caption byte that is not UTF-8: named at its line:column, as `tagfix diff` names it.
    let bad_utf8 = tmp.path().join("bad_utf8.jsonl");
    std::fs::write(
        &bad_utf8,
        b"{\"image_path\":\"wide.png\",\"caption\":[\"x\"]}\n{\"image_path\":\"wide.png\",\"caption\":[\"a \xC0\xAF b\"]}\n",
    )
    .unwrap();
    fails(
        &bad_utf8,
        &vision,
        "bad_utf8.jsonl:2:40: record 1: invalid UTF-8 (byte 0xC0)",
    );
    // The same image twice: the file is keyed by image_path.
    let dup = write(
        "dup.jsonl",
        "{\"image_path\":\"wide.png\",\"caption\":[\"x\"]}\n{\"image_path\":\"wide.png\",\"caption\":[\"y\"]}\n",
    );
    fails(&dup, &vision, "appears twice");
    // A text tower given as the image tower.
    fails(&data, &text_dir, "not an image-encoder descriptor");
    // A descriptor whose input size does not match the model.
    let bad = tmp.path().join("bad-vision");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(vision.join("model.onnx"), bad.join("model.onnx")).unwrap();
    std::fs::write(
        bad.join("descriptor.toml"),
        std::fs::read_to_string(vision.join("descriptor.toml"))
            .unwrap()
            .replace("size = 224", "size = 256"),
    )
    .unwrap();
    fails(&data, &bad, "input.size = 256");
    // A text tower of another width (MiniLM, 384-d) is refused before the image pass (which would
    // stop at the missing image first).
    if let Some(minilm) = model_dir_for_test("minilm", "bad_inputs_fail_with_exit_2_and_no_output")
    {
        let o = teacher_cmd(&missing, &images, &vision, &minilm, &out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("gives 384-d vectors"), "{err}");
        assert!(!out.exists(), "no output after a failure");
    }
}

/// `--unreadable-images skip`: an image that cannot be read gets a row of zeros flagged in
/// `image_unreadable` and a warning, every other row is what the towers give; with no image
/// readable at all the command fails. The default, `stop`, refuses the file.
#[test]
fn unreadable_images_are_refused_or_flagged() {
    let Some((vision, text_dir)) = towers("unreadable_images_are_refused_or_flagged") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, images) = dataset(tmp.path());
    let whole = tmp.path().join("whole.safetensors");
    teacher_cmd(&data, &images, &vision, &text_dir, &whole)
        .assert()
        .success();
    let tall = images.join("tall.jpg");
    let bytes = std::fs::read(&tall).unwrap();
    std::fs::write(&tall, &bytes[..bytes.len() / 2]).unwrap();

    let out = tmp.path().join("t.safetensors");
    let o = teacher_cmd(&data, &images, &vision, &text_dir, &out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tall.jpg"), "{stderr}");
    assert!(!out.exists(), "no output after a failure");

    // (`--quiet` shows errors only; RUST_LOG brings the warnings back.)
    let o = teacher_cmd(&data, &images, &vision, &text_dir, &out)
        .args(["--unreadable-images", "skip"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("skipped an unreadable image").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("tall.jpg") && stderr.contains("train.json:4:2: record 2"),
        "{stderr}"
    );
    assert!(stdout.contains("unreadable images skipped: 1"), "{stdout}");
    let (t, w) = (
        TeacherFeatures::read(&out).unwrap(),
        TeacherFeatures::read(&whole).unwrap(),
    );
    assert_eq!(t.keys(), w.keys());
    let flagged: Vec<usize> = (0..3).filter(|&r| t.image_unreadable(r)).collect();
    assert_eq!(flagged, [2]);
    assert_eq!(t.image_row(2).unwrap(), vec![0.0; TEACHER_DIM]);
    for row in 0..3 {
        if row < 2 {
            let err = max_abs_diff(&t.image_row(row).unwrap(), &w.image_row(row).unwrap());
            assert!(err < 1e-6, "image row {row}: {err}");
        }
        assert_eq!(
            t.text_row(row).unwrap(),
            w.text_row(row).unwrap(),
            "text row {row}"
        );
    }

    // Nothing readable: a wrong image root, most likely; no file.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::remove_file(&out).unwrap();
    let o = teacher_cmd(&data, &empty, &vision, &text_dir, &out)
        .args(["--unreadable-images", "skip"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("none of the 3 images could be read"),
        "{stderr}"
    );
    assert!(!out.exists(), "no output after a failure");
}
