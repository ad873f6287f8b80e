//! `tagfix check` on the real MiniLM embeddings of the RAM vocabulary (`../shared/reference/`):
//! drift gating, semantic consistency of patched files, search agreement and bad inputs.
//!
//! No ONNX Runtime here: files "regenerated with a different model or template" are simulated from
//! the real rows (explained at each test), so the check's behaviour is tested on real geometry.

mod common;
mod plot_common;

use assert_cmd::Command;
use common::{shared_dir_for_test, Context};
use plot_common::{assert_drawn_png, assert_texts};
use std::path::{Path, PathBuf};
use tagfix::consistency::knn::{exact, Exclude, Index, Rows, SearchConfig};
use tagfix::consistency::synthetic::{add_noise, random_rotation, rotate};
use tagfix::consistency::{kernels::normalised_rows, SearchChoice};
use tagfix::embed::plan::{sample_controls, ControlSpec};
use tagfix::tensors::{DType, EmbeddingFile, Provenance, Tensor, TensorSet};

struct Fixture {
    /// `tagfix -q <subcommand> --vocab <the RAM tag list>` in a temporary folder.
    ctx: Context,
    reference: EmbeddingFile,
    reference_path: PathBuf,
    vocab: PathBuf,
}

fn fixture(test: &str) -> Option<Fixture> {
    let shared = shared_dir_for_test(test)?;
    let reference_path = shared.join("reference/minilm_ram_single_template.safetensors");
    let vocab = shared.join("ram/data/ram_tag_list.txt");
    Some(Fixture {
        ctx: Context::new().quiet().flag("--vocab", &vocab),
        reference: EmbeddingFile::read(&reference_path, None).unwrap(),
        reference_path,
        vocab,
    })
}

impl Fixture {
    fn write(&self, name: &str, e: &EmbeddingFile) -> PathBuf {
        let p = self.ctx.path(name);
        e.write(&p).unwrap();
        p
    }

    /// `tagfix -q check --vocab … --baseline baseline --candidate candidate`.
    fn check_cmd(&self, baseline: &Path, candidate: &Path) -> Command {
        let mut c = self.ctx.cmd("check");
        c.arg("--baseline")
            .arg(baseline)
            .arg("--candidate")
            .arg(candidate);
        c
    }

    /// Runs `tagfix check --format json` and returns (exit code, report or stderr).
    fn check(
        &self,
        baseline: &Path,
        candidate: &Path,
        extra: &[&str],
    ) -> (i32, serde_json::Value, String) {
        let out = self
            .check_cmd(baseline, candidate)
            .args(["--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        let code = out.status.code().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (code, json, stderr)
    }
}

/// 144 slots, seeded (as many as the RAM++ training set lacks in the demo).
fn slots_144(n: usize) -> Vec<usize> {
    sample_controls(&(0..n).collect::<Vec<_>>(), ControlSpec::Count(144), 144).unwrap()
}

fn failed_rules(report: &serde_json::Value) -> Vec<String> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["passed"].as_bool().unwrap())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn failing_slots(report: &serde_json::Value, rule: &str) -> Vec<usize> {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == rule)
        .unwrap()["failing_slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn identical_files_pass() {
    let Some(f) = fixture("identical_files_pass") else {
        return;
    };
    let copy = f.write("copy.safetensors", &f.reference);
    let (code, r, err) = f.check(&f.reference_path, &copy, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["mode"], "drift");
    assert_eq!(r["summary"]["changed_rows"], 0);
    assert_eq!(r["summary"]["cosine"]["min"], 1.0);
    assert_eq!(r["summary"]["overlap"][1]["k"], 10);
    assert_eq!(r["summary"]["overlap"][1]["dist"]["min"], 1.0);
    assert!(failed_rules(&r).is_empty());
}

#[test]
fn small_numerical_noise_passes() {
    let Some(f) = fixture("small_numerical_noise_passes") else {
        return;
    };
    // σ = 1e-4 per component on unit 384-d rows (relative error ≈ 0.2%): more than float32 round-off
    // or another ONNX Runtime version would cause, far less than a change of model or template.
    let mut noisy = f.reference.clone();
    add_noise(&mut noisy.values, 1e-4, 7);
    let p = f.write("noisy.safetensors", &noisy);
    let (code, r, err) = f.check(&f.reference_path, &p, &[]);
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert_eq!(r["summary"]["changed_rows"], 4585);
    assert!(r["summary"]["cosine"]["min"].as_f64().unwrap() > 0.9999);
    assert!(r["summary"]["overlap"][1]["dist"]["mean"].as_f64().unwrap() > 0.95);
}

#[test]
fn rows_from_another_model_fail_with_their_slots_named() {
    let Some(f) = fixture("rows_from_another_model_fail_with_their_slots_named") else {
        return;
    };
    // Another model embeds the same tags in a space unrelated to the original's basis. A random
    // rotation of the real rows is exactly that: each row keeps its neighbours *among the rotated
    // rows*, but sits in the wrong place among the 4441 untouched ones.
    let slots = slots_144(4585);
    let rot = random_rotation(384, 11);
    let mut patched = f.reference.clone();
    for &s in &slots {
        let r = rotate(f.reference.row(s), &rot);
        patched.row_mut(s).copy_from_slice(&r);
    }
    let p = f.write("other_model.safetensors", &patched);
    let (code, r, err) = f.check(&f.reference_path, &p, &["--slots", "0-4584"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        failed_rules(&r).contains(&"min_cosine".to_string()),
        "{r:#}"
    );
    assert_eq!(failing_slots(&r, "min_cosine"), slots);
    // The listed disagreements are those slots, with tags and both neighbour lists.
    let listed: Vec<u64> = r["disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["slot"].as_u64().unwrap())
        .collect();
    assert!(
        listed.iter().all(|s| slots.contains(&(*s as usize))),
        "{listed:?}"
    );
    let d = &r["disagreements"][0];
    assert!(d["tag"].is_string());
    assert_eq!(d["baseline_neighbours"].as_array().unwrap().len(), 10);
}

#[test]
fn rows_from_another_template_fail_with_their_slots_named() {
    let Some(f) = fixture("rows_from_another_template_fail_with_their_slots_named") else {
        return;
    };
    // A different prompt template moves every row of the same model by a shared offset (the template's
    // own contribution) while keeping the tag's part. Simulated as row' = normalise(row + 0.6·t) with
    // t one fixed unit direction for all 144 rows (as one template is), here a seeded random one.
    let slots = slots_144(4585);
    let mut t = vec![0f32; 384];
    add_noise(&mut t, 1.0, 4000);
    let t = normalised_rows(&t, 384);
    let mut patched = f.reference.clone();
    for &s in &slots {
        let row: Vec<f32> = f
            .reference
            .row(s)
            .iter()
            .zip(&t)
            .map(|(a, b)| a + 0.6 * b)
            .collect();
        patched
            .row_mut(s)
            .copy_from_slice(&normalised_rows(&row, 384));
    }
    let p = f.write("other_template.safetensors", &patched);
    let (code, r, err) = f.check(&f.reference_path, &p, &[]);
    assert_eq!(code, 1, "{err}");
    let failing = failing_slots(&r, "min_cosine");
    assert_eq!(failing, slots);
}

#[test]
fn shuffled_slot_order_fails_loudly() {
    let Some(f) = fixture("shuffled_slot_order_fails_loudly") else {
        return;
    };
    // Rows rotated by one slot (slot i holds the row of slot i+1): every row is a valid embedding, but
    // of the wrong tag. The check names the rows as moved, not merely changed.
    let mut shifted = f.reference.clone();
    for s in 0..4585 {
        shifted
            .row_mut(s)
            .copy_from_slice(f.reference.row((s + 1) % 4585));
    }
    let p = f.write("shifted.safetensors", &shifted);
    let out = f.check_cmd(&f.reference_path, &p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_misaligned_slots"), "{text}");
    assert!(text.contains("FAILED"), "{text}");
    let (_, r, _) = f.check(&f.reference_path, &p, &[]);
    assert_eq!(r["summary"]["misaligned_slots"], 4585);
    assert_eq!(r["slots"][0]["holds_baseline_slot"], 1);
    assert!(failed_rules(&r).contains(&"max_misaligned_slots".to_string()));
}

#[test]
fn hnsw_and_exact_agree_within_stated_recall() {
    let Some(f) = fixture("hnsw_and_exact_agree_within_stated_recall") else {
        return;
    };
    let dim = f.reference.dim;
    let unit = normalised_rows(&f.reference.values, dim);
    let rows = Rows::new(&unit, dim);
    let truth = exact(rows, rows, 10, Exclude::SameIndex);
    let config = SearchConfig {
        choice: SearchChoice::Hnsw,
        recall_sample: 500,
        ..Default::default()
    };
    let index = Index::build(rows, &config);
    let (got, stats) = index.search(rows, 10, Exclude::SameIndex);
    let full_recall = (0..rows.len())
        .map(|q| tagfix::consistency::knn::intersection(truth.ids(q), got.ids(q)))
        .sum::<usize>() as f64
        / (rows.len() * 10) as f64;
    assert!(full_recall >= 0.95, "HNSW recall@10 {full_recall}");
    // The sampled estimate the report states is close to the full recall.
    assert_eq!(stats.recall_sample, 500);
    assert!(
        (stats.recall - full_recall).abs() < 0.03,
        "{} vs {full_recall}",
        stats.recall
    );
    // Through the CLI the same file passes with HNSW and reports its recall.
    let copy = f.write("copy.safetensors", &f.reference);
    let (code, r, err) = f.check(&f.reference_path, &copy, &["--search", "hnsw"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["search"][0]["stats"]["method"], "hnsw");
    assert!(r["search"][0]["stats"]["recall"].as_f64().unwrap() >= 0.95);
    assert!(r["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == "min_search_recall"));
}

/// A patched file as `embed` writes it: `embeddings` with regenerated slots filled, `control` with
/// present slots re-embedded, provenance naming both and the base's sha256.
fn patched_file(
    f: &Fixture,
    name: &str,
    regenerate: &dyn Fn(usize, &[f32]) -> Vec<f32>,
    regenerated: &[usize],
    control_slots: &[usize],
) -> PathBuf {
    let base = &f.reference;
    let mut main = base.clone();
    for &s in regenerated {
        let row = regenerate(s, base.row(s));
        main.row_mut(s).copy_from_slice(&row);
    }
    let control: Vec<f32> = control_slots
        .iter()
        .flat_map(|&s| regenerate(s, base.row(s)))
        .collect();
    let vocab = tagfix::vocab::Vocabulary::from_file(&f.vocab).unwrap();
    let prov = Provenance {
        vocabulary_sha256: vocab.sha256.clone(),
        tag_count: 4585,
        rows_per_slot: 1,
        model: "simulated".into(),
        recipe: "single".into(),
        regenerated_slots: regenerated.to_vec(),
        control_slots: control_slots.to_vec(),
        base: Some(f.reference_path.display().to_string()),
        base_sha256: Some(tagfix::fsutil::sha256_file(&f.reference_path).unwrap()),
        ..Default::default()
    };
    let set = TensorSet {
        tensors: vec![
            (
                "embeddings".into(),
                Tensor::from_f32(vec![4585, base.dim], &main.values).unwrap(),
            ),
            (
                "control".into(),
                Tensor::from_f32(vec![control_slots.len(), base.dim], &control).unwrap(),
            ),
        ],
        metadata: prov.to_metadata(),
    };
    let p = f.ctx.path(name);
    tagfix::tensors::safetensors_io::write(&p, &set).unwrap();
    p
}

fn present_controls(regenerated: &[usize]) -> Vec<usize> {
    let present: Vec<usize> = (0..4585).filter(|s| !regenerated.contains(s)).collect();
    sample_controls(&present, ControlSpec::Count(300), 3).unwrap()
}

#[test]
fn consistency_mode_passes_a_faithful_patch_and_writes_plots() {
    let Some(f) = fixture("consistency_mode_passes_a_faithful_patch_and_writes_plots") else {
        return;
    };
    // The same pipeline again: rows equal the originals up to run-to-run noise.
    let regen = slots_144(4585);
    let controls = present_controls(&regen);
    let same = |s: usize, row: &[f32]| {
        let mut r = row.to_vec();
        add_noise(&mut r, 2e-5, s as u64);
        r
    };
    let p = patched_file(&f, "faithful.safetensors", &same, &regen, &controls);
    let plots = f.ctx.path("plots");
    let (code, r, err) = f.check(&f.reference_path, &p, &["--plot", plots.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert_eq!(r["mode"], "consistency");
    assert_eq!(r["summary"]["compared_slots"], 300);
    assert_eq!(r["summary"]["regenerated_slots"], 144);
    assert_eq!(r["summary"]["changed_untouched_rows"], 0);
    let share = r["calibration"]["trusted_share"].as_f64().unwrap();
    assert!(share >= 0.9, "{share}");
    for name in ["cosine", "knn_overlap", "neighbourhood_score"] {
        for ext in ["png", "svg"] {
            let file = plots.join(format!("{name}.{ext}"));
            let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(bytes.len() > 1000, "{}", file.display());
        }
    }
    // To look at them: TAGFIX_KEEP_PLOTS=DIR cargo test --test check consistency_mode_passes
    if let Some(keep) = std::env::var_os("TAGFIX_KEEP_PLOTS") {
        std::fs::create_dir_all(&keep).unwrap();
        for e in std::fs::read_dir(&plots).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), Path::new(&keep).join(e.file_name())).unwrap();
        }
    }
    // The plots the main job (`tagfix repair`) writes, looked at: drawn, and each legend names the
    // distributions shown and the rule's threshold.
    let control = "control (re-embedded present slots) (n = 300)";
    let regenerated = "regenerated rows vs the base file's old rows (n = 144)";
    for name in ["cosine", "knn_overlap", "neighbourhood_score"] {
        assert_drawn_png(&plots.join(format!("{name}.png")), (960, 560));
    }
    assert_texts(
        &plots.join("cosine.svg"),
        &[
            "Per-slot cosine to the baseline row",
            control,
            regenerated,
            "rule min_cosine: at least 0.99",
        ],
    );
    assert_texts(
        &plots.join("knn_overlap.svg"),
        &[
            "share of the 10 baseline neighbours kept",
            control,
            regenerated,
        ],
    );
    let threshold = format!(
        "trust threshold: the control rows' 1% quantile, {:.4}",
        r["calibration"]["threshold"].as_f64().unwrap()
    );
    assert_texts(
        &plots.join("neighbourhood_score.svg"),
        &[
            "base rows of the control slots (n = 300)",
            "control rows (n = 300)",
            "regenerated rows (n = 144)",
            &threshold,
        ],
    );
}

#[test]
fn consistency_mode_flags_a_wrong_model_and_a_touched_row() {
    let Some(f) = fixture("consistency_mode_flags_a_wrong_model_and_a_touched_row") else {
        return;
    };
    // The wrong model (random rotation, as above) regenerates both the control and the absent slots:
    // the control rows no longer match their originals, and the check says so by slot.
    let regen = slots_144(4585);
    let controls = present_controls(&regen);
    let rot = random_rotation(384, 5);
    let wrong = |_: usize, row: &[f32]| rotate(row, &rot);
    let p = patched_file(&f, "wrong.safetensors", &wrong, &regen, &controls);
    let (code, r, err) = f.check(&f.reference_path, &p, &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(failing_slots(&r, "min_cosine"), controls);
    assert!(failed_rules(&r).contains(&"min_knn_overlap".to_string()));

    // A faithful patch that also changed one untouched row.
    let same = |_: usize, row: &[f32]| row.to_vec();
    let p = patched_file(&f, "touched.safetensors", &same, &regen, &controls);
    let mut file = tagfix::tensors::safetensors_io::read(&p).unwrap();
    let t = &mut file
        .tensors
        .iter_mut()
        .find(|(n, _)| n == "embeddings")
        .unwrap()
        .1;
    let untouched = (0..4585).find(|s| !regen.contains(s)).unwrap();
    t.data[untouched * 384 * 4] ^= 1;
    tagfix::tensors::safetensors_io::write(&p, &file).unwrap();
    let (code, r, _) = f.check(&f.reference_path, &p, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        failing_slots(&r, "untouched_rows_identical"),
        vec![untouched]
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let Some(f) = fixture("bad_inputs_are_clear_errors") else {
        return;
    };
    let expect_error = |cand: &Path, extra: &[&str], needles: &[&str]| {
        let (code, _, err) = f.check(&f.reference_path, cand, extra);
        assert_eq!(code, 2, "{err}");
        for n in needles {
            assert!(err.contains(n), "missing `{n}` in: {err}");
        }
    };
    // Shape: one row missing.
    let short = EmbeddingFile::new(f.reference.values[..4584 * 384].to_vec(), 4584, 384);
    let p = f.write("short.safetensors", &short);
    expect_error(&p, &[], &["short.safetensors", "4584 rows"]);
    // Shape: another dimension (e.g. CLIP's 512).
    let wide = EmbeddingFile::new(vec![0.1; 4585 * 512], 4585, 512);
    let p = f.write("wide.safetensors", &wide);
    expect_error(&p, &[], &["wide.safetensors", "[4585, 512]", "[4585, 384]"]);
    // Dtype: f16 against f32.
    let mut half = f.reference.clone();
    half.dtype = DType::F16;
    let p = f.write("half.safetensors", &half);
    expect_error(&p, &[], &["half.safetensors", "dtype f16", "f32"]);
    // NaN / Inf rows, named by slot and tag.
    let mut nan = f.reference.clone();
    nan.row_mut(17)[3] = f32::NAN;
    nan.row_mut(4000)[0] = f32::INFINITY;
    let p = f.write("nan.safetensors", &nan);
    let tag17 = tagfix::vocab::Vocabulary::from_file(&f.vocab).unwrap().tags[17].clone();
    expect_error(
        &p,
        &[],
        &[
            "nan.safetensors",
            "NaN or Inf",
            "slot 17",
            &tag17,
            "slot 4000",
        ],
    );
    // A row of 3e38 values: its norm is beyond f32 (it once overflowed to "cosine 0", exit 1).
    let mut huge = f.reference.clone();
    huge.row_mut(5).fill(3e38);
    let p = f.write("huge.safetensors", &huge);
    expect_error(
        &p,
        &[],
        &["huge.safetensors", "L2 norm beyond f32's range", "slot 5"],
    );
    // Zero vectors.
    let mut zero = f.reference.clone();
    zero.row_mut(99).fill(0.0);
    let p = f.write("zero.safetensors", &zero);
    expect_error(&p, &[], &["zero.safetensors", "zero vector", "slot 99"]);
    // Another vocabulary: the provenance names a different tag list than --vocab.
    let mut other = f.reference.clone();
    other.metadata = Provenance {
        vocabulary_sha256: "0".repeat(64),
        tag_count: 4585,
        rows_per_slot: 1,
        ..Default::default()
    }
    .to_metadata();
    let p = f.write("other_vocab.safetensors", &other);
    expect_error(
        &p,
        &[],
        &[
            "other_vocab.safetensors",
            "another vocabulary",
            "ram_tag_list.txt",
        ],
    );
    // Consistency requested on a file without control rows.
    let copy = f.write("copy.safetensors", &f.reference);
    expect_error(
        &copy,
        &["--mode", "consistency"],
        &["copy.safetensors", "no `control` tensor"],
    );
    // A slot list beyond the vocabulary.
    expect_error(&copy, &["--slots", "4585"], &["out of range"]);
}

#[test]
fn report_formats_junit_markdown_github() {
    let Some(f) = fixture("report_formats_junit_markdown_github") else {
        return;
    };
    let mut bad = f.reference.clone();
    bad.row_mut(5).copy_from_slice(f.reference.row(6));
    let p = f.write("bad.safetensors", &bad);
    let junit = f.ctx.path("check.xml");
    let summary = f.ctx.path("summary.md");
    let out = f
        .check_cmd(&f.reference_path, &p)
        .args(["--format", "github"])
        .arg("--junit")
        .arg(&junit)
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let gh = String::from_utf8_lossy(&out.stdout);
    assert!(
        gh.lines().any(|l| l.starts_with("::error file=")
            && l.contains("min_cosine")
            && l.contains("slot 5")),
        "{gh}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
    assert_eq!(xml.matches("<failure").count(), 2, "{xml}"); // min_cosine and max_misaligned_slots
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.contains("❌ failed") && md.contains("| `min_cosine` |"),
        "{md}"
    );
}
