//! Training curves of a run directory (`tagfix plot RUN_DIR`): per loss term a figure with the raw
//! and the weighted value (one panel when the weight is 1 throughout), each smoothed (EMA, span in
//! the legend, by default a tenth of the run) over a faint per-step trace, with the learning rate on
//! a second axis and the detected health events shaded; plus an overview of the weighted terms and
//! the total, the gradient norms per module group, and (when the run validated) the validation mAP
//! and precision / recall / F1. Legends go to the corner with the fewest curve points under them.
//! PNG and SVG, written atomically.
//!
//! `panels` turns a run's records into what each figure shows, `draw` draws it with plotters, `font`
//! finds the font; `histogram` draws the check report's figures.

mod draw;
mod font;
pub mod histogram;
mod panels;

use crate::error::{Error, ErrorKind, Result};
use crate::monitor::{HealthEvent, LossTerm, StepRecord, ValidationRecord};
use std::path::{Path, PathBuf};

use draw::render;
use draw::render_atomic;
pub use font::{ensure_font, FontError, FONT_ENV};
use panels::{
    norm_panels, overview_panel, pace_panels, term_panels, title_prefix, validation_panels,
};

/// Figure options.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOptions {
    /// EMA span in steps (smoothing factor 2 / (span + 1)); 1 draws the raw values only; `None`:
    /// [`auto_smooth`] of the run's length.
    pub smooth: Option<usize>,
    /// PNG size in pixels (the SVG has the same size in user units).
    pub size: (u32, u32),
    /// Title prefix (usually the run directory's name).
    pub title: String,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            smooth: None,
            size: (1400, 900),
            title: String::new(),
        }
    }
}

/// Why a run could not be plotted.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the run has no steps to plot")]
    NoSteps,

    #[error(transparent)]
    Font(#[from] FontError),

    /// plotters reports its backends' errors as text.
    #[error("{path}: drawing failed: {problem}")]
    Draw { path: PathBuf, problem: String },
}

impl PlotError {
    /// An empty run is a usage error; a missing font is the machine's.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PlotError::NoSteps => ErrorKind::Usage,
            PlotError::Font(_) => ErrorKind::Environment,
            PlotError::Draw { .. } => ErrorKind::Io,
        }
    }
}

/// The default EMA span for a run of `steps` steps: a tenth of the run, at most 50, so a short run's
/// smoothed curve follows its values instead of lagging at the first steps' level.
pub fn auto_smooth(steps: usize) -> usize {
    (steps / 10).clamp(1, 50)
}

/// Exponential moving average with span `n` (α = 2/(n+1)), started at the first value; non-finite
/// values are skipped (the average carries over).
pub fn ema(values: &[f64], n: usize) -> Vec<f64> {
    let alpha = 2.0 / (n.max(1) as f64 + 1.0);
    let mut out = Vec::with_capacity(values.len());
    let mut acc: Option<f64> = None;
    for &v in values {
        if v.is_finite() {
            acc = Some(match acc {
                Some(a) => a + alpha * (v - a),
                None => v,
            });
        }
        out.push(acc.unwrap_or(f64::NAN));
    }
    out
}

/// The files written for one figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Writes every figure of a run into `out_dir` (`validation` may be empty: no validation figure);
/// returns them in the order written.
pub fn plot_run(
    records: &[StepRecord],
    events: &[HealthEvent],
    validation: &[ValidationRecord],
    out_dir: &Path,
    opts: &PlotOptions,
) -> Result<Vec<Figure>> {
    if records.is_empty() {
        return Err(PlotError::NoSteps.into());
    }
    ensure_font()?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let opts = &PlotOptions {
        smooth: Some(opts.smooth.unwrap_or_else(|| auto_smooth(records.len()))),
        ..opts.clone()
    };
    let lr: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.lr)).collect();
    let mut figures = Vec::new();

    for term in LossTerm::ALL {
        if records.iter().all(|r| r.loss.get(term).is_none()) {
            continue;
        }
        let panels = term_panels(records, events, term);
        let title = format!("{}{term} loss", title_prefix(opts));
        figures.push(render(out_dir, term.name(), &title, &panels, &lr, opts)?);
    }
    let title = format!("{}losses", title_prefix(opts));
    let overview = overview_panel(records, events);
    figures.push(render(out_dir, "total", &title, &[overview], &lr, opts)?);
    let title = format!("{}gradient and update norms", title_prefix(opts));
    let panels = norm_panels(records, events);
    figures.push(render(out_dir, "grad_norm", &title, &panels, &lr, opts)?);
    let title = format!("{}pace", title_prefix(opts));
    figures.push(render(
        out_dir,
        "pace",
        &title,
        &pace_panels(records),
        &lr,
        opts,
    )?);

    if !validation.is_empty() {
        let title = format!(
            "{}validation on {}",
            title_prefix(opts),
            validation[validation.len() - 1].benchmark
        );
        let panels = validation_panels(validation, events);
        figures.push(render(out_dir, "validation", &title, &panels, &lr, opts)?);
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_starts_at_first_value_and_skips_non_finite() {
        // span 3: alpha = 0.5 -> 2, 2 + 0.5·(4-2) = 3, (NaN skipped) 3, 3 + 0.5·(7-3) = 5
        assert_eq!(ema(&[2.0, 4.0, f64::NAN, 7.0], 3), vec![2.0, 3.0, 3.0, 5.0]);
        assert_eq!(ema(&[1.0, 9.0], 1), vec![1.0, 9.0]);
    }

    #[test]
    fn the_default_span_is_a_tenth_of_the_run_at_most_50() {
        assert_eq!(auto_smooth(5), 1);
        assert_eq!(auto_smooth(40), 4);
        assert_eq!(auto_smooth(800), 50);
    }
}
