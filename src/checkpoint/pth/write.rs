//! Writing `torch.save` zip files: a protocol-2 pickle of the subset torch.save emits, and one stored
//! (uncompressed, 64-byte aligned) entry per tensor, streamed to the output file.

use super::super::pickle::Op;
use crate::error::{Error, Result};
use crate::fsutil::{output_temp, persist};
use crate::tensors::{DType, Tensor};
use std::io::Write;
use std::path::Path;

/// What to write: one bare tensor, a dict of named tensors (an `OrderedDict`, as `state_dict()`), or
/// such a dict under one key of a plain dict (`{"model": state_dict}`, as RAM's checkpoints).
pub enum PthContent<'a> {
    Tensor(&'a Tensor),
    Dict(&'a [(String, Tensor)]),
    Wrapped(&'a str, &'a [(String, Tensor)]),
}

fn storage_class(d: DType) -> &'static str {
    match d {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
    }
}

/// Pickle protocol-2 writer for the subset torch.save emits.
#[derive(Default)]
struct PickleWriter {
    out: Vec<u8>,
}

impl PickleWriter {
    fn op(&mut self, op: Op) {
        self.out.push(op.byte());
    }
    fn ops(&mut self, ops: &[Op]) {
        self.out.extend(ops.iter().map(|op| op.byte()));
    }
    fn str(&mut self, s: &str) {
        self.op(Op::BinUnicode);
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v < 256 {
            self.op(Op::BinInt1);
            self.out.push(v as u8);
        } else if v < 65536 {
            self.op(Op::BinInt2);
            self.out.extend((v as u16).to_le_bytes());
        } else if v <= i32::MAX as usize {
            self.op(Op::BinInt);
            self.out.extend((v as i32).to_le_bytes());
        } else {
            self.op(Op::Long1);
            self.out.push(8);
            self.out.extend((v as u64).to_le_bytes());
        }
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(Op::Global);
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
    }
    fn int_tuple(&mut self, xs: impl Iterator<Item = usize>) {
        self.op(Op::Mark);
        for x in xs {
            self.int(x);
        }
        self.op(Op::Tuple);
    }
    /// `OrderedDict` of `items`, storages numbered from 0 in order.
    fn ordered_dict(&mut self, items: &[(String, Tensor)]) {
        self.global("collections", "OrderedDict");
        self.ops(&[Op::EmptyTuple, Op::Reduce, Op::Mark]);
        for (i, (name, t)) in items.iter().enumerate() {
            self.str(name);
            self.tensor(t, i);
        }
        self.op(Op::SetItems);
    }
    /// `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` for storage `key`.
    fn tensor(&mut self, t: &Tensor, key: usize) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.ops(&[Op::Mark, Op::Mark]);
        self.str("storage");
        self.global("torch", storage_class(t.dtype));
        self.str(&key.to_string());
        self.str("cpu");
        self.int(t.numel());
        self.ops(&[Op::Tuple, Op::BinPersId]);
        self.int(0);
        self.int_tuple(t.shape.iter().copied());
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1].max(1);
        }
        self.int_tuple(stride.into_iter());
        self.op(Op::NewFalse);
        self.global("collections", "OrderedDict");
        self.ops(&[Op::EmptyTuple, Op::Reduce, Op::Tuple, Op::Reduce]);
    }
}

/// Writes a `torch.save`-compatible zip file atomically. The archive folder is named after the file.
pub fn write(path: &Path, content: PthContent<'_>) -> Result<()> {
    let mut pw = PickleWriter::default();
    pw.op(Op::Proto);
    pw.out.push(2);
    let tensors: Vec<&Tensor> = match content {
        PthContent::Tensor(t) => {
            pw.tensor(t, 0);
            vec![t]
        }
        PthContent::Dict(items) => {
            pw.ordered_dict(items);
            items.iter().map(|(_, t)| t).collect()
        }
        PthContent::Wrapped(key, items) => {
            pw.op(Op::EmptyDict);
            pw.str(key);
            pw.ordered_dict(items);
            pw.op(Op::SetItem);
            items.iter().map(|(_, t)| t).collect()
        }
    };
    pw.op(Op::Stop);

    let archive: String = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("archive")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Straight into the temporary output file: no copy of the tensors is built in memory.
    let mut tmp = output_temp(path)?;
    let io = |e: std::io::Error| Error::io(path, e);
    {
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(tmp.as_file_mut()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let mut put = |name: String, bytes: &[u8]| -> std::io::Result<()> {
            zip.start_file(name, opts).map_err(std::io::Error::other)?;
            zip.write_all(bytes)
        };
        put(format!("{archive}/data.pkl"), &pw.out).map_err(io)?;
        put(format!("{archive}/.format_version"), b"1").map_err(io)?;
        put(format!("{archive}/.storage_alignment"), b"64").map_err(io)?;
        put(format!("{archive}/byteorder"), b"little").map_err(io)?;
        for (i, t) in tensors.iter().enumerate() {
            put(format!("{archive}/data/{i}"), &t.data).map_err(io)?;
        }
        put(format!("{archive}/version"), b"3\n").map_err(io)?;
        zip.finish()
            .map_err(std::io::Error::other)
            .and_then(|mut w| w.flush())
            .map_err(io)?;
    }
    persist(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::super::{read, Container};
    use super::*;

    #[test]
    fn writer_output_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("emb.pth");
        let t = Tensor::from_f32(vec![3, 2], &[1., 2., 3., 4., 5., 6.]).unwrap();
        write(&p, PthContent::Tensor(&t)).unwrap();
        let c = read(&p).unwrap();
        assert_eq!(c.container, Container::BareTensor);
        assert_eq!(c.tensors[0].1, t);

        let items = vec![
            ("a.weight".to_string(), t.clone()),
            (
                "b".to_string(),
                Tensor::new(DType::I64, vec![300], vec![7; 2400]).unwrap(),
            ),
        ];
        write(&p, PthContent::Dict(&items)).unwrap();
        let c = read(&p).unwrap();
        assert_eq!(c.container, Container::StateDict);
        assert_eq!(c.tensors, items);

        write(&p, PthContent::Wrapped("model", &items)).unwrap();
        let c = read(&p).unwrap();
        assert_eq!(c.container, Container::Wrapped("model".into()));
        assert_eq!(c.tensors, items);
        assert!(c.extras.is_empty());
    }
}
