//! `tagfix repair`: the whole repair in one command — diff → embed → check → a short train — on the
//! user's data or on the embedded default (the `ram` vocabulary and a synthesized training set), ending
//! with a report of what was found, repaired, checked and trained and where every output is.
//!
//! The short train needs images whose content determines their tags. The synthesized annotation
//! records have none, so the embedded default adds a small synthetic image set (coloured shapes tagged
//! with the vocabulary's colour and shape slots) to the audited data and trains the small `tiny`
//! RAM++ on it, with the repaired label embeddings and the slot manifest.
//!
//! Each step runs the very subcommand a user would run by hand (same flags, same outputs), so the
//! report's "run it yourself" lines are exact.

use super::args::{Cli, RepairArgs};
use super::ExitStatus;
use anyhow::Context;
use clap::Parser;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tagfix::manifest::SlotManifest;
use tagfix::report::check::{num, op_symbol};
use tagfix::tensors::{EmbeddingFile, Provenance};

/// One step: the command line it ran and how it ended.
struct Step {
    name: &'static str,
    argv: Vec<String>,
    status: ExitStatus,
    seconds: f64,
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `tagfix <args>` in-process, as the user would from the shell.
fn run_step(
    name: &'static str,
    argv: Vec<String>,
    steps: &mut Vec<Step>,
) -> anyhow::Result<ExitStatus> {
    eprintln!("\n==> {name}: tagfix {}", argv.join(" "));
    let cli =
        Cli::try_parse_from(std::iter::once("tagfix".to_string()).chain(argv.iter().cloned()))
            .with_context(|| format!("building the `{name}` step"))?;
    let started = std::time::Instant::now();
    let status = super::run(cli).with_context(|| format!("step `{name}` failed"))?;
    steps.push(Step {
        name,
        argv,
        status,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(status)
}

pub fn run(args: RepairArgs) -> anyhow::Result<ExitStatus> {
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut steps = Vec::new();

    // 1. The data: the user's files, or a synthesized RAM-format set with absent slots.
    let data: Vec<PathBuf> = if args.data.is_empty() {
        let file = out.join("train.json");
        run_step(
            "synth",
            vec![
                "synth".into(),
                "--vocab".into(),
                args.vocab.clone(),
                "--records".into(),
                args.records.to_string(),
                "--absent".into(),
                args.absent.to_string(),
                "--seed".into(),
                args.seed.to_string(),
                "--out".into(),
                path_arg(&file),
            ],
            &mut steps,
        )?;
        vec![file]
    } else {
        args.data.clone()
    };
    let train_plan = plan_training(&args);
    let image_set = out.join("image-set");
    let mut data = data;
    if train_plan.is_ok() {
        run_step(
            "synth-images",
            vec![
                "synth-images".into(),
                "--vocab".into(),
                args.vocab.clone(),
                "--count".into(),
                args.train_images.to_string(),
                "--descriptions".into(),
                "1".into(),
                "--seed".into(),
                args.seed.to_string(),
                "--out".into(),
                path_arg(&image_set),
            ],
            &mut steps,
        )?;
        data.push(image_set.join("train.json"));
    }

    // 2. diff → slot manifest.
    let manifest_path = out.join("manifest.json");
    let mut diff = vec!["diff".into(), "--vocab".into(), args.vocab.clone()];
    diff.push("--data".into());
    diff.extend(data.iter().map(|p| path_arg(p)));
    diff.extend([
        "--out".into(),
        path_arg(&manifest_path),
        "--format".into(),
        "markdown".into(),
        "--report".into(),
        path_arg(&out.join("diff.md")),
    ]);
    if args.keep_going {
        diff.push("--keep-going".into());
    }
    run_step("diff", diff, &mut steps)?;
    let manifest = SlotManifest::read(&manifest_path)?;

    // 3. embed → patched embedding file in the base file's slot layout.
    let base = match &args.base {
        Some(b) => b.clone(),
        None => default_base().context(
            "no --base given and no default base found: pass the label-embedding file to patch with --base FILE",
        )?,
    };
    let embeddings = out.join("embeddings.safetensors");
    run_step(
        "embed",
        vec![
            "embed".into(),
            "--vocab".into(),
            args.vocab.clone(),
            "--model".into(),
            args.model.clone(),
            "--manifest".into(),
            path_arg(&manifest_path),
            "--absent".into(),
            "--base".into(),
            path_arg(&base),
            "--control".into(),
            args.control.clone(),
            "--seed".into(),
            args.seed.to_string(),
            "--device".into(),
            args.embed_device.to_string(),
            "--out".into(),
            path_arg(&embeddings),
        ],
        &mut steps,
    )?;
    let patched = EmbeddingFile::read(
        &embeddings,
        Some(tagfix::tensors::provenance::EMBEDDINGS_TENSOR),
    )?;
    let provenance = Provenance::from_metadata(&patched.metadata, &embeddings)?
        .context("embed wrote no provenance metadata")?;

    // 4. check: do the regenerated rows sit in the base file's semantic space (calibrated by the
    //    control rows), and are all other rows untouched?
    let check_json = out.join("check.json");
    run_step(
        "check",
        vec![
            "check".into(),
            "--baseline".into(),
            path_arg(&base),
            "--candidate".into(),
            path_arg(&embeddings),
            "--vocab".into(),
            args.vocab.clone(),
            "--format".into(),
            "markdown".into(),
            "--out".into(),
            path_arg(&out.join("check.md")),
            "--json".into(),
            path_arg(&check_json),
            "--plot".into(),
            path_arg(&out.join("plots")),
        ],
        &mut steps,
    )?;
    let check: tagfix::consistency::report::CheckReport =
        serde_json::from_value(read_json(&check_json)?)
            .with_context(|| format!("parsing {}", check_json.display()))?;

    // 5. A short train of the small RAM++ with the repaired label embeddings.
    let run_dir = out.join("train");
    let trained = match &train_plan {
        Ok(()) => {
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir)
                    .with_context(|| format!("clearing the previous run {}", run_dir.display()))?;
            }
            let argv: Vec<String> = vec![
                "train".into(),
                "--model".into(),
                "tiny".into(),
                "--vocab".into(),
                args.vocab.clone(),
                "--data".into(),
                path_arg(&image_set.join("train.json")),
                "--images".into(),
                path_arg(&image_set.join("images")),
                "--manifest".into(),
                path_arg(&manifest_path),
                "--label-embed".into(),
                path_arg(&embeddings),
                "--allow-random-encoder".into(),
                "--absent".into(),
                ABSENT_POLICY.into(),
                "--batch-size".into(),
                "8".into(),
                "--max-steps".into(),
                args.train_steps.to_string(),
                "--lr".into(),
                "2e-3".into(),
                "--set".into(),
                "warmup_steps=5".into(),
                "--set".into(),
                "warmup_lr=1e-4".into(),
                // One libtorch thread: OpenMP workers spin-wait when the cores are busy (measured
                // 8 s/step with 2 threads on a loaded 2-core machine, 2 s/step with 1).
                "--threads".into(),
                "1".into(),
                "--workers".into(),
                "1".into(),
                "--seed".into(),
                args.seed.to_string(),
                "--device".into(),
                device_name(args.train_device).into(),
                // The training curves, into RUN_DIR/plots.
                "--plot".into(),
                "--out".into(),
                path_arg(&run_dir),
            ];
            run_step("train", argv, &mut steps)?;
            Ok(TrainOutcome::read(&run_dir, &image_set.join("train.json"))?)
        }
        Err(why) => Err(why.clone()),
    };

    let report = render(
        &args,
        &steps,
        &manifest,
        &provenance,
        &base,
        &embeddings,
        &check,
        &trained,
    );
    let report_path = out.join("REPORT.md");
    tagfix::fsutil::write_bytes_atomic(&report_path, report.as_bytes())?;
    println!("{report}");
    eprintln!("report: {}", report_path.display());
    if steps.iter().any(|s| s.status != ExitStatus::Success) {
        return Ok(ExitStatus::Failure);
    }
    Ok(ExitStatus::Success)
}

/// The `--device` value of `tagfix train` for a device kind.
fn device_name(d: tagfix::train::config::DeviceKind) -> &'static str {
    match d {
        tagfix::train::config::DeviceKind::Cpu => "cpu",
        tagfix::train::config::DeviceKind::Cuda => "cuda",
    }
}

/// Absent-slot policy of the short train.
const ABSENT_POLICY: &str = "smooth=0.05";

/// Whether the short train can run, or why not (stated in the report).
fn plan_training(args: &RepairArgs) -> Result<(), String> {
    if args.train_steps == 0 {
        return Err("skipped (`--train-steps 0`).".into());
    }
    if !cfg!(feature = "train") {
        return Err("not run: this tagfix was built without the `train` feature (libtorch). Build it with \
             `cargo build --release --all-features` (scripts/setup.sh installs libtorch) and rerun."
            .into());
    }
    if !args.data.is_empty() {
        return Err("not run on your data from here: `repair` trains only on the embedded default's synthetic \
             images. Train RAM++ on your images with the commands under \"On real data and a GPU\" below."
            .into());
    }
    Ok(())
}

/// What the short train produced, from its run directory (`summary.json` written by `tagfix train`).
struct TrainOutcome {
    run_dir: PathBuf,
    summary: serde_json::Value,
    /// Slots the training images carry.
    drawn_slots: Vec<usize>,
    images: usize,
}

fn read_json(p: &Path) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("parsing {}", p.display()))
}

impl TrainOutcome {
    fn read(run_dir: &Path, annotations: &Path) -> anyhow::Result<Self> {
        let summary = read_json(&run_dir.join("summary.json"))?;
        let (mut drawn_slots, mut images) = (Vec::new(), 0);
        let spec = tagfix::annotations::RecordSpec::labels(u32::MAX as usize);
        for record in tagfix::annotations::Records::open(annotations, spec)? {
            drawn_slots.extend(record?.union_label_id.into_iter().map(|s| s as usize));
            images += 1;
        }
        drawn_slots.sort_unstable();
        drawn_slots.dedup();
        Ok(TrainOutcome {
            run_dir: run_dir.to_path_buf(),
            summary,
            drawn_slots,
            images,
        })
    }

    /// Mean predicted probability over `slots` (from the summary's per-slot means).
    fn mean_probability(&self, slots: &[usize]) -> Option<f64> {
        let p = self.summary["slot_probabilities"].as_array()?;
        let v: Vec<f64> = slots.iter().filter_map(|&s| p.get(s)?.as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// The MiniLM embeddings of the whole RAM vocabulary from the shared material, standing in for a
/// model's original label-embedding file in the embedded default.
fn default_base() -> Option<PathBuf> {
    let p = tagfix::fsutil::shared_dir()?.join("reference/minilm_ram_single_template.safetensors");
    p.is_file().then_some(p)
}

fn render(
    args: &RepairArgs,
    steps: &[Step],
    manifest: &SlotManifest,
    provenance: &Provenance,
    base: &Path,
    embeddings: &Path,
    check: &tagfix::consistency::report::CheckReport,
    trained: &Result<TrainOutcome, String>,
) -> String {
    let mut r = String::new();
    let s = &manifest.summary;
    let _ = writeln!(r, "# tagfix repair report\n");
    let _ = writeln!(r, "## Found (diff)\n");
    let _ = writeln!(
        r,
        "- {} records in {} file(s) cover {} of {} slots; **{} slots are absent**; {} problems.",
        s.records,
        manifest.inputs.len(),
        s.present,
        s.slots,
        s.absent,
        s.problems
    );
    let absent: Vec<String> = manifest
        .slots
        .iter()
        .filter(|e| e.status == tagfix::manifest::SlotStatus::Absent)
        .take(12)
        .map(|e| format!("{} `{}`", e.slot, e.tag))
        .collect();
    if !absent.is_empty() {
        let more = s.absent.saturating_sub(absent.len());
        let _ = writeln!(
            r,
            "- Absent slots: {}{}",
            absent.join(", "),
            if more > 0 {
                format!(" … and {more} more")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(r, "\n## Repaired (embed)\n");
    let _ = writeln!(
        r,
        "- {} rows regenerated in place with `{}` (recipe `{}`, {}); every other row of `{}` copied bit-identically.",
        provenance.regenerated_slots.len(),
        provenance.model,
        provenance.recipe,
        provenance.pooling,
        base.display()
    );
    let _ = writeln!(
        r,
        "- {} present slots re-embedded as a control set for `check`.",
        provenance.control_slots.len()
    );
    let _ = writeln!(r, "\n## Checked (check, {:?} mode)\n", check.mode);
    let _ = writeln!(
        r,
        "- Verdict: **{}** ({} of {} rules hold).",
        if check.passed { "PASS" } else { "FAIL" },
        check.rules.iter().filter(|x| x.passed).count(),
        check.rules.len()
    );
    for rule in &check.rules {
        let _ = writeln!(
            r,
            "  - {} `{}`: {} (required {} {}) — {}",
            if rule.passed { "ok  " } else { "FAIL" },
            rule.id,
            num(rule.observed),
            op_symbol(&rule.op),
            num(rule.threshold),
            rule.description
        );
    }
    if let Some(c) = &check.calibration {
        let _ = writeln!(
            r,
            "- Calibration: {:.1}% of regenerated rows are trusted (their neighbourhood score is at least the control set's {:.0}% quantile, {:.3}).",
            100.0 * c.trusted_share,
            100.0 * c.quantile,
            c.threshold
        );
    }
    render_trained(&mut r, manifest, trained, args.train_device);
    let _ = writeln!(r, "\n## Outputs\n");
    let o = &args.out;
    let mut outputs = vec![
        ("slot manifest", o.join("manifest.json")),
        ("diff report", o.join("diff.md")),
        ("patched embeddings", embeddings.to_path_buf()),
        ("check report", o.join("check.md")),
        ("check report (JSON)", o.join("check.json")),
        ("check plots (PNG, SVG)", o.join("plots")),
    ];
    if let Ok(t) = trained {
        outputs.push(("training images and annotations", o.join("image-set")));
        outputs.push((
            "training run (metrics.jsonl, events.jsonl, summary.json)",
            t.run_dir.clone(),
        ));
        outputs.push(("training curves (PNG, SVG)", t.run_dir.join("plots")));
        if let Some(c) = t.summary["checkpoint"].as_str() {
            outputs.push(("checkpoint (model, optimizer, state)", PathBuf::from(c)));
        }
    }
    for (what, p) in outputs {
        let _ = writeln!(r, "- {what}: `{}`", p.display());
    }
    let _ = writeln!(r, "\n## Steps (run them yourself)\n\n```sh");
    for step in steps {
        let _ = writeln!(
            r,
            "tagfix {}    # {}: {:?}, {:.1} s",
            step.argv.join(" "),
            step.name,
            step.status,
            step.seconds
        );
    }
    let _ = writeln!(r, "```");
    let _ = writeln!(
        r,
        "\n## On real data and a GPU\n\n\
         Audit and repair your annotation files against the model's own label-embedding file (CLIP space, as \
         the official checkpoints expect), then train RAM++ on your images with the repaired embeddings:\n\n\
         ```sh\n\
         tagfix repair --vocab {vocab} --data ram_4m_part1.json.gz ram_4m_part2.json.gz \\\n    \
         --model clip --base ram_plus_tag_embedding_class_4585_des_51.pth --out repair-run\n\
         tagfix teacher --data ram_4m_part1.json.gz ram_4m_part2.json.gz --images IMAGE_ROOT \\\n    \
         --image-model clip-vision --text-model clip --device cuda --out teacher.safetensors\n\
         tagfix train --config ../shared/ram/configs/finetune.yaml --data ram_4m_part1.json.gz ram_4m_part2.json.gz \\\n    \
         --images IMAGE_ROOT --manifest repair-run/manifest.json --label-embed repair-run/embeddings.safetensors \\\n    \
         --teacher teacher.safetensors --init ram_plus_swin_large_14m.pth --vocab {vocab} --device cuda --out runs/ft\n\
         tagfix plot runs/ft   # loss curves and training-health events\n\
         ```\n\n\
         `--model clip` needs a CLIP text tower exported to ONNX (`scripts/export_clip_text_onnx.py`; 512-d, what \
         the official presets take), `tagfix teacher` also the image tower (`scripts/export_clip_image_onnx.py`; \
         or `tagfix train --teacher online`) and `--device cuda` the GPU build of tagfix (`scripts/setup-gpu.sh`: torch's CUDA \
         libraries from PyPI, libtorch_cuda linked; `tagfix doctor --require train,cuda` confirms it sees the GPU). \
         On the embedded default, `--train-device cuda` runs the short training on the GPU and `--embed-device cuda` the \
         text encoder (with the onnxruntime-gpu library). docs/guide.md walks through \
         every step (audit, repair, verify, gate in CI, train, monitor).",
        vocab = args.vocab,
    );
    r
}

fn render_trained(
    r: &mut String,
    manifest: &SlotManifest,
    trained: &Result<TrainOutcome, String>,
    device: tagfix::train::config::DeviceKind,
) {
    let _ = writeln!(r, "\n## Trained (train)\n");
    let t = match trained {
        Ok(t) => t,
        Err(why) => {
            let _ = writeln!(r, "- Short training run {why}");
            return;
        }
    };
    let s = &t.summary;
    let absent = manifest.absent_slots();
    let drawn: Vec<String> = t
        .drawn_slots
        .iter()
        .map(|&i| format!("{i} `{}`", manifest.slots[i].tag))
        .collect();
    let _ = writeln!(
        r,
        "- The small `tiny` RAM++ (Swin 64×64 px, tagging head hidden 32, from random weights) trained {} steps of \
         batch 8 on {} with the patched label embeddings above, on {} synthetic images of coloured shapes \
         tagged with slots {} (the synthesized annotation records have no pixels).",
        s["steps"].as_u64().unwrap_or(0),
        match device {
            tagfix::train::config::DeviceKind::Cpu => "CPU (one libtorch thread)",
            tagfix::train::config::DeviceKind::Cuda => "CUDA",
        },
        t.images,
        drawn.join(", ")
    );
    let _ = writeln!(
        r,
        "- Loss (raw value per batch: the tag loss is the asymmetric loss summed over the batch's images × {} tags), \
         mean over the first → the last quarter of the steps (at most 20 each):",
        manifest.slots.len()
    );
    if let (Some(early), Some(late)) = (s["early"].as_object(), s["late"].as_object()) {
        for (term, e) in early {
            let (e, l) = (
                e.as_f64().unwrap_or(f64::NAN),
                late.get(term).and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
            );
            let _ = writeln!(r, "  - `{term}`: {} → {}", sig4(e), sig4(l));
        }
    }
    if let (Some(d), Some(a)) = (
        t.mean_probability(&t.drawn_slots),
        t.mean_probability(&absent),
    ) {
        let _ = writeln!(
            r,
            "- Mean predicted probability on the training images: {d:.3} over the drawn tags, {a:.3} over the {} absent slots \
             (absent-slot policy `{ABSENT_POLICY}`: their targets are 0.05, not 0).",
            absent.len()
        );
    }
    let _ = writeln!(
        r,
        "- Only the tag loss trains here: alignment and distillation need teacher features (CLIP image features and \
         caption embeddings, `--teacher`) in the label embeddings' space. Health events: {}. The curves (loss, \
         gradient and update norms, learning rate) are in `{}`; `tagfix plot {}` redraws them.",
        s["health_events"].as_array().map_or(0, Vec::len),
        t.run_dir.join("plots").display(),
        t.run_dir.display()
    );
}

/// Four significant digits (`185.3`, `10.69`, `0.04713`).
fn sig4(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    format!("{x:.decimals$}")
}
