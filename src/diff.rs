//! `diff`: a training set audited against a vocabulary, slot by slot. Produces a [`DiffReport`] (for
//! people and CI, written by [`crate::report`]) and the [`SlotManifest`] handed to `embed` and `train`.

use crate::annotations::{scan_files, FileScan, ProblemCategory, ProblemLog, ScanOptions};
use crate::error::Result;
use crate::manifest::{InputFile, SlotEntry, SlotManifest, SlotStatus};
use crate::vocab::{
    check_sidecar, map_derived, DerivedReport, PresetStatus, Severity, SidecarKind, SidecarReport,
    Slot, Vocabulary, VocabularyId,
};
use serde::Serialize;
use std::path::PathBuf;

/// Value of the report's `schema` field.
pub const REPORT_SCHEMA: &str = "tagfix.diff-report";
/// Version of the report layout.
pub const REPORT_VERSION: u32 = 1;

/// A sidecar file to check.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    pub name: String,
    pub path: PathBuf,
    pub kind: SidecarKind,
}

/// What to audit.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    pub data: Vec<PathBuf>,
    pub sidecars: Vec<SidecarSpec>,
    /// Where the sidecars came from, said in the report (e.g. "preset `ram`").
    pub sidecars_source: Option<String>,
    pub derived: Option<PathBuf>,
    pub scan: ScanOptions,
    /// How many of the rarest present tags to list.
    pub rarest: usize,
}

/// A slot and its tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagRef {
    pub slot: Slot,
    pub tag: String,
}

/// Totals.
#[derive(Debug, Clone, Serialize)]
pub struct DiffSummary {
    pub slots: usize,
    pub present: usize,
    pub absent: usize,
    pub records: u64,
    pub problems: u64,
    pub malformed: u64,
    pub unknown: u64,
}

/// An id that names no slot and how often it occurs.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownId {
    pub id: i128,
    pub occurrences: u64,
}

/// The derived list's mapping plus how its dropped slots compare with the absent ones.
#[derive(Debug, Clone, Serialize)]
pub struct DerivedSection {
    #[serde(flatten)]
    pub report: DerivedReport,
    /// Slots the derived list drops although the data has them.
    pub dropped_but_present: Vec<Slot>,
    /// Slots the data lacks that the derived list still keeps.
    pub absent_but_kept: Vec<Slot>,
}

/// Everything `diff` found.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub schema: String,
    pub version: u32,
    pub vocabulary: VocabularyId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset_status: Option<PresetStatus>,
    pub inputs: Vec<FileScan>,
    pub summary: DiffSummary,
    pub slots: Vec<SlotEntry>,
    pub absent: Vec<TagRef>,
    pub rarest_present: Vec<SlotEntry>,
    pub problems: ProblemLog,
    pub unknown_ids: Vec<UnknownId>,
    /// Groups of slots whose tags are equal after normalisation.
    pub vocabulary_duplicates: Vec<Vec<TagRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecars_source: Option<String>,
    pub sidecars: Vec<SidecarReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derived: Option<DerivedSection>,
}

/// A condition `--fail-on` can turn into exit status 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Some slot has no record.
    Absent,
    /// Some label id names no slot.
    Unknown,
    /// Some record is malformed (only reachable with `keep_going`, else it is an input error).
    Malformed,
    /// A sidecar has errors.
    Sidecar,
    /// The vocabulary has tags equal after normalisation.
    DuplicateTags,
    /// The derived list would shift indices if used as-is.
    Shift,
}

impl Check {
    pub const ALL: [Check; 6] = [
        Check::Absent,
        Check::Unknown,
        Check::Malformed,
        Check::Sidecar,
        Check::DuplicateTags,
        Check::Shift,
    ];

    /// The name `--fail-on` uses.
    pub fn name(self) -> &'static str {
        match self {
            Check::Absent => "absent",
            Check::Unknown => "unknown",
            Check::Malformed => "malformed",
            Check::Sidecar => "sidecar",
            Check::DuplicateTags => "duplicate-tags",
            Check::Shift => "shift",
        }
    }
}

impl DiffReport {
    /// Why `check` holds, or `None` when it does not.
    pub fn check(&self, check: Check) -> Option<String> {
        let s = &self.summary;
        match check {
            Check::Absent => {
                (s.absent > 0).then(|| format!("{} of {} slots are absent", s.absent, s.slots))
            }
            Check::Unknown => {
                (s.unknown > 0).then(|| format!("{} label ids name no slot", s.unknown))
            }
            Check::Malformed => {
                (s.malformed > 0).then(|| format!("{} malformed-record problems", s.malformed))
            }
            Check::Sidecar => {
                let bad: Vec<&str> = self
                    .sidecars
                    .iter()
                    .filter(|r| r.count(Severity::Error) > 0)
                    .map(|r| r.name.as_str())
                    .collect();
                (!bad.is_empty()).then(|| format!("sidecar errors in {}", bad.join(", ")))
            }
            Check::DuplicateTags => (!self.vocabulary_duplicates.is_empty()).then(|| {
                format!(
                    "{} groups of vocabulary tags are equal after normalisation",
                    self.vocabulary_duplicates.len()
                )
            }),
            Check::Shift => self.derived.as_ref().and_then(|d| {
                (d.report.shift.misaligned_rows > 0).then(|| {
                    format!(
                        "the derived list would misalign {} rows",
                        d.report.shift.misaligned_rows
                    )
                })
            }),
        }
    }
}

/// Runs the audit. Errors are input errors (unreadable or malformed files; per-record problems
/// unless `opts.scan.keep_going`).
pub fn diff(vocab: &Vocabulary, opts: &DiffOptions) -> Result<(DiffReport, SlotManifest)> {
    let tag_ref = |slot: Slot| TagRef {
        slot,
        tag: vocab.tags[slot].clone(),
    };
    // cheap checks first, so that a bad sidecar or tag list fails before a long scan
    let sidecars = opts
        .sidecars
        .iter()
        .map(|s| check_sidecar(&s.name, &s.path, s.kind, vocab.len()))
        .collect::<Result<Vec<_>>>()?;
    let derived = opts
        .derived
        .as_ref()
        .map(|p| map_derived(vocab, p))
        .transpose()?;

    let scan = scan_files(&opts.data, &opts.scan)?;
    let inputs: Vec<InputFile> = scan
        .files
        .iter()
        .map(|f| InputFile {
            path: f.path.clone(),
            bytes: f.bytes,
            records: f.records,
        })
        .collect();
    let manifest = SlotManifest::from_counts(
        vocab,
        &scan.union,
        &scan.parse,
        inputs,
        scan.problems.total(),
    );

    let absent = manifest.absent_slots();
    let mut rarest: Vec<SlotEntry> = manifest
        .slots
        .iter()
        .filter(|s| s.status == SlotStatus::Present)
        .cloned()
        .collect();
    rarest.sort_by_key(|s| (s.union, s.slot));
    rarest.truncate(opts.rarest);

    let derived = derived.map(|report| {
        let is_absent = |s: &Slot| manifest.slots[*s].status == SlotStatus::Absent;
        DerivedSection {
            dropped_but_present: report
                .dropped_slots
                .iter()
                .copied()
                .filter(|s| !is_absent(s))
                .collect(),
            absent_but_kept: absent
                .iter()
                .copied()
                .filter(|s| report.old_to_new[*s].is_some())
                .collect(),
            report,
        }
    });

    let report = DiffReport {
        schema: REPORT_SCHEMA.into(),
        version: REPORT_VERSION,
        vocabulary: vocab.id(),
        preset_status: vocab.preset.as_ref().map(|p| p.status),
        summary: DiffSummary {
            slots: manifest.summary.slots,
            present: manifest.summary.present,
            absent: manifest.summary.absent,
            records: scan.records,
            problems: scan.problems.total(),
            malformed: scan.problems.count(ProblemCategory::Malformed),
            unknown: scan.problems.count(ProblemCategory::Unknown),
        },
        inputs: scan.files,
        slots: manifest.slots.clone(),
        absent: absent.iter().map(|s| tag_ref(*s)).collect(),
        rarest_present: rarest,
        problems: scan.problems,
        unknown_ids: scan
            .unknown_ids
            .into_iter()
            .map(|(id, occurrences)| UnknownId { id, occurrences })
            .collect(),
        vocabulary_duplicates: vocab
            .normalized_duplicates()
            .into_iter()
            .map(|g| g.into_iter().map(tag_ref).collect())
            .collect(),
        sidecars_source: opts.sidecars_source.clone(),
        sidecars,
        derived,
    };
    Ok((report, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_absent_rarest_and_checks() {
        let v = Vocabulary::from_tags(["cat", "dog", "emu", "Cat"].map(String::from).to_vec());
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        std::fs::write(
            &data,
            "{\"image_path\":\"a\",\"caption\":[\"c\"],\"union_label_id\":[0,2],\"parse_label_id\":[[0]]}\n\
             {\"image_path\":\"b\",\"caption\":[\"c\"],\"union_label_id\":[0],\"parse_label_id\":[[0]]}\n",
        )
        .unwrap();
        let tags = dir.path().join("t.txt");
        std::fs::write(&tags, "cat\ndog\n").unwrap();
        let opts = DiffOptions {
            data: vec![data],
            sidecars: Vec::new(),
            sidecars_source: None,
            derived: Some(tags),
            scan: ScanOptions::new(v.len()),
            rarest: 1,
        };
        let (r, m) = diff(&v, &opts).unwrap();
        assert_eq!(m.absent_slots(), [1, 3]);
        assert_eq!(
            r.absent[0],
            TagRef {
                slot: 1,
                tag: "dog".into()
            }
        );
        assert_eq!(r.rarest_present.len(), 1);
        assert_eq!(r.rarest_present[0].slot, 2);
        assert_eq!(r.vocabulary_duplicates.len(), 1);
        let d = r.derived.as_ref().unwrap();
        assert_eq!(d.report.dropped_slots, [2, 3]);
        assert_eq!(d.dropped_but_present, [2]);
        assert_eq!(d.absent_but_kept, [1]);
        assert!(r.check(Check::Absent).unwrap().contains("2 of 4"));
        assert!(
            r.check(Check::Shift).is_none(),
            "a prefix keeps every row in place"
        );
        assert!(r.check(Check::Unknown).is_none());
        assert!(r.check(Check::Sidecar).is_none());
    }
}
