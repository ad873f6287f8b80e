//! safetensors reading and writing (the `safetensors` crate), metadata included.

use super::{DType, Tensor, TensorError, TensorSet};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype as StDtype, SafeTensors};
use std::io::{Read, Seek, SeekFrom, Write};
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
    let bytes = crate::fsutil::read(path).map_err(|e| Error::io(path, e))?;
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

/// Writes tensors and metadata atomically, streamed: the header first (laid out as the safetensors
/// crate lays it out: data ordered by descending dtype alignment, then by name), then each tensor's
/// bytes, with no copy of the tensors in memory. Tensor names must be unique (the format maps names
/// to tensors).
pub fn write(path: &Path, set: &TensorSet) -> Result<()> {
    for (n, t) in &set.tensors {
        // Only checks the shape against the bytes (no copy).
        safetensors::tensor::TensorView::new(to_st(t.dtype), t.shape.clone(), &t.data).map_err(
            |source| TensorError::SafetensorsView {
                name: n.clone(),
                source,
            },
        )?;
    }
    let streamed = set
        .tensors
        .iter()
        .map(|(name, t)| StreamedTensor {
            name: name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            write: Box::new(move |w: &mut dyn Write| w.write_all(&t.data)),
        })
        .collect();
    write_streamed(path, streamed, &set.metadata)
}

/// Fills one [`StreamedTensor`]'s bytes into the file being written.
pub type WriteBytes<'a> = Box<dyn FnMut(&mut dyn Write) -> std::io::Result<()> + 'a>;

/// A tensor whose bytes a callback writes straight into the file, so that a large tensor computed
/// piece by piece (a teacher file's rows) never needs to be in memory whole. The callback must write
/// exactly the bytes `dtype` and `shape` call for, little-endian.
pub struct StreamedTensor<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub write: WriteBytes<'a>,
}

/// [`write`] for [`StreamedTensor`]s: the header is laid out from the shapes before any byte is
/// written, then each callback fills its tensor in data order. A callback that fails or writes the
/// wrong number of bytes leaves no output (the file is written atomically).
pub fn write_streamed(
    path: &Path,
    tensors: Vec<StreamedTensor<'_>>,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    write_laid_out(path, tensors, metadata, None)
}

/// [`write_streamed`], returning the SHA-256 digest (lowercase hex) of the file's bytes, hashed as
/// they are written: a checkpoint's `SHA256SUMS` without reading its gigabytes back.
pub fn write_streamed_sha256(
    path: &Path,
    tensors: Vec<StreamedTensor<'_>>,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    write_laid_out(path, tensors, metadata, Some(&mut hasher))?;
    Ok(hex::encode(hasher.finalize()))
}

/// [`write_streamed`]'s body; each byte written also goes into `hasher` where one is given.
fn write_laid_out(
    path: &Path,
    mut tensors: Vec<StreamedTensor<'_>>,
    metadata: &std::collections::BTreeMap<String, String>,
    hasher: Option<&mut sha2::Sha256>,
) -> Result<()> {
    let mut names = std::collections::HashSet::with_capacity(tensors.len());
    if let Some(t) = tensors.iter().find(|t| !names.insert(t.name.clone())) {
        return Err(TensorError::DuplicateName {
            path: path.into(),
            name: t.name.clone(),
        }
        .into());
    }
    tensors.sort_by(|l, r| {
        to_st(r.dtype)
            .cmp(&to_st(l.dtype))
            .then(l.name.cmp(&r.name))
    });
    let serializing = |source| TensorError::SafetensorsWrite {
        path: path.into(),
        source,
    };
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for t in &tensors {
        let bytes = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| serializing(safetensors::SafeTensorError::ValidationOverflow))?;
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| serializing(safetensors::SafeTensorError::ValidationOverflow))?;
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: to_st(t.dtype),
                shape: t.shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    // The crate checks the offsets; the header itself is ours, for its metadata order.
    Metadata::new(None, infos.clone()).map_err(serializing)?;
    let header = Header {
        metadata,
        tensors: &infos,
    };
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| serializing(safetensors::SafeTensorError::JsonError(e)))?;
    // The data starts 8-byte aligned, as the crate's serializer pads it.
    header.resize(header.len().next_multiple_of(HEADER_LEN), b' ');
    if header.len() > MAX_HEADER_BYTES {
        // Readers (the safetensors crate, and so Python's `safe_open`) refuse such a header.
        return Err(serializing(safetensors::SafeTensorError::HeaderTooLarge).into());
    }
    write_atomic(path, |w| {
        let mut hashing;
        let w: &mut dyn Write = match hasher {
            Some(hasher) => {
                hashing = HashingWriter { inner: w, hasher };
                &mut hashing
            }
            None => w,
        };
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (t, (_, info)) in tensors.iter_mut().zip(&infos) {
            let mut counted = CountingWriter {
                inner: &mut *w,
                n: 0,
            };
            (t.write)(&mut counted)?;
            let expected = info.data_offsets.1 - info.data_offsets.0;
            if counted.n != expected {
                return Err(std::io::Error::other(format!(
                    "tensor `{}`: {} bytes written, {expected} expected",
                    t.name, counted.n
                )));
            }
        }
        Ok(())
    })
}

/// The largest header the safetensors crate reads (its `MAX_HEADER_SIZE`).
pub const MAX_HEADER_BYTES: usize = 100_000_000;

/// Counts the bytes a [`StreamedTensor`]'s callback writes.
struct CountingWriter<'w> {
    inner: &'w mut dyn Write,
    n: usize,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Passes bytes on to `inner`, hashing those it took.
struct HashingWriter<'w> {
    inner: &'w mut dyn Write,
    hasher: &'w mut sha2::Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(self.hasher, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A safetensors file opened for reading its tensors in pieces, on demand: the header is read and
/// checked (offsets, sizes, names, against the file's length), the data stays on disk and is read
/// with positioned reads, which any number of threads may do at once. For files too large to hold
/// in memory (a teacher file for millions of images); a rank of a distributed run then shares the
/// operating system's page cache with the others instead of holding its own copy.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// File offset of the data section.
    data_start: u64,
    header: Metadata,
}

impl SafetensorsFile {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| Error::io(path, e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let invalid = |source| TensorError::Safetensors {
            path: path.into(),
            source,
        };
        if len < HEADER_LEN as u64 {
            return Err(invalid(safetensors::SafeTensorError::HeaderTooSmall).into());
        }
        let mut n = [0u8; HEADER_LEN];
        file.read_exact(&mut n).map_err(io)?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES as u64 {
            return Err(invalid(safetensors::SafeTensorError::HeaderTooLarge).into());
        }
        if n > len - HEADER_LEN as u64 {
            return Err(invalid(safetensors::SafeTensorError::InvalidHeaderLength).into());
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        check_unique_names(path, &header)?;
        let header: Metadata =
            serde_json::from_slice(&header).map_err(|source| TensorError::SafetensorsHeader {
                path: path.into(),
                source,
            })?;
        let data_start = HEADER_LEN as u64 + n;
        if header.data_len() as u64 != len - data_start {
            return Err(invalid(safetensors::SafeTensorError::MetadataIncompleteBuffer).into());
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            data_start,
            header,
        })
    }

    /// The file's `__metadata__`.
    pub fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        self.header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// The dtype and shape of tensor `name`, if the file has it (`Err` for a dtype tagfix does not
    /// read).
    pub fn info(&self, name: &str) -> Result<Option<(DType, Vec<usize>)>> {
        let Some(info) = self.header.info(name) else {
            return Ok(None);
        };
        let dtype = from_st(info.dtype).ok_or_else(|| TensorError::SafetensorsDtype {
            path: self.path.clone(),
            name: name.into(),
            dtype: format!("{:?}", info.dtype),
        })?;
        Ok(Some((dtype, info.shape.clone())))
    }

    /// Fills `buf` from tensor `name`'s bytes starting at byte `at` of that tensor; `false` when the
    /// file has no such tensor or the range lies outside it.
    pub fn read_at(&self, name: &str, at: usize, buf: &mut [u8]) -> Result<bool> {
        let Some(info) = self.header.info(name) else {
            return Ok(false);
        };
        let (begin, end) = info.data_offsets;
        let start = begin.checked_add(at);
        match (start, start.and_then(|s| s.checked_add(buf.len()))) {
            (Some(start), Some(stop)) if stop <= end => {
                positioned_read(&self.file, buf, self.data_start + start as u64)
                    .map_err(|e| Error::io(&self.path, e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The names of its tensors, in data order.
    pub fn names(&self) -> Vec<String> {
        self.header.offset_keys()
    }

    /// Tensor `name` whole (memory reserved fallibly), or `None`.
    pub fn read_tensor(&self, name: &str) -> Result<Option<Tensor>> {
        let Some((dtype, shape)) = self.info(name)? else {
            return Ok(None);
        };
        let (begin, end) = self.header.info(name).expect("listed").data_offsets;
        let mut data = Vec::new();
        data.try_reserve_exact(end - begin)
            .map_err(|_| Error::io(&self.path, std::io::ErrorKind::OutOfMemory.into()))?;
        data.resize(end - begin, 0);
        self.read_at(name, 0, &mut data)?;
        Ok(Some(Tensor::new(dtype, shape, data)?))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `pread`: reads `buf.len()` bytes at `offset` without moving a shared cursor.
#[cfg(unix)]
fn positioned_read(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn positioned_read(
    file: &std::fs::File,
    mut buf: &mut [u8],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// A header laid out as the crate's `Metadata` lays it out (`__metadata__`, then the tensors in data
/// order) but with the metadata in key order: the crate keeps it in a `HashMap`, whose order changes
/// from run to run, so the same tensors and metadata gave files with different bytes and hashes.
struct Header<'a> {
    metadata: &'a std::collections::BTreeMap<String, String>,
    tensors: &'a [(String, TensorInfo)],
}

impl serde::Serialize for Header<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry("__metadata__", self.metadata)?;
        for (name, info) in self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// True when the safetensors file at `path` holds exactly the tensors of `set` (names, dtypes,
/// shapes and bytes; metadata aside). Reads the file a bounded chunk at a time, so checking a written
/// file costs no second copy of it in memory.
pub fn holds(path: &Path, set: &TensorSet) -> Result<bool> {
    let io = |e| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; HEADER_LEN];
    file.read_exact(&mut len).map_err(io)?;
    let n = usize::try_from(u64::from_le_bytes(len)).unwrap_or(usize::MAX);
    let file_len = file.metadata().map_err(io)?.len();
    if n as u64 > file_len {
        return Ok(false);
    }
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).map_err(io)?;
    check_unique_names(path, &header)?;
    let Ok(meta) = serde_json::from_slice::<Metadata>(&header) else {
        return Ok(false);
    };
    let start = (HEADER_LEN + n) as u64;
    if meta.tensors().len() != set.tensors.len() {
        return Ok(false);
    }
    let mut buf = vec![0u8; 1 << 20];
    for (name, t) in &set.tensors {
        let Some(info) = meta.info(name) else {
            return Ok(false);
        };
        let (begin, end) = info.data_offsets;
        if from_st(info.dtype) != Some(t.dtype)
            || info.shape != t.shape
            || end - begin != t.data.len()
        {
            return Ok(false);
        }
        if start + end as u64 > file_len {
            return Ok(false);
        }
        file.seek(SeekFrom::Start(start + begin as u64))
            .map_err(io)?;
        for chunk in t.data.chunks(buf.len()) {
            let got = &mut buf[..chunk.len()];
            file.read_exact(got).map_err(io)?;
            if got != chunk {
                return Ok(false);
            }
        }
    }
    Ok(true)
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
        assert!(holds(&p, &set).unwrap());
        // The crate's own serializer lays the file out byte for byte the same (metadata aside,
        // which the crate writes in its hash map's order and `write` in key order).
        let mut plain = set.clone();
        plain.metadata.clear();
        write(&p, &plain).unwrap();
        let views = plain.tensors.iter().map(|(n, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(to_st(t.dtype), t.shape.clone(), &t.data)
                    .unwrap(),
            )
        });
        let want = safetensors::serialize(views, Some(Default::default())).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
        let mut changed = set.clone();
        changed.tensors[1].1.data[0] ^= 1;
        assert!(!holds(&p, &changed).unwrap());
        changed.tensors.pop();
        assert!(!holds(&p, &changed).unwrap());
    }

    #[test]
    fn the_digest_of_a_streamed_write_is_the_written_files() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, hashed) = (dir.path().join("a"), dir.path().join("b"));
        let tensors = || {
            ["w", "bias"]
                .into_iter()
                .enumerate()
                .map(|(i, name)| StreamedTensor {
                    name: name.into(),
                    dtype: DType::F32,
                    shape: vec![3],
                    write: Box::new(move |w: &mut dyn Write| {
                        (0..3).try_for_each(|k| w.write_all(&((i * 3 + k) as f32).to_le_bytes()))
                    }),
                })
                .collect()
        };
        let metadata = Default::default();
        write_streamed(&plain, tensors(), &metadata).unwrap();
        let digest = write_streamed_sha256(&hashed, tensors(), &metadata).unwrap();
        assert_eq!(
            std::fs::read(&plain).unwrap(),
            std::fs::read(&hashed).unwrap()
        );
        assert_eq!(digest, crate::fsutil::sha256_file(&hashed).unwrap());
    }

    #[test]
    fn the_same_set_gives_the_same_bytes_with_metadata_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = TensorSet::default();
        set.tensors
            .push(("t".into(), Tensor::from_f32(vec![1], &[1.0]).unwrap()));
        for k in [
            "zeta",
            "alpha",
            "mid",
            "beta",
            "omega",
            "tagfix.keys",
            "tagfix.schema",
        ] {
            set.metadata.insert(k.into(), format!("value of {k}"));
        }
        // Each write builds its own hash map in the crate's way: 20 writes met several orders.
        let bytes: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                let p = dir.path().join(format!("{i}.safetensors"));
                write(&p, &set).unwrap();
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        let header = String::from_utf8_lossy(&bytes[0][8..]).into_owned();
        let at = |k: &str| header.find(&format!("\"{k}\"")).unwrap();
        assert!(at("alpha") < at("beta") && at("beta") < at("mid") && at("omega") < at("zeta"));
        assert!(at("__metadata__") < at("alpha") && at("zeta") < at("t"));
        assert_eq!(read(&dir.path().join("0.safetensors")).unwrap(), set);
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

    /// A header no reader accepts (over 100 MB: the safetensors crate's limit) is refused when
    /// writing, and refused cleanly when reading.
    #[test]
    fn headers_over_the_readers_limit_are_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.safetensors");
        let mut set = TensorSet::default();
        set.tensors
            .push(("t".into(), Tensor::from_f32(vec![1], &[1.0]).unwrap()));
        set.metadata
            .insert("keys".into(), "k".repeat(MAX_HEADER_BYTES));
        let err = write(&p, &set).unwrap_err();
        assert!(format!("{err:#}").contains("serializing"), "{err:#}");
        assert!(!p.exists());
        // A file claiming such a header.
        let mut bytes = ((MAX_HEADER_BYTES + 8) as u64).to_le_bytes().to_vec();
        bytes.extend(b"{}");
        std::fs::write(&p, &bytes).unwrap();
        assert!(SafetensorsFile::open(&p).is_err());
    }

    /// The on-demand reader sees what `read` sees, and refuses ranges outside a tensor.
    #[test]
    fn safetensors_file_reads_pieces_of_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let mut set = TensorSet::default();
        set.tensors.push((
            "a".into(),
            Tensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap(),
        ));
        set.tensors.push((
            "b".into(),
            Tensor::new(DType::U8, vec![3], vec![7, 8, 9]).unwrap(),
        ));
        set.metadata.insert("m".into(), "v".into());
        write(&p, &set).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.metadata()["m"], "v");
        assert_eq!(f.info("a").unwrap(), Some((DType::F32, vec![2, 2])));
        let mut four = [0u8; 4];
        assert!(f.read_at("a", 8, &mut four).unwrap());
        assert_eq!(f32::from_le_bytes(four), 3.0);
        assert!(!f.read_at("a", 13, &mut four).unwrap(), "past the end");
        assert!(!f.read_at("a", usize::MAX, &mut four).unwrap(), "overflow");
        assert!(!f.read_at("c", 0, &mut four).unwrap(), "no such tensor");
        assert_eq!(f.read_tensor("b").unwrap().unwrap().data, vec![7, 8, 9]);
        // A file whose data is shorter than its header says is refused on opening.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(SafetensorsFile::open(&p).is_err());
    }
}
