//! safetensors reading and writing (the `safetensors` crate), metadata included.

use super::{DType, Tensor, TensorSet};
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

/// Reads all tensors (in header order of offsets) and the metadata of a safetensors file.
pub fn read(path: &Path) -> Result<TensorSet> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::invalid(path, format!("not a valid safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::invalid(path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = Vec::new();
    for (name, view) in st.iter() {
        let dtype = from_st(view.dtype()).ok_or_else(|| {
            Error::invalid(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        tensors.push((
            name.to_string(),
            Tensor::new(dtype, view.shape().to_vec(), view.data().to_vec())?,
        ));
    }
    // `iter()` is unordered; use the data order, which is the order the writer chose.
    let offsets = header.offset_keys();
    tensors.sort_by_key(|(n, _)| offsets.iter().position(|k| k == n));
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

/// Writes tensors and metadata atomically.
pub fn write(path: &Path, set: &TensorSet) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = set
        .tensors
        .iter()
        .map(|(n, t)| {
            safetensors::tensor::TensorView::new(to_st(t.dtype), t.shape.clone(), &t.data)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Other(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta: std::collections::HashMap<String, String> =
        set.metadata.clone().into_iter().collect();
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Other(format!("serializing {}: {e}", path.display())))?;
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
}
