//! `tagfix plot RUN_DIR`: training curves and the health-event summary of a run.

use super::args::PlotArgs;
use super::ExitStatus;
use anyhow::Context;
use std::path::{Path, PathBuf};
use tagfix::monitor::{
    detect as detect_events, events_table, read_all_records, read_events, read_validation,
    DetectorConfig, HealthEvent, RunDir,
};
use tagfix::plot::{plot_run, Figure, PlotOptions};

/// Plots a run directory: the loss and norm figures from `metrics.jsonl` with the health events
/// (read from `events.jsonl`, or detected afresh when `detect` is set or the file is missing), and
/// the validation figure when `validation.jsonl` holds results. Returns the figures written.
pub fn write_plots(
    run_dir: &Path,
    out: Option<PathBuf>,
    detect: bool,
    thresholds: Option<&Path>,
    smooth: Option<usize>,
) -> anyhow::Result<(Vec<Figure>, Vec<HealthEvent>, usize)> {
    let dir = RunDir::open(run_dir)?;
    let records = read_all_records(&dir.metrics_path())?;
    let events = if detect || !dir.events_path().is_file() {
        let config = match thresholds {
            Some(path) => DetectorConfig::load(path)?,
            None => DetectorConfig::default(),
        };
        detect_events(&records, &config)
    } else {
        read_events(&dir.events_path())?
    };
    let validation = if dir.validation_path().is_file() {
        read_validation(&dir.validation_path())?
    } else {
        Vec::new()
    };
    let out = out.unwrap_or_else(|| dir.plots_dir());
    let title = run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let opts = PlotOptions {
        smooth,
        title,
        ..PlotOptions::default()
    };
    let figures = plot_run(&records, &events, &validation, &out, &opts)
        .with_context(|| format!("plotting {}", run_dir.display()))?;
    for f in &figures {
        tracing::info!("wrote {} and {}", f.png.display(), f.svg.display());
    }
    Ok((figures, events, records.len()))
}

pub fn run(args: PlotArgs) -> anyhow::Result<ExitStatus> {
    let (_, events, steps) = write_plots(
        &args.run_dir,
        args.out.clone(),
        args.detect,
        args.thresholds.as_deref(),
        args.smooth.map(|n| n as usize),
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else if events.is_empty() {
        println!("{steps} steps, no health events");
    } else {
        println!(
            "{} steps, {} health events:\n{}",
            steps,
            events.len(),
            events_table(&events)
        );
    }
    Ok(ExitStatus::Success)
}
