//! CLIP's byte-level BPE tokenizer (OpenAI `simple_tokenizer.py`, also used by open_clip), read from
//! `bpe_simple_vocab_16e6.txt.gz`: merges from lines 2..=48 895, 49 408 tokens, `<|startoftext|>` 49406,
//! `<|endoftext|>` 49407, context 77 with truncation that keeps the end-of-text token.
//!
//! Text cleaning follows the reference: `ftfy.fix_text`, HTML unescaping (twice), whitespace runs to one
//! space, trim, lower case. Of ftfy this reproduces what applies to well-formed text (NFC, curly quotes,
//! Latin ligatures, full-width forms, control characters); it does not repair mojibake.

use super::EmbedError;
use crate::error::Result;
use regex::Regex;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use unicode_normalization::UnicodeNormalization;

/// Token id of `<|startoftext|>`.
pub const START_OF_TEXT: u32 = 49406;
/// Token id of `<|endoftext|>`.
pub const END_OF_TEXT: u32 = 49407;
/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;
/// Number of merges CLIP uses (`49152 - 256 - 2`).
pub const MERGES: usize = 48_894;
/// The most text a merges file may decompress to: CLIP's is 3.2 MB; a file that inflates past this
/// (a decompression bomb) is refused before it takes the machine's memory.
const MAX_MERGES_TEXT: u64 = 64 << 20;

/// The pre-tokenisation pattern of `simple_tokenizer.py` (case-insensitive).
const PATTERN: &str =
    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

/// CLIP's BPE tokenizer.
pub struct ClipBpe {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    merges: Vec<(String, String)>,
    byte_encoder: [char; 256],
    pattern: Regex,
    whitespace: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
    /// The vocabulary file it was read from.
    pub path: PathBuf,
}

/// GPT-2's reversible byte → printable-character table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

impl ClipBpe {
    /// Reads the gzip'd merges file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|cause| EmbedError::BpeMissing {
            path: path.into(),
            cause,
        })?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .take(MAX_MERGES_TEXT + 1)
            .read_to_string(&mut text)
            .map_err(|source| EmbedError::BpeNotGzip {
                path: path.into(),
                source,
            })?;
        if text.len() as u64 > MAX_MERGES_TEXT {
            return Err(EmbedError::BpeTooLarge {
                path: path.into(),
                limit: MAX_MERGES_TEXT,
            }
            .into());
        }
        Self::from_merges_text(&text, path)
    }

    /// Builds the tokenizer from the decompressed merges text (first line a header).
    pub fn from_merges_text(text: &str, path: &Path) -> Result<Self> {
        let lines: Vec<&str> = text.split('\n').skip(1).take(MERGES).collect();
        if lines.len() != MERGES {
            return Err(EmbedError::BpeMergeCount {
                path: path.into(),
                found: lines.len(),
                expected: MERGES,
            }
            .into());
        }
        let byte_encoder = bytes_to_unicode();
        // The reference lists byte symbols printable bytes first (in byte order), then the rest.
        let mut symbols: Vec<char> = byte_encoder.to_vec();
        symbols.sort_by_key(|&c| (u32::from(c) >= 256, u32::from(c)));
        let mut vocab: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        vocab.extend(symbols.iter().map(|c| format!("{c}</w>")));
        let mut ranks = HashMap::with_capacity(MERGES);
        let mut merges = Vec::with_capacity(MERGES);
        for (i, line) in lines.iter().enumerate() {
            let mut parts = line.split_whitespace();
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(EmbedError::BpeLine {
                    path: path.to_path_buf(),
                    line: i + 2,
                    text: line.to_string(),
                }
                .into());
            };
            vocab.push(format!("{a}{b}"));
            ranks.insert((a.to_string(), b.to_string()), i);
            merges.push((a.to_string(), b.to_string()));
        }
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let encoder = vocab
            .into_iter()
            .enumerate()
            .map(|(i, v)| (v, i as u32))
            .collect();
        Ok(ClipBpe {
            encoder,
            ranks,
            merges,
            byte_encoder,
            pattern: Regex::new(PATTERN).expect("valid pattern"),
            whitespace: Regex::new(r"\s+").expect("valid pattern"),
            cache: Mutex::new(HashMap::new()),
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text` without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = self.clean(text);
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&cleaned) {
            let token: String = m
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            if let Some(hit) = self.cache.lock().expect("cache").get(&token) {
                ids.extend_from_slice(hit);
                continue;
            }
            let pieces: Vec<u32> = self
                .bpe(&token)
                .iter()
                .map(|p| self.encoder[p.as_str()])
                .collect();
            ids.extend_from_slice(&pieces);
            self.cache.lock().expect("cache").insert(token, pieces);
        }
        ids
    }

    /// `<|startoftext|> ids <|endoftext|>`, truncated to `context` tokens keeping the end token last
    /// (`clip.tokenize(..., truncate=True)`), unpadded.
    pub fn tokenize(&self, text: &str, context: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(context);
        ids.push(START_OF_TEXT);
        ids.extend(self.encode(text));
        ids.push(END_OF_TEXT);
        if ids.len() > context {
            ids.truncate(context);
            ids[context - 1] = END_OF_TEXT;
        }
        ids
    }

    /// `basic_clean` + `whitespace_clean` + lower case.
    fn clean(&self, text: &str) -> String {
        let fixed = fix_text(text);
        let unescaped = html_unescape(&html_unescape(&fixed));
        self.whitespace
            .replace_all(unescaped.trim(), " ")
            .trim()
            .to_lowercase()
    }

    /// Byte-pair merges of one pre-token (already mapped to printable characters).
    fn bpe(&self, token: &str) -> Vec<String> {
        let chars: Vec<char> = token.chars().collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| self.ranks.get(&(w[0].clone(), w[1].clone())))
                .min()
                .copied();
            let Some(rank) = best else { break };
            let (first, second) = &self.merges[rank];
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && &word[i] == first && &word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

/// The parts of `ftfy.fix_text` that apply to well-formed Unicode: control characters removed, curly
/// quotes straightened, Latin ligatures and full-width forms expanded, line breaks unified, NFC.
fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => out.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => out.push('"'),
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            '\u{0132}' => out.push_str("IJ"),
            '\u{0133}' => out.push_str("ij"),
            '\u{3000}' => out.push(' '),
            '\u{FF01}'..='\u{FF5E}' => {
                out.push(char::from_u32(c as u32 - 0xFF01 + 0x21).expect("ascii"))
            }
            '\r' | '\u{2028}' | '\u{2029}' | '\u{0085}' => out.push('\n'),
            '\u{0000}'..='\u{0008}'
            | '\u{000B}'
            | '\u{000E}'..='\u{001F}'
            | '\u{007F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFC}' => {}
            _ => out.push(c),
        }
    }
    out.nfc().collect()
}

/// Python's `html.unescape` for numeric references and the common named entities.
fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    const NAMED: &[(&str, &str)] = &[
        ("amp", "&"),
        ("lt", "<"),
        ("gt", ">"),
        ("quot", "\""),
        ("apos", "'"),
        ("nbsp", "\u{a0}"),
        ("copy", "©"),
        ("reg", "®"),
        ("trade", "™"),
        ("hellip", "…"),
        ("mdash", "—"),
        ("ndash", "–"),
        ("lsquo", "‘"),
        ("rsquo", "’"),
        ("ldquo", "“"),
        ("rdquo", "”"),
        ("eacute", "é"),
        ("egrave", "è"),
        ("agrave", "à"),
        ("ccedil", "ç"),
        ("uuml", "ü"),
        ("ouml", "ö"),
        ("auml", "ä"),
        ("szlig", "ß"),
        ("deg", "°"),
        ("times", "×"),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 1..];
        let end = tail.find(';').filter(|&e| e <= 32);
        let decoded = end.and_then(|e| {
            let name = &tail[..e];
            let value = if let Some(num) = name.strip_prefix('#') {
                let code = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse::<u32>().ok(),
                }?;
                char::from_u32(code)
                    .filter(|&c| c != '\0')
                    .unwrap_or('\u{FFFD}')
                    .to_string()
            } else {
                NAMED.iter().find(|(n, _)| *n == name)?.1.to_string()
            };
            Some((value, e + 1))
        });
        match decoded {
            Some((value, consumed)) => {
                out.push_str(&value);
                rest = &tail[consumed..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_gzip(path: &Path, parts: impl IntoIterator<Item = Vec<u8>>) {
        use std::io::Write;
        let file = std::fs::File::create(path).unwrap();
        let mut e = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        for part in parts {
            e.write_all(&part).unwrap();
        }
        e.finish().unwrap();
    }

    #[test]
    fn a_merges_file_that_inflates_past_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bomb = dir.path().join("bomb.txt.gz");
        let mib = (MAX_MERGES_TEXT >> 20) as usize + 1;
        write_gzip(&bomb, (0..mib).map(|_| vec![b'a'; 1 << 20]));
        assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
        let err = ClipBpe::from_file(&bomb).err().unwrap().to_string();
        assert!(err.contains("decompresses to more than"), "{err}");
        // A file of the right shape under the limit loads and tokenizes.
        let ok = dir.path().join("bpe.txt.gz");
        let header = b"#version: 0.2\n".to_vec();
        write_gzip(
            &ok,
            std::iter::once(header).chain((0..MERGES).map(|_| b"a b\n".to_vec())),
        );
        let bpe = ClipBpe::from_file(&ok).unwrap();
        let ids = bpe.tokenize("ab", CONTEXT_LENGTH);
        let (a, b_end) = (bpe.encoder["a"], bpe.encoder["b</w>"]);
        assert_eq!(ids, [START_OF_TEXT, a, b_end, END_OF_TEXT]);
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], '\u{120}');
    }

    #[test]
    fn cleaning_and_unescaping() {
        assert_eq!(
            html_unescape("a &amp;amp; b &#39;c&#x27; &bogus; &"),
            "a &amp; b 'c' &bogus; &"
        );
        assert_eq!(fix_text("\u{201C}ﬁne\u{201D}\u{FF21}"), "\"fine\"A");
    }
}
