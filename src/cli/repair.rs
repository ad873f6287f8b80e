//! `tagfix repair`: the whole repair in one command — diff → embed → check — on the
//! user's data or on the embedded default (the `ram` vocabulary and a synthesized training set), ending
//! with a report of what was found, repaired, checked and trained and where every output is.
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
use tagfix::tensors::{EmbeddingFile, Provenance};

/// One step: the command line it ran and how it ended.
struct Step {
    name: &'static str,
    argv: Vec<String>,
    status: ExitStatus,
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
    let status = super::run(cli).with_context(|| format!("step `{name}` failed"))?;
    steps.push(Step { name, argv, status });
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
    let check: tagfix::consistency::report::CheckReport = serde_json::from_slice(
        &std::fs::read(&check_json).with_context(|| format!("reading {}", check_json.display()))?,
    )
    .with_context(|| format!("parsing {}", check_json.display()))?;

    let report = render(
        &args,
        &steps,
        &manifest,
        &provenance,
        &base,
        &embeddings,
        &check,
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
            "  - {} `{}`: observed {:.4} {} {} — {}",
            if rule.passed { "ok  " } else { "FAIL" },
            rule.id,
            rule.observed,
            rule.op,
            rule.threshold,
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
    let _ = writeln!(r, "\n## Outputs\n");
    let o = &args.out;
    for (what, p) in [
        ("slot manifest", o.join("manifest.json")),
        ("diff report", o.join("diff.md")),
        ("patched embeddings", embeddings.to_path_buf()),
        ("check report", o.join("check.md")),
        ("check report (JSON)", o.join("check.json")),
        ("check plots (PNG, SVG)", o.join("plots")),
    ] {
        let _ = writeln!(r, "- {what}: `{}`", p.display());
    }
    let _ = writeln!(r, "\n## Steps (run them yourself)\n\n```sh");
    for step in steps {
        let _ = writeln!(
            r,
            "tagfix {}    # {}: {:?}",
            step.argv.join(" "),
            step.name,
            step.status
        );
    }
    let _ = writeln!(r, "```");
    let _ = writeln!(
        r,
        "\n## On real data and a GPU\n\n\
         ```sh\n\
         tagfix repair --vocab ram --data ram_4m_part1.json.gz ram_4m_part2.json.gz \\\n    \
         --model clip --base ram_plus_tag_embedding_class_4585_des_51.pth --out repair-run\n\
         tagfix train --help   # training RAM++ on the repaired set: see docs/guide.md\n\
         ```\n\
         `--model clip` needs a CLIP text tower exported to ONNX (scripts/export_clip_text_onnx.py); \
         see docs/guide.md for the whole walk-through."
    );
    r
}
