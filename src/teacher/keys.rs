//! The record keys of teacher features: row order and lookup by key, in little memory.
//!
//! Every rank of a training run holds the keys of the whole teacher set. As a
//! `HashMap<String, usize>` plus the parsed `Vec<String>` they cost ≈ 190 bytes a key (2.5 GiB a
//! rank for a 14M-record set); here they are one string buffer (`crate::strings::Strings`), an
//! end offset per row and a hash table of row numbers: the key's bytes + ≈ 13 bytes. Keys are
//! streamed out of their JSON array straight into the buffer, with no string allocated per key.

use hashbrown::HashTable;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;

/// Keys in row order, each at most once.
#[derive(Clone, Default)]
pub struct KeyIndex {
    /// Row r's key is `keys.get(r)`.
    keys: crate::strings::Strings,
    /// Row numbers, hashed by their key.
    rows: HashTable<u32>,
    hasher: RandomState,
}

/// Why a key could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The key is already the key of this row.
    Duplicate { first_row: usize },
    /// Row numbers are held as `u32`: more than 4 294 967 295 keys.
    TooMany,
}

impl fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyIndex")
            .field("keys", &self.len())
            .field("bytes", &self.keys.text_len())
            .finish()
    }
}

impl KeyIndex {
    /// Makes room for `keys` more keys where memory allows (a hint from a file's shapes, which may
    /// claim more than it holds: `false` when the allocator refuses, and the keys then grow the index
    /// as they come).
    pub fn try_reserve(&mut self, keys: usize) -> bool {
        if !self.keys.try_reserve(keys) {
            return false;
        }
        let (all, hasher) = (&self.keys, &self.hasher);
        self.rows
            .try_reserve(keys, |&r| hasher.hash_one(all.get(r as usize)))
            .is_ok()
    }

    /// Adds `key` as the next row's key.
    pub fn push(&mut self, key: &str) -> Result<(), PushError> {
        let row = u32::try_from(self.keys.len()).map_err(|_| PushError::TooMany)?;
        let hash = self.hasher.hash_one(key);
        let all = &self.keys;
        if let Some(&first) = self.rows.find(hash, |&r| all.get(r as usize) == key) {
            return Err(PushError::Duplicate {
                first_row: first as usize,
            });
        }
        self.keys.push(key);
        let (all, hasher) = (&self.keys, &self.hasher);
        self.rows
            .insert_unique(hash, row, |&r| hasher.hash_one(all.get(r as usize)));
        Ok(())
    }

    /// The row whose key is `key`.
    pub fn row_of(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.rows
            .find(hash, |&r| self.keys.get(r as usize) == key)
            .map(|&r| r as usize)
    }

    /// The key of row `row`.
    pub fn key(&self, row: usize) -> Option<&str> {
        (row < self.keys.len()).then(|| self.keys.get(row))
    }

    /// The keys in row order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What stopped [`each_json_string`].
#[derive(Debug)]
pub enum EachStringError<E> {
    /// `json` is not a JSON array of strings.
    Json(serde_json::Error),
    /// The callback's own error, for the string at that position.
    Stopped(E),
}

/// Calls `each` on every string of the JSON array `json`, in order, without allocating a string per
/// element (escaped strings pass through one reused buffer). The first error of `each` stops it.
pub fn each_json_string<E>(
    json: &[u8],
    mut each: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), EachStringError<E>> {
    let mut stopped = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = de
        .deserialize_seq(Strings {
            each: &mut each,
            stopped: &mut stopped,
        })
        .and_then(|()| de.end());
    match (stopped, parsed) {
        (Some(e), _) => Err(EachStringError::Stopped(e)),
        (None, Err(e)) => Err(EachStringError::Json(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// The array's visitor: each element goes to `each`; an error of `each` is kept in `stopped` and
/// ends the parse.
struct Strings<'a, F, E> {
    each: &'a mut F,
    stopped: &'a mut Option<E>,
}

impl<'de, F: FnMut(&str) -> Result<(), E>, E> Visitor<'de> for Strings<'_, F, E> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let element = Element {
                each: &mut *self.each,
                stopped: &mut *self.stopped,
            };
            match seq.next_element_seed(element)? {
                Some(()) if self.stopped.is_some() => {
                    return Err(de::Error::custom("stopped by the caller"))
                }
                Some(()) => {}
                None => return Ok(()),
            }
        }
    }
}

/// One element: a string handed to `each` as it is parsed.
struct Element<'a, F, E> {
    each: &'a mut F,
    stopped: &'a mut Option<E>,
}

impl<'de, F: FnMut(&str) -> Result<(), E>, E> DeserializeSeed<'de> for Element<'_, F, E> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, F: FnMut(&str) -> Result<(), E>, E> Visitor<'de> for Element<'_, F, E> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<Er: de::Error>(self, v: &str) -> Result<(), Er> {
        if let Err(e) = (self.each)(v) {
            *self.stopped = Some(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_rows_and_order() {
        let mut index = KeyIndex::default();
        assert!(index.try_reserve(2));
        for key in ["b.jpg", "a.jpg", "", "ünï/ß.png"] {
            index.push(key).unwrap();
        }
        assert_eq!(index.len(), 4);
        assert_eq!(index.row_of("a.jpg"), Some(1));
        assert_eq!(index.row_of(""), Some(2));
        assert_eq!(index.row_of("ünï/ß.png"), Some(3));
        assert_eq!(index.row_of("c.jpg"), None);
        assert_eq!(index.key(0), Some("b.jpg"));
        assert_eq!(index.key(4), None);
        let keys: Vec<&str> = index.iter().collect();
        assert_eq!(keys, ["b.jpg", "a.jpg", "", "ünï/ß.png"]);
    }

    #[test]
    fn a_key_twice_names_its_first_row_and_is_not_added() {
        let mut index = KeyIndex::default();
        index.push("x").unwrap();
        index.push("y").unwrap();
        assert_eq!(index.push("x"), Err(PushError::Duplicate { first_row: 0 }));
        assert_eq!(index.len(), 2);
        // Prefixes and concatenations of keys are other keys.
        index.push("xy").unwrap();
        assert_eq!(index.row_of("xy"), Some(2));
    }

    #[test]
    fn an_impossible_reservation_is_refused_not_fatal() {
        let mut index = KeyIndex::default();
        assert!(!index.try_reserve(usize::MAX / 4));
        assert!(index.try_reserve(1000));
        index.push("a").unwrap();
        assert_eq!(index.row_of("a"), Some(0));
    }

    #[test]
    fn many_keys_survive_the_table_growing() {
        let mut index = KeyIndex::default();
        for i in 0..20_000 {
            index.push(&format!("images/{i}.jpg")).unwrap();
        }
        for i in (0..20_000).step_by(97) {
            assert_eq!(index.row_of(&format!("images/{i}.jpg")), Some(i));
        }
    }

    fn strings(json: &str) -> Result<Vec<String>, EachStringError<String>> {
        let mut out = Vec::new();
        each_json_string(json.as_bytes(), |s| {
            out.push(s.to_string());
            Ok::<(), String>(())
        })?;
        Ok(out)
    }

    #[test]
    fn strings_of_a_json_array_arrive_in_order_escapes_decoded() {
        assert_eq!(
            strings(r#" ["a", "b\"c", "\u00e9\n", ""] "#).unwrap(),
            ["a", "b\"c", "é\n", ""]
        );
        assert_eq!(strings("[]").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn anything_but_an_array_of_strings_is_a_json_error() {
        for bad in [
            "",
            "{}",
            "[1]",
            r#"["a", 2]"#,
            r#"["a""#,
            r#"["a"] x"#,
            "\"a\"",
            "[null]",
        ] {
            assert!(
                matches!(strings(bad), Err(EachStringError::Json(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn the_callbacks_error_stops_the_parse_and_is_returned() {
        let mut seen = 0;
        let got = each_json_string(br#"["a", "b", "c"]"#, |s| {
            seen += 1;
            if s == "b" {
                Err("b is bad")
            } else {
                Ok(())
            }
        });
        assert!(matches!(got, Err(EachStringError::Stopped("b is bad"))));
        assert_eq!(seen, 2);
    }
}
