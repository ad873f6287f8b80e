//! `tagfix tag`, `tagfix eval --checkpoint` and `tagfix export` on the tiny RAM++ parity fixture
//! (`../shared/ram/reference/tiny/`): the tag probabilities equal the reference `generate_tag`
//! outputs, the CLI's scores equal the model's on pixels normalised here by hand, export → convert
//! is bit-identical and writes the official key list, and what `torch.load` reads is checked with
//! the project's reader and, where a Python torch imports, by Python itself.
#![cfg(feature = "train")]

mod common;

use assert_cmd::Command;
use common::tagfix;
use predicates::prelude::*;
use predicates::str::contains;
use std::path::{Path, PathBuf};
use tagfix::checkpoint::pth;
use tagfix::tensors::{safetensors_io, DType};
use tagfix::train::infer::{load_model, tag_strings, SlotLabels};
use tch::{Device, Kind, Tensor};

#[derive(serde::Deserialize)]
struct TinyConfig {
    tag_list: Vec<String>,
    tag_list_chinese: Vec<String>,
    class_threshold: Vec<f32>,
    state_dict_keys_in_order: Vec<tagfix::checkpoint::model_config::StateEntry>,
}

struct Fixture {
    dir: PathBuf,
    config: TinyConfig,
    /// The tag list, Chinese names and thresholds of config.json written as files, in `tmp`.
    vocab: PathBuf,
    zh: PathBuf,
    thresholds: PathBuf,
}

impl Fixture {
    fn weights(&self) -> PathBuf {
        self.dir.join("weights.safetensors")
    }
    fn config_json(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// The tiny reference model (10 tags) on the CPU.
    fn model(&self) -> tagfix::train::infer::LoadedModel {
        let config = self.config_json();
        load_model(
            &self.weights(),
            config.to_str(),
            Some(10),
            None,
            Device::Cpu,
        )
        .unwrap()
    }
    /// `--checkpoint W --model config.json --vocab V --thresholds T --zh Z`.
    fn model_args(&self, cmd: &mut Command) {
        cmd.arg("--checkpoint")
            .arg(self.weights())
            .arg("--model")
            .arg(self.config_json())
            .arg("--vocab")
            .arg(&self.vocab)
            .arg("--thresholds")
            .arg(&self.thresholds);
    }
}

fn fixture(tmp: &Path) -> Option<Fixture> {
    let dir = common::reference_dir()?.join("tiny");
    let config: TinyConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let lines = |name: &str, items: Vec<String>| {
        let p = tmp.join(name);
        std::fs::write(&p, items.join("\n") + "\n").unwrap();
        p
    };
    let vocab = lines("tags.txt", config.tag_list.clone());
    let zh = lines("zh.txt", config.tag_list_chinese.clone());
    let thresholds = lines(
        "th.txt",
        config
            .class_threshold
            .iter()
            .map(|t| t.to_string())
            .collect(),
    );
    Some(Fixture {
        dir,
        config,
        vocab,
        zh,
        thresholds,
    })
}

/// Runs `cmd`, which must succeed, and parses its standard output as JSON.
fn json_output(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
}

#[test]
fn tag_probabilities_equal_the_reference_generate_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let m = f.model();
    assert!(m.report.is_complete(), "{}", m.report.to_table());
    let inputs = common::read_tensors(&f.dir.join("inputs.safetensors"));
    let outputs = common::read_tensors(&f.dir.join("outputs.safetensors"));
    let probs = m.model.tag_probabilities(&inputs["image"]).unwrap();
    let got = to_vec(&probs);
    let want = to_vec(&outputs["generate_tag_scores"]);
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-5, "max |tag - generate_tag| = {diff}");

    // The strings generate_tag returned, from the same scores and the fixture's thresholds.
    let vocab = tagfix::vocab::Vocabulary::from_file(&f.vocab).unwrap();
    let th = tagfix::eval::Thresholds::read(&f.thresholds, 10).unwrap();
    let labels = SlotLabels::new(&vocab, Some(&f.zh), th, None).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.dir.join("generate_tag.json")).unwrap())
            .unwrap();
    for (i, row) in got.chunks(10).enumerate() {
        let (en, zh) = tag_strings(&labels.predictions(row, None));
        assert_eq!(en, reference["tag_output"][i], "image {i}");
        assert_eq!(zh.unwrap(), reference["tag_output_chinese"][i], "image {i}");
    }
}

/// A 64×64 PNG (the tiny model's input size, so the transform only normalises) and the same
/// pixels normalised here with ImageNet's mean and std.
fn test_image(path: &Path, seed: u32) -> Vec<f32> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        let v = |c: u32| ((x * 7 + y * 13 + c * 29 + seed * 31) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    });
    img.save(path).unwrap();
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut out = vec![0f32; 3 * 64 * 64];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * 4096 + i] = (f32::from(px[c]) / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

#[test]
fn tag_cli_scores_match_the_model_on_hand_normalised_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    let pixels: Vec<Vec<f32>> = ["a.png", "sub/b.png"]
        .iter()
        .enumerate()
        .map(|(i, n)| test_image(&imgs.join(n), i as u32))
        .collect();
    // Slot 1 (dog) absent from the training data.
    let vocab = tagfix::vocab::Vocabulary::from_file(&f.vocab).unwrap();
    let mut counts = vec![5u64; 10];
    counts[1] = 0;
    let manifest = tmp.path().join("manifest.json");
    tagfix::manifest::SlotManifest::from_counts(&vocab, &counts, &counts, vec![], 0)
        .write(&manifest)
        .unwrap();

    let scores = tmp.path().join("scores.safetensors");
    let out = tmp.path().join("tags.jsonl");
    let mut cmd = tagfix();
    cmd.arg("tag");
    f.model_args(&mut cmd);
    cmd.arg("--zh")
        .arg(&f.zh)
        .arg("--manifest")
        .arg(&manifest)
        .args(["--top-k", "10", "--format", "json", "--batch-size", "1"])
        .arg("--images")
        .arg(&imgs)
        .arg("--scores")
        .arg(&scores)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("load report").and(contains("tagged 2 images")));

    // The model on the hand-normalised pixels.
    let m = f.model();
    let x = Tensor::from_slice(&pixels.concat()).view([2, 3, 64, 64]);
    let want = to_vec(&m.model.tag_probabilities(&x).unwrap());

    let set = safetensors_io::read(&scores).unwrap();
    let got = set.get("scores").unwrap();
    assert_eq!(got.shape, vec![2, 10]);
    let got = got.to_f32().unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }
    assert_eq!(set.metadata["image_ids"], r#"["a.png","sub/b.png"]"#);

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, rec) in lines.iter().enumerate() {
        let tags = rec["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 10, "--top-k 10 lists every slot");
        for t in tags {
            let slot = t["slot"].as_u64().unwrap() as usize;
            let score = t["score"].as_f64().unwrap() as f32;
            assert_eq!(score, got[i * 10 + slot]);
            assert_eq!(t["absent"], slot == 1, "slot {slot}");
            assert_eq!(t["tag"], f.config.tag_list[slot]);
            assert_eq!(t["zh"], f.config.tag_list_chinese[slot]);
            let above = score > f.config.class_threshold[slot];
            assert_eq!(t["above"], above);
        }
    }
}

#[test]
fn scoring_ahead_gives_every_batch_the_scores_of_scoring_in_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let m = f.model();
    // Seven images in batches of two, the fourth unreadable.
    let paths: Vec<PathBuf> = (0..7)
        .map(|i| {
            let p = tmp.path().join(format!("{i}.png"));
            match i {
                3 => std::fs::write(&p, b"not a png").unwrap(),
                _ => drop(test_image(&p, i)),
            }
            p
        })
        .collect();
    let scored = |ahead: usize| {
        let mut seen: Vec<(PathBuf, Result<Vec<f32>, String>)> = Vec::new();
        m.score_files_ahead(
            &paths,
            |p| p.as_path(),
            2,
            ahead,
            |batch, rows| {
                assert!(batch.len() <= 2 && batch.len() == rows.len());
                for (p, row) in batch.iter().zip(rows) {
                    seen.push((p.clone(), row.map_err(|e| e.to_string())));
                }
                Ok::<_, tagfix::error::Error>(())
            },
        )
        .unwrap();
        seen
    };
    let in_turn = scored(0);
    let order: Vec<&PathBuf> = in_turn.iter().map(|(p, _)| p).collect();
    assert_eq!(order, paths.iter().collect::<Vec<_>>());
    assert!(in_turn[3].1.is_err() && in_turn.iter().filter(|(_, r)| r.is_ok()).count() == 6);
    // Each batch scored alone gives the same rows.
    for (batch, rows) in paths.chunks(2).zip(in_turn.chunks(2)) {
        let alone: Vec<_> = m.score_files(batch).unwrap();
        for (a, (_, b)) in alone.into_iter().zip(rows) {
            assert_eq!(a.map_err(|e| e.to_string()), *b);
        }
    }
    for ahead in [1, 3] {
        assert_eq!(scored(ahead), in_turn, "{ahead} batches ahead");
    }
    // The consumer's error stops the scoring: no batch after it is consumed.
    let mut batches = 0;
    let err = m
        .score_files_ahead(
            &paths,
            |p| p.as_path(),
            2,
            1,
            |_, _| {
                batches += 1;
                match batches {
                    2 => Err(anyhow::anyhow!("stop here")),
                    _ => Ok(()),
                }
            },
        )
        .unwrap_err();
    assert_eq!((err.to_string().as_str(), batches), ("stop here", 2));
}

#[test]
fn tag_reports_unreadable_images_and_writes_nothing_without_keep_going() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    test_image(&imgs.join("good.png"), 0);
    std::fs::write(imgs.join("broken.jpg"), b"not a jpeg at all").unwrap();
    let out = tmp.path().join("tags.csv");
    let scores = tmp.path().join("scores.csv");
    let run = |keep_going: bool| {
        let mut cmd = tagfix();
        cmd.arg("tag");
        f.model_args(&mut cmd);
        cmd.args(["--format", "csv", "--images"])
            .arg(&imgs)
            .arg("--out")
            .arg(&out)
            .arg("--scores")
            .arg(&scores);
        if keep_going {
            cmd.arg("--keep-going");
        }
        cmd.assert()
    };
    run(false).code(2).stderr(contains("broken.jpg"));
    assert!(!out.exists() && !scores.exists(), "nothing written");
    run(true)
        .success()
        .stderr(contains("skipped").and(contains("broken.jpg")));
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(csv.starts_with("image,slot,tag,zh,score,threshold,above,absent\n"));
    assert!(!csv.contains("broken"), "{csv}");
    // The score file holds the good image's 10 slots.
    assert_eq!(
        std::fs::read_to_string(&scores).unwrap().lines().count(),
        11
    );
    let leftovers = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tagfix")
        })
        .count();
    assert_eq!(leftovers, 0);
    // A checkpoint for another vocabulary (the `ram` preset's 4585 tags by default) is refused.
    tagfix()
        .arg("tag")
        .arg("--checkpoint")
        .arg(f.weights())
        .arg("--images")
        .arg(imgs.join("good.png"))
        .assert()
        .code(2)
        .stderr(contains("not a multiple of the vocabulary's 4585 tags"));
}

#[test]
fn eval_checkpoint_equals_eval_of_tag_scores_and_sets_benchmarks_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for i in 0..4 {
        test_image(&imgs.join(format!("i{i}.png")), i);
    }
    let bench = |name: &str, taglist: &str, annots: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(format!("{name}_taglist.txt")), taglist).unwrap();
        std::fs::write(d.join(format!("{name}_annots.txt")), annots).unwrap();
        d
    };
    let b1 = bench(
        "small_a",
        "cat\ndog\nsky\n",
        "i0.png,cat\ni1.png,dog,sky\ni2.png,sky\ni3.png\n",
    );
    let b2 = bench("small_b", "tree\nroad\n", "i0.png,road\ni3.png,tree\n");
    let scores = tmp.path().join("s.safetensors");
    let mut cmd = tagfix();
    cmd.arg("tag");
    f.model_args(&mut cmd);
    cmd.arg("--images")
        .arg(&imgs)
        .arg("--scores")
        .arg(&scores)
        .assert()
        .success();
    let base = |cmd: &mut Command| {
        cmd.arg("eval")
            .arg("--vocab")
            .arg(&f.vocab)
            .arg("--thresholds")
            .arg(&f.thresholds)
            .args(["--format", "json"]);
    };
    let mut from_file = tagfix();
    base(&mut from_file);
    from_file
        .arg("--benchmark")
        .arg(&b1)
        .arg("--scores")
        .arg(&scores);
    let mut from_ckpt = tagfix();
    base(&mut from_ckpt);
    from_ckpt
        .arg("--benchmark")
        .arg(&b1)
        .arg("--images")
        .arg(&imgs)
        .arg("--checkpoint")
        .arg(f.weights())
        .arg("--model")
        .arg(f.config_json());
    let a = json_output(&mut from_file);
    let b = json_output(&mut from_ckpt);
    assert_eq!(a, b);
    // mAP as batch_inference.py over all three tags (cat, dog, sky).
    assert_eq!(a["ram"]["classes"], 3);
    let mean_ap = a["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ram_ap"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!((a["ram"]["map"].as_f64().unwrap() - mean_ap).abs() < 1e-12);

    // Two benchmarks in one call: one table, a column each.
    let mut both = tagfix();
    both.arg("eval")
        .arg("--vocab")
        .arg(&f.vocab)
        .arg("--thresholds")
        .arg(&f.thresholds)
        .arg("--benchmark")
        .arg(&b1)
        .arg("--benchmark")
        .arg(&b2)
        .arg("--images")
        .arg(&imgs)
        .arg("--checkpoint")
        .arg(f.weights())
        .arg("--model")
        .arg(f.config_json())
        .assert()
        .success()
        .stdout(
            contains("small_a")
                .and(contains("small_b"))
                .and(contains("mAP")),
        );
    // Missing images fail before the model loads.
    let mut missing = tagfix();
    base(&mut missing);
    missing
        .arg("--benchmark")
        .arg(&b1)
        .arg("--images")
        .arg(tmp.path())
        .arg("--checkpoint")
        .arg(f.weights())
        .assert()
        .code(2)
        .stderr(contains("cannot be read"));
}

/// `--images-from LIST` tags the files and folders the list names, as `--images` would with the same
/// paths; a listed path that does not exist is refused before the model loads.
#[test]
fn tag_reads_its_images_from_a_list_file() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    for i in 0..4 {
        test_image(&imgs.join(format!("i{i}.png")), i);
    }
    test_image(&imgs.join("sub/s.png"), 9);
    let run = |extra: &[&std::ffi::OsStr]| {
        let mut cmd = tagfix();
        cmd.arg("tag");
        f.model_args(&mut cmd);
        cmd.args(["--format", "json"]).args(extra);
        cmd.output().unwrap()
    };
    let (a, b, sub) = (imgs.join("i2.png"), imgs.join("i0.png"), imgs.join("sub"));
    let given = run(&[
        "--images".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
        sub.as_os_str(),
    ]);
    assert!(
        given.status.success(),
        "{}",
        String::from_utf8_lossy(&given.stderr)
    );
    let list = tmp.path().join("list.txt");
    let text = format!("{}\r\n\n{}\n{}\n", a.display(), b.display(), sub.display());
    std::fs::write(&list, text).unwrap();
    let listed = run(&["--images-from".as_ref(), list.as_os_str()]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(given.stdout, listed.stdout);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 3);

    std::fs::write(
        &list,
        format!("{}\n{}\n", a.display(), imgs.join("gone.png").display()),
    )
    .unwrap();
    let missing = run(&["--images-from".as_ref(), list.as_os_str()]);
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("gone.png: no such image file or folder"),
        "{err}"
    );
}

/// `tag --shard I/N` over N processes writes a tag set and a score set whose shards, put back in
/// order, are the one-process run's output: the JSON Lines byte for byte, and `eval --scores DIR`
/// reads the score set as it reads the one file; under torchrun's variables a process takes its
/// place and its share of the cores. An incomplete set, a set mixing two runs and `--shard` without
/// `--out DIR` are refused.
#[test]
fn a_shard_refused_at_its_inputs_leaves_no_folder_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    test_image(&imgs.join("i0.png"), 0);
    std::fs::write(imgs.join("broken.png"), b"not a png").unwrap();
    let (tags, scores) = (tmp.path().join("runs/tags"), tmp.path().join("runs/scores"));
    let tag = |out: &Path| {
        let mut cmd = tagfix();
        cmd.arg("tag");
        f.model_args(&mut cmd);
        cmd.arg("--images")
            .arg(&imgs)
            .args(["--shard", "0/2", "--out"])
            .arg(out)
            .arg("--scores")
            .arg(&scores);
        cmd.output().unwrap()
    };
    // An unreadable image without --keep-going: refused before the model loads, nothing made.
    let o = tag(&tags);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot be read"), "{err}");
    assert!(
        !tmp.path().join("runs").exists(),
        "an empty folder was left"
    );
    // A folder that cannot be made under a file is refused at once.
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    let o = tag(&tmp.path().join("file/tags"));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is a file"), "{err}");
    // Readable inputs: the folders are made and hold the shard's files.
    std::fs::remove_file(imgs.join("broken.png")).unwrap();
    let o = tag(&tags);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tags.join("tags-00000-of-00002.txt").is_file());
    assert!(scores.join("scores-00000-of-00002.safetensors").is_file());
}

#[test]
fn tag_shards_put_together_are_the_whole_run() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    for i in 0..7 {
        let dir = if i % 3 == 0 {
            imgs.join("sub")
        } else {
            imgs.clone()
        };
        test_image(&dir.join(format!("i{i}.png")), i);
    }
    let tag = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = tagfix();
        cmd.arg("tag");
        f.model_args(&mut cmd);
        cmd.arg("--images")
            .arg(&imgs)
            .args(["--format", "json", "--batch-size", "2"])
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    };
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (whole, whole_scores) = (path("whole.jsonl"), path("whole.safetensors"));
    tag(&["--out", &whole, "--scores", &whole_scores], &[])
        .assert()
        .success();
    let (tags, scores) = (path("tags"), path("scores"));
    for i in 0..2 {
        tag(
            &[
                "--shard",
                &format!("{i}/3"),
                "--out",
                &tags,
                "--scores",
                &scores,
            ],
            &[],
        )
        .assert()
        .success()
        .stdout(contains(format!("shard {i}/3: images")));
    }
    // The last as torchrun's rank 2 of 3 on this machine would run it: its share of the cores.
    let torchrun = [
        ("RANK", "2"),
        ("LOCAL_RANK", "2"),
        ("WORLD_SIZE", "3"),
        ("LOCAL_WORLD_SIZE", "3"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
        ("RUST_LOG", "info"),
    ];
    let o = tag(
        &["--shard", "auto", "--out", &tags, "--scores", &scores],
        &torchrun,
    )
    .env_remove("RAYON_NUM_THREADS")
    .output()
    .unwrap();
    let (stdout, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        stdout.contains("shard 2/3 (--shard auto: RANK=2, WORLD_SIZE=3): images 4..7 of 7"),
        "{stdout}"
    );
    let share = (std::thread::available_parallelism().unwrap().get() / 3).max(1);
    let line = format!(
        "3 processes share this machine's cores: each decodes on {share} threads and runs libtorch on {share}"
    );
    // A process bound to part of the machine (a cpuset, taskset) has its cores to itself.
    match tagfix::train::config::bound_to_part_of_machine() {
        false => assert!(err.contains(&line), "expected `{line}` in {err}"),
        true => assert!(!err.contains("processes share"), "{err}"),
    }
    let joined: Vec<u8> = (0..3)
        .flat_map(|i| {
            std::fs::read(Path::new(&tags).join(format!("tags-{i:05}-of-00003.jsonl"))).unwrap()
        })
        .collect();
    assert_eq!(
        String::from_utf8(joined).unwrap(),
        std::fs::read_to_string(&whole).unwrap()
    );

    let bench = tmp.path().join("small");
    std::fs::create_dir(&bench).unwrap();
    std::fs::write(bench.join("small_taglist.txt"), "cat\ndog\nsky\n").unwrap();
    let annots: String = (0..7)
        .map(|i| {
            let dir = if i % 3 == 0 { "sub/" } else { "" };
            format!("{dir}i{i}.png,{}\n", ["cat", "dog", "sky"][i % 3])
        })
        .collect();
    std::fs::write(bench.join("small_annots.txt"), annots).unwrap();
    let eval = |scores: &str| {
        let mut cmd = tagfix();
        cmd.arg("eval")
            .arg("--vocab")
            .arg(&f.vocab)
            .arg("--thresholds")
            .arg(&f.thresholds)
            .args(["--format", "json", "--scores", scores])
            .arg("--benchmark")
            .arg(&bench);
        cmd.output().unwrap()
    };
    let (one, set) = (eval(&whole_scores), eval(&scores));
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let json = |o: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&o.stdout).unwrap()
    };
    assert_eq!(json(&one), json(&set));
    assert_eq!(json(&set)["ram"]["classes"], 3);

    // A set missing a shard, and one mixing two runs, are refused (exit 2).
    let middle = Path::new(&scores).join("scores-00001-of-00003.safetensors");
    let kept = tmp.path().join("kept.safetensors");
    std::fs::rename(&middle, &kept).unwrap();
    let out = eval(&scores);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of its 3 shards are missing: 1"), "{err}");
    std::fs::copy(&whole_scores, &middle).unwrap();
    let out = eval(&scores);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is scored in") && err.contains("scores-00000-of-00003"),
        "{err}"
    );

    // More shards than images: the extra shard is empty, and the set still reads whole.
    let (tags10, scores10) = (path("tags10"), path("scores10"));
    for i in 0..10 {
        tag(
            &[
                "--shard",
                &format!("{i}/10"),
                "--out",
                &tags10,
                "--scores",
                &scores10,
            ],
            &[],
        )
        .assert()
        .success();
    }
    let last = std::fs::read(Path::new(&tags10).join("tags-00009-of-00010.jsonl")).unwrap();
    assert!(!last.is_empty());
    let empty = std::fs::read(Path::new(&tags10).join("tags-00000-of-00010.jsonl")).unwrap();
    assert!(
        empty.is_empty(),
        "7 images in 10 shards: shard 0 holds none"
    );
    let ten = eval(&scores10);
    assert!(
        ten.status.success(),
        "{}",
        String::from_utf8_lossy(&ten.stderr)
    );
    assert_eq!(json(&one), json(&ten));

    // --shard writes into folders: without --out, or with a file there, it is refused.
    tag(&["--shard", "0/2"], &[])
        .assert()
        .code(2)
        .stderr(contains("--shard needs --out DIR"));
    tag(&["--shard", "0/2", "--out", &whole], &[])
        .assert()
        .code(2)
        .stderr(contains("a file is there"));
}

fn sorted(mut v: Vec<(String, tagfix::tensors::Tensor)>) -> Vec<(String, tagfix::tensors::Tensor)> {
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

/// The first Python that imports `module` (TORCH_PYTHON, .venv, .venv-bench from
/// scripts/bench-step.sh, python3), or `None` with the reason printed.
fn python_importing(module: &str, check: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = std::env::var_os("TORCH_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join(".venv/bin/python"),
            root.join(".venv-bench/bin/python"),
            PathBuf::from("python3"),
        ])
        .find(|py| {
            std::process::Command::new(py)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    // An optional tool: .venv's torch wheel lacks its CUDA libraries (only scripts/bench-step.sh's
    // .venv-bench imports torch), so CI skips this too.
    found.or_else(|| {
        common::skip_tool_ci_lacks(
            check,
            format_args!(
                "no Python here imports {module} (.venv's torch wheel lacks its CUDA libraries; \
                 scripts/bench-step.sh creates .venv-bench)"
            ),
        )
    })
}

#[test]
fn export_writes_the_official_state_dict_and_round_trips_through_convert() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    // A tagfix run folder: its newest checkpoint is exported.
    let step = tmp.path().join("run/checkpoints/step-00000002");
    std::fs::create_dir_all(&step).unwrap();
    std::fs::copy(f.weights(), step.join("model.safetensors")).unwrap();
    let out = tmp.path().join("ram_plus_tiny.pth");
    tagfix()
        .arg("export")
        .arg(tmp.path().join("run"))
        .arg(&out)
        .arg("--model")
        .arg(f.config_json())
        .assert()
        .success()
        .stdout(contains("read back identical"));

    // The official keys, order, shapes and dtypes, under "model".
    let ck = pth::read(&out).unwrap();
    assert_eq!(ck.container, pth::Container::Wrapped("model".into()));
    let names: Vec<(String, Vec<usize>, DType)> = ck
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone(), t.dtype))
        .collect();
    let want: Vec<(String, Vec<usize>, DType)> = f
        .config
        .state_dict_keys_in_order
        .iter()
        .map(|e| {
            let d = match e.dtype {
                tagfix::checkpoint::model_config::EntryDtype::Float32 => DType::F32,
                tagfix::checkpoint::model_config::EntryDtype::Int64 => DType::I64,
            };
            (e.name.clone(), e.shape.clone(), d)
        })
        .collect();
    assert_eq!(names, want);

    // export -> convert: bit-identical to the weights it came from; and back the other way.
    let b = sorted(safetensors_io::read(&f.weights()).unwrap().tensors);
    let back = tmp.path().join("back.safetensors");
    let again = tmp.path().join("again.pth");
    for (from, to) in [(&out, &back), (&back, &again)] {
        tagfix().arg("convert").arg(from).arg(to).assert().success();
    }
    assert_eq!(sorted(safetensors_io::read(&back).unwrap().tensors), b);
    assert_eq!(sorted(pth::read(&again).unwrap().tensors), b);

    // The label embedding alone, as RAM loads it.
    let le = tmp.path().join("label_embed.pth");
    tagfix()
        .arg("export")
        .arg(f.weights())
        .arg(&le)
        .arg("--model")
        .arg(f.config_json())
        .arg("--label-embed-only")
        .assert()
        .success();
    let ck = pth::read(&le).unwrap();
    assert_eq!(ck.container, pth::Container::BareTensor);
    assert_eq!(
        &ck.tensors[0].1,
        safetensors_io::read(&f.weights())
            .unwrap()
            .get("label_embed")
            .unwrap()
    );

    // A checkpoint that does not fit the model named is refused with the load report.
    tagfix()
        .arg("export")
        .arg(f.weights())
        .arg(tmp.path().join("x.pth"))
        .args(["--model", "swin_b_224", "--vocab"])
        .arg(&f.vocab)
        .assert()
        .code(2)
        .stderr(contains("does not fit model").and(contains("missing")));
    assert!(!tmp.path().join("x.pth").exists());

    if let Some(py) = python_importing("torch", "the Python torch.load check") {
        let script = r#"
import sys, torch
for weights_only in (True, False):
    ck = torch.load(sys.argv[1], map_location="cpu", weights_only=weights_only)
    sd = ck["model"]
    print(len(sd), sum(float(t.double().sum()) for t in sd.values()), str(sd["visual_encoder.layers.0.blocks.0.attn.relative_position_index"].dtype))
"#;
        let o = std::process::Command::new(py)
            .args(["-c", script])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let total: f64 = b
            .iter()
            .map(|(_, t)| match t.dtype {
                DType::I64 => t
                    .data
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .sum::<f64>(),
                _ => t.to_f32().unwrap().iter().map(|&v| f64::from(v)).sum(),
            })
            .sum();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts[0], b.len().to_string());
            let s: f64 = parts[1].parse().unwrap();
            assert!(
                (s - total).abs() <= 1e-6 * total.abs().max(1.0),
                "{s} vs {total}"
            );
            assert_eq!(parts[2], "torch.int64");
        }
    }
}

/// The Python with Pillow 13.0 that scripts/setup.sh installs into .venv-fixtures
/// (scripts/requirements-fixtures.txt), or `None` with the reason printed (a failure under CI).
fn pillow_python(test: &str) -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-fixtures/bin/python");
    let has_pillow = std::process::Command::new(&py)
        .args(["-c", "import PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_pillow {
        Some(py)
    } else {
        common::skip(
            test,
            format_args!("{} cannot import PIL: run scripts/setup.sh", py.display()),
        )
    }
}

#[test]
fn resize_equals_pillow_where_pillow_is_at_hand() {
    use tagfix::imaging::{pil_resize_region, PilFilter, Region};
    let Some(py) = pillow_python("resize_equals_pillow") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Landscape and portrait, reductions and enlargements, whole images and crops (torchvision's
    // `resized_crop`: `img.crop(box).resize(size)`), both filters RAM uses.
    let cases = [
        (640u32, 428u32, (0, 0, 640, 428), 224u32),
        (428, 640, (0, 0, 428, 640), 224),
        (1000, 700, (0, 0, 1000, 700), 384),
        (300, 200, (0, 0, 300, 200), 64),
        (640, 480, (101, 37, 311, 402), 224),
        (500, 375, (3, 60, 150, 97), 384),
    ];
    for (w, h, (left, top, cw, ch), s) in cases {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = |c: u32| ((x * 37 + y * 101 + c * 53 + (x * y) % 17) % 256) as u8;
            image::Rgb([v(0), v(1), v(2)])
        });
        let src = tmp.path().join("src.png");
        img.save(&src).unwrap();
        for (filter, name) in [
            (PilFilter::Bilinear, "BILINEAR"),
            (PilFilter::Bicubic, "BICUBIC"),
        ] {
            let out = tmp.path().join("pil.png");
            let script = format!(
                "from PIL import Image; Image.open({src:?}).convert('RGB')\
                 .crop(({left}, {top}, {r}, {b})).resize(({s}, {s}), Image.{name}).save({out:?})",
                r = left + cw,
                b = top + ch
            );
            let o = std::process::Command::new(&py)
                .args(["-c", &script])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let pil = image::open(&out).unwrap().to_rgb8();
            let region = Region {
                left,
                top,
                width: cw,
                height: ch,
            };
            let ours = pil_resize_region(&img, region, s, s, filter);
            let differing = ours
                .pixels()
                .zip(pil.pixels())
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                differing == 0,
                "{w}x{h} crop {region:?} -> {s} {name}: {differing} pixels differ from Pillow"
            );
        }
    }
}

/// JPEG files as RAM's Python pipeline reads them (`Image.open(p).convert("RGB")`): Pillow writes
/// each flavour of JPEG (chroma subsampling 4:2:0, 4:2:2 and 4:4:4, progressive, grayscale, CMYK, an
/// odd size, low quality, and one with corrupt entropy data that Pillow decodes anyway) and decodes
/// them and the shared photos; `imaging::decode` must give the same pixels, and refuse the files
/// Pillow calls truncated.
#[test]
fn jpeg_decoding_equals_pillow_where_pillow_is_at_hand() {
    let Some(py) = pillow_python("jpeg_decoding_equals_pillow") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let photos = common::shared_dir_for_test("jpeg_decoding_equals_pillow")
        .map(|s| s.join("ram/images"))
        .filter(|d| d.is_dir());
    let script = r#"
import sys, glob, os
from PIL import Image
out, photos = sys.argv[1], sys.argv[2:]
base = Image.new("RGB", (613, 397))
base.putdata([((x * 37 + y * 11) % 256, (x * y) % 251, (x * 3 + y * 7 + (x ^ y)) % 256)
              for y in range(397) for x in range(613)])
files = {}
for name, img, kw in [("s420", base, dict(quality=90, subsampling=2)),
                      ("s422", base, dict(quality=85, subsampling=1)),
                      ("s444", base, dict(quality=95, subsampling=0)),
                      ("progressive", base, dict(quality=80, progressive=True)),
                      ("gray", base.convert("L"), dict(quality=90)),
                      ("cmyk", base.convert("CMYK"), dict(quality=90)),
                      ("odd", base.resize((333, 217)), dict(quality=75)),
                      ("q30", base, dict(quality=30))]:
    files[name] = os.path.join(out, name + ".jpg")
    img.save(files[name], **kw)
data = bytearray(open(files["s420"], "rb").read())
for i in range(5):
    data[len(data) // 2 + i * 997] ^= 0x55
files["corrupt"] = os.path.join(out, "corrupt.jpg")
open(files["corrupt"], "wb").write(data)
files["truncated"] = os.path.join(out, "truncated.jpg")
open(files["truncated"], "wb").write(data[: len(data) // 2])
# Junk bytes between two header segments (libjpeg warns "extraneous bytes before marker"; Pillow
# skips them and decodes): after SOI and the first segment.
data = bytearray(open(files["s420"], "rb").read())
first = 4 + int.from_bytes(data[4:6], "big")
files["junk"] = os.path.join(out, "junk.jpg")
open(files["junk"], "wb").write(data[:first] + b"\x12\x34\x00" + data[first:])
for p in photos:
    files[os.path.basename(p)] = p
for name, path in files.items():
    try:
        Image.open(path).convert("RGB").save(os.path.join(out, name + ".pil.png"))
        print(name, path, "ok")
    except OSError as e:
        print(name, path, "refused", str(e).replace(" ", "_"))
"#;
    let mut cmd = std::process::Command::new(&py);
    cmd.args(["-c", script]).arg(dir);
    if let Some(photos) = &photos {
        for entry in std::fs::read_dir(photos).unwrap() {
            cmd.arg(entry.unwrap().path());
        }
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8(o.stdout).unwrap();
    let mut compared = Vec::new();
    for line in listing.lines() {
        let [name, path, verdict, ..] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("unexpected line {line:?}");
        };
        let ours = tagfix::imaging::decode(Path::new(path));
        if verdict == "refused" {
            let e = ours.expect_err(name).to_string();
            assert!(e.contains("ends before the image does"), "{name}: {e}");
            continue;
        }
        let ours = ours.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_equals_pillow(&ours, &dir.join(format!("{name}.pil.png")), name);
        for view in views_of(ours.width(), ours.height(), 24) {
            assert_view_decodes_as_the_whole(Path::new(path), &ours, &view);
        }
        compared.push(name.to_string());
    }
    let shared = photos.map_or(0, |d| std::fs::read_dir(d).unwrap().count());
    assert_eq!(compared.len(), 10 + shared, "compared only {compared:?}");
    // Pillow's progressive file has about ten scans: under a limit of 3 it is refused.
    let progressive = std::fs::read(dir.join("progressive.jpg")).unwrap();
    let jpeg = tagfix::imaging::jpeg::Jpeg::open(&progressive).unwrap();
    let e = jpeg
        .with_scan_limit(3)
        .decode_rgb()
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 3 scans"), "{e}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("truncated ") && l.contains(" refused ")),
        "{listing}"
    );
}

/// Broken JPEG files get Pillow's verdicts: 800 files made from six small JPEGs (baseline,
/// progressive, restart markers, grayscale, CMYK, 4:4:4) by changing, inserting, deleting bytes,
/// inserting markers and cutting the file short; each one is decoded by Pillow
/// (`Image.open(p).convert("RGB")`) and by `imaging::decode`. Where Pillow decodes, the pixels are
/// equal; where Pillow refuses, tagfix refuses too, and calls the file truncated where Pillow does.
#[test]
fn broken_jpeg_files_get_pillows_verdicts() {
    let script = r#"
import io, os, random, sys
from PIL import Image
out = sys.argv[1]
random.seed(20261206)
base = Image.new("RGB", (96, 72))
base.putdata([((x * 37 + y * 11) % 256, (x * y) % 251, (x * 3 + y * 7 + (x ^ y)) % 256)
              for y in range(72) for x in range(96)])
sources = []
for img, kw in [(base, dict(quality=90)), (base, dict(quality=85, progressive=True)),
                (base, dict(quality=80, restart_marker_blocks=4)), (base.convert("L"), {}),
                (base.convert("CMYK"), {}), (base, dict(subsampling=0))]:
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    sources.append(b.getvalue())
for i in range(800):
    d = bytearray(random.choice(sources))
    for _ in range(random.randint(1, 3)):
        kind, j = random.random(), random.randrange(2, len(d))
        if kind < 0.4:
            d[j] = random.randrange(256)
        elif kind < 0.6:
            d[j:j] = bytes(random.randrange(256) for _ in range(random.randint(1, 8)))
        elif kind < 0.8:
            del d[j:j + random.randint(1, 8)]
        elif kind < 0.9:
            d = d[:j]
        else:
            d[j:j] = bytes([0xFF, random.randrange(256)])
    p = os.path.join(out, f"m{i:03d}.jpg")
    open(p, "wb").write(d)
    try:
        Image.open(p).convert("RGB").save(p + ".png")
        print(p, "ok")
    except Exception as e:
        print(p, "truncated" if "truncated" in str(e) else "refused")
"#;
    let Some((_dir, listing)) = pillow_files("broken_jpeg_files_get_pillows_verdicts", script)
    else {
        return;
    };
    let mut verdicts = std::collections::BTreeMap::<&str, usize>::new();
    let mut disagreements = Vec::new();
    for line in listing.lines() {
        let (path, pillow) = line.rsplit_once(' ').unwrap();
        *verdicts.entry(pillow).or_default() += 1;
        let ours = tagfix::imaging::decode(Path::new(path));
        // Decoding a crop alone (the training loader's way) gives the same verdict and pixels.
        if let Ok(file) = tagfix::imaging::open(Path::new(path)) {
            let (w, h) = file.dimensions();
            for view in views_of(w, h, 3) {
                let file = tagfix::imaging::open(Path::new(path)).unwrap();
                match (&ours, file.view(&view)) {
                    (Ok(whole), Ok(_)) => {
                        assert_view_decodes_as_the_whole(Path::new(path), whole, &view)
                    }
                    (Err(a), Err(b)) => assert_eq!(
                        a.to_string().contains("ends before the image does"),
                        b.to_string().contains("ends before the image does"),
                        "{path} {view:?}: {a} / {b}"
                    ),
                    (a, b) => panic!(
                        "{path} {view:?}: whole {:?}, view {:?}",
                        a.as_ref().map(drop),
                        b.map(drop)
                    ),
                }
            }
        }
        let agree = match (pillow, &ours) {
            ("ok", Ok(img)) => {
                let pil = image::open(format!("{path}.png")).unwrap().to_rgb8();
                pil.dimensions() == img.dimensions() && pil.as_raw() == img.as_raw()
            }
            ("truncated", Err(e)) => e.to_string().contains("ends before the image does"),
            // Pillow's own header parser refuses files cut in their header without calling them
            // truncated; tagfix does (libjpeg's "Premature end of JPEG file").
            ("refused", Err(_)) => true,
            _ => false,
        };
        if !agree {
            disagreements.push(format!(
                "{path}: Pillow {pillow}, tagfix {:?}",
                ours.map(drop)
            ));
        }
    }
    eprintln!("Pillow's verdicts on 800 broken JPEGs: {verdicts:?}");
    assert_eq!(verdicts.values().sum::<usize>(), 800);
    // All three kinds occur, so the comparison covers each.
    assert!(
        verdicts.len() == 3 && verdicts.values().all(|&n| n >= 20),
        "{verdicts:?}"
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// PNG files decode to Pillow's `Image.open(p).convert("RGB")` values: 8-bit RGB, RGBA, gray,
/// gray+alpha, palette and 1-bit images, and 16-bit RGB, RGBA, gray+alpha (Pillow keeps the high
/// byte) and gray (Pillow clips at 255).
#[test]
fn png_decoding_equals_pillow_where_pillow_is_at_hand() {
    let script = r#"
import os, struct, sys, zlib
import numpy as np
from PIL import Image
out = sys.argv[1]
yy, xx = np.mgrid[0:23, 0:37]
rgb8 = np.stack([(xx * 7) % 256, (yy * 11) % 256, (xx * yy) % 256], -1).astype(np.uint8)
a8 = ((xx + yy) * 5 % 256).astype(np.uint8)
rgb16 = np.stack([(xx * 1777) % 65536, (yy * 2903) % 65536, (xx * yy * 97) % 65536], -1)
g16 = (xx * 1777 + yy * 13) % 65536
images = {
    "rgb8": Image.fromarray(rgb8),
    "rgba8": Image.fromarray(np.dstack([rgb8, a8])),
    "gray8": Image.fromarray(rgb8[..., 0]),
    "la8": Image.merge("LA", [Image.fromarray(rgb8[..., 0]), Image.fromarray(a8)]),
    "palette": Image.fromarray(rgb8).quantize(50),
    "bit1": Image.fromarray(rgb8[..., 0] > 128),
}
for name, img in images.items():
    img.save(os.path.join(out, name + ".png"))
def png16(name, values, colour_type):
    # Pillow writes no 16-bit colour PNG: the file is assembled here.
    h, w = values.shape[:2]
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(os.path.join(out, name + ".png"), "wb").write(b"\x89PNG\r\n\x1a\n" + data)
png16("rgb16", rgb16, 2)
png16("rgba16", np.dstack([rgb16, g16]), 6)
png16("gray16", g16, 0)
png16("ga16", np.dstack([g16, g16]), 4)
for name in sorted(f[:-4] for f in os.listdir(out)):
    img = Image.open(os.path.join(out, name + ".png"))
    img.convert("RGB").save(os.path.join(out, name + ".pil.png"))
    print(name, img.mode)
"#;
    let Some((dir, listing)) = pillow_files("png_decoding_equals_pillow", script) else {
        return;
    };
    assert_eq!(listing.lines().count(), 10, "{listing}");
    for line in listing.lines() {
        let name = line.split(' ').next().unwrap();
        let ours = tagfix::imaging::decode(&dir.path().join(format!("{name}.png"))).unwrap();
        assert_equals_pillow(&ours, &dir.path().join(format!("{name}.pil.png")), line);
    }
}

/// Runs a Pillow `script` with a new folder as its argument: the folder and what it printed, or
/// `None` (the test skipped) where no Python with Pillow is at hand.
fn pillow_files(test: &str, script: &str) -> Option<(tempfile::TempDir, String)> {
    let py = pillow_python(test)?;
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some((dir, String::from_utf8(o.stdout).unwrap()))
}

/// `count` (at least 4) crops of a `width`×`height` image: the first row, the last row, a single
/// pixel, the whole image, then rectangles of random size and place from a fixed generator.
fn views_of(width: u32, height: u32, count: usize) -> Vec<tagfix::imaging::View> {
    use tagfix::imaging::View;
    let view = |left, top, w, h| View {
        left,
        top,
        width: w,
        height: h,
        flip: false,
    };
    let mut views = vec![
        view(0, 0, width, 1),
        view(0, height - 1, width, 1),
        view(width / 2, height / 2, 1, 1),
        view(0, 0, width, height),
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(width) << 20 ^ u64::from(height);
    let mut next = move |below: u32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(below)) as u32
    };
    while views.len() < count.max(4) {
        let (w, h) = (1 + next(width), 1 + next(height));
        views.push(view(next(width - w + 1), next(height - h + 1), w, h));
    }
    views.truncate(count.max(4));
    views
}

/// Decoding `view` of the file alone gives the pixels of `whole`, its whole decoding, under it.
fn assert_view_decodes_as_the_whole(
    path: &Path,
    whole: &image::RgbImage,
    view: &tagfix::imaging::View,
) {
    let (pixels, moved) = tagfix::imaging::open(path)
        .and_then(|f| f.view(view))
        .unwrap_or_else(|e| panic!("{}: {view:?}: {e}", path.display()));
    let row = |img: &image::RgbImage, left: u32, y: u32| {
        let start = (y as usize * img.width() as usize + left as usize) * 3;
        img.as_raw()[start..start + view.width as usize * 3].to_vec()
    };
    for y in 0..view.height {
        assert!(
            row(&pixels, moved.left, moved.top + y) == row(whole, view.left, view.top + y),
            "{}: {view:?}, row {y} differs",
            path.display()
        );
    }
}

/// `ours` has the size and every value of the image Pillow wrote to `pil_png`.
fn assert_equals_pillow(ours: &image::RgbImage, pil_png: &Path, what: &str) {
    let pil = image::open(pil_png).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), pil.dimensions(), "{what}");
    let differing = ours
        .as_raw()
        .iter()
        .zip(pil.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing, 0,
        "{what}: {differing} values differ from Pillow"
    );
}

/// RAM++'s open-set tagging (`inference_ram_plus_openset.py`): new tags' label embeddings in place of
/// the checkpoint's. In RAM++ each tag's score depends only on its own description rows (`fc` is
/// shared, the descriptions are weighted among themselves), so label embeddings made of three of the
/// checkpoint's own tags (7, 2, 5, their 3 rows each) must score each image as those tags' columns
/// of the checkpoint's full run. Thresholds default to 0.5 (the official open-set value); embeddings
/// of another width, of a row count that fits no layout of the tags, or made for another vocabulary
/// are refused by name.
#[test]
fn open_set_label_embeddings_score_as_the_tags_they_are_made_of() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(f) = fixture(tmp.path()) else { return };
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for (i, n) in ["a.png", "b.png", "c.png"].iter().enumerate() {
        test_image(&imgs.join(n), i as u32 + 5);
    }
    let weights = safetensors_io::read(&f.weights()).unwrap();
    let full = weights.get("label_embed").unwrap().to_f32().unwrap();
    let (k, d) = (3usize, 512usize);
    let picked = [7usize, 2, 5];
    let rows: Vec<f32> = picked
        .iter()
        .flat_map(|&c| full[c * k * d..(c + 1) * k * d].iter().copied())
        .collect();
    let open = tmp.path().join("open.safetensors");
    tagfix::tensors::EmbeddingFile::new(rows.clone(), 3 * k, d)
        .write(&open)
        .unwrap();
    let names: Vec<&str> = picked
        .iter()
        .map(|&c| f.config.tag_list[c].as_str())
        .collect();
    let open_vocab = tmp.path().join("open.txt");
    std::fs::write(&open_vocab, names.join("\n") + "\n").unwrap();

    let tag = |vocab: &Path, label_embed: Option<&Path>, scores: &Path| {
        let mut cmd = tagfix();
        cmd.arg("tag")
            .arg("--checkpoint")
            .arg(f.weights())
            .arg("--model")
            .arg(f.config_json())
            .arg("--vocab")
            .arg(vocab)
            .arg("--images")
            .arg(&imgs)
            .arg("--scores")
            .arg(scores);
        if let Some(e) = label_embed {
            cmd.arg("--label-embed").arg(e);
        } else {
            cmd.arg("--thresholds").arg(&f.thresholds);
        }
        cmd.assert()
    };
    let whole = tmp.path().join("whole.safetensors");
    tag(&f.vocab, None, &whole).success();
    let subset = tmp.path().join("subset.safetensors");
    tag(&open_vocab, Some(&open), &subset).success().stderr(
        contains("3 tags); thresholds: 0.5 for every slot (open-set")
            .and(contains("open set: label embeddings")),
    );
    let read = |p: &Path| {
        let set = safetensors_io::read(p).unwrap();
        let t = set.get("scores").unwrap();
        (t.shape.clone(), t.to_f32().unwrap())
    };
    let (whole_shape, whole) = read(&whole);
    let (shape, got) = read(&subset);
    assert_eq!((whole_shape, shape), (vec![3, 10], vec![3, 3]));
    for image in 0..3 {
        for (j, &c) in picked.iter().enumerate() {
            let (a, b) = (got[image * 3 + j], whole[image * 10 + c]);
            assert!((a - b).abs() <= 1e-6, "image {image}, tag {c}: {a} vs {b}");
        }
    }

    // `eval --checkpoint --label-embed` (open-set evaluation) equals `eval` of the tagged scores at
    // the same 0.5 thresholds.
    let bench = tmp.path().join("openbench");
    std::fs::create_dir(&bench).unwrap();
    std::fs::write(bench.join("openbench_taglist.txt"), names.join("\n") + "\n").unwrap();
    let annots = format!(
        "a.png,{}\nb.png,{},{}\nc.png\n",
        names[0], names[1], names[2]
    );
    std::fs::write(bench.join("openbench_annots.txt"), annots).unwrap();
    let eval = |extra: &[&dyn AsRef<std::ffi::OsStr>]| -> serde_json::Value {
        let mut cmd = tagfix();
        cmd.arg("eval")
            .arg("--vocab")
            .arg(&open_vocab)
            .arg("--benchmark")
            .arg(&bench)
            .args(["--format", "json"])
            .args(extra.iter().map(|a| a.as_ref()));
        json_output(&mut cmd)
    };
    let from_scores = eval(&[&"--scores", &subset, &"--threshold", &"0.5"]);
    let from_ckpt = eval(&[
        &"--checkpoint",
        &f.weights(),
        &"--model",
        &f.config_json(),
        &"--label-embed",
        &open,
        &"--images",
        &imgs,
    ]);
    assert_eq!(from_scores["classes"], from_ckpt["classes"]);
    assert_eq!(from_scores["ram"], from_ckpt["ram"]);
    assert_eq!(from_ckpt["ram"]["classes"], 3);

    // Refused by name, nothing written.
    let refused = |embed: &Path, vocab: &Path, message: &str| {
        let out = tmp.path().join("refused.safetensors");
        let result = tag(vocab, Some(embed), &out).code(2);
        let stderr = String::from_utf8_lossy(&result.get_output().stderr).to_string();
        assert!(
            stderr.contains(message),
            "expected {message:?} in:\n{stderr}"
        );
        assert!(!out.exists());
    };
    let narrow = tmp.path().join("narrow.safetensors");
    tagfix::tensors::EmbeddingFile::new(vec![0.1; 9 * 384], 9, 384)
        .write(&narrow)
        .unwrap();
    refused(&narrow, &open_vocab, "label embeddings of width 384");
    let four = tmp.path().join("four.txt");
    std::fs::write(&four, "a\nb\nc\nd\n").unwrap();
    refused(&open, &four, "9 rows");
    let mut other = tagfix::tensors::EmbeddingFile::new(rows, 3 * k, d);
    other.metadata = tagfix::tensors::Provenance {
        vocabulary_sha256: "0".repeat(64),
        tag_count: 3,
        rows_per_slot: k,
        ..Default::default()
    }
    .to_metadata();
    let other_path = tmp.path().join("other.safetensors");
    other.write(&other_path).unwrap();
    refused(
        &other_path,
        &open_vocab,
        "label embeddings of another vocabulary",
    );
}
