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
    if let Some(s) = &r.ram {
        writeln!(
            w,
            "as batch_inference.py (all {} mapped tags, AP 0 without positives, predicted at score >= threshold): \
             mAP {} CP {} CR {} F1 {}",
            s.classes,
            pct(s.map),
            pct(s.cp),
            pct(s.cr),
            pct(s.f1)
        )?;
    }
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

/// Several benchmarks side by side: one column per benchmark, the `batch_inference.py` numbers
/// first, then tagfix's mAP over present and absent slots.
pub fn write_side_by_side(w: &mut dyn Write, reports: &[EvalReport]) -> std::io::Result<()> {
    let mut t = Table::new();
    let mut header = vec!["".to_string()];
    header.extend(reports.iter().map(|r| r.benchmark.clone()));
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    type Cell = fn(&EvalReport) -> String;
    let rows: [(&str, Cell); 9] = [
        ("images", |r| r.images.to_string()),
        ("tags evaluated", |r| {
            format!("{} of {}", r.classes.len(), r.benchmark_tags)
        }),
        ("mAP", |r| r.ram.map_or("-".into(), |s| pct(s.map))),
        ("CP", |r| r.ram.map_or("-".into(), |s| pct(s.cp))),
        ("CR", |r| r.ram.map_or("-".into(), |s| pct(s.cr))),
        ("F1", |r| r.ram.map_or("-".into(), |s| pct(s.f1))),
        ("mAP, tags with positives", |r| {
            r.main.map_or("-".into(), |s| pct(s.map))
        }),
        ("mAP, absent slots", |r| {
            r.absent.map_or("-".into(), |s| pct(s.map))
        }),
        ("thresholds", |r| r.thresholds.clone()),
    ];
    for (name, cell) in rows {
        let mut row = vec![name.to_string()];
        row.extend(reports.iter().map(cell));
        t.add_row(row);
    }
    writeln!(w, "{t}")?;
    writeln!(
        w,
        "mAP / CP / CR as batch_inference.py (every mapped tag; P and R at score >= threshold), F1 = 2·CP·CR/(CP+CR);\n\
         the last mAP rows are tagfix's (tags with positives, slots the manifest marks absent apart)."
    )
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

/// A threshold file: one value a line in slot order (as `ram_tag_list_threshold.txt`), each the
/// shortest decimal that reads back as the same f32.
pub fn write_thresholds(w: &mut dyn Write, values: &[f32]) -> std::io::Result<()> {
    for v in values {
        writeln!(w, "{v}")?;
    }
    Ok(())
}
