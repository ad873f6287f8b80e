//! Per-slot thresholds fitted on a benchmark (`tagfix eval --fit-thresholds`). After retraining,
//! and above all for slots whose label embeddings were regenerated, the official
//! `ram_tag_list_threshold.txt` values were tuned for another model; each slot the benchmark has
//! positive images for gets the threshold that maximises its F1 there, the others keep theirs, and
//! the file stays in slot order, one line a slot, as the official sidecar.

use super::metrics::Counts;
use super::Thresholds;

/// One slot's column of scores over the benchmark images, with whether each image carries the tag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotColumn {
    pub scores: Vec<f32>,
    pub targets: Vec<bool>,
}

/// A slot whose threshold was fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedSlot {
    pub slot: usize,
    pub before: f32,
    pub after: f32,
    pub counts_before: Counts,
    pub counts_after: Counts,
}

/// The fitted thresholds and what was done to each slot.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedThresholds {
    /// Every slot's threshold: fitted where a threshold catches one of the slot's positive images
    /// in the benchmark, else the base's.
    pub thresholds: Thresholds,
    pub fitted: Vec<FittedSlot>,
    /// Slots the benchmark maps but no threshold can catch a positive image of (it has none, or
    /// each scores 0 or NaN): kept.
    pub unfitted: Vec<usize>,
}

impl FittedThresholds {
    /// Mean F1 over the fitted slots at the base thresholds and at the fitted ones.
    pub fn mean_f1(&self) -> Option<(f64, f64)> {
        let n = self.fitted.len() as f64;
        (n > 0.0).then(|| {
            let sum = |f: fn(&FittedSlot) -> f64| self.fitted.iter().map(f).sum::<f64>() / n;
            (sum(|s| s.counts_before.f1()), sum(|s| s.counts_after.f1()))
        })
    }
}

/// The threshold `t` that maximises F1 for predictions `score > t`, among one threshold per gap
/// between distinct scores (the midpoint, so that a score a little off either side decides alike),
/// the highest on a tie; `None` where no threshold catches a positive image (there is none, or
/// each scores 0 or NaN). NaN scores are never predicted.
pub fn best_threshold(column: &SlotColumn) -> Option<(f32, Counts)> {
    let positives = column.targets.iter().filter(|&&t| t).count() as u64;
    if positives == 0 {
        return None;
    }
    let mut ranked: Vec<(f32, bool)> = column
        .scores
        .iter()
        .zip(&column.targets)
        .filter(|(s, _)| !s.is_nan())
        .map(|(&s, &t)| (s, t))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best: Option<(f32, Counts)> = None;
    let (mut predicted, mut true_positives) = (0u64, 0u64);
    let mut k = 0;
    while k < ranked.len() {
        // Everything scoring at least this group's score is predicted.
        let score = ranked[k].0;
        while k < ranked.len() && ranked[k].0 == score {
            predicted += 1;
            true_positives += u64::from(ranked[k].1);
            k += 1;
        }
        let below = ranked.get(k).map_or(0.0, |r| r.0.max(0.0));
        let Some(threshold) = threshold_between(below, score) else {
            continue;
        };
        let counts = Counts {
            positives,
            predicted,
            true_positives,
        };
        if true_positives > 0 && best.is_none_or(|(_, b)| counts.f1() > b.f1()) {
            best = Some((threshold, counts));
        }
    }
    best
}

/// A threshold `t` with `below <= t < score` (so `score > t` and `below > t` is false): their
/// midpoint, or `below` where the midpoint rounds to `score`; `None` where no such value lies in
/// [0, 1].
fn threshold_between(below: f32, score: f32) -> Option<f32> {
    // Neither is NaN: the caller leaves NaN scores out.
    if score <= below || !(0.0..=1.0).contains(&below) {
        return None;
    }
    let mid = ((f64::from(below) + f64::from(score)) / 2.0) as f32;
    Some(if mid < score { mid } else { below })
}

/// Fits every slot of `columns` (slot, its column) for which a threshold catches a positive image;
/// every other slot keeps its `base` threshold.
pub fn fit_thresholds(columns: &[(usize, SlotColumn)], base: &Thresholds) -> FittedThresholds {
    let mut values = base.values.clone();
    let mut fitted = Vec::new();
    let mut unfitted = Vec::new();
    for (slot, column) in columns {
        let Some((after, counts_after)) = best_threshold(column) else {
            unfitted.push(*slot);
            continue;
        };
        let before = base.values[*slot];
        values[*slot] = after;
        fitted.push(FittedSlot {
            slot: *slot,
            before,
            after,
            counts_before: Counts::at_threshold(&column.scores, &column.targets, before),
            counts_after,
        });
    }
    FittedThresholds {
        thresholds: Thresholds {
            values,
            source: format!("fitted on the benchmark, else {}", base.source),
        },
        fitted,
        unfitted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn column(pairs: &[(f32, bool)]) -> SlotColumn {
        SlotColumn {
            scores: pairs.iter().map(|p| p.0).collect(),
            targets: pairs.iter().map(|p| p.1).collect(),
        }
    }

    /// Midpoints of f32 scores, computed in f64, land within an f32 step of the decimal.
    fn assert_near(t: f32, want: f32) {
        assert!((t - want).abs() < 1e-6, "{t} vs {want}");
    }

    #[test]
    fn separable_scores_get_a_threshold_between_the_classes() {
        let c = column(&[(0.9, true), (0.2, false), (0.7, true), (0.4, false)]);
        let (t, counts) = best_threshold(&c).unwrap();
        assert_near(t, 0.55);
        assert_eq!(counts.f1(), 1.0);
        assert_eq!(counts, Counts::at_threshold(&c.scores, &c.targets, t));
    }

    #[test]
    fn ties_go_to_the_highest_threshold_and_tied_scores_fall_together() {
        // Predicting the top image alone or all four gives F1 2/3 either way: the higher wins.
        let c = column(&[(0.8, true), (0.6, false), (0.5, false), (0.3, true)]);
        let (t, counts) = best_threshold(&c).unwrap();
        assert_near(t, 0.7);
        assert_eq!((counts.predicted, counts.true_positives), (1, 1));
        // Equal scores cannot be split: both are predicted or neither.
        let c = column(&[(0.5, true), (0.5, false), (0.1, false)]);
        let (t, counts) = best_threshold(&c).unwrap();
        assert_near(t, 0.3);
        assert_eq!((counts.predicted, counts.true_positives), (2, 1));
    }

    #[test]
    fn the_lowest_score_is_predicted_through_a_threshold_below_it() {
        let c = column(&[(0.3, true), (0.2, true)]);
        let (t, counts) = best_threshold(&c).unwrap();
        assert_near(t, 0.1);
        assert_eq!(counts.f1(), 1.0);
        // A positive at score 0 cannot be predicted with `score > t`, t >= 0: nothing to fit.
        assert_eq!(best_threshold(&column(&[(0.0, true), (0.6, false)])), None);
    }

    #[test]
    fn adjacent_floats_keep_the_strict_comparison() {
        let hi = 0.5f32;
        let lo = f32::from_bits(hi.to_bits() - 1);
        let c = column(&[(hi, true), (lo, false)]);
        let (t, counts) = best_threshold(&c).unwrap();
        assert!(hi > t && lo <= t, "{t}");
        assert_eq!(counts.f1(), 1.0);
    }

    #[test]
    fn no_positive_no_fit_and_nan_is_never_predicted() {
        assert_eq!(best_threshold(&column(&[(0.9, false), (0.1, false)])), None);
        let c = column(&[(f32::NAN, true), (0.8, true), (0.4, false)]);
        let (t, counts) = best_threshold(&c).unwrap();
        assert_near(t, 0.6);
        assert_eq!(counts, Counts::at_threshold(&c.scores, &c.targets, t));
        assert_eq!(
            best_threshold(&column(&[(f32::NAN, true), (0.4, false)])),
            None
        );
    }

    #[test]
    fn the_fitted_threshold_is_as_good_as_any_other() {
        let mut rng = SplitMix64(7);
        for _ in 0..300 {
            let n = 1 + rng.below(39);
            let pairs: Vec<(f32, bool)> = (0..n)
                .map(|_| {
                    // Coarse scores make ties common.
                    let s = rng.below(21) as f32 / 20.0;
                    (s, rng.uniform() < 0.3)
                })
                .collect();
            let c = column(&pairs);
            let Some((t, counts)) = best_threshold(&c) else {
                assert!(pairs.iter().all(|p| !p.1 || p.0 == 0.0));
                continue;
            };
            assert!((0.0..=1.0).contains(&t));
            assert_eq!(counts, Counts::at_threshold(&c.scores, &c.targets, t));
            for k in 0..=1000 {
                let other = Counts::at_threshold(&c.scores, &c.targets, k as f32 / 1000.0);
                assert!(other.f1() <= counts.f1(), "{pairs:?}: {t} vs {k}");
            }
        }
    }

    #[test]
    fn slots_without_positives_and_slots_not_in_the_benchmark_keep_their_thresholds() {
        let base = Thresholds::uniform(0.5, 4);
        let columns = vec![
            (1, column(&[(0.9, true), (0.6, false)])),
            (3, column(&[(0.9, false), (0.6, false)])),
        ];
        let fit = fit_thresholds(&columns, &base);
        assert_eq!(fit.thresholds.values[0], 0.5);
        assert_near(fit.thresholds.values[1], 0.75);
        assert_eq!(fit.thresholds.values[2..], [0.5, 0.5]);
        assert_eq!(fit.unfitted, vec![3]);
        assert_eq!(fit.fitted.len(), 1);
        let s = &fit.fitted[0];
        assert_eq!(
            (s.slot, s.before, s.after),
            (1, 0.5, fit.thresholds.values[1])
        );
        assert_eq!(fit.mean_f1(), Some((2.0 / 3.0, 1.0)));
    }
}
