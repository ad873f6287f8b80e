//! `tagfix diff`: audit annotations against a vocabulary; report, slot manifest, exit status.

use super::args::{DiffArgs, GlobalArgs, OutputFormat};
use super::{progress_bar, ExitStatus};
use anyhow::Context;
use tagfix::annotations::ScanOptions;
use tagfix::diff::{diff, DiffOptions, SidecarSpec};
use tagfix::fsutil::{check_outputs, ensure_one_stdout, is_stdout, write_atomic};
use tagfix::report::{write_diff, Format};
use tagfix::vocab::{SidecarKind, Vocabulary};

pub fn run(args: DiffArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let vocab = Vocabulary::load(&args.vocab)
        .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
    let specs = |list: &[(String, std::path::PathBuf)]| -> Vec<SidecarSpec> {
        list.iter()
            .map(|(name, path)| SidecarSpec {
                name: name.clone(),
                path: path.clone(),
                kind: SidecarKind::for_name(name),
            })
            .collect()
    };
    let (sidecars, sidecars_source) = match &vocab.preset {
        _ if !args.sidecars.is_empty() => (specs(&args.sidecars), None),
        Some(preset) if !args.no_preset_sidecars && !preset.sidecars.is_empty() => (
            specs(&preset.sidecars),
            Some(format!(
                "the sidecars of preset `{}` found beside {} (--no-preset-sidecars to skip)",
                preset.name,
                preset.path.display()
            )),
        ),
        _ => (Vec::new(), None),
    };

    let mut inputs: Vec<&std::path::Path> = args.data.iter().map(|p| p.as_path()).collect();
    inputs.extend(sidecars.iter().map(|s| s.path.as_path()));
    inputs.extend(args.tags.as_deref());
    inputs.push(&vocab.path);
    check_outputs(
        args.out.iter().chain(&args.report).map(|p| p.as_path()),
        &inputs,
    )?;
    ensure_one_stdout(&[
        ("--out -", args.out.as_deref().is_some_and(is_stdout)),
        ("the report", args.report.as_deref().is_none_or(is_stdout)),
    ])?;

    let mut total = 0;
    for p in &args.data {
        total += std::fs::metadata(p)
            .with_context(|| format!("{}: cannot read annotation file", p.display()))?
            .len();
    }
    let progress = progress_bar(global, "diff: annotations", total, true);
    let opts = DiffOptions {
        data: args.data.clone(),
        sidecars,
        sidecars_source,
        derived: args.tags.clone(),
        scan: ScanOptions {
            keep_going: args.keep_going,
            max_details: args.max_problems,
            progress: progress.clone(),
            ..ScanOptions::new(vocab.len())
        },
        rarest: args.rarest,
    };
    let result = diff(&vocab, &opts);
    progress.finish_and_clear();
    let (report, manifest) = result?;

    if let Some(out) = &args.out {
        manifest.write(out).context("writing the slot manifest")?;
        tracing::info!("slot manifest written to {}", out.display());
    }
    let format = match args.format {
        OutputFormat::Table => Format::Table,
        OutputFormat::Json => Format::Json,
        OutputFormat::Csv => Format::Csv,
        OutputFormat::Markdown => Format::Markdown,
    };
    match &args.report {
        Some(path) => {
            write_atomic(path, |w| write_diff(&report, format, w)).context("writing the report")?
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            write_diff(&report, format, &mut lock)
                .and_then(|_| std::io::Write::flush(&mut lock))
                .context("writing the report to stdout")?;
        }
    }

    let mut failed = false;
    for check in &args.fail_on {
        if let Some(why) = report.check(*check) {
            eprintln!("check failed (--fail-on {}): {why}", check.name());
            failed = true;
        }
    }
    Ok(if failed {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}
