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

mod write;

pub use write::{write_streamed, ImageRows, RowSink};

use super::keys::{each_json_string, EachStringError, KeyIndex, PushError};
use super::shard;
use super::TeacherError;
use crate::error::Result;
use crate::share::WorkShare;
use crate::tensors::safetensors_io::SafetensorsFile;
use crate::tensors::DType;
use rayon::prelude::*;
use std::collections::BTreeMap;
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
mod tests;
