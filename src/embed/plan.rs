//! Which slots to regenerate and which present slots to re-embed as controls.

use super::EmbedError;
use crate::error::Result;
use crate::rng::SplitMix64;
use crate::vocab::Slot;

/// Parses a slot list such as `3,17,100-120` (inclusive ranges) against a vocabulary of `slots` slots.
/// Returns ascending, de-duplicated slots.
pub fn parse_slot_list(list: &str, slots: usize) -> Result<Vec<Slot>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| -> Result<Slot> {
            s.trim()
                .parse::<Slot>()
                .map_err(|_| EmbedError::NotASlot(s.into()).into())
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(part)?, parse(part)?),
        };
        if lo > hi {
            return Err(EmbedError::ReversedRange(part.into()).into());
        }
        if hi >= slots {
            return Err(EmbedError::SlotOutOfRange {
                slot: hi,
                last: slots.saturating_sub(1),
            }
            .into());
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        return Err(EmbedError::NoSlots.into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// How many present slots to re-embed as controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlSpec {
    Count(usize),
    All,
}

impl std::str::FromStr for ControlSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(ControlSpec::All);
        }
        s.parse::<usize>()
            .map(ControlSpec::Count)
            .map_err(|_| format!("`{s}` is neither a number of slots nor `all`"))
    }
}

/// A seeded sample of control slots from `candidates` (slots that have an original row), ascending.
/// `Count(n)` with n larger than the candidates is an error naming both numbers.
pub fn sample_controls(candidates: &[Slot], spec: ControlSpec, seed: u64) -> Result<Vec<Slot>> {
    let n = match spec {
        ControlSpec::All => candidates.len(),
        ControlSpec::Count(n) if n > candidates.len() => {
            return Err(EmbedError::TooManyControls {
                wanted: n,
                available: candidates.len(),
            }
            .into())
        }
        ControlSpec::Count(n) => n,
    };
    let mut pool = candidates.to_vec();
    let mut rng = SplitMix64(seed);
    // Partial Fisher-Yates: the first n entries become the sample.
    for i in 0..n {
        let j = i + rng.below((pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(n);
    pool.sort_unstable();
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_lists() {
        assert_eq!(parse_slot_list("5, 1-3,2", 10).unwrap(), vec![1, 2, 3, 5]);
        assert!(parse_slot_list("10", 10)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(parse_slot_list("3-1", 10).is_err());
        assert!(parse_slot_list("x", 10).is_err());
        assert!(parse_slot_list(" , ", 10).is_err());
    }

    #[test]
    fn control_sample_is_seeded_and_within_candidates() {
        let cands: Vec<Slot> = (0..100).filter(|s| s % 3 != 0).collect();
        let a = sample_controls(&cands, ControlSpec::Count(10), 7).unwrap();
        let b = sample_controls(&cands, ControlSpec::Count(10), 7).unwrap();
        let c = sample_controls(&cands, ControlSpec::Count(10), 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.iter().all(|s| cands.contains(s)));
        assert_eq!(sample_controls(&cands, ControlSpec::All, 0).unwrap(), cands);
        assert!(sample_controls(&cands, ControlSpec::Count(1000), 0).is_err());
        assert_eq!("all".parse::<ControlSpec>().unwrap(), ControlSpec::All);
    }
}
