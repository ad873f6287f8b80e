//! Drawing panels with plotters: axes and ranges, the learning rate on a second axis, event
//! shading, legends in the emptiest corner, and the PNG and SVG files (written atomically).

use super::panels::{event_color, Panel, Series, LR_COLOR};
use super::{ema, Figure, PlotError, PlotOptions};
use crate::error::Result;
use crate::monitor::EventKind;
use plotters::chart::DualCoordChartContext;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Renders one figure as `<name>.png` and `<name>.svg`, each written to a temporary file first.
pub(super) fn render(
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
pub(super) fn render_atomic(
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

pub(super) fn draw_figure<DB: DrawingBackend>(
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
pub(super) fn y_range(series: &[Series], log_y: bool) -> (f64, f64) {
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
pub(super) fn lr_top(lr: &[(f64, f64)]) -> f64 {
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

pub(super) fn draw_panel<DB: DrawingBackend>(
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
pub(super) const LEGEND_FONT: u32 = 15;

pub(super) const LEGEND_ROW: f64 = 19.0;

/// Where the legend goes, and the axis ranges that leave it room: the corner covering the fewest
/// drawn points; when every corner covers some, the top of both y axes is raised so the data stay
/// below the legend (nothing drawn is hidden behind it).
pub(super) fn place_legend<DB: DrawingBackend>(
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
pub(super) fn legend_entries(panel: &Panel, opts: &PlotOptions) -> (Vec<String>, usize) {
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

pub(super) const LR_LABEL: &str = "learning rate (right axis)";

/// The legend entry that says how the curves are smoothed, when any is.
pub(super) fn smoothing_label(panel: &Panel, opts: &PlotOptions) -> Option<String> {
    let span = opts.smooth.unwrap_or(1);
    (span > 1 && panel.series.iter().any(|s| s.smooth))
        .then(|| format!("thick: EMA over {span} steps; faint: each step"))
}

pub(super) fn fill_chart<'a, DB, Y>(
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
pub(super) fn emptiest_corner(
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
pub(super) fn tick_label(v: f64) -> String {
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
