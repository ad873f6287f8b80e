//! `.npy` files (NumPy's format) through `ndarray-npy`: f32, f64 and i64 arrays of any rank.

use super::{DType, Tensor};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::path::Path;

/// Reads an `.npy` array (f32, f64 or i64, C or Fortran order) as a contiguous tensor.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: ndarray_npy::ReadNpyError| Error::invalid(path, format!("cannot read .npy: {e}"));
    if let Ok(a) = ArrayD::<f32>::read_npy(&bytes[..]) {
        let shape = a.shape().to_vec();
        return Tensor::from_f32(
            shape,
            &a.as_standard_layout().iter().copied().collect::<Vec<_>>(),
        );
    }
    if let Ok(a) = ArrayD::<f64>::read_npy(&bytes[..]) {
        let shape = a.shape().to_vec();
        let data = a
            .as_standard_layout()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        return Tensor::new(DType::F64, shape, data);
    }
    let a = ArrayD::<i64>::read_npy(&bytes[..]).map_err(bad)?;
    let shape = a.shape().to_vec();
    let data = a
        .as_standard_layout()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    Tensor::new(DType::I64, shape, data)
}

/// Writes an f32 / f64 / i64 tensor as `.npy`, atomically.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let mut buf = Vec::new();
    let shape = IxDyn(&t.shape);
    let err =
        |e: ndarray_npy::WriteNpyError| Error::Other(format!("writing {}: {e}", path.display()));
    match t.dtype {
        DType::F32 => ArrayD::from_shape_vec(shape, t.to_f32()?)
            .unwrap()
            .write_npy(&mut buf)
            .map_err(err)?,
        DType::F64 => {
            let v = t
                .data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            ArrayD::from_shape_vec(shape, v)
                .unwrap()
                .write_npy(&mut buf)
                .map_err(err)?
        }
        DType::I64 => {
            let v = t
                .data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            ArrayD::from_shape_vec(shape, v)
                .unwrap()
                .write_npy(&mut buf)
                .map_err(err)?
        }
        other => {
            return Err(Error::invalid(
                path,
                format!(".npy output supports f32, f64 and i64, not {other}"),
            ))
        }
    }
    write_atomic(path, |w| w.write_all(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_f32() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let t = Tensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        write(&p, &t).unwrap();
        assert_eq!(read(&p).unwrap(), t);
        std::fs::write(&p, b"not npy").unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .contains("cannot read .npy"));
    }
}
