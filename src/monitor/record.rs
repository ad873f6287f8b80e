//! The per-step training record (`RUN_DIR/metrics.jsonl`): one JSON object per optimizer step,
//! appended and flushed line by line so a crashed run keeps every finished step, and read back by a
//! streaming reader that names `file:line` on a malformed line.

use super::MonitorError;
use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The loss terms of RAM++ training, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossTerm {
    /// Asymmetric tagging loss (γ− 7) over the tag logits.
    Tag,
    /// Image–text alignment loss (asymmetric, γ− 4, diagonal target).
    Align,
    /// CLIP distillation (L1 between the image embedding and the teacher's).
    Dis,
}

impl LossTerm {
    /// Every term, in report order.
    pub const ALL: [LossTerm; 3] = [LossTerm::Tag, LossTerm::Align, LossTerm::Dis];

    /// The name used in JSON, logs and plots.
    pub fn name(self) -> &'static str {
        match self {
            LossTerm::Tag => "tag",
            LossTerm::Align => "align",
            LossTerm::Dis => "dis",
        }
    }
}

display_by_name!(LossTerm);

/// A parameter group of the RAM++ model, for per-group gradient and update norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleGroup {
    /// `visual_encoder.*` (Swin).
    ImageEncoder,
    /// `tagging_head.*` and `fc.*` (query2label BERT layers and the per-tag classifier).
    TaggingHead,
    /// `image_proj.*`, `wordvec_proj.*` and `reweight_scale`.
    Projections,
    /// `label_embed` (the per-description tag embeddings).
    LabelEmbed,
}

impl ModuleGroup {
    /// Every group, in report order.
    pub const ALL: [ModuleGroup; 4] = [
        ModuleGroup::ImageEncoder,
        ModuleGroup::TaggingHead,
        ModuleGroup::Projections,
        ModuleGroup::LabelEmbed,
    ];

    /// The name used in JSON, logs and plots.
    pub fn name(self) -> &'static str {
        match self {
            ModuleGroup::ImageEncoder => "image_encoder",
            ModuleGroup::TaggingHead => "tagging_head",
            ModuleGroup::Projections => "projections",
            ModuleGroup::LabelEmbed => "label_embed",
        }
    }
}

display_by_name!(ModuleGroup);

/// One loss term at one step: as computed (`raw`) and times its weight (`weighted`, what enters the
/// total). Non-finite values are written as JSON `null` and read back as NaN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TermValue {
    #[serde(with = "finite_or_null")]
    pub raw: f64,
    #[serde(with = "finite_or_null")]
    pub weighted: f64,
}

impl TermValue {
    /// A term with its weight applied.
    pub fn new(raw: f64, weight: f64) -> Self {
        TermValue {
            raw,
            weighted: raw * weight,
        }
    }
}

/// The loss terms of one step. A term the run does not compute (e.g. no distillation teacher) is
/// omitted from the JSON and `None` here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<TermValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align: Option<TermValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dis: Option<TermValue>,
}

impl Losses {
    /// The value of one term, if the run computes it.
    pub fn get(&self, term: LossTerm) -> Option<TermValue> {
        match term {
            LossTerm::Tag => self.tag,
            LossTerm::Align => self.align,
            LossTerm::Dis => self.dis,
        }
    }

    /// Sets one term.
    pub fn set(&mut self, term: LossTerm, value: TermValue) {
        match term {
            LossTerm::Tag => self.tag = Some(value),
            LossTerm::Align => self.align = Some(value),
            LossTerm::Dis => self.dis = Some(value),
        }
    }

    /// The terms present, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (LossTerm, TermValue)> + '_ {
        LossTerm::ALL
            .into_iter()
            .filter_map(|t| self.get(t).map(|v| (t, v)))
    }
}

/// L2 norms in total and per module group. `total` is the norm over all trainable parameters
/// (`sqrt` of the sum of the groups' squares); a group with no trainable parameter (e.g. frozen
/// label embeddings) is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupNorms {
    #[serde(with = "finite_or_null")]
    pub total: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_encoder: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagging_head: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projections: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_embed: Option<f64>,
}

impl GroupNorms {
    /// Builds the norms from per-group values; `total` is their root sum of squares.
    pub fn from_groups(groups: impl IntoIterator<Item = (ModuleGroup, f64)>) -> Self {
        let mut norms = GroupNorms::default();
        let mut sq = 0.0;
        for (g, v) in groups {
            sq += v * v;
            norms.set(g, v);
        }
        norms.total = sq.sqrt();
        norms
    }

    /// The norm of one group, if it has trainable parameters.
    pub fn get(&self, group: ModuleGroup) -> Option<f64> {
        match group {
            ModuleGroup::ImageEncoder => self.image_encoder,
            ModuleGroup::TaggingHead => self.tagging_head,
            ModuleGroup::Projections => self.projections,
            ModuleGroup::LabelEmbed => self.label_embed,
        }
    }

    /// Sets the norm of one group.
    pub fn set(&mut self, group: ModuleGroup, value: f64) {
        let slot = match group {
            ModuleGroup::ImageEncoder => &mut self.image_encoder,
            ModuleGroup::TaggingHead => &mut self.tagging_head,
            ModuleGroup::Projections => &mut self.projections,
            ModuleGroup::LabelEmbed => &mut self.label_embed,
        };
        *slot = Some(value);
    }

    /// The groups present, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (ModuleGroup, f64)> + '_ {
        ModuleGroup::ALL
            .into_iter()
            .filter_map(|g| self.get(g).map(|v| (g, v)))
    }
}

/// One optimizer step of a training run: one line of `RUN_DIR/metrics.jsonl`.
///
/// Unknown fields are ignored on read, so later versions may add fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer step, counted from 1 (after this many updates).
    pub step: u64,
    /// Epoch the step belongs to, counted from 0.
    pub epoch: u64,
    /// Learning rate used for this update (of the main parameter group).
    pub lr: f64,
    /// Each loss term raw and weighted (averaged over the step's micro-batches).
    pub loss: Losses,
    /// The weighted sum that was back-propagated. `null` in JSON when non-finite.
    #[serde(with = "finite_or_null")]
    pub total: f64,
    /// Gradient norms before clipping, in total and per module group.
    pub grad_norm: GroupNorms,
    /// Norms of the parameter change this step (‖θ_after − θ_before‖) per group, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_norm: Option<GroupNorms>,
    /// Images processed per second over this step (forward, backward and update).
    pub images_per_s: f64,
    /// Seconds this step waited for the data loader.
    pub data_wait_s: f64,
    /// Seconds since the run started (continues across `--resume`).
    pub wall_s: f64,
}

impl StepRecord {
    /// The value of a loss term, raw or weighted.
    pub fn term(&self, term: LossTerm, weighted: bool) -> Option<f64> {
        self.loss
            .get(term)
            .map(|v| if weighted { v.weighted } else { v.raw })
    }
}

/// Appends records of type `T` to a JSON Lines file, one line per record, flushed after each line.
pub struct JsonlWriter<T> {
    path: PathBuf,
    out: BufWriter<File>,
    _marker: std::marker::PhantomData<fn(&T)>,
}

/// Appends [`StepRecord`]s to `metrics.jsonl`.
pub type MetricsWriter = JsonlWriter<StepRecord>;

impl<T: Serialize> JsonlWriter<T> {
    /// Opens `path` for appending (creating it when missing).
    pub fn append(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            _marker: std::marker::PhantomData,
        })
    }

    /// Appends one record and flushes it to the file.
    pub fn write(&mut self, record: &T) -> Result<()> {
        write_json_line(&mut self.out, record).map_err(|e| Error::io(&self.path, e))
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A JSON Lines record that belongs to an optimizer step.
pub trait AtStep {
    fn at_step(&self) -> u64;
}

impl AtStep for StepRecord {
    fn at_step(&self) -> u64 {
        self.step
    }
}

impl<T: Serialize + for<'de> Deserialize<'de> + AtStep> JsonlWriter<T> {
    /// For `--resume` from a checkpoint at `step`: drops the records after `step` (written after the
    /// checkpoint by the interrupted run, and about to be redone), atomically, then opens for appending.
    /// A torn end ([`JsonLines::open`]) goes too; a malformed line before it stops the resume.
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        Ok(Self::resume_keeping(path, step)?.0)
    }

    /// [`Self::resume`], also returning the records kept (those up to `step`).
    pub fn resume_keeping(path: &Path, step: u64) -> Result<(Self, Vec<T>)> {
        let mut kept = Vec::new();
        if path.exists() {
            for rec in JsonLines::<T>::open(path)? {
                let rec = rec?;
                if rec.at_step() <= step {
                    kept.push(rec);
                }
            }
            crate::fsutil::write_atomic(path, |w| {
                for rec in &kept {
                    serde_json::to_writer(&mut *w, rec)?;
                    w.write_all(b"\n")?;
                }
                Ok(())
            })?;
        }
        Ok((Self::append(path)?, kept))
    }
}

/// How far back from the end a torn end is looked for: a record line is far shorter; a longer run
/// of NUL bytes or a longer last line is left to the reader, which names the line it cannot parse.
const TORN_END_SEARCH: u64 = 64 << 20;

/// Where the whole lines of the JSON Lines file `file` (`len` bytes) of `T` end: `len`, or the start
/// of a torn end. The end is torn when the file ends in NUL bytes (a file system that extended the
/// file before a crash wrote its data) or in a last line without its newline that does not parse (a
/// record still being written, or one whose writer was stopped). Reads only the end of the file.
fn whole_lines_end<T: for<'de> Deserialize<'de>>(
    file: &mut File,
    len: u64,
) -> std::io::Result<u64> {
    use std::io::SeekFrom;
    // Scan back from the end, chunk by chunk: past the trailing NULs (`clean`: where they begin),
    // then to the newline that ends the last whole line (`line_start`: the byte after it).
    let (mut clean, mut line_start) = (None, None);
    let mut chunk = vec![0u8; 64 << 10];
    let mut pos = len;
    while pos > 0 && line_start.is_none() {
        if len - pos >= TORN_END_SEARCH {
            return Ok(len);
        }
        let n = pos.min(chunk.len() as u64) as usize;
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk[..n])?;
        for (i, &b) in chunk[..n].iter().enumerate().rev() {
            let at = pos + i as u64;
            if clean.is_none() {
                if b == 0 {
                    continue;
                }
                clean = Some(at + 1);
            }
            if b == b'\n' {
                line_start = Some(at + 1);
                break;
            }
        }
    }
    let (clean, line_start) = (clean.unwrap_or(0), line_start.unwrap_or(0));
    let mut last = vec![0u8; (clean - line_start) as usize];
    file.seek(SeekFrom::Start(line_start))?;
    file.read_exact(&mut last)?;
    let whole = clean == len
        && (last.iter().all(u8::is_ascii_whitespace) || serde_json::from_slice::<T>(&last).is_ok());
    Ok(if whole { len } else { line_start })
}

/// Writes one value as a JSON line and flushes.
fn write_json_line<W: Write, T: Serialize>(out: &mut W, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Streams the records of a `metrics.jsonl` file. Blank lines are skipped; a malformed line is an
/// [`MonitorError::Record`] naming the file and line (1-based). A torn end (a last line without its
/// newline that does not parse, trailing NUL bytes: a run still writing, or stopped mid-write) is
/// left out with a warning.
pub fn read_records(path: &Path) -> Result<JsonLines<StepRecord>> {
    JsonLines::open(path)
}

/// Reads every record of a `metrics.jsonl` file (see [`read_records`]).
pub fn read_all_records(path: &Path) -> Result<Vec<StepRecord>> {
    read_jsonl(path)
}

/// Reads a whole JSON Lines file of `T`; a malformed line is an error naming `file:line`.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    JsonLines::open(path)?.collect()
}

/// A streaming reader of a JSON Lines file of `T`, yielding `Err` naming `file:line` on a bad line.
pub struct JsonLines<T> {
    path: PathBuf,
    lines: std::io::Lines<BufReader<std::io::Take<File>>>,
    line_no: usize,
    _marker: std::marker::PhantomData<T>,
}

impl<T: for<'de> Deserialize<'de>> JsonLines<T> {
    /// Opens a JSON Lines file, leaving out a torn end ([`whole_lines_end`]: the last line of a run
    /// still writing it, or what a run stopped mid-write left) with a warning giving its size.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| Error::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = whole_lines_end::<T>(&mut file, len).map_err(io)?;
        if bytes < len {
            tracing::warn!(
                "{}: its last {} bytes are not a whole record (a run still writing it, or one stopped \
                 mid-write): left out",
                path.display(),
                len - bytes
            );
        }
        file.rewind().map_err(io)?;
        Ok(JsonLines {
            path: path.to_path_buf(),
            lines: BufReader::new(file.take(bytes)).lines(),
            line_no: 0,
            _marker: std::marker::PhantomData,
        })
    }
}

impl<T: for<'de> Deserialize<'de>> Iterator for JsonLines<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(Error::io(&self.path, e))),
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            return Some(serde_json::from_str(&line).map_err(|source| {
                MonitorError::Record {
                    path: self.path.clone(),
                    line: self.line_no,
                    source,
                }
                .into()
            }));
        }
    }
}

/// Serde adapter: non-finite floats are written as `null`, `null` reads back as NaN.
mod finite_or_null {
    use super::*;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(step: u64) -> StepRecord {
        let mut loss = Losses::default();
        loss.set(LossTerm::Tag, TermValue::new(5.0, 1.0));
        loss.set(LossTerm::Align, TermValue::new(0.5, 10.0));
        loss.set(LossTerm::Dis, TermValue::new(0.3, 100.0));
        StepRecord {
            step,
            epoch: 0,
            lr: 1e-4,
            loss,
            total: 40.0,
            grad_norm: GroupNorms::from_groups([
                (ModuleGroup::ImageEncoder, 3.0),
                (ModuleGroup::TaggingHead, 4.0),
            ]),
            update_norm: None,
            images_per_s: 100.0,
            data_wait_s: 0.01,
            wall_s: step as f64,
        }
    }

    #[test]
    fn round_trips_and_names_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::append(&path).unwrap();
        for s in 1..=3 {
            w.write(&sample(s)).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["loss"]["align"]["weighted"], 5.0);
        assert_eq!(first["grad_norm"]["total"], 5.0);
        assert_eq!(first["grad_norm"]["image_encoder"], 3.0);
        assert!(first["grad_norm"].get("label_embed").is_none());
        let back = read_all_records(&path).unwrap();
        assert_eq!(back, vec![sample(1), sample(2), sample(3)]);
    }

    #[test]
    fn non_finite_values_are_null_and_read_back_as_nan() {
        let mut rec = sample(1);
        rec.total = f64::INFINITY;
        rec.loss.set(LossTerm::Tag, TermValue::new(f64::NAN, 1.0));
        let line = serde_json::to_string(&rec).unwrap();
        assert!(line.contains("\"total\":null"), "{line}");
        let back: StepRecord = serde_json::from_str(&line).unwrap();
        assert!(back.total.is_nan());
        assert!(back.term(LossTerm::Tag, false).unwrap().is_nan());
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let good = serde_json::to_string(&sample(1)).unwrap();
        std::fs::write(&path, format!("{good}\n\n{{\"step\": 2, \"epoch\"\n")).unwrap();
        let results: Vec<_> = read_records(&path).unwrap().collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:3:"), "{err}");
    }

    /// What a machine that died mid-write (or a run still writing) leaves at the end of
    /// `metrics.jsonl` is left out by readers and dropped by a resume; a malformed line before the
    /// end is still an error.
    #[test]
    fn resume_drops_a_torn_end_but_not_a_malformed_line_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let line = |s| serde_json::to_string(&sample(s)).unwrap();
        let steps = |p: &Path| -> Vec<u64> {
            read_all_records(p)
                .unwrap()
                .iter()
                .map(|r| r.step)
                .collect()
        };
        let whole = format!("{}\n{}\n", line(1), line(2));
        let cut = &line(3)[..20];
        for (end, what) in [
            (cut.to_string(), "a line cut short"),
            (format!("{cut}\0\0\0"), "a cut line, then NULs"),
            ("\0".repeat(300), "NULs alone"),
            (
                "\0".repeat(200_000),
                "NULs over several chunks read from the end",
            ),
            (format!("{}\n\0\0", line(3)), "a whole line, then NULs"),
        ] {
            std::fs::write(&path, format!("{whole}{end}")).unwrap();
            let whole_only = if what.starts_with("a whole") {
                vec![1, 2, 3]
            } else {
                vec![1, 2]
            };
            assert_eq!(steps(&path), whole_only, "{what}: readers leave it out");
            let mut w = MetricsWriter::resume(&path, 5).unwrap();
            w.write(&sample(4)).unwrap();
            let kept = if what.starts_with("a whole") {
                vec![1, 2, 3, 4]
            } else {
                vec![1, 2, 4]
            };
            assert_eq!(steps(&path), kept, "{what}");
        }
        // A file that holds only a cut line holds no record.
        std::fs::write(&path, cut).unwrap();
        assert_eq!(steps(&path), Vec::<u64>::new());
        // A last line missing only its newline is a whole record.
        std::fs::write(&path, format!("{whole}{}", line(3))).unwrap();
        drop(MetricsWriter::resume(&path, 5).unwrap());
        assert_eq!(steps(&path), [1, 2, 3]);
        // Damage before the end is not a torn write: an error naming the line.
        std::fs::write(&path, format!("{}\n{cut}\n{}\n", line(1), line(2))).unwrap();
        let e = match MetricsWriter::resume(&path, 5) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("resumed over a malformed line"),
        };
        assert!(e.contains("metrics.jsonl:2:"), "{e}");
    }

    #[test]
    fn resume_drops_records_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::append(&path).unwrap();
        for s in 1..=5 {
            w.write(&sample(s)).unwrap();
        }
        drop(w);
        let mut w = MetricsWriter::resume(&path, 3).unwrap();
        w.write(&sample(4)).unwrap();
        let steps: Vec<u64> = read_all_records(&path)
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }
}
