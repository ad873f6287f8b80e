//! Training curves of a run directory (`tagfix plot RUN_DIR`): per loss term a figure with the raw
//! and the weighted value, each smoothed (EMA) over a faint raw trace, with the learning rate on a
//! second axis and the detected health events shaded; plus an overview of the weighted terms and
//! the total, the gradient norms per module group, and (when the run validated) the validation mAP
//! and precision / recall / F1. PNG and SVG, written atomically.

pub mod histogram;

use crate::error::{Error, Result};
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
    /// EMA span in steps (smoothing factor 2 / (span + 1)); 1 draws the raw values only.
    pub smooth: usize,
    /// PNG size in pixels (the SVG has the same size in user units).
    pub size: (u32, u32),
    /// Title prefix (usually the run directory's name).
    pub title: String,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            smooth: 50,
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

/// Registers a TrueType font as plotters' `sans-serif` (once per process). Errors name the
/// places looked at.
pub fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            format!(
                "no TrueType font for plot text: set {FONT_ENV} to a .ttf file or install fonts-dejavu-core (looked at {})",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font("sans-serif", style, bytes)
                .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
        }
        Ok(())
    })
    .clone()
    .map_err(Error::Other)
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
        return Err(Error::Usage("the run has no steps to plot".into()));
    }
    ensure_font()?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let lr: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.lr)).collect();
    let mut figures = Vec::new();

    for term in LossTerm::ALL {
        if records.iter().all(|r| r.loss.get(term).is_none()) {
            continue;
        }
        let pick = |weighted: bool| -> Vec<(f64, f64)> {
            records
                .iter()
                .filter_map(|r| r.term(term, weighted).map(|v| (r.step as f64, v)))
                .collect()
        };
        let on_term =
            |e: &&HealthEvent| e.subject == term.name() || e.subject == format!("{term}.weighted");
        let panels = vec![
            Panel {
                caption: format!("{term} loss (raw)"),
                y_label: "loss".into(),
                log_y: false,
                series: vec![Series::new(
                    format!("{term} raw"),
                    term_color(term),
                    pick(false),
                    true,
                )],
                events: events.iter().filter(|e| e.subject == term.name()).collect(),
                legend: SeriesLabelPosition::UpperRight,
            },
            Panel {
                caption: format!("{term} loss (weighted)"),
                y_label: "weighted loss".into(),
                log_y: false,
                series: vec![Series::new(
                    format!("{term} weighted"),
                    term_color(term),
                    pick(true),
                    true,
                )],
                events: events.iter().filter(on_term).collect(),
                legend: SeriesLabelPosition::UpperRight,
            },
        ];
        let title = format!("{}{term} loss", title_prefix(opts));
        figures.push(render(out_dir, term.name(), &title, &panels, &lr, opts)?);
    }

    // Overview: the weighted terms and the total.
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
    series.push(Series::new(
        "total",
        RGBColor(0, 0, 0),
        records.iter().map(|r| (r.step as f64, r.total)).collect(),
        true,
    ));
    let overview = Panel {
        caption: "weighted terms and total (log scale)".into(),
        y_label: "loss".into(),
        log_y: true,
        series,
        events: events.iter().collect(),
        legend: SeriesLabelPosition::UpperRight,
    };
    let title = format!("{}losses", title_prefix(opts));
    figures.push(render(out_dir, "total", &title, &[overview], &lr, opts)?);

    // Gradient (and update) norms per module group.
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
    let title = format!("{}gradient and update norms", title_prefix(opts));
    figures.push(render(out_dir, "grad_norm", &title, &panels, &lr, opts)?);

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
        draw(tmp).map_err(|m| Error::invalid(path, format!("drawing failed: {m}")))
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
    let lr_max = lr
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let lr_top = if lr_max > 0.0 { lr_max * 1.1 } else { 1.0 };

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
        fill_chart(&mut chart, panel, lr, opts, y0, y1)
    } else {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, y0..y1)?
            .set_secondary_coord(x0..x1, 0.0..lr_top);
        fill_chart(&mut chart, panel, lr, opts, y0, y1)
    }
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

    for s in &panel.series {
        let finite: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite() && (p.1 > 0.0 || !panel.log_y))
            .collect();
        let color = s.color;
        if s.smooth && opts.smooth > 1 {
            chart.draw_series(LineSeries::new(
                finite.iter().copied(),
                color.mix(0.22).stroke_width(1),
            ))?;
            // On a log axis, smooth the logarithm (a geometric average) so the curve follows the trace.
            let ys: Vec<f64> = finite
                .iter()
                .map(|p| if panel.log_y { p.1.ln() } else { p.1 })
                .collect();
            let smoothed: Vec<f64> = ema(&ys, opts.smooth)
                .into_iter()
                .map(|v| if panel.log_y { v.exp() } else { v })
                .collect();
            chart
                .draw_series(LineSeries::new(
                    finite.iter().zip(smoothed).map(|(p, v)| (p.0, v)),
                    color.stroke_width(2),
                ))?
                .label(format!("{} (EMA {})", s.label, opts.smooth))
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

    let lr_style = ShapeStyle::from(&LR_COLOR).stroke_width(2);
    chart
        .draw_secondary_series(DashedLineSeries::new(lr.iter().copied(), 8, 5, lr_style))?
        .label("learning rate (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], lr_style));

    chart
        .configure_series_labels()
        .position(panel.legend.clone())
        .background_style(WHITE.mix(0.75))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
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
    fn tick_labels_are_short() {
        assert_eq!(tick_label(9.9999999e-5), "1e-4");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(60.0), "60");
        assert_eq!(tick_label(2.5e-7), "2.5e-7");
        assert_eq!(tick_label(0.0), "0");
    }
}
