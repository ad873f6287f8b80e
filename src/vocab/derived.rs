//! A derived tag list (e.g. one a user regenerated after dropping tags) mapped back to the slots of
//! the vocabulary it came from: by exact name first, then by normalised name ([`normalize_tag`]).
//! The report says what would go wrong if the derived list were used as-is, row i read as slot i.

use super::{normalize_tag, parse_lines, Slot, VocabError, Vocabulary};
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// Which rule mapped a row to its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchRule {
    /// Same bytes as the vocabulary's tag.
    Exact,
    /// Same after normalisation (case, whitespace and `_`, Unicode NFC).
    Normalized,
    /// Normalisation matches several slots.
    Ambiguous,
    /// No slot has this name.
    Unmatched,
}

/// One row (line) of the derived list.
#[derive(Debug, Clone, Serialize)]
pub struct DerivedRow {
    /// 0-based row (line - 1): the index a model would give it.
    pub row: usize,
    pub tag: String,
    pub slot: Option<Slot>,
    pub rule: MatchRule,
    /// Candidate slots when the rule is `ambiguous`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Slot>,
}

/// What using the derived list as-is would do.
#[derive(Debug, Clone, Serialize)]
pub struct IndexShift {
    /// First row whose tag is not the vocabulary's tag at that slot.
    pub first_misaligned_row: Option<usize>,
    /// Rows that would point at the wrong tag (row i read as slot i, but its tag is elsewhere or nowhere).
    pub misaligned_rows: usize,
}

/// The mapping of a derived list onto the vocabulary.
#[derive(Debug, Clone, Serialize)]
pub struct DerivedReport {
    pub path: String,
    pub rows: usize,
    pub exact: usize,
    pub normalized: usize,
    pub ambiguous: usize,
    pub unmatched: usize,
    pub shift: IndexShift,
    /// Vocabulary slots no row maps to, ascending.
    pub dropped_slots: Vec<Slot>,
    /// Slots that several rows map to: (slot, rows).
    pub repeated_slots: Vec<(Slot, Vec<usize>)>,
    /// old slot → new row (`null` for dropped slots), indexed by old slot.
    pub old_to_new: Vec<Option<usize>>,
    /// Every row with its slot and rule.
    pub mapping: Vec<DerivedRow>,
}

/// Reads a derived list and maps each row to a slot of `vocab`.
pub fn map_derived(vocab: &Vocabulary, path: &Path) -> Result<DerivedReport> {
    let bytes = crate::fsutil::read(path).map_err(|e| Error::io(path, e))?;
    let tags = parse_lines(path, &bytes)?;
    if tags.is_empty() {
        return Err(VocabError::DerivedEmpty { path: path.into() }.into());
    }
    let mut exact: HashMap<&str, Slot> = HashMap::with_capacity(vocab.len());
    let mut normalized: HashMap<String, Vec<Slot>> = HashMap::with_capacity(vocab.len());
    for (slot, tag) in vocab.tags.iter().enumerate() {
        exact.entry(tag.as_str()).or_insert(slot);
        normalized.entry(normalize_tag(tag)).or_default().push(slot);
    }
    let mapping: Vec<DerivedRow> = tags
        .into_iter()
        .enumerate()
        .map(|(row, tag)| {
            let (slot, rule, candidates) = if let Some(&s) = exact.get(tag.as_str()) {
                (Some(s), MatchRule::Exact, Vec::new())
            } else {
                match normalized.get(&normalize_tag(&tag)).map(Vec::as_slice) {
                    Some([s]) => (Some(*s), MatchRule::Normalized, Vec::new()),
                    Some(many) if !many.is_empty() => (None, MatchRule::Ambiguous, many.to_vec()),
                    _ => (None, MatchRule::Unmatched, Vec::new()),
                }
            };
            DerivedRow {
                row,
                tag,
                slot,
                rule,
                candidates,
            }
        })
        .collect();
    let count = |rule| mapping.iter().filter(|r| r.rule == rule).count();
    let misaligned: Vec<usize> = mapping
        .iter()
        .filter(|r| r.slot != Some(r.row))
        .map(|r| r.row)
        .collect();
    let mut old_to_new = vec![None; vocab.len()];
    let mut rows_of: HashMap<Slot, Vec<usize>> = HashMap::new();
    for r in &mapping {
        if let Some(s) = r.slot {
            old_to_new[s].get_or_insert(r.row);
            rows_of.entry(s).or_default().push(r.row);
        }
    }
    let mut repeated_slots: Vec<(Slot, Vec<usize>)> = rows_of
        .into_iter()
        .filter(|(_, rows)| rows.len() > 1)
        .collect();
    repeated_slots.sort();
    Ok(DerivedReport {
        path: path.display().to_string(),
        rows: mapping.len(),
        exact: count(MatchRule::Exact),
        normalized: count(MatchRule::Normalized),
        ambiguous: count(MatchRule::Ambiguous),
        unmatched: count(MatchRule::Unmatched),
        shift: IndexShift {
            first_misaligned_row: misaligned.first().copied(),
            misaligned_rows: misaligned.len(),
        },
        dropped_slots: (0..vocab.len())
            .filter(|s| old_to_new[*s].is_none())
            .collect(),
        repeated_slots,
        old_to_new,
        mapping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_by_exact_then_normalised_name_and_reports_the_shift() {
        let v = Vocabulary::from_tags(
            ["cat", "Air Conditioner", "dog", "emu", "fox"]
                .map(String::from)
                .to_vec(),
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.txt");
        std::fs::write(&p, "cat\nair_conditioner\nemu\nfox\nyak\n").unwrap();
        let r = map_derived(&v, &p).unwrap();
        let rules: Vec<MatchRule> = r.mapping.iter().map(|m| m.rule).collect();
        use MatchRule::*;
        assert_eq!(rules, [Exact, Normalized, Exact, Exact, Unmatched]);
        assert_eq!((r.exact, r.normalized, r.unmatched), (3, 1, 1));
        assert_eq!(r.shift.first_misaligned_row, Some(2));
        assert_eq!(r.shift.misaligned_rows, 3);
        assert_eq!(r.dropped_slots, [2]);
        assert_eq!(r.old_to_new, [Some(0), Some(1), None, Some(2), Some(3)]);
    }
}
