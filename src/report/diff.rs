//! Writers for the `diff` report.

use super::{short_list, write_sections, Format, Section};
use crate::diff::DiffReport;
use crate::vocab::{MatchRule, Severity};
use std::io::{self, Write};

/// How many problem details a readable report lists (JSON carries all that were kept).
const SHOWN_PROBLEMS: usize = 20;

/// Writes a `diff` report in `format`.
pub fn write_diff(report: &DiffReport, format: Format, w: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *w, report)?;
            writeln!(w)
        }
        Format::Csv => write_csv(report, w),
        Format::Table => write_sections(&sections(report), false, w),
        Format::Markdown => {
            writeln!(w, "# tagfix diff\n")?;
            write_sections(&sections(report), true, w)
        }
    }
}

/// One row per slot: `slot,tag,status,union,parse`.
fn write_csv(report: &DiffReport, w: &mut dyn Write) -> io::Result<()> {
    let mut csv = csv::Writer::from_writer(w);
    csv.write_record(["slot", "tag", "status", "union", "parse"])?;
    for s in &report.slots {
        let status = match s.status {
            crate::manifest::SlotStatus::Present => "present",
            crate::manifest::SlotStatus::Absent => "absent",
        };
        csv.write_record([
            s.slot.to_string(),
            s.tag.clone(),
            status.to_string(),
            s.union.to_string(),
            s.parse.to_string(),
        ])?;
    }
    csv.flush()
}

/// The report's sections in order; those with nothing to say are left out.
fn sections(r: &DiffReport) -> Vec<Section> {
    let mut out = vec![summary_section(r), absent_section(r), rarest_section(r)];
    out.extend(problems_section(r));
    out.extend(unknown_ids_section(r));
    out.extend(duplicates_section(r));
    out.extend(sidecars_section(r));
    out.extend(derived_section(r));
    out
}

fn summary_section(r: &DiffReport) -> Section {
    let v = &r.vocabulary;
    let origin = match (&v.preset, r.preset_status) {
        (Some(p), Some(s)) => format!(" (preset `{p}`, {})", format!("{s:?}").to_lowercase()),
        _ => String::new(),
    };
    let s = &r.summary;
    let mut summary = Section::new("Summary")
        .line(format!(
            "vocabulary: {}{origin}, {} slots, sha256 {}…",
            v.path,
            v.tag_count,
            &v.sha256[..12]
        ))
        .line(format!(
            "{} records: {} slots present, {} absent; {} problems ({} malformed, {} unknown ids)",
            s.records, s.present, s.absent, s.problems, s.malformed, s.unknown
        ))
        .header(&["file", "layout", "gzip", "bytes", "records"]);
    for f in &r.inputs {
        summary.row(vec![
            f.path.clone(),
            f.layout.map_or("-", |l| l.name()).to_string(),
            if f.gzip { "yes" } else { "no" }.into(),
            f.bytes.to_string(),
            f.records.to_string(),
        ]);
    }
    summary
}

fn absent_section(r: &DiffReport) -> Section {
    let mut absent =
        Section::new(format!("Absent slots ({})", r.absent.len())).header(&["slot", "tag"]);
    if r.absent.is_empty() {
        absent = absent.line("none: every slot has at least one record");
    }
    for a in &r.absent {
        absent.row(vec![a.slot.to_string(), a.tag.clone()]);
    }
    absent
}

fn rarest_section(r: &DiffReport) -> Section {
    let mut rare = Section::new(format!("Rarest present tags ({})", r.rarest_present.len()))
        .line("union: records whose `union_label_id` holds the slot; parse: records whose `parse_label_id` (any caption) holds it")
        .header(&["slot", "tag", "union", "parse"]);
    for e in &r.rarest_present {
        rare.row(vec![
            e.slot.to_string(),
            e.tag.clone(),
            e.union.to_string(),
            e.parse.to_string(),
        ]);
    }
    rare
}

fn problems_section(r: &DiffReport) -> Option<Section> {
    if r.problems.total() == 0 {
        return None;
    }
    let counts: Vec<String> = r
        .problems
        .counts
        .iter()
        .map(|(k, n)| {
            format!(
                "{}: {n}",
                serde_json::to_value(k).unwrap().as_str().unwrap_or("?")
            )
        })
        .collect();
    let mut p = Section::new(format!("Problems ({})", r.problems.total()))
        .line(counts.join(", "))
        .header(&["where", "record", "problem"]);
    let hidden =
        r.problems.details.len().saturating_sub(SHOWN_PROBLEMS) as u64 + r.problems.details_dropped;
    if hidden > 0 {
        p = p.line(format!(
            "{hidden} more not shown (JSON output lists up to --max-problems)"
        ));
    }
    for d in r.problems.details.iter().take(SHOWN_PROBLEMS) {
        p.row(vec![
            format!("{}:{}:{}", d.file, d.line, d.column),
            d.record.map_or("-".into(), |r| r.to_string()),
            d.message.clone(),
        ]);
    }
    Some(p)
}

fn unknown_ids_section(r: &DiffReport) -> Option<Section> {
    if r.unknown_ids.is_empty() {
        return None;
    }
    let mut u = Section::new("Ids naming no slot").header(&["id", "occurrences"]);
    for id in r.unknown_ids.iter().take(SHOWN_PROBLEMS) {
        u.row(vec![id.id.to_string(), id.occurrences.to_string()]);
    }
    Some(u)
}

fn duplicates_section(r: &DiffReport) -> Option<Section> {
    if r.vocabulary_duplicates.is_empty() {
        return None;
    }
    let mut d =
        Section::new("Vocabulary tags equal after normalisation").header(&["slots", "tags"]);
    for g in &r.vocabulary_duplicates {
        d.row(vec![
            g.iter()
                .map(|t| t.slot.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            g.iter()
                .map(|t| format!("{:?}", t.tag))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    Some(d)
}

fn sidecars_section(r: &DiffReport) -> Option<Section> {
    if r.sidecars.is_empty() {
        return None;
    }
    let mut sc = Section::new("Sidecars").header(&["sidecar", "severity", "lines", "issue"]);
    if let Some(src) = &r.sidecars_source {
        sc = sc.line(format!("checked automatically: {src}"));
    }
    for c in &r.sidecars {
        sc = sc.line(format!(
            "{} ({:?}): {} — {} lines for {} slots, {} errors, {} warnings",
            c.name,
            c.kind,
            c.path,
            c.lines,
            c.expected,
            c.count(Severity::Error),
            c.count(Severity::Warning)
        ));
        for i in &c.issues {
            sc.row(vec![
                c.name.clone(),
                format!("{:?}", i.severity).to_lowercase(),
                if i.lines.is_empty() {
                    "-".into()
                } else {
                    format!("{} line(s): {}", i.lines.len(), short_list(&i.lines, 8))
                },
                i.message.clone(),
            ]);
        }
    }
    Some(sc)
}

fn derived_section(r: &DiffReport) -> Option<Section> {
    let d = r.derived.as_ref()?;
    let rep = &d.report;
    let shift = match rep.shift.first_misaligned_row {
        None => "used as-is, every row points at its own slot".to_string(),
        Some(row) => {
            let here = &rep.mapping[row];
            let vocab_tag = r
                .slots
                .get(row)
                .map_or("(beyond the vocabulary)".to_string(), |s| {
                    format!("`{}`", s.tag)
                });
            format!(
                "used as-is, {} rows would point at the wrong tag; the first is row {row}: `{}` (slot {}) would be read as slot {row}, {vocab_tag}",
                rep.shift.misaligned_rows,
                here.tag,
                here.slot.map_or("none".into(), |s| s.to_string()),
            )
        }
    };
    let mut ds = Section::new(format!("Derived tag list: {}", rep.path))
        .line(format!(
            "{} rows: {} matched exactly, {} after normalisation, {} ambiguous, {} unmatched",
            rep.rows, rep.exact, rep.normalized, rep.ambiguous, rep.unmatched
        ))
        .line(shift)
        .line(format!(
            "drops {} slots: {}",
            rep.dropped_slots.len(),
            short_list(&rep.dropped_slots, 12)
        ));
    if d.dropped_but_present.is_empty() && d.absent_but_kept.is_empty() {
        ds = ds.line("the dropped slots are exactly the absent ones".to_string());
    } else {
        ds = ds.line(format!(
            "dropped although present in the data: {}; absent but kept: {}",
            short_list(&d.dropped_but_present, 12),
            short_list(&d.absent_but_kept, 12)
        ));
    }
    if !rep.repeated_slots.is_empty() {
        ds = ds.line(format!(
            "{} slots are named by several rows",
            rep.repeated_slots.len()
        ));
    }
    ds = ds.header(&["row", "tag", "slot", "rule"]);
    for m in rep
        .mapping
        .iter()
        .filter(|m| m.rule != MatchRule::Exact)
        .take(SHOWN_PROBLEMS)
    {
        ds.row(vec![
            m.row.to_string(),
            m.tag.clone(),
            m.slot
                .map_or_else(|| short_list(&m.candidates, 4), |s| s.to_string()),
            format!("{:?}", m.rule).to_lowercase(),
        ]);
    }
    Some(ds)
}
