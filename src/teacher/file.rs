//! Precomputed teacher signals for distillation and alignment, keyed by record.
//!
//! Format (`docs/formats.md`, "Teacher features"): one safetensors file with
//! - `image_features` `[N, 512]` (f32/f16/bf16): CLIP image features of each record's image, the
//!   target of the distillation loss;
//! - `text_features` `[N, 512]`: CLIP text embeddings of one caption per record (L2-normalised
//!   rows; they are re-normalised as they are read), the alignment queries;
//! - `keys` u8 `[bytes]`: a JSON array of N strings in UTF-8, the records' `image_path` values in row
//!   order (in a tensor, not in the header's metadata: the safetensors crate, and so Python's
//!   `safe_open`, refuse a header over 100 MB, which the keys of ≈ 2.5M records already exceed);
//! - metadata `tagfix.schema = "tagfix.teacher/2"`;
//! - optionally `image_unreadable` u8 `[N]` (`tagfix teacher --unreadable-images skip`): 1 where the
//!   record's image could not be read, its `image_features` row zeros. Training treats such a
//!   record as an unreadable image.
//!
//! `tagfix.teacher/1` files (the keys in the metadata `tagfix.keys`) are still read. Optional
//! provenance metadata (`tagfix.teacher.*`, written by `tagfix teacher`) names the encoders and
//! preprocessing. File features are of the un-augmented image; the online teacher
//! ([`super::online`]) computes them on each augmented batch instead.
//!
//! The rows stay on disk: opening a file reads the keys and checks every value once, streamed, and a
//! row is read when a batch needs it. A 4M-record file is 16 GB (f32); held in memory, it took twice
//! that while loading, in every rank of a distributed run.

use super::keys::{each_json_string, EachStringError, KeyIndex, PushError};
use super::shard;
use super::TeacherError;
use crate::error::Result;
use crate::share::WorkShare;
use crate::tensors::safetensors_io::{self, SafetensorsFile, StreamedTensor};
use crate::tensors::DType;
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const TEACHER_SCHEMA: &str = "tagfix.teacher/2";
/// The first layout: the keys in the metadata `tagfix.keys` (read, no longer written).
pub const TEACHER_SCHEMA_V1: &str = "tagfix.teacher/1";
pub const IMAGE_FEATURES: &str = "image_features";
pub const TEXT_FEATURES: &str = "text_features";
/// The tensor that holds the keys (`tagfix.teacher/2`).
pub const KEYS: &str = "keys";
/// Width of CLIP's joint space.
pub const TEACHER_DIM: usize = 512;
/// The optional flags of rows whose image could not be read (u8 `[N]`, 1 = unreadable).
pub const IMAGE_UNREADABLE: &str = "image_unreadable";
/// Rows checked per read when a file is opened (4 MiB of f32).
const CHECK_ROWS: usize = 2048;

/// Teacher features, read row by row from their file, or from the shard files of a teacher set
/// ([`super::shard`]) as one file of all their rows in shard order.
#[derive(Debug, Clone)]
pub struct TeacherFeatures {
    /// The file, or the set's folder.
    pub path: PathBuf,
    /// The file's metadata (schema, provenance); a set's first shard's, without its shard number.
    pub metadata: BTreeMap<String, String>,
    /// The records' keys over all files, in row order.
    index: KeyIndex,
    /// The files, each holding the rows from its `first_row` on.
    parts: Vec<Part>,
}

/// One file of the features: its rows `first_row..first_row + rows`.
#[derive(Debug, Clone)]
struct Part {
    path: PathBuf,
    file: Arc<SafetensorsFile>,
    first_row: usize,
    rows: usize,
    /// The dtypes of `image_features` and `text_features`.
    image: DType,
    text: DType,
    /// Local rows whose image could not be read when the file was made (`image_unreadable`),
    /// ascending.
    unreadable: Vec<u32>,
}

impl Part {
    fn dtype(&self, name: &str) -> DType {
        if name == IMAGE_FEATURES {
            self.image
        } else {
            self.text
        }
    }

    /// Appends local rows `start..start + rows` of tensor `name` to `out`, as f32.
    fn append_rows(
        &self,
        name: &'static str,
        start: usize,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let dtype = self.dtype(name);
        let row_bytes = TEACHER_DIM * dtype.size();
        let mut bytes = vec![0u8; rows * row_bytes];
        if !self.file.read_at(name, start * row_bytes, &mut bytes)? {
            return Err(TeacherError::Row {
                path: self.path.clone(),
                name,
                row: self.first_row + start + rows.saturating_sub(1),
            }
            .into());
        }
        decode_f32(dtype, &bytes, out);
        Ok(())
    }

    /// Reads every value of `name` in the local rows `rows` once, blocks of rows on rayon's threads
    /// (decoding and checking 4 GB a million records is CPU work): the first non-finite value's
    /// local row, if any.
    fn first_non_finite(&self, name: &'static str, rows: Range<usize>) -> Result<Option<usize>> {
        let end = rows.end.min(self.rows);
        let starts: Vec<usize> = (rows.start..end).step_by(CHECK_ROWS).collect();
        starts
            .par_iter()
            .map(|&start| {
                let rows = CHECK_ROWS.min(end - start);
                let mut values = Vec::with_capacity(rows * TEACHER_DIM);
                self.append_rows(name, start, rows, &mut values)?;
                let bad = values.iter().position(|x| !x.is_finite());
                Ok(bad.map(|i| start + i / TEACHER_DIM))
            })
            .find_map_first(|block: Result<Option<usize>>| block.transpose())
            .transpose()
    }
}

impl TeacherFeatures {
    /// Opens and checks a teacher file, or the teacher set in folder `path`: schema, keys (unique),
    /// shapes, every value finite, and for a set that its shards are complete and made alike.
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_checking(path, WorkShare::WHOLE)
    }

    /// [`Self::read`] that checks the values of `share`'s rows only (a distributed run's ranks
    /// check one part each, so that every value is read once in the run); everything else is
    /// checked whole.
    pub fn read_checking(path: &Path, share: WorkShare) -> Result<Self> {
        if path.is_dir() {
            return Self::read_set(path, share);
        }
        let mut index = KeyIndex::default();
        let (part, metadata) = open_part(path, &mut index, &[], |_| Ok(()))?;
        Self::assemble(path, metadata, index, vec![part], share)
    }

    /// The shard files of the set in `dir` ([`super::shard::set_files`]), checked against the first.
    fn read_set(dir: &Path, share: WorkShare) -> Result<Self> {
        let files = shard::set_files(dir)?;
        let mut parts = Vec::with_capacity(files.len());
        let mut index = KeyIndex::default();
        let mut first_metadata = None;
        for (position, file) in files.iter().enumerate() {
            let (part, _) = open_part(file, &mut index, &parts, |metadata| {
                let first = first_metadata.get_or_insert_with(|| metadata.clone());
                shard::check_member(dir, file, position, files.len(), metadata, first)
            })?;
            parts.push(part);
        }
        let mut metadata = first_metadata.unwrap_or_default();
        shard::check_record_count(dir, &metadata, index.len())?;
        metadata.remove(shard::SHARD_KEY);
        Self::assemble(dir, metadata, index, parts, share)
    }

    /// The features of the opened parts, the values of `share`'s rows checked.
    fn assemble(
        path: &Path,
        metadata: BTreeMap<String, String>,
        index: KeyIndex,
        parts: Vec<Part>,
        share: WorkShare,
    ) -> Result<Self> {
        let t = TeacherFeatures {
            path: path.to_path_buf(),
            metadata,
            index,
            parts,
        };
        let rows = share.range(t.len());
        t.check_finite(IMAGE_FEATURES, &rows)?;
        t.check_finite(TEXT_FEATURES, &rows)?;
        Ok(t)
    }

    /// Names the first row of `rows` holding a non-finite value of `name`, with its file and key.
    fn check_finite(&self, name: &'static str, rows: &Range<usize>) -> Result<()> {
        for part in &self.parts {
            let first = rows.start.saturating_sub(part.first_row);
            let end = rows.end.saturating_sub(part.first_row).min(part.rows);
            if first >= end {
                continue;
            }
            if let Some(local) = part.first_non_finite(name, first..end)? {
                let row = part.first_row + local;
                return Err(TeacherError::NotFinite {
                    path: part.path.clone(),
                    name: name.into(),
                    row: local,
                    key: self.key_of(row).unwrap_or_default().to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// The part holding row `row`, and the row's place in it.
    fn part_of(&self, name: &'static str, row: usize) -> Result<(&Part, usize)> {
        let n = self.parts.partition_point(|p| p.first_row + p.rows <= row);
        match self.parts.get(n) {
            Some(part) => Ok((part, row - part.first_row)),
            None => Err(TeacherError::Row {
                path: self.path.clone(),
                name,
                row,
            }
            .into()),
        }
    }

    /// Whether record row `row`'s image could not be read when the file was made (its image
    /// features are zeros, not CLIP's).
    pub fn image_unreadable(&self, row: usize) -> bool {
        self.part_of(IMAGE_FEATURES, row)
            .is_ok_and(|(part, local)| {
                u32::try_from(local)
                    .is_ok_and(|local| part.unreadable.binary_search(&local).is_ok())
            })
    }

    /// Rows flagged by [`Self::image_unreadable`].
    pub fn unreadable_images(&self) -> usize {
        self.parts.iter().map(|p| p.unreadable.len()).sum()
    }

    /// Appends record row `row`'s image feature (512 values) to `out`.
    pub fn append_image_row(&self, row: usize, out: &mut Vec<f32>) -> Result<()> {
        let (part, local) = self.part_of(IMAGE_FEATURES, row)?;
        part.append_rows(IMAGE_FEATURES, local, 1, out)
    }

    /// Appends record row `row`'s caption embedding (512 values, L2-normalised) to `out`.
    pub fn append_text_row(&self, row: usize, out: &mut Vec<f32>) -> Result<()> {
        let at = out.len();
        let (part, local) = self.part_of(TEXT_FEATURES, row)?;
        part.append_rows(TEXT_FEATURES, local, 1, out)?;
        let v = &mut out[at..];
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            v.iter_mut().for_each(|x| *x /= n);
        }
        Ok(())
    }

    /// Record row `row`'s image feature.
    pub fn image_row(&self, row: usize) -> Result<Vec<f32>> {
        let mut v = Vec::with_capacity(TEACHER_DIM);
        self.append_image_row(row, &mut v)?;
        Ok(v)
    }

    /// Record row `row`'s caption embedding (L2-normalised).
    pub fn text_row(&self, row: usize) -> Result<Vec<f32>> {
        let mut v = Vec::with_capacity(TEACHER_DIM);
        self.append_text_row(row, &mut v)?;
        Ok(v)
    }

    /// Writes a teacher file (keys in row order) atomically.
    pub fn write(path: &Path, keys: &[String], image: &[f32], text: &[f32]) -> Result<()> {
        Self::write_with_metadata(path, keys, image, text, BTreeMap::new())
    }

    /// Writes a teacher file with extra metadata (provenance) atomically.
    pub fn write_with_metadata(
        path: &Path,
        keys: &[String],
        image: &[f32],
        text: &[f32],
        metadata: BTreeMap<String, String>,
    ) -> Result<()> {
        write_streamed(
            path,
            keys,
            metadata,
            ImageRows::AllRead,
            |sink| sink.push(image),
            |sink| sink.push(text),
        )
    }

    /// Row of a record key.
    pub fn row_of(&self, key: &str) -> Option<usize> {
        self.index.row_of(key)
    }

    /// The key of row `row`.
    fn key_of(&self, row: usize) -> Option<&str> {
        self.index.key(row)
    }

    /// Keys in row order.
    pub fn keys(&self) -> Vec<&str> {
        self.index.iter().collect()
    }

    /// The files the rows come from (one, or a set's shards in order).
    pub fn files(&self) -> Vec<&Path> {
        self.parts.iter().map(|p| p.path.as_path()).collect()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Opens one teacher file whose rows follow those already in `index`, adding its keys there (a
/// key already there, in this file or in one of the `earlier` parts, is refused) once `check` has
/// accepted its metadata: the part and its metadata.
fn open_part(
    path: &Path,
    index: &mut KeyIndex,
    earlier: &[Part],
    check: impl FnOnce(&BTreeMap<String, String>) -> Result<()>,
) -> Result<(Part, BTreeMap<String, String>)> {
    let file = SafetensorsFile::open(path)?;
    let metadata = file.metadata();
    let schema = metadata.get("tagfix.schema").map(String::as_str);
    if !matches!(schema, Some(TEACHER_SCHEMA | TEACHER_SCHEMA_V1)) {
        return Err(TeacherError::NotATeacherFile {
            path: path.into(),
            schema: schema.map(String::from),
        }
        .into());
    }
    check(&metadata)?;
    let first_row = index.len();
    let (json, what) = if schema == Some(TEACHER_SCHEMA) {
        (keys_tensor(&file)?, "the `keys` tensor")
    } else {
        let text = metadata
            .get("tagfix.keys")
            .ok_or_else(|| TeacherError::NoKeys { path: path.into() })?;
        (text.clone().into_bytes(), "tagfix.keys")
    };
    // Room for the rows the features claim, bounded by what the JSON can hold (`"",` a key); only a
    // hint, so a refused reservation is no error.
    if let Ok(Some((_, shape))) = file.info(IMAGE_FEATURES) {
        index.try_reserve(shape.first().copied().unwrap_or(0).min(json.len() / 3));
    }
    each_json_string(&json, |key| {
        index.push(key).map_err(|e| (key.to_string(), e))
    })
    .map_err(|e| keys_error(path, what, first_row, earlier, e))?;
    let rows = index.len() - first_row;
    let part = Part {
        path: path.to_path_buf(),
        image: feature_dtype(&file, IMAGE_FEATURES, rows)?,
        text: feature_dtype(&file, TEXT_FEATURES, rows)?,
        unreadable: unreadable_rows(&file, rows)?,
        file: Arc::new(file),
        first_row,
        rows,
    };
    Ok((part, metadata))
}

/// The error for keys of the file at `path` (rows from `first_row` on) that could not be read or
/// indexed: not JSON, too many, or a key already at a row of this file or of an `earlier` part.
fn keys_error(
    path: &Path,
    what: &'static str,
    first_row: usize,
    earlier: &[Part],
    error: EachStringError<(String, PushError)>,
) -> crate::Error {
    match error {
        EachStringError::Json(source) => TeacherError::Keys {
            path: path.into(),
            what,
            source,
        },
        EachStringError::Stopped((_, PushError::TooMany)) => {
            TeacherError::TooManyKeys { path: path.into() }
        }
        EachStringError::Stopped((key, PushError::Duplicate { first_row: row })) => {
            match earlier.iter().find(|p| row < p.first_row + p.rows) {
                Some(first) if row < first_row => TeacherError::KeyInTwoShards {
                    key,
                    first: first.path.clone(),
                    second: path.into(),
                },
                _ => TeacherError::KeyTwice {
                    path: path.into(),
                    key,
                },
            }
        }
    }
    .into()
}

/// Where [`write_streamed`]'s row producers put their rows: row-major f32, any number of rows a
/// call, written to the file as they come.
pub struct RowSink<'w> {
    out: &'w mut dyn Write,
    rows: usize,
    bytes: Vec<u8>,
    /// Where the rows of unreadable images are noted: image rows of a file written with
    /// [`ImageRows::MayBeUnreadable`], else none.
    unreadable: Option<&'w RefCell<Vec<usize>>>,
}

impl RowSink<'_> {
    /// Writes a row of zeros for a record whose image could not be read, flagged in the file's
    /// `image_unreadable` tensor. Only image rows of a file that flags them take it.
    pub fn push_unreadable(&mut self) -> Result<()> {
        let Some(flagged) = self.unreadable else {
            return Err(TeacherError::UnflaggedRow { row: self.rows }.into());
        };
        flagged.borrow_mut().push(self.rows);
        self.push(&[0.0; TEACHER_DIM])
    }

    /// Writes whole rows (`values.len()` a multiple of 512).
    pub fn push(&mut self, values: &[f32]) -> Result<()> {
        debug_assert_eq!(values.len() % TEACHER_DIM, 0);
        for chunk in values.chunks(CHECK_ROWS * TEACHER_DIM) {
            self.bytes.clear();
            self.bytes
                .extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            self.out
                .write_all(&self.bytes)
                .map_err(|e| crate::Error::io("the teacher file", e))?;
        }
        self.rows += values.len() / TEACHER_DIM;
        Ok(())
    }
}

/// Whether the image rows of a file being written may stand for images that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRows {
    /// Every row is an image's features (no `image_unreadable` tensor).
    AllRead,
    /// Rows may be [`RowSink::push_unreadable`]'s zeros, flagged in `image_unreadable`.
    MayBeUnreadable,
}

/// Writes a teacher file atomically with rows that `image_rows` and then `text_rows` produce into a
/// [`RowSink`] (each exactly one row per key, in key order), so that `tagfix teacher` writes rows as
/// it computes them instead of holding 4 KiB per record in memory. An error of a producer is
/// returned as it is, and no file is left. With [`ImageRows::MayBeUnreadable`] the file also gets
/// the `image_unreadable` flags of the rows `image_rows` pushed as unreadable (all 0 when none).
pub fn write_streamed(
    path: &Path,
    keys: &[String],
    mut metadata: BTreeMap<String, String>,
    rows: ImageRows,
    image_rows: impl FnOnce(&mut RowSink) -> Result<()>,
    text_rows: impl FnOnce(&mut RowSink) -> Result<()>,
) -> Result<()> {
    metadata.insert("tagfix.schema".into(), TEACHER_SCHEMA.into());
    let keys_json = serde_json::to_vec(keys).expect("strings serialise");
    let n = keys.len();
    // A producer's own error is kept here and returned instead of the write's I/O error.
    let failure = RefCell::new(None);
    let unreadable = RefCell::new(Vec::new());
    let flagged = (rows == ImageRows::MayBeUnreadable).then_some(&unreadable);
    let mut tensors = vec![
        rows_tensor(IMAGE_FEATURES, n, &failure, flagged, image_rows),
        rows_tensor(TEXT_FEATURES, n, &failure, None, text_rows),
        StreamedTensor {
            name: KEYS.into(),
            dtype: DType::U8,
            shape: vec![keys_json.len()],
            write: Box::new(|w: &mut dyn Write| w.write_all(&keys_json)),
        },
    ];
    if let Some(flagged) = flagged {
        // Written after the image rows, which note the unreadable ones as they go.
        tensors.push(StreamedTensor {
            name: IMAGE_UNREADABLE.into(),
            dtype: DType::U8,
            shape: vec![n],
            write: Box::new(move |w: &mut dyn Write| {
                let mut flags = vec![0u8; n];
                // (Rows past `n` cannot be noted: the image rows' count was checked first.)
                for &row in flagged.borrow().iter() {
                    if let Some(flag) = flags.get_mut(row) {
                        *flag = 1;
                    }
                }
                w.write_all(&flags)
            }),
        });
    }
    let written = safetensors_io::write_streamed(path, tensors, &metadata);
    match failure.into_inner() {
        Some(e) => Err(e),
        None => written,
    }
}

/// A `[n, 512]` f32 tensor whose rows `produce` writes; its error, or a wrong row count, is kept in
/// `failure` (the write itself only sees an I/O error). Rows pushed as unreadable are noted in
/// `unreadable` (refused without it).
fn rows_tensor<'a>(
    name: &'static str,
    n: usize,
    failure: &'a RefCell<Option<crate::Error>>,
    unreadable: Option<&'a RefCell<Vec<usize>>>,
    produce: impl FnOnce(&mut RowSink) -> Result<()> + 'a,
) -> StreamedTensor<'a> {
    let mut produce = Some(produce);
    StreamedTensor {
        name: name.into(),
        dtype: DType::F32,
        shape: vec![n, TEACHER_DIM],
        write: Box::new(move |w: &mut dyn Write| {
            let produce = produce.take().expect("each tensor is written once");
            let mut sink = RowSink {
                out: w,
                rows: 0,
                bytes: Vec::new(),
                unreadable,
            };
            let done = produce(&mut sink).and_then(|()| match sink.rows {
                rows if rows == n => Ok(()),
                got => Err(TeacherError::RowCount {
                    name,
                    got,
                    expected: n,
                }
                .into()),
            });
            done.map_err(|e| {
                let message = e.to_string();
                *failure.borrow_mut() = Some(e);
                std::io::Error::other(message)
            })
        }),
    }
}

/// The JSON bytes of a `tagfix.teacher/2` file's keys: the `keys` tensor.
fn keys_tensor(file: &SafetensorsFile) -> Result<Vec<u8>> {
    let path = file.path();
    let Some(tensor) = file.read_tensor(KEYS)? else {
        return Err(TeacherError::NoTensor {
            path: path.into(),
            name: KEYS.into(),
        }
        .into());
    };
    if tensor.dtype != DType::U8 || tensor.shape.len() != 1 {
        return Err(TeacherError::KeysTensor {
            path: path.into(),
            dtype: tensor.dtype.to_string(),
            shape: tensor.shape.clone(),
        }
        .into());
    }
    Ok(tensor.data)
}

/// The dtype of feature tensor `name`, checked to be a float `[keys, 512]`.
fn feature_dtype(file: &SafetensorsFile, name: &str, keys: usize) -> Result<DType> {
    let path = file.path();
    let Some((dtype, shape)) = file.info(name)? else {
        return Err(TeacherError::NoTensor {
            path: path.into(),
            name: name.into(),
        }
        .into());
    };
    if shape != [keys, TEACHER_DIM] {
        return Err(TeacherError::TensorShape {
            path: path.into(),
            name: name.into(),
            shape,
            keys,
        }
        .into());
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(TeacherError::FeatureDtype {
            path: path.into(),
            name: name.into(),
            dtype: dtype.to_string(),
        }
        .into());
    }
    Ok(dtype)
}

/// The local rows flagged in the optional `image_unreadable` tensor, checked to be u8 `[keys]` of
/// 0 and 1.
fn unreadable_rows(file: &SafetensorsFile, keys: usize) -> Result<Vec<u32>> {
    let path = file.path();
    let Some(tensor) = file.read_tensor(IMAGE_UNREADABLE)? else {
        return Ok(Vec::new());
    };
    if tensor.dtype != DType::U8 || tensor.shape != [keys] {
        return Err(TeacherError::UnreadableTensor {
            path: path.into(),
            dtype: tensor.dtype.to_string(),
            shape: tensor.shape,
            keys,
        }
        .into());
    }
    let mut rows = Vec::new();
    for (row, &flag) in tensor.data.iter().enumerate() {
        match flag {
            0 => {}
            // Keys are at most u32::MAX + 1 (the key index), so every row fits.
            1 => rows.push(row as u32),
            _ => {
                return Err(TeacherError::UnreadableFlag {
                    path: path.into(),
                    row,
                    flag,
                }
                .into())
            }
        }
    }
    Ok(rows)
}

/// Appends little-endian `dtype` values (f32, f16 or bf16) to `out` as f32.
fn decode_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    let values = bytes.chunks_exact(dtype.size());
    match dtype {
        DType::F16 => out.extend(values.map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
        DType::BF16 => out.extend(values.map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        _ => out.extend(values.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let keys = vec!["a.png".to_string(), "b.png".to_string()];
        let image: Vec<f32> = (0..1024).map(|i| i as f32).collect();
        let text: Vec<f32> = (0..1024)
            .map(|i| if i % 512 == 0 { 2.0 } else { 0.0 })
            .collect();
        TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
        let t = TeacherFeatures::read(&p).unwrap();
        assert_eq!(t.row_of("b.png"), Some(1));
        assert_eq!(t.image_row(1).unwrap()[0], 512.0);
        assert_eq!(
            t.text_row(0).unwrap()[0],
            1.0,
            "text rows are L2-normalised"
        );
        assert!(t.row_of("c.png").is_none());
        assert!(t.image_row(2).is_err(), "a row past the end is an error");
    }

    fn rows(n: usize, value: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        (0..n * TEACHER_DIM)
            .map(|i| value(i / TEACHER_DIM, i % TEACHER_DIM))
            .collect()
    }

    /// The keys live in a tensor, so the header stays small however many records there are (a
    /// header over 100 MB is refused by every safetensors reader).
    #[test]
    fn keys_are_a_tensor_and_the_header_does_not_grow_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let n = 3000;
        let keys: Vec<String> = (0..n)
            .map(|i| format!("cc3m/train/{:05}/{i:09}.jpg", i / 100))
            .collect();
        let image = rows(n, |r, c| (r * 7 + c) as f32);
        let text = rows(n, |r, c| if c == r % TEACHER_DIM { 3.0 } else { 0.0 });
        TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert!(header < 1024, "{header}-byte header");
        let t = TeacherFeatures::read(&p).unwrap();
        assert_eq!(t.metadata["tagfix.schema"], TEACHER_SCHEMA);
        assert_eq!(
            t.keys(),
            keys.iter().map(String::as_str).collect::<Vec<_>>()
        );
        let row = t.row_of("cc3m/train/00017/000001717.jpg").unwrap();
        assert_eq!(row, 1717);
        assert_eq!(t.image_row(row).unwrap(), image[row * 512..(row + 1) * 512]);
        let unit = t.text_row(row).unwrap();
        assert_eq!(unit[row % TEACHER_DIM], 1.0);
    }

    /// Files of the first layout (keys in the metadata) and f16/bf16 features still read.
    /// A `keys` tensor that is not a JSON array of strings, or holds another number of keys than
    /// the features have rows, is refused with the file and what is wrong.
    #[test]
    fn keys_that_do_not_fit_the_rows_are_refused() {
        use crate::tensors::{Tensor, TensorSet};
        let dir = tempfile::tempdir().unwrap();
        let file = |keys: &str| {
            let zeros = rows(2, |_, _| 0.5);
            let set = TensorSet {
                tensors: vec![
                    (
                        IMAGE_FEATURES.into(),
                        Tensor::from_f32(vec![2, TEACHER_DIM], &zeros).unwrap(),
                    ),
                    (
                        TEXT_FEATURES.into(),
                        Tensor::from_f32(vec![2, TEACHER_DIM], &zeros).unwrap(),
                    ),
                    (
                        KEYS.into(),
                        Tensor::new(DType::U8, vec![keys.len()], keys.as_bytes().to_vec()).unwrap(),
                    ),
                ],
                metadata: [("tagfix.schema".to_string(), TEACHER_SCHEMA.to_string())].into(),
            };
            let p = dir.path().join("t.safetensors");
            safetensors_io::write(&p, &set).unwrap();
            TeacherFeatures::read(&p).map(|t| t.keys().join(","))
        };
        assert_eq!(file(r#"["a.jpg", "b\u00e9.jpg"]"#).unwrap(), "a.jpg,bé.jpg");
        for (keys, says) in [
            (r#"["a.jpg", 2]"#, "the `keys` tensor"),
            (r#"["a.jpg", "b.jpg""#, "the `keys` tensor"),
            (r#"{"a.jpg": 0}"#, "the `keys` tensor"),
            (r#"["a.jpg", "a.jpg"]"#, "key `a.jpg` appears twice"),
            (r#"["a.jpg"]"#, "image_features"),
            (r#"["a.jpg", "b.jpg", "c.jpg"]"#, "image_features"),
        ] {
            let err = file(keys).unwrap_err().to_string();
            assert!(
                err.contains("t.safetensors") && err.contains(says),
                "{keys}: {err}"
            );
        }
    }

    #[test]
    fn version_1_files_and_half_precision_features_are_read() {
        use crate::tensors::{Tensor, TensorSet};
        let dir = tempfile::tempdir().unwrap();
        let keys = vec!["a.jpg".to_string(), "b.jpg".to_string()];
        let image = rows(2, |r, c| (r + c) as f32 / 4.0);
        let half: Vec<u8> = image
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let text = rows(2, |_, c| if c == 0 { 1.0 } else { 0.0 });
        let v1 = TensorSet {
            tensors: vec![
                (
                    IMAGE_FEATURES.into(),
                    Tensor::new(DType::F16, vec![2, TEACHER_DIM], half).unwrap(),
                ),
                (
                    TEXT_FEATURES.into(),
                    Tensor::from_f32(vec![2, TEACHER_DIM], &text).unwrap(),
                ),
            ],
            metadata: [
                ("tagfix.schema".to_string(), TEACHER_SCHEMA_V1.to_string()),
                (
                    "tagfix.keys".to_string(),
                    serde_json::to_string(&keys).unwrap(),
                ),
            ]
            .into(),
        };
        let p = dir.path().join("v1.safetensors");
        safetensors_io::write(&p, &v1).unwrap();
        let t = TeacherFeatures::read(&p).unwrap();
        assert_eq!(t.row_of("b.jpg"), Some(1));
        assert_eq!(t.image_row(1).unwrap(), image[512..]);
        assert_eq!(t.text_row(0).unwrap(), text[..512]);
    }

    /// A producer's own error comes back as it is, a wrong row count is refused, and neither leaves
    /// a file.
    #[test]
    fn a_failing_or_short_producer_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let keys = vec!["a".to_string(), "b".to_string()];
        let two = rows(2, |_, _| 1.0);
        let err = write_streamed(
            &p,
            &keys,
            BTreeMap::new(),
            ImageRows::AllRead,
            |sink| sink.push(&two),
            |_| Err(TeacherError::RandomCaptionInFile.into()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("caption `random`"), "{err}");
        let err = write_streamed(
            &p,
            &keys,
            BTreeMap::new(),
            ImageRows::AllRead,
            |sink| sink.push(&two[..TEACHER_DIM]),
            |sink| sink.push(&two),
        )
        .unwrap_err();
        assert!(err.to_string().contains("1 rows computed for 2"), "{err}");
        // An unreadable image's row needs a file that flags it; text rows never take one.
        for (rows, image_unreadable) in [
            (ImageRows::AllRead, true),
            (ImageRows::MayBeUnreadable, false),
        ] {
            let err = write_streamed(
                &p,
                &keys,
                BTreeMap::new(),
                rows,
                |sink| match image_unreadable {
                    true => sink
                        .push_unreadable()
                        .and_then(|()| sink.push(&two[..TEACHER_DIM])),
                    false => sink.push(&two),
                },
                |sink| {
                    sink.push_unreadable()
                        .and_then(|()| sink.push(&two[..TEACHER_DIM]))
                },
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("without `image_unreadable`"),
                "{err}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Rows pushed as unreadable are zeros flagged in `image_unreadable`, read back per row (in a
    /// shard set too); a file written without such rows has no flags.
    #[test]
    fn unreadable_images_are_flagged_rows_of_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..5).map(|i| format!("{i}.jpg")).collect();
        let image = rows(5, |r, c| (r * 10 + c) as f32 + 1.0);
        let text = rows(5, |r, c| if c == r { 1.0 } else { 0.0 });
        let write = |path: &Path, range: Range<usize>, bad: &[usize], metadata| {
            write_streamed(
                path,
                &keys[range.clone()],
                metadata,
                ImageRows::MayBeUnreadable,
                |sink| {
                    for r in range.clone() {
                        match bad.contains(&r) {
                            true => sink.push_unreadable()?,
                            false => sink.push(&image[r * TEACHER_DIM..(r + 1) * TEACHER_DIM])?,
                        }
                    }
                    Ok(())
                },
                |sink| sink.push(&text[range.start * TEACHER_DIM..range.end * TEACHER_DIM]),
            )
        };
        let p = dir.path().join("t.safetensors");
        write(&p, 0..5, &[1, 4], BTreeMap::new()).unwrap();
        let t = TeacherFeatures::read(&p).unwrap();
        let flagged: Vec<usize> = (0..6).filter(|&r| t.image_unreadable(r)).collect();
        assert_eq!((flagged, t.unreadable_images()), (vec![1, 4], 2));
        assert_eq!(t.image_row(1).unwrap(), vec![0.0; TEACHER_DIM]);
        assert_eq!(t.image_row(2).unwrap()[3], 24.0);
        assert_eq!(t.text_row(4).unwrap()[4], 1.0, "caption rows are all there");
        TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
        let t = TeacherFeatures::read(&p).unwrap();
        assert!((0..5).all(|r| !t.image_unreadable(r)));
        // Shards: each file flags its own rows, the set numbers them in set order.
        let set = dir.path().join("set");
        std::fs::create_dir(&set).unwrap();
        for index in 0..2 {
            let shard = shard::Shard { index, count: 2 };
            let metadata = [
                (shard::SHARD_KEY.to_string(), shard.to_string()),
                (shard::SET_RECORDS_KEY.to_string(), "5".to_string()),
            ]
            .into();
            write(
                &set.join(shard.file_name()),
                shard.range(5),
                &[0, 3],
                metadata,
            )
            .unwrap();
        }
        let t = TeacherFeatures::read(&set).unwrap();
        let flagged: Vec<usize> = (0..5).filter(|&r| t.image_unreadable(r)).collect();
        assert_eq!(flagged, vec![0, 3]);
    }

    /// Flags that are not u8 [keys] of 0 and 1 are refused, naming the file and what is wrong.
    #[test]
    fn bad_unreadable_flags_are_refused() {
        use crate::tensors::{Tensor, TensorSet};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let read = |flags: Tensor| {
            let half = rows(2, |_, _| 0.5);
            let keys = br#"["a.jpg","b.jpg"]"#.to_vec();
            let set = TensorSet {
                tensors: vec![
                    (
                        IMAGE_FEATURES.into(),
                        Tensor::from_f32(vec![2, TEACHER_DIM], &half).unwrap(),
                    ),
                    (
                        TEXT_FEATURES.into(),
                        Tensor::from_f32(vec![2, TEACHER_DIM], &half).unwrap(),
                    ),
                    (
                        KEYS.into(),
                        Tensor::new(DType::U8, vec![keys.len()], keys).unwrap(),
                    ),
                    (IMAGE_UNREADABLE.into(), flags),
                ],
                metadata: [("tagfix.schema".to_string(), TEACHER_SCHEMA.to_string())].into(),
            };
            safetensors_io::write(&p, &set).unwrap();
            TeacherFeatures::read(&p).map(|t| t.unreadable_images())
        };
        let u8s = |v: &[u8]| Tensor::new(DType::U8, vec![v.len()], v.to_vec()).unwrap();
        assert_eq!(read(u8s(&[0, 1])).unwrap(), 1);
        for (flags, says) in [
            (
                u8s(&[0, 1, 0]),
                "`image_unreadable` is u8 [3]; it must be u8 [2]",
            ),
            (u8s(&[1]), "`image_unreadable` is u8 [1]"),
            (
                Tensor::from_f32(vec![2], &[0.0, 1.0]).unwrap(),
                "`image_unreadable` is f32 [2]",
            ),
            (u8s(&[0, 2]), "`image_unreadable` row 1 is 2"),
        ] {
            let err = read(flags).unwrap_err().to_string();
            assert!(err.contains("t.safetensors") && err.contains(says), "{err}");
        }
    }

    /// Every value is checked on opening (a block at a time); the error names the row and its key.
    #[test]
    fn a_non_finite_value_is_named_with_its_row_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        // Blocks are checked in parallel; the first bad row is named, not the first one found.
        let n = 3 * CHECK_ROWS + 5;
        let keys: Vec<String> = (0..n).map(|i| format!("{i}.jpg")).collect();
        let image = rows(n, |_, _| 0.5);
        let text = rows(n, |r, c| match (r, c) {
            (r, 9) if r == CHECK_ROWS + 3 => f32::NAN,
            (r, 0) if r == 3 * CHECK_ROWS + 1 => f32::INFINITY,
            (r, 5) if r == 2 * CHECK_ROWS => f32::NAN,
            _ => 1.0,
        });
        TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
        let err = TeacherFeatures::read(&p).unwrap_err().to_string();
        let row = CHECK_ROWS + 3;
        assert!(
            err.contains(&format!(
                "`text_features` row {row} ({row}.jpg) is not finite"
            )),
            "{err}"
        );
    }

    /// Split among ranks, the check of the values finds a bad row in exactly the part holding it,
    /// within one file and across a set's shards.
    #[test]
    fn each_part_checks_its_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let n = 2 * CHECK_ROWS + 11;
        let bad = CHECK_ROWS + 7;
        let keys: Vec<String> = (0..n).map(|i| format!("{i}.jpg")).collect();
        let image = rows(n, |r, c| if (r, c) == (bad, 3) { f32::NAN } else { 0.5 });
        let text = rows(n, |_, _| 1.0);
        TeacherFeatures::write(&p, &keys, &image, &text).unwrap();
        let set = dir.path().join("set");
        std::fs::create_dir(&set).unwrap();
        for index in 0..2 {
            // The bad row is the second shard's third.
            let shard = shard::Shard { index, count: 2 };
            let range = shard.range(n);
            let metadata: BTreeMap<String, String> = [
                (shard::SHARD_KEY.to_string(), shard.to_string()),
                (shard::SET_RECORDS_KEY.to_string(), n.to_string()),
            ]
            .into_iter()
            .collect();
            let slice = |t: &[f32]| t[range.start * TEACHER_DIM..range.end * TEACHER_DIM].to_vec();
            TeacherFeatures::write_with_metadata(
                &set.join(shard.file_name()),
                &keys[range.clone()],
                &slice(&image),
                &slice(&text),
                metadata,
            )
            .unwrap();
        }
        for path in [&p, &set] {
            for count in [1, 2, 3, 7] {
                let mut found = Vec::new();
                for index in 0..count {
                    let share = WorkShare::new(index, count).unwrap();
                    if let Err(e) = TeacherFeatures::read_checking(path, share) {
                        assert!(e.to_string().contains(&format!("({bad}.jpg)")), "{e}");
                        found.push(index);
                    }
                }
                let holder = (0..count)
                    .find(|&i| WorkShare::new(i, count).unwrap().range(n).contains(&bad))
                    .unwrap();
                assert_eq!(found, [holder], "{}, {count} parts", path.display());
            }
        }
    }

    /// Writes shard `index` of `count` of a set of `keys` into `dir`, with `provenance`.
    fn write_shard(
        dir: &Path,
        index: usize,
        count: usize,
        keys: &[String],
        provenance: &str,
    ) -> PathBuf {
        let shard = shard::Shard { index, count };
        let range = shard.range(keys.len());
        let image = rows(keys.len(), |r, c| (r * 1000 + c) as f32);
        let text = rows(keys.len(), |r, c| if c == r { 1.0 } else { 0.0 });
        let metadata: BTreeMap<String, String> = [
            (shard::SHARD_KEY, shard.to_string()),
            (shard::SET_RECORDS_KEY, keys.len().to_string()),
            ("tagfix.teacher.image_model_sha256", provenance.to_string()),
            ("tagfix.generator", format!("tagfix 0.{index}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let path = dir.join(shard.file_name());
        let cut = |v: &[f32]| v[range.start * TEACHER_DIM..range.end * TEACHER_DIM].to_vec();
        TeacherFeatures::write_with_metadata(
            &path,
            &keys[range.clone()],
            &cut(&image),
            &cut(&text),
            metadata,
        )
        .unwrap();
        path
    }

    /// The shards of a set read as one file of all their rows, in shard order.
    #[test]
    fn a_set_of_shards_reads_as_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..10).map(|i| format!("img/{i}.jpg")).collect();
        for i in [2, 0, 1] {
            write_shard(dir.path(), i, 3, &keys, "abc");
        }
        let t = TeacherFeatures::read(dir.path()).unwrap();
        assert_eq!(t.len(), 10);
        assert_eq!(t.files().len(), 3);
        assert_eq!(
            t.keys(),
            keys.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(!t.metadata.contains_key(shard::SHARD_KEY));
        for (row, key) in keys.iter().enumerate() {
            assert_eq!(t.row_of(key), Some(row));
            assert_eq!(
                t.image_row(row).unwrap()[7],
                (row * 1000 + 7) as f32,
                "{key}"
            );
            assert_eq!(t.text_row(row).unwrap()[row], 1.0, "{key}");
        }
        assert!(t.image_row(10).is_err(), "a row past the set's end");
    }

    /// Shards that do not form one set are refused, naming the file and what differs.
    #[test]
    fn shards_that_do_not_belong_together_are_refused() {
        let keys: Vec<String> = (0..6).map(|i| format!("{i}.jpg")).collect();
        let read = |dir: &Path| TeacherFeatures::read(dir).unwrap_err().to_string();
        // Another image tower in one shard.
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), 0, 2, &keys, "abc");
        write_shard(dir.path(), 1, 2, &keys, "xyz");
        let err = read(dir.path());
        assert!(
            err.contains("teacher-00001-of-00002.safetensors was made differently from shard 0: tagfix.teacher.image_model_sha256 is `xyz` there, `abc` in shard 0"),
            "{err}"
        );
        // A shard file renamed to another place in the set.
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), 0, 2, &keys, "abc");
        let one = write_shard(dir.path(), 1, 2, &keys, "abc");
        std::fs::copy(dir.path().join("teacher-00000-of-00002.safetensors"), &one).unwrap();
        let err = read(dir.path());
        assert!(
            err.contains("says it is shard 0/2, its name says 1/2"),
            "{err}"
        );
        // Two sets' shards: a record in both.
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), 0, 2, &keys, "abc");
        let overlap: Vec<String> = keys.iter().rev().cloned().collect();
        write_shard(dir.path(), 1, 2, &overlap, "abc");
        let err = read(dir.path());
        assert!(err.contains("key `2.jpg` is in"), "{err}");
        assert!(
            err.contains("teacher-00000-of-00002.safetensors and in"),
            "{err}"
        );
        // A shard of another split of the records.
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), 0, 2, &keys, "abc");
        write_shard(dir.path(), 1, 2, &keys[..4], "abc");
        let err = read(dir.path());
        assert!(
            err.contains("tagfix.teacher.set_records is `4` there, `6` in shard 0"),
            "{err}"
        );
    }

    /// A non-finite value in a shard is named with that shard's file and its row there.
    #[test]
    fn a_non_finite_value_in_a_shard_names_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..4).map(|i| format!("{i}.jpg")).collect();
        write_shard(dir.path(), 0, 2, &keys, "abc");
        let shard = shard::Shard { index: 1, count: 2 };
        let mut text = rows(2, |_, _| 1.0);
        text[TEACHER_DIM + 3] = f32::INFINITY;
        let metadata: BTreeMap<String, String> = [
            (shard::SHARD_KEY.to_string(), "1/2".to_string()),
            (shard::SET_RECORDS_KEY.to_string(), "4".to_string()),
            (
                "tagfix.teacher.image_model_sha256".to_string(),
                "abc".to_string(),
            ),
        ]
        .into();
        let path = dir.path().join(shard.file_name());
        TeacherFeatures::write_with_metadata(
            &path,
            &keys[2..],
            &rows(2, |_, _| 0.0),
            &text,
            metadata,
        )
        .unwrap();
        let err = TeacherFeatures::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(
                "teacher-00001-of-00002.safetensors: `text_features` row 1 (3.jpg) is not finite"
            ),
            "{err}"
        );
    }

    /// A file cut short after it was opened gives an error for the rows it lost, not a panic.
    #[test]
    fn a_file_truncated_after_opening_fails_row_reads_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let keys = vec!["a".to_string(), "b".to_string()];
        TeacherFeatures::write(&p, &keys, &rows(2, |_, _| 1.0), &rows(2, |_, _| 1.0)).unwrap();
        let t = TeacherFeatures::read(&p).unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert!(t.text_row(1).is_err());
    }
}
