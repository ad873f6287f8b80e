//! Writers for an [`EvalReport`]: a readable table, JSON, and CSV (one row per class).

use super::{ClassResult, EvalReport, Summary};
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use std::io::Write;

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

/// The summary table (and, with `per_class`, one row per class).
pub fn write_table(w: &mut dyn Write, r: &EvalReport, per_class: bool) -> std::io::Result<()> {
    writeln!(
        w,
        "{}: {} images, {} benchmark tags ({} mapped, {} unmapped, {} without positives); thresholds: {}",
        r.benchmark,
        r.images,
        r.benchmark_tags,
        r.classes.len(),
        r.unmapped.len(),
        r.no_positives.len(),
        r.thresholds
    )?;
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "slots", "classes", "mAP", "CP", "CR", "CF1", "macro F1", "OP", "OR", "OF1",
        ]);
    let mut row = |name: &str, s: &Summary| {
        t.add_row(vec![
            name.to_string(),
            s.classes.to_string(),
            pct(s.map),
            pct(s.cp),
            pct(s.cr),
            pct(s.cf1),
            pct(s.macro_f1),
            pct(s.op),
            pct(s.or),
            pct(s.of1),
        ]);
    };
    let main_name = if r.absent.is_some()
        || r.classes
            .iter()
            .any(|c| c.coverage == super::SlotCoverage::Present)
    {
        "present"
    } else {
        "all"
    };
    if let Some(s) = &r.main {
        row(main_name, s);
    }
    if let Some(s) = &r.absent {
        row("absent", s);
    }
    writeln!(w, "{t}")?;
    if !r.unmapped.is_empty() {
        writeln!(w, "unmapped benchmark tags: {}", r.unmapped.join(", "))?;
    }
    if per_class {
        let mut t = Table::new();
        t.load_preset(UTF8_BORDERS_ONLY)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header([
                "tag",
                "slot",
                "coverage",
                "positives",
                "AP",
                "P",
                "R",
                "F1",
                "threshold",
            ]);
        for c in &r.classes {
            t.add_row(vec![
                c.tag.clone(),
                c.slot.to_string(),
                format!("{:?}", c.coverage).to_lowercase(),
                c.counts.positives.to_string(),
                c.ap.map_or("-".into(), pct),
                pct(c.precision),
                pct(c.recall),
                pct(c.f1),
                format!("{}", c.threshold),
            ]);
        }
        writeln!(w, "{t}")?;
    }
    Ok(())
}

/// The whole report as pretty JSON (fractions in [0, 1]).
pub fn write_json(w: &mut dyn Write, r: &EvalReport) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, r)?;
    writeln!(w)
}

/// One CSV row per mapped benchmark tag.
pub fn write_csv(w: &mut dyn Write, r: &EvalReport) -> std::io::Result<()> {
    let mut out = csv::Writer::from_writer(w);
    out.write_record([
        "tag",
        "slot",
        "vocab_tag",
        "matched",
        "coverage",
        "positives",
        "predicted",
        "true_positives",
        "ap",
        "precision",
        "recall",
        "f1",
        "threshold",
    ])?;
    for c in &r.classes {
        out.write_record(csv_row(c))?;
    }
    out.flush()
}

fn csv_row(c: &ClassResult) -> Vec<String> {
    vec![
        c.tag.clone(),
        c.slot.to_string(),
        c.vocab_tag.clone(),
        format!("{:?}", c.matched).to_lowercase(),
        format!("{:?}", c.coverage).to_lowercase(),
        c.counts.positives.to_string(),
        c.counts.predicted.to_string(),
        c.counts.true_positives.to_string(),
        c.ap.map_or(String::new(), |v| v.to_string()),
        c.precision.to_string(),
        c.recall.to_string(),
        c.f1.to_string(),
        c.threshold.to_string(),
    ]
}
