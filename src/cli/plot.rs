//! `tagfix plot RUN_DIR`: training curves and the health-event summary of a run.

use super::args::PlotArgs;
use super::ExitStatus;
use anyhow::Context;
use tagfix::monitor::{
    detect, events_table, read_all_records, read_events, DetectorConfig, RunDir,
};
use tagfix::plot::{plot_run, PlotOptions};

pub fn run(args: PlotArgs) -> anyhow::Result<ExitStatus> {
    let dir = RunDir::open(&args.run_dir)?;
    let records = read_all_records(&dir.metrics_path())?;
    let events = if args.detect || !dir.events_path().is_file() {
        let config = match &args.thresholds {
            Some(path) => DetectorConfig::load(path)?,
            None => DetectorConfig::default(),
        };
        detect(&records, &config)
    } else {
        read_events(&dir.events_path())?
    };
    let out = args.out.clone().unwrap_or_else(|| dir.plots_dir());
    let title = args
        .run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let opts = PlotOptions {
        smooth: args.smooth as usize,
        title,
        ..PlotOptions::default()
    };
    let figures = plot_run(&records, &events, &out, &opts)
        .with_context(|| format!("plotting {}", args.run_dir.display()))?;
    for f in &figures {
        tracing::info!("wrote {} and {}", f.png.display(), f.svg.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else if events.is_empty() {
        println!("{} steps, no health events", records.len());
    } else {
        println!(
            "{} steps, {} health events:\n{}",
            records.len(),
            events.len(),
            events_table(&events)
        );
    }
    Ok(ExitStatus::Success)
}
