//! `.npy` files (NumPy's format) through `ndarray-npy`: f32, f64 and i64 arrays of any rank.

use super::{DType, Tensor, TensorError};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::path::Path;

/// Reads an `.npy` array (f32, f64 or i64, C or Fortran order) as a contiguous tensor.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = crate::fsutil::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |source| TensorError::Npy {
        path: path.into(),
        source,
    };
    check_shape(path, &bytes)?;
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

/// Refuses a header whose shape the data cannot hold before `ndarray-npy` sees it: it allocates the
/// declared size up front (a 150-byte file can ask for 32 GiB and abort the process) and panics on
/// shapes whose non-zero extents overflow `isize` even when one extent is 0.
fn check_shape(path: &Path, bytes: &[u8]) -> Result<()> {
    // format 2 and 3 store the header length in 4 bytes, and `ndarray-npy` allocates it as declared
    if let (Some(b"\x93NUMPY"), Some(&[2 | 3, _, a, b, c, d])) = (bytes.get(..6), bytes.get(6..12))
    {
        let declared = u32::from_le_bytes([a, b, c, d]) as usize;
        if declared > bytes.len() - 12 {
            return Err(TensorError::NpyHeaderLength {
                path: path.into(),
                declared,
                len: bytes.len(),
            }
            .into());
        }
    }
    let mut reader = bytes;
    let Ok(header) = Header::from_reader(&mut reader) else {
        return Ok(()); // the reader below reports a bad header
    };
    let shape = &header.shape;
    let extents = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / 8);
    let Some(extents) = extents else {
        return Err(TensorError::NpyShapeOverflow {
            path: path.into(),
            shape: shape.clone(),
        }
        .into());
    };
    let numel = if shape.contains(&0) { 0 } else { extents };
    // every element type read here takes at least 4 bytes
    if numel * 4 > reader.len() {
        return Err(TensorError::NpyTruncated {
            path: path.into(),
            shape: shape.clone(),
            available: reader.len(),
        }
        .into());
    }
    Ok(())
}

/// Writes an f32 / f64 / i64 tensor as `.npy`, atomically.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let mut buf = Vec::new();
    let shape = IxDyn(&t.shape);
    let err = |source| TensorError::NpyWrite {
        path: path.into(),
        source,
    };
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
            return Err(TensorError::NpyDtype {
                path: path.into(),
                dtype: other,
            }
            .into())
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

    /// An `.npy` header for `shape`, padded as NumPy pads it.
    fn header(descr: &str, shape: &str) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (h.len() + 11) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b
    }

    /// Found by `scripts/fuzz.sh` (target `npy`): a small file declaring a huge array or a huge
    /// header aborted the process (allocation failure); a zero extent beside an overflowing one
    /// panicked.
    #[test]
    fn hostile_shapes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        for (descr, shape, says) in [
            (">i8", "(4294967296,)", "needs more data"),
            ("<f4", "(1 << 40,)", "cannot read .npy"),
            ("<f8", "(65536, 65536)", "needs more data"),
            ("<i8", "(2, 9223372036854775807, 0)", "overflows"),
            ("<f4", "(4611686018427387904, 4)", "overflows"),
        ] {
            let mut b = header(descr, shape);
            b.extend([0u8; 24]);
            std::fs::write(&p, b).unwrap();
            let err = read(&p).unwrap_err().to_string();
            assert!(err.contains(says), "{shape}: {err}");
        }
        let mut long_header = b"\x93NUMPY\x02\x00\x00\x00\x00\x9e{'descr': '<f8'}".to_vec();
        std::fs::write(&p, &long_header).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("the header claims 2650800128 bytes"), "{err}");
        long_header[11] = 0;
        std::fs::write(&p, &long_header).unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .contains("cannot read .npy"));
        let mut ok = header("<f4", "(0, 9223372036854775807)");
        std::fs::write(&p, &ok).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("overflows"));
        ok = header("<f4", "(3, 0)");
        std::fs::write(&p, &ok).unwrap();
        assert_eq!(read(&p).unwrap().shape, [3, 0]);
    }
}
