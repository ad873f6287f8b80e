//! Sidecar files aligned line by line with a vocabulary (Chinese names, per-class thresholds): checks
//! that line i still belongs to slot i and that values are usable.
//!
//! Errors break the alignment or the values (line count differs, a threshold that is not a number in
//! [0, 1], invalid UTF-8). Warnings are cosmetic but worth fixing (trailing or leading whitespace,
//! empty names, CRLF, BOM). A final newline is normal (RAM's own sidecars end with one) and noted only.

use super::{parse_lines, VocabError};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// What the lines of a sidecar hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarKind {
    /// Free text per slot (names in another language).
    Text,
    /// One number in [0, 1] per slot.
    Threshold,
}

impl SidecarKind {
    /// `threshold` for names containing "threshold", else `text`.
    pub fn for_name(name: &str) -> Self {
        if name.to_lowercase().contains("threshold") {
            SidecarKind::Threshold
        } else {
            SidecarKind::Text
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

/// One kind of issue and every line (1-based; slot = line - 1) it occurs on.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarIssue {
    pub severity: Severity,
    pub message: String,
    pub lines: Vec<usize>,
}

/// The check of one sidecar file.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarReport {
    pub name: String,
    pub path: String,
    pub kind: SidecarKind,
    /// Lines (slots) the file holds.
    pub lines: usize,
    /// Slots of the vocabulary.
    pub expected: usize,
    pub ends_with_newline: bool,
    pub issues: Vec<SidecarIssue>,
}

impl SidecarReport {
    pub fn count(&self, severity: Severity) -> usize {
        self.issues
            .iter()
            .filter(|i| i.severity == severity)
            .count()
    }
}

/// Checks a sidecar against a vocabulary of `slots` slots. Fails only when the file cannot be read.
pub fn check_sidecar(
    name: &str,
    path: &Path,
    kind: SidecarKind,
    slots: usize,
) -> Result<SidecarReport> {
    let bytes = crate::fsutil::read(path).map_err(|e| Error::io(path, e))?;
    let mut issues = Vec::new();
    let mut issue = |severity, message: String, lines: Vec<usize>| {
        if severity == Severity::Note || !lines.is_empty() {
            issues.push(SidecarIssue {
                severity,
                message,
                lines,
            })
        }
    };
    let ends_with_newline = bytes.ends_with(b"\n");
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        issue(
            Severity::Warning,
            "starts with a UTF-8 byte-order mark".into(),
            vec![1],
        );
    }
    let lines = match parse_lines(path, &bytes) {
        Ok(lines) => lines,
        Err(VocabError::InvalidUtf8 { line, source, .. }) => {
            issue(
                Severity::Error,
                format!("invalid UTF-8: {source}"),
                vec![line],
            );
            return Ok(SidecarReport {
                name: name.into(),
                path: path.display().to_string(),
                kind,
                lines: 0,
                expected: slots,
                ends_with_newline,
                issues,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let crlf: Vec<usize> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| l.ends_with(b"\r"))
        .map(|(i, _)| i + 1)
        .collect();
    issue(Severity::Warning, "CRLF line ends".into(), crlf);
    if lines.len() != slots {
        issue(
            Severity::Error,
            format!(
                "{} lines for {slots} slots: the file is not aligned with the vocabulary",
                lines.len()
            ),
            vec![lines.len().min(slots) + 1],
        );
    }
    let select = |f: &dyn Fn(&str) -> bool| -> Vec<usize> {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| f(l))
            .map(|(i, _)| i + 1)
            .collect()
    };
    let empty = select(&|l| l.trim().is_empty());
    let trailing = select(&|l| !l.trim().is_empty() && l.trim_end() != l);
    let leading = select(&|l| !l.trim().is_empty() && l.trim_start() != l);
    match kind {
        SidecarKind::Text => {
            issue(
                Severity::Warning,
                "empty line: the slot has no entry".into(),
                empty,
            );
        }
        SidecarKind::Threshold => {
            let not_number = select(&|l| l.trim().parse::<f64>().is_err());
            let outside = select(&|l| {
                l.trim()
                    .parse::<f64>()
                    .is_ok_and(|v| !(0.0..=1.0).contains(&v))
            });
            issue(Severity::Error, "not a number".into(), not_number);
            issue(Severity::Error, "threshold outside [0, 1]".into(), outside);
        }
    }
    issue(Severity::Warning, "trailing whitespace".into(), trailing);
    issue(Severity::Warning, "leading whitespace".into(), leading);
    if ends_with_newline {
        issue(
            Severity::Note,
            "ends with a newline (a line end, not an extra slot)".into(),
            Vec::new(),
        );
    }
    issues.sort_by_key(|i| i.severity);
    Ok(SidecarReport {
        name: name.into(),
        path: path.display().to_string(),
        kind,
        lines: lines.len(),
        expected: slots,
        ends_with_newline,
        issues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &[u8], kind: SidecarKind, slots: usize) -> SidecarReport {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.txt");
        std::fs::write(&p, text).unwrap();
        check_sidecar("s", &p, kind, slots).unwrap()
    }

    fn lines_of<'a>(r: &'a SidecarReport, what: &str) -> &'a [usize] {
        &r.issues
            .iter()
            .find(|i| i.message.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` in {:?}", r.issues))
            .lines
    }

    #[test]
    fn thresholds_must_be_numbers_in_unit_interval() {
        let r = check(b"0.5\n1.5\nx\n\n0.7 \n", SidecarKind::Threshold, 5);
        assert_eq!(lines_of(&r, "not a number"), [3, 4]);
        assert_eq!(lines_of(&r, "outside"), [2]);
        assert_eq!(lines_of(&r, "trailing"), [5]);
        assert_eq!(r.count(Severity::Error), 2);
        assert!(r.ends_with_newline);
    }

    #[test]
    fn text_sidecar_warnings_and_line_count_error() {
        let r = check(b"a \r\n\r\n c\r\n", SidecarKind::Text, 4);
        assert_eq!(lines_of(&r, "trailing"), [1]);
        assert_eq!(lines_of(&r, "leading"), [3]);
        assert_eq!(lines_of(&r, "empty"), [2]);
        assert_eq!(lines_of(&r, "CRLF"), [1, 2, 3]);
        assert_eq!(lines_of(&r, "3 lines for 4 slots"), [4]);
        assert_eq!(r.issues[0].severity, Severity::Error);
        let r = check(b"a\n\xFF\n", SidecarKind::Text, 2);
        assert_eq!(lines_of(&r, "UTF-8"), [2]);
    }
}
