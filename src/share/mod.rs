//! One process's part of work that several processes split: the ranks of a distributed run divide
//! the checks made before the first step (every image read, every teacher value finite), so that
//! each item is checked once in the whole run instead of once per rank.

pub mod shard;

use std::ops::Range;

/// Block `index` of `0..n` cut into `count` contiguous blocks whose sizes differ by at most one:
/// `index·n/count .. (index+1)·n/count` (teacher shard files are cut so too). `count` > 0.
pub fn block(index: usize, count: usize, n: usize) -> Range<usize> {
    let at = |i: usize| (i as u128 * n as u128 / count.max(1) as u128) as usize;
    at(index)..at(index + 1)
}

/// Part `index` of `count` contiguous, nearly equal parts of some work ([`block`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkShare {
    index: usize,
    count: usize,
}

impl WorkShare {
    /// All of the work: a process alone.
    pub const WHOLE: WorkShare = WorkShare { index: 0, count: 1 };

    /// Part `index` of `count`; `None` unless `index < count`.
    pub fn new(index: usize, count: usize) -> Option<WorkShare> {
        (index < count).then_some(WorkShare { index, count })
    }

    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    pub fn index(self) -> usize {
        self.index
    }

    pub fn count(self) -> usize {
        self.count
    }

    /// This part's items of `0..n` ([`block`]).
    pub fn range(self, n: usize) -> Range<usize> {
        block(self.index, self.count, n)
    }
}

impl std::fmt::Display for WorkShare {
    /// `part 3 of 8`, or `all` for the whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_whole() {
            write!(f, "all")
        } else {
            write!(f, "part {} of {}", self.index + 1, self.count)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_cover_every_item_once_in_order() {
        for n in [0, 1, 7, 8, 9, 1000] {
            for count in [1, 2, 3, 8, 13] {
                let mut next = 0;
                for index in 0..count {
                    let r = WorkShare::new(index, count).unwrap().range(n);
                    assert_eq!(r.start, next, "n {n}, part {index} of {count}");
                    assert!(r.len() == n / count || r.len() == n / count + 1);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(WorkShare::WHOLE.range(5), 0..5);
    }

    #[test]
    fn a_part_beyond_the_count_does_not_exist() {
        assert_eq!(WorkShare::new(2, 2), None);
        assert_eq!(WorkShare::new(0, 0), None);
        assert_eq!(WorkShare::new(1, 2).unwrap().to_string(), "part 2 of 2");
    }
}
