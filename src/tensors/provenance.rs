//! Provenance of an embedding file, stored in safetensors metadata under `tagfix.*` keys.
//!
//! `embed` writes it; `check` and `train` read it to know which vocabulary the rows follow, which rows
//! were regenerated, and which control slots were re-embedded for calibration (tensor `control`).

use crate::error::{Error, Result};
use crate::vocab::Slot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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
                return Err(Error::invalid(
                    path,
                    format!("embedding provenance schema {other} is not supported (expected {EMBEDDINGS_SCHEMA})"),
                ))
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
                serde_json::from_str(text).map_err(|e| {
                    Error::invalid(
                        path,
                        format!("metadata tagfix.{key} is not valid JSON: {e}"),
                    )
                })?
            };
            obj.insert(key.clone(), value);
        }
        let p = serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| Error::invalid(path, format!("malformed tagfix metadata: {e}")))?;
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
