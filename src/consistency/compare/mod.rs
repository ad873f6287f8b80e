//! The two comparisons behind `tagfix check`:
//!
//! * **drift** — baseline and candidate row by row: cosine, kNN overlap (each row's k nearest rows in
//!   the baseline space against its k nearest in the candidate space), changed rows, mean shift, norm
//!   change, and rows that moved to another slot;
//! * **consistency** — a patched file from `embed` against its base: the `control` rows (present slots
//!   re-embedded with the same pipeline) are compared with their base rows, which calibrates how far
//!   a correctly regenerated row may sit from the base space; each regenerated row (which has no
//!   original) is then scored against that control distribution.
//!
//! This module chooses the comparison and holds what both share (options, context, row selection);
//! `drift` and `consistency` are the two, `metrics` their common row measures, `error` what
//! stops them.

use super::inputs::{ensure_comparable, resolve_layout, EmbeddingInput, SlotNames};
use super::knn::{Exclude, Neighbours, SearchConfig};
use super::policy::Policy;
use super::report::*;
use crate::error::Result;
use crate::tensors::Layout;
use crate::vocab::{Slot, Vocabulary};
use std::borrow::Cow;
use std::collections::BTreeSet;

mod consistency;
mod drift;
mod error;
mod metrics;

use consistency::consistency;
use drift::drift;
pub use error::{CheckError, RowProblem};

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
