//! The fuzz targets: one per reader of user files, each with its format's tokens, crafted seeds
//! (written with the project's own writers where it has one) and, for the binary formats, a
//! generator that builds inputs from the format's structure.

use super::Target;
use crate::annotations::records::{ReadOptions, RecordSet};
use crate::annotations::{scan_files, ScanOptions};
use crate::checkpoint::pth::PthContent;
use crate::eval::{read_scores, Benchmark, LabelForm, TagMapping, Thresholds};
use crate::rng::SplitMix64;
use crate::tensors::{DType, EmbeddingFile, Provenance, Tensor, TensorSet};
use crate::vocab::{check_sidecar, map_derived, SidecarKind, Vocabulary};
use std::io::Write;
use std::path::{Path, PathBuf};

mod check;
mod descriptor;

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
        Target {
            name: "pth",
            file: "checkpoint.pth",
            run: run_pth,
            dict: PICKLE_DICT,
            generate: Some(gen_pth),
            seeds: pth_seeds,
            shared_seeds: &["reference/pth/*"],
        },
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
        #[cfg(feature = "embed")]
        Target {
            name: "image",
            file: "image.jpg",
            run: run_image,
            dict: JPEG_DICT,
            generate: None,
            seeds: image_seeds,
            shared_seeds: &[],
        },
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

fn run_pth(path: &Path, _: &[u8]) {
    if let Ok(c) = crate::checkpoint::pth::read(path) {
        use_tensors(path, &c.into_tensor_set());
    }
}

fn run_safetensors(path: &Path, _: &[u8]) {
    if let Ok(set) = crate::tensors::safetensors_io::read(path) {
        use_tensors(path, &set);
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

/// The image decoder behind training, `tag` and the teacher (libjpeg-turbo for JPEG, the `image`
/// crate for PNG; the file name says `.jpg` whatever the bytes are, as a mislabelled file would),
/// then the header probe and a resize of what it decoded.
#[cfg(feature = "embed")]
fn run_image(path: &Path, _: &[u8]) {
    let _ = crate::imaging::probe(path);
    if let Ok(img) = crate::imaging::decode(path) {
        let _ = crate::imaging::pil_resize(&img, 7, 5, crate::imaging::PilFilter::Bicubic);
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

// ---- dictionaries --------------------------------------------------------------------------

#[rustfmt::skip]
const JSON_DICT: &[&[u8]] = &[
    b"{", b"}", b"[", b"]", b",", b":", b"\"", b"\\", b"\\\"", b"\\u0000", b"\\ud800", b"\\udc00",
    b"\\ud83d\\ude00", b"true", b"false", b"null", b"1e999", b"-0", b"0.5", b"\n", b"\r\n",
    b"\"image_path\"", b"\"union_label_id\"", b"\"parse_label_id\"", b"\"caption\"", b"\"tag\"",
    b"\xEF\xBB\xBF", b"\x1f\x8b\x08", b"\xC0\x80", b"\xED\xA0\x80", b"\xFF", b"[[[[", b"]]]]",
    b"{\"image_path\": \"x.jpg\", \"union_label_id\": [1]}",
];

#[rustfmt::skip]
const MANIFEST_DICT: &[&[u8]] = &[
    b"\"tagfix.slot-manifest\"", b"\"present\"", b"\"absent\"", b"\"slots\"", b"\"slot\"",
    b"\"version\"", b"\"summary\"", b"\"union\"", b"18446744073709551615", b"-1", b"null",
];

const TEXT_DICT: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\r",
    b"\xEF\xBB\xBF",
    b" ",
    b"\t",
    b"\xFF",
    b"\xC0\x80",
    b"\xE2\x80\xA8",
    b"\xC2\x85",
    b"_",
    b",",
    b"0.5",
    b"1",
    b"0",
    b"-0",
    b"nan",
    b"NaN",
    b"inf",
    b"1e40",
    b"1.5",
    b"cat",
    b"Dog",
    b"ice cream",
    b"\xE7\x8C\xAB",
    b"e\xCC\x81",
    b"\x00",
];

#[rustfmt::skip]
const PICKLE_DICT: &[&[u8]] = &[
    b"\x80\x02", b"}", b"]", b")", b"(", b"t", b"R", b"Q", b"u", b"s", b"a", b"e", b".", b"K", b"J",
    b"M", b"\x8a\x08", b"X", b"\x8c", b"q", b"r", b"h", b"j", b"N", b"\x88", b"\x89", b"G", b"\x85",
    b"\x86", b"\x87", b"0", b"1", b"2", b"(X\x01\x00\x00\x00w",
    b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n", b"ctorch\nLongStorage\n",
    b"ctorch\nHalfStorage\n", b"ccollections\nOrderedDict\n", b"X\x07\x00\x00\x00storage",
    b"X\x03\x00\x00\x00cpu", b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"data.pkl", b"data/0",
];

#[rustfmt::skip]
const SAFETENSORS_DICT: &[&[u8]] = &[
    b"{\"", b"\"dtype\"", b"\"F32\"", b"\"F16\"", b"\"BF16\"", b"\"I64\"", b"\"BOOL\"", b"\"U8\"",
    b"\"F64\"", b"\"shape\"", b"\"data_offsets\"", b"\"__metadata__\"", b"\"image_ids\"",
    b"\"scores\"", b"\"embeddings\"", b"\"tagfix.schema\"", b"[", b"]", b":", b",", b"}", b"0",
    b"4294967296", b"[0,0]", b"[]", b"\"\"",
];

#[rustfmt::skip]
const NPY_DICT: &[&[u8]] = &[
    b"\x93NUMPY", b"\x01\x00", b"\x02\x00", b"\x03\x00", b"'descr'", b"'<f4'", b"'<f8'", b"'<i8'",
    b"'>f4'", b"'|u1'", b"'<f2'", b"'|b1'", b"'<U3'", b"'O'", b"'fortran_order'", b"True", b"False",
    b"'shape'", b"()", b"(0,)", b"(3,)", b"(2, 3)", b"{", b"}", b"(", b")", b",", b": ", b"\n",
    b" ",
];

/// JPEG markers (start and end of image, frame headers baseline/progressive/lossless/arithmetic,
/// tables, scan, restarts, APP0/APP14) and the values that stress them.
#[cfg(feature = "embed")]
#[rustfmt::skip]
const JPEG_DICT: &[&[u8]] = &[
    b"\xFF\xD8\xFF", b"\xFF\xD9", b"\xFF\xC0", b"\xFF\xC1", b"\xFF\xC2", b"\xFF\xC3", b"\xFF\xC9",
    b"\xFF\xCA", b"\xFF\xC4", b"\xFF\xCC", b"\xFF\xDB", b"\xFF\xDA", b"\xFF\xDD", b"\xFF\xD0",
    b"\xFF\xD7", b"\xFF\xE0", b"\xFF\xEE", b"Adobe", b"JFIF\x00", b"\xFF\xFF", b"\x00\x00",
    b"\xFF\x00", b"\x11", b"\x22", b"\x01\x01", b"\x08", b"\x0C", b"\x10", b"\x03", b"\x04",
    b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND",
];

#[rustfmt::skip]
const TOML_DICT: &[&[u8]] = &[
    b" = ", b"\n", b"[", b"]", b"[[", b"]]", b"\"", b"'", b"'''", b"\"\"\"", b"inf", b"-inf",
    b"nan", b"true", b"false", b"{", b"}", b"1979-05-27T07:32:00Z", b"#", b".", b"0x7f", b"1_000",
    b"k", b"also_k", b"min_cosine", b"calibration_quantile", b"max_changed_rows", b"batch_size",
    b"micro_batch_size", b"init_lr", b"betas", b"absent", b"loss_weights", b"random_augment",
    b"monitor", b"freeze", b"stage", b"\"finetune\"", b"precision", b"device",
    b"checkpoint_every", b"\"30m\"", b"ns\"", b"h ", b"584942417355y",
];

#[rustfmt::skip]
const YAML_DICT: &[&[u8]] = &[
    b": ", b"\n", b"- ", b"&a ", b"*a", b"!!str ", b"!!float ", b"!!binary ", b"{", b"}", b"[",
    b"]", b"'", b"\"", b"|\n", b">\n", b"---\n", b"...\n", b"<<: *a", b"~", b".inf", b".nan", b"\t",
    b"  ", b"? ", b"1e-4", b"init_lr", b"batch_size", b"train_file", b"class_num", b"image_size",
    b"vit", b"max_epoch", b"stage",
];

#[rustfmt::skip]
const BENCH_DICT: &[&[u8]] = &[
    b"\n", b"\r\n", b",", b" ", b"\n%%\n", b"cat", b"dog", b"sky", b"zebra", b"a", b"b", b"c", b"0",
    b"1", b"3", b"4294967296", b"-1", b"0.5", b"nan", b"inf", b"1e39", b"image_id,slot,score\n",
    b"\"", b"\xEF\xBB\xBF", b"\xFF",
];

// ---- seeds ---------------------------------------------------------------------------------

fn seeds(items: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    items
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in-memory gzip");
    e.finish().expect("in-memory gzip")
}

const ARRAY: &[u8] = br#"[
  {"image_path": "coco/a.jpg", "caption": ["a cat on a mat", "a cat"], "union_label_id": [3, 7],
   "parse_label_id": [[3], [3, 7]]},
  {"image_path": "coco/b.jpg", "caption": ["sky"], "union_label_id": [12], "parse_label_id": [[12]]},
  {"image_path": "coco/c.jpg", "caption": "one string", "union_label_id": [], "parse_label_id": []}
]
"#;

const LINES: &[u8] = b"{\"image_path\": \"x/1.jpg\", \"union_label_id\": [0, 39], \"caption\": [\"a \\u00e9 \\\"q\\\"\"], \"parse_label_id\": [[0]]}\n\
{\"image_path\": \"x/2.jpg\", \"union_label_id\": [40, -1, 1.5], \"caption\": [\"b\", \"c\"], \"parse_label_id\": [[1]]}\n\
{\"image_path\": \"x/1.jpg\", \"union_label_id\": [5]}\n";

fn annotation_seeds() -> Vec<(String, Vec<u8>)> {
    let mut v = seeds(&[
        ("array.json", ARRAY),
        ("lines.jsonl", LINES),
        ("bom.json", b"\xEF\xBB\xBF[{\"image_path\": \"a.jpg\", \"union_label_id\": [1]}]"),
        ("empty_array.json", b"[]"),
        ("nested.json", b"[{\"image_path\": \"a.jpg\", \"union_label_id\": [1], \"meta\": {\"x\": [[1, {\"y\": \"}]\"}]]}}]"),
    ]);
    v.push(("array.json.gz".into(), gzip(ARRAY)));
    v.push(("lines.jsonl.gz".into(), gzip(LINES)));
    v
}

fn taglist_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("plain.txt", b"cat\ndog\nsky\n"),
        ("crlf_bom.txt", b"\xEF\xBB\xBFcat\r\ndog\r\nice cream\r\n"),
        (
            "unicode.txt",
            "猫\ncafé\ncafe\u{301}\nIce_Cream\nice cream\n".as_bytes(),
        ),
        ("no_final_newline.txt", b"a\nb"),
    ])
}

fn sidecar_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("threshold.txt", b"0.65\n0.7\n0.5\n0.8\n0.9\n0.65\n0.1\n1\n"),
        (
            "chinese.txt",
            "猫\n狗\n天空\n狗\n冰淇淋\n冰淇淋\n猫\n咖啡\n".as_bytes(),
        ),
        (
            "derived.txt",
            "dog\ncat\nice cream\nDog\nunknown\n猫\n".as_bytes(),
        ),
        (
            "messy.txt",
            b"\xEF\xBB\xBF0.5 \r\n 0.7\n\n2\nnan\n-0\n1e-3\n0.5\n",
        ),
    ])
}

fn manifest_seeds() -> Vec<(String, Vec<u8>)> {
    let vocab = small_vocab();
    let union = [3, 0, 1, 0, 2, 0, 5, 1];
    let parse = [2, 0, 1, 0, 0, 0, 5, 1];
    let inputs = vec![crate::manifest::InputFile {
        path: "train.json".into(),
        bytes: 1234,
        records: 9,
    }];
    let manifest = crate::manifest::SlotManifest::from_counts(&vocab, &union, &parse, inputs, 2);
    let all_absent =
        crate::manifest::SlotManifest::from_counts(&vocab, &[0; 8], &[0; 8], vec![], 0);
    vec![
        written("manifest.json", |p| manifest.write(p)),
        written("all_absent.json", |p| all_absent.write(p)),
    ]
}

fn descriptions_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        (
            "ram_plus.json",
            br#"[{"cat": ["a small furry pet", "an animal that purrs"]}, {"Dog": ["a loyal pet", "it barks"]}, {"ice cream": ["a frozen dessert", "sweet and cold"]}]"#,
        ),
        (
            "object.json",
            br#"{"sky": ["blue above"], "\u732b": ["\u732b"], "e\u0301": ["accent"]}"#,
        ),
        ("uneven.json", br#"[{"cat": ["a", "b"]}, {"dog": ["c"]}]"#),
        ("twice.json", br#"[{"cat": ["a"]}, {"Cat": ["b"]}]"#),
    ])
}

fn metrics_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::monitor::synthetic::{Anomaly, SyntheticRun};
    // 20 steps keep the file under the harness's 16 KiB input limit.
    let spiky = SyntheticRun {
        steps: 20,
        warmup: 3,
        anomalies: vec![Anomaly::Spike {
            term: crate::monitor::LossTerm::Tag,
            at: 15,
            len: 2,
            factor: 20.0,
        }],
        ..Default::default()
    };
    vec![written("metrics.jsonl", |p| {
        let mut w = crate::monitor::MetricsWriter::append(p)?;
        spiky.records().iter().try_for_each(|r| w.write(r))
    })]
}

/// Every detector key, dotted (`spike.window`), from the defaults' own serialisation.
fn detector_keys() -> Vec<String> {
    let value = serde_json::to_value(crate::monitor::DetectorConfig::default()).unwrap_or_default();
    let mut keys = Vec::new();
    if let Some(sections) = value.as_object() {
        for (section, fields) in sections {
            for key in fields.as_object().into_iter().flat_map(|f| f.keys()) {
                keys.push(format!("{section}.{key}"));
            }
        }
    }
    keys
}

fn detector_toml_seeds() -> Vec<(String, Vec<u8>)> {
    let defaults = toml::to_string(&crate::monitor::DetectorConfig::default()).unwrap_or_default();
    seeds(&[
        ("defaults.toml", defaults.as_bytes()),
        (
            "short.toml",
            b"[spike]\nwindow = 40\nmin_history = 5\n[oscillation]\nmax_lag = 2\nwindow = 8\n",
        ),
    ])
}

fn teacher_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::teacher::{TeacherFeatures, TEACHER_DIM};
    let row = |k: usize| {
        (0..TEACHER_DIM)
            .map(|i| ((i + k) % 7) as f32 * 0.1 - 0.3)
            .collect::<Vec<_>>()
    };
    let keys = ["a.jpg".to_string(), "sub/b.png".to_string()];
    let image = [row(0), row(1)].concat();
    let text = [row(2), row(3)].concat();
    vec![
        written("two.safetensors", |p| {
            TeacherFeatures::write(p, &keys, &image, &text)
        }),
        written("one.safetensors", |p| {
            TeacherFeatures::write(p, &keys[..1], &image[..TEACHER_DIM], &text[..TEACHER_DIM])
        }),
        // `tagfix teacher --unreadable-images skip`: row 1 unreadable, flagged in `image_unreadable`.
        written("flagged.safetensors", |p| {
            crate::teacher::file::write_streamed(
                p,
                &keys,
                Default::default(),
                crate::teacher::file::ImageRows::MayBeUnreadable,
                |sink| {
                    sink.push(&image[..TEACHER_DIM])?;
                    sink.push_unreadable()
                },
                |sink| sink.push(&text),
            )
        }),
        // The first layout (keys in the metadata), which is still read.
        written("v1.safetensors", |p| {
            let features = |v: &[f32]| Tensor::from_f32(vec![2, TEACHER_DIM], v).expect("rows");
            crate::tensors::safetensors_io::write(
                p,
                &crate::tensors::TensorSet {
                    tensors: vec![
                        ("image_features".into(), features(&image)),
                        ("text_features".into(), features(&text)),
                    ],
                    metadata: [
                        ("tagfix.schema".into(), "tagfix.teacher/1".into()),
                        (
                            "tagfix.keys".into(),
                            serde_json::to_string(&keys).expect("json"),
                        ),
                    ]
                    .into(),
                },
            )
        }),
    ]
}

/// Writes with one of the project's writers into a temp dir and returns the bytes.
fn written(name: &str, write: impl FnOnce(&Path) -> crate::Result<()>) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join(name);
    write(&p).expect("writing a seed");
    (name.to_string(), std::fs::read(&p).expect("reading a seed"))
}

fn sample_tensors() -> Vec<(String, Tensor)> {
    let f = |shape: Vec<usize>, n: usize| {
        Tensor::from_f32(
            shape,
            &(0..n).map(|i| i as f32 * 0.25 - 1.0).collect::<Vec<_>>(),
        )
        .expect("tensor")
    };
    vec![
        ("label_embed".into(), f(vec![4, 3], 12)),
        ("scalar".into(), f(vec![], 1)),
        (
            "half".into(),
            Tensor::from_f32_as(DType::F16, vec![2, 2], &[1.0, -2.0, 0.5, 65504.0]).expect("f16"),
        ),
        (
            "ids".into(),
            Tensor::new(
                DType::I64,
                vec![3],
                [1i64, -1, 7].iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
            .expect("i64"),
        ),
    ]
}

/// A legacy (pre-1.6) `torch.save` file with one `[2]` float tensor under key `w`.
fn legacy_pth() -> Vec<u8> {
    let mut b = vec![0x80, 0x02, 0x8a, 0x0a];
    b.extend([0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
    b.extend(
        b".\x80\x02M\xe9\x03.\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03u.",
    );
    b.extend(b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x02tq\x07QK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\nq\x08)Rq\ttq\nRq\x0bs.");
    b.extend(b"\x80\x02]q\x00X\x01\x00\x00\x000q\x01a.");
    b.extend(2u64.to_le_bytes());
    b.extend(1.5f32.to_le_bytes());
    b.extend((-2.0f32).to_le_bytes());
    b
}

fn pth_seeds() -> Vec<(String, Vec<u8>)> {
    let tensors = sample_tensors();
    vec![
        written("dict.pth", |p| {
            crate::checkpoint::pth::write(p, PthContent::Dict(&tensors))
        }),
        written("bare.pth", |p| {
            crate::checkpoint::pth::write(p, PthContent::Tensor(&tensors[0].1))
        }),
        ("legacy.pth".into(), legacy_pth()),
    ]
}

fn safetensors_seeds() -> Vec<(String, Vec<u8>)> {
    let mut set = TensorSet {
        tensors: sample_tensors(),
        metadata: Default::default(),
    };
    set.metadata.insert("tagfix.schema".into(), "x".into());
    let one = TensorSet {
        tensors: vec![("embeddings".into(), sample_tensors().remove(0).1)],
        metadata: [("tagfix.tag_count".to_string(), "4".to_string())].into(),
    };
    vec![
        written("set.safetensors", |p| {
            crate::tensors::safetensors_io::write(p, &set)
        }),
        written("one.safetensors", |p| {
            crate::tensors::safetensors_io::write(p, &one)
        }),
    ]
}

fn npy_header(descr: &str, fortran: bool, shape: &str) -> Vec<u8> {
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b
}

fn npy_seeds() -> Vec<(String, Vec<u8>)> {
    let t = &sample_tensors()[0].1;
    let mut fortran = npy_header("<f8", true, "(2, 3)");
    fortran.extend((0..6).flat_map(|i| (i as f64).to_le_bytes()));
    let mut big_endian = npy_header(">f4", false, "(3,)");
    big_endian.extend((0..3).flat_map(|i| (i as f32).to_be_bytes()));
    let ids = &sample_tensors()[3].1;
    vec![
        written("f32.npy", |p| crate::tensors::npy::write(p, t)),
        written("i64.npy", |p| crate::tensors::npy::write(p, ids)),
        ("fortran_f64.npy".into(), fortran),
        ("big_endian_f32.npy".into(), big_endian),
    ]
}

/// Small images: baseline JPEG from the `image` crate in colour (4:2:0) and grayscale, at sizes that
/// are and are not multiples of the 8×8 and 16×16 blocks; JPEG flavours from libjpeg-turbo's own
/// encoder (progressive, arithmetic-coded, restart markers, 4:2:2, CMYK, grayscale); PNG in 8-bit RGB and
/// 16-bit RGB and gray+alpha.
#[cfg(feature = "embed")]
fn image_seeds() -> Vec<(String, Vec<u8>)> {
    use image::codecs::jpeg::JpegEncoder;
    let rgb = |w: u32, h: u32| {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 29) as u8, (y * 41) as u8, ((x ^ y) * 13) as u8])
        })
    };
    let jpeg = |img: image::DynamicImage, quality: u8| {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(&img)
            .expect("encoding a seed");
        out
    };
    let mut png = Vec::new();
    rgb(9, 6)
        .write_to(
            &mut std::io::Cursor::new(&mut png),
            image::ImageOutputFormat::Png,
        )
        .expect("encoding a seed");
    vec![
        ("rgb_16x16.jpg".into(), jpeg(rgb(16, 16).into(), 90)),
        ("rgb_37x21.jpg".into(), jpeg(rgb(37, 21).into(), 50)),
        (
            "gray_13x9.jpg".into(),
            jpeg(
                image::DynamicImage::ImageRgb8(rgb(13, 9))
                    .into_luma8()
                    .into(),
                75,
            ),
        ),
        ("rgb_9x6.png".into(), png),
        ("rgb16_7x5.png".into(), png16(7, 5, false)),
        ("gray_alpha16_6x9.png".into(), png16(6, 9, true)),
        (
            "progressive_23x17.jpg".into(),
            turbojpeg_seed(23, 17, false, &[(PROGRESSIVE, 1)]),
        ),
        (
            "arithmetic_19x11.jpg".into(),
            turbojpeg_seed(19, 11, false, &[(ARITHMETIC, 1)]),
        ),
        (
            "restarts_33x18.jpg".into(),
            turbojpeg_seed(33, 18, false, &[(RESTART_BLOCKS, 1)]),
        ),
        (
            "subsampled_422_21x13.jpg".into(),
            turbojpeg_seed(21, 13, false, &[(SUBSAMPLING, SAMP_422)]),
        ),
        (
            "cmyk_12x10.jpg".into(),
            turbojpeg_seed(12, 10, true, &[(SUBSAMPLING, SAMP_444)]),
        ),
        (
            "gray_15x7.jpg".into(),
            turbojpeg_seed(15, 7, false, &[(SUBSAMPLING, SAMP_GRAY)]),
        ),
    ]
}

/// 16-bit PNG in RGB or gray+alpha (the image crate's encoder).
#[cfg(feature = "embed")]
fn png16(w: u32, h: u32, gray_alpha: bool) -> Vec<u8> {
    let value = |x: u32, y: u32, k: u32| ((x * 7919 + y * 104_729 + k * 31_337) % 65_536) as u16;
    let img: image::DynamicImage = if gray_alpha {
        image::ImageBuffer::<image::LumaA<u16>, _>::from_fn(w, h, |x, y| {
            image::LumaA([value(x, y, 0), value(x, y, 1)])
        })
        .into()
    } else {
        image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(w, h, |x, y| {
            image::Rgb([value(x, y, 0), value(x, y, 1), value(x, y, 2)])
        })
        .into()
    };
    let mut out = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageOutputFormat::Png,
    )
    .expect("encoding a seed");
    out
}

#[cfg(feature = "embed")]
use turbojpeg_sys::{
    TJPARAM_TJPARAM_ARITHMETIC as ARITHMETIC, TJPARAM_TJPARAM_PROGRESSIVE as PROGRESSIVE,
    TJPARAM_TJPARAM_RESTARTBLOCKS as RESTART_BLOCKS, TJPARAM_TJPARAM_SUBSAMP as SUBSAMPLING,
    TJSAMP_TJSAMP_422 as SAMP_422, TJSAMP_TJSAMP_444 as SAMP_444, TJSAMP_TJSAMP_GRAY as SAMP_GRAY,
};

/// A `w`×`h` JPEG (RGB, or CMYK) from libjpeg-turbo's encoder at quality 80, 4:2:0 unless
/// `params` (TurboJPEG parameters and values, set in order) say otherwise.
#[cfg(feature = "embed")]
fn turbojpeg_seed(
    w: usize,
    h: usize,
    cmyk: bool,
    params: &[(turbojpeg_sys::TJPARAM, i32)],
) -> Vec<u8> {
    use std::os::raw::c_int;
    use turbojpeg_sys as tj;
    let channels = if cmyk { 4 } else { 3 };
    let pixels: Vec<u8> = (0..w * h * channels)
        .map(|i| ((i / channels % w) * 37 + (i / channels / w) * 23 + (i % channels) * 71) as u8)
        .collect();
    let format = if cmyk {
        tj::TJPF_TJPF_CMYK
    } else {
        tj::TJPF_TJPF_RGB
    };
    // SAFETY: the handle is checked and destroyed; the source buffer holds w·h·channels bytes as
    // the pitch says; TurboJPEG allocates the output, which is copied and freed with tj3Free.
    unsafe {
        let handle = tj::tj3Init(tj::TJINIT_TJINIT_COMPRESS as c_int);
        assert!(!handle.is_null(), "tj3Init");
        let mut ok = tj::tj3Set(handle, tj::TJPARAM_TJPARAM_QUALITY as c_int, 80) == 0;
        let defaults = [(SUBSAMPLING, tj::TJSAMP_TJSAMP_420)];
        for &(param, value) in defaults.iter().chain(params) {
            ok &= tj::tj3Set(handle, param as c_int, value) == 0;
        }
        let (mut buf, mut size) = (std::ptr::null_mut(), 0);
        ok &= tj::tj3Compress8(
            handle,
            pixels.as_ptr(),
            w as c_int,
            (w * channels) as c_int,
            h as c_int,
            format as c_int,
            &mut buf,
            &mut size,
        ) == 0;
        let out = if ok && !buf.is_null() {
            std::slice::from_raw_parts(buf, size as usize).to_vec()
        } else {
            Vec::new()
        };
        tj::tj3Free(buf.cast());
        tj::tj3Destroy(handle);
        assert!(!out.is_empty(), "libjpeg-turbo could not encode a seed");
        out
    }
}

fn policy_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("full.toml", b"k = 10\nalso_k = [5, 20]\nmin_cosine = 0.99\nmin_knn_overlap = 0.9\nmin_slot_knn_overlap = 0.5\nmax_changed_rows = 0\nmax_mean_shift = 0.01\nmax_norm_deviation = 0.01\nmax_misaligned_slots = 0\nmin_trusted_share = 0.9\ncalibration_quantile = 0.01\nmin_search_recall = 0.9\n"),
        ("small.toml", b"# gate\nk = 3\nmin_cosine = -1.0\n"),
        ("empty.toml", b""),
    ])
}

fn train_toml_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("basic.toml", b"stage = \"finetune\"\nbatch_size = 8\nmicro_batch_size = 4\ninit_lr = 1e-5\nmin_lr = 0.0\nmax_epoch = 2\nbetas = [0.9, 0.999]\nfreeze = [\"label_embed\"]\ntrain_file = [\"a.json\", \"b.json\"]\n"),
        ("tables.toml", b"max_steps = 10\nabsent = \"ignore\"\n[loss_weights]\ntag = 1.0\n[random_augment]\nenabled = true\n[monitor]\nenabled = false\n"),
        ("unknown.toml", b"seed = 7\nvit_grad_ckpt = true\nprecision = \"bf16\"\ndevice = \"cpu\"\n"),
    ])
}

fn ram_yaml_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("pretrain.yaml", b"train_file: [\n    'datasets/train/a.json',\n    'datasets/train/b.json',\n    ]\nimage_path_root: \"\"\nvit: 'swin_l'\nvit_grad_ckpt: False\nvit_ckpt_layer: 0\nimage_size: 224\nbatch_size: 52\nweight_decay: 0.05\ninit_lr: 1e-4\nmin_lr: 5e-7\nwarmup_lr: 5e-7\nlr_decay_rate: 0.9\nmax_epoch: 5\nwarmup_steps: 3000\nclass_num: 4585\n"),
        ("anchors.yaml", b"base: &b\n  batch_size: 4\ninit_lr: !!float 2e-5\nstage: finetune\nbetas:\n  - 0.9\n  - 0.99\n"),
    ])
}

fn benchmark_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        (
            "names.txt",
            b"cat\ndog\nsky\n\n%%\nimg1,cat,dog\nimg2,sky\nimg1,sky\n\nimg3,\n",
        ),
        (
            "indices.txt",
            b"cat\ndog\nsky\nzebra\n%%\n1.jpg,0 2\n2.jpg,3\n3.jpg,\n",
        ),
        ("crlf.txt", b"cat\r\ndog\r\n%%\nx, cat , dog\r\n"),
    ])
}

fn scores_csv_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        (
            "slots.csv",
            b"image_id,slot,score\na,0,0.9\na,1,0.1\nb,2,0.5\nc,7,1e-3\n",
        ),
        (
            "names.csv",
            b"a,cat,0.9\nb,Dog,0.2\nb,ice cream,1\nc,sky,0\nzz,cat,0.3\n",
        ),
    ])
}

fn scores_st_seeds() -> Vec<(String, Vec<u8>)> {
    let scores: Vec<f32> = (0..24).map(|i| i as f32 / 24.0).collect();
    let set = TensorSet {
        tensors: vec![(
            "scores".into(),
            Tensor::from_f32(vec![3, 8], &scores).expect("scores"),
        )],
        metadata: [("image_ids".to_string(), "[\"a\", \"b\", \"c\"]".to_string())].into(),
    };
    vec![written("scores.safetensors", |p| {
        crate::tensors::safetensors_io::write(p, &set)
    })]
}

// ---- generators ----------------------------------------------------------------------------

fn pick_from<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

const INTS: &[i64] = &[
    0,
    1,
    2,
    3,
    -1,
    -4,
    40,
    255,
    65536,
    1 << 31,
    1 << 32,
    1 << 62,
    i64::MAX,
    i64::MIN,
];

fn int(rng: &mut SplitMix64) -> i64 {
    if rng.below(2) == 0 {
        *pick_from(rng, INTS)
    } else {
        rng.below(50) as i64
    }
}

/// A JSON value for a record field: mostly the right type, sometimes not.
fn json_value(rng: &mut SplitMix64, depth: u32) -> String {
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 => int(rng).to_string(),
        1 => pick_from(
            rng,
            &[
                "\"a.jpg\"",
                "\"\"",
                "\"\\u00e9\\ud800\"",
                "\"x\\\"y\"",
                "1.5",
                "-0",
                "1e400",
            ],
        )
        .to_string(),
        2 => pick_from(rng, &["null", "true", "false"]).to_string(),
        3 | 4 => format!(
            "[{}]",
            (0..rng.below(5))
                .map(|_| int(rng).to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        5 => format!(
            "[{}]",
            (0..rng.below(4))
                .map(|_| json_value(rng, depth + 1))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!("{{\"k\": {}}}", json_value(rng, depth + 1)),
    }
}

fn json_record(rng: &mut SplitMix64) -> String {
    let fields = [
        "image_path",
        "union_label_id",
        "parse_label_id",
        "caption",
        "extra",
    ];
    let present: Vec<&str> = fields.into_iter().filter(|_| rng.below(6) != 0).collect();
    let parts: Vec<String> = present
        .iter()
        .map(|f| {
            let v = match (*f, rng.below(3)) {
                ("image_path", 0 | 1) => format!("\"img/{}.jpg\"", rng.below(8)),
                ("caption", 0) => "[\"a cat\", \"two\"]".to_string(),
                ("parse_label_id", 0) => format!("[[{}], []]", int(rng)),
                _ => json_value(rng, 0),
            };
            format!("\"{f}\": {v}")
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn gen_annotations(rng: &mut SplitMix64) -> Vec<u8> {
    let records: Vec<String> = (0..rng.below(12)).map(|_| json_record(rng)).collect();
    let text = if rng.below(2) == 0 {
        format!("[\n{}\n]\n", records.join(",\n"))
    } else {
        records.join("\n") + "\n"
    };
    if rng.below(4) == 0 {
        gzip(text.as_bytes())
    } else {
        text.into_bytes()
    }
}

/// A pickle: protocol 2, then random opcodes with arguments, sometimes around a tensor record.
fn gen_pickle(rng: &mut SplitMix64) -> Vec<u8> {
    let mut out = vec![0x80, 0x02];
    if rng.below(2) == 0 {
        out.extend(b"}(X\x01\x00\x00\x00w");
        tensor_record(rng, &mut out);
        for _ in 0..rng.below(4) {
            opcode(rng, &mut out);
        }
        out.extend(b"u.");
        return out;
    }
    for _ in 0..rng.below(40) + 1 {
        opcode(rng, &mut out);
    }
    out.push(b'.');
    out
}

fn tensor_record(rng: &mut SplitMix64, out: &mut Vec<u8>) {
    let storage = pick_from(
        rng,
        &[
            "FloatStorage",
            "HalfStorage",
            "LongStorage",
            "BFloat16Storage",
            "ByteStorage",
            "BoolStorage",
            "Nope",
        ],
    );
    out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage");
    out.extend(format!("ctorch\n{storage}\n").as_bytes());
    out.extend(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    push_int(out, int(rng));
    out.extend(b"tQ");
    push_int(out, int(rng));
    for _ in 0..2 {
        out.push(b'(');
        for _ in 0..rng.below(4) {
            push_int(out, int(rng));
        }
        out.push(b't');
    }
    out.extend(b"\x89ccollections\nOrderedDict\n)RtR");
}

fn push_int(out: &mut Vec<u8>, v: i64) {
    if (0..256).contains(&v) {
        out.extend([b'K', v as u8]);
    } else if let Ok(v) = i32::try_from(v) {
        out.push(b'J');
        out.extend(v.to_le_bytes());
    } else {
        out.extend([0x8a, 8]);
        out.extend(v.to_le_bytes());
    }
}

fn put_one(rng: &mut SplitMix64, out: &mut Vec<u8>, items: &[&[u8]]) {
    out.extend_from_slice(items[rng.below(items.len() as u64) as usize]);
}

fn opcode(rng: &mut SplitMix64, out: &mut Vec<u8>) {
    match rng.below(16) {
        0 => put_one(
            rng,
            out,
            &[&b"}"[..], b"]", b")", b"(", b"N", b"\x88", b"\x89"],
        ),
        1 => push_int(out, int(rng)),
        2 => put_one(
            rng,
            out,
            &[
                &b"X\x01\x00\x00\x00k"[..],
                b"\x8c\x02ab",
                b"X\x00\x00\x00\x00",
                b"X\xff\xff\xff\x7fx",
            ],
        ),
        3 => put_one(
            rng,
            out,
            &[&b"t"[..], b"\x85", b"\x86", b"\x87", b"l", b"d"],
        ),
        4 => put_one(
            rng,
            out,
            &[
                &b"s"[..],
                b"u",
                b"a",
                b"e",
                b"R",
                b"Q",
                b"b",
                b"0",
                b"1",
                b"2",
            ],
        ),
        5 => out.extend([b'q', rng.below(4) as u8]),
        6 => out.extend([b'h', rng.below(4) as u8]),
        7 => {
            out.push(b'r');
            out.extend((rng.below(4) as u32).to_le_bytes());
        }
        8 => {
            out.push(b'j');
            out.extend((*pick_from(rng, &[0u32, 1, 2, u32::MAX])).to_le_bytes());
        }
        9 => put_one(
            rng,
            out,
            &[
                &b"ctorch._utils\n_rebuild_tensor_v2\n"[..],
                b"ccollections\nOrderedDict\n",
                b"ctorch\nFloatStorage\n",
                b"cos\nsystem\n",
                b"c__builtin__\nset\n",
            ],
        ),
        10 => {
            out.push(b'G');
            out.extend(pick_from(rng, &[0.5f64, f64::NAN, f64::INFINITY, -0.0]).to_be_bytes());
        }
        11 => tensor_record(rng, out),
        12 => put_one(
            rng,
            out,
            &[
                &b"\x8a\x00"[..],
                b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19",
                b"\x8b\xff\xff\xff\xff",
                b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x80",
            ],
        ),
        13 => put_one(
            rng,
            out,
            &[
                &b"C\x03abc"[..],
                b"B\x00\x00\x00\x80",
                b"T\x02\x00\x00\x00ab",
                b"U\x01a",
            ],
        ),
        14 => put_one(
            rng,
            out,
            &[
                &b"\x95\x00\x00\x00\x00\x00\x00\x00\x00"[..],
                b"\x94",
                b"\x93",
                b"\x8d\x00\x00\x00\x00\x00\x00\x00\x00",
            ],
        ),
        _ => out.push(rng.next_u64() as u8),
    }
}

/// A `torch.save` zip (random pickle, storages of random sizes) or a legacy file around a pickle.
fn gen_pth(rng: &mut SplitMix64) -> Vec<u8> {
    let pickle = gen_pickle(rng);
    if rng.below(4) == 0 {
        let mut b = legacy_pth();
        let at = memchr::memmem::find(&b, b"\x80\x02}q\x00X\x01").unwrap_or(0);
        let tail = b.split_off(at);
        b.extend(&pickle);
        if rng.below(2) == 0 {
            let keys = memchr::memmem::find(&tail, b"\x80\x02]").unwrap_or(0);
            b.extend(&tail[keys..]);
        }
        return b;
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut put = |name: &str, bytes: &[u8]| -> zip::result::ZipResult<()> {
            zip.start_file(name, opts)?;
            zip.write_all(bytes)?;
            Ok(())
        };
        let archive = pick_from(rng, &["archive", "a/b", ""]);
        let _ = put(&format!("{archive}/data.pkl"), &pickle);
        for k in 0..rng.below(3) {
            let n = *pick_from(rng, &[0usize, 1, 4, 8, 12, 48, 100]);
            let data: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let _ = put(&format!("{archive}/data/{k}"), &data);
        }
        let _ = zip.finish();
    }
    buf.into_inner()
}

fn gen_safetensors(rng: &mut SplitMix64) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut offset = 0i64;
    for k in 0..rng.below(5) {
        let dtype = pick_from(
            rng,
            &[
                "F32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "C64",
            ],
        );
        let shape: Vec<String> = (0..rng.below(4))
            .map(|_| (int(rng).rem_euclid(6)).to_string())
            .collect();
        let len = if rng.below(3) == 0 {
            int(rng)
        } else {
            rng.below(32) as i64
        };
        let end = offset.wrapping_add(len);
        let name = pick_from(rng, &["scores", "embeddings", "w", "w", "label_embed"]);
        // names repeat now and then (`w` twice, or no suffix)
        let suffix = if rng.below(3) == 0 {
            k.to_string()
        } else {
            String::new()
        };
        entries.push(format!("\"{name}{suffix}\": {{\"dtype\": \"{dtype}\", \"shape\": [{}], \"data_offsets\": [{offset}, {end}]}}", shape.join(", ")));
        offset = end;
    }
    if rng.below(2) == 0 {
        entries.push("\"__metadata__\": {\"image_ids\": \"[\\\"a\\\", \\\"b\\\"]\", \"tagfix.schema\": \"1\"}".into());
    }
    let header = format!("{{{}}}", entries.join(", "));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    let data = offset.clamp(0, 4096) as usize;
    out.extend((0..data).map(|_| rng.next_u64() as u8));
    out
}

const POLICY_KEYS: &[&str] = &[
    "k",
    "also_k",
    "min_cosine",
    "min_knn_overlap",
    "min_slot_knn_overlap",
    "max_changed_rows",
    "max_mean_shift",
    "max_norm_deviation",
    "max_misaligned_slots",
    "min_trusted_share",
    "calibration_quantile",
    "min_search_recall",
];

/// Values of every type a config key might be given, as TOML and as YAML.
const CONFIG_VALUES: &[(&str, &str)] = &[
    ("0", "0"),
    ("1", "1"),
    ("-1", "-1"),
    ("52", "52"),
    ("9223372036854775807", "9223372036854775807"),
    ("0.5", "0.5"),
    ("1e-4", "1e-4"),
    ("-0.0", "-0.0"),
    ("inf", ".inf"),
    ("nan", ".nan"),
    ("1e308", "1e308"),
    ("true", "True"),
    ("\"finetune\"", "finetune"),
    ("\"cosine\"", "'cosine'"),
    ("\"bf16\"", "bf16"),
    ("\"\"", "''"),
    ("[0.9, 0.999]", "[0.9, 0.999]"),
    ("[]", "[]"),
    ("[\"label_embed\"]", "['label_embed']"),
    ("[5, 0, 20]", "[5, 0, 20]"),
    ("{ enabled = true, ops = 2 }", "{enabled: true, ops: 2}"),
    ("{}", "{}"),
    ("1979-05-27", "1979-05-27"),
    ("\"1e-5\"", "'1e-5'"),
    ("\"18446744073709551616\"", "18446744073709551616"),
    // Durations (`checkpoint_every = "30m"`): ordinary, zero, and past what a Duration holds.
    ("\"1h 30m\"", "1h 30m"),
    ("\"0s\"", "0s"),
    (
        "\"18446744073709551615s 999999999ns\"",
        "'18446744073709551615s 999999999ns'",
    ),
    ("\"99999999999999999999y\"", "99999999999999999999y"),
];

/// A config file of random keys (mostly known ones) with values of random types.
fn gen_config(rng: &mut SplitMix64, keys: &[&str], yaml: bool) -> Vec<u8> {
    let mut out = String::new();
    for _ in 0..rng.below(8) + 1 {
        let key = if rng.below(8) == 0 {
            "unknown_key"
        } else {
            pick_from(rng, keys)
        };
        let (toml, yml) = pick_from(rng, CONFIG_VALUES);
        if yaml {
            out += &format!("{key}: {yml}\n");
        } else {
            out += &format!("{key} = {toml}\n");
        }
    }
    out.into_bytes()
}

fn gen_policy(rng: &mut SplitMix64) -> Vec<u8> {
    gen_config(rng, POLICY_KEYS, false)
}

fn gen_train_toml(rng: &mut SplitMix64) -> Vec<u8> {
    // The top-level keys and the `[monitor]` table's detector keys (`monitor.spike.window`).
    let monitor: Vec<String> = detector_keys()
        .iter()
        .map(|k| format!("monitor.{k}"))
        .collect();
    let mut keys: Vec<&str> = crate::train::config::known_keys().into_iter().collect();
    keys.extend(monitor.iter().map(String::as_str));
    gen_config(rng, &keys, false)
}

fn gen_detector_toml(rng: &mut SplitMix64) -> Vec<u8> {
    let keys = detector_keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    gen_config(rng, &keys, false)
}

fn gen_ram_yaml(rng: &mut SplitMix64) -> Vec<u8> {
    gen_config(rng, &crate::train::config::known_keys(), true)
}

fn gen_npy(rng: &mut SplitMix64) -> Vec<u8> {
    let descr = pick_from(
        rng,
        &[
            "<f4", "<f8", "<i8", ">f4", ">i8", "|u1", "<f2", "<i4", "|b1", "<U3",
        ],
    );
    let shape: Vec<String> = (0..rng.below(4)).map(|_| int(rng).to_string()).collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let mut b = npy_header(descr, rng.below(2) == 0, &shape);
    let n = *pick_from(rng, &[0usize, 4, 8, 24, 48, 96]);
    b.extend((0..n).map(|_| rng.next_u64() as u8));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_read_by_their_readers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint.pth");
        std::fs::write(&p, legacy_pth()).unwrap();
        let c = crate::checkpoint::pth::read(&p).unwrap();
        assert!(c.legacy);
        assert_eq!(c.tensors[0].1.to_f32().unwrap(), [1.5, -2.0]);
        for (name, bytes) in npy_seeds() {
            let p = dir.path().join(&name);
            std::fs::write(&p, bytes).unwrap();
            assert!(crate::tensors::npy::read(&p).is_ok(), "{name}");
        }
        for (name, bytes) in teacher_seeds() {
            let p = dir.path().join(&name);
            std::fs::write(&p, bytes).unwrap();
            let t = crate::teacher::TeacherFeatures::read(&p).unwrap();
            assert_eq!(
                t.unreadable_images(),
                usize::from(name == "flagged.safetensors")
            );
        }
    }

    /// Every image seed decodes, at the size its name says, so that mutations start from each
    /// flavour's decoding path.
    #[cfg(feature = "embed")]
    #[test]
    fn image_seeds_decode_at_their_size() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in image_seeds() {
            let p = dir.path().join(&name);
            std::fs::write(&p, bytes).unwrap();
            let img = crate::imaging::decode(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            let size = name
                .rsplit('_')
                .next()
                .and_then(|s| s.split('.').next())
                .unwrap();
            assert_eq!(format!("{}x{}", img.width(), img.height()), size, "{name}");
        }
    }

    #[test]
    fn generators_are_deterministic() {
        for g in [
            gen_pth,
            gen_npy,
            gen_safetensors,
            gen_annotations,
            gen_ram_yaml,
        ] {
            let a: Vec<_> = (0..20).map(|s| g(&mut SplitMix64(s))).collect();
            let b: Vec<_> = (0..20).map(|s| g(&mut SplitMix64(s))).collect();
            assert_eq!(a, b);
        }
    }
}
