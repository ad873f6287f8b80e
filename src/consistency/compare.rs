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
use crate::error::Result;
use crate::tensors::{DType, EmbeddingFile, Layout};
use crate::vocab::{Slot, Vocabulary};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Why two embedding files cannot be compared as asked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("k = {k} needs more than {k} rows, but {path} has {rows}")]
    TooFewRows {
        k: usize,
        path: PathBuf,
        rows: usize,
    },
    #[error("--slots names slot {slot}, but the files have {slots} slots (0..{})", slots - 1)]
    SlotOutOfRange { slot: Slot, slots: usize },
    #[error(
        "{path}: has no `control` tensor, so semantic consistency cannot be calibrated: have `tagfix embed` \
         re-embed control slots into it, or compare row by row with --mode drift"
    )]
    NoControl { path: PathBuf },
    #[error("{path}: has a `control` tensor but no tagfix provenance (tagfix.control_slots, tagfix.regenerated_slots)")]
    NoProvenance { path: PathBuf },
    #[error("{path}: was patched from a base file with sha256 {want}, but {base} has sha256 {have}: give the base it was made from")]
    OtherBase {
        path: PathBuf,
        want: String,
        base: PathBuf,
        have: String,
    },
    #[error("{path}: tensor `control` is [{rows}, {dim}], but {control_slots} control slots × {rows_per_slot} rows per slot × dim {expected_dim} were expected")]
    ControlShape {
        path: PathBuf,
        rows: usize,
        dim: usize,
        control_slots: usize,
        rows_per_slot: usize,
        expected_dim: usize,
    },
    #[error("{path}: provenance names slot {slot}, but the vocabulary has {slots} slots")]
    ProvenanceSlot {
        path: PathBuf,
        slot: Slot,
        slots: usize,
    },
    #[error("{path}: {label} is both a control slot and a regenerated slot: control slots must have an original")]
    ControlRegenerated { path: PathBuf, label: String },
    #[error("{path}: none of the selected slots is a control slot ({control_slots} control slots in the file)")]
    NoControlSelected { path: PathBuf, control_slots: usize },
    #[error("{path}: was made for another vocabulary: its provenance names vocabulary sha256 {found}, but --vocab {vocab} has sha256 {expected}")]
    OtherVocabulary {
        path: PathBuf,
        found: String,
        vocab: PathBuf,
        expected: String,
    },
    #[error("{path}: its provenance says {declared} rows per slot, but {rows} rows for {slots} slots is {}", .layout.describe())]
    RowsPerSlot {
        path: PathBuf,
        declared: usize,
        rows: usize,
        slots: usize,
        layout: Layout,
    },
    #[error("{path}: shape [{rows}, {dim}] does not match baseline {baseline} [{baseline_rows}, {baseline_dim}]: the files hold different vocabularies, layouts or models")]
    ShapeMismatch {
        path: PathBuf,
        rows: usize,
        dim: usize,
        baseline: PathBuf,
        baseline_rows: usize,
        baseline_dim: usize,
    },
    #[error("{path}: dtype {dtype} does not match baseline {baseline} ({baseline_dtype}): convert one of them first so rows compare bit for bit")]
    DtypeMismatch {
        path: PathBuf,
        dtype: DType,
        baseline: PathBuf,
        baseline_dtype: DType,
    },
    #[error("{path}: {} does not match baseline {baseline} ({})", .layout.describe(), .baseline_layout.describe())]
    LayoutMismatch {
        path: PathBuf,
        layout: Layout,
        baseline: PathBuf,
        baseline_layout: Layout,
    },
    #[error("{path}: was made for vocabulary sha256 {vocabulary}, but baseline {baseline} for {baseline_vocabulary}: slots do not correspond")]
    BaselineVocabulary {
        path: PathBuf,
        vocabulary: String,
        baseline: PathBuf,
        baseline_vocabulary: String,
    },
    /// Rows that cannot be compared (`rows` names the first few slots, and rows, and how many more).
    #[error("{path}: tensor `{tensor}`: {count} row(s) {problem}: {rows}")]
    BadRows {
        path: PathBuf,
        tensor: String,
        count: usize,
        problem: RowProblem,
        rows: String,
    },
}

/// Why rows of an embedding file cannot be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowProblem {
    NonFinite,
    /// The L2 norm overflows f32: no cosine and no normalisation.
    Huge,
    /// No direction, so no cosine.
    Zero,
}

impl std::fmt::Display for RowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowProblem::NonFinite => f.write_str("hold NaN or Inf"),
            RowProblem::Huge => write!(
                f,
                "have an L2 norm beyond f32's range (over {:e}), so no cosine can be computed",
                f32::MAX
            ),
            RowProblem::Zero => f.write_str("are zero vectors (no direction to compare)"),
        }
    }
}

impl CheckError {
    /// Flags that ask for what the files cannot give are usage errors; files that do not fit, input.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            CheckError::TooFewRows { .. }
            | CheckError::SlotOutOfRange { .. }
            | CheckError::NoControlSelected { .. } => ErrorKind::Usage,
            _ => ErrorKind::Input,
        }
    }
}

/// What one comparison measured: the report's content before the policy judges it.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub mode: Mode,
    /// Every k measured, ascending.
    pub ks: Vec<usize>,
    pub search: Vec<NamedSearch>,
    pub summary: Summary,
    pub slots: Vec<SlotResult>,
    pub regenerated: Vec<RegeneratedResult>,
    pub calibration: Option<Calibration>,
    pub disagreements: Vec<Disagreement>,
    pub changed_untouched_slots: Vec<Slot>,
}

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
    let mode = choose_mode(opts.mode, baseline, candidate);
    let ks = opts.policy.all_k();
    let kmax = *ks.last().expect("k");
    if baseline.file.rows <= kmax {
        return Err(CheckError::TooFewRows {
            k: kmax,
            path: baseline.path().into(),
            rows: baseline.file.rows,
        }
        .into());
    }
    let ctx = Ctx {
        layout: lb,
        names: SlotNames {
            tags: vocab.map(|v| v.tags.clone()),
        },
        ks,
        k: opts.policy.k,
        search: opts.search.clone(),
    };
    let selected = select_slots(opts.slots.as_deref(), lb)?;
    let measured = match mode {
        Mode::Drift => drift(&ctx, baseline, candidate, &selected)?,
        Mode::Consistency => consistency(&ctx, baseline, candidate, &selected, &opts.policy)?,
    };
    let rules = opts.policy.evaluate(&measured);
    let Comparison {
        mode,
        ks,
        search,
        summary,
        slots,
        regenerated,
        calibration,
        disagreements,
        changed_untouched_slots,
    } = measured;
    Ok(CheckReport {
        schema: REPORT_SCHEMA.into(),
        generator: format!("tagfix {}", env!("CARGO_PKG_VERSION")),
        mode,
        baseline: file_info(baseline),
        candidate: file_info(candidate),
        vocabulary_sha256: vocab.map(|v| v.sha256.clone()),
        layout: lb,
        ks,
        k: ctx.k,
        search,
        summary,
        slots,
        regenerated,
        calibration,
        disagreements,
        changed_untouched_slots,
        passed: rules.iter().all(|r| r.passed),
        rules,
    })
}

/// The mode asked for, else consistency when the candidate carries a control tensor, else drift.
fn choose_mode(asked: Option<Mode>, baseline: &EmbeddingInput, candidate: &EmbeddingInput) -> Mode {
    match asked {
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
    }
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

fn select_slots(slots: Option<&[Slot]>, layout: Layout) -> Result<Vec<Slot>, CheckError> {
    match slots {
        None => Ok((0..layout.tags()).collect()),
        Some(list) => {
            if let Some(&slot) = list.iter().find(|&&s| s >= layout.tags()) {
                return Err(CheckError::SlotOutOfRange {
                    slot,
                    slots: layout.tags(),
                });
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
) -> Result<Comparison> {
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
    Ok(Comparison {
        mode: Mode::Drift,
        ks: ctx.ks.clone(),
        search,
        summary,
        slots,
        regenerated: vec![],
        calibration: None,
        disagreements,
        changed_untouched_slots: vec![],
    })
}

/// The consistency comparison, in stages: the patch's provenance checked ([`read_patch`]), untouched
/// rows ([`changed_untouched`]), control rows against their base rows ([`compare_controls`]), the
/// calibration from the controls' neighbourhood scores, the regenerated rows scored against it
/// ([`score_regenerated`]).
fn consistency(
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
struct Patch<'a> {
    /// Present slots re-embedded with the same pipeline, `control_slots[j]` in rows `j·rps..`.
    control: &'a EmbeddingFile,
    control_slots: &'a [Slot],
    regenerated: BTreeSet<Slot>,
}

/// The patched file's control tensor and provenance: present, made from this base, shaped and
/// numbered for this layout; every row of the three matrices finite (regenerated base rows aside).
fn read_patch<'a>(
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
struct Untouched {
    rows: usize,
    slots: Vec<Slot>,
}

fn changed_untouched(
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
struct ControlRows {
    control: Vec<usize>,
    base: Vec<usize>,
}

fn control_rows(
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
struct Spaces<'a> {
    dim: usize,
    base: &'a [f32],
    patched: &'a [f32],
    base_index: Index<'a>,
    patched_index: Index<'a>,
}

/// The control rows against their base rows: per-slot results as in drift mode, and each control
/// row's neighbours in the base space (its base row's) and in the patched file.
struct ControlComparison {
    slots: Vec<SlotResult>,
    disagreements: Vec<Disagreement>,
    summary: Summary,
    nb_base: Neighbours,
    nb_control: Neighbours,
    search: Vec<NamedSearch>,
}

fn compare_controls(
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
fn neighbourhood_score(ctx: &Ctx, nb: &Neighbours, q: usize) -> f32 {
    nb.sims(q)[..ctx.k].iter().sum::<f32>() / ctx.k as f32
}

/// The neighbourhood score of each slot among `rows` (query q is row `rows[q]`, a slot's rows
/// consecutive), averaged over the slot's rows.
fn slot_scores(ctx: &Ctx, nb: &Neighbours, rows: &[usize]) -> Vec<(Slot, f32)> {
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
fn trusted_share(regenerated: &[RegeneratedResult]) -> f64 {
    if regenerated.is_empty() {
        1.0
    } else {
        regenerated.iter().filter(|g| g.trusted).count() as f64 / regenerated.len() as f64
    }
}

/// Scores the regenerated rows `regen_rows` (a slot's rows consecutive) in the patched file against
/// the control scores: trusted when the slot's score reaches `threshold`. Where the base still has
/// a usable (finite, non-zero) row at the slot, it is compared for information.
fn score_regenerated(
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
struct OldRows {
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
