//! Embedding matrices in slot layout: RAM `[N, d]` (one row per tag) and RAM++ `[N·k, d]`
//! (k descriptions per tag, slot-major: rows `slot·k .. slot·k+k`).

use super::{npy, pth, safetensors_io, DType, Tensor, TensorError, TensorSet};
use crate::error::Result;
use crate::vocab::Slot;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File formats for embedding files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Safetensors,
    Npy,
    /// PyTorch `torch.save` (`.pth`, `.pt`, `.bin`).
    Pth,
}

impl FileFormat {
    /// Picks the format from the file extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("safetensors") => Ok(FileFormat::Safetensors),
            Some("npy") => Ok(FileFormat::Npy),
            Some("pth" | "pt" | "bin") => Ok(FileFormat::Pth),
            _ => Err(TensorError::UnknownFileType { path: path.into() }.into()),
        }
    }
}

/// How rows map to slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    /// RAM: one row per tag.
    PerTag { tags: usize },
    /// RAM++: `per_tag` description rows per tag, slot-major.
    PerDescription { tags: usize, per_tag: usize },
}

impl Layout {
    /// Detects the layout of a `rows`-row matrix for a vocabulary of `tags` slots.
    pub fn detect(rows: usize, tags: usize, path: &Path) -> Result<Self> {
        if rows == tags {
            Ok(Layout::PerTag { tags })
        } else if tags > 0 && rows > tags && rows % tags == 0 {
            Ok(Layout::PerDescription {
                tags,
                per_tag: rows / tags,
            })
        } else {
            Err(TensorError::RowsFitNoLayout {
                path: path.into(),
                rows,
                tags,
            }
            .into())
        }
    }

    /// Rows per slot (1 or k).
    pub fn rows_per_slot(self) -> usize {
        match self {
            Layout::PerTag { .. } => 1,
            Layout::PerDescription { per_tag, .. } => per_tag,
        }
    }

    /// Number of slots.
    pub fn tags(self) -> usize {
        match self {
            Layout::PerTag { tags } | Layout::PerDescription { tags, .. } => tags,
        }
    }

    /// The row range of `slot`.
    pub fn rows_of(self, slot: Slot) -> std::ops::Range<usize> {
        let k = self.rows_per_slot();
        slot * k..slot * k + k
    }

    /// Human name.
    pub fn describe(self) -> String {
        match self {
            Layout::PerTag { tags } => format!("RAM layout [{tags}, d] (one row per tag)"),
            Layout::PerDescription { tags, per_tag } => {
                format!("RAM++ layout [{tags}×{per_tag}, d] ({per_tag} descriptions per tag)")
            }
        }
    }
}

/// An embedding matrix with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingFile {
    /// Row-major values, `rows × dim`.
    pub values: Vec<f32>,
    pub rows: usize,
    pub dim: usize,
    /// The element type stored on disk (rows are written back in it).
    pub dtype: DType,
    /// Tensor name inside the file.
    pub tensor_name: String,
    /// safetensors metadata (provenance); for other formats the provenance of their verified
    /// `.provenance.json` sidecar in the same `tagfix.*` keys, else empty.
    pub metadata: BTreeMap<String, String>,
    pub path: PathBuf,
}

/// The provenance sidecar of a `.npy` / `.pth` file as `tagfix.*` metadata (empty without one).
fn sidecar_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    Ok(super::provenance::read_sidecar(path)?
        .map(|p| p.to_metadata())
        .unwrap_or_default())
}

/// Tensor names tried, in order, when a file holds several tensors and none is named.
const DEFAULT_NAMES: &[&str] = &["embeddings", "label_embed", "tensor", "array"];

impl EmbeddingFile {
    /// Reads a 2-D float matrix from a safetensors, npy or pth file. With several tensors in the file,
    /// `tensor` names the one to use (default: the only one, else `embeddings` / `label_embed`).
    pub fn read(path: &Path, tensor: Option<&str>) -> Result<Self> {
        Self::from_set(&Self::read_set(path)?, path, tensor)
    }

    /// Reads every tensor of an embedding file (metadata only for safetensors), for callers that need
    /// more than one tensor of it (e.g. `embeddings` and `control`).
    pub fn read_set(path: &Path) -> Result<TensorSet> {
        Ok(match FileFormat::from_path(path)? {
            FileFormat::Safetensors => safetensors_io::read(path)?,
            FileFormat::Npy => TensorSet {
                tensors: vec![("array".into(), npy::read(path)?)],
                metadata: sidecar_metadata(path)?,
            },
            FileFormat::Pth => {
                let c = pth::read(path)?;
                TensorSet {
                    tensors: c.tensors,
                    metadata: sidecar_metadata(path)?,
                }
            }
        })
    }

    /// Picks the embedding matrix out of a tensor set read from `path` (see [`EmbeddingFile::read`]).
    pub fn from_set(set: &TensorSet, path: &Path, tensor: Option<&str>) -> Result<Self> {
        let names: Vec<&str> = set.tensors.iter().map(|(n, _)| n.as_str()).collect();
        let name = match tensor {
            Some(n) => n.to_string(),
            None if names.len() == 1 => names[0].to_string(),
            None => DEFAULT_NAMES
                .iter()
                .find(|n| names.contains(n))
                .map(|n| n.to_string())
                .ok_or_else(|| TensorError::SeveralTensors {
                    path: path.into(),
                    names: names.iter().map(|n| n.to_string()).collect(),
                })?,
        };
        let Some(t) = set.get(&name) else {
            return Err(TensorError::NoSuchTensor {
                path: path.into(),
                names: names.iter().map(|n| n.to_string()).collect(),
                name,
            }
            .into());
        };
        if !t.dtype.is_float() {
            return Err(TensorError::EmbeddingNotFloat {
                path: path.into(),
                name,
                dtype: t.dtype,
            }
            .into());
        }
        if t.shape.len() != 2 {
            return Err(TensorError::EmbeddingNot2d {
                path: path.into(),
                name,
                shape: t.shape.clone(),
            }
            .into());
        }
        Ok(EmbeddingFile {
            values: t.to_f32()?,
            rows: t.shape[0],
            dim: t.shape[1],
            dtype: t.dtype,
            tensor_name: name,
            metadata: set.metadata.clone(),
            path: path.to_path_buf(),
        })
    }

    /// A new f32 matrix.
    pub fn new(values: Vec<f32>, rows: usize, dim: usize) -> Self {
        assert_eq!(values.len(), rows * dim);
        EmbeddingFile {
            values,
            rows,
            dim,
            dtype: DType::F32,
            tensor_name: "embeddings".into(),
            metadata: BTreeMap::new(),
            path: PathBuf::new(),
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Row `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// The values as a tensor in the file's dtype.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Tensor::from_f32_as(self.dtype, vec![self.rows, self.dim], &self.values)
    }

    /// Writes the matrix atomically in the format the extension names. safetensors keeps the metadata;
    /// `.pth` is written as a bare tensor (`torch.load` returns the tensor, as RAM expects); `.npy` is f32.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tensor = self.to_tensor()?;
        match FileFormat::from_path(path)? {
            FileFormat::Safetensors => safetensors_io::write(
                path,
                &TensorSet {
                    tensors: vec![(self.tensor_name.clone(), tensor)],
                    metadata: self.metadata.clone(),
                },
            ),
            FileFormat::Npy => npy::write(
                path,
                &Tensor::from_f32(vec![self.rows, self.dim], &self.values)?,
            ),
            FileFormat::Pth => pth::write(path, pth::PthContent::Tensor(&tensor)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_detection() {
        let p = Path::new("e.safetensors");
        assert_eq!(
            Layout::detect(10, 10, p).unwrap(),
            Layout::PerTag { tags: 10 }
        );
        let l = Layout::detect(510, 10, p).unwrap();
        assert_eq!(
            l,
            Layout::PerDescription {
                tags: 10,
                per_tag: 51
            }
        );
        assert_eq!(l.rows_of(2), 102..153);
        let err = Layout::detect(11, 10, p).unwrap_err().to_string();
        assert!(err.contains("11 rows"), "{err}");
    }

    #[test]
    fn roundtrip_all_formats_bit_exact() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = EmbeddingFile::new(vec![0.1, -0.2, 0.3, 1e-8, 5.0, -0.0], 3, 2);
        e.metadata.insert("recipe".into(), "single".into());
        for ext in ["safetensors", "npy", "pth"] {
            let p = dir.path().join(format!("e.{ext}"));
            e.write(&p).unwrap();
            let back = EmbeddingFile::read(&p, None).unwrap();
            assert_eq!(back.values, e.values, "{ext}");
            assert_eq!((back.rows, back.dim), (3, 2));
        }
        let p = dir.path().join("e.txt");
        assert!(e.write(&p).is_err());
    }
}
