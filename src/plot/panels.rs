//! What a run's figures show: its records turned into panels of series (loss terms raw and
//! weighted, the overview, gradient norms, pace, validation), with their colours and units.

use super::draw::tick_label;
use super::PlotOptions;
use crate::monitor::{EventKind, HealthEvent, LossTerm, ModuleGroup, StepRecord, ValidationRecord};
use plotters::prelude::*;

/// One line of a panel.
pub(super) struct Series<'a> {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) points: Vec<(f64, f64)>,
    /// Draw the raw points faint and the EMA strong (else: the points as they are).
    pub(super) smooth: bool,
    /// Mark every point with a dot (sparse series such as validation results).
    pub(super) dots: bool,
    pub(super) _marker: std::marker::PhantomData<&'a ()>,
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
pub(super) struct Panel<'a> {
    pub(super) caption: String,
    pub(super) y_label: String,
    pub(super) log_y: bool,
    pub(super) series: Vec<Series<'a>>,
    pub(super) events: Vec<&'a HealthEvent>,
    pub(super) legend: SeriesLabelPosition,
}

pub(super) const TERM_COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

pub(super) const GROUP_COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(90, 90, 90),
];

pub(super) const LR_COLOR: RGBColor = RGBColor(120, 120, 120);

pub(super) fn event_color(kind: EventKind) -> RGBColor {
    match kind {
        EventKind::Spike => RGBColor(228, 26, 28),
        EventKind::Oscillation => RGBColor(255, 127, 0),
        EventKind::Plateau => RGBColor(152, 78, 163),
        EventKind::Imbalance => RGBColor(166, 86, 40),
        EventKind::StalledEncoder => RGBColor(77, 77, 77),
    }
}

pub(super) fn term_color(term: LossTerm) -> RGBColor {
    TERM_COLORS[term as usize]
}

/// One loss term's panels: raw and weighted, or one panel when its weight is 1 throughout (the
/// weighted panel would repeat the raw one); the health events on that term marked.
pub(super) fn term_panels<'a>(
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
pub(super) fn overview_panel<'a>(records: &[StepRecord], events: &'a [HealthEvent]) -> Panel<'a> {
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
pub(super) fn norm_panels<'a>(records: &[StepRecord], events: &'a [HealthEvent]) -> Vec<Panel<'a>> {
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
pub(super) fn pace_panels<'a>(records: &[StepRecord]) -> Vec<Panel<'a>> {
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
pub(super) fn validation_panels<'a>(
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

pub(super) fn title_prefix(opts: &PlotOptions) -> String {
    if opts.title.is_empty() {
        String::new()
    } else {
        format!("{}: ", opts.title)
    }
}

/// A panel of one loss curve, on a log scale when it spans more than 20×.
pub(super) fn loss_panel<'a>(
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
pub(super) fn term_unit(term: LossTerm) -> &'static str {
    match term {
        LossTerm::Tag => "ASL summed over images × tags",
        LossTerm::Align => "ASL summed over image × caption pairs",
        LossTerm::Dis => "L1, mean over the batch",
    }
}

/// The weight of `term` when it is the same on every step that shows it (weighted / raw, rounded to
/// 6 significant digits); `None` when it changes or no step shows it.
pub(super) fn constant_weight(records: &[StepRecord], term: LossTerm) -> Option<f64> {
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
pub(super) fn same_values(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(p, q)| {
            p.0 == q.0 && (p.1 == q.1 || (p.1 - q.1).abs() <= 1e-9 * p.1.abs().max(q.1.abs()))
        })
}

/// True when the positive values span more than 20× (a linear axis would flatten all but the first
/// steps of a falling loss).
pub(super) fn spans_decades(points: &[(f64, f64)]) -> bool {
    let (lo, hi) = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    lo > 0.0 && hi / lo > 20.0
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
