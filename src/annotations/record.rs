//! One RAM training record, `{image_path, caption: [str], union_label_id: [int], parse_label_id: [[int]]}`,
//! read straight from its bytes (strings borrowed where possible) and checked field by field.

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// A label id as written in the file: RAM indexes a numpy array with it, so only a JSON integer
/// is valid.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelId {
    Int(i64),
    /// An integer beyond `i64` (always out of range).
    Huge(String),
    /// Anything else, rendered for the message (`1.5`, `"3"`, `null`, a list).
    NotInteger(String),
}

impl<'de> Deserialize<'de> for LabelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a label id")
            }
            fn visit_i64<E>(self, v: i64) -> Result<LabelId, E> {
                Ok(LabelId::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<LabelId, E> {
                Ok(i64::try_from(v).map_or_else(|_| LabelId::Huge(v.to_string()), LabelId::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<LabelId, E> {
                Ok(LabelId::NotInteger(format!("{v:?}")))
            }
            fn visit_str<E>(self, v: &str) -> Result<LabelId, E> {
                Ok(LabelId::NotInteger(format!("{v:?}")))
            }
            fn visit_bool<E>(self, v: bool) -> Result<LabelId, E> {
                Ok(LabelId::NotInteger(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<LabelId, E> {
                Ok(LabelId::NotInteger("null".into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LabelId, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LabelId::NotInteger("a list".into()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<LabelId, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LabelId::NotInteger("an object".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// How `caption` is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptionMode {
    /// Keep the texts (in [`IdBuffers::captions`]); otherwise they are only counted.
    pub keep: bool,
    /// Accept one string as a single caption (`train` and `teacher` do; RAM writes a list).
    pub allow_string: bool,
}

/// A caption: any valid JSON string (escapes checked, so a lone surrogate is refused), as `train`
/// and RAM's loader read them; appended to the list when it is kept.
struct CaptionSeed<'b>(Option<&'b mut Vec<String>>);

impl<'de> de::DeserializeSeed<'de> for CaptionSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for CaptionSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a caption string")
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        if let Some(out) = self.0 {
            out.push(v.to_owned());
        }
        Ok(())
    }
}

/// `caption`: a list of strings (or one string, when allowed); the number of captions.
struct CaptionsSeed<'b> {
    out: &'b mut Vec<String>,
    mode: CaptionMode,
}

impl CaptionsSeed<'_> {
    fn keep(&mut self) -> Option<&mut Vec<String>> {
        self.mode.keep.then_some(&mut *self.out)
    }
}

impl<'de> de::DeserializeSeed<'de> for CaptionsSeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        if self.mode.allow_string {
            d.deserialize_any(self)
        } else {
            d.deserialize_seq(self)
        }
    }
}

impl<'de> Visitor<'de> for CaptionsSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.mode.allow_string {
            f.write_str("a caption string or a list of captions")
        } else {
            f.write_str("a list of captions")
        }
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<usize, E> {
        if !self.mode.allow_string {
            return Err(E::invalid_type(de::Unexpected::Str(v), &self));
        }
        CaptionSeed(self.keep()).visit_str::<E>(v)?;
        Ok(1)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while seq.next_element_seed(CaptionSeed(self.keep()))?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// Label ids (and kept captions) of one record, in buffers reused from record to record (no
/// allocation per record).
#[derive(Debug, Default)]
pub struct IdBuffers {
    pub union: Vec<LabelId>,
    /// (caption index, position in its list, id).
    pub parse: Vec<(u32, u32, LabelId)>,
    /// The captions, when read with [`CaptionMode::keep`].
    pub captions: Vec<String>,
}

impl IdBuffers {
    pub(crate) fn clear(&mut self) {
        self.union.clear();
        self.parse.clear();
        self.captions.clear();
    }
}

/// A record as read from the file; its ids are in the [`IdBuffers`] it was read with. Missing and
/// `null` fields are `None`; unknown fields are ignored.
#[derive(Debug, Default)]
pub struct RawRecord<'a> {
    pub image_path: Option<Cow<'a, str>>,
    /// Number of captions.
    pub caption: Option<usize>,
    /// Whether `union_label_id` is there (its ids are in `IdBuffers::union`).
    pub union_label_id: bool,
    /// Number of lists in `parse_label_id`.
    pub parse_label_id: Option<usize>,
}

impl<'a> RawRecord<'a> {
    /// Parses one record's bytes, filling `bufs` with its ids.
    pub fn parse(
        bytes: &'a [u8],
        bufs: &mut IdBuffers,
        captions: CaptionMode,
    ) -> serde_json::Result<RawRecord<'a>> {
        bufs.clear();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let rec = de::DeserializeSeed::deserialize(RecordSeed { bufs, captions }, &mut de)?;
        de.end()?;
        Ok(rec)
    }
}

enum Field {
    ImagePath,
    Caption,
    Union,
    Parse,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "image_path" => Field::ImagePath,
                    "caption" => Field::Caption,
                    "union_label_id" => Field::Union,
                    "parse_label_id" => Field::Parse,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// A string borrowed from the input when it has no escapes.
struct MaybeBorrowed<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for MaybeBorrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeBorrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

struct RecordSeed<'b> {
    bufs: &'b mut IdBuffers,
    captions: CaptionMode,
}

impl<'de> de::DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = RawRecord<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = RawRecord<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a RAM record (a JSON object)")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rec = RawRecord::default();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::ImagePath => {
                    rec.image_path = map.next_value::<Option<MaybeBorrowed>>()?.map(|s| s.0)
                }
                Field::Caption => {
                    // a repeated key keeps its last value (as Python's json)
                    self.bufs.captions.clear();
                    rec.caption = map.next_value_seed(Nullable(CaptionsSeed {
                        out: &mut self.bufs.captions,
                        mode: self.captions,
                    }))?;
                }
                Field::Union => {
                    self.bufs.union.clear();
                    rec.union_label_id = map
                        .next_value_seed(Nullable(UnionSeed(&mut self.bufs.union)))?
                        .is_some();
                }
                Field::Parse => {
                    self.bufs.parse.clear();
                    rec.parse_label_id =
                        map.next_value_seed(Nullable(ParseSeed(&mut self.bufs.parse)))?;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(rec)
    }
}

/// `null` as `None`, anything else through the inner seed.
struct Nullable<S>(S);

impl<'de, S: de::DeserializeSeed<'de>> de::DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: de::DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list or null")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// `union_label_id`: a list of ids, appended to the buffer.
struct UnionSeed<'b>(&'b mut Vec<LabelId>);

impl<'de> de::DeserializeSeed<'de> for UnionSeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for UnionSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of label ids")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let before = self.0.len();
        while let Some(id) = seq.next_element::<LabelId>()? {
            self.0.push(id);
        }
        Ok(self.0.len() - before)
    }
}

/// `parse_label_id`: a list of id lists (one per caption).
struct ParseSeed<'b>(&'b mut Vec<(u32, u32, LabelId)>);

impl<'de> de::DeserializeSeed<'de> for ParseSeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ParseSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of label-id lists, one per caption")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut caption = 0u32;
        let mut scratch = Vec::new();
        while seq.next_element_seed(UnionSeed(&mut scratch))?.is_some() {
            self.0.extend(
                scratch
                    .drain(..)
                    .enumerate()
                    .map(|(j, id)| (caption, j as u32, id)),
            );
            caption += 1;
        }
        Ok(caption as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_what_is_wrong_with_them() {
        let ids: Vec<LabelId> = serde_json::from_str(
            r#"[3, -1, 1.5, 2.0, "7", null, true, [1], 18446744073709551615]"#,
        )
        .unwrap();
        assert_eq!(
            ids,
            vec![
                LabelId::Int(3),
                LabelId::Int(-1),
                LabelId::NotInteger("1.5".into()),
                LabelId::NotInteger("2.0".into()),
                LabelId::NotInteger("\"7\"".into()),
                LabelId::NotInteger("null".into()),
                LabelId::NotInteger("true".into()),
                LabelId::NotInteger("a list".into()),
                LabelId::Huge("18446744073709551615".into()),
            ]
        );
    }

    #[test]
    fn record_fields_and_missing_ones() {
        let mut bufs = IdBuffers::default();
        let text = r#"{"image_path": "a\/b.jpg", "caption": ["x", "y"], "union_label_id": [1, 2.5], "parse_label_id": [[4], [], [5, 6]], "extra": {"union_label_id": 1}}"#;
        let r = RawRecord::parse(text.as_bytes(), &mut bufs, CaptionMode::default()).unwrap();
        assert_eq!(r.image_path.as_deref(), Some("a/b.jpg"));
        assert_eq!(r.caption, Some(2));
        assert_eq!(r.parse_label_id, Some(3));
        assert_eq!(
            bufs.union,
            [LabelId::Int(1), LabelId::NotInteger("2.5".into())]
        );
        assert_eq!(
            bufs.parse,
            [
                (0, 0, LabelId::Int(4)),
                (2, 0, LabelId::Int(5)),
                (2, 1, LabelId::Int(6))
            ]
        );
        assert!(r.union_label_id);
        let r = RawRecord::parse(
            br#"{"image_path": null, "caption": ["x"], "union_label_id": null}"#,
            &mut bufs,
            CaptionMode::default(),
        )
        .unwrap();
        assert_eq!(r.image_path, None);
        assert_eq!(r.caption, Some(1));
        assert!(!r.union_label_id);
        assert_eq!(r.parse_label_id, None);
        assert!(RawRecord::parse(
            br#"{"caption": "not a list"}"#,
            &mut bufs,
            CaptionMode::default()
        )
        .is_err());
        // captions are strings, with valid escapes, as the training reader requires
        let e = RawRecord::parse(
            br#"{"caption": ["x", 3]}"#,
            &mut bufs,
            CaptionMode::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected a caption string"), "{e}");
        assert!(RawRecord::parse(
            br#"{"caption": ["\ud800"]}"#,
            &mut bufs,
            CaptionMode::default()
        )
        .is_err());
        assert!(RawRecord::parse(br#"[1]"#, &mut bufs, CaptionMode::default()).is_err());
        assert!(
            RawRecord::parse(br#"{"caption": []} x"#, &mut bufs, CaptionMode::default()).is_err()
        );
    }

    #[test]
    fn captions_kept_and_one_string_when_asked() {
        let mut bufs = IdBuffers::default();
        let keep = CaptionMode {
            keep: true,
            allow_string: true,
        };
        let r = RawRecord::parse(br#"{"caption": ["a\u00e9", "b"]}"#, &mut bufs, keep).unwrap();
        assert_eq!(
            (r.caption, bufs.captions.clone()),
            (Some(2), vec!["a\u{e9}".to_string(), "b".into()])
        );
        let r =
            RawRecord::parse(br#"{"caption": ["x"], "caption": "one"}"#, &mut bufs, keep).unwrap();
        assert_eq!(
            (r.caption, bufs.captions.clone()),
            (Some(1), vec!["one".to_string()])
        );
        let e = RawRecord::parse(br#"{"caption": "one"}"#, &mut bufs, CaptionMode::default())
            .unwrap_err();
        assert!(e.to_string().contains("expected a list of captions"), "{e}");
        assert!(RawRecord::parse(br#"{"caption": 3}"#, &mut bufs, keep).is_err());
    }
}
