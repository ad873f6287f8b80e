//! The two comparisons behind `tagfix check`:
//!
//! * **drift** — baseline and candidate row by row: cosine, kNN overlap (each row's k nearest rows in
//!   the baseline space against its k nearest in the candidate space), changed rows, mean shift, norm
//!   change, and rows that moved to another slot;
//! * **consistency** — a patched file from `embed` against its base: the `control` rows (present slots
//!   re-embedded with the same pipeline) are compared with their base rows, which calibrates how far
//!   a correctly regenerated row may sit from the base space; each regenerated row (which has no
//!   original) is then scored against that control distribution.

use super::inputs::{ensure_comparable, resolve_layout, validate_rows, EmbeddingInput, SlotNames};
use super::kernels::{cosine, dot, norm, normalised_rows};
use super::knn::{Exclude, Index, Neighbours, Rows, SearchConfig};
use super::policy::Policy;
use super::report::*;
use super::stats::{overlap_at, quantile, rank_in, Dist};
use crate::error::{Error, Result};
use crate::tensors::Layout;
use crate::vocab::{Slot, Vocabulary};
use std::borrow::Cow;
use std::collections::BTreeSet;

/// A candidate row counts as "moved" when it matches another slot's baseline row at least this well
/// (and clearly better than its own).
const MOVED_MIN_SIMILARITY: f32 = 0.995;
/// Rows listed side by side at most.
const MAX_DISAGREEMENTS: usize = 25;

/// How to run a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `None`: consistency when the candidate carries a control tensor, else drift.
    pub mode: Option<Mode>,
    pub policy: Policy,
    /// Only these slots are compared and gated (neighbours still come from the whole file).
    pub slots: Option<Vec<Slot>>,
    pub search: SearchConfig,
}

/// Runs the check and evaluates the policy.
pub fn run_check(
    baseline: &EmbeddingInput,
    candidate: &EmbeddingInput,
    vocab: Option<&Vocabulary>,
    opts: &CheckOptions,
) -> Result<CheckReport> {
    let lb = resolve_layout(baseline, vocab)?;
    let lc = resolve_layout(candidate, vocab)?;
    ensure_comparable(baseline, candidate, lb, lc)?;
    let names = SlotNames {
        tags: vocab.map(|v| v.tags.clone()),
    };
    let mode = match opts.mode {
        Some(m) => m,
        None if candidate.control.is_some() => {
            tracing::info!(
                "{} carries a `control` tensor: checking semantic consistency against {} (--mode drift compares row by row)",
                candidate.path().display(),
                baseline.path().display()
            );
            Mode::Consistency
        }
        None => Mode::Drift,
    };
    let ks = opts.policy.all_k();
    let kmax = *ks.last().expect("k");
    if baseline.file.rows <= kmax {
        return Err(Error::Usage(format!(
            "k = {kmax} needs more than {kmax} rows, but {} has {}",
            baseline.path().display(),
            baseline.file.rows
        )));
    }
    let ctx = Ctx {
        layout: lb,
        names,
        ks: ks.clone(),
        k: opts.policy.k,
        search: opts.search.clone(),
    };
    let selected = select_slots(opts.slots.as_deref(), lb)?;
    let mut report = match mode {
        Mode::Drift => drift(&ctx, baseline, candidate, &selected)?,
        Mode::Consistency => consistency(&ctx, baseline, candidate, &selected, &opts.policy)?,
    };
    report.vocabulary_sha256 = vocab.map(|v| v.sha256.clone());
    report.rules = opts.policy.evaluate(&report);
    report.passed = report.rules.iter().all(|r| r.passed);
    Ok(report)
}

struct Ctx {
    layout: Layout,
    names: SlotNames,
    ks: Vec<usize>,
    k: usize,
    search: SearchConfig,
}

impl Ctx {
    fn rps(&self) -> usize {
        self.layout.rows_per_slot()
    }
    fn slot_of(&self, row: usize) -> Slot {
        row / self.rps()
    }
    fn tag(&self, slot: Slot) -> Option<String> {
        self.names.tag(slot).map(str::to_string)
    }
    fn kmax(&self) -> usize {
        *self.ks.last().expect("k")
    }
    fn ki(&self) -> usize {
        self.ks.iter().position(|&k| k == self.k).unwrap_or(0)
    }
    /// Neighbour list of one query as tags (slots), marking those the other list shares.
    fn neighbour_tags(&self, nb: &Neighbours, q: usize, other: &[u32]) -> Vec<NeighbourTag> {
        let k = self.k;
        nb.ids(q)[..k]
            .iter()
            .zip(&nb.sims(q)[..k])
            .filter(|(id, _)| **id != u32::MAX)
            .map(|(&id, &s)| NeighbourTag {
                slot: self.slot_of(id as usize),
                tag: self.tag(self.slot_of(id as usize)),
                similarity: s,
                shared: other[..k.min(other.len())].contains(&id),
            })
            .collect()
    }
}

fn select_slots(slots: Option<&[Slot]>, layout: Layout) -> Result<Vec<Slot>> {
    match slots {
        None => Ok((0..layout.tags()).collect()),
        Some(list) => {
            if let Some(bad) = list.iter().find(|&&s| s >= layout.tags()) {
                return Err(Error::Usage(format!(
                    "--slots names slot {bad}, but the files have {} slots (0..{})",
                    layout.tags(),
                    layout.tags() - 1
                )));
            }
            let set: BTreeSet<Slot> = list.iter().copied().collect();
            Ok(set.into_iter().collect())
        }
    }
}

fn file_info(input: &EmbeddingInput) -> FileInfo {
    let f = &input.file;
    FileInfo {
        path: f.path.display().to_string(),
        sha256: input.sha256.clone(),
        tensor: f.tensor_name.clone(),
        dtype: f.dtype,
        rows: f.rows,
        dim: f.dim,
        model: input
            .provenance
            .as_ref()
            .map(|p| p.model.clone())
            .filter(|s| !s.is_empty()),
        recipe: input
            .provenance
            .as_ref()
            .map(|p| p.recipe.clone())
            .filter(|s| !s.is_empty()),
    }
}

/// Rows `ids` of the unit matrix `unit` as queries that skip their own row. When `ids` are all rows
/// in order, `unit` itself is returned (no copy) with `SameIndex`, which exact search answers with the
/// symmetric self-join (half the arithmetic).
fn own_rows<'a>(
    unit: &'a [f32],
    dim: usize,
    ids: &[usize],
    excl: &'a [u32],
) -> (Cow<'a, [f32]>, Exclude<'a>) {
    let all = ids.len() * dim == unit.len() && ids.iter().enumerate().all(|(i, &r)| i == r);
    if all {
        (Cow::Borrowed(unit), Exclude::SameIndex)
    } else {
        (Cow::Owned(gather(unit, dim, ids)), Exclude::Given(excl))
    }
}

/// Copies rows `ids` of a row-major matrix.
fn gather(values: &[f32], dim: usize, ids: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &r in ids {
        out.extend_from_slice(&values[r * dim..(r + 1) * dim]);
    }
    out
}

/// Per-row comparison of `cand` rows against `base` rows, both raw (un-normalised) and aligned.
struct RowMetrics {
    cosine: Vec<f32>,
    norm_dev: Vec<f32>,
    changed: Vec<bool>,
}

fn row_metrics(base: &[f32], cand: &[f32], dim: usize) -> RowMetrics {
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

fn mean_vector(unit: &[f32], dim: usize) -> Vec<f64> {
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

fn mean_shift(a: &[f32], b: &[f32], dim: usize) -> f64 {
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
fn aggregate(
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

fn summarise(ctx: &Ctx, slots: &[SlotResult], m: &RowMetrics) -> Summary {
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
fn find_moved(
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

fn drift(
    ctx: &Ctx,
    baseline: &EmbeddingInput,
    candidate: &EmbeddingInput,
    selected: &[Slot],
) -> Result<CheckReport> {
    let (b, c) = (&baseline.file, &candidate.file);
    let dim = b.dim;
    let none = BTreeSet::new();
    let slot_of = |r: usize| ctx.slot_of(r);
    validate_rows(b, ctx.rps(), &slot_of, &none, &ctx.names)?;
    validate_rows(c, ctx.rps(), &slot_of, &none, &ctx.names)?;
    let rows: Vec<usize> = selected
        .iter()
        .flat_map(|&s| ctx.layout.rows_of(s))
        .collect();
    let bu = normalised_rows(&b.values, dim);
    let cu = normalised_rows(&c.values, dim);
    let m = row_metrics(
        &gather(&b.values, dim, &rows),
        &gather(&c.values, dim, &rows),
        dim,
    );

    let excl: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let base_index = Index::build(Rows::new(&bu, dim), &ctx.search);
    let cand_index = Index::build(Rows::new(&cu, dim), &ctx.search);
    let (qb, qb_excl) = own_rows(&bu, dim, &rows, &excl);
    let (qc, qc_excl) = own_rows(&cu, dim, &rows, &excl);
    let (nb_base, sb) = base_index.search(Rows::new(&qb, dim), ctx.kmax(), qb_excl);
    let (nb_cand, sc) = cand_index.search(Rows::new(&qc, dim), ctx.kmax(), qc_excl);
    let (moved, sm) = find_moved(&base_index, &qc, dim, &rows, &m.cosine);

    let (slots, disagreements) = aggregate(ctx, &rows, &m, &nb_base, &nb_cand, &moved);
    let mut summary = summarise(ctx, &slots, &m);
    summary.mean_shift = mean_shift(&cu, &bu, dim);
    let mut search = vec![
        NamedSearch {
            space: "baseline".into(),
            stats: sb,
        },
        NamedSearch {
            space: "candidate".into(),
            stats: sc,
        },
    ];
    search.extend(sm);
    Ok(CheckReport {
        schema: REPORT_SCHEMA.into(),
        generator: format!("tagfix {}", env!("CARGO_PKG_VERSION")),
        mode: Mode::Drift,
        baseline: file_info(baseline),
        candidate: file_info(candidate),
        vocabulary_sha256: None,
        layout: ctx.layout,
        ks: ctx.ks.clone(),
        k: ctx.k,
        search,
        summary,
        slots,
        regenerated: vec![],
        calibration: None,
        disagreements,
        changed_untouched_slots: vec![],
        rules: vec![],
        passed: false,
    })
}

fn consistency(
    ctx: &Ctx,
    baseline: &EmbeddingInput,
    patched: &EmbeddingInput,
    selected: &[Slot],
    policy: &Policy,
) -> Result<CheckReport> {
    let path = patched.path();
    let control = patched.control.as_ref().ok_or_else(|| {
        Error::invalid(
            path,
            "has no `control` tensor, so semantic consistency cannot be calibrated: have `tagfix embed` \
             re-embed control slots into it, or compare row by row with --mode drift",
        )
    })?;
    let prov = patched.provenance.as_ref().ok_or_else(|| {
        Error::invalid(
            path,
            "has a `control` tensor but no tagfix provenance (tagfix.control_slots, tagfix.regenerated_slots)",
        )
    })?;
    if let Some(want) = prov.base_sha256.as_deref().filter(|s| !s.is_empty()) {
        if want != baseline.sha256 {
            return Err(Error::invalid(
                path,
                format!(
                    "was patched from a base file with sha256 {want}, but {} has sha256 {}: give the base it was made from",
                    baseline.path().display(),
                    baseline.sha256
                ),
            ));
        }
    }
    let (b, p) = (&baseline.file, &patched.file);
    let dim = b.dim;
    let rps = ctx.rps();
    let tags = ctx.layout.tags();
    if control.dim != dim || control.rows != prov.control_slots.len() * rps {
        return Err(Error::invalid(
            path,
            format!(
                "tensor `control` is [{}, {}], but {} control slots × {rps} rows per slot × dim {dim} were expected",
                control.rows,
                control.dim,
                prov.control_slots.len()
            ),
        ));
    }
    if let Some(&bad) = prov
        .control_slots
        .iter()
        .chain(&prov.regenerated_slots)
        .find(|&&s| s >= tags)
    {
        return Err(Error::invalid(
            path,
            format!("provenance names slot {bad}, but the vocabulary has {tags} slots"),
        ));
    }
    let regenerated: BTreeSet<Slot> = prov.regenerated_slots.iter().copied().collect();
    if let Some(s) = prov.control_slots.iter().find(|s| regenerated.contains(s)) {
        return Err(Error::invalid(
            path,
            format!(
                "{} is both a control slot and a regenerated slot: control slots must have an original",
                ctx.names.label(*s)
            ),
        ));
    }
    let slot_of = |r: usize| ctx.slot_of(r);
    validate_rows(b, rps, &slot_of, &regenerated, &ctx.names)?;
    validate_rows(p, rps, &slot_of, &BTreeSet::new(), &ctx.names)?;
    let control_slot_of = |r: usize| prov.control_slots[r / rps];
    validate_rows(control, rps, &control_slot_of, &BTreeSet::new(), &ctx.names)?;

    // Untouched rows must be bit-identical to the base.
    let mut changed_untouched_rows = 0;
    let mut changed_untouched_slots = BTreeSet::new();
    for r in 0..b.rows {
        let s = ctx.slot_of(r);
        if !regenerated.contains(&s)
            && b.row(r)
                .iter()
                .zip(p.row(r))
                .any(|(x, y)| x.to_bits() != y.to_bits())
        {
            changed_untouched_rows += 1;
            changed_untouched_slots.insert(s);
        }
    }

    // Control rows (optionally restricted to --slots) against their base rows.
    let wanted: BTreeSet<Slot> = selected.iter().copied().collect();
    let mut ctrl_rows = Vec::new(); // row in the control tensor
    let mut base_rows = Vec::new(); // the matching row in base / patched
    for (j, &s) in prov.control_slots.iter().enumerate() {
        if wanted.contains(&s) {
            for d in 0..rps {
                ctrl_rows.push(j * rps + d);
                base_rows.push(s * rps + d);
            }
        }
    }
    if ctrl_rows.is_empty() {
        return Err(Error::Usage(format!(
            "{}: none of the selected slots is a control slot ({} control slots in the file)",
            path.display(),
            prov.control_slots.len()
        )));
    }
    // Keep slot order for aggregation.
    let mut order: Vec<usize> = (0..ctrl_rows.len()).collect();
    order.sort_by_key(|&i| base_rows[i]);
    let ctrl_rows: Vec<usize> = order.iter().map(|&i| ctrl_rows[i]).collect();
    let base_rows: Vec<usize> = order.iter().map(|&i| base_rows[i]).collect();

    let bu = normalised_rows(&b.values, dim);
    let pu = normalised_rows(&p.values, dim);
    let cu = normalised_rows(&control.values, dim);
    let m = row_metrics(
        &gather(&b.values, dim, &base_rows),
        &gather(&control.values, dim, &ctrl_rows),
        dim,
    );
    let base_index = Index::build(Rows::new(&bu, dim), &ctx.search);
    let patched_index = Index::build(Rows::new(&pu, dim), &ctx.search);
    let excl: Vec<u32> = base_rows.iter().map(|&r| r as u32).collect();
    let (qb, qb_excl) = own_rows(&bu, dim, &base_rows, &excl);
    let qc = gather(&cu, dim, &ctrl_rows);
    let (nb_base, sb) = base_index.search(Rows::new(&qb, dim), ctx.kmax(), qb_excl);
    let (nb_ctrl, sc) =
        patched_index.search(Rows::new(&qc, dim), ctx.kmax(), Exclude::Given(&excl));
    let (moved, sm) = find_moved(&base_index, &qc, dim, &base_rows, &m.cosine);
    let (slots, disagreements) = aggregate(ctx, &base_rows, &m, &nb_base, &nb_ctrl, &moved);
    let mut summary = summarise(ctx, &slots, &m);
    summary.mean_shift = mean_shift(&qc, &qb, dim);
    summary.changed_untouched_rows = changed_untouched_rows;

    // Calibration: neighbourhood score = mean similarity to the k nearest rows of the patched file.
    let k = ctx.k;
    let score =
        |nb: &Neighbours, q: usize| -> f32 { nb.sims(q)[..k].iter().sum::<f32>() / k as f32 };
    let per_slot_scores = |nb: &Neighbours, rows: &[usize]| -> Vec<(Slot, f32)> {
        let mut out: Vec<(Slot, f32)> = Vec::new();
        for (q, &r) in rows.iter().enumerate() {
            let s = ctx.slot_of(r);
            match out.last_mut() {
                Some((last, acc)) if *last == s => *acc += score(nb, q),
                _ => out.push((s, score(nb, q))),
            }
        }
        out.iter_mut().for_each(|(_, a)| *a /= rps as f32);
        out
    };
    let control_scores: Vec<f32> = per_slot_scores(&nb_ctrl, &base_rows)
        .into_iter()
        .map(|x| x.1)
        .collect();
    let base_scores: Vec<f32> = per_slot_scores(&nb_base, &base_rows)
        .into_iter()
        .map(|x| x.1)
        .collect();
    let regen_rows: Vec<usize> = regenerated
        .iter()
        .filter(|s| wanted.contains(s))
        .flat_map(|&s| ctx.layout.rows_of(s))
        .collect();
    let mut search = vec![
        NamedSearch {
            space: "baseline".into(),
            stats: sb,
        },
        NamedSearch {
            space: "control".into(),
            stats: sc,
        },
    ];
    search.extend(sm);
    let threshold = quantile(&control_scores, policy.calibration_quantile);
    let mut sorted_control: Vec<f64> = control_scores.iter().map(|&x| x as f64).collect();
    sorted_control.sort_by(|a, b| a.total_cmp(b));
    let mut regen = Vec::new();
    if !regen_rows.is_empty() {
        let qr = gather(&pu, dim, &regen_rows);
        let rex: Vec<u32> = regen_rows.iter().map(|&r| r as u32).collect();
        let (nb_regen, sr) =
            patched_index.search(Rows::new(&qr, dim), ctx.kmax(), Exclude::Given(&rex));
        search.push(NamedSearch {
            space: "regenerated".into(),
            stats: sr,
        });
        // Older base rows at these slots, where usable, for an informational comparison.
        let usable: Vec<bool> = regen_rows
            .iter()
            .map(|&r| {
                let row = b.row(r);
                row.iter().all(|v| v.is_finite()) && row.iter().any(|v| *v != 0.0)
            })
            .collect();
        let old_rows: Vec<usize> = regen_rows
            .iter()
            .zip(&usable)
            .filter(|(_, u)| **u)
            .map(|(r, _)| *r)
            .collect();
        let qo = gather(&bu, dim, &old_rows);
        let oex: Vec<u32> = old_rows.iter().map(|&r| r as u32).collect();
        let (nb_old, _) = base_index.search(Rows::new(&qo, dim), ctx.kmax(), Exclude::Given(&oex));
        let mut old_query = vec![usize::MAX; regen_rows.len()];
        let mut next = 0;
        for (i, u) in usable.iter().enumerate() {
            if *u {
                old_query[i] = next;
                next += 1;
            }
        }
        let mut first_query = 0;
        for (slot, sc) in per_slot_scores(&nb_regen, &regen_rows) {
            let qs = first_query..first_query + rps;
            let (cosine_to_base, overlap_with_base) = if qs.clone().all(|q| usable[q]) {
                let cos = qs
                    .clone()
                    .map(|q| dot(&bu[regen_rows[q] * dim..][..dim], &qr[q * dim..][..dim]))
                    .fold(f32::INFINITY, f32::min);
                let ov = qs
                    .clone()
                    .map(|q| overlap_at(nb_old.ids(old_query[q]), nb_regen.ids(q), k))
                    .sum::<f32>()
                    / rps as f32;
                (Some(cos.clamp(-1.0, 1.0)), Some(ov))
            } else {
                (None, None)
            };
            regen.push(RegeneratedResult {
                slot,
                tag: ctx.tag(slot),
                score: sc,
                control_rank: rank_in(&sorted_control, sc as f64) as f32,
                trusted: sc as f64 >= threshold,
                neighbours: ctx.neighbour_tags(&nb_regen, first_query, &[]),
                cosine_to_base,
                overlap_with_base,
            });
            first_query += rps;
        }
    }
    let regen_scores: Vec<f32> = regen.iter().map(|g| g.score).collect();
    let trusted_share = if regen.is_empty() {
        1.0
    } else {
        regen.iter().filter(|g| g.trusted).count() as f64 / regen.len() as f64
    };
    summary.regenerated_slots = regen.len();
    let calibration = Calibration {
        k,
        quantile: policy.calibration_quantile,
        threshold,
        control: Dist::of(&control_scores),
        base: Dist::of(&base_scores),
        regenerated: Dist::of(&regen_scores),
        trusted_share,
        control_scores,
        base_scores,
    };
    Ok(CheckReport {
        schema: REPORT_SCHEMA.into(),
        generator: format!("tagfix {}", env!("CARGO_PKG_VERSION")),
        mode: Mode::Consistency,
        baseline: file_info(baseline),
        candidate: file_info(patched),
        vocabulary_sha256: None,
        layout: ctx.layout,
        ks: ctx.ks.clone(),
        k: ctx.k,
        search,
        summary,
        slots,
        regenerated: regen,
        calibration: Some(calibration),
        disagreements,
        changed_untouched_slots: changed_untouched_slots.into_iter().collect(),
        rules: vec![],
        passed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::synthetic::{add_noise, clustered, random_rotation, rotate};
    use crate::tensors::EmbeddingFile;

    const ROWS: usize = 600;
    const DIM: usize = 32;

    fn input(values: Vec<f32>, name: &str) -> EmbeddingInput {
        let mut file = EmbeddingFile::new(values, ROWS, DIM);
        file.path = name.into();
        EmbeddingInput {
            file,
            control: None,
            provenance: None,
            sha256: name.into(),
        }
    }

    fn drift_report(base: &[f32], cand: Vec<f32>) -> CheckReport {
        let opts = CheckOptions {
            mode: None,
            policy: Policy::default(),
            slots: None,
            search: SearchConfig::default(),
        };
        run_check(
            &input(base.to_vec(), "base"),
            &input(cand, "cand"),
            None,
            &opts,
        )
        .unwrap()
    }

    #[test]
    fn cosine_and_overlap_fall_monotonically_with_noise() {
        let base = clustered(ROWS, DIM, 12, 0.7, 1);
        let mut last = (1.01f64, 1.01f64);
        for (i, sigma) in [0.0f32, 0.005, 0.02, 0.05, 0.1, 0.3]
            .into_iter()
            .enumerate()
        {
            let mut cand = base.clone();
            add_noise(&mut cand, sigma, 9);
            let r = drift_report(&base, cand);
            let (cos, ov) = (r.summary.cosine.mean, r.summary.overlap[1].dist.mean);
            assert!(
                cos <= last.0 && ov <= last.1 + 1e-9,
                "σ={sigma}: {cos} {ov} after {last:?}"
            );
            if i == 0 {
                assert!(r.passed && cos == 1.0 && ov == 1.0);
            }
            last = (cos, ov);
        }
        assert!(last.0 < 0.9 && last.1 < 0.9, "{last:?}");
    }

    #[test]
    fn rotated_slots_fail_by_name_and_others_pass() {
        let base = clustered(ROWS, DIM, 12, 0.7, 2);
        let rot = random_rotation(DIM, 3);
        let mut cand = base.clone();
        let moved: Vec<Slot> = (0..ROWS).step_by(10).collect();
        for &s in &moved {
            let r = rotate(&base[s * DIM..(s + 1) * DIM], &rot);
            cand[s * DIM..(s + 1) * DIM].copy_from_slice(&r);
        }
        let r = drift_report(&base, cand);
        assert!(!r.passed);
        let rule = r.rules.iter().find(|x| x.id == "min_cosine").unwrap();
        assert_eq!(rule.failing_slots, moved);
        assert!(r
            .disagreements
            .iter()
            .take(10)
            .all(|d| moved.contains(&d.slot)));
    }

    #[test]
    fn lost_normalisation_fails_only_the_norm_rule() {
        let base = clustered(ROWS, DIM, 12, 0.7, 4);
        let cand: Vec<f32> = base.iter().map(|v| v * 3.0).collect();
        let r = drift_report(&base, cand);
        let failed: Vec<&str> = r
            .rules
            .iter()
            .filter(|x| !x.passed)
            .map(|x| x.id.as_str())
            .collect();
        assert_eq!(failed, vec!["max_norm_deviation"]);
    }
}
