//! `tagfix check`: drift and semantic-consistency gate for embedding files.

use super::args::CheckArgs;
use super::ExitStatus;
use anyhow::Context;
use std::io::Write;
use tagfix::consistency::{
    run_check, CheckOptions, CheckReport, EmbeddingInput, Policy, SearchConfig,
};
use tagfix::fsutil::{
    append_output, check_outputs, ensure_one_stdout, is_stdout, write_bytes_atomic,
};
use tagfix::report::check::{self as report, CheckFormat as Format};
use tagfix::vocab::Vocabulary;

/// The report files: checked before the comparison, never one of the inputs, one on stdout at most.
fn check_outputs_first(args: &CheckArgs, vocab: Option<&Vocabulary>) -> anyhow::Result<()> {
    let mut inputs = vec![args.baseline.as_path(), args.candidate.as_path()];
    inputs.extend(args.policy.as_deref());
    inputs.extend(vocab.map(|v| v.path.as_path()));
    let files = [&args.out, &args.json, &args.junit, &args.summary];
    check_outputs(files.into_iter().flatten().map(|p| p.as_path()), &inputs)?;
    let on_stdout = |p: &Option<std::path::PathBuf>| p.as_deref().is_some_and(is_stdout);
    ensure_one_stdout(&[
        ("the report", args.out.as_deref().is_none_or(is_stdout)),
        ("--json -", on_stdout(&args.json)),
        ("--junit -", on_stdout(&args.junit)),
        ("--summary -", on_stdout(&args.summary)),
    ])?;
    Ok(())
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitStatus> {
    Ok(status(&check(&args)?))
}

/// 0 when every rule holds, 1 when one fails.
pub fn status(report: &CheckReport) -> ExitStatus {
    if report.passed {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    }
}

/// The comparison the arguments ask for, its report written where they say; `check` and `repair`'s
/// check step both run through here.
pub fn check(args: &CheckArgs) -> anyhow::Result<CheckReport> {
    let policy = Policy::resolve(args.policy.as_deref(), args.thresholds.clone())?;
    let vocab = args
        .vocab
        .as_deref()
        .map(|v| Vocabulary::load(v).with_context(|| format!("loading vocabulary `{v}`")))
        .transpose()?;
    check_outputs_first(args, vocab.as_ref())?;
    let baseline = EmbeddingInput::load(&args.baseline, args.tensor.as_deref())
        .with_context(|| format!("reading baseline {}", args.baseline.display()))?;
    let candidate = EmbeddingInput::load(&args.candidate, args.tensor.as_deref())
        .with_context(|| format!("reading candidate {}", args.candidate.display()))?;
    let slots = match &args.slots {
        Some(list) => {
            let count = vocab.as_ref().map_or(baseline.file.rows, |v| v.len());
            Some(tagfix::vocab::slot_list::parse("--slots", list, count)?)
        }
        None => None,
    };
    let opts = CheckOptions {
        mode: args.mode.mode(),
        policy,
        slots,
        search: SearchConfig {
            choice: args.search,
            hnsw: tagfix::consistency::hnsw::HnswParams {
                ef_search: args.hnsw_ef,
                max_connections: args.hnsw_m.into(),
                ef_construction: args.hnsw_ef_construction,
            },
            recall_sample: args.recall_sample,
            ..Default::default()
        },
    };
    let report = run_check(&baseline, &candidate, vocab.as_ref(), &opts)?;

    let text = report::render(&report, args.format)?;
    match &args.out {
        Some(path) => write_bytes_atomic(path, text.as_bytes())?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    if let Some(path) = &args.json {
        write_bytes_atomic(path, report::render(&report, Format::Json)?.as_bytes())?;
    }
    if let Some(path) = &args.junit {
        write_bytes_atomic(path, report::render(&report, Format::Junit)?.as_bytes())?;
    }
    if let Some(path) = &args.summary {
        // Appended, as CI step summaries collect several steps' output.
        let md = report::render(&report, Format::Markdown)?;
        append_output(path, md.as_bytes()).context("appending the summary")?;
    }
    if let Some(dir) = &args.plot {
        for f in report::plots::check(&report, dir)? {
            tracing::info!("wrote {}", f.display());
        }
    }
    Ok(report)
}
