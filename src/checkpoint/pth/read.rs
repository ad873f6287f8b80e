//! Reading `torch.save` files: the zip format pickle first, then one storage entry at a time; the
//! legacy format from one buffer (see the module docs of [`super`]).

use super::view::materialise;
use super::{Checkpoint, Container, TensorRef, Value};
use crate::checkpoint::error::{CheckpointError, Result, StructureProblem};
use crate::checkpoint::pickle::{kind, StorageDecl, Unpickler};
use crate::tensors::Tensor;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Reads a `torch.save` file.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let mut file = File::open(path).map_err(|e| CheckpointError::io(path, "cannot open", e))?;
    let mut magic = Vec::with_capacity(4);
    (&mut file)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?;
    if magic.starts_with(b"PK\x03\x04") {
        read_zip(path, file)
    } else if magic.first() == Some(&0x80) {
        let bytes =
            crate::fsutil::read(path).map_err(|e| CheckpointError::io(path, "cannot read", e))?;
        read_legacy(path, &bytes)
    } else if magic.is_empty() {
        Err(CheckpointError::structure(path, StructureProblem::Empty))
    } else {
        Err(CheckpointError::structure(
            path,
            StructureProblem::NotACheckpoint,
        ))
    }
}

type Zip = zip::ZipArchive<BufReader<File>>;

fn read_zip(path: &Path, file: File) -> Result<Checkpoint> {
    // Bounds what an entry's claimed size may preallocate: no entry holds more than the file.
    let file_len = file
        .metadata()
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?
        .len();
    let mut zip =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|source| CheckpointError::Archive {
            path: path.to_path_buf(),
            source,
        })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| CheckpointError::structure(path, StructureProblem::NoDataPkl))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pickle = read_entry(path, &mut zip, &pkl_name, None, 0)?;
    let mut unpickler = Unpickler::new(path);
    let layout = layout(path, unpickler.run(&pickle)?)?;
    drop(pickle);
    let decls = unpickler.storages;
    layout.materialise(path, |key| {
        let len = declared_len(key, &decls)?;
        let entry = format!("{prefix}data/{key}");
        let data = read_entry(path, &mut zip, &entry, len, file_len)?;
        Ok(Cow::Owned(check_length(path, key, &decls[key], len, data)?))
    })
}

/// Reads the archive entry `name`: the first `want` bytes when given (the entry may be longer), the
/// whole entry otherwise. The sizes the archive claims are not trusted: the buffer grows as bytes
/// arrive, preallocated only up to what the file itself could hold.
fn read_entry(
    path: &Path,
    zip: &mut Zip,
    name: &str,
    want: Option<usize>,
    file_len: u64,
) -> Result<Vec<u8>> {
    let entry_err = |problem, source| CheckpointError::Entry {
        path: path.to_path_buf(),
        entry: name.to_string(),
        problem,
        source,
    };
    let f = zip
        .by_name(name)
        .map_err(|e| entry_err("missing or unreadable", std::io::Error::other(e)))?;
    let mut out = Vec::new();
    let read = match want {
        Some(want) => {
            let hint = (want as u64).min(f.size()).min(file_len);
            out.try_reserve_exact(hint as usize).map_err(|_| {
                entry_err("cannot allocate", std::io::ErrorKind::OutOfMemory.into())
            })?;
            f.take(want as u64).read_to_end(&mut out)
        }
        None => {
            let mut f = f;
            f.read_to_end(&mut out)
        }
    };
    read.map_err(|e| entry_err("cannot be read to its end (truncated file?)", e))?;
    Ok(out)
}

/// Bytes the pickle declares for storage `key` (`None` when the count overflows).
fn declared_len(
    key: &str,
    decls: &HashMap<String, StorageDecl>,
) -> std::result::Result<Option<usize>, StructureProblem> {
    let decl = decls
        .get(key)
        .ok_or_else(|| StructureProblem::Undeclared { key: key.into() })?;
    Ok(decl.numel.checked_mul(decl.dtype.size()))
}

/// `data` cut to the length the pickle declares, or an error when it holds fewer bytes.
fn check_length(
    path: &Path,
    key: &str,
    decl: &StorageDecl,
    len: Option<usize>,
    mut data: Vec<u8>,
) -> Result<Vec<u8>> {
    match len {
        Some(len) if len <= data.len() => {
            data.truncate(len);
            Ok(data)
        }
        _ => Err(CheckpointError::structure(
            path,
            StructureProblem::StorageShort {
                key: key.into(),
                bytes: data.len(),
                numel: decl.numel,
                dtype: decl.dtype,
            },
        )),
    }
}

/// The legacy magic number, `0x1950a86a20f9469cfc6c` as a pickled long.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let bad = |problem: StructureProblem| CheckpointError::structure(path, problem);
    let mut pos = 0;
    let next = |pos: &mut usize| -> Result<(Value, HashMap<String, StorageDecl>)> {
        let mut up = Unpickler::new(path);
        let v = up.run(&bytes[*pos..])?;
        *pos += up.consumed;
        Ok((v, up.storages))
    };
    if next(&mut pos)?.0 != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(bad(StructureProblem::NoLegacyMagic));
    }
    let _protocol = next(&mut pos)?;
    let _sys_info = next(&mut pos)?;
    let (root, decls) = next(&mut pos)?;
    let Value::List(keys) = next(&mut pos)?.0 else {
        return Err(bad(StructureProblem::NoStorageKeys));
    };
    // Storages follow in key order: an 8-byte element count, then the raw little-endian data.
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for k in keys {
        let Value::Str(key) = k else {
            return Err(bad(StructureProblem::StorageKeyNotString));
        };
        let decl = decls
            .get(&key)
            .ok_or_else(|| bad(StructureProblem::ListedUndeclared { key: key.clone() }))?;
        let (data, end) = legacy_storage(bytes, pos, &key, decl).map_err(bad)?;
        if storages.contains_key(&key) {
            return Err(bad(StructureProblem::ListedTwice { key }));
        }
        storages.insert(key, data);
        pos = end;
    }
    let mut checkpoint = layout(path, root)?.materialise(path, |key| {
        declared_len(key, &decls)?;
        let data = storages
            .get(key)
            .ok_or_else(|| StructureProblem::StorageMissing { key: key.into() })?;
        Ok(Cow::Borrowed(*data))
    })?;
    checkpoint.legacy = true;
    Ok(checkpoint)
}

/// The data of the legacy storage `key` whose header starts at `pos`, and where it ends.
fn legacy_storage<'b>(
    bytes: &'b [u8],
    pos: usize,
    key: &str,
    decl: &StorageDecl,
) -> std::result::Result<(&'b [u8], usize), StructureProblem> {
    let truncated = || StructureProblem::LegacyTruncated { key: key.into() };
    let start = pos.checked_add(8).ok_or_else(truncated)?;
    let header = bytes.get(pos..start).ok_or_else(truncated)?;
    let numel = u64::from_le_bytes(header.try_into().expect("8 bytes"));
    if numel != decl.numel as u64 {
        return Err(StructureProblem::LegacyCount {
            key: key.into(),
            found: numel,
            declared: decl.numel,
        });
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
    let bad = |problem: StructureProblem| CheckpointError::structure(path, problem);
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
            return Err(bad(StructureProblem::TopLevel {
                found: kind(&other),
            }))
        }
    };
    check_unique_keys(path, &entries, "state-dict")?;
    let mut tensors = Vec::new();
    for (k, v) in entries {
        let name = match k {
            Value::Str(s) => s,
            other => {
                return Err(bad(StructureProblem::KeyNotString {
                    found: kind(&other),
                }))
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
fn check_unique_keys(path: &Path, entries: &[(Value, Value)], what: &'static str) -> Result<()> {
    let mut seen = HashSet::with_capacity(entries.len());
    for (k, _) in entries {
        if let Value::Str(s) = k {
            if !seen.insert(s.as_str()) {
                return Err(CheckpointError::structure(
                    path,
                    StructureProblem::RepeatedKey {
                        dict: what,
                        key: s.clone(),
                    },
                ));
            }
        }
    }
    Ok(())
}

impl Layout {
    /// The tensors' indices grouped by the storage they view, storages in first-use order.
    fn by_storage(&self) -> Vec<(&str, Vec<usize>)> {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, (_, t)) in self.tensors.iter().enumerate() {
            let g = *index.entry(t.storage.as_str()).or_insert_with(|| {
                groups.push((t.storage.as_str(), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        groups
    }

    /// Copies every tensor out of its storage, one storage at a time: `storage(key)` gives a storage's
    /// bytes, exactly as long as the pickle declares it, or why it cannot.
    fn materialise<'s>(
        self,
        path: &Path,
        mut storage: impl FnMut(&str) -> Result<Cow<'s, [u8]>, StorageFailure>,
    ) -> Result<Checkpoint> {
        let mut expanded = 0usize;
        let mut out: Vec<Option<Tensor>> = vec![None; self.tensors.len()];
        for (key, members) in self.by_storage() {
            let data = storage(key).map_err(|f| f.into_error(path))?;
            let views: Vec<&TensorRef> = members.iter().map(|&i| &self.tensors[i].1).collect();
            let tensors =
                materialise(data.into_owned(), &views, &mut expanded).map_err(|(i, m)| {
                    CheckpointError::Tensor {
                        path: path.to_path_buf(),
                        name: self.tensors[members[i]].0.clone(),
                        message: m,
                    }
                })?;
            for (i, t) in members.into_iter().zip(tensors) {
                out[i] = Some(t);
            }
        }
        let tensors = self
            .tensors
            .into_iter()
            .zip(out)
            .map(|((name, _), t)| (name, t.expect("every tensor belongs to one storage")))
            .collect();
        Ok(Checkpoint {
            tensors,
            container: self.container,
            extras: self.extras,
            legacy: false,
        })
    }
}

/// Why a storage's bytes could not be had: a complete error, or a problem of the file.
enum StorageFailure {
    Error(CheckpointError),
    Structure(StructureProblem),
}

impl StorageFailure {
    fn into_error(self, path: &Path) -> CheckpointError {
        match self {
            StorageFailure::Error(e) => e,
            StorageFailure::Structure(p) => CheckpointError::structure(path, p),
        }
    }
}

impl From<CheckpointError> for StorageFailure {
    fn from(e: CheckpointError) -> Self {
        StorageFailure::Error(e)
    }
}

impl From<StructureProblem> for StorageFailure {
    fn from(p: StructureProblem) -> Self {
        StorageFailure::Structure(p)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_state_dict_keys_are_refused() {
        let t = Value::TensorRef(TensorRef {
            storage: "0".into(),
            dtype: crate::tensors::DType::U8,
            offset: 0,
            shape: vec![1],
            stride: vec![1],
        });
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
