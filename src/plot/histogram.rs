//! Histograms of several distributions on one axis (e.g. per-slot cosine, control vs regenerated),
//! PNG and SVG, written atomically. Each distribution is a translucent fill with a solid outline,
//! so overlapping ones stay readable; the y axis leaves room for the legend above the bars.

use super::{ensure_font, render_atomic};
use crate::error::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One distribution in a histogram.
pub struct Series<'a> {
    pub label: &'a str,
    pub values: &'a [f32],
    pub color: RGBColor,
}

/// Series colours (colour-blind safe).
pub const BLUE: RGBColor = RGBColor(0, 114, 178);
pub const ORANGE: RGBColor = RGBColor(230, 159, 0);
pub const GREEN: RGBColor = RGBColor(0, 158, 115);

/// A histogram of several distributions on one axis, each normalised to shares of its own count.
pub struct Histogram<'a> {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series<'a>>,
    pub bins: usize,
    /// Marks a threshold with a vertical line.
    pub threshold: Option<(f64, String)>,
    /// The x axis: `Fixed` for a metric with few possible values (kNN overlap: multiples of 1/k,
    /// one bin each), else the data's range, never past `Data`'s largest possible value (a cosine
    /// of exactly 1 must not put 1.004 on the axis).
    pub x_axis: XAxis,
}

/// How a histogram's x range is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XAxis {
    /// The values' range (with the threshold), padded, capped at `max`.
    Data { max: f64 },
    /// Exactly this range.
    Fixed(f64, f64),
}

const SIZE: (u32, u32) = (960, 560);

/// The step outlines of one histogram's bars (`heights` from `lo`, bins `width` wide): one path per
/// run of non-empty bins, so empty stretches leave the x axis clear.
fn outline(heights: &[f64], lo: f64, width: f64) -> Vec<Vec<(f64, f64)>> {
    let mut paths: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut open = false;
    for (i, &h) in heights.iter().enumerate() {
        let x0 = lo + i as f64 * width;
        match (h > 0.0, open) {
            (true, false) => paths.push(vec![(x0, 0.0), (x0, h), (x0 + width, h)]),
            (true, true) => paths.last_mut().unwrap().extend([(x0, h), (x0 + width, h)]),
            (false, true) => paths.last_mut().unwrap().push((x0, 0.0)),
            (false, false) => {}
        }
        open = h > 0.0;
    }
    if let Some(last) = paths.last_mut().filter(|_| open) {
        last.push((lo + heights.len() as f64 * width, 0.0));
    }
    paths
}

impl Histogram<'_> {
    fn range(&self) -> (f64, f64) {
        let max = match self.x_axis {
            XAxis::Fixed(lo, hi) => return (lo, hi),
            XAxis::Data { max } => max,
        };
        let all = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().map(|&v| v as f64));
        let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if let Some((t, _)) = &self.threshold {
            lo = lo.min(*t);
            hi = hi.max(*t);
        }
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.03).max(0.005);
        (lo - pad, (hi + pad).min(max.max(lo)))
    }

    fn counts(&self, lo: f64, hi: f64) -> Vec<Vec<f64>> {
        let width = (hi - lo) / self.bins as f64;
        self.series
            .iter()
            .map(|s| {
                let mut c = vec![0f64; self.bins];
                for &v in s.values {
                    let b = (((v as f64 - lo) / width) as usize).min(self.bins - 1);
                    c[b] += 1.0;
                }
                let n = s.values.len().max(1) as f64;
                c.iter_mut().for_each(|x| *x /= n);
                c
            })
            .collect()
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let (lo, hi) = self.range();
        let counts = self.counts(lo, hi);
        // Room above the highest bar for the legend (one row per series and the threshold).
        let rows = self.series.len() + usize::from(self.threshold.is_some());
        let plot_height = f64::from(SIZE.1) - 130.0;
        let legend = ((rows as f64 * 20.0 + 20.0) / plot_height).min(0.6);
        let ymax = counts
            .iter()
            .flatten()
            .fold(0f64, |a, &b| a.max(b))
            .max(1e-9)
            * 1.05
            / (1.0 - legend);
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(lo..hi, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc("share of slots")
            // The legend's headroom may reach past 1; a share never does.
            .y_label_formatter(&|v| {
                if *v > 1.0 + 1e-9 {
                    String::new()
                } else {
                    format!("{v:.2}")
                }
            })
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        let width = (hi - lo) / self.bins as f64;
        for (s, c) in self.series.iter().zip(&counts) {
            let color = s.color;
            chart
                .draw_series(
                    c.iter()
                        .enumerate()
                        .filter(|(_, &h)| h > 0.0)
                        .map(|(i, &h)| {
                            let x0 = lo + i as f64 * width;
                            Rectangle::new([(x0, 0.0), (x0 + width, h)], color.mix(0.35).filled())
                        }),
                )?
                .label(format!("{} (n = {})", s.label, s.values.len()))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.mix(0.35).filled())
                });
        }
        // Outlines after every fill, so a distribution under another one still shows its shape.
        for (s, c) in self.series.iter().zip(&counts) {
            let color = s.color;
            chart.draw_series(
                outline(c, lo, width)
                    .into_iter()
                    .map(|p| PathElement::new(p, color.stroke_width(2))),
            )?;
        }
        if let Some((t, label)) = &self.threshold {
            chart
                .draw_series(LineSeries::new(
                    [(*t, 0.0), (*t, ymax)],
                    RED.stroke_width(2),
                ))?
                .label(label.as_str())
                .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RED.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// Writes `<stem>.png` and `<stem>.svg`; returns their paths.
    pub fn write(&self, stem: &Path) -> Result<Vec<PathBuf>> {
        ensure_font()?;
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        render_atomic(&png, |tmp| {
            self.draw(BitMapBackend::new(tmp, SIZE).into_drawing_area())
                .map_err(|e| e.to_string())
        })?;
        render_atomic(&svg, |tmp| {
            self.draw(SVGBackend::new(tmp, SIZE).into_drawing_area())
                .map_err(|e| e.to_string())
        })?;
        Ok(vec![png, svg])
    }
}
