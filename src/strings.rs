//! Many strings in one buffer: the image paths and captions of a training set and the teacher
//! set's keys, which every rank holds whole. One allocation for all of them and 8 bytes of offset
//! each, where a `Vec<String>` costs a 24-byte header and an allocation per string.

use std::ops::Range;

/// Strings stored one after the other in one `String`, each found by its end offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Strings {
    text: String,
    /// String i is `text[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<usize>,
}

impl Strings {
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all the strings together.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Makes room for `n` more strings' offsets (their bytes grow as they come); `false` when the
    /// allocator refuses.
    pub fn try_reserve(&mut self, n: usize) -> bool {
        self.ends.try_reserve(n).is_ok()
    }

    /// String `i` (panics when `i >= len()`, as indexing does).
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// Strings `range`, as a borrowed list.
    pub fn slice(&self, range: Range<usize>) -> StrList<'_> {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "range within the strings"
        );
        StrList {
            strings: self,
            start: range.start,
            end: range.end,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

impl<S: AsRef<str>> FromIterator<S> for Strings {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut out = Strings::default();
        for s in iter {
            out.push(s.as_ref());
        }
        out
    }
}

/// Consecutive strings of a [`Strings`] (e.g. one record's captions), borrowed.
#[derive(Clone, Copy)]
pub struct StrList<'a> {
    strings: &'a Strings,
    start: usize,
    end: usize,
}

impl<'a> StrList<'a> {
    /// No strings.
    pub fn empty() -> StrList<'static> {
        static NONE: Strings = Strings {
            text: String::new(),
            ends: Vec::new(),
        };
        StrList {
            strings: &NONE,
            start: 0,
            end: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// String `i` of the list, if there is one.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        (i < self.len()).then(|| self.strings.get(self.start + i))
    }

    pub fn first(&self) -> Option<&'a str> {
        self.get(0)
    }

    /// The strings `range` of this list (panics beyond its end, as slicing does).
    pub fn slice(&self, range: Range<usize>) -> StrList<'a> {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "range within the list"
        );
        StrList {
            strings: self.strings,
            start: self.start + range.start,
            end: self.start + range.end,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a str> + 'a {
        let strings = self.strings;
        (self.start..self.end).map(move |i| strings.get(i))
    }

    pub fn to_vec(&self) -> Vec<&'a str> {
        self.iter().collect()
    }
}

impl PartialEq for StrList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for StrList<'_> {}

impl std::fmt::Debug for StrList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_lists_give_back_what_was_pushed() {
        let s: Strings = ["a dog", "", "ünïcode", "x"].into_iter().collect();
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a dog", "", "ünïcode", "x"]);
        let list = s.slice(1..4);
        assert_eq!((list.len(), list.first()), (3, Some("")));
        assert_eq!(list.slice(1..3).to_vec(), ["ünïcode", "x"]);
        assert_eq!(list.get(3), None);
        assert_eq!(s.slice(2..2), StrList::empty());
        assert!(StrList::empty().is_empty());
        assert_eq!(format!("{:?}", s.slice(0..2)), r#"["a dog", ""]"#);
    }
}
