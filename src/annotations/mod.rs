//! RAM's training annotations: the one streaming record reader every command uses ([`Records`],
//! checked against a [`RecordSpec`]; `diff` reads the same batches in parallel), the training records collected from it
//! ([`records`]) and the per-slot counts `diff` reports ([`scan_files`]).
//!
//! Accepted inputs: a JSON array of records (RAM's own files), JSON Lines, and gzip of either
//! (recognised by content, whatever the extension). A file is never loaded whole: a reader thread
//! cuts it into batches of whole records ([`split`]), rayon workers parse, check and count the
//! batches, and several files run at once. Memory stays at a few batches plus 8 bytes per record (a
//! hash of each image path, for finding duplicates).
//!
//! Every problem names the file, the line:column where its record starts and the record's 0-based
//! index (as in Python's list), in the same words as every other command. By default the first
//! problem stops the scan with an error; with `keep_going` all of them are recorded and the scan
//! goes on.

mod error;
mod fast;
mod reader;
mod record;
pub mod records;
mod split;

pub use error::AnnotationError;
pub use reader::{Need, Record, RecordSpec, Records};
pub use record::{CaptionMode, LabelId, RawRecord};
pub use split::{Layout, Pos};

use crate::error::Result;
use indicatif::ProgressBar;
use rayon::prelude::*;
use reader::{parse_record, read_record, RecordStream, Scratch, Sink};
use serde::Serialize;
use split::Batch;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Not valid JSON, or a field of the wrong type.
    InvalidRecord,
    /// Bytes that are not UTF-8 (anywhere in the record, read or not).
    InvalidUtf8,
    MissingField,
    /// A label id that is not a JSON integer.
    NonIntegerId,
    NegativeId,
    /// A label id at or beyond the vocabulary's slot count.
    OutOfRangeId,
    /// `union_label_id` or `caption` is an empty list.
    EmptyLabels,
    /// `parse_label_id` does not hold one list per caption.
    CaptionCountMismatch,
    DuplicateImagePath,
    /// The file starts with a UTF-8 byte-order mark, which Python's `json.load` refuses.
    ByteOrderMark,
}

/// The `--fail-on` class a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemCategory {
    /// Label ids that name no slot (negative or out of range).
    Unknown,
    /// Everything else: records RAM's loader would choke on or silently mis-read.
    Malformed,
}

impl ProblemKind {
    pub fn category(self) -> ProblemCategory {
        match self {
            ProblemKind::NegativeId | ProblemKind::OutOfRangeId => ProblemCategory::Unknown,
            _ => ProblemCategory::Malformed,
        }
    }
}

/// One problem in an annotation file.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub file: String,
    /// 0-based record index; absent for problems of the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    pub line: u64,
    pub column: u64,
    pub message: String,
    #[serde(skip)]
    file_index: usize,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(r) = self.record {
            write!(f, "record {r}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Problem {
    /// The error that stops a scan without `keep_going`: the problem (in the same words as any
    /// other reader's for the same record) as the source of [`AnnotationError::Stopped`].
    fn into_error(self) -> AnnotationError {
        AnnotationError::Stopped {
            first: Box::new(self.into_plain_error()),
        }
    }

    fn into_plain_error(self) -> AnnotationError {
        let path = PathBuf::from(self.file);
        let (line, column, message) = (self.line, self.column, self.message);
        match self.record {
            Some(record) => AnnotationError::Record {
                path,
                line,
                column,
                record,
                kind: self.kind,
                message,
            },
            None => AnnotationError::Syntax {
                path,
                line,
                column,
                message,
            },
        }
    }

    fn sort_key(&self) -> (usize, u64, u64, u64) {
        (
            self.file_index,
            self.record.map_or(0, |r| r + 1),
            self.line,
            self.column,
        )
    }
}

/// All problems: complete counts per kind, details for the first `max_details` in file order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProblemLog {
    pub counts: BTreeMap<ProblemKind, u64>,
    pub details: Vec<Problem>,
    /// Problems counted but not detailed (beyond `max_details`).
    pub details_dropped: u64,
}

impl ProblemLog {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn count(&self, category: ProblemCategory) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| k.category() == category)
            .map(|(_, n)| n)
            .sum()
    }

    fn push(&mut self, p: Problem) {
        *self.counts.entry(p.kind).or_default() += 1;
        self.details.push(p);
    }

    fn merge(&mut self, other: ProblemLog, max_details: usize) {
        for (k, n) in other.counts {
            *self.counts.entry(k).or_default() += n;
        }
        self.details.extend(other.details);
        self.details_dropped += other.details_dropped;
        self.cap(max_details);
    }

    fn cap(&mut self, max_details: usize) {
        if self.details.len() > max_details {
            self.details.sort_by_key(Problem::sort_key);
            self.details_dropped += (self.details.len() - max_details) as u64;
            self.details.truncate(max_details);
        }
    }

    fn sort(&mut self) {
        self.details.sort_by_key(Problem::sort_key);
    }
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Number of slots of the vocabulary: ids must lie in `0..slot_count`.
    pub slot_count: usize,
    /// Record problems and go on instead of stopping at the first one.
    pub keep_going: bool,
    /// How many problems to keep with full details (all are counted).
    pub max_details: usize,
    /// Bytes per batch handed to a worker.
    pub batch_bytes: usize,
    /// Advanced by the bytes read from disk.
    pub progress: ProgressBar,
}

impl ScanOptions {
    pub fn new(slot_count: usize) -> Self {
        ScanOptions {
            slot_count,
            keep_going: false,
            max_details: 1000,
            batch_bytes: 4 << 20,
            progress: ProgressBar::hidden(),
        }
    }
}

/// What was read from one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileScan {
    pub path: String,
    /// Size on disk.
    pub bytes: u64,
    pub records: u64,
    pub layout: Option<Layout>,
    pub gzip: bool,
}

/// The result of scanning all annotation files.
#[derive(Debug, Clone)]
pub struct AnnotationScan {
    pub files: Vec<FileScan>,
    /// Per slot: records whose `union_label_id` holds it.
    pub union: Vec<u64>,
    /// Per slot: records where any caption's `parse_label_id` holds it.
    pub parse: Vec<u64>,
    pub records: u64,
    pub problems: ProblemLog,
    /// Ids naming no slot, with how often they occur.
    pub unknown_ids: BTreeMap<i128, u64>,
}

/// Scans annotation files (in parallel) and counts, per slot, the records that carry it.
pub fn scan_files(paths: &[PathBuf], opts: &ScanOptions) -> Result<AnnotationScan> {
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| AnnotationError::Io {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(AnnotationError::Directory { path: p.clone() }.into());
        }
    }
    let stop = AtomicBool::new(false);
    // one hash per record with an image path; reserved for ~100-byte records (untouched capacity
    // costs no memory)
    let on_disk: u64 = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let hashes = Mutex::new(Vec::with_capacity((on_disk / 100) as usize));
    let results: Vec<Result<FileOut>> = paths
        .par_iter()
        .enumerate()
        .map(|(i, p)| scan_file(i, p, opts, &stop, &hashes))
        .collect();
    let mut outs = Vec::with_capacity(results.len());
    for r in results {
        let out = r?;
        if !opts.keep_going {
            if let Some(first) = out.acc.problems.details.iter().min_by_key(|p| p.sort_key()) {
                return Err(first.clone().into_error().into());
            }
        }
        outs.push(out);
    }

    let n = opts.slot_count;
    let mut scan = AnnotationScan {
        files: Vec::new(),
        union: vec![0; n],
        parse: vec![0; n],
        records: 0,
        problems: ProblemLog::default(),
        unknown_ids: BTreeMap::new(),
    };
    for out in outs {
        add(&mut scan.union, &out.acc.union);
        add(&mut scan.parse, &out.acc.parse);
        scan.records += out.file.records;
        scan.problems.merge(out.acc.problems, opts.max_details);
        for (id, c) in out.acc.unknown {
            *scan.unknown_ids.entry(id).or_default() += c;
        }
        scan.files.push(out.file);
    }
    let hashes = hashes.into_inner().expect("hash list lock poisoned");
    let dups = duplicate_paths(paths, hashes, opts)?;
    if !opts.keep_going {
        if let Some(first) = dups.details.first() {
            return Err(first.clone().into_error().into());
        }
    }
    scan.problems.merge(dups, opts.max_details);
    scan.problems.sort();
    Ok(scan)
}

fn add(into: &mut [u64], from: &[u64]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

struct FileOut {
    file: FileScan,
    acc: Acc,
}

/// Counts from one or more batches.
struct Acc {
    union: Vec<u64>,
    parse: Vec<u64>,
    problems: ProblemLog,
    unknown: BTreeMap<i128, u64>,
}

impl Acc {
    fn new(n: usize) -> Self {
        Acc {
            union: vec![0; n],
            parse: vec![0; n],
            problems: ProblemLog::default(),
            unknown: BTreeMap::new(),
        }
    }

    fn merge(mut self, other: Acc, max_details: usize) -> Acc {
        add(&mut self.union, &other.union);
        add(&mut self.parse, &other.parse);
        self.problems.merge(other.problems, max_details);
        for (id, c) in other.unknown {
            *self.unknown.entry(id).or_default() += c;
        }
        self
    }
}

struct FileCtx<'a> {
    file_index: usize,
    name: String,
    opts: &'a ScanOptions,
    stop: &'a AtomicBool,
    /// Hashes of all image paths, in no particular order.
    hashes: &'a Mutex<Vec<u64>>,
}

fn scan_file(
    file_index: usize,
    path: &Path,
    opts: &ScanOptions,
    stop: &AtomicBool,
    hashes: &Mutex<Vec<u64>>,
) -> Result<FileOut> {
    let bytes = std::fs::metadata(path)
        .map_err(|source| AnnotationError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut stream = RecordStream::open(path, opts.batch_bytes, opts.progress.clone())?;
    let gzip = stream.gzip();
    let ctx = FileCtx {
        file_index,
        name: path.display().to_string(),
        opts,
        stop,
        hashes,
    };
    let n = opts.slot_count;
    let (split_result, acc) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(2 * rayon::current_num_threads());
        let reader = s.spawn(move || {
            let result = loop {
                if stop.load(Ordering::Relaxed) {
                    break Ok(());
                }
                match stream.next_batch() {
                    Ok(Some(b)) => {
                        if tx.send(b).is_err() {
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            (result, stream.layout(), stream.records(), stream.bom())
        });
        let acc = rx
            .into_iter()
            .par_bridge()
            .map(|b| process_batch(&b, &ctx))
            .reduce(|| Acc::new(n), |a, b| a.merge(b, opts.max_details));
        (reader.join().expect("reader thread panicked"), acc)
    });
    let (result, layout, records, bom) = split_result;
    let mut acc = acc;
    if bom {
        let p = Problem {
            kind: ProblemKind::ByteOrderMark,
            file: ctx.name.clone(),
            record: None,
            line: 1,
            column: 1,
            message: "the file starts with a UTF-8 byte-order mark (BOM); RAM's loader (Python json.load) \
                      refuses it: save the file without BOM"
                .into(),
            file_index,
        };
        if !opts.keep_going {
            return Err(p.into_error().into());
        }
        acc.problems.push(p);
    }
    result?;
    Ok(FileOut {
        file: FileScan {
            path: ctx.name,
            bytes,
            records,
            layout,
            gzip,
        },
        acc,
    })
}

fn path_hash(path: &str) -> u64 {
    // SipHash with fixed keys: stable within a run, which is all duplicate detection needs.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    h.write(path.as_bytes());
    h.finish().max(1)
}

/// Problems of one record of a batch, and the ids that name no slot.
struct DiffSink<'a, 'b> {
    ctx: &'a FileCtx<'b>,
    acc: &'a mut Acc,
    index: u64,
}

impl Sink for DiffSink<'_, '_> {
    fn problem(&mut self, at: Pos, kind: ProblemKind, message: String) {
        if !self.ctx.opts.keep_going {
            self.ctx.stop.store(true, Ordering::Relaxed);
        }
        if self.acc.problems.details.len() >= self.ctx.opts.max_details {
            *self.acc.problems.counts.entry(kind).or_default() += 1;
            self.acc.problems.details_dropped += 1;
            return;
        }
        self.acc.problems.push(Problem {
            kind,
            file: self.ctx.name.clone(),
            record: Some(self.index),
            line: at.line,
            column: at.column,
            message,
            file_index: self.ctx.file_index,
        });
    }

    fn unknown_id(&mut self, id: i128) {
        *self.acc.unknown.entry(id).or_default() += 1;
    }
}

/// Counts `slots` once each into `counts` (`seen[slot] == stamp` once counted for this record).
fn count_once(slots: &[u32], seen: &mut [u32], stamp: u32, counts: &mut [u64]) {
    for &slot in slots {
        let slot = slot as usize;
        if seen[slot] != stamp {
            seen[slot] = stamp;
            counts[slot] += 1;
        }
    }
}

fn process_batch(batch: &Batch, ctx: &FileCtx) -> Acc {
    let n = ctx.opts.slot_count;
    let spec = RecordSpec::audit(n);
    let mut acc = Acc::new(n);
    let mut hashes = Vec::with_capacity(batch.items.len());
    // stamp[slot] == record number + 1 when the slot was already counted for this record
    let mut seen_union = vec![0u32; n];
    let mut seen_parse = vec![0u32; n];
    let mut scratch = Scratch::default();
    for (k, item) in batch.items.iter().enumerate() {
        let stamp = k as u32 + 1;
        let mut sink = DiffSink {
            ctx,
            acc: &mut acc,
            index: item.index,
        };
        let bytes = batch.bytes(item);
        let Some(rec) = read_record(bytes, item.pos, &spec, &mut scratch, &mut sink) else {
            continue;
        };
        if let Some(p) = rec.image_path.as_deref() {
            hashes.push(path_hash(p));
        }
        count_once(&scratch.union, &mut seen_union, stamp, &mut acc.union);
        count_once(&scratch.parse, &mut seen_parse, stamp, &mut acc.parse);
    }
    ctx.hashes
        .lock()
        .expect("hash list lock poisoned")
        .extend_from_slice(&hashes);
    acc
}

/// Finds records whose image path repeats an earlier one (in any file). The scan kept one 64-bit hash
/// per path; sorting them shows which paths repeat. Only then are the files read again to name each
/// repeat and the record it repeats (position and path), up to `max_details` (1 without keep_going).
fn duplicate_paths(
    paths: &[PathBuf],
    mut hashes: Vec<u64>,
    opts: &ScanOptions,
) -> Result<ProblemLog> {
    hashes.sort_unstable();
    let repeated: HashSet<u64> = hashes
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    let total: u64 = hashes.len() as u64 - {
        hashes.dedup();
        hashes.len() as u64
    };
    drop(hashes);
    let mut log = ProblemLog::default();
    if repeated.is_empty() {
        return Ok(log);
    }
    *log.counts
        .entry(ProblemKind::DuplicateImagePath)
        .or_default() += total;
    let wanted = if opts.keep_going { opts.max_details } else { 1 };
    let mut first_seen: HashMap<u64, (usize, u64, Pos)> = HashMap::new();
    let mut ids = record::IdBuffers::default();
    'files: for (f, path) in paths.iter().enumerate() {
        let mut stream = RecordStream::open(path, opts.batch_bytes, ProgressBar::hidden())?;
        while let Some(batch) = stream.next_batch()? {
            for item in &batch.items {
                let bytes = batch.bytes(item);
                // the same parse as the first pass: a record it could not read has no hash there
                let parsed = parse_record(bytes, item.pos, &mut ids, CaptionMode::default());
                let Some(image) = parsed
                    .ok()
                    .and_then(|r| r.image_path.map(|p| p.into_owned()))
                else {
                    continue;
                };
                let h = path_hash(&image);
                if !repeated.contains(&h) {
                    continue;
                }
                let Some(&(f0, i0, pos0)) = first_seen.get(&h) else {
                    first_seen.insert(h, (f, item.index, item.pos));
                    continue;
                };
                let elsewhere = if f0 == f {
                    String::new()
                } else {
                    format!("{} ", paths[f0].display())
                };
                log.details.push(Problem {
                    kind: ProblemKind::DuplicateImagePath,
                    file: path.display().to_string(),
                    record: Some(item.index),
                    line: item.pos.line,
                    column: item.pos.column,
                    message: format!(
                        "duplicate image_path {image:?}: the same as record {i0} ({elsewhere}line {}, column {})",
                        pos0.line, pos0.column
                    ),
                    file_index: f,
                });
                if log.details.len() >= wanted {
                    break 'files;
                }
            }
        }
    }
    log.details_dropped = total - log.details.len() as u64;
    Ok(log)
}

#[cfg(test)]
mod tests;
