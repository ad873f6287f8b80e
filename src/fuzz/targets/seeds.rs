//! Crafted seeds, written with the project's own writers where it has one.

use crate::tensors::{DType, Tensor, TensorSet};
use std::io::Write;
use std::path::Path;

use super::small_vocab;

pub(super) fn seeds(items: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    items
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect()
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in-memory gzip");
    e.finish().expect("in-memory gzip")
}

pub(super) const ARRAY: &[u8] = br#"[
  {"image_path": "coco/a.jpg", "caption": ["a cat on a mat", "a cat"], "union_label_id": [3, 7],
   "parse_label_id": [[3], [3, 7]]},
  {"image_path": "coco/b.jpg", "caption": ["sky"], "union_label_id": [12], "parse_label_id": [[12]]},
  {"image_path": "coco/c.jpg", "caption": "one string", "union_label_id": [], "parse_label_id": []}
]
"#;

pub(super) const LINES: &[u8] = b"{\"image_path\": \"x/1.jpg\", \"union_label_id\": [0, 39], \"caption\": [\"a \\u00e9 \\\"q\\\"\"], \"parse_label_id\": [[0]]}\n\
{\"image_path\": \"x/2.jpg\", \"union_label_id\": [40, -1, 1.5], \"caption\": [\"b\", \"c\"], \"parse_label_id\": [[1]]}\n\
{\"image_path\": \"x/1.jpg\", \"union_label_id\": [5]}\n";

pub(super) fn annotation_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn taglist_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn sidecar_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn manifest_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn descriptions_seeds() -> Vec<(String, Vec<u8>)> {
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
pub(super) fn spiky_run(steps: u64, at: u64) -> crate::monitor::synthetic::SyntheticRun {
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

pub(super) fn metrics_seeds() -> Vec<(String, Vec<u8>)> {
    // 20 steps keep the file under the harness's 16 KiB input limit.
    let spiky = spiky_run(20, 15);
    vec![written("metrics.jsonl", |p| {
        let mut w = crate::monitor::MetricsWriter::append(p)?;
        spiky.records().iter().try_for_each(|r| w.write(r))
    })]
}

/// Every detector key, dotted (`spike.window`), from the defaults' own serialisation.
pub(super) fn detector_keys() -> Vec<String> {
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

pub(super) fn detector_toml_seeds() -> Vec<(String, Vec<u8>)> {
    let defaults = toml::to_string(&crate::monitor::DetectorConfig::default()).unwrap_or_default();
    seeds(&[
        ("defaults.toml", defaults.as_bytes()),
        (
            "short.toml",
            b"[spike]\nwindow = 40\nmin_history = 5\n[oscillation]\nmax_lag = 2\nwindow = 8\n",
        ),
    ])
}

pub(super) fn teacher_seeds() -> Vec<(String, Vec<u8>)> {
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
pub(super) fn written(
    name: &str,
    write: impl FnOnce(&Path) -> crate::Result<()>,
) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join(name);
    write(&p).expect("writing a seed");
    (name.to_string(), std::fs::read(&p).expect("reading a seed"))
}

pub(super) fn sample_tensors() -> Vec<(String, Tensor)> {
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

pub(super) fn safetensors_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn npy_header(descr: &str, fortran: bool, shape: &str) -> Vec<u8> {
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

pub(super) fn npy_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn policy_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("full.toml", b"k = 10\nalso_k = [5, 20]\nmin_cosine = 0.99\nmin_knn_overlap = 0.9\nmin_slot_knn_overlap = 0.5\nmax_changed_rows = 0\nmax_mean_shift = 0.01\nmax_norm_deviation = 0.01\nmax_misaligned_slots = 0\nmin_trusted_share = 0.9\ncalibration_quantile = 0.01\nmin_search_recall = 0.9\n"),
        ("small.toml", b"# gate\nk = 3\nmin_cosine = -1.0\n"),
        ("empty.toml", b""),
    ])
}

pub(super) fn train_toml_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("basic.toml", b"stage = \"finetune\"\nbatch_size = 8\nmicro_batch_size = 4\ninit_lr = 1e-5\nmin_lr = 0.0\nmax_epoch = 2\nbetas = [0.9, 0.999]\nfreeze = [\"label_embed\"]\ntrain_file = [\"a.json\", \"b.json\"]\n"),
        ("tables.toml", b"max_steps = 10\nabsent = \"ignore\"\n[loss_weights]\ntag = 1.0\n[random_augment]\nenabled = true\n[monitor]\nenabled = false\n"),
        ("unknown.toml", b"seed = 7\nvit_grad_ckpt = true\nprecision = \"bf16\"\ndevice = \"cpu\"\n"),
    ])
}

pub(super) fn ram_yaml_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("pretrain.yaml", b"train_file: [\n    'datasets/train/a.json',\n    'datasets/train/b.json',\n    ]\nimage_path_root: \"\"\nvit: 'swin_l'\nvit_grad_ckpt: False\nvit_ckpt_layer: 0\nimage_size: 224\nbatch_size: 52\nweight_decay: 0.05\ninit_lr: 1e-4\nmin_lr: 5e-7\nwarmup_lr: 5e-7\nlr_decay_rate: 0.9\nmax_epoch: 5\nwarmup_steps: 3000\nclass_num: 4585\n"),
        ("anchors.yaml", b"base: &b\n  batch_size: 4\ninit_lr: !!float 2e-5\nstage: finetune\nbetas:\n  - 0.9\n  - 0.99\n"),
    ])
}

pub(super) fn benchmark_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn scores_csv_seeds() -> Vec<(String, Vec<u8>)> {
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

pub(super) fn scores_st_seeds() -> Vec<(String, Vec<u8>)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::targets::pth;

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
}
