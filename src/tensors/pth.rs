//! PyTorch's `torch.save` format, read without Python and without executing anything.
//!
//! The zip format (torch ≥ 1.6: `<archive>/data.pkl` + `<archive>/data/<key>` storages) and the legacy
//! format (a sequence of pickles followed by raw storages) are both read. The pickle is interpreted by
//! a small stack machine that knows only the globals a checkpoint needs (`_rebuild_tensor_v2`,
//! `_rebuild_parameter`, typed storages, `OrderedDict`); any other global — `os.system`, say — is
//! refused with an error that names it. Nothing a pickle names is ever called.
//!
//! The writer produces the zip format with a pickle that `torch.load(..., weights_only=True)` accepts:
//! a bare tensor (as RAM stores `frozen_tag_embedding/*.pth`) or a dict of tensors.

use super::{DType, Tensor, TensorSet};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::path::Path;

/// Globals a checkpoint may name. Everything else is refused.
const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
];

fn storage_dtype(global: &str) -> Option<DType> {
    Some(match global {
        "torch.FloatStorage" => DType::F32,
        "torch.DoubleStorage" => DType::F64,
        "torch.HalfStorage" => DType::F16,
        "torch.BFloat16Storage" => DType::BF16,
        "torch.LongStorage" => DType::I64,
        "torch.IntStorage" => DType::I32,
        "torch.ShortStorage" => DType::I16,
        "torch.CharStorage" => DType::I8,
        "torch.ByteStorage" => DType::U8,
        "torch.BoolStorage" => DType::Bool,
        _ => return None,
    })
}

/// A value of the unpickled object graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too large for i64 (little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A global reference, `module.name`.
    Global(String),
    /// A storage reference from a persistent id.
    Storage {
        key: String,
        dtype: DType,
        numel: usize,
    },
    /// A tensor view of a storage.
    TensorRef(TensorRef),
}

/// A strided view into a storage, as `_rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: DType,
    pub storage_numel: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

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
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::invalid(path, m);
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(path, &bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(path, &bytes)
    } else if bytes.is_empty() {
        Err(bad("empty file, not a PyTorch checkpoint".into()))
    } else {
        Err(bad(
            "not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)"
                .into(),
        ))
    }
}

fn read_zip(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |m: String| Error::invalid(path, m);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        bad(format!("damaged torch.save archive ({e}); the file may be truncated — re-download or re-save it"))
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| bad("torch.save archive without data.pkl".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pickle = read_entry(&mut zip, &pkl_name).map_err(bad)?;
    let root = Unpickler::new(path).run(&pickle)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut load = |key: &str| -> Result<Vec<u8>> {
        if let Some(b) = storages.get(key) {
            return Ok(b.clone());
        }
        let b = read_entry(&mut zip, &format!("{prefix}data/{key}")).map_err(bad)?;
        storages.insert(key.to_string(), b.clone());
        Ok(b)
    };
    assemble(path, root, &mut load, false)
}

fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("archive entry {name}: {e}"))?;
    let mut out = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut out)
        .map_err(|e| format!("archive entry {name}: {e} (truncated file?)"))?;
    Ok(out)
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |m: String| Error::invalid(path, m);
    let mut pos = 0;
    let next = |pos: &mut usize| -> Result<Value> {
        let mut up = Unpickler::new(path);
        let v = up.run(&bytes[*pos..])?;
        *pos += up.consumed;
        Ok(v)
    };
    let magic = next(&mut pos)?;
    if magic
        != Value::BigInt(vec![
            0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ])
    {
        return Err(bad(
            "not a PyTorch checkpoint (legacy magic number missing)".into(),
        ));
    }
    let _protocol = next(&mut pos)?;
    let _sys_info = next(&mut pos)?;
    let root = next(&mut pos)?;
    let keys = match next(&mut pos)? {
        Value::List(k) => k,
        _ => return Err(bad("legacy checkpoint: storage key list missing".into())),
    };
    // Storages follow in key order: an 8-byte element count, then the raw little-endian data.
    let sizes = storage_sizes(&root);
    let mut storages = HashMap::new();
    for k in keys {
        let Value::Str(key) = k else {
            return Err(bad("legacy checkpoint: storage key is not a string".into()));
        };
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| bad(format!("legacy checkpoint truncated before storage {key}")))?;
        let numel = u64::from_le_bytes(header.try_into().unwrap()) as usize;
        let elem = sizes.get(&key).copied().unwrap_or(1);
        let data = bytes
            .get(pos + 8..pos + 8 + numel * elem)
            .ok_or_else(|| bad(format!("legacy checkpoint truncated inside storage {key}")))?;
        storages.insert(key, data.to_vec());
        pos += 8 + numel * elem;
    }
    let mut load = |key: &str| -> Result<Vec<u8>> {
        storages
            .get(key)
            .cloned()
            .ok_or_else(|| bad(format!("legacy checkpoint: storage {key} missing")))
    };
    assemble(path, root, &mut load, true)
}

fn storage_sizes(v: &Value) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    fn walk(v: &Value, out: &mut HashMap<String, usize>) {
        match v {
            Value::TensorRef(t) => {
                out.insert(t.storage.clone(), t.dtype.size());
            }
            Value::Tuple(xs) | Value::List(xs) => xs.iter().for_each(|x| walk(x, out)),
            Value::Dict(kv) => kv.iter().for_each(|(_, x)| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Turns the unpickled root into a checkpoint, materialising every tensor view.
fn assemble(
    path: &Path,
    root: Value,
    load: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
    legacy: bool,
) -> Result<Checkpoint> {
    let bad = |m: String| Error::invalid(path, m);
    let mut materialise = |name: &str, t: &TensorRef| -> Result<Tensor> {
        let storage = load(&t.storage)?;
        gather(&storage, t).map_err(|m| bad(format!("tensor `{name}`: {m}")))
    };
    let (container, entries, extras) = match root {
        Value::TensorRef(t) => {
            let tensor = materialise("tensor", &t)?;
            return Ok(Checkpoint {
                tensors: vec![("tensor".into(), tensor)],
                container: Container::BareTensor,
                extras: BTreeMap::new(),
                legacy,
            });
        }
        Value::Dict(kv) => {
            let wrapped = kv.iter().position(|(k, v)| {
                matches!(k, Value::Str(s) if ["model", "state_dict", "module"].contains(&s.as_str()))
                    && matches!(v, Value::Dict(_))
            });
            match wrapped {
                Some(i) => {
                    let mut kv = kv;
                    let (Value::Str(key), Value::Dict(inner)) = kv.remove(i) else {
                        unreachable!()
                    };
                    let extras = kv
                        .into_iter()
                        .filter_map(|(k, v)| match k {
                            Value::Str(k) => Some((k, to_json(&v))),
                            _ => None,
                        })
                        .collect();
                    (Container::Wrapped(key), inner, extras)
                }
                None => (Container::StateDict, kv, BTreeMap::new()),
            }
        }
        other => {
            return Err(bad(format!(
                "holds a {} at the top level, not a tensor or a dict of tensors",
                kind(&other)
            )))
        }
    };
    let mut tensors = Vec::new();
    let mut extras = extras;
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
            Value::TensorRef(t) => tensors.push((name.clone(), materialise(&name, &t)?)),
            other => {
                extras.insert(name, to_json(&other));
            }
        }
    }
    Ok(Checkpoint {
        tensors,
        container,
        extras,
        legacy,
    })
}

/// Copies a strided view out of its storage into a contiguous tensor.
fn gather(storage: &[u8], t: &TensorRef) -> std::result::Result<Tensor, String> {
    let es = t.dtype.size();
    let numel: usize = t.shape.iter().product();
    if t.shape.len() != t.stride.len() {
        return Err("shape and stride differ in length".into());
    }
    if numel > 0 {
        let last = t.offset
            + t.shape
                .iter()
                .zip(&t.stride)
                .map(|(s, st)| (s - 1) * st)
                .sum::<usize>();
        if (last + 1) * es > storage.len() {
            return Err(format!(
                "view reaches element {last} but its storage holds {} bytes ({} elements of {}); the file is truncated or damaged",
                storage.len(),
                storage.len() / es,
                t.dtype
            ));
        }
    }
    let mut data = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        data.extend_from_slice(&storage[off * es..(off + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor::new(t.dtype, t.shape.clone(), data).map_err(|e| e.to_string())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global",
        Value::Storage { .. } => "storage",
        Value::TensorRef(_) => "tensor",
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

/// The restricted pickle machine.
struct Unpickler<'p> {
    path: &'p Path,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    consumed: usize,
}

impl<'p> Unpickler<'p> {
    fn new(path: &'p Path) -> Self {
        Unpickler {
            path,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            consumed: 0,
        }
    }

    fn err(&self, pos: usize, m: impl std::fmt::Display) -> Error {
        Error::invalid(self.path, format!("pickle byte {pos}: {m}"))
    }

    fn pop(&mut self, pos: usize) -> Result<Value> {
        self.stack
            .pop()
            .ok_or_else(|| self.err(pos, "stack underflow (damaged pickle)"))
    }

    fn pop_mark(&mut self, pos: usize) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err(pos, "no MARK (damaged pickle)"))?;
        if m > self.stack.len() {
            return Err(self.err(pos, "MARK above stack (damaged pickle)"));
        }
        Ok(self.stack.split_off(m))
    }

    fn top_mut(&mut self, pos: usize) -> Result<&mut Value> {
        let path = self.path;
        self.stack
            .last_mut()
            .ok_or_else(|| Error::invalid(path, format!("pickle byte {pos}: empty stack")))
    }

    fn run(&mut self, data: &[u8]) -> Result<Value> {
        let mut p = 0usize;
        macro_rules! take {
            ($n:expr) => {{
                let n = $n;
                let s = data
                    .get(p..p + n)
                    .ok_or_else(|| self.err(p, "unexpected end of data (truncated file?)"))?;
                p += n;
                s
            }};
        }
        macro_rules! u32le {
            () => {
                u32::from_le_bytes(take!(4).try_into().unwrap())
            };
        }
        loop {
            let at = p;
            let op = *take!(1).first().unwrap();
            match op {
                0x80 => {
                    take!(1);
                } // PROTO
                0x95 => {
                    take!(8);
                } // FRAME
                b'.' => {
                    self.consumed = p;
                    return self.pop(at);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = take!(1)[0];
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let b = take!(2);
                    self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]).into()))
                }
                b'J' => {
                    let v = i32::from_le_bytes(take!(4).try_into().unwrap());
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    // LONG1
                    let n = take!(1)[0] as usize;
                    let b = take!(n).to_vec();
                    self.stack.push(long_from_bytes(b));
                }
                0x8b => {
                    let n = u32le!() as usize;
                    let b = take!(n).to_vec();
                    self.stack.push(long_from_bytes(b));
                }
                b'G' => {
                    let v = f64::from_be_bytes(take!(8).try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = u32le!() as usize;
                    let s = self.utf8(take!(n), at)?;
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = take!(1)[0] as usize;
                    let s = self.utf8(take!(n), at)?;
                    self.stack.push(Value::Str(s))
                }
                0x8d => {
                    let n = u64::from_le_bytes(take!(8).try_into().unwrap()) as usize;
                    let s = self.utf8(take!(n), at)?;
                    self.stack.push(Value::Str(s))
                }
                b'U' => {
                    let n = take!(1)[0] as usize;
                    let s = String::from_utf8_lossy(take!(n)).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'T' => {
                    let n = u32le!() as usize;
                    let s = String::from_utf8_lossy(take!(n)).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'C' => {
                    let n = take!(1)[0] as usize;
                    let b = take!(n).to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'B' => {
                    let n = u32le!() as usize;
                    let b = take!(n).to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b']' => self.stack.push(Value::List(vec![])),
                b'}' => self.stack.push(Value::Dict(vec![])),
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.stack.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    self.stack.push(Value::List(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err(at, "stack underflow (damaged pickle)"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'q' => {
                    let k = take!(1)[0] as u32;
                    let v = self.top_mut(at)?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = u32le!();
                    let v = self.top_mut(at)?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top_mut(at)?.clone();
                    self.memo.insert(k, v);
                }
                b'h' => {
                    let k = take!(1)[0] as u32;
                    self.get_memo(k, at)?
                }
                b'j' => {
                    let k = u32le!();
                    self.get_memo(k, at)?
                }
                b'a' => {
                    let v = self.pop(at)?;
                    match self.top_mut(at)? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.err(at, "APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    match self.top_mut(at)? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.err(at, "APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    match self.top_mut(at)? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.err(at, "SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.err(at, "SETITEMS with an odd item count"));
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top_mut(at)? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err(self.err(at, "SETITEMS on a non-dict")),
                    }
                }
                b'c' => {
                    let rest = &data[p..];
                    let line = |r: &[u8]| r.iter().position(|&b| b == b'\n');
                    let m_end = line(rest).ok_or_else(|| self.err(at, "unterminated GLOBAL"))?;
                    let module = String::from_utf8_lossy(&rest[..m_end]).into_owned();
                    let rest2 = &rest[m_end + 1..];
                    let n_end = line(rest2).ok_or_else(|| self.err(at, "unterminated GLOBAL"))?;
                    let name = String::from_utf8_lossy(&rest2[..n_end]).into_owned();
                    p += m_end + 1 + n_end + 1;
                    self.push_global(format!("{module}.{name}"), at)?;
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push_global(format!("{m}.{n}"), at)?,
                        _ => return Err(self.err(at, "STACK_GLOBAL with non-string operands")),
                    }
                }
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = self.persistent(pid, at)?;
                    self.stack.push(v)
                }
                b'R' => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let v = self.reduce(func, args, at)?;
                    self.stack.push(v)
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args) — only for allowed globals, same as REDUCE.
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    let v = self.reduce(cls, args, at)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD: state for the object below. Dicts (OrderedDict `_metadata`) and tensors
                    // (parameter attributes) carry nothing tagfix needs: drop the state.
                    let _state = self.pop(at)?;
                    self.top_mut(at)?;
                }
                other => {
                    return Err(self.err(
                        at,
                        format!("unsupported pickle opcode 0x{other:02x}; this file is not a plain tensor checkpoint"),
                    ))
                }
            }
        }
    }

    fn utf8(&self, b: &[u8], at: usize) -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err(at, "invalid UTF-8 string"))
    }

    fn get_memo(&mut self, k: u32, at: usize) -> Result<()> {
        let v = self
            .memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.err(at, format!("memo {k} missing")))?;
        self.stack.push(v);
        Ok(())
    }

    fn push_global(&mut self, name: String, at: usize) -> Result<()> {
        if !ALLOWED_GLOBALS.contains(&name.as_str()) {
            return Err(self.err(
                at,
                format!(
                    "refusing to load: the pickle names the global `{name}`, which a tensor checkpoint never needs \
                     (it could run code if unpickled by Python). Nothing was executed. Only tensors, storages and \
                     OrderedDict are accepted"
                ),
            ));
        }
        self.stack.push(Value::Global(name));
        Ok(())
    }

    fn persistent(&self, pid: Value, at: usize) -> Result<Value> {
        // ('storage', storage_type, key, location, numel[, view_metadata])
        let Value::Tuple(items) = pid else {
            return Err(self.err(at, "persistent id is not a tuple"));
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(ty), key, _location, Value::Int(numel), ..]
                if tag == "storage" =>
            {
                let dtype = storage_dtype(ty)
                    .ok_or_else(|| self.err(at, format!("unknown storage type {ty}")))?;
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(self.err(at, "storage key is not a string")),
                };
                Ok(Value::Storage {
                    key,
                    dtype,
                    numel: *numel as usize,
                })
            }
            _ => Err(self.err(at, "unsupported persistent id (not a tensor storage)")),
        }
    }

    fn reduce(&self, func: Value, args: Value, at: usize) -> Result<Value> {
        let Value::Global(name) = func else {
            return Err(self.err(at, format!("REDUCE of a {}", kind(&func))));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(at, "REDUCE arguments are not a tuple"));
        };
        match name.as_str() {
            "collections.OrderedDict" => match args.as_slice() {
                [] => Ok(Value::Dict(vec![])),
                [Value::List(pairs)] => Ok(Value::Dict(
                    pairs
                        .iter()
                        .filter_map(|p| match p {
                            Value::Tuple(kv) if kv.len() == 2 => {
                                Some((kv[0].clone(), kv[1].clone()))
                            }
                            _ => None,
                        })
                        .collect(),
                )),
                _ => Err(self.err(at, "OrderedDict with unexpected arguments")),
            },
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let (storage, offset, size, stride) = match args.as_slice() {
                    [s, Value::Int(o), Value::Tuple(sz), Value::Tuple(st), ..] => (s, *o, sz, st),
                    _ => return Err(self.err(at, "_rebuild_tensor with unexpected arguments")),
                };
                let Value::Storage { key, dtype, numel } = storage else {
                    return Err(self.err(at, "_rebuild_tensor without a storage"));
                };
                let ints = |v: &[Value]| -> Result<Vec<usize>> {
                    v.iter()
                        .map(|x| match x {
                            Value::Int(i) if *i >= 0 => Ok(*i as usize),
                            _ => {
                                Err(self.err(at, "tensor size or stride is not a non-negative int"))
                            }
                        })
                        .collect()
                };
                Ok(Value::TensorRef(TensorRef {
                    storage: key.clone(),
                    dtype: *dtype,
                    storage_numel: *numel,
                    offset: offset as usize,
                    shape: ints(size)?,
                    stride: ints(stride)?,
                }))
            }
            "torch._utils._rebuild_parameter" => match args.into_iter().next() {
                Some(t @ Value::TensorRef(_)) => Ok(t),
                _ => Err(self.err(at, "_rebuild_parameter without a tensor")),
            },
            other => Err(self.err(at, format!("`{other}` cannot be called"))),
        }
    }
}

fn long_from_bytes(b: Vec<u8>) -> Value {
    if b.len() <= 8 {
        let neg = b.last().is_some_and(|x| x & 0x80 != 0);
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        buf[..b.len()].copy_from_slice(&b);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(b)
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

    #[test]
    fn gather_handles_transposed_views() {
        let storage: Vec<u8> = (0..6u8).collect();
        let t = TensorRef {
            storage: "0".into(),
            dtype: DType::U8,
            storage_numel: 6,
            offset: 0,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        assert_eq!(gather(&storage, &t).unwrap().data, vec![0, 3, 1, 4, 2, 5]);
        let short = TensorRef { offset: 4, ..t };
        assert!(gather(&storage, &short).unwrap_err().contains("truncated"));
    }
}
