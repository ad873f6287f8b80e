//! safetensors reading and writing (the `safetensors` crate), metadata included.

use super::{DType, Tensor, TensorError, TensorSet};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use safetensors::{Dtype as StDtype, SafeTensors};
use std::path::Path;

fn from_st(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F64 => DType::F64,
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::I64 => DType::I64,
        StDtype::I32 => DType::I32,
        StDtype::I16 => DType::I16,
        StDtype::I8 => DType::I8,
        StDtype::U8 => DType::U8,
        StDtype::BOOL => DType::Bool,
        _ => return None,
    })
}

fn to_st(d: DType) -> StDtype {
    match d {
        DType::F64 => StDtype::F64,
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        DType::I64 => StDtype::I64,
        DType::I32 => StDtype::I32,
        DType::I16 => StDtype::I16,
        DType::I8 => StDtype::I8,
        DType::U8 => StDtype::U8,
        DType::Bool => StDtype::BOOL,
    }
}

/// Reads all tensors (in the order of their data, which is the order the writer chose) and the
/// metadata of a safetensors file. Linear in the number of tensors: the header is parsed once (plus
/// a key-only pass that refuses a repeated tensor name) and each tensor is looked up by index.
pub fn read(path: &Path) -> Result<TensorSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (n, header) =
        SafeTensors::read_metadata(&bytes).map_err(|source| TensorError::Safetensors {
            path: path.into(),
            source,
        })?;
    // read_metadata checked that the header and every tensor's data lie inside the file.
    let start = HEADER_LEN + n;
    check_unique_names(path, &bytes[HEADER_LEN..start])?;
    let data = &bytes[start..];
    let names = header.offset_keys();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let info = header
            .info(&name)
            .expect("offset_keys lists the header's names");
        let dtype = from_st(info.dtype).ok_or_else(|| TensorError::SafetensorsDtype {
            path: path.into(),
            name: name.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let (begin, end) = info.data_offsets;
        let tensor = Tensor::new(dtype, info.shape.clone(), data[begin..end].to_vec())?;
        tensors.push((name, tensor));
    }
    Ok(TensorSet {
        tensors,
        metadata: header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    })
}

/// Bytes of the little-endian header length that starts a safetensors file.
const HEADER_LEN: usize = 8;

/// Refuses a header that names a tensor (or `__metadata__`) twice: JSON allows it and the
/// safetensors crate silently keeps the last, so two readers could see two different tensors.
fn check_unique_names(path: &Path, header: &[u8]) -> Result<(), TensorError> {
    struct FirstRepeat;
    impl<'de> serde::de::Visitor<'de> for FirstRepeat {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    match serde::Deserializer::deserialize_map(&mut de, FirstRepeat) {
        Ok(None) => Ok(()),
        Ok(Some(name)) => Err(TensorError::SafetensorsRepeatedName {
            path: path.into(),
            name,
        }),
        Err(source) => Err(TensorError::SafetensorsHeader {
            path: path.into(),
            source,
        }),
    }
}

/// Writes tensors and metadata atomically. Tensor names must be unique (the format maps names to
/// tensors; the safetensors serializer would panic on a repeat).
pub fn write(path: &Path, set: &TensorSet) -> Result<()> {
    let mut names = std::collections::HashSet::with_capacity(set.tensors.len());
    if let Some((n, _)) = set.tensors.iter().find(|(n, _)| !names.insert(n.as_str())) {
        return Err(TensorError::DuplicateName {
            path: path.into(),
            name: n.clone(),
        }
        .into());
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = set
        .tensors
        .iter()
        .map(|(n, t)| {
            safetensors::tensor::TensorView::new(to_st(t.dtype), t.shape.clone(), &t.data)
                .map(|v| (n.clone(), v))
                .map_err(|source| TensorError::SafetensorsView {
                    name: n.clone(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    let meta: std::collections::HashMap<String, String> =
        set.metadata.clone().into_iter().collect();
    let bytes = safetensors::tensor::serialize(views, Some(meta)).map_err(|source| {
        TensorError::SafetensorsWrite {
            path: path.into(),
            source,
        }
    })?;
    write_atomic(path, |w| w.write_all(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_order_dtypes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let mut set = TensorSet::default();
        set.tensors
            .push(("z".into(), Tensor::from_f32(vec![2], &[1.0, 2.0]).unwrap()));
        set.tensors.push((
            "a".into(),
            Tensor::from_f32_as(DType::F16, vec![1, 2], &[0.5, -1.0]).unwrap(),
        ));
        set.metadata.insert("recipe".into(), "single".into());
        write(&p, &set).unwrap();
        let back = read(&p).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b"\x05\x00\x00\x00\x00\x00\x00\x00{oops").unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
    }

    #[test]
    fn many_tensors_keep_their_data_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("many.safetensors");
        // Names in reverse of data order: the order must come from the offsets, not the names.
        let mut set = TensorSet::default();
        for i in (0..2000).rev() {
            let t = Tensor::from_f32(vec![1], &[i as f32]).unwrap();
            set.tensors.push((format!("t{i:05}"), t));
        }
        write(&p, &set).unwrap();
        let back = read(&p).unwrap();
        let mut want = set.tensors.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0)); // the serializer lays data out by name within a dtype
        assert_eq!(back.tensors, want);
    }

    #[test]
    fn repeated_names_are_refused_on_read_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dup.safetensors");
        let header = br#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend([0u8; 4]);
        std::fs::write(&p, &bytes).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("names `w` more than once"), "{err}");

        let t = Tensor::from_f32(vec![1], &[1.0]).unwrap();
        let set = TensorSet {
            tensors: vec![("w".into(), t.clone()), ("w".into(), t)],
            metadata: Default::default(),
        };
        let out = dir.path().join("out.safetensors");
        let err = write(&out, &set).unwrap_err().to_string();
        assert!(err.contains("`w` appears more than once"), "{err}");
        assert!(!out.exists());
    }
}
