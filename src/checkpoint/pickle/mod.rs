//! The restricted pickle machine behind the `.pth` reader: it builds plain values, names globals
//! without ever calling them, and bounds what a hostile pickle can make it do.
//!
//! Bounds (see docs/formats.md, "PyTorch checkpoints"):
//! - nesting: no list, tuple or dict deeper than [`MAX_DEPTH`] — the later recursive walks over the
//!   values (drop, clone, JSON rendering) stay far from the stack's limit;
//! - memo references: a memo GET (and PUT) copies a value, so a few bytes can ask for a huge copy
//!   ("billion laughs"). Every copy is charged to a budget of [`COPY_BUDGET_BASE`] plus
//!   [`COPY_BUDGET_PER_BYTE`] per pickle byte read so far, in objects plus payload bytes;
//! - the machine itself is a loop over opcodes, never recursive, so it is linear in the pickle.
//!
//! Memo semantics follow Python's: the pickler memoises a list or dict while it is still empty and
//! fills it afterwards, so the memo copy is kept in step with later APPEND / SETITEM on that object.
//! A pickle that refers to an object before it is complete (a self-referencing structure) or that
//! mutates an object it obtained through a memo reference is refused rather than read wrongly.

mod opcode;

pub use opcode::Op;

use super::error::{CheckpointError, Result};
use crate::tensors::DType;
use std::collections::HashMap;
use std::path::Path;

/// Deepest nesting of lists, tuples and dicts accepted. Real checkpoints nest fewer than 20 levels
/// (a state dict inside a dict, optimizer state, a config); 100 keeps every recursive walk over the
/// values below ~100 KiB of stack and keeps extras re-parsable by JSON readers limited to 128 levels.
pub const MAX_DEPTH: u32 = 100;

/// Objects plus payload bytes that memo copies may build for each pickle byte read so far.
pub const COPY_BUDGET_PER_BYTE: u64 = 16;

/// Objects plus payload bytes that memo copies may build regardless of the pickle's size.
pub const COPY_BUDGET_BASE: u64 = 1 << 20;

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
    },
    /// A tensor view of a storage.
    TensorRef(TensorRef),
}

/// A strided view into a storage, as `_rebuild_tensor_v2` describes it. Offset, sizes and strides
/// are kept as the pickle gave them; the `.pth` reader checks them against the storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: DType,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A storage the pickle declares: its element type and element count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageDecl {
    pub dtype: DType,
    pub numel: usize,
}

/// Python's name for a value's type, for messages.
pub fn kind(v: &Value) -> &'static str {
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

/// Nesting depth and size (objects + payload bytes) of a value, kept beside it so that neither
/// needs a walk.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    depth: u32,
    weight: u64,
}

impl Meta {
    fn leaf(v: &Value) -> Meta {
        let payload = match v {
            Value::BigInt(b) | Value::Bytes(b) => b.len(),
            Value::Str(s) | Value::Global(s) => s.len(),
            Value::Storage { key, .. } => key.len(),
            Value::TensorRef(t) => t.storage.len() + 8 * (t.shape.len() + t.stride.len()),
            _ => 0,
        };
        Meta {
            depth: 0,
            weight: 1 + payload as u64,
        }
    }

    /// Meta of a container holding values of `items` metas.
    fn container<'a>(items: impl IntoIterator<Item = &'a Meta>) -> Meta {
        items.into_iter().fold(
            Meta {
                depth: 1,
                weight: 1,
            },
            |acc, m| acc.with(m),
        )
    }

    /// This container's meta once it also holds a value of meta `m`.
    fn with(self, m: &Meta) -> Meta {
        Meta {
            depth: self.depth.max(m.depth + 1),
            weight: self.weight.saturating_add(m.weight),
        }
    }
}

/// A value on the stack.
struct Slot {
    v: Value,
    m: Meta,
    /// Memo entries (key, generation) stored from this object while it is on the stack: later
    /// APPEND / SETITEM on it are mirrored into them.
    memo: Vec<(u32, u64)>,
    /// Obtained through a memo reference: Python would share it, so mutating it is refused.
    shared: bool,
}

impl Slot {
    fn new(v: Value, m: Meta) -> Slot {
        Slot {
            v,
            m,
            memo: Vec::new(),
            shared: false,
        }
    }
}

struct MemoEntry {
    v: Value,
    m: Meta,
    generation: u64,
    /// Read back by a memo GET already.
    got: bool,
}

/// The restricted pickle machine. One instance reads one pickle.
pub struct Unpickler<'p> {
    path: &'p Path,
    stack: Vec<Slot>,
    marks: Vec<usize>,
    memo: HashMap<u32, MemoEntry>,
    generation: u64,
    /// Objects + payload bytes copied by memo PUT / GET so far.
    copied: u64,
    /// Storages named by persistent ids, by key.
    pub storages: HashMap<String, StorageDecl>,
    /// Bytes of the input the pickle occupied (up to and including STOP).
    pub consumed: usize,
}

impl<'p> Unpickler<'p> {
    pub fn new(path: &'p Path) -> Self {
        Unpickler {
            path,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            generation: 0,
            copied: 0,
            storages: HashMap::new(),
            consumed: 0,
        }
    }

    fn err(&self, pos: usize, m: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Pickle {
            path: self.path.to_path_buf(),
            offset: pos,
            message: m.to_string(),
        }
    }

    fn pop(&mut self, pos: usize) -> Result<Slot> {
        self.stack
            .pop()
            .ok_or_else(|| self.err(pos, "stack underflow (damaged pickle)"))
    }

    fn pop_mark(&mut self, pos: usize) -> Result<Vec<Slot>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err(pos, "no MARK (damaged pickle)"))?;
        if m > self.stack.len() {
            return Err(self.err(pos, "MARK above stack (damaged pickle)"));
        }
        Ok(self.stack.split_off(m))
    }

    fn pop_n(&mut self, n: usize, pos: usize) -> Result<Vec<Slot>> {
        let at = self
            .stack
            .len()
            .checked_sub(n)
            .ok_or_else(|| self.err(pos, "stack underflow (damaged pickle)"))?;
        Ok(self.stack.split_off(at))
    }

    fn push(&mut self, v: Value) {
        let m = Meta::leaf(&v);
        self.stack.push(Slot::new(v, m));
    }

    /// Pushes a container built from `items`, refusing nesting deeper than [`MAX_DEPTH`].
    fn push_container(
        &mut self,
        items: Vec<Slot>,
        make: fn(Vec<Value>) -> Value,
        pos: usize,
    ) -> Result<()> {
        let m = Meta::container(items.iter().map(|s| &s.m));
        self.check_depth(m, pos)?;
        let v = make(items.into_iter().map(|s| s.v).collect());
        self.stack.push(Slot::new(v, m));
        Ok(())
    }

    fn check_depth(&self, m: Meta, pos: usize) -> Result<()> {
        if m.depth > MAX_DEPTH {
            return Err(self.err(
                pos,
                format!(
                    "lists, tuples or dicts nested deeper than {MAX_DEPTH} levels; a tensor checkpoint \
                     never nests this deep, so the file is damaged or crafted"
                ),
            ));
        }
        Ok(())
    }

    /// Charges a memo copy of `weight` to the budget (see the module docs).
    fn charge(&mut self, weight: u64, pos: usize) -> Result<()> {
        self.copied = self.copied.saturating_add(weight);
        let budget =
            COPY_BUDGET_BASE.saturating_add(COPY_BUDGET_PER_BYTE.saturating_mul(pos as u64 + 1));
        if self.copied > budget {
            return Err(self.err(
                pos,
                format!(
                    "memo references would copy more than {budget} objects and bytes after {} pickle bytes \
                     (at most {COPY_BUDGET_PER_BYTE} per byte read, plus {COPY_BUDGET_BASE}); a tensor \
                     checkpoint never repeats this much, so the pickle is damaged or crafted (a \"billion laughs\")",
                    pos + 1
                ),
            ));
        }
        Ok(())
    }

    fn put(&mut self, k: u32, pos: usize) -> Result<()> {
        let m = match self.stack.last() {
            Some(top) => top.m,
            None => return Err(self.err(pos, "memo PUT on an empty stack")),
        };
        // Charged before the copy is made, so a refused copy costs nothing.
        self.charge(m.weight, pos)?;
        let v = self.stack.last().expect("checked above").v.clone();
        self.generation += 1;
        let generation = self.generation;
        self.memo.insert(
            k,
            MemoEntry {
                v,
                m,
                generation,
                got: false,
            },
        );
        if let Some(top) = self.stack.last_mut() {
            top.memo.push((k, generation));
        }
        Ok(())
    }

    fn get(&mut self, k: u32, pos: usize) -> Result<()> {
        let m = match self.memo.get(&k) {
            Some(e) => e.m,
            None => return Err(self.err(pos, format!("memo {k} missing"))),
        };
        self.charge(m.weight, pos)?;
        let e = self.memo.get_mut(&k).expect("checked above");
        e.got = true;
        let v = e.v.clone();
        self.stack.push(Slot {
            v,
            m,
            memo: Vec::new(),
            shared: true,
        });
        Ok(())
    }

    /// Adds `items` to the list (or `pairs` of the dict) on top of the stack and to its memo copies.
    fn extend_top(&mut self, items: Vec<Slot>, pos: usize, op: &str) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or_else(|| self.err(pos, format!("{op} on an empty stack")))?;
        let want_dict = op.starts_with("SETITEM");
        match (&top.v, want_dict) {
            (Value::List(_), false) | (Value::Dict(_), true) => {}
            (v, _) => return Err(self.err(pos, format!("{op} on a {}", kind(v)))),
        }
        if want_dict && items.len() % 2 != 0 {
            return Err(self.err(pos, format!("{op} with an odd item count")));
        }
        if top.shared {
            return Err(self.err(
                pos,
                format!("{op} on an object obtained through a memo reference (a shared object changed after use); refusing"),
            ));
        }
        let m = items.iter().fold(top.m, |acc, s| acc.with(&s.m));
        self.check_depth(m, pos)?;
        let added: u64 = items.iter().map(|s| s.m.weight).sum();
        for (k, generation) in top.memo.clone() {
            let live = self
                .memo
                .get(&k)
                .is_some_and(|e| e.generation == generation);
            if !live {
                continue;
            }
            if self.memo[&k].got {
                return Err(self.err(
                    pos,
                    format!("memo {k} is referenced before the object is complete (a self-referencing structure); refusing"),
                ));
            }
            self.charge(added, pos)?;
            let e = self.memo.get_mut(&k).expect("checked above");
            e.m = m;
            append(&mut e.v, items.iter().map(|s| s.v.clone()).collect());
        }
        let top = self.stack.last_mut().expect("checked above");
        top.m = m;
        append(&mut top.v, items.into_iter().map(|s| s.v).collect());
        Ok(())
    }

    /// Runs the pickle in `data` up to its STOP opcode and returns the value it leaves.
    pub fn run(&mut self, data: &[u8]) -> Result<Value> {
        let mut p = 0usize;
        macro_rules! take {
            ($n:expr) => {{
                let n: usize = $n;
                let s = p
                    .checked_add(n)
                    .and_then(|end| data.get(p..end))
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
            let byte = take!(1)[0];
            let Some(op) = Op::from_byte(byte) else {
                return Err(self.err(
                    at,
                    format!("unsupported pickle opcode 0x{byte:02x}; this file is not a plain tensor checkpoint"),
                ));
            };
            match op {
                Op::Proto => {
                    take!(1);
                } // PROTO
                Op::Frame => {
                    take!(8);
                } // FRAME
                Op::Stop => {
                    self.consumed = p;
                    return Ok(self.pop(at)?.v);
                }
                Op::Mark => self.marks.push(self.stack.len()),
                Op::None => self.push(Value::None),
                Op::NewTrue => self.push(Value::Bool(true)),
                Op::NewFalse => self.push(Value::Bool(false)),
                Op::BinInt1 => {
                    let v = take!(1)[0];
                    self.push(Value::Int(v.into()))
                }
                Op::BinInt2 => {
                    let b = take!(2);
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]).into()))
                }
                Op::BinInt => {
                    let v = i32::from_le_bytes(take!(4).try_into().unwrap());
                    self.push(Value::Int(v.into()))
                }
                Op::Long1 => {
                    // LONG1
                    let n = take!(1)[0] as usize;
                    let b = take!(n).to_vec();
                    self.push(long_from_bytes(b));
                }
                Op::Long4 => {
                    let n = u32le!() as usize;
                    let b = take!(n).to_vec();
                    self.push(long_from_bytes(b));
                }
                Op::BinFloat => {
                    let v = f64::from_be_bytes(take!(8).try_into().unwrap());
                    self.push(Value::Float(v))
                }
                Op::BinUnicode => {
                    let n = u32le!() as usize;
                    let s = self.utf8(take!(n), at)?;
                    self.push(Value::Str(s))
                }
                Op::ShortBinUnicode => {
                    let n = take!(1)[0] as usize;
                    let s = self.utf8(take!(n), at)?;
                    self.push(Value::Str(s))
                }
                Op::BinUnicode8 => {
                    let n = u64::from_le_bytes(take!(8).try_into().unwrap());
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    let s = self.utf8(take!(n), at)?;
                    self.push(Value::Str(s))
                }
                Op::ShortBinString => {
                    let n = take!(1)[0] as usize;
                    let s = String::from_utf8_lossy(take!(n)).into_owned();
                    self.push(Value::Str(s))
                }
                Op::BinString => {
                    let n = u32le!() as usize;
                    let s = String::from_utf8_lossy(take!(n)).into_owned();
                    self.push(Value::Str(s))
                }
                Op::ShortBinBytes => {
                    let n = take!(1)[0] as usize;
                    let b = take!(n).to_vec();
                    self.push(Value::Bytes(b))
                }
                Op::BinBytes => {
                    let n = u32le!() as usize;
                    let b = take!(n).to_vec();
                    self.push(Value::Bytes(b))
                }
                Op::EmptyTuple => self.push_container(Vec::new(), Value::Tuple, at)?,
                Op::EmptyList => self.push_container(Vec::new(), Value::List, at)?,
                Op::EmptyDict => {
                    self.push_container(Vec::new(), |_| Value::Dict(Vec::new()), at)?
                }
                Op::Tuple => {
                    let items = self.pop_mark(at)?;
                    self.push_container(items, Value::Tuple, at)?
                }
                Op::List => {
                    let items = self.pop_mark(at)?;
                    self.push_container(items, Value::List, at)?
                }
                Op::Tuple1 | Op::Tuple2 | Op::Tuple3 => {
                    let items = self.pop_n(usize::from(op.byte() - Op::Tuple1.byte()) + 1, at)?;
                    self.push_container(items, Value::Tuple, at)?
                }
                Op::BinPut => {
                    let k = take!(1)[0] as u32;
                    self.put(k, at)?
                }
                Op::LongBinPut => {
                    let k = u32le!();
                    self.put(k, at)?
                }
                Op::Memoize => {
                    let k = self.memo.len() as u32;
                    self.put(k, at)?
                }
                Op::BinGet => {
                    let k = take!(1)[0] as u32;
                    self.get(k, at)?
                }
                Op::LongBinGet => {
                    let k = u32le!();
                    self.get(k, at)?
                }
                Op::Append => {
                    let v = self.pop(at)?;
                    self.extend_top(vec![v], at, "APPEND")?
                }
                Op::Appends => {
                    let items = self.pop_mark(at)?;
                    self.extend_top(items, at, "APPENDS")?
                }
                Op::SetItem => {
                    let kv = self.pop_n(2, at)?;
                    self.extend_top(kv, at, "SETITEM")?
                }
                Op::SetItems => {
                    let items = self.pop_mark(at)?;
                    self.extend_top(items, at, "SETITEMS")?
                }
                Op::Global => {
                    let rest = &data[p..];
                    let line = |r: &[u8]| memchr::memchr(b'\n', r);
                    let m_end = line(rest).ok_or_else(|| self.err(at, "unterminated GLOBAL"))?;
                    let module = String::from_utf8_lossy(&rest[..m_end]).into_owned();
                    let rest2 = &rest[m_end + 1..];
                    let n_end = line(rest2).ok_or_else(|| self.err(at, "unterminated GLOBAL"))?;
                    let name = String::from_utf8_lossy(&rest2[..n_end]).into_owned();
                    p += m_end + 1 + n_end + 1;
                    self.push_global(format!("{module}.{name}"), at)?;
                }
                Op::StackGlobal => {
                    let name = self.pop(at)?.v;
                    let module = self.pop(at)?.v;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push_global(format!("{m}.{n}"), at)?
                        }
                        _ => return Err(self.err(at, "STACK_GLOBAL with non-string operands")),
                    }
                }
                Op::BinPersId => {
                    let pid = self.pop(at)?.v;
                    let v = self.persistent(pid, at)?;
                    self.push(v)
                }
                // REDUCE, and NEWOBJ: cls.__new__(cls, *args) — both only for allowed globals.
                Op::Reduce | Op::NewObj => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?.v;
                    let m = args.m;
                    let v = self.reduce(func, args.v, at)?;
                    let m = match v {
                        Value::TensorRef(_) => Meta::leaf(&v),
                        _ => m,
                    };
                    self.stack.push(Slot::new(v, m))
                }
                Op::Build => {
                    // BUILD: state for the object below. Dicts (OrderedDict `_metadata`) and tensors
                    // (parameter attributes) carry nothing tagfix needs: drop the state.
                    self.pop(at)?;
                    if self.stack.is_empty() {
                        return Err(self.err(at, "BUILD on an empty stack"));
                    }
                }
            }
        }
    }

    fn utf8(&self, b: &[u8], at: usize) -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err(at, "invalid UTF-8 string"))
    }

    fn push_global(&mut self, name: String, at: usize) -> Result<()> {
        if !ALLOWED_GLOBALS.contains(&name.as_str()) {
            return Err(CheckpointError::RefusedGlobal {
                path: self.path.to_path_buf(),
                offset: at,
                global: name,
            });
        }
        self.push(Value::Global(name));
        Ok(())
    }

    /// A storage from its persistent id `('storage', storage_type, key, location, numel[, view_metadata])`,
    /// recorded in [`Unpickler::storages`]; a key declared twice must keep its element type.
    fn persistent(&mut self, pid: Value, at: usize) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            return Err(self.err(at, "persistent id is not a tuple"));
        };
        let [Value::Str(tag), Value::Global(ty), key, _location, numel, rest @ ..] =
            items.as_slice()
        else {
            return Err(self.err(at, "unsupported persistent id (not a tensor storage)"));
        };
        if tag != "storage" {
            return Err(self.err(at, "unsupported persistent id (not a tensor storage)"));
        }
        if rest.iter().any(|v| *v != Value::None) {
            return Err(self.err(
                at,
                "storage views (legacy view metadata) are not supported; re-save the checkpoint with a current torch.save",
            ));
        }
        let dtype =
            storage_dtype(ty).ok_or_else(|| self.err(at, format!("unknown storage type {ty}")))?;
        let key = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return Err(self.err(at, "storage key is not a string")),
        };
        let numel = match numel {
            Value::Int(n) => usize::try_from(*n).map_err(|_| {
                self.err(
                    at,
                    format!("storage {key} declares a negative element count {n}"),
                )
            })?,
            _ => return Err(self.err(at, format!("storage {key}: element count is not an int"))),
        };
        // torch.save names one storage object by one key, so its type cannot vary (torch.save itself
        // refuses two dtypes over one storage). Element counts only bound the views, which are checked
        // against the storage's real bytes: keep the largest declared.
        let decl = self
            .storages
            .entry(key.clone())
            .or_insert(StorageDecl { dtype, numel });
        if decl.dtype != dtype {
            let first = decl.dtype;
            return Err(self.err(
                at,
                format!("storage {key} is declared as {first} and as {dtype}; the file is damaged"),
            ));
        }
        decl.numel = decl.numel.max(numel);
        Ok(Value::Storage { key, dtype })
    }

    fn reduce(&self, func: Value, args: Value, at: usize) -> Result<Value> {
        let Value::Global(name) = func else {
            return Err(self.err(at, format!("REDUCE of a {}", kind(&func))));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(at, "REDUCE arguments are not a tuple"));
        };
        match name.as_str() {
            "collections.OrderedDict" => self.ordered_dict(args, at),
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                self.rebuild_tensor(args, at)
            }
            "torch._utils._rebuild_parameter" => match args.into_iter().next() {
                Some(t @ Value::TensorRef(_)) => Ok(t),
                _ => Err(self.err(at, "_rebuild_parameter without a tensor")),
            },
            other => Err(self.err(at, format!("`{other}` cannot be called"))),
        }
    }

    fn ordered_dict(&self, args: Vec<Value>, at: usize) -> Result<Value> {
        let mut args = args.into_iter();
        match (args.next(), args.next()) {
            (None, _) => Ok(Value::Dict(vec![])),
            (Some(Value::List(pairs)), None) => pairs
                .into_iter()
                .map(|p| match p {
                    Value::Tuple(kv) if kv.len() == 2 => {
                        let mut kv = kv.into_iter();
                        Ok((kv.next().unwrap(), kv.next().unwrap()))
                    }
                    _ => Err(self.err(at, "OrderedDict item is not a (key, value) pair")),
                })
                .collect::<Result<_>>()
                .map(Value::Dict),
            _ => Err(self.err(at, "OrderedDict with unexpected arguments")),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`; the view is checked against its
    /// storage later, where the tensor's name is known.
    fn rebuild_tensor(&self, args: Vec<Value>, at: usize) -> Result<Value> {
        let [Value::Storage { key, dtype }, offset, Value::Tuple(size), Value::Tuple(stride), ..] =
            args.as_slice()
        else {
            return Err(self.err(
                at,
                "_rebuild_tensor with unexpected arguments (expected a storage, an offset, a size and a stride)",
            ));
        };
        let int = |v: &Value, what: &str| -> Result<i64> {
            match v {
                Value::Int(i) => Ok(*i),
                Value::BigInt(_) => {
                    Err(self.err(at, format!("tensor {what} does not fit in 64 bits")))
                }
                other => Err(self.err(
                    at,
                    format!("tensor {what} is a {}, not an int", kind(other)),
                )),
            }
        };
        let ints = |v: &[Value], what: &str| -> Result<Vec<i64>> {
            v.iter().map(|x| int(x, what)).collect()
        };
        Ok(Value::TensorRef(TensorRef {
            storage: key.clone(),
            dtype: *dtype,
            offset: int(offset, "storage offset")?,
            shape: ints(size, "size")?,
            stride: ints(stride, "stride")?,
        }))
    }
}

/// Appends `items` to a list, or `items` taken as key, value pairs to a dict.
fn append(target: &mut Value, items: Vec<Value>) {
    match target {
        Value::List(l) => l.extend(items),
        Value::Dict(d) => {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.push((k, v));
            }
        }
        _ => unreachable!("extend_top checks the target"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pickle: &[u8]) -> Result<Value> {
        Unpickler::new(Path::new("t.pth")).run(pickle)
    }

    fn err(pickle: &[u8]) -> String {
        run(pickle).unwrap_err().to_string()
    }

    #[test]
    fn nesting_is_limited_to_max_depth() {
        let depth = MAX_DEPTH as usize;
        // `depth` nested empty lists: ] ] ... ] then APPEND each into the one below.
        let nested = |n: usize| {
            let mut p = vec![b']'; n];
            p.extend(vec![b'a'; n - 1]);
            p.push(b'.');
            p
        };
        assert!(run(&nested(depth)).is_ok());
        assert!(err(&nested(depth + 1)).contains(&format!("nested deeper than {MAX_DEPTH}")));
        // Tuples through MARK ... TUPLE and TUPLE1, dicts through SETITEM.
        let mut tuples = vec![b')'];
        tuples.extend(vec![0x85; 200_000]);
        tuples.push(b'.');
        assert!(err(&tuples).contains("nested deeper than"));
        let mut dicts = vec![b'}'; 30_000];
        for _ in 0..29_999 {
            dicts.extend([b'K', 1, b's']);
        }
        dicts.splice(1..1, [b'K', 0]);
        assert!(err(&dicts).contains("nested deeper than"));
    }

    #[test]
    fn memo_copies_are_budgeted() {
        // Billion laughs: each level is a list of 10 references to the previous one.
        let mut p = vec![b']', b'q', 0];
        for level in 1..60u8 {
            p.extend([b'(']);
            for _ in 0..10 {
                p.extend([b'h', level - 1]);
            }
            p.extend([b'l', b'q', level]);
        }
        p.push(b'.');
        assert!(err(&p).contains("billion laughs"), "{}", err(&p));
    }

    #[test]
    fn memoised_containers_see_later_items() {
        // d = {}; PUT 0; d["a"] = 1; then [d, GET 0] — both copies hold "a".
        let p = [
            b'(', b'}', b'q', 0, 0x8c, 1, b'a', b'K', 1, b's', b'h', 0, b'l', b'.',
        ];
        let a = Value::Dict(vec![(Value::Str("a".into()), Value::Int(1))]);
        assert_eq!(run(&p).unwrap(), Value::List(vec![a.clone(), a]));
    }

    #[test]
    fn self_references_and_shared_mutation_are_refused() {
        // l = []; l.append(l)
        let p = [b']', b'q', 0, b'h', 0, b'a', b'.'];
        assert!(err(&p).contains("self-referencing"), "{}", err(&p));
        // GET a complete list, then append to it.
        let p = [b']', b'q', 0, b'h', 0, b'K', 1, b'a', b'.'];
        assert!(err(&p).contains("memo reference"), "{}", err(&p));
    }

    #[test]
    fn hostile_lengths_are_clear_errors() {
        // BINUNICODE8 with a length near u64::MAX, LONG4 past the end, a negative storage size.
        let mut p = vec![0x8d];
        p.extend(u64::MAX.to_le_bytes());
        assert!(err(&p).contains("unexpected end of data"));
        assert!(err(&[0x8b, 0xff, 0xff, 0xff, 0xff]).contains("unexpected end of data"));
        let mut pid = vec![b'(', 0x8c, 7];
        pid.extend(b"storage");
        pid.extend(b"ctorch\nFloatStorage\n");
        pid.extend([0x8c, 1, b'0', 0x8c, 3, b'c', b'p', b'u', b'J']);
        pid.extend((-5i32).to_le_bytes());
        pid.extend([b't', b'Q', b'.']);
        assert!(
            err(&pid).contains("negative element count -5"),
            "{}",
            err(&pid)
        );
    }
}
