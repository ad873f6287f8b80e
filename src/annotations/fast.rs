//! A fast path for well-formed records: a small parser that understands exactly the JSON a RAM record
//! needs (plain strings, integer ids, nested lists, any other field skipped) and gives up on anything
//! else: an escape in a string, a non-integer number, a type mismatch, a syntax error. A record it
//! gives up on goes through serde_json ([`RawRecord::parse`]), which reads it in full or names the error
//! precisely. So this parser may be stricter than serde_json, never laxer, and both agree on every
//! record the fast path accepts (see the tests).

use super::record::{CaptionMode, IdBuffers, LabelId, RawRecord};
use std::borrow::Cow;

/// Deeper nesting in an ignored field than this is left to serde_json.
const MAX_DEPTH: u32 = 64;

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.peek()?;
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// `null` if it comes next.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    /// The bytes of a string without escapes or control characters, valid UTF-8.
    #[inline]
    fn string_bytes(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let k = memchr::memchr2(b'"', b'\\', &self.b[start..])?;
        if self.b[start + k] != b'"' {
            return None;
        }
        let s = &self.b[start..start + k];
        // one pass for the common case: printable ASCII
        if !s.iter().all(|&c| c.wrapping_sub(0x20) < 0x60) {
            if s.iter().any(|&c| c < 0x20) {
                return None;
            }
            std::str::from_utf8(s).ok()?;
        }
        self.i = start + k + 1;
        Some(s)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        let s = self.string_bytes()?;
        // string_bytes checked it is UTF-8; this check is cheap for the one string per record that needs it
        std::str::from_utf8(s).ok()
    }

    /// A JSON integer that fits `i64` (no fraction, no exponent, no leading zero).
    #[inline]
    fn int(&mut self) -> Option<i64> {
        self.peek()?;
        let neg = self.b[self.i] == b'-';
        if neg {
            self.i += 1;
        }
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        if neg {
            0i64.checked_sub_unsigned(v)
        } else {
            i64::try_from(v).ok()
        }
    }

    /// `[item, ...]`: calls `item` for each element, returns how many there were.
    #[inline]
    fn list(&mut self, mut item: impl FnMut(&mut Self, u32) -> Option<()>) -> Option<u32> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(0);
        }
        let mut n = 0;
        loop {
            item(self, n)?;
            n += 1;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(n);
                }
                _ => return None,
            }
        }
    }

    /// `[id, ...]`, each id pushed through `push` with its position.
    #[inline]
    fn ids(&mut self, mut push: impl FnMut(u32, i64)) -> Option<u32> {
        self.list(|p, j| {
            push(j, p.int()?);
            Some(())
        })
    }

    /// `caption`: `[str, ...]` (or one string, when allowed), the strings kept when asked; the
    /// number of captions.
    fn captions(&mut self, out: &mut Vec<String>, mode: CaptionMode) -> Option<usize> {
        out.clear();
        let mut one = |p: &mut Self| {
            if mode.keep {
                out.push(p.string()?.to_owned());
            } else {
                p.string_bytes()?;
            }
            Some(())
        };
        if mode.allow_string && self.peek()? == b'"' {
            return one(self).map(|()| 1);
        }
        self.list(|p, _| one(p)).map(|n| n as usize)
    }

    /// Any JSON number, skipped.
    fn number(&mut self) -> Option<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.i;
            while p.b.get(p.i).is_some_and(u8::is_ascii_digit) {
                p.i += 1;
            }
            p.i - s
        };
        let start = self.i;
        let n = digits(self);
        if n == 0 || (n > 1 && self.b[start] == b'0') {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Any JSON value, skipped.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string_bytes().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' => self.list(|p, _| p.skip(depth + 1)).map(drop),
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.string_bytes()?;
                    self.eat(b':')?;
                    self.skip(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// Reads a well-formed record, or `None` to leave it to serde_json. Fills `bufs` like
/// [`RawRecord::parse`].
pub(crate) fn parse<'a>(
    bytes: &'a [u8],
    bufs: &mut IdBuffers,
    captions: CaptionMode,
) -> Option<RawRecord<'a>> {
    bufs.clear();
    let mut p = Parser { b: bytes, i: 0 };
    let mut rec = RawRecord::default();
    p.eat(b'{')?;
    if p.peek()? == b'}' {
        p.i += 1;
    } else {
        loop {
            let key = p.string_bytes()?;
            p.eat(b':')?;
            match key {
                b"image_path" => {
                    rec.image_path = if p.null()? {
                        None
                    } else {
                        Some(Cow::Borrowed(p.string()?))
                    };
                }
                b"caption" => {
                    bufs.captions.clear();
                    rec.caption = if p.null()? {
                        None
                    } else {
                        Some(p.captions(&mut bufs.captions, captions)?)
                    };
                }
                b"union_label_id" => {
                    bufs.union.clear();
                    rec.union_label_id = !p.null()?;
                    if rec.union_label_id {
                        let union = &mut bufs.union;
                        p.ids(|_, v| union.push(LabelId::Int(v)))?;
                    }
                }
                b"parse_label_id" => {
                    bufs.parse.clear();
                    rec.parse_label_id = if p.null()? {
                        None
                    } else {
                        Some(parse_lists(&mut p, &mut bufs.parse)?)
                    };
                }
                _ => p.skip(0)?,
            }
            match p.peek()? {
                b',' => p.i += 1,
                b'}' => {
                    p.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (p.peek().is_none()).then_some(rec)
}

fn parse_lists(p: &mut Parser, out: &mut Vec<(u32, u32, LabelId)>) -> Option<usize> {
    p.list(|p, c| p.ids(|j, v| out.push((c, j, LabelId::Int(v)))).map(drop))
        .map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the fast path accepts, serde_json reads the same way.
    fn agree(text: &str) -> bool {
        agree_with(text, CaptionMode::default())
    }

    fn agree_with(text: &str, mode: CaptionMode) -> bool {
        let mut fast_bufs = IdBuffers::default();
        let mut slow_bufs = IdBuffers::default();
        let slow = RawRecord::parse(text.as_bytes(), &mut slow_bufs, mode);
        match parse(text.as_bytes(), &mut fast_bufs, mode) {
            None => false,
            Some(f) => {
                let s = slow.unwrap_or_else(|e| {
                    panic!("fast path accepted what serde refuses ({e}): {text}")
                });
                assert_eq!(f.image_path, s.image_path, "{text}");
                assert_eq!(f.caption, s.caption, "{text}");
                assert_eq!(f.union_label_id, s.union_label_id, "{text}");
                assert_eq!(f.parse_label_id, s.parse_label_id, "{text}");
                assert_eq!(fast_bufs.union, slow_bufs.union, "{text}");
                assert_eq!(fast_bufs.parse, slow_bufs.parse, "{text}");
                assert_eq!(fast_bufs.captions, slow_bufs.captions, "{text}");
                true
            }
        }
    }

    #[test]
    fn accepts_plain_records_like_serde() {
        for text in [
            r#"{"image_path": "a/b.jpg", "caption": ["x", "y z"], "union_label_id": [0, 12, -3, 9223372036854775807], "parse_label_id": [[0], [], [12, 4]]}"#,
            r#" { "union_label_id" : [ ] , "caption":[],"parse_label_id":[],"image_path":"é.jpg" } "#,
            "{\r\n\"image_path\": null,\n\"caption\": null, \"union_label_id\": null, \"parse_label_id\": null}",
            r#"{"extra": {"a": [1, 2.5e-3, -0, true, false, null, {"b": "c"}]}, "union_label_id": [1], "union_label_id": [2]}"#,
            r#"{}"#,
        ] {
            assert!(agree(text), "fast path refused {text}");
        }
    }

    #[test]
    fn leaves_everything_unusual_to_serde() {
        for text in [
            r#"{"image_path": "a\"b.jpg"}"#,
            r#"{"caption": ["\u00e9"]}"#,
            r#"{"union_label_id": [1.0]}"#,
            r#"{"union_label_id": [1e2]}"#,
            r#"{"union_label_id": [01]}"#,
            r#"{"union_label_id": ["1"]}"#,
            r#"{"union_label_id": [18446744073709551616]}"#,
            r#"{"union_label_id": [1,]}"#,
            r#"{"caption": "x"}"#,
            r#"{"image_path": 3}"#,
            r#"{"parse_label_id": [1]}"#,
            r#"{"a": 1} x"#,
            r#"{"a": 1,}"#,
            r#"{"a": tru}"#,
            r#"{"a": -}"#,
            r#"{"a": 1.}"#,
            "{\"a\": \"tab\there\"}",
            r#"[1]"#,
            r#"{"a" 1}"#,
            r#"{"union_label_id": [1"#,
        ] {
            assert!(!agree(text), "fast path accepted {text}");
        }
        assert!(parse(
            b"{\"image_path\": \"\xFF\"}",
            &mut IdBuffers::default(),
            CaptionMode::default()
        )
        .is_none());
    }

    #[test]
    fn keeps_captions_like_serde() {
        let keep = CaptionMode {
            keep: true,
            allow_string: true,
        };
        for text in [
            r#"{"caption": ["a dog", "é"], "image_path": "x"}"#,
            r#"{"caption": "one", "caption": ["two"]}"#,
            r#"{"caption": ["two"], "caption": "one"}"#,
            r#"{"caption": []}"#,
        ] {
            assert!(agree_with(text, keep), "fast path refused {text}");
        }
        assert!(!agree_with(r#"{"caption": "one"}"#, CaptionMode::default()));
        assert!(!agree_with(r#"{"caption": ["a\nb"]}"#, keep));
    }
}
