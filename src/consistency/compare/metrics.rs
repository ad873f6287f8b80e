//! Row-by-row metrics shared by both comparisons: cosine and norm per row, their aggregate over
//! slots, the mean shift, and rows that moved to another slot.

use super::{gather, Ctx};
use crate::consistency::kernels::{cosine, norm};
use crate::consistency::knn::{Exclude, Index, Neighbours, Rows};
use crate::consistency::report::*;
use crate::consistency::stats::{overlap_at, Dist};

/// A candidate row counts as "moved" when it matches another slot's baseline row at least this well
/// (and clearly better than its own).
pub(super) const MOVED_MIN_SIMILARITY: f32 = 0.995;

/// Rows listed side by side at most.
pub(super) const MAX_DISAGREEMENTS: usize = 25;

/// Per-row comparison of `cand` rows against `base` rows, both raw (un-normalised) and aligned.
pub(super) struct RowMetrics {
    pub(super) cosine: Vec<f32>,
    norm_dev: Vec<f32>,
    changed: Vec<bool>,
}

pub(super) fn row_metrics(base: &[f32], cand: &[f32], dim: usize) -> RowMetrics {
    let n = base.len() / dim;
    let mut m = RowMetrics {
        cosine: Vec::with_capacity(n),
        norm_dev: Vec::with_capacity(n),
        changed: Vec::with_capacity(n),
    };
    for i in 0..n {
        let (b, c) = (&base[i * dim..(i + 1) * dim], &cand[i * dim..(i + 1) * dim]);
        let (nb, nc) = (norm(b), norm(c));
        m.cosine.push(cosine(b, c));
        m.norm_dev
            .push(((f64::from(nc) - f64::from(nb)) / f64::from(nb)).abs() as f32);
        m.changed
            .push(b.iter().zip(c).any(|(x, y)| x.to_bits() != y.to_bits()));
    }
    m
}

pub(super) fn mean_vector(unit: &[f32], dim: usize) -> Vec<f64> {
    let n = (unit.len() / dim).max(1);
    let mut m = vec![0f64; dim];
    for row in unit.chunks(dim) {
        for (a, v) in m.iter_mut().zip(row) {
            *a += *v as f64;
        }
    }
    m.iter_mut().for_each(|a| *a /= n as f64);
    m
}

pub(super) fn mean_shift(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (ma, mb) = (mean_vector(a, dim), mean_vector(b, dim));
    ma.iter()
        .zip(&mb)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Shared by both modes: per-slot aggregation of per-row metrics over the compared rows.
///
/// `rows[i]` is the baseline row behind compared row i; `nb_base`/`nb_cand` hold its neighbours in
/// the two spaces (query i), `moved[i]` the baseline row it matches instead of its own.
#[allow(clippy::too_many_arguments)]
pub(super) fn aggregate(
    ctx: &Ctx,
    rows: &[usize],
    m: &RowMetrics,
    nb_base: &Neighbours,
    nb_cand: &Neighbours,
    moved: &[Option<usize>],
) -> (Vec<SlotResult>, Vec<Disagreement>) {
    let mut slots: Vec<SlotResult> = Vec::new();
    let mut first_query_of_slot = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        let slot = ctx.slot_of(r);
        let overlaps: Vec<f32> = ctx
            .ks
            .iter()
            .map(|&k| overlap_at(nb_base.ids(i), nb_cand.ids(i), k))
            .collect();
        let moved_slot = moved[i].map(|b| ctx.slot_of(b));
        match slots.last_mut() {
            Some(s) if s.slot == slot => {
                s.cosine = s.cosine.min(m.cosine[i]);
                for (a, o) in s.overlap.iter_mut().zip(&overlaps) {
                    *a += o;
                }
                s.norm_deviation = s.norm_deviation.max(m.norm_dev[i]);
                s.changed |= m.changed[i];
                s.holds_baseline_slot = s.holds_baseline_slot.or(moved_slot);
            }
            _ => {
                slots.push(SlotResult {
                    slot,
                    tag: ctx.tag(slot),
                    cosine: m.cosine[i],
                    overlap: overlaps,
                    norm_deviation: m.norm_dev[i],
                    changed: m.changed[i],
                    holds_baseline_slot: moved_slot,
                });
                first_query_of_slot.push(i);
            }
        }
    }
    let rps = ctx.rps() as f32;
    for s in &mut slots {
        s.overlap.iter_mut().for_each(|o| *o /= rps);
    }
    let ki = ctx.ki();
    let mut order: Vec<usize> = (0..slots.len())
        .filter(|&j| slots[j].overlap[ki] < 1.0 || slots[j].holds_baseline_slot.is_some())
        .collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (&slots[a], &slots[b]);
        sa.overlap[ki]
            .total_cmp(&sb.overlap[ki])
            .then(sa.cosine.total_cmp(&sb.cosine))
            .then(sa.slot.cmp(&sb.slot))
    });
    let disagreements = order
        .into_iter()
        .take(MAX_DISAGREEMENTS)
        .map(|j| {
            let q = first_query_of_slot[j];
            Disagreement {
                slot: slots[j].slot,
                tag: slots[j].tag.clone(),
                cosine: slots[j].cosine,
                overlap: slots[j].overlap[ki],
                baseline_neighbours: ctx.neighbour_tags(nb_base, q, nb_cand.ids(q)),
                candidate_neighbours: ctx.neighbour_tags(nb_cand, q, nb_base.ids(q)),
            }
        })
        .collect();
    (slots, disagreements)
}

pub(super) fn summarise(ctx: &Ctx, slots: &[SlotResult], m: &RowMetrics) -> Summary {
    let cos: Vec<f32> = slots.iter().map(|s| s.cosine).collect();
    Summary {
        compared_slots: slots.len(),
        compared_rows: m.cosine.len(),
        changed_rows: m.changed.iter().filter(|c| **c).count(),
        cosine: Dist::of(&cos),
        overlap: ctx
            .ks
            .iter()
            .enumerate()
            .map(|(j, &k)| OverlapAtK {
                k,
                dist: Dist::of(&slots.iter().map(|s| s.overlap[j]).collect::<Vec<_>>()),
            })
            .collect(),
        max_norm_deviation: m.norm_dev.iter().fold(0f32, |a, &b| a.max(b)) as f64,
        misaligned_slots: slots
            .iter()
            .filter(|s| s.holds_baseline_slot.is_some())
            .count(),
        ..Default::default()
    }
}

/// For compared rows that do not match their own baseline row, the baseline row they match instead.
pub(super) fn find_moved(
    base_index: &Index<'_>,
    cand_unit: &[f32],
    dim: usize,
    rows: &[usize],
    cosine: &[f32],
) -> (Vec<Option<usize>>, Option<NamedSearch>) {
    let suspects: Vec<usize> = (0..rows.len())
        .filter(|&i| cosine[i] < MOVED_MIN_SIMILARITY)
        .collect();
    let mut moved = vec![None; rows.len()];
    if suspects.is_empty() {
        return (moved, None);
    }
    let q = gather(cand_unit, dim, &suspects);
    let (nb, stats) = base_index.search(Rows::new(&q, dim), 1, Exclude::Nothing);
    for (j, &i) in suspects.iter().enumerate() {
        let (best, sim) = (nb.ids(j)[0], nb.sims(j)[0]);
        if best != u32::MAX
            && best as usize != rows[i]
            && sim >= MOVED_MIN_SIMILARITY
            && sim > cosine[i] + 0.01
        {
            moved[i] = Some(best as usize);
        }
    }
    (
        moved,
        Some(NamedSearch {
            space: "moved-rows".into(),
            stats,
        }),
    )
}
