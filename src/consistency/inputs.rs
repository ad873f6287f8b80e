//! Loading and validating the files `check` compares: shapes, dtypes, layouts, vocabularies, and
//! every row (NaN / Inf, zero vectors), with errors that name the file and the slot.

use super::compare::{CheckError, RowProblem};
use crate::error::Result;
use crate::fsutil::sha256_file;
use crate::tensors::provenance::CONTROL_TENSOR;
use crate::tensors::{EmbeddingFile, Layout, Provenance};
use crate::vocab::{Slot, Vocabulary};
use std::collections::BTreeSet;
use std::path::Path;

/// One embedding file as `check` sees it.
#[derive(Debug, Clone)]
pub struct EmbeddingInput {
    pub file: EmbeddingFile,
    /// The `control` tensor `embed` writes (present slots re-embedded with the same pipeline).
    pub control: Option<EmbeddingFile>,
    pub provenance: Option<Provenance>,
    pub sha256: String,
}

impl EmbeddingInput {
    /// Reads the embedding matrix (tensor `tensor`, or the default choice), the control tensor and the
    /// provenance of a safetensors / npy / pth file.
    pub fn load(path: &Path, tensor: Option<&str>) -> Result<Self> {
        let set = EmbeddingFile::read_set(path)?;
        let has_control = set.get(CONTROL_TENSOR).is_some();
        // With a control tensor beside it, the main tensor is the default one, never `control`.
        let main = match (tensor, has_control, set.tensors.len()) {
            (None, true, 2) => set
                .tensors
                .iter()
                .find(|(n, _)| n != CONTROL_TENSOR)
                .map(|(n, _)| n.clone()),
            (t, _, _) => t.map(str::to_string),
        };
        let file = EmbeddingFile::from_set(&set, path, main.as_deref())?;
        let control = if has_control && file.tensor_name != CONTROL_TENSOR {
            Some(EmbeddingFile::from_set(&set, path, Some(CONTROL_TENSOR))?)
        } else {
            None
        };
        let provenance = Provenance::from_metadata(&set.metadata, path)?;
        Ok(EmbeddingInput {
            file,
            control,
            provenance,
            sha256: sha256_file(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// Names slots for messages: `slot 12 "tag"` with a vocabulary, `slot 12` without.
#[derive(Debug, Clone, Default)]
pub struct SlotNames {
    pub tags: Option<Vec<String>>,
}

impl SlotNames {
    pub fn tag(&self, slot: Slot) -> Option<&str> {
        self.tags.as_ref()?.get(slot).map(String::as_str)
    }
    pub fn label(&self, slot: Slot) -> String {
        match self.tag(slot) {
            Some(t) => format!("slot {slot} \"{t}\""),
            None => format!("slot {slot}"),
        }
    }
}

/// Works out the slot layout of `file` from the vocabulary (if given), else from its provenance,
/// else one row per slot; refuses a file whose provenance names another vocabulary.
pub fn resolve_layout(input: &EmbeddingInput, vocab: Option<&Vocabulary>) -> Result<Layout> {
    let path = input.path();
    let prov = input.provenance.as_ref();
    if let (Some(v), Some(p)) = (vocab, prov) {
        if !p.vocabulary_sha256.is_empty() && p.vocabulary_sha256 != v.sha256 {
            return Err(CheckError::OtherVocabulary {
                path: path.to_path_buf(),
                found: p.vocabulary_sha256.clone(),
                vocab: v.path.clone(),
                expected: v.sha256.clone(),
            }
            .into());
        }
    }
    let tags = match (vocab, prov) {
        (Some(v), _) => v.len(),
        (None, Some(p)) if p.tag_count > 0 => p.tag_count,
        _ => input.file.rows,
    };
    let layout = Layout::detect(input.file.rows, tags, path)?;
    if let Some(p) = prov {
        if p.rows_per_slot > 0 && p.rows_per_slot != layout.rows_per_slot() {
            return Err(CheckError::RowsPerSlot {
                path: path.to_path_buf(),
                declared: p.rows_per_slot,
                rows: input.file.rows,
                slots: tags,
                layout,
            }
            .into());
        }
    }
    Ok(layout)
}

/// Refuses two files that cannot be compared row by row: different shapes, dtypes, layouts or
/// vocabularies.
pub fn ensure_comparable(
    baseline: &EmbeddingInput,
    candidate: &EmbeddingInput,
    lb: Layout,
    lc: Layout,
) -> Result<()> {
    let (b, c) = (&baseline.file, &candidate.file);
    if (b.rows, b.dim) != (c.rows, c.dim) {
        return Err(CheckError::ShapeMismatch {
            path: c.path.clone(),
            rows: c.rows,
            dim: c.dim,
            baseline: b.path.clone(),
            baseline_rows: b.rows,
            baseline_dim: b.dim,
        }
        .into());
    }
    if b.dtype != c.dtype {
        return Err(CheckError::DtypeMismatch {
            path: c.path.clone(),
            dtype: c.dtype,
            baseline: b.path.clone(),
            baseline_dtype: b.dtype,
        }
        .into());
    }
    if lb != lc {
        return Err(CheckError::LayoutMismatch {
            path: c.path.clone(),
            layout: lc,
            baseline: b.path.clone(),
            baseline_layout: lb,
        }
        .into());
    }
    if let (Some(pb), Some(pc)) = (&baseline.provenance, &candidate.provenance) {
        if !pb.vocabulary_sha256.is_empty()
            && !pc.vocabulary_sha256.is_empty()
            && pb.vocabulary_sha256 != pc.vocabulary_sha256
        {
            return Err(CheckError::BaselineVocabulary {
                path: c.path.clone(),
                vocabulary: pc.vocabulary_sha256.clone(),
                baseline: b.path.clone(),
                baseline_vocabulary: pb.vocabulary_sha256.clone(),
            }
            .into());
        }
    }
    Ok(())
}

/// Refuses rows holding NaN or Inf, rows whose L2 norm is beyond f32's range (no f32 cosine or
/// normalisation for them) and zero rows (no direction, so no cosine), naming the file, the tensor,
/// the slots and rows. Slots in `skip` are not checked (e.g. placeholder rows of a base file
/// at slots that were regenerated).
pub fn validate_rows(
    file: &EmbeddingFile,
    rows_per_slot: usize,
    slot_of_row: &dyn Fn(usize) -> Slot,
    skip: &BTreeSet<Slot>,
    names: &SlotNames,
) -> Result<()> {
    let mut non_finite = Vec::new();
    let mut huge = Vec::new();
    let mut zero = Vec::new();
    for r in 0..file.rows {
        let slot = slot_of_row(r);
        if skip.contains(&slot) {
            continue;
        }
        let row = file.row(r);
        if row.iter().any(|v| !v.is_finite()) {
            non_finite.push(r);
        } else if !super::kernels::norm(row).is_finite() {
            huge.push(r);
        } else if row.iter().all(|v| *v == 0.0) {
            zero.push(r);
        }
    }
    let describe = |rows: &[usize]| -> String {
        let shown: Vec<String> = rows
            .iter()
            .take(5)
            .map(|&r| {
                if rows_per_slot == 1 {
                    names.label(slot_of_row(r))
                } else {
                    format!("{} (row {r})", names.label(slot_of_row(r)))
                }
            })
            .collect();
        let more = if rows.len() > 5 {
            format!(" and {} more", rows.len() - 5)
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };
    for (rows, problem) in [
        (non_finite, RowProblem::NonFinite),
        (huge, RowProblem::Huge),
        (zero, RowProblem::Zero),
    ] {
        if !rows.is_empty() {
            return Err(CheckError::BadRows {
                path: file.path.clone(),
                tensor: file.tensor_name.clone(),
                count: rows.len(),
                problem,
                rows: describe(&rows),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rows_are_named_by_file_and_slot() {
        let mut f = EmbeddingFile::new(vec![1.0, 0.0, 0.0, 1.0, f32::NAN, 1.0], 3, 2);
        f.path = "cand.safetensors".into();
        let names = SlotNames {
            tags: Some(vec!["cat".into(), "dog".into(), "emu".into()]),
        };
        let err = validate_rows(&f, 1, &|r| r, &BTreeSet::new(), &names)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cand.safetensors") && err.contains("NaN or Inf"),
            "{err}"
        );
        assert!(err.contains("slot 2 \"emu\""), "{err}");
        f.row_mut(2).copy_from_slice(&[0.0, 0.0]);
        let err = validate_rows(&f, 1, &|r| r, &BTreeSet::new(), &names)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zero vectors") && err.contains("slot 2"),
            "{err}"
        );
        // Skipped slots are not checked.
        validate_rows(&f, 1, &|r| r, &BTreeSet::from([2]), &names).unwrap();
    }
}
