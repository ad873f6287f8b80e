//! Multi-label metrics: average precision per class (sklearn's `average_precision_score`), and
//! precision / recall / F1 at a threshold, with their class (macro) and overall (micro) averages.

use serde::{Deserialize, Serialize};

/// Average precision of one class, as scikit-learn's `average_precision_score` defines it:
/// AP = Σₙ (Rₙ − Rₙ₋₁)·Pₙ over the distinct scores in decreasing order (tied scores form one
/// threshold). Without ties this equals the RAM/ASL evaluation's mean of precision@rank over the
/// positives. `None` when the class has no positive.
pub fn average_precision(scores: &[f32], targets: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), targets.len());
    let positives = targets.iter().filter(|t| **t).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // NaN ranks last.
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    order.sort_unstable_by(|&a, &b| key(b).total_cmp(&key(a)));
    let (mut tp, mut seen, mut prev_recall, mut ap) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let s = key(order[i]);
        while i < order.len() && key(order[i]) == s {
            tp += usize::from(targets[order[i]]);
            seen += 1;
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / seen as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Some(ap)
}

/// Average precision as RAM's own evaluation computes it (`get_mAP` in `ram/utils/metrics.py`,
/// used by `batch_inference.py`): images in the order of numpy's `scores.argsort()[::-1]`, the
/// precision at each positive's rank summed and divided by `positives + 1e-8`. A class without
/// positives scores 0 (and counts in the official mean). Tied scores are not grouped: they keep
/// the reverse of an ascending stable sort (the later image first, numpy's
/// `argsort(kind="stable")[::-1]`); numpy's default sort orders ties as its build likes, so on
/// ties this is the official value for one valid tie order. NaN sorts last ascending in numpy,
/// so first here.
pub fn ram_average_precision(scores: &[f32], targets: &[bool]) -> f64 {
    assert_eq!(scores.len(), targets.len());
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Ascending, stable; equal values (also −0 and +0) keep their index order; NaN last.
    order.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (false, false) => x.partial_cmp(&y).expect("not NaN"),
            (nx, ny) => nx.cmp(&ny),
        }
    });
    let (mut tp, mut sum) = (0usize, 0.0f64);
    for (rank, &i) in order.iter().rev().enumerate() {
        if targets[i] {
            tp += 1;
            sum += tp as f64 / (rank + 1) as f64;
        }
    }
    sum / (tp as f64 + 1e-8)
}

/// Precision and recall of one class as `get_PR` in `ram/utils/metrics.py` computes them from
/// `batch_inference.py`'s predictions (`score >= threshold`, unlike `generate_tag`'s `>`):
/// TP/(TP+FP+1e-9) and TP/(TP+FN+1e-9), so 0 without predictions or positives.
pub fn ram_precision_recall(scores: &[f32], targets: &[bool], threshold: f32) -> (f64, f64) {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (s, t) in scores.iter().zip(targets) {
        let p = *s >= threshold;
        tp += u64::from(p && *t);
        fp += u64::from(p && !*t);
        fn_ += u64::from(!p && *t);
    }
    let eps = 1e-9;
    (
        tp as f64 / (tp as f64 + fp as f64 + eps),
        tp as f64 / (tp as f64 + fn_ as f64 + eps),
    )
}

/// mAP, CP and CR over every evaluated benchmark tag as `batch_inference.py` prints them (classes
/// without positives included with AP 0, P and R per [`ram_precision_recall`]), and
/// F1 = 2·CP·CR/(CP+CR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RamSummary {
    pub classes: usize,
    pub map: f64,
    pub cp: f64,
    pub cr: f64,
    pub f1: f64,
}

impl RamSummary {
    /// Averages `(ram_ap, precision, recall)` per class; `None` without classes.
    pub fn of(classes: impl IntoIterator<Item = (f64, f64, f64)>) -> Option<Self> {
        let (mut n, mut ap, mut p, mut r) = (0usize, 0.0, 0.0, 0.0);
        for (a, pc, rc) in classes {
            n += 1;
            ap += a;
            p += pc;
            r += rc;
        }
        (n > 0).then(|| {
            let nf = n as f64;
            let (cp, cr) = (p / nf, r / nf);
            RamSummary {
                classes: n,
                map: ap / nf,
                cp,
                cr,
                f1: harmonic(cp, cr),
            }
        })
    }
}

/// Counts of one class at a threshold (a prediction is `score > threshold`, as RAM's inference).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub positives: u64,
    pub predicted: u64,
    pub true_positives: u64,
}

impl Counts {
    pub fn at_threshold(scores: &[f32], targets: &[bool], threshold: f32) -> Self {
        let mut c = Counts::default();
        for (s, t) in scores.iter().zip(targets) {
            let p = *s > threshold;
            c.positives += u64::from(*t);
            c.predicted += u64::from(p);
            c.true_positives += u64::from(p && *t);
        }
        c
    }

    /// TP / predicted; 0 when nothing is predicted (sklearn's `zero_division=0`).
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.predicted)
    }

    /// TP / positives; 0 without positives.
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.positives)
    }

    pub fn f1(&self) -> f64 {
        harmonic(self.precision(), self.recall())
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// 2pr/(p+r), 0 when both are 0.
pub fn harmonic(p: f64, r: f64) -> f64 {
    if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    }
}

/// Averages over a group of classes (fractions in [0, 1]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Classes averaged (those with at least one positive).
    pub classes: usize,
    /// Mean average precision.
    pub map: f64,
    /// Class-averaged precision, recall (CP, CR) and CF1 = 2·CP·CR/(CP+CR).
    pub cp: f64,
    pub cr: f64,
    pub cf1: f64,
    /// Mean of the per-class F1 scores (sklearn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    /// Overall (micro) precision, recall and F1 over all (image, class) pairs.
    pub op: f64,
    pub or: f64,
    pub of1: f64,
}

impl Summary {
    /// Averages `(ap, counts)` of classes that have positives; `None` when there is none.
    pub fn of(classes: impl IntoIterator<Item = (f64, Counts)>) -> Option<Summary> {
        let mut n = 0usize;
        let (mut ap, mut p, mut r, mut f1) = (0.0, 0.0, 0.0, 0.0);
        let mut total = Counts::default();
        for (a, c) in classes {
            n += 1;
            ap += a;
            p += c.precision();
            r += c.recall();
            f1 += c.f1();
            total.positives += c.positives;
            total.predicted += c.predicted;
            total.true_positives += c.true_positives;
        }
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let (cp, cr) = (p / nf, r / nf);
        Some(Summary {
            classes: n,
            map: ap / nf,
            cp,
            cr,
            cf1: harmonic(cp, cr),
            macro_f1: f1 / nf,
            op: total.precision(),
            or: total.recall(),
            of1: total.f1(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn ap_without_ties_is_mean_precision_at_positive_ranks() {
        // Ranked: 0.9(+) 0.8(-) 0.7(+) 0.4(-) 0.2(+)
        // precision at the positives: 1/1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3 = 34/45
        let ap = average_precision(
            &[0.2, 0.9, 0.4, 0.7, 0.8],
            &[true, true, false, true, false],
        );
        close(ap.unwrap(), 34.0 / 45.0);
    }

    #[test]
    fn ap_with_ties_groups_equal_scores_like_sklearn() {
        // sklearn.metrics.average_precision_score([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.1]):
        // one threshold at 0.5 takes three samples (2 positives): R = 1, P = 2/3 -> AP = 2/3.
        let ap = average_precision(&[0.5, 0.5, 0.5, 0.1], &[true, false, true, false]);
        close(ap.unwrap(), 2.0 / 3.0);
        // All positives scored highest: AP = 1. No positive: undefined.
        close(average_precision(&[0.9, 0.1], &[true, false]).unwrap(), 1.0);
        assert_eq!(average_precision(&[0.9, 0.1], &[false, false]), None);
    }

    #[test]
    fn ram_ap_is_precision_at_ranks_over_positives_plus_epsilon() {
        // Without ties: ranks 0.9(+) 0.8(-) 0.7(+) 0.4(-) 0.2(+) -> (1 + 2/3 + 3/5) / (3 + 1e-8).
        let ap = ram_average_precision(
            &[0.2, 0.9, 0.4, 0.7, 0.8],
            &[true, true, false, true, false],
        );
        close(ap, (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / (3.0 + 1e-8));
        // No positive: 0/(0 + 1e-8) = 0, and the class is not skipped.
        assert_eq!(ram_average_precision(&[0.9, 0.1], &[false, false]), 0.0);
        // Ties: argsort ascending (stable) is [3, 0, 1, 2]; reversed [2, 1, 0, 3]: the later
        // tied image first. Positives at 0 and 2: ranks 3 and 1 -> (1/1 + 2/3) / 2.
        let ap = ram_average_precision(&[0.5, 0.5, 0.5, 0.1], &[true, false, true, false]);
        close(ap, (1.0 + 2.0 / 3.0) / (2.0 + 1e-8));
        // Positive at 2 only: ranked first -> 1 (sklearn's tie grouping would give 1/3).
        close(
            ram_average_precision(&[0.5, 0.5, 0.5, 0.1], &[false, false, true, false]),
            1.0 / (1.0 + 1e-8),
        );
        // NaN is last in numpy's ascending order, so ranked first.
        close(
            ram_average_precision(&[f32::NAN, 0.9], &[false, true]),
            0.5 / (1.0 + 1e-8),
        );
    }

    #[test]
    fn ram_precision_recall_counts_equal_scores_as_predicted() {
        let (p, r) = ram_precision_recall(&[0.9, 0.6, 0.5, 0.1], &[true, false, true, false], 0.5);
        close(p, 2.0 / (3.0 + 1e-9));
        close(r, 2.0 / (2.0 + 1e-9));
        assert_eq!(ram_precision_recall(&[0.1], &[false], 0.5), (0.0, 0.0));
        let s = RamSummary::of([(1.0, 0.5, 1.0), (0.0, 0.0, 0.0)]).unwrap();
        close(s.map, 0.5);
        close(s.cp, 0.25);
        close(s.cr, 0.5);
        close(s.f1, 2.0 * 0.25 * 0.5 / 0.75);
    }

    #[test]
    fn counts_at_a_strict_threshold() {
        // > 0.5: predicted {0.9, 0.6}; the 0.5 is not predicted.
        let c = Counts::at_threshold(&[0.9, 0.6, 0.5, 0.1], &[true, false, true, false], 0.5);
        assert_eq!(
            c,
            Counts {
                positives: 2,
                predicted: 2,
                true_positives: 1
            }
        );
        close(c.precision(), 0.5);
        close(c.recall(), 0.5);
        close(c.f1(), 0.5);
        let none = Counts::at_threshold(&[0.1], &[true], 0.5);
        assert_eq!((none.precision(), none.f1()), (0.0, 0.0));
    }
}
