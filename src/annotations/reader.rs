//! The one reader of RAM-format annotation files, used by every command: a [`RecordStream`] opens a
//! file (gzip recognised by content) and cuts it into batches of whole records without parsing
//! them ([`super::split`]); [`read_record`] parses one record into typed fields (a fast path for
//! plain records, serde_json for the rest) and checks it against a [`RecordSpec`]. `diff` parses the
//! batches on many threads and counts; [`Records`] is the same, one record at a time, for the
//! commands that collect records (`train`, `teacher`, `repair`). So a bad record gets the same
//! position (file:line:column and 0-based record index) and the same message in every command.

use super::error::AnnotationError;
use super::fast;
use super::record::{CaptionMode, IdBuffers, LabelId, RawRecord};
use super::split::{Batch, Layout, Pos, SplitError, Splitter};
use super::ProblemKind;
use indicatif::ProgressBar;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// What a command needs of a record field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Not required, not checked beyond its JSON type.
    Ignored,
    /// Must be present and not `null`; label ids must name a slot.
    Required,
    /// Required, and an empty list is a problem as well.
    NonEmpty,
}

impl Need {
    fn read(self) -> bool {
        self != Need::Ignored
    }
}

/// Which fields a command requires and checks, and what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpec {
    pub image_path: Need,
    pub caption: Need,
    pub union_label_id: Need,
    pub parse_label_id: Need,
    /// Slots of the vocabulary: the ids of the fields read must lie in `0..slot_count`.
    pub slot_count: usize,
    /// How `caption` is read (kept or counted; one string accepted or not).
    pub captions: CaptionMode,
}

impl RecordSpec {
    /// `diff`'s audit: every field required, labels and captions not empty, one `parse_label_id`
    /// list per caption (what RAM's loader needs to read the record as meant).
    pub fn audit(slot_count: usize) -> Self {
        RecordSpec {
            image_path: Need::Required,
            caption: Need::NonEmpty,
            union_label_id: Need::NonEmpty,
            parse_label_id: Need::Required,
            slot_count,
            captions: CaptionMode::default(),
        }
    }

    /// Only the labels: `union_label_id` required, its ids in `0..slot_count`.
    pub fn labels(slot_count: usize) -> Self {
        RecordSpec {
            image_path: Need::Ignored,
            caption: Need::Ignored,
            union_label_id: Need::Required,
            parse_label_id: Need::Ignored,
            slot_count,
            captions: CaptionMode::default(),
        }
    }
}

/// Opens a file, decompressing gzip when the content starts with gzip's magic bytes. Plain files are
/// read straight into the splitter's buffer (no intermediate buffering).
fn open(
    path: &Path,
    progress: ProgressBar,
) -> Result<(Box<dyn Read + Send>, bool), AnnotationError> {
    use std::io::{Seek, SeekFrom};
    let io = |source| AnnotationError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.is_dir() {
        return Err(AnnotationError::Directory {
            path: path.to_path_buf(),
        });
    }
    let mut head = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match file.read(&mut head[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let counted = Counting {
        inner: file,
        progress,
    };
    if got == 2 && head == [0x1f, 0x8b] {
        let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 18, counted));
        Ok((Box::new(gz), true))
    } else {
        Ok((Box::new(counted), false))
    }
}

/// Counts bytes read from disk into the progress bar.
struct Counting<R> {
    inner: R,
    progress: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// One annotation file as a stream of batches of whole, unparsed records.
pub struct RecordStream {
    path: PathBuf,
    gzip: bool,
    splitter: Splitter<Box<dyn Read + Send>>,
}

impl RecordStream {
    /// Opens `path`; `batch_bytes` is the size of a batch, `progress` advances by the bytes read.
    pub fn open(
        path: &Path,
        batch_bytes: usize,
        progress: ProgressBar,
    ) -> Result<Self, AnnotationError> {
        let (reader, gzip) = open(path, progress)?;
        Ok(RecordStream {
            path: path.to_path_buf(),
            gzip,
            splitter: Splitter::new(reader, batch_bytes),
        })
    }

    /// The next batch, `None` at the end of the file.
    pub(crate) fn next_batch(&mut self) -> Result<Option<Batch>, AnnotationError> {
        self.splitter
            .next_batch()
            .map_err(|e| self.split_failure(e))
    }

    fn split_failure(&self, e: Result<std::io::Error, SplitError>) -> AnnotationError {
        let path = self.path.clone();
        match e {
            Ok(source) if self.gzip => AnnotationError::Gzip { path, source },
            Ok(source) => AnnotationError::Io { path, source },
            Err(s) => match s.record {
                Some(record) => AnnotationError::Record {
                    path,
                    line: s.pos.line,
                    column: s.pos.column,
                    record,
                    kind: ProblemKind::InvalidRecord,
                    message: s.message,
                },
                None => AnnotationError::Syntax {
                    path,
                    line: s.pos.line,
                    column: s.pos.column,
                    message: s.message,
                },
            },
        }
    }

    pub fn gzip(&self) -> bool {
        self.gzip
    }

    /// The layout found at the first non-blank byte (`None` before that).
    pub fn layout(&self) -> Option<Layout> {
        self.splitter.layout()
    }

    /// Whether the file starts with a UTF-8 byte-order mark (skipped).
    pub fn bom(&self) -> bool {
        self.splitter.bom()
    }

    /// Records handed out so far.
    pub fn records(&self) -> u64 {
        self.splitter.records()
    }
}

/// Where the problems of a record go.
pub(crate) trait Sink {
    /// A problem at `at` (the record's start unless the parser placed it).
    fn problem(&mut self, at: Pos, kind: ProblemKind, message: String);
    /// A label id that names no slot (negative or too large), for `diff`'s table.
    fn unknown_id(&mut self, _id: i128) {}
}

/// Buffers reused from record to record.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub ids: IdBuffers,
    /// Valid slots of `union_label_id`, in file order.
    pub union: Vec<u32>,
    /// Valid slots of all `parse_label_id` lists, in file order.
    pub parse: Vec<u32>,
}

/// Parses a record's bytes (the fast path, else serde_json), or names why it cannot be read.
pub(crate) fn parse_record<'a>(
    bytes: &'a [u8],
    pos: Pos,
    ids: &mut IdBuffers,
    captions: CaptionMode,
) -> Result<RawRecord<'a>, (Pos, ProblemKind, String)> {
    // JSON text must be UTF-8, also in fields RAM's loader never reads (Python's json.load refuses it)
    if let Some((at, message)) = invalid_utf8(pos, bytes) {
        return Err((at, ProblemKind::InvalidUtf8, message));
    }
    if let Some(r) = fast::parse(bytes, ids, captions) {
        return Ok(r);
    }
    RawRecord::parse(bytes, ids, captions).map_err(|e| {
        let at = absolute(pos, e.line(), e.column());
        (at, ProblemKind::InvalidRecord, serde_message(&e))
    })
}

/// Reads one record: parses it and checks it against `spec`, sending every problem to `sink`.
/// `None` when it could not be parsed; otherwise the record, with the valid slots in `scratch`.
pub(crate) fn read_record<'a>(
    bytes: &'a [u8],
    pos: Pos,
    spec: &RecordSpec,
    scratch: &mut Scratch,
    sink: &mut impl Sink,
) -> Option<RawRecord<'a>> {
    scratch.union.clear();
    scratch.parse.clear();
    let rec = match parse_record(bytes, pos, &mut scratch.ids, spec.captions) {
        Ok(r) => r,
        Err((at, kind, message)) => {
            sink.problem(at, kind, message);
            return None;
        }
    };
    Check { spec, pos, sink }.record(&rec, scratch);
    Some(rec)
}

/// The checks of one parsed record, in the order their problems are reported.
struct Check<'s, S> {
    spec: &'s RecordSpec,
    pos: Pos,
    sink: &'s mut S,
}

impl<S: Sink> Check<'_, S> {
    fn problem(&mut self, kind: ProblemKind, message: String) {
        self.sink.problem(self.pos, kind, message);
    }

    fn record(&mut self, rec: &RawRecord, scratch: &mut Scratch) {
        let spec = *self.spec;
        let missing: Vec<String> = [
            (spec.image_path, rec.image_path.is_some(), "image_path"),
            (spec.caption, rec.caption.is_some(), "caption"),
            (spec.union_label_id, rec.union_label_id, "union_label_id"),
            (
                spec.parse_label_id,
                rec.parse_label_id.is_some(),
                "parse_label_id",
            ),
        ]
        .into_iter()
        .filter(|(need, present, _)| need.read() && !present)
        .map(|(_, _, name)| format!("`{name}`"))
        .collect();
        if !missing.is_empty() {
            self.problem(
                ProblemKind::MissingField,
                format!(
                    "missing field {} (null counts as missing)",
                    missing.join(", ")
                ),
            );
        }
        if spec.union_label_id.read() {
            let ids = &scratch.ids.union;
            if spec.union_label_id == Need::NonEmpty && rec.union_label_id && ids.is_empty() {
                self.problem(
                    ProblemKind::EmptyLabels,
                    "union_label_id is empty: the record carries no tag".into(),
                );
            }
            for (j, id) in ids.iter().enumerate() {
                if let Some(slot) = self.slot(id, &|| format!("union_label_id[{j}]")) {
                    scratch.union.push(slot);
                }
            }
        }
        if let (true, Some(captions)) = (spec.caption.read(), rec.caption) {
            if captions == 0 && spec.caption == Need::NonEmpty {
                self.problem(ProblemKind::EmptyLabels, "caption is an empty list".into());
            }
            match rec.parse_label_id {
                Some(lists) if spec.parse_label_id.read() && lists != captions => self.problem(
                    ProblemKind::CaptionCountMismatch,
                    format!(
                        "parse_label_id holds {lists} lists for {captions} captions (RAM takes parse_label_id[i] for caption i)"
                    ),
                ),
                _ => {}
            }
        }
        if spec.parse_label_id.read() {
            for (c, j, id) in &scratch.ids.parse {
                if let Some(slot) = self.slot(id, &|| format!("parse_label_id[{c}][{j}]")) {
                    scratch.parse.push(slot);
                }
            }
        }
    }

    /// The slot an id names, or a problem.
    fn slot(&mut self, id: &LabelId, field: &dyn Fn() -> String) -> Option<u32> {
        let n = self.spec.slot_count.min(u32::MAX as usize);
        match id {
            LabelId::Int(v) if *v >= 0 && (*v as u64) < n as u64 => Some(*v as u32),
            LabelId::Int(v) if *v < 0 => {
                self.sink.unknown_id(i128::from(*v));
                self.problem(
                    ProblemKind::NegativeId,
                    format!(
                        "{} = {v} is negative (Python would silently index from the end)",
                        field()
                    ),
                );
                None
            }
            LabelId::Int(v) => {
                self.sink.unknown_id(i128::from(*v));
                self.out_of_range(&v.to_string(), field);
                None
            }
            LabelId::Huge(text) => {
                if let Ok(v) = text.parse::<i128>() {
                    self.sink.unknown_id(v);
                }
                self.out_of_range(text, field);
                None
            }
            LabelId::NotInteger(text) => {
                self.problem(
                    ProblemKind::NonIntegerId,
                    format!("{} = {text} is not an integer label id", field()),
                );
                None
            }
        }
    }

    fn out_of_range(&mut self, text: &str, field: &dyn Fn() -> String) {
        let n = self.spec.slot_count;
        self.problem(
            ProblemKind::OutOfRangeId,
            format!(
                "{} = {text} is out of range: the vocabulary has {n} slots (0..={})",
                field(),
                n.saturating_sub(1)
            ),
        );
    }
}

/// A record as [`Records`] hands it out: what its [`RecordSpec`] reads, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 0-based index in its file (as in Python's list).
    pub index: u64,
    /// Where the record starts.
    pub pos: Pos,
    /// `None` only when the spec does not require it and it is missing.
    pub image_path: Option<String>,
    /// The captions, when the spec keeps them.
    pub captions: Vec<String>,
    /// The slots of `union_label_id`, in file order (empty unless the spec reads it).
    pub union_label_id: Vec<u32>,
}

/// The records of one file, one at a time; the first problem ends the iteration with an error.
pub struct Records {
    stream: RecordStream,
    spec: RecordSpec,
    batch: Option<Batch>,
    next: usize,
    scratch: Scratch,
    done: bool,
}

impl Records {
    pub fn open(path: &Path, spec: RecordSpec) -> Result<Self, AnnotationError> {
        Ok(Records {
            stream: RecordStream::open(path, 4 << 20, ProgressBar::hidden())?,
            spec,
            batch: None,
            next: 0,
            scratch: Scratch::default(),
            done: false,
        })
    }

    fn next_record(&mut self) -> Result<Option<Record>, AnnotationError> {
        loop {
            if let Some(batch) = &self.batch {
                if let Some(item) = batch.items.get(self.next) {
                    self.next += 1;
                    let mut first = FirstProblem(None);
                    let rec = read_record(
                        batch.bytes(item),
                        item.pos,
                        &self.spec,
                        &mut self.scratch,
                        &mut first,
                    );
                    if let Some((at, kind, message)) = first.0 {
                        return Err(AnnotationError::Record {
                            path: self.stream.path.clone(),
                            line: at.line,
                            column: at.column,
                            record: item.index,
                            kind,
                            message,
                        });
                    }
                    let Some(rec) = rec else { continue };
                    return Ok(Some(Record {
                        index: item.index,
                        pos: item.pos,
                        image_path: rec.image_path.map(|p| p.into_owned()),
                        captions: std::mem::take(&mut self.scratch.ids.captions),
                        union_label_id: self.scratch.union.clone(),
                    }));
                }
            }
            self.next = 0;
            self.batch = self.stream.next_batch()?;
            if self.batch.is_none() {
                return Ok(None);
            }
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record, AnnotationError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_record().transpose();
        self.done = !matches!(r, Some(Ok(_)));
        r
    }
}

/// Keeps the first problem of a record.
struct FirstProblem(Option<(Pos, ProblemKind, String)>);

impl Sink for FirstProblem {
    fn problem(&mut self, at: Pos, kind: ProblemKind, message: String) {
        self.0.get_or_insert((at, kind, message));
    }
}

/// The first bytes of `bytes` (read from position `start`) that are not UTF-8: where they are and
/// what every command says about them. JSON text must be UTF-8: Python's `json.load` refuses
/// anything else, even inside a field RAM's loader never reads.
fn invalid_utf8(start: Pos, bytes: &[u8]) -> Option<(Pos, String)> {
    let e = std::str::from_utf8(bytes).err()?;
    let at = e.valid_up_to();
    let len = e.error_len().unwrap_or(bytes.len() - at);
    let bad: Vec<String> = bytes[at..at + len]
        .iter()
        .map(|b| format!("0x{b:02X}"))
        .collect();
    let message = format!(
        "invalid UTF-8 (byte {}): JSON text must be UTF-8 (Python's json.load refuses it); \
         re-encode the file as UTF-8",
        bad.join(" ")
    );
    Some((advance(start, &bytes[..at]), message))
}

/// The position after reading `bytes` from `start` (columns count bytes).
fn advance(start: Pos, bytes: &[u8]) -> Pos {
    match memchr::memrchr(b'\n', bytes) {
        None => Pos {
            line: start.line,
            column: start.column + bytes.len() as u64,
        },
        Some(last) => Pos {
            line: start.line + memchr::memchr_iter(b'\n', bytes).count() as u64,
            column: (bytes.len() - last) as u64,
        },
    }
}

/// Where serde_json's error position (relative to the record's bytes) lies in the file.
fn absolute(start: Pos, line: usize, column: usize) -> Pos {
    if line <= 1 {
        Pos {
            line: start.line,
            column: start.column + column.saturating_sub(1) as u64,
        }
    } else {
        Pos {
            line: start.line + line as u64 - 1,
            column: column.max(1) as u64,
        }
    }
}

fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    if e.is_eof() {
        format!("{text}: the record is cut short (truncated file?)")
    } else {
        text
    }
}
