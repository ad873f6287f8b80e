//! The fuzz targets: one per reader of user files, each with its format's tokens, crafted seeds
//! (written with the project's own writers where it has one) and, for the binary formats, a
//! generator that builds inputs from the format's structure.

use super::Target;
use crate::annotations::records::{ReadOptions, RecordSet};
use crate::annotations::{scan_files, ScanOptions};
use crate::eval::{read_scores, Benchmark, LabelForm, TagMapping, Thresholds};
use crate::tensors::{EmbeddingFile, Provenance, TensorSet};
use crate::vocab::{check_sidecar, map_derived, SidecarKind, Vocabulary};
use std::path::{Path, PathBuf};

mod check;
mod descriptor;
mod dicts;
mod generate;
#[cfg(feature = "embed")]
pub(crate) mod image;
#[cfg(feature = "embed")]
mod image_list;
mod model_config;
mod pth;
mod run_files;
mod seeds;
mod summary;
mod tokenizers;

use dicts::*;
use generate::*;
use seeds::*;

/// Every target, in the order the report lists them.
pub fn all() -> Vec<Target> {
    vec![
        annotation_target(),
        Target {
            name: "records",
            file: "records.json",
            run: run_records,
            ..annotation_target()
        },
        Target {
            name: "taglist",
            file: "tags.txt",
            run: run_taglist,
            dict: TEXT_DICT,
            generate: None,
            seeds: taglist_seeds,
            shared_seeds: &["ram/data/ram_tag_list.txt"],
        },
        Target {
            name: "sidecar",
            file: "sidecar.txt",
            run: run_sidecar,
            dict: TEXT_DICT,
            generate: None,
            seeds: sidecar_seeds,
            shared_seeds: &[
                "ram/data/ram_tag_list_threshold.txt",
                "ram/data/ram_tag_list_chinese.txt",
            ],
        },
        pth::target(),
        Target {
            name: "safetensors",
            file: "tensors.safetensors",
            run: run_safetensors,
            dict: SAFETENSORS_DICT,
            generate: Some(gen_safetensors),
            seeds: safetensors_seeds,
            shared_seeds: &[
                "reference/pth/expected.safetensors",
                "reference/pth/bare_tensor.expected.safetensors",
            ],
        },
        Target {
            name: "npy",
            file: "array.npy",
            run: run_npy,
            dict: NPY_DICT,
            generate: Some(gen_npy),
            seeds: npy_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "policy",
            file: "policy.toml",
            run: run_policy,
            dict: TOML_DICT,
            generate: Some(gen_policy),
            seeds: policy_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "train_toml",
            file: "train.toml",
            run: run_train_config,
            dict: TOML_DICT,
            generate: Some(gen_train_toml),
            seeds: train_toml_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "ram_yaml",
            file: "pretrain.yaml",
            run: run_train_config,
            dict: YAML_DICT,
            generate: Some(gen_ram_yaml),
            seeds: ram_yaml_seeds,
            shared_seeds: &["ram/configs/pretrain.yaml", "ram/configs/finetune.yaml"],
        },
        Target {
            name: "benchmark",
            file: "bench.txt",
            run: run_benchmark,
            dict: BENCH_DICT,
            generate: None,
            seeds: benchmark_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "scores_csv",
            file: "scores.csv",
            run: run_scores,
            dict: BENCH_DICT,
            generate: None,
            seeds: scores_csv_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "scores_safetensors",
            file: "scores.safetensors",
            run: run_scores,
            dict: SAFETENSORS_DICT,
            generate: None,
            seeds: scores_st_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "manifest",
            file: "manifest.json",
            run: run_manifest,
            dict: MANIFEST_DICT,
            generate: None,
            seeds: manifest_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "descriptions",
            file: "descriptions.json",
            run: run_descriptions,
            dict: JSON_DICT,
            generate: None,
            seeds: descriptions_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "metrics",
            file: "metrics.jsonl",
            run: run_metrics,
            dict: JSON_DICT,
            generate: None,
            seeds: metrics_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "detector_toml",
            file: "detectors.toml",
            run: run_detector_config,
            dict: TOML_DICT,
            generate: Some(gen_detector_toml),
            seeds: detector_toml_seeds,
            shared_seeds: &[],
        },
        Target {
            name: "teacher",
            file: "teacher.safetensors",
            run: run_teacher,
            dict: SAFETENSORS_DICT,
            generate: None,
            seeds: teacher_seeds,
            shared_seeds: &[],
        },
        check::target(),
        check::provenance_target(),
        descriptor::target(),
        summary::target(),
        run_files::state_target(),
        run_files::run_target(),
        run_files::checksums_target(),
        #[cfg(feature = "embed")]
        image::target(),
        #[cfg(feature = "embed")]
        image_list::target(),
        model_config::target(),
        tokenizers::clip_bpe_target(),
        #[cfg(feature = "embed")]
        tokenizers::tokenizer_json_target(),
    ]
}

/// What the two annotation readers (`diff`'s scanner, `train`'s records) share.
fn annotation_target() -> Target {
    Target {
        name: "annotations",
        file: "annotations.json",
        run: run_annotations,
        dict: JSON_DICT,
        generate: Some(gen_annotations),
        seeds: annotation_seeds,
        shared_seeds: &[
            "reliability/diff_accepts_overlong_utf8.jsonl",
            "reliability/diff_passes_train_refuses_badutf8.json",
        ],
    }
}

// ---- runners -------------------------------------------------------------------------------

/// A choice derived from the input, so one target covers a reader's options deterministically.
fn pick(input: &[u8], n: usize) -> usize {
    input
        .iter()
        .fold(input.len(), |h, &b| h.wrapping_mul(31) ^ b as usize)
        % n
}

fn run_annotations(path: &Path, input: &[u8]) {
    let mut opts = ScanOptions::new(40);
    opts.keep_going = pick(input, 3) != 0;
    opts.max_details = 50;
    opts.batch_bytes = 1024;
    let _ = scan_files(&[path.to_path_buf()], &opts);
}

fn run_records(path: &Path, input: &[u8]) {
    let opts = ReadOptions {
        num_slots: (pick(input, 5) != 0).then_some(40),
        captions: pick(input, 2) == 0,
    };
    if let Ok(set) = RecordSet::read_with(&[path.to_path_buf()], opts) {
        let _ = set.fingerprint();
        set.iter().for_each(|r| {
            let _ = (
                set.origin(&r),
                r.image_file(Path::new("/root")),
                r.captions.len(),
            );
        });
        let _ = set.slot_lists().count();
    }
}

fn run_taglist(path: &Path, _: &[u8]) {
    if let Ok(v) = Vocabulary::from_file(path) {
        let _ = (v.normalized_duplicates(), v.id());
    }
}

fn small_vocab() -> Vocabulary {
    Vocabulary::from_tags(
        [
            "cat",
            "dog",
            "sky",
            "Dog",
            "ice cream",
            "ice_cream",
            "猫",
            "e\u{301}",
        ]
        .map(String::from)
        .to_vec(),
    )
}

fn run_sidecar(path: &Path, _: &[u8]) {
    let _ = check_sidecar("threshold", path, SidecarKind::Threshold, 8);
    let _ = check_sidecar("chinese", path, SidecarKind::Text, 8);
    let _ = map_derived(&small_vocab(), path);
    let _ = Thresholds::read(path, 8);
}

fn use_tensors(path: &Path, set: &TensorSet) {
    let _ = EmbeddingFile::from_set(set, path, None);
    let _ = Provenance::from_metadata(&set.metadata, path);
    for (_, t) in &set.tensors {
        let _ = t.to_f32();
    }
}

fn run_safetensors(path: &Path, _: &[u8]) {
    if let Ok(set) = crate::tensors::safetensors_io::read(path) {
        use_tensors(path, &set);
    }
    // The reader that takes one tensor at a time (a resume's optimizer state, teacher files).
    if let Ok(file) = crate::tensors::safetensors_io::SafetensorsFile::open(path) {
        for name in file.names() {
            if let Ok(Some(t)) = file.read_tensor(&name) {
                let _ = t.to_f32();
            }
        }
    }
}

fn run_npy(path: &Path, _: &[u8]) {
    if let Ok(t) = crate::tensors::npy::read(path) {
        let set = TensorSet {
            tensors: vec![("array".into(), t)],
            metadata: Default::default(),
        };
        use_tensors(path, &set);
    }
}

fn run_policy(path: &Path, _: &[u8]) {
    if let Ok(p) = crate::consistency::policy::Policy::load(path) {
        let _ = p.all_k();
    }
}

fn run_train_config(path: &Path, _: &[u8]) {
    if let Ok(l) = crate::train::config::TrainConfig::load(path) {
        let c = l.config;
        if c.validate().is_ok() {
            let _ = (c.to_toml(), c.frozen_prefixes(), c.model_spec());
        }
    }
}

fn run_manifest(path: &Path, _: &[u8]) {
    if let Ok(m) = crate::manifest::SlotManifest::read(path) {
        let _ = (m.absent_slots(), m.present_slots());
        let _ = m.check_vocabulary(&small_vocab(), path);
    }
}

fn run_descriptions(path: &Path, _: &[u8]) {
    if let Ok(d) = crate::embed::recipe::Descriptions::read(path) {
        for tag in small_vocab().tags {
            let _ = d.get(&tag);
        }
    }
}

/// A short synthetic run's records, which the detectors are run over.
fn short_run() -> Vec<crate::monitor::StepRecord> {
    crate::monitor::synthetic::SyntheticRun {
        steps: 40,
        warmup: 5,
        ..Default::default()
    }
    .records()
}

/// `tagfix plot`'s reading of a run folder: the records (then every detector over them), the
/// events and the validation records, all JSON Lines.
fn run_metrics(path: &Path, _: &[u8]) {
    if let Ok(records) = crate::monitor::read_all_records(path) {
        let _ = crate::monitor::detect(&records, &crate::monitor::DetectorConfig::default());
    }
    let _ = crate::monitor::read_events(path);
    let _ = crate::monitor::read_validation(path);
}

/// `plot --thresholds` and `[monitor]`: the detector thresholds, then every detector built from
/// them run over a short synthetic run.
fn run_detector_config(path: &Path, _: &[u8]) {
    if let Ok(config) = crate::monitor::DetectorConfig::load(path) {
        let _ = crate::monitor::detect(&short_run(), &config);
    }
}

fn run_teacher(path: &Path, _: &[u8]) {
    if let Ok(t) = crate::teacher::TeacherFeatures::read(path) {
        let _ = t.unreadable_images();
        for key in t.keys() {
            if let Some(row) = t.row_of(key) {
                let _ = (t.image_row(row), t.text_row(row), t.image_unreadable(row));
                let _ = t.image_row(row + t.len());
            }
        }
    }
}

/// Benchmark inputs hold the tag list, a line `%%`, then the annotation file.
const BENCH_SPLIT: &[u8] = b"\n%%\n";

fn run_benchmark(path: &Path, input: &[u8]) {
    let at = memchr::memmem::find(input, BENCH_SPLIT);
    let (tags, annots) = match at {
        Some(i) => (&input[..i], &input[i + BENCH_SPLIT.len()..]),
        None => (&b"cat\ndog\nsky\n"[..], input),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let (t, a) = (dir.join("b_taglist.txt"), dir.join("b_annots.txt"));
    if std::fs::write(&t, tags).is_err() || std::fs::write(&a, annots).is_err() {
        return;
    }
    if let Ok(b) = Benchmark::load(&t, &a) {
        let mapping = TagMapping::new(&b.tags, &small_vocab());
        let _ = (mapping.unmapped(), mapping.mapped());
        for tag in 0..b.tags.len() {
            let _ = b.targets(tag);
        }
        for image in 0..b.images.len() {
            let _ = b.image_path(Path::new("/nonexistent"), image);
        }
    }
}

fn fixed_benchmark() -> Benchmark {
    Benchmark {
        name: "fuzz".into(),
        taglist_path: PathBuf::from("fuzz_taglist.txt"),
        annots_path: PathBuf::from("fuzz_annots.txt"),
        tags: ["cat", "dog", "sky", "zebra"].map(String::from).to_vec(),
        images: ["a", "b", "c"].map(String::from).to_vec(),
        labels: vec![vec![0], vec![1, 2], vec![]],
        form: LabelForm::Names,
    }
}

fn run_scores(path: &Path, _: &[u8]) {
    let (bench, vocab) = (fixed_benchmark(), small_vocab());
    let mapping = TagMapping::new(&bench.tags, &vocab);
    let _ = read_scores(path, &bench, &vocab, &mapping);
}
