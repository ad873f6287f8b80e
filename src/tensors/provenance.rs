//! Provenance of an embedding file, stored in safetensors metadata under `tagfix.*` keys, or for
//! `.npy` / `.pth` files in a `<file>.provenance.json` beside them that names the data's sha256.
//!
//! `embed` writes it; `check` and `train` read it to know which vocabulary the rows follow, which rows
//! were regenerated, and which control slots were re-embedded for calibration (tensor `control`).
//!
//! The sidecar cannot go into the file itself: NumPy's `np.load` refuses a `.npy` header with keys
//! beyond `descr`, `fortran_order` and `shape`, and RAM loads a `.pth` as a bare tensor. So the two
//! files are bound by hash instead: the data is renamed into place first, then the sidecar naming its
//! sha256. A run killed between the two renames leaves new data beside a sidecar that names other
//! data, which every reader refuses; it never pairs them silently.

use super::TensorError;
use crate::error::{Error, Result};
use crate::fsutil::{sha256_file, write_atomic};
use crate::vocab::Slot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Schema tag written to `tagfix.schema`.
pub const EMBEDDINGS_SCHEMA: &str = "tagfix.embeddings/1";
/// Name of the main tensor.
pub const EMBEDDINGS_TENSOR: &str = "embeddings";
/// Name of the optional control tensor: control slots re-embedded with the same pipeline, in
/// `control_slots` order, `rows_per_slot` rows each.
pub const CONTROL_TENSOR: &str = "control";

/// What produced an embedding file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// sha256 of the vocabulary file the rows follow.
    pub vocabulary_sha256: String,
    pub tag_count: usize,
    /// Rows per slot (1 = RAM, k = RAM++).
    pub rows_per_slot: usize,
    /// Model name or path, and sha256 of the ONNX file.
    pub model: String,
    pub model_sha256: String,
    /// Tokenizer description (file and sha256).
    pub tokenizer: String,
    /// Text recipe (`single`, `ram-ensemble`, `templates:FILE`, `descriptions:FILE`).
    pub recipe: String,
    /// Pooling and normalisation applied.
    pub pooling: String,
    /// Slots whose rows this run computed (all slots when there was no base file).
    pub regenerated_slots: Vec<Slot>,
    /// Base file the other rows were copied from (path and sha256), if any.
    pub base: Option<String>,
    pub base_sha256: Option<String>,
    /// Present slots re-embedded into the `control` tensor, in row order.
    pub control_slots: Vec<Slot>,
    /// `tagfix <version>`.
    pub generator: String,
}

impl Provenance {
    /// Encodes as safetensors metadata (`tagfix.schema` plus one JSON value per field).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("tagfix.schema".to_string(), EMBEDDINGS_SCHEMA.to_string());
        if let serde_json::Value::Object(obj) = serde_json::to_value(self).expect("serializable") {
            for (k, v) in obj {
                if v.is_null() {
                    continue;
                }
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(format!("tagfix.{k}"), text);
            }
        }
        m
    }

    /// Decodes from safetensors metadata; `Ok(None)` when the file carries no tagfix provenance.
    pub fn from_metadata(meta: &BTreeMap<String, String>, path: &Path) -> Result<Option<Self>> {
        match meta.get("tagfix.schema").map(String::as_str) {
            None => return Ok(None),
            Some(EMBEDDINGS_SCHEMA) => {}
            Some(other) => {
                return Err(TensorError::ProvenanceSchema {
                    path: path.into(),
                    schema: other.into(),
                    expected: EMBEDDINGS_SCHEMA,
                }
                .into())
            }
        }
        let template = serde_json::to_value(Provenance::default()).expect("serializable");
        let mut obj = serde_json::Map::new();
        for (key, default) in template.as_object().expect("object") {
            let Some(text) = meta.get(&format!("tagfix.{key}")) else {
                continue;
            };
            // Strings (and optional strings) are stored bare; everything else as JSON.
            let value = if default.is_string() || default.is_null() {
                serde_json::Value::String(text.clone())
            } else {
                serde_json::from_str(text).map_err(|source| TensorError::ProvenanceField {
                    path: path.into(),
                    key: key.clone(),
                    source,
                })?
            };
            obj.insert(key.clone(), value);
        }
        let p = serde_json::from_value(serde_json::Value::Object(obj)).map_err(|source| {
            TensorError::ProvenanceMalformed {
                path: path.into(),
                source,
            }
        })?;
        Ok(Some(p))
    }
}

/// The `<file>.provenance.json` of a `.npy` / `.pth` embedding file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvenanceSidecar {
    /// sha256 of the data file these fields describe. Sidecars written before this field existed
    /// lack it and are ignored (with a warning): nothing ties them to the data beside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// Where the provenance of a non-safetensors embedding file goes: `<file>.provenance.json`.
pub fn provenance_sidecar(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".provenance.json");
    PathBuf::from(name)
}

/// Writes the sidecar of the data file `data` (already in place) with the data's sha256.
pub fn write_sidecar(data: &Path, provenance: &Provenance) -> Result<()> {
    let sidecar = ProvenanceSidecar {
        data_sha256: Some(sha256_file(data)?),
        provenance: provenance.clone(),
    };
    write_atomic(&provenance_sidecar(data), |w| {
        serde_json::to_writer_pretty(&mut *w, &sidecar).map_err(std::io::Error::other)
    })
}

/// Reads the sidecar of the data file `data` (beside the file its symbolic links lead to): `None`
/// when there is none or it names no data hash (with a warning); an error when it names other data.
pub fn read_sidecar(data: &Path) -> Result<Option<Provenance>> {
    let real = std::fs::canonicalize(data).map_err(|e| Error::io(data, e))?;
    // A pipe or device read once cannot be hashed again; only files have sidecars.
    if !std::fs::metadata(&real).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let path = provenance_sidecar(&real);
    let text = match crate::fsutil::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
        Ok(t) => t,
    };
    let sidecar: ProvenanceSidecar =
        serde_json::from_slice(&text).map_err(|source| TensorError::NotProvenance {
            path: path.clone(),
            source,
        })?;
    let Some(expected) = &sidecar.data_sha256 else {
        tracing::warn!(
            "{}: ignored (written by an older tagfix, it names no data hash to tie it to {})",
            path.display(),
            data.display()
        );
        return Ok(None);
    };
    let actual = sha256_file(&real)?;
    if &actual != expected {
        return Err(TensorError::ProvenanceMismatch {
            data: data.into(),
            sidecar: path,
            expected: expected.clone(),
            actual,
        }
        .into());
    }
    Ok(Some(sidecar.provenance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_is_bound_to_its_data_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("e.npy");
        std::fs::write(&data, b"first rows").unwrap();
        assert_eq!(read_sidecar(&data).unwrap(), None);
        let p = Provenance {
            model: "minilm".into(),
            regenerated_slots: vec![3],
            ..Default::default()
        };
        write_sidecar(&data, &p).unwrap();
        assert_eq!(read_sidecar(&data).unwrap(), Some(p.clone()));
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(provenance_sidecar(&data)).unwrap()).unwrap();
        assert_eq!(
            sidecar["data_sha256"],
            crate::fsutil::sha256_hex(b"first rows")
        );
        assert_eq!(sidecar["model"], "minilm");
        // New data beside the old sidecar (a run killed between its two renames).
        std::fs::write(&data, b"second rows").unwrap();
        let err = read_sidecar(&data).unwrap_err().to_string();
        assert!(err.contains("describes other data"), "{err}");
        // A sidecar without a hash (older tagfix) ties nothing: ignored.
        std::fs::write(provenance_sidecar(&data), serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(read_sidecar(&data).unwrap(), None);
        std::fs::write(provenance_sidecar(&data), b"{").unwrap();
        assert!(read_sidecar(&data)
            .unwrap_err()
            .to_string()
            .contains("not a tagfix provenance file"));
    }

    #[test]
    fn metadata_roundtrip() {
        let p = Provenance {
            vocabulary_sha256: "ab".into(),
            tag_count: 3,
            rows_per_slot: 1,
            model: "minilm".into(),
            regenerated_slots: vec![1, 2],
            base: Some("base.pth".into()),
            control_slots: vec![0],
            ..Default::default()
        };
        let m = p.to_metadata();
        assert_eq!(m["tagfix.regenerated_slots"], "[1,2]");
        assert_eq!(m["tagfix.model"], "minilm");
        let back = Provenance::from_metadata(&m, Path::new("x"))
            .unwrap()
            .unwrap();
        assert_eq!(back, p);
        assert!(Provenance::from_metadata(&BTreeMap::new(), Path::new("x"))
            .unwrap()
            .is_none());
    }
}
