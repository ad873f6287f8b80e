//! Byte-level mutations in the style of AFL's "havoc" stage: a few stacked edits chosen at random,
//! with a dictionary of format tokens so that short syntax (pickle opcodes, JSON punctuation, npy
//! header keys) appears far more often than random bytes would produce it.

use crate::rng::SplitMix64;

/// Integers that tend to sit on boundaries (sign, width, overflow of `× 4` / `× 8`).
const INTERESTING: &[i64] = &[
    0,
    1,
    -1,
    2,
    -2,
    7,
    8,
    16,
    64,
    100,
    127,
    128,
    -128,
    255,
    256,
    1024,
    4096,
    32767,
    -32768,
    65535,
    65536,
    i32::MAX as i64,
    i32::MIN as i64,
    u32::MAX as i64,
    1 << 32,
    1 << 53,
    1 << 61,
    1 << 62,
    i64::MAX,
    i64::MIN,
];

/// Decimal spellings of boundary values, for text formats.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"0.5",
    b"255",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"2147483648",
    b"4611686018427387904",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"340282366920938463463374607431768211456",
    b"1e309",
    b"-1e309",
    b"1e-400",
    b"3.4e38",
    b"1e39",
    b"NaN",
    b"nan",
    b"inf",
    b"-inf",
    b"1.0000000000000002",
    b"99999999999999999999999999999999999999",
];

/// Stacked byte edits on inputs of at most `max_len` bytes.
pub struct Mutator<'a> {
    pub rng: SplitMix64,
    dict: &'a [&'a [u8]],
    max_len: usize,
}

impl<'a> Mutator<'a> {
    pub fn new(rng: SplitMix64, dict: &'a [&'a [u8]], max_len: usize) -> Self {
        Mutator { rng, dict, max_len }
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n.max(1) as u64) as usize
    }

    /// A position in `0..=len` (insertion point).
    fn pos(&mut self, len: usize) -> usize {
        self.below(len + 1)
    }

    /// Applies 1 to 16 edits (fewer more often), splicing from `others` when asked to.
    pub fn mutate(&mut self, data: &mut Vec<u8>, others: &[Vec<u8>]) {
        let stack = 1 << self.below(5);
        for _ in 0..self.below(stack) + 1 {
            self.edit(data, others);
        }
        data.truncate(self.max_len);
    }

    fn edit(&mut self, d: &mut Vec<u8>, others: &[Vec<u8>]) {
        match self.below(14) {
            0 if !d.is_empty() => {
                let i = self.below(d.len());
                d[i] ^= 1 << self.below(8);
            }
            1 if !d.is_empty() => {
                let i = self.below(d.len());
                d[i] = self.rng.next_u64() as u8;
            }
            2 if !d.is_empty() => {
                let i = self.below(d.len());
                let delta = self.below(35) as u8 + 1;
                d[i] = if self.below(2) == 0 {
                    d[i].wrapping_add(delta)
                } else {
                    d[i].wrapping_sub(delta)
                };
            }
            3 => {
                let at = self.pos(d.len());
                let n = self.below(8) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
                d.splice(at..at, bytes);
            }
            4 if !d.is_empty() => {
                let at = self.below(d.len());
                let n = self.below((d.len() - at).min(64)) + 1;
                d.drain(at..at + n);
            }
            5 if !d.is_empty() => {
                let (from, n) = self.range(d.len());
                let chunk = d[from..from + n].to_vec();
                let at = self.pos(d.len());
                d.splice(at..at, chunk);
            }
            6 if !others.is_empty() => self.splice(d, others),
            7 if !self.dict.is_empty() => {
                let tok = self.dict[self.below(self.dict.len())];
                let at = self.pos(d.len());
                d.splice(at..at, tok.iter().copied());
            }
            8 if !self.dict.is_empty() && !d.is_empty() => {
                let tok = self.dict[self.below(self.dict.len())];
                let at = self.below(d.len());
                let end = (at + tok.len()).min(d.len());
                d.splice(at..end, tok.iter().copied());
            }
            9 => self.binary_int(d),
            10 => self.decimal(d),
            11 if !d.is_empty() => d.truncate(self.below(d.len())),
            12 if !d.is_empty() => {
                // a chunk repeated many times: deep nesting, long runs
                let (from, n) = self.range(d.len().min(16));
                let chunk = d[from..from + n].to_vec();
                let times = 1 << self.below(14);
                let at = self.pos(d.len());
                let run: Vec<u8> = chunk
                    .iter()
                    .copied()
                    .cycle()
                    .take((n * times).min(self.max_len))
                    .collect();
                d.splice(at..at, run);
            }
            13 if d.len() > 1 => {
                let (i, j) = (self.below(d.len()), self.below(d.len()));
                d.swap(i, j);
            }
            _ => {
                let at = self.pos(d.len());
                d.insert(at, self.rng.next_u64() as u8);
            }
        }
    }

    /// A non-empty range `from..from + n` inside `0..len` (len > 0), at most 256 bytes long.
    fn range(&mut self, len: usize) -> (usize, usize) {
        let from = self.below(len);
        let n = self.below((len - from).min(256)) + 1;
        (from, n)
    }

    /// Replaces the tail of `d` with the tail of another input, or inserts a piece of it.
    fn splice(&mut self, d: &mut Vec<u8>, others: &[Vec<u8>]) {
        let other = &others[self.below(others.len())];
        if other.is_empty() {
            return;
        }
        let (from, n) = self.range(other.len());
        if self.below(2) == 0 {
            let at = self.pos(d.len());
            d.truncate(at);
            d.extend_from_slice(&other[from..]);
        } else {
            let at = self.pos(d.len());
            d.splice(at..at, other[from..from + n].iter().copied());
        }
    }

    /// Overwrites 1, 2, 4 or 8 bytes with a boundary integer, little- or big-endian.
    fn binary_int(&mut self, d: &mut Vec<u8>) {
        let v = INTERESTING[self.below(INTERESTING.len())];
        let width = 1 << self.below(4);
        let mut bytes = v.to_le_bytes()[..width].to_vec();
        if self.below(2) == 0 {
            bytes.reverse();
        }
        if d.len() < width {
            d.extend_from_slice(&bytes);
            return;
        }
        let at = self.below(d.len() - width + 1);
        d[at..at + width].copy_from_slice(&bytes);
    }

    /// Replaces a run of ASCII digits (or inserts at a random point) with a boundary number.
    fn decimal(&mut self, d: &mut Vec<u8>) {
        let num = NUMBERS[self.below(NUMBERS.len())];
        let start = self.pos(d.len());
        let Some(at) = d[start..]
            .iter()
            .position(u8::is_ascii_digit)
            .map(|p| p + start)
        else {
            d.splice(start..start, num.iter().copied());
            return;
        };
        let mut from = at;
        while from > 0 && (d[from - 1] == b'-' || d[from - 1].is_ascii_digit()) {
            from -= 1;
        }
        let end = d[at..]
            .iter()
            .position(|b| !(b.is_ascii_digit() || b"._eE+-".contains(b)))
            .map_or(d.len(), |p| p + at);
        d.splice(from..end, num.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mutants_and_length_bounded() {
        let seeds = vec![b"{\"a\": [1, 2, 3]}".to_vec(), b"hello 42 world".to_vec()];
        let dict: &[&[u8]] = &[b"[", b"]", b"\"x\""];
        let run = |seed| {
            let mut m = Mutator::new(SplitMix64(seed), dict, 300);
            (0..500)
                .map(|i| {
                    let mut d = seeds[i % 2].clone();
                    m.mutate(&mut d, &seeds);
                    d
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(7), run(7));
        assert_eq!(a, b);
        assert!(a.iter().all(|d| d.len() <= 300));
        let changed = a.iter().filter(|d| !seeds.contains(d)).count();
        assert!(
            changed > 400,
            "{changed} of 500 mutants differ from their seed"
        );
        assert_ne!(a, run(8));
    }

    #[test]
    fn decimal_edit_replaces_a_whole_number() {
        let mut m = Mutator::new(SplitMix64(1), &[], 1000);
        let mut seen_boundary = false;
        for _ in 0..200 {
            let mut d = b"k = 12345".to_vec();
            m.decimal(&mut d);
            let text = String::from_utf8(d).unwrap();
            assert!(!text.contains("12345") || text.len() > 9, "{text}");
            seen_boundary |= text == "k = 18446744073709551616";
        }
        assert!(seen_boundary);
    }
}
