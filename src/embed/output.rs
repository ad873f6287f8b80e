//! Writes an embedding file with its provenance: safetensors carries the `tagfix.*` metadata and the
//! optional `control` tensor; `.npy` and `.pth` (a bare tensor, as RAM loads it) get the provenance in
//! a `<file>.provenance.json` beside them, bound to the data by its sha256 (see
//! [`crate::tensors::provenance`]).

use super::patch::SlotRows;
use super::EmbedError;
use crate::error::Result;
use crate::fsutil::{resolve_output, OutputTarget};
pub use crate::tensors::provenance::provenance_sidecar;
use crate::tensors::provenance::{write_sidecar, CONTROL_TENSOR, EMBEDDINGS_TENSOR};
use crate::tensors::{safetensors_io, EmbeddingFile, FileFormat, Provenance, Tensor, TensorSet};
use std::path::Path;

/// What `embed` produced.
#[derive(Debug, Clone)]
pub struct EmbedOutput {
    pub embeddings: EmbeddingFile,
    /// Control slots re-embedded with the same pipeline (rows in `provenance.control_slots` order).
    pub control: Option<SlotRows>,
    pub provenance: Provenance,
}

/// Checks before any work that `path` can hold what is asked (format known; control needs safetensors).
pub fn check_output_path(path: &Path, with_control: bool) -> Result<FileFormat> {
    let format = FileFormat::from_path(path)?;
    if with_control && format != FileFormat::Safetensors {
        return Err(EmbedError::ControlNeedsSafetensors { path: path.into() }.into());
    }
    Ok(format)
}

/// Writes `out` to `path` atomically in the format its extension names.
pub fn write_output(path: &Path, out: &EmbedOutput) -> Result<()> {
    match check_output_path(path, out.control.is_some())? {
        FileFormat::Safetensors => {
            let mut tensors = vec![(EMBEDDINGS_TENSOR.to_string(), out.embeddings.to_tensor()?)];
            if let Some(c) = &out.control {
                tensors.push((
                    CONTROL_TENSOR.to_string(),
                    Tensor::from_f32(vec![c.slots.len() * c.rows_per_slot, c.dim], &c.values)?,
                ));
            }
            safetensors_io::write(
                path,
                &TensorSet {
                    tensors,
                    metadata: out.provenance.to_metadata(),
                },
            )
        }
        // Data first, then the sidecar naming its hash: see `tensors::provenance`.
        FileFormat::Npy | FileFormat::Pth => match resolve_output(path)? {
            OutputTarget::File(data) => {
                out.embeddings.write(&data)?;
                write_sidecar(&data, &out.provenance)
            }
            _ => {
                out.embeddings.write(path)?;
                tracing::warn!(
                    "{} is a stream: its provenance is not written (a .safetensors output carries it inside)",
                    path.display()
                );
                Ok(())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_output_carries_provenance_and_control() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.safetensors");
        let out = EmbedOutput {
            embeddings: EmbeddingFile::new(vec![1.0, 0.0, 0.0, 1.0], 2, 2),
            control: Some(SlotRows {
                slots: vec![0],
                values: vec![0.6, 0.8],
                rows_per_slot: 1,
                dim: 2,
            }),
            provenance: Provenance {
                control_slots: vec![0],
                regenerated_slots: vec![1],
                ..Default::default()
            },
        };
        write_output(&p, &out).unwrap();
        let set = safetensors_io::read(&p).unwrap();
        assert_eq!(
            set.get(CONTROL_TENSOR).unwrap().to_f32().unwrap(),
            vec![0.6, 0.8]
        );
        let prov = Provenance::from_metadata(&set.metadata, &p)
            .unwrap()
            .unwrap();
        assert_eq!(prov, out.provenance);
        let e = EmbeddingFile::read(&p, None).unwrap();
        assert_eq!(e.values, out.embeddings.values);
        let pth = dir.path().join("e.pth");
        assert!(write_output(&pth, &out)
            .unwrap_err()
            .to_string()
            .contains("control"));
        assert!(!pth.exists());
        let plain = EmbedOutput {
            control: None,
            ..out
        };
        write_output(&pth, &plain).unwrap();
        assert!(provenance_sidecar(&pth).exists());
        let back = EmbeddingFile::read(&pth, None).unwrap();
        let prov = Provenance::from_metadata(&back.metadata, &pth).unwrap();
        assert_eq!(prov, Some(plain.provenance.clone()));
    }

    #[test]
    fn f16_base_rows_stay_bit_identical() {
        use crate::tensors::DType;
        let dir = tempfile::tempdir().unwrap();
        let base_path = dir.path().join("base.safetensors");
        let values: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let base_tensor = Tensor::from_f32_as(DType::F16, vec![4, 3], &values).unwrap();
        safetensors_io::write(
            &base_path,
            &TensorSet {
                tensors: vec![("embeddings".into(), base_tensor.clone())],
                metadata: Default::default(),
            },
        )
        .unwrap();
        let base = EmbeddingFile::read(&base_path, None).unwrap();
        let regen = SlotRows {
            slots: vec![2],
            values: vec![0.6, 0.8, 0.0],
            rows_per_slot: 1,
            dim: 3,
        };
        let out = EmbedOutput {
            embeddings: super::super::patch::assemble(Some(&base), 4, &regen).unwrap(),
            control: None,
            provenance: Provenance::default(),
        };
        let p = dir.path().join("out.safetensors");
        write_output(&p, &out).unwrap();
        let written = safetensors_io::read(&p).unwrap();
        let t = written.get("embeddings").unwrap();
        assert_eq!(t.dtype, DType::F16);
        for row in [0, 1, 3] {
            assert_eq!(
                t.data[row * 6..row * 6 + 6],
                base_tensor.data[row * 6..row * 6 + 6]
            );
        }
        assert_ne!(t.data[12..18], base_tensor.data[12..18]);
    }
}
