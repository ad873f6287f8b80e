//! PyTorch's `torch.save` format, read without Python and without executing anything.
//!
//! The zip format (torch ≥ 1.6: `<archive>/data.pkl` + `<archive>/data/<key>` storages) and the legacy
//! format (a sequence of pickles followed by raw storages) are both read. The pickle is interpreted by
//! a small stack machine ([`super::pickle`]) that knows only the globals a checkpoint needs
//! (`_rebuild_tensor_v2`, `_rebuild_parameter`, typed storages, `OrderedDict`); any other global —
//! `os.system`, say — is refused with an error that names it. Nothing a pickle names is ever called.
//!
//! Nothing in the file is trusted: offsets, sizes, strides and element counts are checked with
//! checked arithmetic against the storage's real length, nesting and memo copies are bounded (see
//! [`super::pickle`]), and a state dict that repeats a key is refused (see docs/formats.md). Each
//! storage is read once however many views share it; each view is copied out once.
//!
//! The writer produces the zip format with a pickle that `torch.load(..., weights_only=True)` accepts:
//! a bare tensor (as RAM stores `frozen_tag_embedding/*.pth`) or a dict of tensors.

use super::pickle::{kind, StorageDecl, Unpickler};
pub use super::pickle::{TensorRef, Value};
use super::{DType, Tensor, TensorSet};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek};
use std::path::Path;

/// Bytes that views may materialise beyond the size of the storages they view, over a whole file.
/// Only views whose strides repeat elements (a saved `expand()`, stride 0) get there; a tiny file
/// must not be able to ask for terabytes.
pub const MAX_EXPANDED_BYTES: usize = 1 << 30;

/// How the tensors sit in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    /// `torch.save(tensor)`.
    BareTensor,
    /// `torch.save(state_dict)` (dict or OrderedDict of tensors).
    StateDict,
    /// `torch.save({"model": state_dict, ...})`: the tensors are under this key.
    Wrapped(String),
}

/// A checkpoint read from a `.pth` file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Tensors in file order, contiguous.
    pub tensors: Vec<(String, Tensor)>,
    pub container: Container,
    /// Non-tensor entries beside the state dict (e.g. `epoch`), rendered as JSON.
    pub extras: BTreeMap<String, serde_json::Value>,
    /// True for the pre-1.6 non-zip format.
    pub legacy: bool,
}

impl Checkpoint {
    /// The tensors as a [`TensorSet`] (extras go into its metadata as JSON strings).
    pub fn into_tensor_set(self) -> TensorSet {
        TensorSet {
            tensors: self.tensors,
            metadata: self
                .extras
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        }
    }
}

/// Reads a `torch.save` file.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = Vec::with_capacity(4);
    (&mut file).take(4).read_to_end(&mut magic).map_err(io)?;
    if magic.starts_with(b"PK\x03\x04") {
        file.rewind().map_err(io)?;
        read_zip(path, std::io::BufReader::new(file))
    } else if magic.first() == Some(&0x80) {
        let bytes = std::fs::read(path).map_err(io)?;
        read_legacy(path, &bytes)
    } else if magic.is_empty() {
        Err(Error::invalid(path, "empty file, not a PyTorch checkpoint"))
    } else {
        Err(Error::invalid(
            path,
            "not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)",
        ))
    }
}

fn read_zip<R: Read + Seek>(path: &Path, reader: R) -> Result<Checkpoint> {
    let bad = |m: String| Error::invalid(path, m);
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
        bad(format!("damaged torch.save archive ({e}); the file may be truncated — re-download or re-save it"))
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| bad("torch.save archive without data.pkl".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pickle = read_entry(&mut zip, &pkl_name).map_err(bad)?;
    let mut unpickler = Unpickler::new(path);
    let layout = layout(path, unpickler.run(&pickle)?)?;
    let mut owned: HashMap<String, Vec<u8>> = HashMap::new();
    for key in layout.storage_keys() {
        let data = read_entry(&mut zip, &format!("{prefix}data/{key}")).map_err(bad)?;
        owned.insert(key.to_string(), data);
    }
    let storages = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let (tensors, container, extras) = layout.materialise(path, &unpickler.storages, &storages)?;
    Ok(Checkpoint {
        tensors,
        container,
        extras,
        legacy: false,
    })
}

fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("archive entry {name}: {e}"))?;
    // The size is the archive's claim: no preallocation from it, the reader stops at the real end.
    let mut out = Vec::new();
    f.read_to_end(&mut out)
        .map_err(|e| format!("archive entry {name}: {e} (truncated file?)"))?;
    Ok(out)
}

/// The legacy magic number, `0x1950a86a20f9469cfc6c` as a pickled long.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |m: String| Error::invalid(path, m);
    let mut pos = 0;
    let next = |pos: &mut usize| -> Result<(Value, HashMap<String, StorageDecl>)> {
        let mut up = Unpickler::new(path);
        let v = up.run(&bytes[*pos..])?;
        *pos += up.consumed;
        Ok((v, up.storages))
    };
    if next(&mut pos)?.0 != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(bad(
            "not a PyTorch checkpoint (legacy magic number missing)".into(),
        ));
    }
    let _protocol = next(&mut pos)?;
    let _sys_info = next(&mut pos)?;
    let (root, decls) = next(&mut pos)?;
    let Value::List(keys) = next(&mut pos)?.0 else {
        return Err(bad("legacy checkpoint: storage key list missing".into()));
    };
    // Storages follow in key order: an 8-byte element count, then the raw little-endian data.
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    let mut names = Vec::with_capacity(keys.len());
    for k in keys {
        let Value::Str(key) = k else {
            return Err(bad("legacy checkpoint: storage key is not a string".into()));
        };
        names.push(key);
    }
    for key in &names {
        let decl = decls.get(key).ok_or_else(|| {
            bad(format!(
                "legacy checkpoint: storage {key} is listed but the pickle never declares it"
            ))
        })?;
        let (data, end) = legacy_storage(bytes, pos, key, decl).map_err(bad)?;
        if storages.insert(key, data).is_some() {
            return Err(bad(format!(
                "legacy checkpoint: storage {key} is listed twice"
            )));
        }
        pos = end;
    }
    let layout = layout(path, root)?;
    let (tensors, container, extras) = layout.materialise(path, &decls, &storages)?;
    Ok(Checkpoint {
        tensors,
        container,
        extras,
        legacy: true,
    })
}

/// The data of the legacy storage `key` whose header starts at `pos`, and where it ends.
fn legacy_storage<'b>(
    bytes: &'b [u8],
    pos: usize,
    key: &str,
    decl: &StorageDecl,
) -> std::result::Result<(&'b [u8], usize), String> {
    let truncated = || format!("legacy checkpoint truncated inside storage {key}");
    let start = pos.checked_add(8).ok_or_else(truncated)?;
    let header = bytes.get(pos..start).ok_or_else(truncated)?;
    let numel = u64::from_le_bytes(header.try_into().expect("8 bytes"));
    if numel != decl.numel as u64 {
        return Err(format!(
            "legacy checkpoint: storage {key} holds {numel} elements, but the pickle declares {}",
            decl.numel
        ));
    }
    let end = decl
        .numel
        .checked_mul(decl.dtype.size())
        .and_then(|len| start.checked_add(len))
        .ok_or_else(truncated)?;
    Ok((bytes.get(start..end).ok_or_else(truncated)?, end))
}

/// Where the tensors sit, before any is copied out of its storage.
struct Layout {
    container: Container,
    tensors: Vec<(String, TensorRef)>,
    extras: BTreeMap<String, serde_json::Value>,
}

/// Reads the unpickled root: a bare tensor, a state dict, or a dict wrapping one.
fn layout(path: &Path, root: Value) -> Result<Layout> {
    let bad = |m: String| Error::invalid(path, m);
    let (container, entries, mut extras) = match root {
        Value::TensorRef(t) => {
            return Ok(Layout {
                container: Container::BareTensor,
                tensors: vec![("tensor".into(), t)],
                extras: BTreeMap::new(),
            })
        }
        Value::Dict(kv) => split_wrapper(path, kv)?,
        other => {
            return Err(bad(format!(
                "holds a {} at the top level, not a tensor or a dict of tensors",
                kind(&other)
            )))
        }
    };
    check_unique_keys(path, &entries, "state-dict")?;
    let mut tensors = Vec::new();
    for (k, v) in entries {
        let name = match k {
            Value::Str(s) => s,
            other => {
                return Err(bad(format!(
                    "state-dict key is a {}, not a string",
                    kind(&other)
                )))
            }
        };
        match v {
            Value::TensorRef(t) => tensors.push((name, t)),
            other => {
                extras.insert(name, to_json(&other));
            }
        }
    }
    Ok(Layout {
        container,
        tensors,
        extras,
    })
}

type Entries = Vec<(Value, Value)>;

/// Splits `{"model" | "state_dict" | "module": state_dict, ...extras}` into its parts; any other
/// dict is the state dict itself.
fn split_wrapper(
    path: &Path,
    mut kv: Entries,
) -> Result<(Container, Entries, BTreeMap<String, serde_json::Value>)> {
    let wrapped = kv.iter().position(|(k, v)| {
        matches!(k, Value::Str(s) if ["model", "state_dict", "module"].contains(&s.as_str()))
            && matches!(v, Value::Dict(_))
    });
    let Some(i) = wrapped else {
        return Ok((Container::StateDict, kv, BTreeMap::new()));
    };
    check_unique_keys(path, &kv, "top-level")?;
    let (Value::Str(key), Value::Dict(inner)) = kv.remove(i) else {
        unreachable!("matched above")
    };
    let extras = kv
        .into_iter()
        .filter_map(|(k, v)| match k {
            Value::Str(k) => Some((k, to_json(&v))),
            _ => None,
        })
        .collect();
    Ok((Container::Wrapped(key), inner, extras))
}

/// Refuses a dict whose string keys repeat. A dict torch.save wrote cannot repeat a key; Python
/// would keep the last value, so a repeated key means an edited or crafted file whose two readings
/// (first or last) differ — neither is silently chosen.
fn check_unique_keys(path: &Path, entries: &[(Value, Value)], what: &str) -> Result<()> {
    let mut seen = HashSet::with_capacity(entries.len());
    for (k, _) in entries {
        if let Value::Str(s) = k {
            if !seen.insert(s.as_str()) {
                return Err(Error::invalid(
                    path,
                    format!(
                        "{what} key `{s}` appears more than once; a dict saved by torch.save cannot repeat \
                         a key, so the file was edited or damaged (refusing rather than picking one)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Layout {
    /// The keys of the storages the tensors view, each once, in first-use order.
    fn storage_keys(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.tensors
            .iter()
            .map(|(_, t)| t.storage.as_str())
            .filter(|k| seen.insert(*k))
            .collect()
    }

    /// Copies every tensor out of its storage (`storages` by key, `decls` as the pickle declared them).
    #[allow(clippy::type_complexity)]
    fn materialise(
        self,
        path: &Path,
        decls: &HashMap<String, StorageDecl>,
        storages: &HashMap<&str, &[u8]>,
    ) -> Result<(
        Vec<(String, Tensor)>,
        Container,
        BTreeMap<String, serde_json::Value>,
    )> {
        let mut expanded = 0usize;
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for (name, t) in self.tensors {
            let storage =
                declared_storage(&t, decls, storages).map_err(|m| Error::invalid(path, m))?;
            let tensor = gather(storage, &t, &mut expanded)
                .map_err(|m| Error::invalid(path, format!("tensor `{name}`: {m}")))?;
            tensors.push((name, tensor));
        }
        Ok((tensors, self.container, self.extras))
    }
}

/// The bytes of `t`'s storage, as long as the pickle declares it (and no longer).
fn declared_storage<'s>(
    t: &TensorRef,
    decls: &HashMap<String, StorageDecl>,
    storages: &HashMap<&str, &'s [u8]>,
) -> std::result::Result<&'s [u8], String> {
    let key = &t.storage;
    let decl = decls
        .get(key)
        .ok_or_else(|| format!("storage {key} is never declared"))?;
    let data = storages
        .get(key.as_str())
        .ok_or_else(|| format!("storage {key} missing"))?;
    let len = decl.numel.checked_mul(decl.dtype.size());
    match len {
        Some(len) if len <= data.len() => Ok(&data[..len]),
        _ => Err(format!(
            "storage {key} holds {} bytes, but the pickle declares {} {} elements; the file is truncated or damaged",
            data.len(),
            decl.numel,
            decl.dtype
        )),
    }
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

fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => J::from(*f),
        Value::Str(s) => J::String(s.clone()),
        Value::Tuple(xs) | Value::List(xs) => J::Array(xs.iter().map(to_json).collect()),
        Value::Dict(kv) => J::Object(
            kv.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::TensorRef(t) => J::String(format!("<tensor {:?} {}>", t.shape, t.dtype)),
        other => J::String(format!("<{}>", kind(other))),
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

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
    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v < 256 {
            self.out.extend([b'K', v as u8]);
        } else if v < 65536 {
            self.out.push(b'M');
            self.out.extend((v as u16).to_le_bytes());
        } else if v <= i32::MAX as usize {
            self.out.push(b'J');
            self.out.extend((v as i32).to_le_bytes());
        } else {
            self.out.extend([0x8a, 8]);
            self.out.extend((v as u64).to_le_bytes());
        }
    }
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
    }
    fn int_tuple(&mut self, xs: impl Iterator<Item = usize>) {
        self.out.push(b'(');
        for x in xs {
            self.int(x);
        }
        self.out.push(b't');
    }
    /// `OrderedDict` of `items`, storages numbered from 0 in order.
    fn ordered_dict(&mut self, items: &[(String, Tensor)]) {
        self.global("collections", "OrderedDict");
        self.out.extend([b')', b'R', b'(']);
        for (i, (name, t)) in items.iter().enumerate() {
            self.str(name);
            self.tensor(t, i);
        }
        self.out.push(b'u');
    }
    /// `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` for storage `key`.
    fn tensor(&mut self, t: &Tensor, key: usize) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'(');
        self.out.push(b'(');
        self.str("storage");
        self.global("torch", storage_class(t.dtype));
        self.str(&key.to_string());
        self.str("cpu");
        self.int(t.numel());
        self.out.push(b't');
        self.out.push(b'Q');
        self.int(0);
        self.int_tuple(t.shape.iter().copied());
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1].max(1);
        }
        self.int_tuple(stride.into_iter());
        self.out.push(0x89);
        self.global("collections", "OrderedDict");
        self.out.extend([b')', b'R']);
        self.out.extend([b't', b'R']);
    }
}

/// Writes a `torch.save`-compatible zip file atomically. The archive folder is named after the file.
pub fn write(path: &Path, content: PthContent<'_>) -> Result<()> {
    let mut pw = PickleWriter::default();
    pw.out.extend([0x80, 2]);
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
            // EMPTY_DICT, key, the state dict, SETITEM.
            pw.out.push(b'}');
            pw.str(key);
            pw.ordered_dict(items);
            pw.out.push(b's');
            items.iter().map(|(_, t)| t).collect()
        }
    };
    pw.out.push(b'.');

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
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let mut put = |name: String, bytes: &[u8]| -> std::io::Result<()> {
            zip.start_file(name, opts).map_err(std::io::Error::other)?;
            std::io::Write::write_all(&mut zip, bytes)
        };
        let io = |e: std::io::Error| Error::io(path, e);
        put(format!("{archive}/data.pkl"), &pw.out).map_err(io)?;
        put(format!("{archive}/.format_version"), b"1").map_err(io)?;
        put(format!("{archive}/.storage_alignment"), b"64").map_err(io)?;
        put(format!("{archive}/byteorder"), b"little").map_err(io)?;
        for (i, t) in tensors.iter().enumerate() {
            put(format!("{archive}/data/{i}"), &t.data).map_err(io)?;
        }
        put(format!("{archive}/version"), b"3\n").map_err(io)?;
        zip.finish()
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    }
    let bytes = buf.into_inner();
    write_atomic(path, |w| w.write_all(&bytes))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn repeated_state_dict_keys_are_refused() {
        let t = Value::TensorRef(view(0, &[1], &[1]));
        let dict = |keys: &[&str]| {
            Value::Dict(
                keys.iter()
                    .map(|k| (Value::Str(k.to_string()), t.clone()))
                    .collect(),
            )
        };
        let p = Path::new("x.pth");
        let err = layout(p, dict(&["w", "b", "w"])).err().unwrap().to_string();
        assert!(err.contains("key `w` appears more than once"), "{err}");
        let wrapped = Value::Dict(vec![
            (Value::Str("model".into()), dict(&["a", "a"])),
            (Value::Str("epoch".into()), Value::Int(1)),
        ]);
        assert!(layout(p, wrapped).is_err());
        let twice = Value::Dict(vec![
            (Value::Str("model".into()), dict(&["a"])),
            (Value::Str("model".into()), dict(&["b"])),
        ]);
        let err = layout(p, twice).err().unwrap().to_string();
        assert!(err.contains("top-level key `model`"), "{err}");
        assert_eq!(layout(p, dict(&["a", "b"])).unwrap().tensors.len(), 2);
    }
}
