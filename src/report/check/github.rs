//! GitHub Actions workflow commands: one `::error` annotation per failed rule, a `::notice` otherwise.

use super::rule_line;
use crate::consistency::report::CheckReport;

/// Escapes a workflow-command message.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow-command property value.
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// Renders annotations (one line each).
pub fn check(r: &CheckReport) -> String {
    let file = escape_property(&r.candidate.path);
    let mut out = String::new();
    for rule in &r.rules {
        if !rule.passed {
            out.push_str(&format!(
                "::error file={file},title={}::{}\n",
                escape_property(&format!("tagfix check: {}", rule.id)),
                escape_data(&rule_line(r, rule))
            ));
        }
    }
    if r.passed {
        out.push_str(&format!(
            "::notice file={file},title=tagfix check passed::{}\n",
            escape_data(&format!(
                "all {} rules hold ({} slots compared against {})",
                r.rules.len(),
                r.summary.compared_slots,
                r.baseline.path
            ))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_workflow_command_syntax() {
        assert_eq!(escape_data("50% a\nb"), "50%25 a%0Ab");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
    }
}
