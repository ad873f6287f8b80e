//! Prediction scores for `tagfix eval`, from a file (format in `docs/formats.md`, "Prediction
//! scores"):
//! - CSV `image_id,slot_or_tag,score` (optional header): the second column is a slot number or a
//!   tag name (exact, then normalised); pairs not listed score 0; every benchmark image must appear.
//! - safetensors with a 2-D tensor `scores` [images, slots] (f32/f16/bf16/f64) and the metadata
//!   key `image_ids`, a JSON array of the row's image ids.
//! - a folder holding a score set: the safetensors files `scores-IIIII-of-NNNNN.safetensors` of
//!   `tagfix tag --shard I/N --scores DIR`, read as one file (every shard present, no image in two).

use super::{Benchmark, EvalError, TagMapping};
use crate::error::{Error, Result};
use crate::share::shard::SetNaming;
use crate::vocab::{normalize_tag, Slot, Vocabulary};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The files of a score set, one per shard of `tagfix tag --shard I/N --scores DIR`.
pub const SCORE_SET: SetNaming = SetNaming {
    prefix: "scores",
    ext: "safetensors",
    what: "score shard",
    made_by: "tagfix tag --shard I/N --scores DIR",
};

/// What is wrong with one line of a CSV score file.
#[derive(Debug, thiserror::Error)]
pub enum LineProblem {
    #[error("{0}")]
    Csv(csv::Error),
    #[error("expected 3 fields (image_id,slot_or_tag,score), found {0}")]
    FieldCount(usize),
    #[error("score `{score}`: {why}")]
    BadScore { score: String, why: &'static str },
    #[error("score `{0}` is not a number")]
    NotANumber(String),
    #[error("slot {slot} is outside the vocabulary ({slots} slots)")]
    SlotOutside { slot: Slot, slots: usize },
    #[error("tag `{0}` is not in the vocabulary")]
    UnknownTag(String),
    #[error("second score for image `{image}` and slot {slot}")]
    SecondScore { image: String, slot: Slot },
}

/// Dense scores, row-major: rows = benchmark images, columns = mapped benchmark tags.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl ScoreMatrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        ScoreMatrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_rows(rows: &[Vec<f32>]) -> Self {
        let cols = rows.first().map_or(0, Vec::len);
        assert!(rows.iter().all(|r| r.len() == cols), "ragged rows");
        ScoreMatrix {
            rows: rows.len(),
            cols,
            data: rows.concat(),
        }
    }

    pub fn set(&mut self, row: usize, col: usize, v: f32) {
        self.data[row * self.cols + col] = v;
    }

    pub fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.cols..(row + 1) * self.cols]
    }

    pub fn column(&self, col: usize) -> Vec<f32> {
        (0..self.rows)
            .map(|r| self.data[r * self.cols + col])
            .collect()
    }
}

/// Why a score cannot be used, if it cannot: scores are probabilities, so NaN, infinities and values
/// outside [0, 1] (logits, say) are refused in every format rather than ranked or thresholded.
fn bad_score(v: f32) -> Option<&'static str> {
    if v.is_nan() {
        Some("a score must be a number")
    } else if !(0.0..=1.0).contains(&v) {
        Some("scores are probabilities in [0, 1] (apply the sigmoid to logits)")
    } else {
        None
    }
}

/// Writes the full score matrix [images × slots] row by row, in either format `read_scores` takes:
/// safetensors (`scores` f32 + `image_ids`) or CSV `image_id,slot,score`. Rows stream to a temporary
/// file in the output's folder, so memory does not grow with the image count; [`finish`] puts the
/// file in place, and a writer dropped before that leaves nothing behind.
///
/// [`finish`]: ScoreWriter::finish
pub struct ScoreWriter {
    path: std::path::PathBuf,
    slots: usize,
    csv: bool,
    ids: Vec<String>,
    tmp: std::io::BufWriter<tempfile::NamedTempFile>,
    /// Bytes the header will take (safetensors), and at most.
    header_bytes: usize,
    header_limit: usize,
}

/// The header of a score file without its ids: `__metadata__`, the `scores` entry, padding.
const HEADER_BASE: usize = 1024;

/// Bytes image id `id` adds to the header: a JSON string in the `image_ids` list, which is itself
/// stored as a JSON string (escaped twice), and its comma.
fn id_header_bytes(id: &str) -> usize {
    let once = serde_json::to_string(id).expect("strings serialise");
    serde_json::to_string(&once)
        .expect("strings serialise")
        .len()
        - 2
        + 1
}

impl ScoreWriter {
    /// Starts `path` (`.safetensors` or `.csv`) for rows of `slots` scores.
    pub fn create(path: &Path, slots: usize) -> Result<Self> {
        let csv = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => true,
            Some("safetensors") => false,
            _ => return Err(EvalError::ScoresOutputType { path: path.into() }.into()),
        };
        let tmp = crate::fsutil::output_temp(path)?;
        let mut w = ScoreWriter {
            path: path.to_path_buf(),
            slots,
            csv,
            ids: Vec::new(),
            tmp: std::io::BufWriter::new(tmp),
            header_bytes: HEADER_BASE,
            header_limit: crate::tensors::safetensors_io::MAX_HEADER_BYTES,
        };
        if csv {
            w.io(|t| t.write_all(b"image_id,slot,score\n"))?;
        }
        Ok(w)
    }

    /// Checks, before any image is scored, that the ids of these images will fit the header (a
    /// safetensors reader refuses a header over 100 MB, ≈ 2M ids): the error then comes at once,
    /// not after hours of scoring. CSV takes any number.
    pub fn check_ids_fit<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        if self.csv {
            return Ok(());
        }
        let (mut images, mut bytes) = (0, self.header_bytes);
        for id in ids {
            images += 1;
            bytes += id_header_bytes(id);
        }
        self.fits(images, bytes)
    }

    fn fits(&self, images: usize, bytes: usize) -> Result<()> {
        if bytes <= self.header_limit {
            return Ok(());
        }
        Err(EvalError::ScoresHeader {
            path: self.path.clone(),
            images,
            bytes,
            limit: self.header_limit,
        }
        .into())
    }

    fn io(&mut self, f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
        f(&mut self.tmp).map_err(|e| Error::io(&self.path, e))
    }

    /// Appends one image's scores (slot order).
    pub fn push(&mut self, id: &str, row: &[f32]) -> Result<()> {
        if row.len() != self.slots {
            return Err(EvalError::RowLength {
                got: row.len(),
                slots: self.slots,
            }
            .into());
        }
        if self.csv {
            let id = if id.contains([',', '"', '\n']) {
                format!("\"{}\"", id.replace('"', "\"\""))
            } else {
                id.to_string()
            };
            self.io(|t| {
                for (slot, v) in row.iter().enumerate() {
                    writeln!(t, "{id},{slot},{v}")?;
                }
                Ok(())
            })?;
        } else {
            let bytes = self.header_bytes + id_header_bytes(id);
            self.fits(self.ids.len() + 1, bytes)?;
            self.header_bytes = bytes;
            self.io(|t| row.iter().try_for_each(|v| t.write_all(&v.to_le_bytes())))?;
        }
        self.ids.push(id.to_string());
        Ok(())
    }

    /// Rows written so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Completes the file and renames it into place.
    pub fn finish(self) -> Result<()> {
        let path = self.path.clone();
        let io = |e: std::io::Error| Error::io(&path, e);
        let data = self.tmp.into_inner().map_err(|e| io(e.into_error()))?;
        if self.csv {
            return crate::fsutil::persist(data, &path);
        }
        use crate::tensors::safetensors_io::{write_streamed, StreamedTensor};
        let ids = serde_json::to_string(&self.ids).expect("strings serialise");
        let mut rows = data.reopen().map_err(io)?;
        let scores = StreamedTensor {
            name: "scores".into(),
            dtype: crate::tensors::DType::F32,
            shape: vec![self.ids.len(), self.slots],
            write: Box::new(move |w: &mut dyn Write| std::io::copy(&mut rows, w).map(|_| ())),
        };
        write_streamed(&path, vec![scores], &[("image_ids".into(), ids)].into())
    }
}

/// The benchmark row of a score file's image id: the id itself, or without its image extension
/// (`tagfix tag` names images by file, benchmarks by id without `.jpg`).
fn row_of(rows: &HashMap<&str, usize>, id: &str) -> Option<usize> {
    rows.get(id).copied().or_else(|| {
        let p = Path::new(id);
        let ext = p.extension()?.to_str()?.to_ascii_lowercase();
        matches!(ext.as_str(), "jpg" | "jpeg" | "png")
            .then(|| rows.get(id[..id.len() - ext.len() - 1].trim()).copied())
            .flatten()
    })
}

/// Reads a prediction file (by extension: `.csv`, `.safetensors`), or the score set in a folder
/// ([`SCORE_SET`]), into the benchmark's matrix.
pub fn read_scores(
    path: &Path,
    bench: &Benchmark,
    vocab: &Vocabulary,
    mapping: &TagMapping,
) -> Result<ScoreMatrix> {
    if path.is_dir() {
        return read_score_set(path, bench, vocab, mapping);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(path, bench, vocab, mapping),
        Some("safetensors") => read_safetensors(path, bench, vocab, mapping),
        _ => Err(EvalError::ScoresInputType { path: path.into() }.into()),
    }
}

/// Benchmark image id -> row.
fn image_rows(bench: &Benchmark) -> HashMap<&str, usize> {
    bench
        .images
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect()
}

/// Slot -> column of the mapped tags (several benchmark tags may share a slot).
fn slot_columns(mapping: &TagMapping) -> HashMap<Slot, Vec<usize>> {
    let mut m: HashMap<Slot, Vec<usize>> = HashMap::new();
    for (col, (_, slot)) in mapping.mapped().into_iter().enumerate() {
        m.entry(slot).or_default().push(col);
    }
    m
}

fn missing_images_error(path: &Path, bench: &Benchmark, seen: &[bool]) -> Option<Error> {
    let missing: Vec<&str> = bench
        .images
        .iter()
        .zip(seen)
        .filter(|(_, s)| !**s)
        .map(|(id, _)| id.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        EvalError::MissingImages {
            path: path.into(),
            images: bench.images.len(),
            missing: missing.into_iter().map(String::from).collect(),
        }
        .into()
    })
}

fn read_csv(
    path: &Path,
    bench: &Benchmark,
    vocab: &Vocabulary,
    mapping: &TagMapping,
) -> Result<ScoreMatrix> {
    let rows = image_rows(bench);
    let columns = slot_columns(mapping);
    let mut exact: HashMap<&str, Slot> = HashMap::new();
    let mut normalized: HashMap<String, Slot> = HashMap::new();
    for (slot, t) in vocab.tags.iter().enumerate() {
        exact.entry(t.as_str()).or_insert(slot);
        normalized.entry(normalize_tag(t)).or_insert(slot);
    }
    let mut m = ScoreMatrix::zeros(bench.images.len(), mapping.mapped().len());
    let mut filled = vec![false; m.data.len()];
    let mut seen = vec![false; bench.images.len()];
    let mut unknown_images = 0usize;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|source| EvalError::Csv {
            path: path.into(),
            source,
        })?;
    for (i, rec) in reader.records().enumerate() {
        let line = i + 1;
        let parse_err = |problem| EvalError::ScoreLine {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let rec = rec.map_err(|e| parse_err(LineProblem::Csv(e)))?;
        if rec.len() != 3 {
            return Err(parse_err(LineProblem::FieldCount(rec.len())).into());
        }
        let score = rec[2].trim();
        let score = match score.parse::<f32>() {
            Ok(v) => match bad_score(v) {
                None => v,
                Some(why) => {
                    return Err(parse_err(LineProblem::BadScore {
                        score: score.into(),
                        why,
                    })
                    .into())
                }
            },
            _ if line == 1 => continue, // header
            _ => return Err(parse_err(LineProblem::NotANumber(score.into())).into()),
        };
        let Some(row) = row_of(&rows, rec[0].trim()) else {
            unknown_images += 1;
            continue;
        };
        seen[row] = true;
        let key = rec[1].trim();
        let slot = match key.parse::<usize>() {
            Ok(s) if s < vocab.len() => s,
            Ok(s) => {
                return Err(parse_err(LineProblem::SlotOutside {
                    slot: s,
                    slots: vocab.len(),
                })
                .into())
            }
            Err(_) => *exact
                .get(key)
                .or_else(|| normalized.get(&normalize_tag(key)))
                .ok_or_else(|| parse_err(LineProblem::UnknownTag(key.into())))?,
        };
        for &col in columns.get(&slot).into_iter().flatten() {
            let k = row * m.cols + col;
            if filled[k] {
                return Err(parse_err(LineProblem::SecondScore {
                    image: rec[0].into(),
                    slot,
                })
                .into());
            }
            filled[k] = true;
            m.data[k] = score;
        }
    }
    if unknown_images > 0 {
        tracing::warn!(
            "{}: {unknown_images} score lines name images outside the benchmark (ignored)",
            path.display()
        );
    }
    match missing_images_error(path, bench, &seen) {
        Some(e) => Err(e),
        None => Ok(m),
    }
}

fn read_safetensors(
    path: &Path,
    bench: &Benchmark,
    vocab: &Vocabulary,
    mapping: &TagMapping,
) -> Result<ScoreMatrix> {
    read_safetensors_files(path, &[path.to_path_buf()], bench, vocab, mapping)
}

/// The shards of a score set read into one matrix: every shard present, of one count, and no
/// benchmark image scored in two of them (a set mixing runs over different image lists).
fn read_score_set(
    dir: &Path,
    bench: &Benchmark,
    vocab: &Vocabulary,
    mapping: &TagMapping,
) -> Result<ScoreMatrix> {
    let files = SCORE_SET.set_files(dir, |problem| {
        EvalError::ScoreSet {
            dir: dir.into(),
            problem,
        }
        .into()
    })?;
    read_safetensors_files(dir, &files, bench, vocab, mapping)
}

/// The safetensors score files `files` read into one matrix, every benchmark image scored and none
/// in two of the files; `source` (the file, or the set's folder) names them in the errors.
fn read_safetensors_files(
    source: &Path,
    files: &[std::path::PathBuf],
    bench: &Benchmark,
    vocab: &Vocabulary,
    mapping: &TagMapping,
) -> Result<ScoreMatrix> {
    let target = RowTarget::new(bench, mapping);
    let mut m = ScoreMatrix::zeros(bench.images.len(), target.mapped.len());
    let mut scored_by: Vec<Option<usize>> = vec![None; bench.images.len()];
    for (part, file) in files.iter().enumerate() {
        for row in fill_from_safetensors(file, &target, vocab, &mut m, SCORE_CHUNK_BYTES)? {
            match scored_by[row] {
                Some(first) if first != part => {
                    return Err(EvalError::ScoreSet {
                        dir: source.into(),
                        problem: format!(
                            "image `{}` is scored in {} and in {} (shards of runs over different \
                             image lists?)",
                            bench.images[row],
                            files[first].display(),
                            file.display()
                        ),
                    }
                    .into())
                }
                _ => scored_by[row] = Some(part),
            }
        }
    }
    let seen: Vec<bool> = scored_by.iter().map(Option::is_some).collect();
    match missing_images_error(source, bench, &seen) {
        Some(e) => Err(e),
        None => Ok(m),
    }
}

/// Where the rows of score files go: each benchmark image's row and the mapped tags' slots, made once
/// for every file read into one matrix.
struct RowTarget<'a> {
    rows: HashMap<&'a str, usize>,
    mapped: Vec<(usize, Slot)>,
}

impl<'a> RowTarget<'a> {
    fn new(bench: &'a Benchmark, mapping: &TagMapping) -> Self {
        RowTarget {
            rows: image_rows(bench),
            mapped: mapping.mapped(),
        }
    }
}

/// Rows of a safetensors score file read at a time: at most this many bytes, so that reading a file
/// of millions of images (as `tag --scores` writes) takes a bounded amount of memory.
const SCORE_CHUNK_BYTES: usize = 64 << 20;

/// Puts the scores of the benchmark images in the safetensors score file `path` into `m`, reading
/// `chunk_bytes` of rows at a time (at least one row); returns the benchmark rows it filled (images
/// outside the benchmark are passed over, though every score is checked).
fn fill_from_safetensors(
    path: &Path,
    target: &RowTarget,
    vocab: &Vocabulary,
    m: &mut ScoreMatrix,
    chunk_bytes: usize,
) -> Result<Vec<usize>> {
    let file = crate::tensors::safetensors_io::SafetensorsFile::open(path)?;
    let shape_error = |shape: Vec<usize>| EvalError::ScoresShape {
        path: path.into(),
        shape,
        slots: vocab.len(),
    };
    let (dtype, shape) = file
        .info("scores")?
        .ok_or_else(|| EvalError::NoScoresTensor { path: path.into() })?;
    if shape.len() != 2 || shape[1] != vocab.len() {
        return Err(shape_error(shape).into());
    }
    let ids: Vec<String> = file
        .metadata()
        .get("image_ids")
        .ok_or_else(|| EvalError::NoImageIds { path: path.into() })
        .and_then(|s| {
            serde_json::from_str(s).map_err(|source| EvalError::ImageIds {
                path: path.into(),
                source,
            })
        })?;
    if ids.len() != shape[0] {
        return Err(EvalError::ImageIdCount {
            path: path.into(),
            ids: ids.len(),
            rows: shape[0],
        }
        .into());
    }
    let slots = vocab.len();
    let row_bytes = slots * dtype.size();
    let per_chunk = (chunk_bytes / row_bytes.max(1)).max(1);
    let mut filled = Vec::with_capacity(target.rows.len().min(ids.len()));
    for first in (0..ids.len()).step_by(per_chunk) {
        let n = per_chunk.min(ids.len() - first);
        let mut bytes = vec![0u8; n * row_bytes];
        if !file.read_at("scores", first * row_bytes, &mut bytes)? {
            return Err(shape_error(shape).into());
        }
        let values = crate::tensors::Tensor::new(dtype, vec![n, slots], bytes)?.to_f32()?;
        if let Some((k, why)) = values
            .iter()
            .enumerate()
            .find_map(|(k, &v)| bad_score(v).map(|why| (k, why)))
        {
            let (r, slot) = (first + k / slots, k % slots);
            return Err(EvalError::BadScore {
                path: path.into(),
                row: r,
                slot,
                image: ids[r].clone(),
                tag: vocab.tags[slot].clone(),
                value: values[k],
                why,
            }
            .into());
        }
        for (r, id) in ids[first..first + n].iter().enumerate() {
            let Some(row) = row_of(&target.rows, id) else {
                continue;
            };
            filled.push(row);
            for (col, &(_, slot)) in target.mapped.iter().enumerate() {
                m.set(row, col, values[r * slots + slot]);
            }
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path) -> (Benchmark, Vocabulary, TagMapping) {
        let vocab = Vocabulary::from_tags(["cat", "dog", "boat"].map(String::from).to_vec());
        std::fs::write(dir.join("t.txt"), "dog\ncat\n").unwrap();
        std::fs::write(dir.join("a.txt"), "i1,cat\ni2,dog\n").unwrap();
        let bench = Benchmark::load(&dir.join("t.txt"), &dir.join("a.txt")).unwrap();
        let mapping = TagMapping::new(&bench.tags, &vocab);
        (bench, vocab, mapping)
    }

    #[test]
    fn csv_by_slot_and_tag_with_header() {
        let d = tempfile::tempdir().unwrap();
        let (bench, vocab, mapping) = fixture(d.path());
        let p = d.path().join("s.csv");
        std::fs::write(
            &p,
            "image_id,tag,score\ni1,0,0.9\ni1,Dog,0.2\ni2,1,0.7\ni2,boat,0.5\nzz,0,1\n",
        )
        .unwrap();
        let m = read_scores(&p, &bench, &vocab, &mapping).unwrap();
        // Columns: dog (slot 1), cat (slot 0); i2's cat is not listed -> 0.
        assert_eq!(m, ScoreMatrix::from_rows(&[vec![0.2, 0.9], vec![0.7, 0.0]]));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let (bench, vocab, mapping) = fixture(d.path());
        let p = d.path().join("s.csv");
        for (text, want) in [
            ("i1,0,0.9\ni2,horse,0.1\n", "s.csv:2: tag `horse`"),
            ("i1,0,0.9\ni2,0,nan\n", "s.csv:2: score `nan`"),
            ("i1,0,0.9\ni1,cat,0.1\n", "s.csv:2: second score"),
            (
                "i1,0,0.9\n",
                "no scores for 1 of the 2 benchmark images (first: i2)",
            ),
            ("i1,7,0.9\n", "slot 7 is outside"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = read_scores(&p, &bench, &vocab, &mapping)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }

    #[test]
    fn written_scores_read_back_in_both_formats() {
        let d = tempfile::tempdir().unwrap();
        let (bench, vocab, mapping) = fixture(d.path());
        for name in ["w.safetensors", "w.csv"] {
            let p = d.path().join(name);
            let mut w = ScoreWriter::create(&p, 3).unwrap();
            // Ids with the image extension match the benchmark's bare ids.
            w.push("i2.jpg", &[0.1, 0.2, 0.3]).unwrap();
            w.push("i1", &[0.4, 0.5, 0.6]).unwrap();
            assert!(w.push("i3", &[0.0]).is_err());
            assert_eq!(w.len(), 2);
            w.finish().unwrap();
            let m = read_scores(&p, &bench, &vocab, &mapping).unwrap();
            assert_eq!(
                m,
                ScoreMatrix::from_rows(&[vec![0.5, 0.4], vec![0.2, 0.1]]),
                "{name}"
            );
        }
        // Dropped before finish: nothing is left.
        let p = d.path().join("x.safetensors");
        let mut w = ScoreWriter::create(&p, 3).unwrap();
        w.push("i1", &[0.0; 3]).unwrap();
        drop(w);
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tagfix"))
            .collect();
        assert!(left.is_empty() && !p.exists());
    }

    /// The header's size is known before the file is finished (an upper bound, close to the truth
    /// whatever the ids hold), so ids that would make the file unreadable are refused up front.
    #[test]
    fn image_ids_beyond_the_header_limit_are_refused_before_scoring() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.safetensors");
        let ids = [
            "plain.jpg",
            "quote\"d.jpg",
            "back\\slash.jpg",
            "ünï/cödé.jpg",
            "tab\t.jpg",
        ];
        let mut w = ScoreWriter::create(&p, 2).unwrap();
        w.check_ids_fit(ids).unwrap();
        for id in ids {
            w.push(id, &[0.5, 0.25]).unwrap();
        }
        let estimate = w.header_bytes;
        w.finish().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let actual = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert!(
            actual <= estimate && estimate - actual < HEADER_BASE,
            "{actual} vs {estimate}"
        );

        let mut w = ScoreWriter::create(&d.path().join("t.safetensors"), 2).unwrap();
        w.header_limit = HEADER_BASE + 3 * id_header_bytes("image-0.jpg");
        let many: Vec<String> = (0..4).map(|i| format!("image-{i}.jpg")).collect();
        let err = w
            .check_ids_fit(many.iter().map(String::as_str))
            .unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Usage);
        assert!(
            err.to_string().contains("the ids of 4 images do not fit"),
            "{err}"
        );
        for id in &many[..3] {
            w.push(id, &[0.0, 1.0]).unwrap();
        }
        let err = w.push(&many[3], &[0.0, 1.0]).unwrap_err().to_string();
        assert!(err.contains("write CSV scores"), "{err}");
        // CSV has no header to outgrow.
        let csv = ScoreWriter::create(&d.path().join("t.csv"), 2).unwrap();
        csv.check_ids_fit(many.iter().map(String::as_str)).unwrap();
    }

    #[test]
    fn safetensors_rows_by_image_id() {
        let d = tempfile::tempdir().unwrap();
        let (bench, vocab, mapping) = fixture(d.path());
        let p = d.path().join("s.safetensors");
        let set = crate::tensors::TensorSet {
            tensors: vec![(
                "scores".into(),
                crate::tensors::Tensor::from_f32(vec![2, 3], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
                    .unwrap(),
            )],
            metadata: [("image_ids".to_string(), "[\"i2\", \"i1\"]".to_string())].into(),
        };
        crate::tensors::safetensors_io::write(&p, &set).unwrap();
        let m = read_scores(&p, &bench, &vocab, &mapping).unwrap();
        // i1 is row 1 (0.4 0.5 0.6), i2 row 0; columns dog (slot 1), cat (slot 0).
        assert_eq!(m, ScoreMatrix::from_rows(&[vec![0.5, 0.4], vec![0.2, 0.1]]));
    }

    /// A file read a chunk at a time (here one or two rows, f16) fills the matrix as read whole, and a
    /// bad score in a row outside the benchmark is still refused, named by its row and slot.
    #[test]
    fn safetensors_read_in_chunks_equals_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let (bench, vocab, mapping) = fixture(d.path());
        let p = d.path().join("s.safetensors");
        let write = |values: &[f32]| {
            let t =
                crate::tensors::Tensor::from_f32_as(crate::tensors::DType::F16, vec![5, 3], values)
                    .unwrap();
            let set = crate::tensors::TensorSet {
                tensors: vec![("scores".into(), t)],
                metadata: [(
                    "image_ids".to_string(),
                    r#"["x", "i2", "y", "i1", "z"]"#.to_string(),
                )]
                .into(),
            };
            crate::tensors::safetensors_io::write(&p, &set).unwrap();
        };
        let mut values: Vec<f32> = (0..15).map(|k| k as f32 / 16.0).collect();
        write(&values);
        let read = |chunk_bytes| {
            let mut m = ScoreMatrix::zeros(2, 2);
            let target = RowTarget::new(&bench, &mapping);
            let rows = fill_from_safetensors(&p, &target, &vocab, &mut m, chunk_bytes)?;
            Ok::<_, Error>((m, rows))
        };
        let whole = read(1 << 20).unwrap();
        assert_eq!(whole.1, vec![1, 0]);
        // i1 (file row 3: 9/16 10/16 11/16) is benchmark row 0; columns dog (slot 1), cat (slot 0).
        assert_eq!(whole.0.row(0), &[10.0 / 16.0, 9.0 / 16.0]);
        for chunk_bytes in [1, 6, 12] {
            assert_eq!(
                read(chunk_bytes).unwrap(),
                whole,
                "{chunk_bytes} bytes a chunk"
            );
        }
        values[14] = f32::NAN; // image z, outside the benchmark, in the last chunk
        write(&values);
        for chunk_bytes in [1, 12, 1 << 20] {
            let err = read(chunk_bytes).unwrap_err().to_string();
            assert!(err.contains("`scores`[4, 2] (image `z`"), "{err}");
        }
    }
}
