//! Consistency: a patched file against its base, calibrated by its control rows.

use super::metrics::{aggregate, find_moved, mean_shift, row_metrics, summarise};
use super::CheckError;
use super::{gather, own_rows, Comparison, Ctx};
use crate::consistency::inputs::{validate_rows, EmbeddingInput};
use crate::consistency::kernels::{dot, normalised_rows};
use crate::consistency::knn::{Exclude, Index, Neighbours, Rows};
use crate::consistency::policy::Policy;
use crate::consistency::report::*;
use crate::consistency::stats::{overlap_at, quantile, rank_in, Dist};
use crate::error::Result;
use crate::tensors::EmbeddingFile;
use crate::vocab::Slot;
use std::collections::BTreeSet;

/// The consistency comparison, in stages: the patch's provenance checked ([`read_patch`]), untouched
/// rows ([`changed_untouched`]), control rows against their base rows ([`compare_controls`]), the
/// calibration from the controls' neighbourhood scores, the regenerated rows scored against it
/// ([`score_regenerated`]).
pub(super) fn consistency(
    ctx: &Ctx,
    baseline: &EmbeddingInput,
    patched: &EmbeddingInput,
    selected: &[Slot],
    policy: &Policy,
) -> Result<Comparison> {
    let patch = read_patch(ctx, baseline, patched)?;
    let (b, p) = (&baseline.file, &patched.file);
    let untouched = changed_untouched(ctx, b, p, &patch.regenerated);
    let wanted: BTreeSet<Slot> = selected.iter().copied().collect();
    let rows = control_rows(ctx, &patch, &wanted, patched.path())?;

    let dim = b.dim;
    let bu = normalised_rows(&b.values, dim);
    let pu = normalised_rows(&p.values, dim);
    let spaces = Spaces {
        dim,
        base: &bu,
        patched: &pu,
        base_index: Index::build(Rows::new(&bu, dim), &ctx.search),
        patched_index: Index::build(Rows::new(&pu, dim), &ctx.search),
    };
    let controls = compare_controls(ctx, &spaces, b, patch.control, &rows);
    let scores_of = |nb: &Neighbours| -> Vec<f32> {
        let per_slot = slot_scores(ctx, nb, &rows.base);
        per_slot.into_iter().map(|(_, score)| score).collect()
    };
    let control_scores = scores_of(&controls.nb_control);
    let base_scores = scores_of(&controls.nb_base);
    let threshold = quantile(&control_scores, policy.calibration_quantile);

    let regen_rows: Vec<usize> = patch
        .regenerated
        .iter()
        .filter(|s| wanted.contains(s))
        .flat_map(|&s| ctx.layout.rows_of(s))
        .collect();
    let (regenerated, regen_search) =
        score_regenerated(ctx, &spaces, b, &regen_rows, &control_scores, threshold);

    let mut summary = controls.summary;
    summary.changed_untouched_rows = untouched.rows;
    summary.regenerated_slots = regenerated.len();
    let mut search = controls.search;
    search.extend(regen_search);
    let calibration = Calibration {
        k: ctx.k,
        quantile: policy.calibration_quantile,
        threshold,
        control: Dist::of(&control_scores),
        base: Dist::of(&base_scores),
        regenerated: Dist::of(&regenerated.iter().map(|g| g.score).collect::<Vec<_>>()),
        trusted_share: trusted_share(&regenerated),
        control_scores,
        base_scores,
    };
    Ok(Comparison {
        mode: Mode::Consistency,
        ks: ctx.ks.clone(),
        search,
        summary,
        slots: controls.slots,
        regenerated,
        calibration: Some(calibration),
        disagreements: controls.disagreements,
        changed_untouched_slots: untouched.slots,
    })
}

/// What a patched file says about itself, checked against the base and the layout.
pub(super) struct Patch<'a> {
    /// Present slots re-embedded with the same pipeline, `control_slots[j]` in rows `j·rps..`.
    control: &'a EmbeddingFile,
    control_slots: &'a [Slot],
    regenerated: BTreeSet<Slot>,
}

/// The patched file's control tensor and provenance: present, made from this base, shaped and
/// numbered for this layout; every row of the three matrices finite (regenerated base rows aside).
pub(super) fn read_patch<'a>(
    ctx: &Ctx,
    baseline: &EmbeddingInput,
    patched: &'a EmbeddingInput,
) -> Result<Patch<'a>> {
    let path = || patched.path().to_path_buf();
    let control = patched
        .control
        .as_ref()
        .ok_or_else(|| CheckError::NoControl { path: path() })?;
    let prov = patched
        .provenance
        .as_ref()
        .ok_or_else(|| CheckError::NoProvenance { path: path() })?;
    if let Some(want) = prov.base_sha256.as_deref().filter(|s| !s.is_empty()) {
        if want != baseline.sha256 {
            return Err(CheckError::OtherBase {
                path: path(),
                want: want.into(),
                base: baseline.path().into(),
                have: baseline.sha256.clone(),
            }
            .into());
        }
    }
    let (dim, rps, tags) = (baseline.file.dim, ctx.rps(), ctx.layout.tags());
    if control.dim != dim || control.rows != prov.control_slots.len() * rps {
        return Err(CheckError::ControlShape {
            path: path(),
            rows: control.rows,
            dim: control.dim,
            control_slots: prov.control_slots.len(),
            rows_per_slot: rps,
            expected_dim: dim,
        }
        .into());
    }
    let named = prov.control_slots.iter().chain(&prov.regenerated_slots);
    if let Some(&slot) = named.into_iter().find(|&&s| s >= tags) {
        return Err(CheckError::ProvenanceSlot {
            path: path(),
            slot,
            slots: tags,
        }
        .into());
    }
    let regenerated: BTreeSet<Slot> = prov.regenerated_slots.iter().copied().collect();
    if let Some(s) = prov.control_slots.iter().find(|s| regenerated.contains(s)) {
        return Err(CheckError::ControlRegenerated {
            path: path(),
            label: ctx.names.label(*s),
        }
        .into());
    }
    let slot_of = |r: usize| ctx.slot_of(r);
    validate_rows(&baseline.file, rps, &slot_of, &regenerated, &ctx.names)?;
    validate_rows(&patched.file, rps, &slot_of, &BTreeSet::new(), &ctx.names)?;
    let control_slot_of = |r: usize| prov.control_slots[r / rps];
    validate_rows(control, rps, &control_slot_of, &BTreeSet::new(), &ctx.names)?;
    Ok(Patch {
        control,
        control_slots: &prov.control_slots,
        regenerated,
    })
}

/// Rows outside the regenerated slots that are not bit-identical to the base (there must be none).
pub(super) struct Untouched {
    rows: usize,
    slots: Vec<Slot>,
}

pub(super) fn changed_untouched(
    ctx: &Ctx,
    base: &EmbeddingFile,
    patched: &EmbeddingFile,
    regenerated: &BTreeSet<Slot>,
) -> Untouched {
    let mut rows = 0;
    let mut slots = BTreeSet::new();
    for r in 0..base.rows {
        let s = ctx.slot_of(r);
        let differs = || {
            let pairs = base.row(r).iter().zip(patched.row(r));
            pairs.into_iter().any(|(x, y)| x.to_bits() != y.to_bits())
        };
        if !regenerated.contains(&s) && differs() {
            rows += 1;
            slots.insert(s);
        }
    }
    Untouched {
        rows,
        slots: slots.into_iter().collect(),
    }
}

/// The control rows compared (those of the selected slots), in slot order: row `control[i]` of the
/// control tensor against row `base[i]` of the base (and patched) file.
pub(super) struct ControlRows {
    control: Vec<usize>,
    base: Vec<usize>,
}

pub(super) fn control_rows(
    ctx: &Ctx,
    patch: &Patch<'_>,
    wanted: &BTreeSet<Slot>,
    path: &std::path::Path,
) -> Result<ControlRows, CheckError> {
    let rps = ctx.rps();
    let mut pairs: Vec<(usize, usize)> = Vec::new(); // (base row, control row)
    for (j, &s) in patch.control_slots.iter().enumerate() {
        if wanted.contains(&s) {
            pairs.extend((0..rps).map(|d| (s * rps + d, j * rps + d)));
        }
    }
    if pairs.is_empty() {
        return Err(CheckError::NoControlSelected {
            path: path.into(),
            control_slots: patch.control_slots.len(),
        });
    }
    // Keep slot order for aggregation (a stable sort, as base rows are distinct).
    pairs.sort_by_key(|&(base, _)| base);
    Ok(ControlRows {
        base: pairs.iter().map(|p| p.0).collect(),
        control: pairs.iter().map(|p| p.1).collect(),
    })
}

/// The unit rows of the base and patched files and their neighbour indexes.
pub(super) struct Spaces<'a> {
    dim: usize,
    base: &'a [f32],
    patched: &'a [f32],
    base_index: Index<'a>,
    patched_index: Index<'a>,
}

/// The control rows against their base rows: per-slot results as in drift mode, and each control
/// row's neighbours in the base space (its base row's) and in the patched file.
pub(super) struct ControlComparison {
    slots: Vec<SlotResult>,
    disagreements: Vec<Disagreement>,
    summary: Summary,
    nb_base: Neighbours,
    nb_control: Neighbours,
    search: Vec<NamedSearch>,
}

pub(super) fn compare_controls(
    ctx: &Ctx,
    spaces: &Spaces<'_>,
    base: &EmbeddingFile,
    control: &EmbeddingFile,
    rows: &ControlRows,
) -> ControlComparison {
    let dim = spaces.dim;
    let cu = normalised_rows(&control.values, dim);
    let m = row_metrics(
        &gather(&base.values, dim, &rows.base),
        &gather(&control.values, dim, &rows.control),
        dim,
    );
    let excl: Vec<u32> = rows.base.iter().map(|&r| r as u32).collect();
    let (qb, qb_excl) = own_rows(spaces.base, dim, &rows.base, &excl);
    let qc = gather(&cu, dim, &rows.control);
    let (nb_base, sb) = spaces
        .base_index
        .search(Rows::new(&qb, dim), ctx.kmax(), qb_excl);
    let (nb_control, sc) =
        spaces
            .patched_index
            .search(Rows::new(&qc, dim), ctx.kmax(), Exclude::Given(&excl));
    let (moved, sm) = find_moved(&spaces.base_index, &qc, dim, &rows.base, &m.cosine);
    let (slots, disagreements) = aggregate(ctx, &rows.base, &m, &nb_base, &nb_control, &moved);
    let mut summary = summarise(ctx, &slots, &m);
    summary.mean_shift = mean_shift(&qc, &qb, dim);
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
    ControlComparison {
        slots,
        disagreements,
        summary,
        nb_base,
        nb_control,
        search,
    }
}

/// Neighbourhood score of one query: its mean similarity to its k nearest rows.
pub(super) fn neighbourhood_score(ctx: &Ctx, nb: &Neighbours, q: usize) -> f32 {
    nb.sims(q)[..ctx.k].iter().sum::<f32>() / ctx.k as f32
}

/// The neighbourhood score of each slot among `rows` (query q is row `rows[q]`, a slot's rows
/// consecutive), averaged over the slot's rows.
pub(super) fn slot_scores(ctx: &Ctx, nb: &Neighbours, rows: &[usize]) -> Vec<(Slot, f32)> {
    let mut out: Vec<(Slot, f32)> = Vec::new();
    for (q, &r) in rows.iter().enumerate() {
        let s = ctx.slot_of(r);
        let score = neighbourhood_score(ctx, nb, q);
        match out.last_mut() {
            Some((last, acc)) if *last == s => *acc += score,
            _ => out.push((s, score)),
        }
    }
    out.iter_mut().for_each(|(_, a)| *a /= ctx.rps() as f32);
    out
}

/// Share of regenerated slots inside the calibration (1 when there are none).
pub(super) fn trusted_share(regenerated: &[RegeneratedResult]) -> f64 {
    if regenerated.is_empty() {
        1.0
    } else {
        regenerated.iter().filter(|g| g.trusted).count() as f64 / regenerated.len() as f64
    }
}

/// Scores the regenerated rows `regen_rows` (a slot's rows consecutive) in the patched file against
/// the control scores: trusted when the slot's score reaches `threshold`. Where the base still has
/// a usable (finite, non-zero) row at the slot, it is compared for information.
pub(super) fn score_regenerated(
    ctx: &Ctx,
    spaces: &Spaces<'_>,
    base: &EmbeddingFile,
    regen_rows: &[usize],
    control_scores: &[f32],
    threshold: f64,
) -> (Vec<RegeneratedResult>, Option<NamedSearch>) {
    if regen_rows.is_empty() {
        return (Vec::new(), None);
    }
    let (dim, rps, k) = (spaces.dim, ctx.rps(), ctx.k);
    let mut sorted_control: Vec<f64> = control_scores.iter().map(|&x| x as f64).collect();
    sorted_control.sort_by(|a, b| a.total_cmp(b));
    let qr = gather(spaces.patched, dim, regen_rows);
    let rex: Vec<u32> = regen_rows.iter().map(|&r| r as u32).collect();
    let (nb_regen, sr) =
        spaces
            .patched_index
            .search(Rows::new(&qr, dim), ctx.kmax(), Exclude::Given(&rex));
    let old = OldRows::search(ctx, spaces, base, regen_rows);
    let mut out = Vec::new();
    for (i, (slot, score)) in slot_scores(ctx, &nb_regen, regen_rows)
        .into_iter()
        .enumerate()
    {
        let qs = i * rps..(i + 1) * rps;
        let (cosine_to_base, overlap_with_base) = if qs.clone().all(|q| old.query[q].is_some()) {
            let cos = qs
                .clone()
                .map(|q| {
                    dot(
                        &spaces.base[regen_rows[q] * dim..][..dim],
                        &qr[q * dim..][..dim],
                    )
                })
                .fold(f32::INFINITY, f32::min);
            let ov = qs
                .clone()
                .map(|q| {
                    overlap_at(
                        old.nb.ids(old.query[q].expect("usable")),
                        nb_regen.ids(q),
                        k,
                    )
                })
                .sum::<f32>()
                / rps as f32;
            (Some(cos.clamp(-1.0, 1.0)), Some(ov))
        } else {
            (None, None)
        };
        out.push(RegeneratedResult {
            slot,
            tag: ctx.tag(slot),
            score,
            control_rank: rank_in(&sorted_control, score as f64) as f32,
            trusted: score as f64 >= threshold,
            neighbours: ctx.neighbour_tags(&nb_regen, qs.start, &[]),
            cosine_to_base,
            overlap_with_base,
        });
    }
    let search = NamedSearch {
        space: "regenerated".into(),
        stats: sr,
    };
    (out, Some(search))
}

/// The base's older rows at regenerated slots, where usable, with their neighbours in the base.
pub(super) struct OldRows {
    /// For each regenerated row, its query in `nb` (`None`: the base row is unusable).
    query: Vec<Option<usize>>,
    nb: Neighbours,
}

impl OldRows {
    fn search(ctx: &Ctx, spaces: &Spaces<'_>, base: &EmbeddingFile, regen_rows: &[usize]) -> Self {
        let dim = spaces.dim;
        let usable = |r: usize| {
            let row = base.row(r);
            row.iter().all(|v| v.is_finite()) && row.iter().any(|v| *v != 0.0)
        };
        let old_rows: Vec<usize> = regen_rows.iter().copied().filter(|&r| usable(r)).collect();
        let mut next = 0;
        let query = regen_rows
            .iter()
            .map(|&r| {
                usable(r).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let qo = gather(spaces.base, dim, &old_rows);
        let oex: Vec<u32> = old_rows.iter().map(|&r| r as u32).collect();
        let (nb, _) =
            spaces
                .base_index
                .search(Rows::new(&qo, dim), ctx.kmax(), Exclude::Given(&oex));
        OldRows { query, nb }
    }
}
