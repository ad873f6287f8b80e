//! `tagfix embed` end to end with the real MiniLM model: patching a base with the 144 absent slots of a
//! slot manifest, RAM's .pth format, RAM++ descriptions, and bad inputs (clear error, exit 2, no output).
#![cfg(feature = "embed")]

mod common;
mod embed_common;

use assert_cmd::Command;
use common::{model_dir_for_test, shared_dir_for_test};
use embed_common::cosine;
use std::path::{Path, PathBuf};
use tagfix::fsutil::sha256_file;
use tagfix::manifest::SlotManifest;
use tagfix::tensors::{safetensors_io, EmbeddingFile, Provenance, Tensor, TensorSet};
use tagfix::vocab::Vocabulary;

struct Fixture {
    shared: PathBuf,
    vocab_path: PathBuf,
    vocab: Vocabulary,
    reference: EmbeddingFile,
    dir: tempfile::TempDir,
}

fn fixture(test: &str) -> Option<Fixture> {
    let shared = shared_dir_for_test(test)?;
    model_dir_for_test("minilm", test)?;
    let vocab_path = shared.join("ram/data/ram_tag_list.txt");
    Some(Fixture {
        vocab: Vocabulary::from_file(&vocab_path).unwrap(),
        reference: EmbeddingFile::read(
            &shared.join("reference/minilm_ram_single_template.safetensors"),
            None,
        )
        .unwrap(),
        vocab_path,
        shared,
        dir: tempfile::tempdir().unwrap(),
    })
}

/// 144 absent slots spread over the vocabulary (a bijection of 0..4585 maps them from 0..144).
fn absent_slots() -> Vec<usize> {
    let mut v: Vec<usize> = (0..4585).filter(|s| (s * 7919) % 4585 < 144).collect();
    v.sort_unstable();
    v
}

fn write_manifest(vocab: &Vocabulary, absent: &[usize], path: &Path) {
    let union: Vec<u64> = (0..vocab.len())
        .map(|s| {
            if absent.contains(&s) {
                0
            } else {
                1 + (s % 5) as u64
            }
        })
        .collect();
    SlotManifest::from_counts(vocab, &union, &union, vec![], 0)
        .write(path)
        .unwrap();
}

fn tagfix() -> Command {
    let mut c = common::tagfix();
    c.arg("--quiet");
    c
}

/// Runs `tagfix embed` with `args` (strings or paths) and expects success.
fn embed_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    tagfix()
        .arg("embed")
        .args(args.iter().map(|a| a.as_ref()))
        .assert()
        .success();
}

/// Runs `args` expecting exit 2 with `message` in stderr and nothing written to `out`'s folder.
fn assert_refused(args: &[&str], out: &Path, message: &str) {
    let before: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let result = tagfix().args(args).arg("--out").arg(out).assert().code(2);
    let stderr = String::from_utf8_lossy(&result.get_output().stderr).to_string();
    assert!(
        stderr.contains(message),
        "expected {message:?} in:\n{stderr}"
    );
    assert!(!out.exists(), "{} was written", out.display());
    let after: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before.len(), after.len(), "files left behind: {after:?}");
}

#[test]
fn patching_144_absent_slots_keeps_every_other_row_bit_identical() {
    let Some(f) = fixture("patching_144_absent_slots_keeps_every_other_row_bit_identical") else {
        return;
    };
    let absent = absent_slots();
    assert_eq!(absent.len(), 144);
    let manifest = f.dir.path().join("manifest.json");
    write_manifest(&f.vocab, &absent, &manifest);
    // The base: reference rows, with placeholder rows where the absent slots are.
    let mut base = f.reference.clone();
    for &s in &absent {
        base.row_mut(s).fill(0.05);
    }
    let base_path = f.dir.path().join("base.safetensors");
    base.write(&base_path).unwrap();
    let out = f.dir.path().join("patched.safetensors");
    embed_ok(&[
        &"--model",
        &"minilm",
        &"--absent",
        &"--control",
        &"100",
        &"--seed",
        &"3",
        &"--vocab",
        &f.vocab_path,
        &"--manifest",
        &manifest,
        &"--base",
        &base_path,
        &"--out",
        &out,
    ]);

    let patched = EmbeddingFile::read(&out, None).unwrap();
    assert_eq!((patched.rows, patched.dim), (4585, 384));
    let mut filled = 0;
    for s in 0..4585 {
        if absent.binary_search(&s).is_ok() {
            let c = cosine(patched.row(s), f.reference.row(s));
            assert!(c >= 0.9999, "slot {s}: cosine {c} to the reference");
            assert_ne!(patched.row(s), base.row(s));
            filled += 1;
        } else {
            let same = patched
                .row(s)
                .iter()
                .zip(base.row(s))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "untouched slot {s} changed");
        }
    }
    assert_eq!(filled, 144);

    let set = safetensors_io::read(&out).unwrap();
    let prov = Provenance::from_metadata(&set.metadata, &out)
        .unwrap()
        .unwrap();
    assert_eq!(prov.regenerated_slots, absent);
    assert_eq!(prov.vocabulary_sha256, f.vocab.sha256);
    assert_eq!(prov.tag_count, 4585);
    assert_eq!(prov.rows_per_slot, 1);
    assert_eq!(prov.recipe, "single");
    assert_eq!(
        prov.base_sha256.as_deref(),
        Some(sha256_file(&base_path).unwrap().as_str())
    );
    assert_eq!(
        prov.model_sha256,
        sha256_file(&model_dir_for_test("minilm", "").unwrap().join("model.onnx")).unwrap()
    );
    assert_eq!(prov.control_slots.len(), 100);
    assert!(prov
        .control_slots
        .iter()
        .all(|s| absent.binary_search(s).is_err()));
    let control = EmbeddingFile::read(&out, Some("control")).unwrap();
    assert_eq!((control.rows, control.dim), (100, 384));
    for (i, &s) in prov.control_slots.iter().enumerate() {
        assert!(
            cosine(control.row(i), base.row(s)) >= 0.9999,
            "control slot {s}"
        );
    }
}

#[test]
fn pth_base_in_pth_out_as_ram_loads_it() {
    let Some(f) = fixture("pth_base_in_pth_out_as_ram_loads_it") else {
        return;
    };
    let base_path = f.dir.path().join("ram_tag_embedding_class_4585.pth");
    let mut base = f.reference.clone();
    base.row_mut(7).fill(0.0);
    base.write(&base_path).unwrap();
    let out = f.dir.path().join("patched.pth");
    embed_ok(&[
        &"--model",
        &"minilm",
        &"--slots",
        &"7,4000-4002",
        &"--vocab",
        &f.vocab_path,
        &"--base",
        &base_path,
        &"--out",
        &out,
    ]);
    let patched = EmbeddingFile::read(&out, None).unwrap();
    for s in 0..4585 {
        if [7, 4000, 4001, 4002].contains(&s) {
            assert!(cosine(patched.row(s), f.reference.row(s)) >= 0.9999);
        } else {
            assert_eq!(patched.row(s), base.row(s), "slot {s}");
        }
    }
    let sidecar: Provenance = serde_json::from_str(
        &std::fs::read_to_string(f.dir.path().join("patched.pth.provenance.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar.regenerated_slots, vec![7, 4000, 4001, 4002]);
}

#[test]
fn descriptions_give_the_ram_plus_plus_layout() {
    let test = "descriptions_give_the_ram_plus_plus_layout";
    let Some(shared) = shared_dir_for_test(test) else {
        return;
    };
    if model_dir_for_test("clip-tiny", test).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bench = shared.join("ram/benchmarks/openimages_rare_200");
    let tags = std::fs::read_to_string(bench.join("openimages_rare_200_ram_taglist.txt")).unwrap();
    let vocab = dir.path().join("tags.txt");
    std::fs::write(&vocab, tags.lines().take(4).collect::<Vec<_>>().join("\n")).unwrap();
    let descriptions = bench.join("openimages_rare_200_llm_tag_descriptions.json");
    let model = model_dir_for_test("clip-tiny", test).unwrap();
    let full = dir.path().join("label_embed.safetensors");
    embed_ok(&[
        &"--all",
        &"--model",
        &model,
        &"--vocab",
        &vocab,
        &"--descriptions",
        &descriptions,
        &"--out",
        &full,
    ]);
    let e = EmbeddingFile::read(&full, None).unwrap();
    assert_eq!((e.rows, e.dim), (4 * 51, 512));
    let set = safetensors_io::read(&full).unwrap();
    let prov = Provenance::from_metadata(&set.metadata, &full)
        .unwrap()
        .unwrap();
    assert_eq!(prov.rows_per_slot, 51);
    // Patch slot 2's 51 rows into it: the other 153 rows stay bit-identical.
    let mut base = e.clone();
    for r in 102..153 {
        base.row_mut(r).fill(0.1);
    }
    let base_path = dir.path().join("base.safetensors");
    base.write(&base_path).unwrap();
    let out = dir.path().join("patched.safetensors");
    embed_ok(&[
        &"--slots",
        &"2",
        &"--model",
        &model,
        &"--vocab",
        &vocab,
        &"--descriptions",
        &descriptions,
        &"--base",
        &base_path,
        &"--out",
        &out,
    ]);
    let p = EmbeddingFile::read(&out, None).unwrap();
    for r in 0..204 {
        if (102..153).contains(&r) {
            assert!(cosine(p.row(r), e.row(r)) > 0.99999, "row {r}");
        } else {
            assert_eq!(p.row(r), base.row(r), "row {r}");
        }
    }
    // A RAM-layout base cannot take per-description rows.
    let ram_layout = dir.path().join("ram_layout.safetensors");
    EmbeddingFile::new(vec![0.0; 4 * 512], 4, 512)
        .write(&ram_layout)
        .unwrap();
    let bad_out = dir.path().join("bad.safetensors");
    let args = [
        "embed",
        "--slots",
        "2",
        "--model",
        model.to_str().unwrap(),
        "--vocab",
        vocab.to_str().unwrap(),
        "--descriptions",
        descriptions.to_str().unwrap(),
        "--base",
        ram_layout.to_str().unwrap(),
    ];
    assert_refused(&args, &bad_out, "mixing averaged and per-description rows");
}

#[test]
fn bad_inputs_are_refused_with_clear_errors_and_no_output() {
    let Some(f) = fixture("bad_inputs_are_refused_with_clear_errors_and_no_output") else {
        return;
    };
    let d = f.dir.path();
    let out = d.join("out.safetensors");
    let vocab = f.vocab_path.to_str().unwrap().to_string();
    let reference = f
        .shared
        .join("reference/minilm_ram_single_template.safetensors");
    let reference = reference.to_str().unwrap();
    let base_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["embed", "--vocab", vocab.as_str(), "--slots", "1,2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str], message: &str| {
        let args = base_args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&refs, &out, message);
    };

    // A descriptor that does not match the model's inputs / outputs.
    let minilm = model_dir_for_test("minilm", "").unwrap();
    let descriptor = std::fs::read_to_string(minilm.join("descriptor.toml")).unwrap();
    for (name, edit, message) in [
        (
            "no-type-ids",
            descriptor.replace("token_type_ids = \"token_type_ids\"\n", ""),
            "the model needs input `token_type_ids`",
        ),
        (
            "wrong-output",
            descriptor.replace(
                "name = \"last_hidden_state\"",
                "name = \"sentence_embedding\"",
            ),
            "names output `sentence_embedding`",
        ),
        (
            "wrong-pooling",
            descriptor.replace("pooling = \"mean\"", "pooling = \"pooled\""),
            "needs rank 2",
        ),
        (
            "wrong-input",
            descriptor.replace("input_ids = \"input_ids\"", "input_ids = \"ids\""),
            "names input `ids`",
        ),
    ] {
        let m = d.join(name);
        std::fs::create_dir(&m).unwrap();
        std::os::unix::fs::symlink(
            minilm.join("model.onnx").canonicalize().unwrap(),
            m.join("model.onnx"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            minilm.join("tokenizer.json").canonicalize().unwrap(),
            m.join("tokenizer.json"),
        )
        .unwrap();
        std::fs::write(m.join("descriptor.toml"), edit).unwrap();
        run(
            &["--model", m.to_str().unwrap(), "--base", reference],
            message,
        );
    }

    // A model directory cut short (an interrupted download): the model, then the tokenizer file,
    // and a tokenizer file the `tokenizers` library panics on (a JSON error inside its decoder).
    let tokenizer = std::fs::read_to_string(minilm.join("tokenizer.json")).unwrap();
    let model = std::fs::read(minilm.join("model.onnx")).unwrap();
    let decoder = tokenizer.find("\"decoder\":").expect("a decoder") + "\"decoder\":".len();
    let bad_decoder = format!("{}oull{}", &tokenizer[..decoder], &tokenizer[decoder + 1..]);
    for (name, model, tokenizer, message) in [
        (
            "cut-model",
            &model[..100_000],
            tokenizer.as_str(),
            "cannot load the ONNX model",
        ),
        (
            "cut-tokenizer",
            &model[..],
            &tokenizer[..5000],
            "cannot load tokenizer.json",
        ),
        (
            "panicking-tokenizer",
            &model[..],
            bad_decoder.as_str(),
            "cannot load tokenizer.json (the tokenizers library failed on it)",
        ),
    ] {
        let m = d.join(name);
        std::fs::create_dir(&m).unwrap();
        std::fs::write(m.join("descriptor.toml"), &descriptor).unwrap();
        std::fs::write(m.join("model.onnx"), model).unwrap();
        std::fs::write(m.join("tokenizer.json"), tokenizer).unwrap();
        run(
            &["--model", m.to_str().unwrap(), "--base", reference],
            message,
        );
    }

    // Missing ONNX Runtime library.
    run(
        &[
            "--model",
            "minilm",
            "--base",
            reference,
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
        ],
        "ONNX Runtime library not found at /nonexistent/libonnxruntime.so",
    );

    // --device cuda without a usable CUDA provider (the CPU build, named: once scripts/setup-gpu.sh
    // installed onnxruntime-gpu it is the default): an error, never a CPU fallback.
    let cpu_lib = common::crate_root().join(".deps/libonnxruntime.so");
    run(
        &[
            "--model",
            "minilm",
            "--base",
            reference,
            "--device",
            "cuda",
            "--ort-lib",
            cpu_lib.to_str().unwrap(),
        ],
        "does not fall back to the CPU",
    );

    // Base of the wrong shape, dtype or width.
    let short = d.join("short.safetensors");
    EmbeddingFile::new(f.reference.values[..4584 * 384].to_vec(), 4584, 384)
        .write(&short)
        .unwrap();
    run(
        &["--model", "minilm", "--base", short.to_str().unwrap()],
        "4584 rows",
    );
    let ints = d.join("ints.safetensors");
    safetensors_io::write(
        &ints,
        &TensorSet {
            tensors: vec![(
                "embeddings".into(),
                Tensor::new(
                    tagfix::tensors::DType::I32,
                    vec![4585, 2],
                    vec![0; 4585 * 2 * 4],
                )
                .unwrap(),
            )],
            metadata: Default::default(),
        },
    )
    .unwrap();
    run(
        &["--model", "minilm", "--base", ints.to_str().unwrap()],
        "must be floating point",
    );
    let wide = d.join("wide.safetensors");
    EmbeddingFile::new(vec![0.0; 4585 * 512], 4585, 512)
        .write(&wide)
        .unwrap();
    run(
        &["--model", "minilm", "--base", wide.to_str().unwrap()],
        "512-dimensional",
    );

    // A slot manifest made for another vocabulary (checked by hash).
    let mut tags = f.vocab.tags.clone();
    tags[10] = "not the official tag".into();
    let other = d.join("other_manifest.json");
    write_manifest(&Vocabulary::from_tags(tags), &absent_slots(), &other);
    let args = [
        "embed",
        "--vocab",
        vocab.as_str(),
        "--model",
        "minilm",
        "--manifest",
        other.to_str().unwrap(),
        "--absent",
        "--base",
        reference,
    ];
    assert_refused(&args, &out, "different vocabulary");

    // Selections that cannot work.
    run(
        &["--model", "minilm"],
        "without --base every slot is computed",
    );
    run(
        &[
            "--model",
            "minilm",
            "--base",
            reference,
            "--control",
            "5000",
        ],
        "only 4583 slots have an original row",
    );
    assert_refused(
        &[
            "embed",
            "--vocab",
            vocab.as_str(),
            "--model",
            "minilm",
            "--slots",
            "1",
            "--base",
            reference,
            "--control",
            "3",
        ],
        &d.join("out.pth"),
        "only a .safetensors output",
    );
    run(
        &["--model", "no-such-model", "--base", reference],
        "model not found",
    );
}

/// `--device cuda` with ONNX Runtime's CPU build (the setup's `.deps/libonnxruntime.so`, which has no
/// CUDA execution provider), named by `--ort-lib` or `ORT_DYLIB_PATH`: exit 2 with a message naming
/// the provider and what to install, and nothing written — never a silent run on the CPU. The same
/// library embeds on the CPU, so the refusal is the provider's.
#[test]
fn cuda_with_a_cpu_only_onnx_runtime_fails_loudly() {
    let test = "cuda_with_a_cpu_only_onnx_runtime_fails_loudly";
    let (Some(_), Some(cpu_lib)) = (
        model_dir_for_test("minilm", test),
        common::setup_file(".deps/libonnxruntime.so", test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("tags.txt");
    std::fs::write(&vocab, "dog\ncat\n").unwrap();
    let out = dir.path().join("out.safetensors");
    let lib = cpu_lib.to_str().unwrap();
    let args = |device: &'static str| {
        vec![
            "embed",
            "--model",
            "minilm",
            "--vocab",
            vocab.to_str().unwrap(),
            "--all",
            "--device",
            device,
        ]
    };
    // Named by --ort-lib, then by ORT_DYLIB_PATH.
    for env in [None, Some(lib)] {
        let mut cmd = tagfix();
        let mut argv = args("cuda");
        match env {
            Some(lib) => {
                cmd.env("ORT_DYLIB_PATH", lib);
            }
            None => argv.extend(["--ort-lib", lib]),
        }
        let result = cmd.args(argv).arg("--out").arg(&out).assert().code(2);
        let stderr = String::from_utf8_lossy(&result.get_output().stderr).to_string();
        for expected in [
            "CUDAExecutionProvider",
            lib,
            "onnxruntime-gpu",
            "scripts/setup-gpu.sh",
            "does not fall back to the CPU",
        ] {
            assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
        }
        assert!(!out.exists(), "{} was written", out.display());
    }
    let mut cpu = args("cpu");
    cpu.extend(["--ort-lib", lib, "--out", out.to_str().unwrap()]);
    tagfix().args(cpu).assert().success();
    let written = EmbeddingFile::read(&out, None).unwrap();
    assert_eq!((written.rows, written.dim), (2, 384));
}

/// ONNX Runtime aborts on some malformed graphs instead of returning an error: the CLIP fixture with
/// its `Split` node's `num_outputs` 3 → 1 (three outputs named) fails a bounds assertion while the
/// session is created, which ended tagfix with SIGABRT. The model is now opened in a helper process
/// first: an error naming the file and the signal, exit 2, nothing written. A model the helper
/// opened is remembered in the cache folder, so the next run opens it once.
#[test]
fn a_model_that_crashes_onnx_runtime_is_an_error_not_a_crash() {
    let test = "a_model_that_crashes_onnx_runtime_is_an_error_not_a_crash";
    let Some(model) = model_dir_for_test("clip-tiny", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let vocab = dir.path().join("tags.txt");
    std::fs::write(&vocab, "cat\ndog\n").unwrap();
    let bpe = model
        .parent()
        .unwrap()
        .join("clip-bpe")
        .canonicalize()
        .unwrap();
    let descriptor = std::fs::read_to_string(model.join("descriptor.toml"))
        .unwrap()
        .replace("../clip-bpe", bpe.to_str().unwrap());
    let mut bytes = std::fs::read(model.join("model.onnx")).unwrap();
    // AttributeProto { name: "num_outputs", i: 3 }: field 3 (varint) follows the name.
    let key = b"num_outputs\x18\x03";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the fixture's Split carries num_outputs = 3");
    let run = |onnx: &[u8], name: &str| {
        let m = dir.path().join(name);
        std::fs::create_dir(&m).unwrap();
        std::fs::write(m.join("descriptor.toml"), &descriptor).unwrap();
        std::fs::write(m.join("model.onnx"), onnx).unwrap();
        let out = dir.path().join(format!("{name}.npy"));
        let mut cmd = tagfix();
        cmd.env("XDG_CACHE_HOME", &cache)
            .args(["embed", "--all", "--vocab"])
            .arg(&vocab)
            .arg("--model")
            .arg(&m)
            .arg("--out")
            .arg(&out);
        (cmd.assert(), out)
    };
    let stamps = || std::fs::read_dir(cache.join("tagfix/onnx-opened")).map_or(0, Iterator::count);

    let (whole, out) = run(&bytes, "whole");
    whole.success();
    assert!(out.is_file());
    assert_eq!(stamps(), 1, "the model the helper opened is remembered");

    bytes[at + key.len() - 1] = 1;
    let (crashing, out) = run(&bytes, "crashing");
    let stderr = String::from_utf8_lossy(&crashing.code(2).get_output().stderr).to_string();
    assert!(
        stderr.contains("model.onnx: ONNX Runtime crashed opening this model")
            && stderr.contains("SIGABRT")
            && stderr.contains("replace it with a whole copy"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert!(!dir.path().join("crashing.npy.provenance.json").exists());
    assert_eq!(stamps(), 1, "a model that crashed is not remembered");

    // The helper's subcommand, run by hand with a request it cannot read: a usage error.
    tagfix()
        .arg(tagfix::embed::isolate::HELPER_COMMAND)
        .write_stdin("not json")
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "internal-open-onnx: cannot read the request on standard input",
        ));
}
