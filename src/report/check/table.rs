//! The readable report (comfy-table).

use super::{neighbours, num, slot_list};
use crate::consistency::report::{CheckReport, Mode};
use crate::consistency::stats::Dist;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, Table};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

fn dist_row(name: &str, d: &Dist) -> Vec<String> {
    vec![
        name.to_string(),
        num(d.min),
        num(d.p01),
        num(d.p05),
        num(d.median),
        num(d.mean),
    ]
}

/// Renders the report as text tables.
pub fn check(r: &CheckReport) -> String {
    let mut out = String::new();
    let mode = match r.mode {
        Mode::Drift => "drift (candidate vs baseline, row by row)",
        Mode::Consistency => "consistency (control rows of the patched file vs its base)",
    };
    out.push_str(&format!("tagfix check — {mode}\n"));
    out.push_str(&format!(
        "  baseline:  {} ({})\n",
        r.baseline.path,
        short(&r.baseline.sha256)
    ));
    out.push_str(&format!(
        "  candidate: {} ({})\n",
        r.candidate.path,
        short(&r.candidate.sha256)
    ));
    out.push_str(&format!(
        "  layout:    {}, dim {}; {} slots compared ({} rows)\n",
        r.layout.describe(),
        r.baseline.dim,
        r.summary.compared_slots,
        r.summary.compared_rows
    ));
    for s in &r.search {
        let recall = if s.stats.recall_sample > 0 {
            format!(
                ", recall@{} {:.4} on {} sampled queries",
                s.stats.k, s.stats.recall, s.stats.recall_sample
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  search:    {} space, {:?}, {} queries over {} rows, build {:.3}s, query {:.3}s{recall}\n",
            s.space, s.stats.method, s.stats.queries, s.stats.database_rows, s.stats.build_seconds, s.stats.query_seconds
        ));
    }
    out.push('\n');

    let mut t = table(&["metric", "min", "p01", "p05", "median", "mean"]);
    t.add_row(dist_row("cosine", &r.summary.cosine));
    for o in &r.summary.overlap {
        t.add_row(dist_row(&format!("kNN overlap @{}", o.k), &o.dist));
    }
    if let Some(c) = &r.calibration {
        t.add_row(dist_row(&format!("score @{} control", c.k), &c.control));
        t.add_row(dist_row(&format!("score @{} base", c.k), &c.base));
        t.add_row(dist_row(
            &format!("score @{} regenerated", c.k),
            &c.regenerated,
        ));
    }
    out.push_str(&format!("{t}\n"));
    out.push_str(&format!(
        "changed rows: {}   mean shift: {}   max norm deviation: {}   misaligned slots: {}",
        r.summary.changed_rows,
        num(r.summary.mean_shift),
        num(r.summary.max_norm_deviation),
        r.summary.misaligned_slots
    ));
    if r.mode == Mode::Consistency {
        out.push_str(&format!(
            "   untouched rows changed: {}   regenerated slots: {}",
            r.summary.changed_untouched_rows, r.summary.regenerated_slots
        ));
    }
    out.push_str("\n\n");

    if !r.disagreements.is_empty() {
        out.push_str(&format!(
            "Neighbourhoods that disagree (worst first; † = not among the other side's {} neighbours):\n",
            r.k
        ));
        let mut t = table(&[
            "slot",
            "tag",
            "cosine",
            &format!("overlap@{}", r.k),
            "baseline neighbours",
            "candidate neighbours",
        ]);
        for d in r.disagreements.iter().take(10) {
            t.add_row(vec![
                d.slot.to_string(),
                d.tag.clone().unwrap_or_default(),
                num(d.cosine as f64),
                num(d.overlap as f64),
                neighbours(&d.baseline_neighbours, 5),
                neighbours(&d.candidate_neighbours, 5),
            ]);
        }
        out.push_str(&format!("{t}\n\n"));
    }
    if let Some(c) = &r.calibration {
        let mut low: Vec<_> = r.regenerated.iter().collect();
        low.sort_by(|a, b| a.score.total_cmp(&b.score));
        if !low.is_empty() {
            out.push_str(&format!(
                "Regenerated slots, lowest neighbourhood score first (trusted: score >= control q{} = {}); {:.1}% trusted:\n",
                c.quantile,
                num(c.threshold),
                100.0 * c.trusted_share
            ));
            let mut t = table(&[
                "slot",
                "tag",
                "score",
                "control rank",
                "trusted",
                "nearest tags",
            ]);
            for g in low.iter().take(10) {
                t.add_row(vec![
                    g.slot.to_string(),
                    g.tag.clone().unwrap_or_default(),
                    num(g.score as f64),
                    format!("{:.1}%", 100.0 * g.control_rank),
                    if g.trusted { "yes".into() } else { "NO".into() },
                    neighbours(&g.neighbours, 5).replace('†', ""),
                ]);
            }
            out.push_str(&format!("{t}\n\n"));
        }
    }

    let mut t = table(&["rule", "required", "observed", "result", "slots"]);
    for rule in &r.rules {
        let result = if rule.passed {
            Cell::new("pass").fg(Color::Green)
        } else {
            Cell::new("FAIL").fg(Color::Red)
        };
        t.add_row(vec![
            Cell::new(&rule.id),
            Cell::new(format!("{} {}", rule.op, num(rule.threshold))),
            Cell::new(num(rule.observed)),
            result,
            Cell::new(slot_list(r, &rule.failing_slots, 5)),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    let failed = r.rules.iter().filter(|x| !x.passed).count();
    if r.passed {
        out.push_str(&format!("PASSED: all {} rules hold\n", r.rules.len()));
    } else {
        out.push_str(&format!("FAILED: {failed} of {} rules\n", r.rules.len()));
    }
    out
}

fn short(sha: &str) -> String {
    format!("sha256 {}…", crate::report::short_hash(sha))
}
