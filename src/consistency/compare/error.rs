//! Why two embedding files cannot be compared as asked, and what is wrong with a row.

use crate::tensors::{DType, Layout};
use crate::vocab::Slot;
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
