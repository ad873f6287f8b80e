//! Tensor views of a storage: every number a pickle gives (offset, sizes, strides) is checked with
//! checked arithmetic against the storage's real length before a byte is copied, and views that
//! repeat elements (stride 0) are bounded over a whole file by [`MAX_EXPANDED_BYTES`].

use super::TensorRef;
use crate::tensors::Tensor;

/// Bytes that views may materialise beyond the size of the storages they view, over a whole file.
/// Only views whose strides repeat elements (a saved `expand()`, stride 0) get there; a tiny file
/// must not be able to ask for terabytes.
pub const MAX_EXPANDED_BYTES: usize = 1 << 30;

/// Copies the views of one storage out of it, in order. A storage that a single contiguous view
/// covers exactly becomes that tensor without a copy. On failure, the index of the view and why.
pub(super) fn materialise(
    storage: Vec<u8>,
    views: &[&TensorRef],
    expanded: &mut usize,
) -> Result<Vec<Tensor>, (usize, String)> {
    if let [t] = views {
        let v = check_view(t, storage.len()).map_err(|m| (0, m))?;
        let whole = v.offset == 0
            && is_contiguous(&v.shape, &v.stride)
            && v.numel.checked_mul(t.dtype.size()) == Some(storage.len());
        if whole {
            return Tensor::new(t.dtype, v.shape, storage)
                .map(|t| vec![t])
                .map_err(|e| (0, e.to_string()));
        }
    }
    views
        .iter()
        .enumerate()
        .map(|(i, t)| gather(&storage, t, expanded).map_err(|m| (i, m)))
        .collect()
}

/// A view's geometry once every number is checked against its storage.
#[derive(Debug)]
struct View {
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
    numel: usize,
}

fn non_negative(v: i64, what: &str) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} is negative"))
}

/// Checks offset, sizes and strides (checked arithmetic: nothing may wrap) against a storage of
/// `storage_len` bytes.
fn check_view(t: &TensorRef, storage_len: usize) -> std::result::Result<View, String> {
    if t.shape.len() != t.stride.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in length",
            t.shape, t.stride
        ));
    }
    let overflow = || {
        format!(
            "size {:?} and stride {:?} overflow 64 bits",
            t.shape, t.stride
        )
    };
    let offset = non_negative(t.offset, "storage offset")?;
    let shape = t
        .shape
        .iter()
        .map(|&s| non_negative(s, "size"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let stride = t
        .stride
        .iter()
        .map(|&s| non_negative(s, "stride"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &s| n.checked_mul(s))
        .ok_or_else(overflow)?;
    let view = View {
        offset,
        shape,
        stride,
        numel,
    };
    if numel == 0 {
        return Ok(view);
    }
    let es = t.dtype.size();
    let last = view
        .shape
        .iter()
        .zip(&view.stride)
        .try_fold(offset, |acc, (&s, &st)| {
            acc.checked_add((s - 1).checked_mul(st)?)
        })
        .ok_or_else(overflow)?;
    let end = last.checked_add(1).and_then(|n| n.checked_mul(es));
    if end.is_none_or(|end| end > storage_len) {
        return Err(format!(
            "view (offset {offset}, size {:?}, stride {:?}) reaches element {last} but its storage holds {} elements of {}; the file is truncated or damaged",
            view.shape,
            view.stride,
            storage_len / es,
            t.dtype
        ));
    }
    Ok(view)
}

/// True when the strides are row-major for the shape (size-1 dimensions may have any stride).
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&s, &st) in shape.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(s);
    }
    true
}

/// Copies a strided view out of its storage into a contiguous tensor. `expanded` counts the bytes
/// views have materialised beyond their storage's size so far (see [`MAX_EXPANDED_BYTES`]).
fn gather(
    storage: &[u8],
    t: &TensorRef,
    expanded: &mut usize,
) -> std::result::Result<Tensor, String> {
    let v = check_view(t, storage.len())?;
    let es = t.dtype.size();
    let bytes = v
        .numel
        .checked_mul(es)
        .ok_or("element count overflows 64 bits")?;
    *expanded = expanded.saturating_add(bytes.saturating_sub(storage.len()));
    if *expanded > MAX_EXPANDED_BYTES {
        return Err(format!(
            "view of {} elements repeats its storage's elements (stride 0 or overlapping) up to {bytes} bytes \
             from a {}-byte storage; tagfix materialises at most {MAX_EXPANDED_BYTES} bytes beyond the storages' own size",
            v.numel,
            storage.len()
        ));
    }
    let mut data = Vec::new();
    data.try_reserve_exact(bytes)
        .map_err(|_| format!("cannot allocate {bytes} bytes for it"))?;
    if v.numel > 0 && is_contiguous(&v.shape, &v.stride) {
        data.extend_from_slice(&storage[v.offset * es..(v.offset + v.numel) * es]);
    } else if v.numel > 0 {
        copy_strided(storage, &v, es, &mut data);
    }
    Tensor::new(t.dtype, v.shape, data).map_err(|e| e.to_string())
}

/// Copies a non-contiguous view, a run of the innermost dimension at a time. `check_view` has
/// bounded every index by the view's last element, so nothing here can overflow or go out of range.
fn copy_strided(storage: &[u8], v: &View, es: usize, out: &mut Vec<u8>) {
    let nd = v.shape.len();
    let (inner, inner_stride) = (v.shape[nd - 1], v.stride[nd - 1]);
    let mut idx = vec![0usize; nd - 1];
    for _ in 0..v.numel / inner {
        let base = v.offset + idx.iter().zip(&v.stride).map(|(i, s)| i * s).sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(&storage[base * es..(base + inner) * es]);
        } else {
            for j in 0..inner {
                let e = base + j * inner_stride;
                out.extend_from_slice(&storage[e * es..(e + 1) * es]);
            }
        }
        for d in (0..nd - 1).rev() {
            idx[d] += 1;
            if idx[d] < v.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::DType;

    fn view(offset: i64, shape: &[i64], stride: &[i64]) -> TensorRef {
        TensorRef {
            storage: "0".into(),
            dtype: DType::U8,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn gather_u8(storage: &[u8], t: &TensorRef) -> std::result::Result<Vec<u8>, String> {
        gather(storage, t, &mut 0).map(|t| t.data)
    }

    #[test]
    fn gather_handles_transposed_sliced_and_expanded_views() {
        let storage: Vec<u8> = (0..6u8).collect();
        let t = view(0, &[3, 2], &[1, 3]);
        assert_eq!(gather_u8(&storage, &t).unwrap(), vec![0, 3, 1, 4, 2, 5]);
        // A row slice, a column slice, a 0-d tensor and a stride-0 (expanded) view.
        assert_eq!(
            gather_u8(&storage, &view(3, &[3], &[1])).unwrap(),
            vec![3, 4, 5]
        );
        assert_eq!(
            gather_u8(&storage, &view(1, &[2, 1], &[3, 1])).unwrap(),
            vec![1, 4]
        );
        assert_eq!(gather_u8(&storage, &view(5, &[], &[])).unwrap(), vec![5]);
        assert_eq!(
            gather_u8(&storage, &view(2, &[2, 3], &[0, 1])).unwrap(),
            vec![2, 3, 4, 2, 3, 4]
        );
        assert_eq!(
            gather_u8(&storage, &view(99, &[0, 4], &[4, 1])).unwrap(),
            Vec::<u8>::new()
        );
        let short = TensorRef { offset: 4, ..t };
        assert!(gather_u8(&storage, &short)
            .unwrap_err()
            .contains("truncated"));
    }

    #[test]
    fn hostile_view_numbers_are_errors_not_wraps() {
        let storage = vec![0u8; 48];
        let f32_view = |offset, shape: &[i64], stride: &[i64]| TensorRef {
            dtype: DType::F32,
            ..view(offset, shape, stride)
        };
        for (t, want) in [
            (
                f32_view(-4, &[4, 3], &[3, 1]),
                "storage offset -4 is negative",
            ),
            (f32_view(1 << 62, &[4, 3], &[3, 1]), "reaches element"),
            (f32_view(0, &[4, 3], &[1 << 62, 1]), "reaches element"),
            (f32_view(0, &[4, 3], &[i64::MAX, 1]), "overflow"),
            (f32_view(0, &[1 << 40, 1 << 40], &[0, 0]), "overflow"),
            (f32_view(0, &[-1, 3], &[3, 1]), "size -1 is negative"),
            (f32_view(0, &[4, 3], &[3, -1]), "stride -1 is negative"),
            (f32_view(0, &[4, 3], &[3]), "differ in length"),
        ] {
            let err = gather(&storage, &t, &mut 0).unwrap_err();
            assert!(err.contains(want), "{t:?}: {err}");
        }
    }

    #[test]
    fn expanded_views_are_bounded() {
        let storage = vec![0u8; 4];
        let huge = TensorRef {
            dtype: DType::F32,
            ..view(0, &[1 << 31], &[0])
        };
        let err = gather(&storage, &huge, &mut 0).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        let mut expanded = 0;
        let small = TensorRef {
            dtype: DType::F32,
            ..view(0, &[1000], &[0])
        };
        assert_eq!(
            gather(&storage, &small, &mut expanded).unwrap().data.len(),
            4000
        );
        assert_eq!(expanded, 3996);
    }
}
