//! Which slots to regenerate and which present slots to re-embed as controls.

use super::EmbedError;
use crate::error::Result;
use crate::manifest::SlotManifest;
use crate::rng::SplitMix64;
use crate::vocab::{slot_list, Slot};
use std::collections::BTreeSet;

/// What `embed`'s flags ask for, for a vocabulary of `slot_count` slots.
#[derive(Debug, Clone, Copy)]
pub struct SelectionRequest<'a> {
    pub slot_count: usize,
    /// `--all`: every slot.
    pub all: bool,
    /// `--slots LIST`.
    pub slots: Option<&'a str>,
    /// `--absent`: the manifest's absent slots.
    pub absent: bool,
    pub manifest: Option<&'a SlotManifest>,
    /// Whether a base file is patched (without one, every slot is computed).
    pub has_base: bool,
    /// `--control`: present slots re-embedded for `check` to calibrate against.
    pub control: Option<ControlSpec>,
    /// Seed of the control sample.
    pub seed: u64,
}

/// The slots `embed` regenerates and those it re-embeds as controls, both ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSelection {
    pub regenerate: Vec<Slot>,
    pub control: Vec<Slot>,
}

/// Chooses the slots: `--all`, else `--slots`, else the manifest's absent slots (asked for, or
/// implied by a manifest with a base), else every slot when there is no base to patch. Without a base
/// the output is a full file, so a partial selection is refused; controls need a base's original rows
/// and come from the present slots (every slot without a manifest) that are not regenerated.
pub fn select(req: &SelectionRequest) -> Result<SlotSelection> {
    let all = || (0..req.slot_count).collect::<Vec<Slot>>();
    let regenerate = if req.all {
        all()
    } else if let Some(list) = req.slots {
        slot_list::parse("--slots", list, req.slot_count)?
    } else if req.absent || (req.manifest.is_some() && req.has_base) {
        req.manifest
            .map(SlotManifest::absent_slots)
            .unwrap_or_default()
    } else if !req.has_base {
        all()
    } else {
        return Err(EmbedError::NoSelection.into());
    };
    if !req.has_base && regenerate.len() != req.slot_count {
        return Err(EmbedError::PartialWithoutBase {
            selected: regenerate.len(),
            slots: req.slot_count,
        }
        .into());
    }
    let control = match req.control {
        None => Vec::new(),
        Some(_) if !req.has_base => return Err(EmbedError::ControlNeedsBase.into()),
        Some(spec) => {
            let regenerated: BTreeSet<Slot> = regenerate.iter().copied().collect();
            let candidates: Vec<Slot> = req
                .manifest
                .map_or_else(all, SlotManifest::present_slots)
                .into_iter()
                .filter(|s| !regenerated.contains(s))
                .collect();
            sample_controls(&candidates, spec, req.seed)?
        }
    };
    Ok(SlotSelection {
        regenerate,
        control,
    })
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

    fn request(slot_count: usize) -> SelectionRequest<'static> {
        SelectionRequest {
            slot_count,
            all: false,
            slots: None,
            absent: false,
            manifest: None,
            has_base: true,
            control: None,
            seed: 0,
        }
    }

    fn refusal(req: &SelectionRequest) -> String {
        select(req).unwrap_err().to_string()
    }

    #[test]
    fn the_flags_choose_the_slots_in_order_of_precedence() {
        let req = request(6);
        let pick = |r: SelectionRequest| select(&r).unwrap().regenerate;
        assert_eq!(
            pick(SelectionRequest {
                all: true,
                slots: Some("1"),
                ..req
            }),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(
            pick(SelectionRequest {
                slots: Some("4,1-2"),
                ..req
            }),
            [1, 2, 4]
        );
        assert_eq!(
            pick(SelectionRequest {
                has_base: false,
                ..req
            }),
            [0, 1, 2, 3, 4, 5]
        );
        assert!(refusal(&req).contains("choose the slots to regenerate"));
    }

    #[test]
    fn without_a_base_the_file_is_whole_and_has_no_controls() {
        let req = SelectionRequest {
            has_base: false,
            ..request(6)
        };
        let e = refusal(&SelectionRequest {
            slots: Some("1"),
            ..req
        });
        assert!(e.contains("1 of 6 slots were selected"), "{e}");
        let e = refusal(&SelectionRequest {
            control: Some(ControlSpec::Count(2)),
            ..req
        });
        assert!(e.contains("give --base FILE"), "{e}");
    }

    #[test]
    fn a_manifest_with_a_base_regenerates_its_absent_slots_against_present_controls() {
        let tags = (0..6).map(|i| format!("t{i}")).collect();
        let vocab = crate::vocab::Vocabulary::from_tags(tags);
        let counts = [4, 0, 2, 0, 1, 3];
        let manifest = SlotManifest::from_counts(&vocab, &counts, &counts, Vec::new(), 0);
        let req = SelectionRequest {
            manifest: Some(&manifest),
            control: Some(ControlSpec::All),
            ..request(6)
        };
        let chosen = select(&req).unwrap();
        assert_eq!(chosen.regenerate, [1, 3]);
        assert_eq!(chosen.control, [0, 2, 4, 5]);
        // Without a base, a manifest alone selects nothing: the whole file is computed.
        let whole = select(&SelectionRequest {
            has_base: false,
            control: None,
            ..req
        })
        .unwrap();
        assert_eq!(whole.regenerate, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn controls_are_seeded_and_never_regenerated_slots() {
        let req = SelectionRequest {
            slots: Some("0-4"),
            control: Some(ControlSpec::All),
            ..request(10)
        };
        assert_eq!(select(&req).unwrap().control, [5, 6, 7, 8, 9]);
        let some = |seed| {
            select(&SelectionRequest {
                control: Some(ControlSpec::Count(3)),
                seed,
                ..req
            })
            .unwrap()
            .control
        };
        assert_eq!(some(1), some(1));
        assert!(some(1).iter().all(|s| (5..10).contains(s)));
        let e = refusal(&SelectionRequest {
            control: Some(ControlSpec::Count(6)),
            ..req
        });
        assert!(e.contains("only 5 slots"), "{e}");
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
