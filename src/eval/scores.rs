//! Prediction scores for `tagfix eval`, from a file (format in `docs/formats.md`, "Prediction
//! scores"):
//! - CSV `image_id,slot_or_tag,score` (optional header): the second column is a slot number or a
//!   tag name (exact, then normalised); pairs not listed score 0; every benchmark image must appear.
//! - safetensors with a 2-D tensor `scores` [images, slots] (f32/f16/bf16/f64) and the metadata
//!   key `image_ids`, a JSON array of the row's image ids.

use super::{Benchmark, TagMapping};
use crate::error::{Error, Result};
use crate::vocab::{normalize_tag, Slot, Vocabulary};
use std::collections::HashMap;
use std::path::Path;

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

/// Reads a prediction file (by extension: `.csv`, `.safetensors`) into the benchmark's matrix.
pub fn read_scores(
    path: &Path,
    bench: &Benchmark,
    vocab: &Vocabulary,
    mapping: &TagMapping,
) -> Result<ScoreMatrix> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(path, bench, vocab, mapping),
        Some("safetensors") => read_safetensors(path, bench, vocab, mapping),
        _ => Err(Error::invalid(
            path,
            "prediction scores must be a .csv (image_id,slot_or_tag,score) or a .safetensors file",
        )),
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
        Error::invalid(
            path,
            format!(
                "no scores for {} of the {} benchmark images (first: {})",
                missing.len(),
                bench.images.len(),
                missing
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
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
        .map_err(|e| Error::invalid(path, e.to_string()))?;
    for (i, rec) in reader.records().enumerate() {
        let line = i + 1;
        let parse_err = |message: String| Error::Parse {
            path: path.to_path_buf(),
            line,
            message,
        };
        let rec = rec.map_err(|e| parse_err(e.to_string()))?;
        if rec.len() != 3 {
            return Err(parse_err(format!(
                "expected 3 fields (image_id,slot_or_tag,score), found {}",
                rec.len()
            )));
        }
        let score = rec[2].trim();
        let score = match score.parse::<f32>() {
            Ok(v) => match bad_score(v) {
                None => v,
                Some(why) => return Err(parse_err(format!("score `{score}`: {why}"))),
            },
            _ if line == 1 => continue, // header
            _ => return Err(parse_err(format!("score `{score}` is not a number"))),
        };
        let Some(&row) = rows.get(rec[0].trim()) else {
            unknown_images += 1;
            continue;
        };
        seen[row] = true;
        let key = rec[1].trim();
        let slot = match key.parse::<usize>() {
            Ok(s) if s < vocab.len() => s,
            Ok(s) => {
                return Err(parse_err(format!(
                    "slot {s} is outside the vocabulary ({} slots)",
                    vocab.len()
                )))
            }
            Err(_) => *exact
                .get(key)
                .or_else(|| normalized.get(&normalize_tag(key)))
                .ok_or_else(|| parse_err(format!("tag `{key}` is not in the vocabulary")))?,
        };
        for &col in columns.get(&slot).into_iter().flatten() {
            let k = row * m.cols + col;
            if filled[k] {
                return Err(parse_err(format!(
                    "second score for image `{}` and slot {slot}",
                    &rec[0]
                )));
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
    let set = crate::tensors::safetensors_io::read(path)?;
    let t = set
        .get("scores")
        .ok_or_else(|| Error::invalid(path, "no tensor `scores` [images, slots]"))?;
    if t.shape.len() != 2 || t.shape[1] != vocab.len() {
        return Err(Error::invalid(
            path,
            format!(
                "`scores` has shape {:?}, expected [images, {}]",
                t.shape,
                vocab.len()
            ),
        ));
    }
    let ids: Vec<String> = set
        .metadata
        .get("image_ids")
        .ok_or_else(|| {
            Error::invalid(
                path,
                "no metadata `image_ids` (a JSON array of image ids, one per row)",
            )
        })
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| {
                Error::invalid(
                    path,
                    format!("metadata `image_ids` is not a JSON array of strings: {e}"),
                )
            })
        })?;
    if ids.len() != t.shape[0] {
        return Err(Error::invalid(
            path,
            format!(
                "{} image ids for {} rows of `scores`",
                ids.len(),
                t.shape[0]
            ),
        ));
    }
    let values = t.to_f32()?;
    if let Some((k, why)) = values
        .iter()
        .enumerate()
        .find_map(|(k, &v)| bad_score(v).map(|why| (k, why)))
    {
        let (r, slot) = (k / vocab.len(), k % vocab.len());
        return Err(Error::invalid(
            path,
            format!(
                "`scores`[{r}, {slot}] (image `{}`, slot {slot} `{}`) is {}: {why}",
                ids[r], vocab.tags[slot], values[k]
            ),
        ));
    }
    let rows = image_rows(bench);
    let mapped = mapping.mapped();
    let mut m = ScoreMatrix::zeros(bench.images.len(), mapped.len());
    let mut seen = vec![false; bench.images.len()];
    for (r, id) in ids.iter().enumerate() {
        let Some(&row) = rows.get(id.as_str()) else {
            continue;
        };
        seen[row] = true;
        for (col, &(_, slot)) in mapped.iter().enumerate() {
            m.set(row, col, values[r * vocab.len() + slot]);
        }
    }
    match missing_images_error(path, bench, &seen) {
        Some(e) => Err(e),
        None => Ok(m),
    }
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
}
