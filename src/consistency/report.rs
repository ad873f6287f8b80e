//! The result of `tagfix check`: what was compared, the metrics, the listed disagreements and the
//! verdict per rule. Writers in [`crate::report`] render it; nothing here formats text.

use super::knn::SearchStats;
use super::stats::Dist;
use crate::tensors::{DType, Layout};
use crate::vocab::Slot;
use serde::{Deserialize, Serialize};

/// Value of the report's `schema` field.
pub const REPORT_SCHEMA: &str = "tagfix.check-report/1";

/// Which question the check answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Did the candidate drift from its baseline? (every selected slot compared row by row)
    Drift,
    /// Did regenerated rows land in the base file's space? (control rows calibrate the regenerated ones)
    Consistency,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub sha256: String,
    pub tensor: String,
    pub dtype: DType,
    pub rows: usize,
    pub dim: usize,
    /// From the provenance, when the file has one.
    pub model: Option<String>,
    pub recipe: Option<String>,
}

/// A neighbour shown beside another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighbourTag {
    pub slot: Slot,
    pub tag: Option<String>,
    pub similarity: f32,
    /// Also among the other side's k neighbours.
    pub shared: bool,
}

/// Metrics of one compared slot (drift: any selected slot; consistency: a control slot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotResult {
    pub slot: Slot,
    pub tag: Option<String>,
    /// Cosine between baseline and candidate (or control) row; the minimum over a slot's rows.
    pub cosine: f32,
    /// kNN overlap for each k of the report's `ks`, mean over the slot's rows.
    pub overlap: Vec<f32>,
    /// Largest `|‖c‖ − ‖b‖| / ‖b‖` over the slot's rows.
    pub norm_deviation: f32,
    /// Any bit differs.
    pub changed: bool,
    /// The baseline slot whose row this slot's candidate row matches (rows moved between slots).
    pub holds_baseline_slot: Option<Slot>,
}

/// A regenerated slot (consistency mode): no original to compare with, so it is judged against the
/// control calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegeneratedResult {
    pub slot: Slot,
    pub tag: Option<String>,
    /// Mean similarity to its k nearest rows in the patched file.
    pub score: f32,
    /// Share of control scores below this one.
    pub control_rank: f32,
    pub trusted: bool,
    pub neighbours: Vec<NeighbourTag>,
    /// Where the base file holds a usable row at this slot (an older embedding of the tag): cosine to
    /// it and kNN overlap at k with its base neighbourhood. Reported, not gated (regenerating may
    /// rightly change such rows).
    pub cosine_to_base: Option<f32>,
    pub overlap_with_base: Option<f32>,
}

/// Control distribution of the neighbourhood score and where the regenerated rows fall in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub k: usize,
    pub quantile: f64,
    /// Control score at `quantile`: a regenerated row scoring lower is not trusted.
    pub threshold: f64,
    pub control: Dist,
    /// The same score for the base rows of the control slots (what the original pipeline gave).
    pub base: Dist,
    pub regenerated: Dist,
    pub trusted_share: f64,
    #[serde(skip)]
    pub control_scores: Vec<f32>,
    #[serde(skip)]
    pub base_scores: Vec<f32>,
}

/// A slot whose neighbourhood changed, with both neighbour lists side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    pub slot: Slot,
    pub tag: Option<String>,
    pub cosine: f32,
    pub overlap: f32,
    pub baseline_neighbours: Vec<NeighbourTag>,
    pub candidate_neighbours: Vec<NeighbourTag>,
}

/// A distribution at one k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlapAtK {
    pub k: usize,
    pub dist: Dist,
}

/// Totals and distributions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub compared_slots: usize,
    pub compared_rows: usize,
    /// Compared rows that differ in any bit.
    pub changed_rows: usize,
    /// Consistency mode: rows outside the regenerated slots that differ from the base.
    pub changed_untouched_rows: usize,
    pub regenerated_slots: usize,
    pub cosine: Dist,
    pub overlap: Vec<OverlapAtK>,
    /// `‖mean(c) − mean(b)‖` over unit rows.
    pub mean_shift: f64,
    pub max_norm_deviation: f64,
    pub misaligned_slots: usize,
}

/// One neighbour search that fed the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedSearch {
    /// `baseline`, `candidate`, `control`, `regenerated`.
    pub space: String,
    pub stats: SearchStats,
}

/// One policy rule's outcome (one JUnit test case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleResult {
    pub id: String,
    pub description: String,
    /// `>=` or `<=`.
    pub op: String,
    pub threshold: f64,
    pub observed: f64,
    pub passed: bool,
    /// Slots that break the rule (per-slot rules), or that fall short (share rules, which may pass
    /// with some listed).
    pub failing_slots: Vec<Slot>,
}

impl RuleResult {
    fn new(
        id: &str,
        description: String,
        op: &str,
        t: f64,
        observed: f64,
        failing: Vec<Slot>,
    ) -> Self {
        let passed = if op == ">=" {
            observed >= t
        } else {
            observed <= t
        };
        RuleResult {
            id: id.into(),
            description,
            op: op.into(),
            threshold: t,
            observed,
            passed,
            failing_slots: failing,
        }
    }
    /// Passes when `observed >= t`.
    pub fn at_least(
        id: &str,
        description: String,
        t: f64,
        observed: f64,
        failing: Vec<Slot>,
    ) -> Self {
        Self::new(id, description, ">=", t, observed, failing)
    }
    /// Passes when `observed <= t`.
    pub fn at_most(
        id: &str,
        description: String,
        t: f64,
        observed: f64,
        failing: Vec<Slot>,
    ) -> Self {
        Self::new(id, description, "<=", t, observed, failing)
    }
}

/// Everything `tagfix check` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub schema: String,
    pub generator: String,
    pub mode: Mode,
    pub baseline: FileInfo,
    pub candidate: FileInfo,
    /// sha256 of the vocabulary used for tag names, if one was given.
    pub vocabulary_sha256: Option<String>,
    pub layout: Layout,
    /// The k reported, ascending; `k` is the one gated.
    pub ks: Vec<usize>,
    pub k: usize,
    pub search: Vec<NamedSearch>,
    pub summary: Summary,
    /// Compared slots in slot order.
    pub slots: Vec<SlotResult>,
    pub regenerated: Vec<RegeneratedResult>,
    pub calibration: Option<Calibration>,
    /// Worst neighbourhoods first.
    pub disagreements: Vec<Disagreement>,
    pub changed_untouched_slots: Vec<Slot>,
    pub rules: Vec<RuleResult>,
    pub passed: bool,
}

impl CheckReport {
    /// Index of the gated k in `ks`.
    pub fn k_index(&self) -> usize {
        self.ks.iter().position(|&k| k == self.k).unwrap_or(0)
    }

    /// `slot "tag"` or `slot N`.
    pub fn slot_label(&self, slot: Slot) -> String {
        let tag = self
            .slots
            .iter()
            .find(|s| s.slot == slot)
            .and_then(|s| s.tag.clone())
            .or_else(|| {
                self.regenerated
                    .iter()
                    .find(|g| g.slot == slot)
                    .and_then(|g| g.tag.clone())
            });
        match tag {
            Some(t) => format!("slot {slot} \"{t}\""),
            None => format!("slot {slot}"),
        }
    }
}
