//! Slot lists on the command line, `3,17,200-210` (ranges inclusive): one parser for `embed --slots`,
//! `check --slots` and `synth --absent-slots`, and the writer that prints slots the same way.

use super::Slot;
use crate::error::Result;

/// A slot list refused: the flag it came from, the list as given and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{flag} `{list}`: {problem}")]
pub struct SlotListError {
    pub flag: &'static str,
    pub list: String,
    pub problem: SlotListProblem,
}

/// What is wrong with a slot list.
#[derive(Debug, thiserror::Error)]
pub enum SlotListProblem {
    #[error("`{0}` is not a slot number or range (use e.g. 3,17,100-120)")]
    NotASlot(String),
    #[error("range `{0}` is reversed")]
    Reversed(String),
    #[error("slot {slot} is out of range: the vocabulary has {count} slots (0..={})", count.saturating_sub(1))]
    OutOfRange { slot: Slot, count: usize },
    #[error("no slots given")]
    Empty,
}

/// Parses `text`, given as `flag`, against a vocabulary of `count` slots: ascending, de-duplicated
/// slots, at least one. Slots are marked in a table of `count` entries, so a list repeating a wide range
/// costs no more memory than the vocabulary.
pub fn parse(flag: &'static str, text: &str, count: usize) -> Result<Vec<Slot>> {
    let refuse = |problem| SlotListError {
        flag,
        list: text.into(),
        problem,
    };
    // A bad number is reported with its whole part (`3-x`, `-1`), which is what the user typed.
    let number = |s: &str, part: &str| {
        s.trim()
            .parse::<Slot>()
            .map_err(|_| refuse(SlotListProblem::NotASlot(part.into())))
    };
    let mut chosen = vec![false; count];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (number(a, part)?, number(b, part)?),
            None => (number(part, part)?, number(part, part)?),
        };
        if lo > hi {
            return Err(refuse(SlotListProblem::Reversed(part.into())).into());
        }
        if hi >= count {
            return Err(refuse(SlotListProblem::OutOfRange { slot: hi, count }).into());
        }
        chosen[lo..=hi].fill(true);
    }
    let slots: Vec<Slot> = (0..count).filter(|&s| chosen[s]).collect();
    if slots.is_empty() {
        return Err(refuse(SlotListProblem::Empty).into());
    }
    Ok(slots)
}

/// Writes slots in the syntax [`parse`] reads, runs as ranges (`0-479,481-929`), so thousands of
/// absent RAM slots print in a line that can be pasted back into a command.
pub fn format(slots: &[Slot]) -> String {
    let mut sorted = slots.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(match sorted[i] {
            end if end == start => start.to_string(),
            end => format!("{start}-{end}"),
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(text: &str, count: usize) -> String {
        parse("--slots", text, count).unwrap_err().to_string()
    }

    #[test]
    fn lists_parse_with_ranges_sorted_and_deduplicated() {
        assert_eq!(parse("--slots", "5, 1-3,2", 10).unwrap(), vec![1, 2, 3, 5]);
        assert_eq!(parse("--slots", " 9 - 9 ,", 10).unwrap(), vec![9]);
        let repeated = "0-99999,".repeat(2000);
        assert_eq!(parse("--slots", &repeated, 100_000).unwrap().len(), 100_000);
    }

    #[test]
    fn refusals_name_the_flag_the_list_and_the_part() {
        assert_eq!(
            refusal("10", 10),
            "--slots `10`: slot 10 is out of range: the vocabulary has 10 slots (0..=9)"
        );
        assert_eq!(
            refusal("1,x", 10),
            "--slots `1,x`: `x` is not a slot number or range (use e.g. 3,17,100-120)"
        );
        assert_eq!(refusal("3-1", 10), "--slots `3-1`: range `3-1` is reversed");
        assert_eq!(refusal(" , ", 10), "--slots ` , `: no slots given");
        assert_eq!(
            refusal("2,-1", 10),
            "--slots `2,-1`: `-1` is not a slot number or range (use e.g. 3,17,100-120)"
        );
        assert!(refusal("3-x", 10).contains(": `3-x` is not a slot number"));
    }

    #[test]
    fn slots_format_as_ranges_that_parse_back() {
        assert_eq!(format(&[]), "");
        assert_eq!(format(&[7, 1, 2, 3, 5, 3]), "1-3,5,7");
        let slots: Vec<Slot> = (0..4585).filter(|s| s % 1000 != 480).collect();
        let text = format(&slots);
        assert_eq!(
            text,
            "0-479,481-1479,1481-2479,2481-3479,3481-4479,4481-4584"
        );
        assert_eq!(parse("--slots", &text, 4585).unwrap(), slots);
    }
}
