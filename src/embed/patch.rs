//! Patching: regenerated rows go into their slots' places in the base file; every other row stays
//! bit-identical. Without a base, the regenerated rows must cover every slot and form a new file.

use super::EmbedError;
use crate::error::Result;
use crate::tensors::{DType, EmbeddingFile, Layout, Provenance};
use crate::vocab::{Slot, Vocabulary};

/// Rows computed for some slots: `rows_per_slot` rows of `dim` values per slot, in `slots` order.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRows {
    pub slots: Vec<Slot>,
    pub values: Vec<f32>,
    pub rows_per_slot: usize,
    pub dim: usize,
}

impl SlotRows {
    /// The rows of the `i`-th slot.
    pub fn rows_of(&self, i: usize) -> &[f32] {
        let n = self.rows_per_slot * self.dim;
        &self.values[i * n..(i + 1) * n]
    }
}

/// Checks that `base` fits the vocabulary and a recipe giving `rows_per_slot` rows per slot, and
/// returns its layout. Refuses f64 files (their rows would not survive the f32 path bit-identically),
/// a per-tag file for per-description rows and vice versa, and files whose tagfix provenance names
/// another vocabulary.
pub fn check_base(
    base: &EmbeddingFile,
    vocab: &Vocabulary,
    rows_per_slot: usize,
) -> Result<Layout> {
    let path = &base.path;
    if base.dtype == DType::F64 {
        return Err(EmbedError::F64Base { path: path.clone() }.into());
    }
    if let Some(p) = Provenance::from_metadata(&base.metadata, path)? {
        if p.vocabulary_sha256 != vocab.sha256 {
            return Err(EmbedError::OtherVocabulary {
                path: path.clone(),
                file_sha: p.vocabulary_sha256,
                vocab: vocab.path.clone(),
                vocab_sha: vocab.sha256.clone(),
            }
            .into());
        }
    }
    let layout = Layout::detect(base.rows, vocab.len(), path)?;
    if layout.rows_per_slot() != rows_per_slot {
        let want = if rows_per_slot == 1 {
            "one row per tag (RAM layout); --descriptions gives per-description rows".to_string()
        } else {
            format!("{rows_per_slot} description rows per tag (RAM++ layout)")
        };
        return Err(EmbedError::LayoutMismatch {
            path: path.clone(),
            layout: layout.describe(),
            rows: base.rows,
            dim: base.dim,
            want,
        }
        .into());
    }
    Ok(layout)
}

/// Checks the model's output width against the base.
pub fn check_dim(base: &EmbeddingFile, dim: usize, model: &str) -> Result<()> {
    if base.dim != dim {
        return Err(EmbedError::DimMismatch {
            path: base.path.clone(),
            file_dim: base.dim,
            model: model.into(),
            model_dim: dim,
        }
        .into());
    }
    Ok(())
}

/// Builds the output matrix: `base` with the rows of `regenerated` written over their slots, or
/// (without a base) a new f32 matrix that `regenerated` must fill completely.
pub fn assemble(
    base: Option<&EmbeddingFile>,
    tags: usize,
    regenerated: &SlotRows,
) -> Result<EmbeddingFile> {
    let rps = regenerated.rows_per_slot;
    let layout = if rps == 1 {
        Layout::PerTag { tags }
    } else {
        Layout::PerDescription { tags, per_tag: rps }
    };
    let mut out = match base {
        Some(b) => {
            let mut out = b.clone();
            out.metadata.clear();
            out
        }
        None => {
            let mut covered = vec![false; tags];
            for &s in &regenerated.slots {
                covered[s] = true;
            }
            if let Some(missing) = covered.iter().position(|c| !c) {
                return Err(EmbedError::SlotNotComputed(missing).into());
            }
            EmbeddingFile::new(
                vec![0.0; tags * rps * regenerated.dim],
                tags * rps,
                regenerated.dim,
            )
        }
    };
    for (i, &slot) in regenerated.slots.iter().enumerate() {
        let rows = regenerated.rows_of(i);
        for (k, r) in layout.rows_of(slot).enumerate() {
            out.row_mut(r)
                .copy_from_slice(&rows[k * regenerated.dim..(k + 1) * regenerated.dim]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(n: usize) -> Vocabulary {
        Vocabulary::from_tags((0..n).map(|i| format!("tag{i}")).collect())
    }

    #[test]
    fn patches_only_the_regenerated_slots() {
        let base = EmbeddingFile::new((0..20).map(|v| v as f32 * 0.1).collect(), 5, 4);
        let regen = SlotRows {
            slots: vec![1, 3],
            values: vec![9.0; 8],
            rows_per_slot: 1,
            dim: 4,
        };
        let out = assemble(Some(&base), 5, &regen).unwrap();
        for r in 0..5 {
            if r == 1 || r == 3 {
                assert_eq!(out.row(r), &[9.0; 4]);
            } else {
                assert_eq!(out.row(r), base.row(r));
            }
        }
        assert!(assemble(None, 5, &regen)
            .unwrap_err()
            .to_string()
            .contains("slot 0"));
    }

    #[test]
    fn per_description_rows_land_slot_major() {
        let base = EmbeddingFile::new(vec![0.0; 3 * 2 * 2], 6, 2);
        let regen = SlotRows {
            slots: vec![2],
            values: vec![1.0, 2.0, 3.0, 4.0],
            rows_per_slot: 2,
            dim: 2,
        };
        let out = assemble(Some(&base), 3, &regen).unwrap();
        assert_eq!(out.row(4), &[1.0, 2.0]);
        assert_eq!(out.row(5), &[3.0, 4.0]);
        assert_eq!(out.row(3), &[0.0, 0.0]);
    }

    #[test]
    fn base_checks() {
        let v = vocab(4);
        let mut base = EmbeddingFile::new(vec![0.0; 8], 4, 2);
        assert_eq!(
            check_base(&base, &v, 1).unwrap(),
            Layout::PerTag { tags: 4 }
        );
        let err = check_base(&base, &v, 3).unwrap_err().to_string();
        assert!(err.contains("mixing averaged"), "{err}");
        assert!(check_dim(&base, 3, "m")
            .unwrap_err()
            .to_string()
            .contains("2-dimensional"));
        base.dtype = DType::F64;
        assert!(check_base(&base, &v, 1)
            .unwrap_err()
            .to_string()
            .contains("f64"));
        let wrong = EmbeddingFile::new(vec![0.0; 10], 5, 2);
        assert!(check_base(&wrong, &v, 1)
            .unwrap_err()
            .to_string()
            .contains("5 rows"));
        let mut other = EmbeddingFile::new(vec![0.0; 8], 4, 2);
        other.metadata = Provenance {
            vocabulary_sha256: "00".into(),
            ..Default::default()
        }
        .to_metadata();
        assert!(check_base(&other, &v, 1)
            .unwrap_err()
            .to_string()
            .contains("another vocabulary"));
    }
}
