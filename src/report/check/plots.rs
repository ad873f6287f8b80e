//! `tagfix check --plot DIR`: histograms of per-slot cosine, kNN overlap and (consistency mode) the
//! neighbourhood score, control vs regenerated.

use crate::consistency::report::{CheckReport, Mode};
use crate::error::{Error, Result};
use crate::plot::histogram::{Histogram, Series, XAxis, BLUE, GREEN, ORANGE};
use std::path::{Path, PathBuf};

/// Writes the histograms into `dir` (created if missing); returns the files written.
pub fn check(r: &CheckReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let ki = r.k_index();
    let compared = match r.mode {
        Mode::Drift => "candidate vs baseline",
        Mode::Consistency => "control (re-embedded present slots)",
    };
    let cos: Vec<f32> = r.slots.iter().map(|s| s.cosine).collect();
    let ov: Vec<f32> = r.slots.iter().map(|s| s.overlap[ki]).collect();
    let regen_cos: Vec<f32> = r
        .regenerated
        .iter()
        .filter_map(|g| g.cosine_to_base)
        .collect();
    let regen_ov: Vec<f32> = r
        .regenerated
        .iter()
        .filter_map(|g| g.overlap_with_base)
        .collect();
    let rule = |id: &str| {
        r.rules
            .iter()
            .find(|x| x.id == id)
            .map(|x| (x.threshold, format!("rule {id}: at least {}", x.threshold)))
    };
    let mut files = Vec::new();

    let mut series = vec![Series {
        label: compared,
        values: &cos,
        color: BLUE,
    }];
    if !regen_cos.is_empty() {
        series.push(Series {
            label: "regenerated rows vs the base file's old rows",
            values: &regen_cos,
            color: ORANGE,
        });
    }
    files.extend(
        Histogram {
            title: "Per-slot cosine to the baseline row".into(),
            x_label: "cosine".into(),
            series,
            bins: 50,
            threshold: rule("min_cosine"),
            x_axis: XAxis::Data { max: 1.0 },
        }
        .write(&dir.join("cosine"))?,
    );

    let mut series = vec![Series {
        label: compared,
        values: &ov,
        color: BLUE,
    }];
    if !regen_ov.is_empty() {
        series.push(Series {
            label: "regenerated rows vs the base file's old rows",
            values: &regen_ov,
            color: ORANGE,
        });
    }
    files.extend(
        Histogram {
            title: format!("Per-slot kNN overlap at k = {}", r.k),
            x_label: format!("share of the {} baseline neighbours kept", r.k),
            series,
            // Overlap is a multiple of 1/k: one bin centred on each, the whole scale shown.
            bins: r.k + 1,
            threshold: rule("min_slot_knn_overlap"),
            x_axis: XAxis::Fixed(-0.5 / r.k as f64, 1.0 + 0.5 / r.k as f64),
        }
        .write(&dir.join("knn_overlap"))?,
    );

    if let Some(c) = &r.calibration {
        let regen: Vec<f32> = r.regenerated.iter().map(|g| g.score).collect();
        let mut series = vec![
            Series {
                label: "base rows of the control slots",
                values: &c.base_scores,
                color: GREEN,
            },
            Series {
                label: "control rows",
                values: &c.control_scores,
                color: BLUE,
            },
        ];
        if !regen.is_empty() {
            series.push(Series {
                label: "regenerated rows",
                values: &regen,
                color: ORANGE,
            });
        }
        files.extend(
            Histogram {
                title: format!(
                    "Neighbourhood score (mean similarity to the {} nearest rows)",
                    c.k
                ),
                x_label: "neighbourhood score".into(),
                series,
                bins: 50,
                threshold: Some((
                    c.threshold,
                    format!(
                        "trust threshold: the control rows' {}% quantile, {:.4}",
                        c.quantile * 100.0,
                        c.threshold
                    ),
                )),
                x_axis: XAxis::Data { max: 1.0 },
            }
            .write(&dir.join("neighbourhood_score"))?,
        );
    }
    Ok(files)
}
