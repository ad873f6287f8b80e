//! The fuzz targets: one per reader of user files, each with its format's tokens, crafted seeds
//! (written with the project's own writers where it has one) and, for the binary formats, a
//! generator that builds inputs from the format's structure.

use super::Target;
use crate::annotations::records::{ReadOptions, RecordSet};
use crate::annotations::{scan_files, ScanOptions};
use crate::eval::{read_scores, Benchmark, LabelForm, TagMapping, Thresholds};
use crate::rng::SplitMix64;
use crate::tensors::{DType, EmbeddingFile, Provenance, Tensor, TensorSet};
use crate::vocab::{check_sidecar, map_derived, SidecarKind, Vocabulary};
use std::io::Write;
use std::path::{Path, PathBuf};

mod check;
mod descriptor;
#[cfg(feature = "embed")]
mod image;
mod pth;
mod run_files;
mod summary;

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

/// A synthetic run of `steps` steps whose tag loss spikes 20-fold for two steps at `at` (so the
/// detectors raise health events).
fn spiky_run(steps: u64, at: u64) -> crate::monitor::synthetic::SyntheticRun {
    use crate::monitor::synthetic::{Anomaly, SyntheticRun};
    SyntheticRun {
        steps,
        warmup: 3,
        anomalies: vec![Anomaly::Spike {
            term: crate::monitor::LossTerm::Tag,
            at,
            len: 2,
            factor: 20.0,
        }],
        ..Default::default()
    }
}

fn metrics_seeds() -> Vec<(String, Vec<u8>)> {
    // 20 steps keep the file under the harness's 16 KiB input limit.
    let spiky = spiky_run(20, 15);
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
        std::fs::write(&p, pth::legacy_pth()).unwrap();
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

    #[test]
    fn generators_are_deterministic() {
        for g in [
            pth::gen_pth,
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
