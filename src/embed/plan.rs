//! Which slots to regenerate and which present slots to re-embed as controls.

use super::EmbedError;
use crate::error::Result;
use crate::rng::SplitMix64;
use crate::vocab::Slot;

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
