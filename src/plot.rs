//! Training curves of a run directory (`tagfix plot RUN_DIR`): per loss term a figure with the raw
//! and the weighted value (one panel when the weight is 1 throughout), each smoothed (EMA, span in
//! the legend, by default a tenth of the run) over a faint per-step trace, with the learning rate on
//! a second axis and the detected health events shaded; plus an overview of the weighted terms and
//! the total, the gradient norms per module group, and (when the run validated) the validation mAP
//! and precision / recall / F1. Legends go to the corner with the fewest curve points under them.
//! PNG and SVG, written atomically.

pub mod histogram;

use crate::error::{Error, ErrorKind, Result};
use crate::monitor::{EventKind, HealthEvent, LossTerm, ModuleGroup, StepRecord, ValidationRecord};
use plotters::chart::DualCoordChartContext;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// Environment variable naming a TrueType font for plot text.
pub const FONT_ENV: &str = "TAGFIX_FONT";

/// Where a sans-serif TrueType font is looked for when `$TAGFIX_FONT` is not set (Debian's
/// `fonts-dejavu-core`, which `scripts/setup.sh` installs, first).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

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

/// Why no font could be registered (kept, and cloned, for every later figure of the process).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FontError {
    #[error(
        "no TrueType font for plot text: set {FONT_ENV} to a .ttf file or install fonts-dejavu-core (looked at {})",
        .candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { candidates: Vec<PathBuf> },

    #[error("{path}: {cause}")]
    Unreadable {
        path: PathBuf,
        cause: std::sync::Arc<std::io::Error>,
    },

    #[error("{path}: not a usable TrueType font")]
    NotTrueType { path: PathBuf },
}

/// Registers a TrueType font as plotters' `sans-serif` (once per process). Errors name the
/// places looked at.
pub fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), FontError>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        let path = candidates
            .iter()
            .find(|p| p.is_file())
            .ok_or_else(|| FontError::NotFound {
                candidates: candidates.clone(),
            })?;
        let bytes = std::fs::read(path).map_err(|e| FontError::Unreadable {
            path: path.clone(),
            cause: e.into(),
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font("sans-serif", style, bytes)
                .map_err(|_| FontError::NotTrueType { path: path.clone() })?;
        }
        Ok(())
    })
    .clone()
    .map_err(|e| PlotError::Font(e).into())
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

/// One line of a panel.
struct Series<'a> {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    /// Draw the raw points faint and the EMA strong (else: the points as they are).
    smooth: bool,
    /// Mark every point with a dot (sparse series such as validation results).
    dots: bool,
    _marker: std::marker::PhantomData<&'a ()>,
}

impl Series<'_> {
    fn new(
        label: impl Into<String>,
        color: RGBColor,
        points: Vec<(f64, f64)>,
        smooth: bool,
    ) -> Self {
        Series {
            label: label.into(),
            color,
            points,
            smooth,
            dots: false,
            _marker: std::marker::PhantomData,
        }
    }

    /// Unsmoothed, every point dotted.
    fn dotted(label: impl Into<String>, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Series {
            dots: true,
            ..Series::new(label, color, points, false)
        }
    }
}

/// One chart: series on the left axis, the learning rate on the right, events shaded.
struct Panel<'a> {
    caption: String,
    y_label: String,
    log_y: bool,
    series: Vec<Series<'a>>,
    events: Vec<&'a HealthEvent>,
    legend: SeriesLabelPosition,
}

const TERM_COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];
const GROUP_COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(90, 90, 90),
];
const LR_COLOR: RGBColor = RGBColor(120, 120, 120);

fn event_color(kind: EventKind) -> RGBColor {
    match kind {
        EventKind::Spike => RGBColor(228, 26, 28),
        EventKind::Oscillation => RGBColor(255, 127, 0),
        EventKind::Plateau => RGBColor(152, 78, 163),
        EventKind::Imbalance => RGBColor(166, 86, 40),
        EventKind::StalledEncoder => RGBColor(77, 77, 77),
    }
}

fn term_color(term: LossTerm) -> RGBColor {
    TERM_COLORS[term as usize]
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

/// One loss term's panels: raw and weighted, or one panel when its weight is 1 throughout (the
/// weighted panel would repeat the raw one); the health events on that term marked.
fn term_panels<'a>(
    records: &[StepRecord],
    events: &'a [HealthEvent],
    term: LossTerm,
) -> Vec<Panel<'a>> {
    let pick = |weighted: bool| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| r.term(term, weighted).map(|v| (r.step as f64, v)))
            .collect()
    };
    let on_term =
        |e: &&HealthEvent| e.subject == term.name() || e.subject == format!("{term}.weighted");
    let unit = term_unit(term);
    let weight = constant_weight(records, term);
    if weight == Some(1.0) {
        vec![loss_panel(
            term,
            format!("{term} loss: {unit} (weight 1: weighted = raw)"),
            "loss",
            format!("{term} loss"),
            pick(false),
            events.iter().filter(on_term).collect(),
        )]
    } else {
        let times = weight.map_or(String::new(), |w| format!(" × {}", tick_label(w)));
        vec![
            loss_panel(
                term,
                format!("{term} loss, raw: {unit}"),
                "loss",
                format!("{term} raw"),
                pick(false),
                events.iter().filter(|e| e.subject == term.name()).collect(),
            ),
            loss_panel(
                term,
                format!("{term} loss, weighted: raw{times}"),
                "weight × loss",
                format!("{term} weighted"),
                pick(true),
                events.iter().filter(on_term).collect(),
            ),
        ]
    }
}

/// The overview: every weighted term and the total, on a log scale, with all health events.
fn overview_panel<'a>(records: &[StepRecord], events: &'a [HealthEvent]) -> Panel<'a> {
    let mut series: Vec<Series> = LossTerm::ALL
        .into_iter()
        .filter(|t| records.iter().any(|r| r.loss.get(*t).is_some()))
        .map(|t| {
            let pts = records
                .iter()
                .filter_map(|r| r.term(t, true).map(|v| (r.step as f64, v)))
                .collect();
            Series::new(format!("{t} weighted"), term_color(t), pts, true)
        })
        .collect();
    let total: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.total)).collect();
    // One term that is the total: draw it once (two identical lines hide each other).
    let total_label = match &series[..] {
        [only] if same_values(&only.points, &total) => format!("total (= {})", only.label),
        _ => "total".into(),
    };
    if total_label != "total" {
        series.clear();
    }
    series.push(Series::new(total_label, RGBColor(0, 0, 0), total, true));
    Panel {
        caption: "weighted terms and total (log scale)".into(),
        y_label: "weighted loss (total: their sum)".into(),
        log_y: true,
        series,
        events: events.iter().collect(),
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// Gradient norms per module group, and update norms when the run logged them; stalled-encoder
/// events marked.
fn norm_panels<'a>(records: &[StepRecord], events: &'a [HealthEvent]) -> Vec<Panel<'a>> {
    let norm_panel =
        |caption: &str, get: &dyn Fn(&StepRecord) -> Option<crate::monitor::GroupNorms>| {
            let mut series = Vec::new();
            for (i, g) in ModuleGroup::ALL.into_iter().enumerate() {
                let pts: Vec<(f64, f64)> = records
                    .iter()
                    .filter_map(|r| get(r).and_then(|n| n.get(g)).map(|v| (r.step as f64, v)))
                    .collect();
                if !pts.is_empty() {
                    series.push(Series::new(g.name(), GROUP_COLORS[i], pts, true));
                }
            }
            Panel {
                caption: caption.to_string(),
                y_label: "L2 norm".into(),
                log_y: true,
                series,
                events: events
                    .iter()
                    .filter(|e| e.kind == EventKind::StalledEncoder)
                    .collect(),
                legend: SeriesLabelPosition::LowerLeft,
            }
        };
    let mut panels = vec![norm_panel(
        "gradient norm per module group (before clipping)",
        &|r| Some(r.grad_norm),
    )];
    if records.iter().any(|r| r.update_norm.is_some()) {
        panels.push(norm_panel("update norm per module group", &|r| {
            r.update_norm
        }));
    }
    panels
}

/// The steps' pace: images per second above, the wait for data below (a wait that grows with the
/// images per second falling is an input pipeline the steps outrun).
fn pace_panels<'a>(records: &[StepRecord]) -> Vec<Panel<'a>> {
    let points = |get: fn(&StepRecord) -> f64| -> Vec<(f64, f64)> {
        records.iter().map(|r| (r.step as f64, get(r))).collect()
    };
    let panel = |caption: &str, y_label: &str, series: Series<'a>| Panel {
        caption: caption.into(),
        y_label: y_label.into(),
        log_y: false,
        series: vec![series],
        events: Vec::new(),
        legend: SeriesLabelPosition::LowerRight,
    };
    vec![
        panel(
            "images per second of each step (validation and checkpoints between steps not counted)",
            "images / s",
            Series::new(
                "images/s",
                GROUP_COLORS[0],
                points(|r| r.images_per_s),
                true,
            ),
        ),
        panel(
            "time each step waited for its micro-batches (data loading behind the steps)",
            "seconds per step",
            Series::new(
                "data wait",
                GROUP_COLORS[1],
                points(|r| r.data_wait_s),
                true,
            ),
        ),
    ]
}

/// Validation figure: mAP (present and absent slots) above, precision / recall / F1 of the present
/// slots at the per-class thresholds below; the learning rate on the right axis of each.
fn validation_panels<'a>(
    validation: &[ValidationRecord],
    events: &'a [HealthEvent],
) -> Vec<Panel<'a>> {
    type Pick = fn(&crate::eval::Summary) -> f64;
    let series = |label: &str, color: RGBColor, absent: bool, pick: Pick| {
        let pts: Vec<(f64, f64)> = validation
            .iter()
            .filter_map(|v| {
                let s = if absent { v.absent } else { v.main };
                s.map(|s| (v.step as f64, pick(&s)))
            })
            .collect();
        (!pts.is_empty()).then(|| Series::dotted(label, color, pts))
    };
    let map = [
        series("mAP (present slots)", TERM_COLORS[0], false, |s| s.map),
        series("mAP (absent slots)", TERM_COLORS[1], true, |s| s.map),
    ];
    let prf = [
        series("CP (class precision)", GROUP_COLORS[0], false, |s| s.cp),
        series("CR (class recall)", GROUP_COLORS[1], false, |s| s.cr),
        series("CF1", GROUP_COLORS[2], false, |s| s.cf1),
        series("OF1 (overall F1)", GROUP_COLORS[3], false, |s| s.of1),
    ];
    vec![
        Panel {
            caption: "validation mAP".into(),
            y_label: "mAP".into(),
            log_y: false,
            series: map.into_iter().flatten().collect(),
            events: events.iter().collect(),
            legend: SeriesLabelPosition::LowerRight,
        },
        Panel {
            caption:
                "validation precision / recall / F1 at the per-class thresholds (present slots)"
                    .into(),
            y_label: "fraction".into(),
            log_y: false,
            series: prf.into_iter().flatten().collect(),
            events: Vec::new(),
            legend: SeriesLabelPosition::LowerRight,
        },
    ]
}

fn title_prefix(opts: &PlotOptions) -> String {
    if opts.title.is_empty() {
        String::new()
    } else {
        format!("{}: ", opts.title)
    }
}

/// A panel of one loss curve, on a log scale when it spans more than 20×.
fn loss_panel<'a>(
    term: LossTerm,
    caption: String,
    y_label: &str,
    label: String,
    points: Vec<(f64, f64)>,
    events: Vec<&'a HealthEvent>,
) -> Panel<'a> {
    let log_y = spans_decades(&points);
    Panel {
        caption: if log_y {
            format!("{caption}, log scale")
        } else {
            caption
        },
        y_label: y_label.into(),
        log_y,
        series: vec![Series::new(label, term_color(term), points, true)],
        events,
        legend: SeriesLabelPosition::UpperRight,
    }
}

/// What a loss term's value is (its reduction over the batch), for the y axis.
fn term_unit(term: LossTerm) -> &'static str {
    match term {
        LossTerm::Tag => "ASL summed over images × tags",
        LossTerm::Align => "ASL summed over image × caption pairs",
        LossTerm::Dis => "L1, mean over the batch",
    }
}

/// The weight of `term` when it is the same on every step that shows it (weighted / raw, rounded to
/// 6 significant digits); `None` when it changes or no step shows it.
fn constant_weight(records: &[StepRecord], term: LossTerm) -> Option<f64> {
    let mut weights = records
        .iter()
        .filter_map(|r| r.loss.get(term))
        .filter(|v| v.raw.is_finite() && v.weighted.is_finite() && v.raw != 0.0)
        .map(|v| {
            let w = v.weighted / v.raw;
            format!("{w:.5e}").parse::<f64>().unwrap_or(w)
        });
    let first = weights.next()?;
    weights.all(|w| w == first).then_some(first)
}

/// True when two series hold the same points (up to rounding).
fn same_values(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(p, q)| {
            p.0 == q.0 && (p.1 == q.1 || (p.1 - q.1).abs() <= 1e-9 * p.1.abs().max(q.1.abs()))
        })
}

/// True when the positive values span more than 20× (a linear axis would flatten all but the first
/// steps of a falling loss).
fn spans_decades(points: &[(f64, f64)]) -> bool {
    let (lo, hi) = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    lo > 0.0 && hi / lo > 20.0
}

/// Renders one figure as `<name>.png` and `<name>.svg`, each written to a temporary file first.
fn render(
    out_dir: &Path,
    name: &str,
    title: &str,
    panels: &[Panel],
    lr: &[(f64, f64)],
    opts: &PlotOptions,
) -> Result<Figure> {
    let png = out_dir.join(format!("{name}.png"));
    let svg = out_dir.join(format!("{name}.svg"));
    render_atomic(&png, |tmp| {
        let root = BitMapBackend::new(tmp, opts.size).into_drawing_area();
        draw_figure(&root, title, panels, lr, opts)?;
        root.present().map_err(|e| e.to_string())
    })?;
    render_atomic(&svg, |tmp| {
        let root = SVGBackend::new(tmp, opts.size).into_drawing_area();
        draw_figure(&root, title, panels, lr, opts)?;
        root.present().map_err(|e| e.to_string())
    })?;
    Ok(Figure { png, svg })
}

/// Draws into a temporary file beside `path` (same extension) and renames it over `path`, through
/// [`crate::fsutil::write_atomic_via_path`] (symbolic links, pipes and stale temporary files handled).
fn render_atomic(
    path: &Path,
    draw: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<()> {
    crate::fsutil::write_atomic_via_path(path, |tmp| {
        draw(tmp).map_err(|problem| {
            PlotError::Draw {
                path: path.into(),
                problem,
            }
            .into()
        })
    })
}

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
    lr: &[(f64, f64)],
    opts: &PlotOptions,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let body = root
        .titled(title, ("sans-serif", 30).into_font().style(FontStyle::Bold))
        .map_err(|e| e.to_string())?;
    let areas = body.split_evenly((panels.len(), 1));
    for (panel, area) in panels.iter().zip(&areas) {
        draw_panel(area, panel, lr, opts).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The y range of a panel: its values' range (positive part on a log scale), with the top clipped
/// at 2× the 99.5th percentile so one spike does not flatten the rest (events still mark it).
fn y_range(series: &[Series], log_y: bool) -> (f64, f64) {
    let mut ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite() && (!log_y || *v > 0.0))
        .collect();
    if ys.is_empty() {
        return if log_y { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    ys.sort_by(f64::total_cmp);
    let lo = ys[0];
    let q = ys[((ys.len() - 1) as f64 * 0.995) as usize];
    let hi = ys[ys.len() - 1].min(if q > 0.0 { 2.0 * q } else { ys[ys.len() - 1] });
    if log_y {
        let (lo, hi) = (lo * 0.8, hi * 1.25);
        if hi > lo {
            (lo, hi)
        } else {
            (lo * 0.5, lo * 2.0)
        }
    } else {
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
        (lo - pad, hi + pad)
    }
}

/// The top of the learning-rate axis: 10 % above the largest rate.
fn lr_top(lr: &[(f64, f64)]) -> f64 {
    let max = lr
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.1
    } else {
        1.0
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    lr: &[(f64, f64)],
    opts: &PlotOptions,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    // The steps of the learning rate, widened to the panel's own points (validation at step 0).
    let xs = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let x0 = xs.clone().fold(lr.first().map_or(0.0, |p| p.0), f64::min);
    let x1 = xs
        .fold(lr.last().map_or(1.0, |p| p.0), f64::max)
        .max(x0 + 1.0);
    let (y0, y1) = y_range(&panel.series, panel.log_y);
    let lr_top = lr_top(lr);
    let (legend, (y0, y1, lr_top)) =
        place_legend(area, panel, lr, opts, (x0, x1), (y0, y1, lr_top));

    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .right_y_label_area_size(80);
    // Log and linear axes have different coordinate types; draw through a macro-free helper each.
    if panel.log_y {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())?
            .set_secondary_coord(x0..x1, 0.0..lr_top);
        fill_chart(&mut chart, panel, lr, opts, legend, y0, y1)
    } else {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, y0..y1)?
            .set_secondary_coord(x0..x1, 0.0..lr_top);
        fill_chart(&mut chart, panel, lr, opts, legend, y0, y1)
    }
}

/// Legend font size; a row takes about `LEGEND_ROW` pixels.
const LEGEND_FONT: u32 = 15;
const LEGEND_ROW: f64 = 19.0;

/// Where the legend goes, and the axis ranges that leave it room: the corner covering the fewest
/// drawn points; when every corner covers some, the top of both y axes is raised so the data stay
/// below the legend (nothing drawn is hidden behind it).
fn place_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    lr: &[(f64, f64)],
    opts: &PlotOptions,
    (x0, x1): (f64, f64),
    (y0, y1, lr_top): (f64, f64, f64),
) -> (SeriesLabelPosition, (f64, f64, f64)) {
    let (labels, entries) = legend_entries(panel, opts);
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    // The plotting area inside the axis label areas, caption and margins (see draw_panel).
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (
        f64::from(w).max(200.0) - 184.0,
        f64::from(h).max(200.0) - 105.0,
    );
    let size = (
        (longest as f64 * 0.55 * f64::from(LEGEND_FONT) + 50.0) / w,
        (entries as f64 * LEGEND_ROW + 12.0) / h,
    );
    let y_unit = |v: f64| {
        if panel.log_y {
            (v.ln() - y0.ln()) / (y1.ln() - y0.ln())
        } else {
            (v - y0) / (y1 - y0)
        }
    };
    let x_unit = |x: f64| (x - x0) / (x1 - x0);
    let mut lines: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|p| p.1.is_finite() && (p.1 > 0.0 || !panel.log_y))
                .map(|p| (x_unit(p.0), y_unit(p.1)))
                .collect()
        })
        .collect();
    lines.push(lr.iter().map(|p| (x_unit(p.0), p.1 / lr_top)).collect());
    let (corner, covered) = emptiest_corner(&lines, size, &panel.legend);
    if covered == 0 {
        return (corner, (y0, y1, lr_top));
    }
    let room = (size.1 + 0.03).min(0.5);
    let top = if panel.log_y {
        y0 * (y1 / y0).powf(1.0 / (1.0 - room))
    } else {
        y0 + (y1 - y0) / (1.0 - room)
    };
    let corner = match panel.legend {
        SeriesLabelPosition::UpperLeft => SeriesLabelPosition::UpperLeft,
        _ => SeriesLabelPosition::UpperRight,
    };
    (corner, (y0, top, lr_top / (1.0 - room)))
}

/// The legend's labels (as drawn by fill_chart) and its number of rows.
fn legend_entries(panel: &Panel, opts: &PlotOptions) -> (Vec<String>, usize) {
    let mut labels: Vec<String> = panel.series.iter().map(|s| s.label.clone()).collect();
    if let Some(l) = smoothing_label(panel, opts) {
        labels.push(l);
    }
    labels.push(LR_LABEL.into());
    let mut kinds: Vec<EventKind> = panel.events.iter().map(|e| e.kind).collect();
    kinds.sort_by_key(|k| k.name());
    kinds.dedup();
    let rows = labels.len() + kinds.len();
    (labels, rows)
}

const LR_LABEL: &str = "learning rate (right axis)";

/// The legend entry that says how the curves are smoothed, when any is.
fn smoothing_label(panel: &Panel, opts: &PlotOptions) -> Option<String> {
    let span = opts.smooth.unwrap_or(1);
    (span > 1 && panel.series.iter().any(|s| s.smooth))
        .then(|| format!("thick: EMA over {span} steps; faint: each step"))
}

fn fill_chart<'a, DB, Y>(
    chart: &mut DualCoordChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    panel: &Panel,
    lr: &[(f64, f64)],
    opts: &PlotOptions,
    legend: SeriesLabelPosition,
    y0: f64,
    y1: f64,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("learning rate")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .y_label_formatter(&|v| tick_label(*v))
        .draw()?;

    // Events: shaded spans (at least a few pixels wide), one legend entry per kind.
    let (x0, x1) = (chart.x_range().start, chart.x_range().end);
    let min_width = (x1 - x0) / 400.0;
    let mut kinds_seen = Vec::new();
    for e in &panel.events {
        let color = event_color(e.kind);
        let (a, b) = (e.first_step as f64, e.last_step as f64);
        let (a, b) = if b - a < min_width {
            (a - min_width / 2.0, b + min_width / 2.0)
        } else {
            (a, b)
        };
        let span = chart.draw_series(std::iter::once(Rectangle::new(
            [(a, y0), (b, y1)],
            color.mix(0.18).filled(),
        )))?;
        if !kinds_seen.contains(&e.kind) {
            kinds_seen.push(e.kind);
            span.label(format!("event: {}", e.kind.name().replace('_', " ")))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 18, y + 6)], color.mix(0.35).filled())
                });
        }
    }

    let span = opts.smooth.unwrap_or(1);
    for s in &panel.series {
        let finite: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite() && (p.1 > 0.0 || !panel.log_y))
            .collect();
        let color = s.color;
        if s.smooth && span > 1 {
            chart.draw_series(LineSeries::new(
                finite.iter().copied(),
                color.mix(0.3).stroke_width(1),
            ))?;
            // On a log axis, smooth the logarithm (a geometric average) so the curve follows the trace.
            let ys: Vec<f64> = finite
                .iter()
                .map(|p| if panel.log_y { p.1.ln() } else { p.1 })
                .collect();
            let smoothed: Vec<(f64, f64)> = ema(&ys, span)
                .into_iter()
                .zip(&finite)
                .map(|(v, p)| (p.0, if panel.log_y { v.exp() } else { v }))
                .collect();
            chart
                .draw_series(LineSeries::new(smoothed, color.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        } else if s.dots {
            chart.draw_series(finite.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            chart
                .draw_series(LineSeries::new(finite, color.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        } else {
            chart
                .draw_series(LineSeries::new(finite, color.stroke_width(1)))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
    }
    if let Some(label) = smoothing_label(panel, opts) {
        // One entry for all smoothed series: the span, and what the faint traces are.
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
            .label(label)
            .legend(|(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, -3), (18, -3)], BLACK.stroke_width(2))
                    + PathElement::new(vec![(0, 3), (18, 3)], BLACK.mix(0.3))
            });
    }

    let lr_style = ShapeStyle::from(&LR_COLOR).stroke_width(2);
    chart
        .draw_secondary_series(DashedLineSeries::new(lr.iter().copied(), 8, 5, lr_style))?
        .label(LR_LABEL)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], lr_style));

    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", LEGEND_FONT))
        .draw()?;
    Ok(())
}

/// The corner of the plotting area whose legend box (`size`, as fractions of the area) covers the
/// fewest points of the drawn `lines` (unit square, y up; each segment sampled so a steep line
/// through a box counts), and that count; `preferred` wins ties.
fn emptiest_corner(
    lines: &[Vec<(f64, f64)>],
    size: (f64, f64),
    preferred: &SeriesLabelPosition,
) -> (SeriesLabelPosition, usize) {
    use SeriesLabelPosition::*;
    let mut samples = Vec::new();
    for line in lines {
        for w in line.windows(2) {
            let ((ax, ay), (bx, by)) = (w[0], w[1]);
            samples.extend((0..8).map(|i| {
                let t = f64::from(i) / 8.0;
                (ax + t * (bx - ax), ay + t * (by - ay))
            }));
        }
        samples.extend(line.last().copied());
    }
    let covered = |pos: &SeriesLabelPosition| {
        let (left, top) = match pos {
            UpperLeft => (true, true),
            UpperRight => (false, true),
            LowerLeft => (true, false),
            _ => (false, false),
        };
        samples
            .iter()
            .filter(|(x, y)| {
                let in_x = if left {
                    *x <= size.0
                } else {
                    *x >= 1.0 - size.0
                };
                let in_y = if top {
                    *y >= 1.0 - size.1
                } else {
                    *y <= size.1
                };
                in_x && in_y
            })
            .count()
    };
    let mut best = preferred.clone();
    let mut least = covered(preferred);
    for pos in [UpperRight, UpperLeft, LowerRight, LowerLeft] {
        let n = covered(&pos);
        if n < least {
            (best, least) = (pos, n);
        }
    }
    (best, least)
}

/// A short axis label: plain decimals between 1e-3 and 1e5, else scientific with up to three
/// significant digits (`1e-4`, not `9.9999999e-5`).
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{exp}")
    }
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

    #[test]
    fn a_weight_is_constant_only_when_every_step_agrees() {
        let rec = |raw: f64, weight: f64| {
            let run = crate::monitor::synthetic::SyntheticRun {
                steps: 1,
                ..Default::default()
            };
            let mut r = run.records().remove(0);
            r.loss = Default::default();
            r.loss
                .set(LossTerm::Align, crate::monitor::TermValue::new(raw, weight));
            r
        };
        let steady = [rec(0.3, 10.0), rec(0.7, 10.0), rec(0.0, 99.0)];
        assert_eq!(constant_weight(&steady, LossTerm::Align), Some(10.0));
        assert_eq!(constant_weight(&steady, LossTerm::Tag), None);
        let balanced = [rec(0.3, 10.0), rec(0.7, 12.5)];
        assert_eq!(constant_weight(&balanced, LossTerm::Align), None);
    }

    #[test]
    fn the_legend_goes_to_the_emptiest_corner() {
        use SeriesLabelPosition::*;
        // A falling line crosses the upper left and lower right corners.
        let falling = vec![vec![(0.0, 1.0), (1.0, 0.0)]];
        let (corner, covered) = emptiest_corner(&falling, (0.3, 0.3), &UpperLeft);
        assert!(matches!(corner, UpperRight | LowerLeft), "{corner:?}");
        assert_eq!(covered, 0);
        // Everything covered: the least covered corner and its count.
        let flat_top = vec![vec![(0.0, 0.9), (1.0, 0.9)], vec![(0.0, 0.1), (0.5, 0.1)]];
        let (corner, covered) = emptiest_corner(&flat_top, (0.3, 0.3), &UpperRight);
        assert!(matches!(corner, LowerRight), "{corner:?}");
        assert_eq!(covered, 0);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(9.9999999e-5), "1e-4");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(60.0), "60");
        assert_eq!(tick_label(2.5e-7), "2.5e-7");
        assert_eq!(tick_label(0.0), "0");
    }
}
