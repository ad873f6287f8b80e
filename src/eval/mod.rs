//! Evaluation of tag predictions on a benchmark: mAP and precision / recall / F1 at per-class
//! thresholds, with benchmark tags mapped to vocabulary slots by name and slots the training data
//! lacks (per the slot manifest) reported separately. Feature-free: scores come from a file
//! ([`scores`]) or, during training, from memory ([`evaluate`]).

pub mod benchmark;
pub mod fit;
pub mod metrics;
pub mod output;
pub mod scores;

pub use benchmark::{Benchmark, LabelForm};
pub use metrics::{average_precision, Counts, RamSummary, Summary};
pub use scores::{read_scores, ScoreMatrix, ScoreWriter};

use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{SlotManifest, SlotStatus};
use crate::vocab::{normalize_tag, Slot, Vocabulary};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a benchmark, a threshold setting or a score file cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("--threshold must lie in [0, 1], got {0}")]
    ThresholdFlag(f32),

    #[error("{path}: {count} thresholds for a vocabulary of {slots} slots")]
    ThresholdCount {
        path: PathBuf,
        count: usize,
        slots: usize,
    },

    #[error("{path}:{line}: threshold `{text}` is not a number in [0, 1]")]
    ThresholdValue {
        path: PathBuf,
        line: usize,
        text: String,
    },

    #[error(
        "vocabulary {vocab} has no threshold sidecar: pass --thresholds FILE or --threshold P"
    )]
    NoThresholds { vocab: PathBuf },

    #[error(
        "score matrix is {rows}x{cols}, the benchmark needs {images}x{tags} (images x mapped tags)"
    )]
    MatrixShape {
        rows: usize,
        cols: usize,
        images: usize,
        tags: usize,
    },

    #[error("{count} thresholds for a vocabulary of {slots} slots")]
    ThresholdsForVocabulary { count: usize, slots: usize },

    #[error("{count} scores do not form rows of {slots} slots")]
    ScoreRows { count: usize, slots: usize },

    #[error("{path}: holds {} files ending in `{suffix}` ({}): keep one benchmark per folder, or pass the files themselves", .files.len(), .files.join(", "))]
    SeveralBenchmarks {
        path: PathBuf,
        suffix: String,
        files: Vec<String>,
    },

    #[error("{path}: not a benchmark folder: expected *_taglist.txt and *_annots.txt")]
    NotABenchmark { path: PathBuf },

    #[error("{path}:{line}: empty tag")]
    EmptyTag { path: PathBuf, line: usize },

    #[error(
        "{path}:{line}: tag `{tag}` is not in {taglist} (and the labels are not tag-list indices)"
    )]
    UnknownLabel {
        path: PathBuf,
        line: usize,
        tag: String,
        taglist: PathBuf,
    },

    #[error("{path}:{line}: empty image id")]
    EmptyImageId { path: PathBuf, line: usize },

    #[error("scores output {path} must end in .safetensors or .csv")]
    ScoresOutputType { path: PathBuf },

    /// The image ids of a safetensors score file live in its header, which every reader limits.
    #[error(
        "{path}: the ids of {images} images do not fit a safetensors header ({bytes} bytes; readers          take at most {limit}): write CSV scores (--scores FILE.csv) or score the images in parts"
    )]
    ScoresHeader {
        path: PathBuf,
        images: usize,
        bytes: usize,
        limit: usize,
    },

    #[error("{got} scores for {slots} slots")]
    RowLength { got: usize, slots: usize },

    #[error(
        "{path}: prediction scores must be a .csv (image_id,slot_or_tag,score) or a .safetensors file"
    )]
    ScoresInputType { path: PathBuf },

    /// A folder of score shards (`tagfix tag --shard I/N --scores DIR`) that do not form one set.
    #[error("score set {dir}: {problem}")]
    ScoreSet { dir: PathBuf, problem: String },

    #[error("{path}: no scores for {} of the {images} benchmark images (first: {})", .missing.len(), .missing.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    MissingImages {
        path: PathBuf,
        images: usize,
        missing: Vec<String>,
    },

    #[error("{path}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },

    #[error("{path}:{line}: {problem}")]
    ScoreLine {
        path: PathBuf,
        line: usize,
        problem: scores::LineProblem,
    },

    #[error("{path}: no tensor `scores` [images, slots]")]
    NoScoresTensor { path: PathBuf },

    #[error("{path}: `scores` has shape {shape:?}, expected [images, {slots}]")]
    ScoresShape {
        path: PathBuf,
        shape: Vec<usize>,
        slots: usize,
    },

    #[error("{path}: no metadata `image_ids` (a JSON array of image ids, one per row)")]
    NoImageIds { path: PathBuf },

    #[error("{path}: metadata `image_ids` is not a JSON array of strings")]
    ImageIds {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {ids} image ids for {rows} rows of `scores`")]
    ImageIdCount {
        path: PathBuf,
        ids: usize,
        rows: usize,
    },

    #[error(
        "{path}: `scores`[{row}, {slot}] (image `{image}`, slot {slot} `{tag}`) is {value}: {why}"
    )]
    BadScore {
        path: PathBuf,
        row: usize,
        slot: Slot,
        image: String,
        tag: String,
        value: f32,
        why: &'static str,
    },
}

impl EvalError {
    /// Flags and outputs are usage errors; files that do not fit, input errors.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EvalError::ThresholdFlag(_)
            | EvalError::NoThresholds { .. }
            | EvalError::ScoresOutputType { .. }
            | EvalError::ScoresHeader { .. } => ErrorKind::Usage,
            _ => ErrorKind::Input,
        }
    }
}

/// How a benchmark tag found its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// Same string as the vocabulary's tag.
    Exact,
    /// Same after `normalize_tag` (case, spaces/underscores, Unicode NFC).
    Normalized,
}

/// One benchmark tag and its slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappedTag {
    pub tag: String,
    pub slot: Option<Slot>,
    pub matched: Option<MatchKind>,
}

/// Benchmark tags mapped to vocabulary slots (index = benchmark tag index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagMapping {
    pub tags: Vec<MappedTag>,
}

impl TagMapping {
    /// Maps by exact name, then by normalised name (first slot wins when several share it).
    pub fn new(benchmark_tags: &[String], vocab: &Vocabulary) -> Self {
        let mut exact: HashMap<&str, Slot> = HashMap::new();
        let mut normalized: HashMap<String, Slot> = HashMap::new();
        for (slot, t) in vocab.tags.iter().enumerate() {
            exact.entry(t.as_str()).or_insert(slot);
            normalized.entry(normalize_tag(t)).or_insert(slot);
        }
        let tags = benchmark_tags
            .iter()
            .map(|t| {
                let (slot, matched) = match exact.get(t.as_str()) {
                    Some(s) => (Some(*s), Some(MatchKind::Exact)),
                    None => match normalized.get(&normalize_tag(t)) {
                        Some(s) => (Some(*s), Some(MatchKind::Normalized)),
                        None => (None, None),
                    },
                };
                MappedTag {
                    tag: t.clone(),
                    slot,
                    matched,
                }
            })
            .collect();
        TagMapping { tags }
    }

    /// Benchmark tags without a slot.
    pub fn unmapped(&self) -> Vec<&str> {
        self.tags
            .iter()
            .filter(|m| m.slot.is_none())
            .map(|m| m.tag.as_str())
            .collect()
    }

    /// `(benchmark tag index, slot)` of every mapped tag.
    pub fn mapped(&self) -> Vec<(usize, Slot)> {
        self.tags
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.slot.map(|s| (i, s)))
            .collect()
    }
}

/// Per-slot decision thresholds and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub values: Vec<f32>,
    pub source: String,
}

impl Thresholds {
    /// One threshold for every slot.
    pub fn uniform(value: f32, slots: usize) -> Self {
        Thresholds {
            values: vec![value; slots],
            source: format!("single threshold {value}"),
        }
    }

    /// `--threshold P`: one threshold for every slot, which must lie in [0, 1] (NaN would silently
    /// call every score negative).
    pub fn from_flag(value: f32, slots: usize) -> Result<Self> {
        if !(0.0..=1.0).contains(&value) {
            return Err(EvalError::ThresholdFlag(value).into());
        }
        Ok(Self::uniform(value, slots))
    }

    /// A threshold file aligned with the vocabulary (line i = slot i, as
    /// `ram_tag_list_threshold.txt`); errors name file and line.
    pub fn read(path: &Path, slots: usize) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let lines: Vec<&str> = text.lines().collect();
        let lines = match lines.split_last() {
            Some((last, rest)) if last.trim().is_empty() => rest.to_vec(),
            _ => lines,
        };
        if lines.len() != slots {
            return Err(EvalError::ThresholdCount {
                path: path.into(),
                count: lines.len(),
                slots,
            }
            .into());
        }
        let values = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|v| (0.0..=1.0).contains(v))
                    .ok_or_else(|| EvalError::ThresholdValue {
                        path: path.to_path_buf(),
                        line: i + 1,
                        text: l.trim().into(),
                    })
            })
            .collect::<Result<Vec<f32>, _>>()?;
        Ok(Thresholds {
            values,
            source: path.display().to_string(),
        })
    }

    /// `--thresholds FILE`, else `--threshold P` for every slot, else the vocabulary preset's
    /// sidecar, else `fallback` for every slot (`None`: an error asking for one of the flags).
    pub fn choose(
        file: Option<&Path>,
        value: Option<f32>,
        vocab: &Vocabulary,
        fallback: Option<f32>,
    ) -> Result<Self> {
        if let Some(path) = file {
            return Self::read(path, vocab.len());
        }
        if let Some(v) = value {
            return Self::from_flag(v, vocab.len());
        }
        if let Some(t) = Self::from_preset(vocab) {
            return t;
        }
        match fallback {
            Some(v) => Ok(Thresholds {
                source: format!("{v} for every slot (no threshold file)"),
                ..Self::uniform(v, vocab.len())
            }),
            None => Err(EvalError::NoThresholds {
                vocab: vocab.path.clone(),
            }
            .into()),
        }
    }

    /// RAM++'s open-set thresholds: 0.5 for every slot (`inference_ram_plus_openset.py` sets
    /// `class_threshold = torch.ones(num_class) * 0.5` with new label embeddings).
    pub fn open_set(slots: usize) -> Self {
        Thresholds {
            source: format!(
                "{OPEN_SET_THRESHOLD} for every slot (open-set label embeddings, as \
                 inference_ram_plus_openset.py)"
            ),
            ..Self::uniform(OPEN_SET_THRESHOLD, slots)
        }
    }

    /// The vocabulary preset's `threshold` sidecar (`ram_tag_list_threshold.txt` for `ram`).
    pub fn from_preset(vocab: &Vocabulary) -> Option<Result<Self>> {
        let preset = vocab.preset.as_ref()?;
        let (_, path) = preset.sidecars.iter().find(|(n, _)| n == "threshold")?;
        Some(Self::read(path, vocab.len()))
    }
}

/// The threshold RAM++'s open-set inference gives every new tag.
pub const OPEN_SET_THRESHOLD: f32 = 0.5;

/// Whether a slot is covered by the training data (from the slot manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotCoverage {
    Present,
    Absent,
    /// No manifest given.
    Unknown,
}

/// Metrics of one mapped benchmark tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassResult {
    pub tag: String,
    pub slot: Slot,
    pub vocab_tag: String,
    pub matched: MatchKind,
    pub coverage: SlotCoverage,
    pub threshold: f32,
    #[serde(flatten)]
    pub counts: Counts,
    /// `None` when the benchmark has no positive for the tag (left out of every average).
    pub ap: Option<f64>,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// AP, precision and recall as RAM's `get_mAP` / `get_PR` compute them
    /// ([`metrics::ram_average_precision`], [`metrics::ram_precision_recall`]).
    #[serde(default)]
    pub ram_ap: f64,
    #[serde(default)]
    pub ram_precision: f64,
    #[serde(default)]
    pub ram_recall: f64,
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub benchmark: String,
    pub images: usize,
    pub benchmark_tags: usize,
    pub thresholds: String,
    /// Over mapped tags with positives whose slot is not absent (all of them without a manifest).
    pub main: Option<Summary>,
    /// Over mapped tags with positives whose slot the manifest marks absent.
    pub absent: Option<Summary>,
    /// Over every mapped tag (absent slots and tags without positives included), as
    /// `batch_inference.py` reports mAP / CP / CR.
    #[serde(default)]
    pub ram: Option<RamSummary>,
    /// Benchmark tags no slot matched (not evaluated).
    pub unmapped: Vec<String>,
    /// Mapped tags without any positive image (not averaged).
    pub no_positives: Vec<String>,
    pub classes: Vec<ClassResult>,
}

/// Evaluates scores on a benchmark. `scores[i][j]` is image i's score (a probability, compared
/// with `> threshold`) for the j-th mapped tag of `mapping` (columns in [`TagMapping::mapped`]
/// order); build it with [`ScoreMatrix::for_benchmark`] or [`gather_columns`].
pub fn evaluate(
    bench: &Benchmark,
    vocab: &Vocabulary,
    mapping: &TagMapping,
    scores: &ScoreMatrix,
    thresholds: &Thresholds,
    manifest: Option<&SlotManifest>,
) -> Result<EvalReport> {
    let mapped = mapping.mapped();
    if scores.rows != bench.images.len() || scores.cols != mapped.len() {
        return Err(EvalError::MatrixShape {
            rows: scores.rows,
            cols: scores.cols,
            images: bench.images.len(),
            tags: mapped.len(),
        }
        .into());
    }
    if thresholds.values.len() != vocab.len() {
        return Err(EvalError::ThresholdsForVocabulary {
            count: thresholds.values.len(),
            slots: vocab.len(),
        }
        .into());
    }
    let classes: Vec<ClassResult> = mapped
        .par_iter()
        .enumerate()
        .map(|(col, &(tag, slot))| {
            let targets = bench.targets(tag);
            let column = scores.column(col);
            let threshold = thresholds.values[slot];
            let counts = Counts::at_threshold(&column, &targets, threshold);
            let (ram_precision, ram_recall) =
                metrics::ram_precision_recall(&column, &targets, threshold);
            let coverage = match manifest {
                None => SlotCoverage::Unknown,
                Some(m) => match m.slots[slot].status {
                    SlotStatus::Present => SlotCoverage::Present,
                    SlotStatus::Absent => SlotCoverage::Absent,
                },
            };
            ClassResult {
                tag: bench.tags[tag].clone(),
                slot,
                vocab_tag: vocab.tags[slot].clone(),
                matched: mapping.tags[tag].matched.expect("mapped"),
                coverage,
                threshold,
                ap: average_precision(&column, &targets),
                precision: counts.precision(),
                recall: counts.recall(),
                f1: counts.f1(),
                counts,
                ram_ap: metrics::ram_average_precision(&column, &targets),
                ram_precision,
                ram_recall,
            }
        })
        .collect();
    let summary = |absent: bool| {
        Summary::of(classes.iter().filter_map(|c| {
            let ap = c.ap?;
            ((c.coverage == SlotCoverage::Absent) == absent).then_some((ap, c.counts))
        }))
    };
    Ok(EvalReport {
        benchmark: bench.name.clone(),
        images: bench.images.len(),
        benchmark_tags: bench.tags.len(),
        thresholds: thresholds.source.clone(),
        main: summary(false),
        absent: summary(true),
        ram: RamSummary::of(
            classes
                .iter()
                .map(|c| (c.ram_ap, c.ram_precision, c.ram_recall)),
        ),
        unmapped: mapping.unmapped().into_iter().map(String::from).collect(),
        no_positives: classes
            .iter()
            .filter(|c| c.ap.is_none())
            .map(|c| c.tag.clone())
            .collect(),
        classes,
    })
}

/// For the training loop: selects the mapped tags' columns from full per-slot scores
/// (`full[i * slots + s]` = image i, slot s; rows in benchmark image order).
pub fn gather_columns(full: &[f32], slots: usize, mapping: &TagMapping) -> Result<ScoreMatrix> {
    if slots == 0 || full.len() % slots != 0 {
        return Err(EvalError::ScoreRows {
            count: full.len(),
            slots,
        }
        .into());
    }
    let rows = full.len() / slots;
    let mapped = mapping.mapped();
    let mut m = ScoreMatrix::zeros(rows, mapped.len());
    for r in 0..rows {
        for (c, &(_, slot)) in mapped.iter().enumerate() {
            m.set(r, c, full[r * slots + slot]);
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5-tag vocabulary, a 4-image benchmark with 4 tags (one unmapped, one matched only after
    /// normalisation, one without positives), hand-computed metrics.
    #[test]
    fn hand_computed_map_and_prf() {
        let vocab = Vocabulary::from_tags(
            ["cat", "dog", "red car", "tree", "boat"]
                .map(String::from)
                .to_vec(),
        );
        let d = tempfile::tempdir().unwrap();
        let tl = d.path().join("t.txt");
        std::fs::write(&tl, "cat\nDog\nunicorn\nboat\n").unwrap();
        let an = d.path().join("a.txt");
        // cat: images 1, 3; Dog: images 1, 2, 4; boat: none.
        std::fs::write(&an, "i1,cat,Dog\ni2,Dog\ni3,cat\ni4,Dog,unicorn\n").unwrap();
        let bench = Benchmark::load(&tl, &an).unwrap();
        let mapping = TagMapping::new(&bench.tags, &vocab);
        assert_eq!(mapping.unmapped(), vec!["unicorn"]);
        assert_eq!(mapping.mapped(), vec![(0, 0), (1, 1), (3, 4)]);
        assert_eq!(mapping.tags[1].matched, Some(MatchKind::Normalized));
        // Columns: cat, Dog, boat.
        let scores = ScoreMatrix::from_rows(&[
            vec![0.9, 0.6, 0.1], // i1: cat+, Dog+
            vec![0.8, 0.7, 0.2], // i2: Dog+
            vec![0.3, 0.2, 0.3], // i3: cat+
            vec![0.1, 0.5, 0.4], // i4: Dog+
        ]);
        let mut th = Thresholds::uniform(0.5, 5);
        th.values[1] = 0.55;
        let r = evaluate(&bench, &vocab, &mapping, &scores, &th, None).unwrap();
        // cat: ranked 0.9(+) 0.8(-) 0.3(+) 0.1(-): AP = (1/1 + 2/3)/2 = 5/6.
        //   > 0.5 predicts i1, i2: TP 1 -> P 1/2, R 1/2, F1 1/2.
        // Dog: ranked 0.7(+) 0.6(+) 0.5(+) 0.2(-): AP = 1.
        //   > 0.55 predicts i1, i2: TP 2 -> P 1, R 2/3, F1 0.8.
        // boat: no positive -> no AP, not averaged.
        let cat = &r.classes[0];
        assert!((cat.ap.unwrap() - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!((cat.precision, cat.recall, cat.f1), (0.5, 0.5, 0.5));
        let dog = &r.classes[1];
        assert_eq!(dog.ap, Some(1.0));
        assert!((dog.f1 - 0.8).abs() < 1e-12);
        assert_eq!(r.no_positives, vec!["boat"]);
        let m = r.main.unwrap();
        assert_eq!(m.classes, 2);
        // mAP = (5/6 + 1)/2 = 11/12; CP = (1/2 + 1)/2 = 3/4; CR = (1/2 + 2/3)/2 = 7/12;
        // CF1 = 2·(3/4)(7/12)/(3/4 + 7/12) = 21/32; macro F1 = (1/2 + 4/5)/2 = 13/20;
        // overall: TP 3, predicted 4, positives 5 -> OP 3/4, OR 3/5, OF1 2/3.
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} != {b}");
        close(m.map, 11.0 / 12.0);
        close(m.cp, 0.75);
        close(m.cr, 7.0 / 12.0);
        close(m.cf1, 21.0 / 32.0);
        close(m.macro_f1, 13.0 / 20.0);
        close(m.op, 0.75);
        close(m.or, 0.6);
        close(m.of1, 2.0 / 3.0);
        assert_eq!(r.absent, None);
        // As batch_inference.py: every mapped tag, boat (no positive) with AP 0, P and R at
        // score >= threshold with RAM's epsilons. Dog ranks i2, i1, i4 (all +) first: AP 3/3.
        let ram = r.ram.unwrap();
        assert_eq!(ram.classes, 3);
        close(
            ram.map,
            ((1.0 + 2.0 / 3.0) / (2.0 + 1e-8) + 3.0 / (3.0 + 1e-8)) / 3.0,
        );
        // cat >= 0.5: i1+, i2- -> P 1/2, R 1/2; Dog >= 0.55: i1+, i2+ -> P 1, R 2/3; boat: 0, 0.
        close(ram.cp, (1.0 / (2.0 + 1e-9) + 2.0 / (2.0 + 1e-9)) / 3.0);
        close(ram.cr, (1.0 / (2.0 + 1e-9) + 2.0 / (3.0 + 1e-9)) / 3.0);

        // With a manifest marking `dog` (slot 1) absent, Dog moves to the absent group.
        let manifest = SlotManifest::from_counts(&vocab, &[3, 0, 1, 1, 1], &[0; 5], vec![], 0);
        let r = evaluate(&bench, &vocab, &mapping, &scores, &th, Some(&manifest)).unwrap();
        close(r.main.unwrap().map, 5.0 / 6.0);
        assert_eq!(r.absent.unwrap().map, 1.0);
        assert_eq!(r.classes[1].coverage, SlotCoverage::Absent);

        // The same through full per-slot rows.
        let full: Vec<f32> = (0..4)
            .flat_map(|i| {
                let row = scores.row(i);
                vec![row[0], row[1], 0.0, 0.0, row[2]]
            })
            .collect();
        assert_eq!(gather_columns(&full, 5, &mapping).unwrap(), scores);
    }
}
