//! `tagfix synth`: a realistic RAM-format annotation set generated from a vocabulary, for dry runs,
//! tests, benchmarks and the demo. Tag frequencies follow a Zipf law over a seeded ranking of the
//! present slots; every present slot occurs at least once, the chosen absent slots never do. Records
//! are written one at a time (never held in memory together), atomically.

use crate::annotations::Layout;
use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::vocab::{Slot, Vocabulary};
use indicatif::ProgressBar;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// Which slots the generated set leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbsentSlots {
    /// This many slots, drawn with the seed.
    Count(usize),
    /// Exactly these slots.
    List(Vec<Slot>),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub records: u64,
    pub absent: AbsentSlots,
    pub seed: u64,
    pub layout: Layout,
    pub gzip: bool,
    /// Zipf exponent of tag frequencies (1.0: the k-th most common tag is k times rarer than the first).
    pub zipf_exponent: f64,
}

/// What was generated.
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub path: String,
    pub records: u64,
    pub layout: Layout,
    pub gzip: bool,
    pub bytes: u64,
    /// Slots no record carries, ascending.
    pub absent_slots: Vec<Slot>,
}

/// Why synthetic data cannot be made with the given settings.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("--records must be at least 1")]
    NoRecords,

    #[error("--zipf must be a finite number >= 0, got {0}")]
    BadZipf(f64),

    #[error("{absent} absent slots leave no present slot in a vocabulary of {slots}")]
    NothingPresent { absent: usize, slots: usize },
}

/// SplitMix64: small, seedable, and stable across versions (the same seed always gives the same set).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Draws slots with Zipf-like frequencies over a fixed ranking.
struct Zipf {
    ranked: Vec<Slot>,
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(ranked: Vec<Slot>, exponent: f64) -> Self {
        let mut total = 0.0;
        let cdf = (0..ranked.len())
            .map(|r| {
                total += 1.0 / ((r + 1) as f64).powf(exponent);
                total
            })
            .collect();
        Zipf { ranked, cdf }
    }

    fn draw(&self, rng: &mut Rng) -> Slot {
        let x = rng.unit() * self.cdf.last().copied().unwrap_or(0.0);
        let r = self
            .cdf
            .partition_point(|c| *c < x)
            .min(self.ranked.len() - 1);
        self.ranked[r]
    }
}

#[derive(Serialize)]
struct OutRecord<'a> {
    image_path: &'a str,
    caption: &'a [String],
    union_label_id: &'a [Slot],
    parse_label_id: &'a [Vec<Slot>],
}

const TEMPLATES: &[&str] = &[
    "a photo of {}",
    "an image showing {}",
    "{} in the scene",
    "a picture with {}",
    "close-up of {}",
];

fn phrase(vocab: &Vocabulary, slots: &[Slot]) -> String {
    let names: Vec<&str> = slots.iter().map(|s| vocab.tags[*s].as_str()).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Writes a synthetic annotation set to `out` (atomically) and says what it holds.
pub fn synthesize(
    vocab: &Vocabulary,
    opts: &SynthOptions,
    out: &Path,
    progress: &ProgressBar,
) -> Result<SynthSummary> {
    let n = vocab.len();
    if opts.records == 0 {
        return Err(SynthError::NoRecords.into());
    }
    if !(opts.zipf_exponent.is_finite() && opts.zipf_exponent >= 0.0) {
        return Err(SynthError::BadZipf(opts.zipf_exponent).into());
    }
    let mut rng = Rng(opts.seed ^ 0x7461_6766_6978);
    let absent = match &opts.absent {
        AbsentSlots::List(list) => list.clone(),
        AbsentSlots::Count(k) => {
            let mut all: Vec<Slot> = (0..n).collect();
            rng.shuffle(&mut all);
            let mut chosen = all[..(*k).min(n)].to_vec();
            chosen.sort_unstable();
            chosen
        }
    };
    if absent.len() >= n {
        return Err(SynthError::NothingPresent {
            absent: absent.len(),
            slots: n,
        }
        .into());
    }
    let mut is_absent = vec![false; n];
    for s in &absent {
        is_absent[*s] = true;
    }
    let mut present: Vec<Slot> = (0..n).filter(|s| !is_absent[*s]).collect();
    rng.shuffle(&mut present);
    // every present slot once, spread over the first records
    let coverage = present.clone();
    let per_record = coverage
        .len()
        .div_ceil(opts.records.min(usize::MAX as u64) as usize);
    let zipf = Zipf::new(present, opts.zipf_exponent);

    let mut union: Vec<Slot> = Vec::with_capacity(32);
    let mut captions: Vec<String> = Vec::with_capacity(4);
    let mut parse: Vec<Vec<Slot>> = Vec::with_capacity(4);
    let mut path = String::new();
    let gzip = opts.gzip;
    let layout = opts.layout;
    let mut bytes = 0;
    write_atomic(out, |w| {
        // Counted as written: the output may be standard output or a pipe, with no size to ask.
        let mut counted = Counted {
            inner: w,
            bytes: &mut bytes,
        };
        let w: &mut dyn Write = &mut counted;
        let mut gz;
        let w: &mut dyn Write = if gzip {
            gz = Some(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::fast(),
            ));
            gz.as_mut().unwrap()
        } else {
            gz = None;
            w
        };
        if layout == Layout::JsonArray {
            w.write_all(b"[\n")?;
        }
        for i in 0..opts.records {
            union.clear();
            let from = (i as usize).saturating_mul(per_record).min(coverage.len());
            let to = (from + per_record).min(coverage.len());
            union.extend_from_slice(&coverage[from..to]);
            let k = 3 + rng.below(10);
            for _ in 0..k {
                let s = zipf.draw(&mut rng);
                if !union.contains(&s) {
                    union.push(s);
                }
            }
            captions.clear();
            parse.clear();
            for _ in 0..1 + rng.below(3) {
                let m = 1 + rng.below(union.len().min(3));
                let mut mentioned: Vec<Slot> =
                    (0..m).map(|_| union[rng.below(union.len())]).collect();
                mentioned.sort_unstable();
                mentioned.dedup();
                let template = TEMPLATES[rng.below(TEMPLATES.len())];
                captions.push(template.replace("{}", &phrase(vocab, &mentioned)));
                parse.push(mentioned);
            }
            union.sort_unstable();
            path.clear();
            use std::fmt::Write as _;
            let _ = write!(path, "synth/{:04}/{:09}.jpg", i % 1000, i);
            if i > 0 && layout == Layout::JsonArray {
                w.write_all(b",\n")?;
            }
            serde_json::to_writer(
                &mut *w,
                &OutRecord {
                    image_path: &path,
                    caption: &captions,
                    union_label_id: &union,
                    parse_label_id: &parse,
                },
            )?;
            if layout == Layout::JsonLines {
                w.write_all(b"\n")?;
            }
            if i % 4096 == 0 {
                progress.set_position(i);
            }
        }
        if layout == Layout::JsonArray {
            w.write_all(b"\n]\n")?;
        }
        if let Some(gz) = gz {
            gz.finish()?;
        }
        progress.set_position(opts.records);
        Ok(())
    })?;
    Ok(SynthSummary {
        path: out.display().to_string(),
        records: opts.records,
        layout,
        gzip,
        bytes,
        absent_slots: absent,
    })
}

/// A writer that counts the bytes passed through it.
struct Counted<'a> {
    inner: &'a mut dyn Write,
    bytes: &'a mut u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{scan_files, ScanOptions};

    fn vocab(n: usize) -> Vocabulary {
        Vocabulary::from_tags((0..n).map(|i| format!("tag \"{i}\"")).collect())
    }

    #[test]
    fn generated_set_has_exactly_the_absent_slots_and_reads_back() {
        let v = vocab(300);
        let dir = tempfile::tempdir().unwrap();
        for (layout, gzip) in [(Layout::JsonArray, false), (Layout::JsonLines, true)] {
            let out = dir.path().join("d");
            let opts = SynthOptions {
                records: 120,
                absent: AbsentSlots::Count(17),
                seed: 7,
                layout,
                gzip,
                zipf_exponent: 1.0,
            };
            let s = synthesize(&v, &opts, &out, &ProgressBar::hidden()).unwrap();
            assert_eq!(s.absent_slots.len(), 17);
            let scan = scan_files(std::slice::from_ref(&out), &ScanOptions::new(300)).unwrap();
            assert_eq!(scan.records, 120);
            assert_eq!(scan.files[0].layout, Some(layout));
            let absent: Vec<Slot> = (0..300).filter(|s| scan.union[*s] == 0).collect();
            assert_eq!(absent, s.absent_slots);
            // the same seed gives the same file
            let again = dir.path().join("e");
            synthesize(&v, &opts, &again, &ProgressBar::hidden()).unwrap();
            if !gzip {
                assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
            }
        }
    }

    #[test]
    fn zipf_exponent_must_be_finite_and_not_negative() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d");
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let opts = SynthOptions {
                records: 3,
                absent: AbsentSlots::Count(0),
                seed: 0,
                layout: Layout::JsonArray,
                gzip: false,
                zipf_exponent: bad,
            };
            let e = synthesize(&vocab(5), &opts, &out, &ProgressBar::hidden()).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("--zipf must be a finite number >= 0, got {bad}")
            );
            assert!(!out.exists());
        }
    }
}
