//! Precomputed teacher signals for distillation and alignment, keyed by record.
//!
//! Format (`docs/formats.md`, "Teacher features"): one safetensors file with
//! - `image_features` `[N, 512]` (f32/f16/bf16): CLIP image features of each record's image, the
//!   target of the distillation loss;
//! - `text_features` `[N, 512]`: CLIP text embeddings of one caption per record (L2-normalised
//!   rows; they are re-normalised on load), the alignment queries;
//! - metadata `tagfix.schema = "tagfix.teacher/1"` and `tagfix.keys` = a JSON array of N strings,
//!   the records' `image_path` values in row order.
//!
//! Optional provenance metadata (`tagfix.teacher.*`, written by `tagfix teacher`) names the encoders
//! and preprocessing. File features are of the un-augmented image; the online teacher
//! ([`super::online`]) computes them on each augmented batch instead.

use super::TeacherError;
use crate::error::Result;
use crate::tensors::{safetensors_io, Tensor, TensorSet};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const TEACHER_SCHEMA: &str = "tagfix.teacher/1";
pub const IMAGE_FEATURES: &str = "image_features";
pub const TEXT_FEATURES: &str = "text_features";
/// Width of CLIP's joint space.
pub const TEACHER_DIM: usize = 512;

/// Teacher features in memory.
#[derive(Debug, Clone)]
pub struct TeacherFeatures {
    pub path: PathBuf,
    /// The file's metadata (schema, keys, provenance).
    pub metadata: BTreeMap<String, String>,
    index: HashMap<String, usize>,
    image: Vec<f32>,
    text: Vec<f32>,
}

impl TeacherFeatures {
    /// Reads and checks a teacher file.
    pub fn read(path: &Path) -> Result<Self> {
        let set = safetensors_io::read(path)?;
        match set.metadata.get("tagfix.schema").map(String::as_str) {
            Some(TEACHER_SCHEMA) => {}
            other => {
                return Err(TeacherError::NotATeacherFile {
                    path: path.into(),
                    schema: other.map(String::from),
                }
                .into())
            }
        }
        let keys: Vec<String> = set
            .metadata
            .get("tagfix.keys")
            .ok_or_else(|| TeacherError::NoKeys { path: path.into() })
            .and_then(|k| {
                serde_json::from_str(k).map_err(|source| TeacherError::Keys {
                    path: path.into(),
                    source,
                })
            })?;
        let load = |name: &str| -> Result<Vec<f32>> {
            let t = set.get(name).ok_or_else(|| TeacherError::NoTensor {
                path: path.into(),
                name: name.into(),
            })?;
            if t.shape != [keys.len(), TEACHER_DIM] {
                return Err(TeacherError::TensorShape {
                    path: path.into(),
                    name: name.into(),
                    shape: t.shape.clone(),
                    keys: keys.len(),
                }
                .into());
            }
            let v = t.to_f32()?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(TeacherError::NotFinite {
                    path: path.into(),
                    name: name.into(),
                    row: i / TEACHER_DIM,
                    key: keys[i / TEACHER_DIM].clone(),
                }
                .into());
            }
            Ok(v)
        };
        let image = load(IMAGE_FEATURES)?;
        let mut text = load(TEXT_FEATURES)?;
        for row in text.chunks_mut(TEACHER_DIM) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                row.iter_mut().for_each(|x| *x /= n);
            }
        }
        let mut index = HashMap::with_capacity(keys.len());
        for (i, k) in keys.into_iter().enumerate() {
            if index.insert(k.clone(), i).is_some() {
                return Err(TeacherError::KeyTwice {
                    path: path.into(),
                    key: k,
                }
                .into());
            }
        }
        Ok(TeacherFeatures {
            path: path.to_path_buf(),
            metadata: set.metadata.clone(),
            index,
            image,
            text,
        })
    }

    /// Writes a teacher file (keys in row order) atomically.
    pub fn write(path: &Path, keys: &[String], image: &[f32], text: &[f32]) -> Result<()> {
        Self::write_with_metadata(path, keys, image, text, BTreeMap::new())
    }

    /// Writes a teacher file with extra metadata (provenance) atomically.
    pub fn write_with_metadata(
        path: &Path,
        keys: &[String],
        image: &[f32],
        text: &[f32],
        mut metadata: BTreeMap<String, String>,
    ) -> Result<()> {
        let n = keys.len();
        assert_eq!(image.len(), n * TEACHER_DIM);
        assert_eq!(text.len(), n * TEACHER_DIM);
        metadata.insert("tagfix.schema".into(), TEACHER_SCHEMA.into());
        metadata.insert(
            "tagfix.keys".into(),
            serde_json::to_string(keys).expect("json"),
        );
        safetensors_io::write(
            path,
            &TensorSet {
                tensors: vec![
                    (
                        IMAGE_FEATURES.into(),
                        Tensor::from_f32(vec![n, TEACHER_DIM], image)?,
                    ),
                    (
                        TEXT_FEATURES.into(),
                        Tensor::from_f32(vec![n, TEACHER_DIM], text)?,
                    ),
                ],
                metadata,
            },
        )
    }

    /// Row of a record key.
    pub fn row_of(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Keys in row order.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<(&str, usize)> = self.index.iter().map(|(k, &i)| (k.as_str(), i)).collect();
        k.sort_by_key(|e| e.1);
        k.into_iter().map(|e| e.0).collect()
    }

    pub fn image_row(&self, row: usize) -> &[f32] {
        &self.image[row * TEACHER_DIM..(row + 1) * TEACHER_DIM]
    }

    pub fn text_row(&self, row: usize) -> &[f32] {
        &self.text[row * TEACHER_DIM..(row + 1) * TEACHER_DIM]
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let keys = vec!["a.png".to_string(), "b.png".to_string()];
        let image: Vec<f32> = (0..1024).map(|i| i as f32).collect();
        let text: Vec<f32> = (0..1024)
            .map(|i| if i % 512 == 0 { 2.0 } else { 0.0 })
            .collect();
        TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
        let t = TeacherFeatures::read(&p).unwrap();
        assert_eq!(t.row_of("b.png"), Some(1));
        assert_eq!(t.image_row(1)[0], 512.0);
        assert_eq!(t.text_row(0)[0], 1.0, "text rows are L2-normalised");
        assert!(t.row_of("c.png").is_none());
    }
}
