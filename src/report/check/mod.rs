//! Writers of `tagfix check` reports: a readable table, JSON, JUnit XML, a Markdown summary (for a
//! CI step summary), GitHub Actions annotations, and histograms (`--plot`).

pub mod github;
pub mod junit;
pub mod markdown;
pub mod plots;
pub mod table;

use crate::consistency::CheckReport;
use crate::error::Result;
use crate::report::ReportError;

/// Output formats of a check report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckFormat {
    Table,
    Json,
    Junit,
    Markdown,
    Github,
}

/// Renders a check report in `format`.
pub fn render(report: &CheckReport, format: CheckFormat) -> Result<String> {
    Ok(match format {
        CheckFormat::Table => table::check(report),
        CheckFormat::Json => {
            let mut s = serde_json::to_string_pretty(report).map_err(ReportError::Json)?;
            s.push('\n');
            s
        }
        CheckFormat::Junit => junit::check(report)?,
        CheckFormat::Markdown => markdown::check(report),
        CheckFormat::Github => github::check(report),
    })
}

/// `slot 12 "tag", slot 40 "x" and 7 more`.
pub(crate) fn slot_list(report: &CheckReport, slots: &[usize], max: usize) -> String {
    let mut s: Vec<String> = slots
        .iter()
        .take(max)
        .map(|&x| report.slot_label(x))
        .collect();
    if slots.len() > max {
        s.push(format!("and {} more", slots.len() - max));
    }
    s.join(", ")
}

/// Formats a number for people: integers plain, else 4 significant decimals.
pub fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e12 {
        format!("{x:.0}")
    } else if x.abs() >= 0.001 || x == 0.0 {
        format!("{x:.4}")
    } else {
        format!("{x:.2e}")
    }
}

/// A rule's comparison as people write it: `≥` for `>=`, `≤` for `<=`.
pub fn op_symbol(op: &str) -> &str {
    match op {
        ">=" => "≥",
        "<=" => "≤",
        other => other,
    }
}

/// One line per rule outcome, e.g. `min_cosine: 0.1234 >= 0.99 FAILED (slot 3 "x")`.
pub(crate) fn rule_line(
    report: &CheckReport,
    r: &crate::consistency::report::RuleResult,
) -> String {
    let mut line = format!(
        "{}: observed {} (required {} {}) — {}",
        r.id,
        num(r.observed),
        r.op,
        num(r.threshold),
        r.description
    );
    if !r.failing_slots.is_empty() {
        line.push_str(&format!(
            "; {} slot(s): {}",
            r.failing_slots.len(),
            slot_list(report, &r.failing_slots, 10)
        ));
    }
    line
}

/// Short neighbour list: `tag (0.91)*` where `*` marks neighbours both sides share.
pub(crate) fn neighbours(list: &[crate::consistency::report::NeighbourTag], max: usize) -> String {
    list.iter()
        .take(max)
        .map(|n| {
            let name = n.tag.clone().unwrap_or_else(|| format!("#{}", n.slot));
            format!("{name}{}", if n.shared { "" } else { "†" })
        })
        .collect::<Vec<_>>()
        .join(", ")
}
