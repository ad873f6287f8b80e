//! The tokenizer files a text model directory holds: CLIP's gzip'd BPE merges (`clip_bpe`, the
//! project's own reader) and a Hugging Face `tokenizer.json` (`tokenizer_json`, the `tokenizers`
//! crate behind `embed::hf_tokenizer`, feature `embed`). Each loaded tokenizer then tokenizes texts
//! that stress its cleaning: entities, ligatures, full-width forms, control characters, long words.

use super::generate::pick_from;
use super::seeds::{gzip, seeds};
use crate::embed::clip_bpe::{ClipBpe, CONTEXT_LENGTH, MERGES};
use crate::rng::SplitMix64;
use std::path::Path;

/// Texts every loaded tokenizer is given.
const TEXTS: &[&str] = &[
    "a cat on a mat",
    "&amp;amp; &#x110000; &#0; &#9999999999; &lt;|endoftext|&gt; &bogus",
    "<|startoftext|><|endoftext|> 'S 'll",
    "ﬁﬂ ＡＢＣ\u{3000}猫 café cafe\u{301} \u{0}\u{7f}\u{feff}\r\n\t",
    "",
    "   ",
    "supercalifragilisticexpialidocious-supercalifragilisticexpialidocious",
];

pub(super) fn clip_bpe_target() -> super::Target {
    super::Target {
        name: "clip_bpe",
        file: "bpe_simple_vocab_16e6.txt.gz",
        run: run_clip_bpe,
        dict: BPE_DICT,
        generate: Some(gen_clip_bpe),
        seeds: clip_bpe_seeds,
        shared_seeds: &[],
    }
}

fn run_clip_bpe(path: &Path, _: &[u8]) {
    if let Ok(bpe) = ClipBpe::from_file(path) {
        for text in TEXTS {
            let ids = bpe.tokenize(text, CONTEXT_LENGTH);
            assert!(ids.len() <= CONTEXT_LENGTH, "{} ids", ids.len());
        }
    }
}

/// gzip's magic and a stored block's header, BPE line pieces.
const BPE_DICT: &[&[u8]] = &[
    b"\x1f\x8b\x08\x00",
    b"\x01\xff\xff\x00\x00",
    b"\n",
    b" ",
    b"</w>",
    b"#version: 0.2",
];

/// Symbols merges are built from: letters, the end-of-word marker, byte-table characters, empty.
const SYMBOLS: &[&str] = &[
    "a",
    "b",
    "t",
    "h",
    "th</w>",
    "e</w>",
    "Ġ",
    "ĳ",
    "猫",
    "</w>",
    "<|endoftext|>",
    "ab",
    "\u{0}",
];

/// A merges file: the header, then (nearly) CLIP's count of lines, about 250 of them random pairs
/// of symbols among one repeated pair (so that the file compresses below the mutator's length), and
/// in one file of four a line that is not a pair.
fn gen_clip_bpe(rng: &mut SplitMix64) -> Vec<u8> {
    let count = match rng.below(8) {
        0 => MERGES - 1 - rng.below(3) as usize,
        1 => MERGES + rng.below(3) as usize,
        _ => MERGES,
    };
    let bad = (rng.below(4) == 0).then(|| rng.below(count as u64) as usize);
    let mut text = String::from("#version: 0.2\n");
    for i in 0..count {
        let line = if bad == Some(i) {
            match rng.below(3) {
                0 => pick_from(rng, SYMBOLS).to_string(),
                1 => format!("{} b c", pick_from(rng, SYMBOLS)),
                _ => String::new(),
            }
        } else if rng.below(200) == 0 {
            format!("{} {}", pick_from(rng, SYMBOLS), pick_from(rng, SYMBOLS))
        } else {
            "a b".to_string()
        };
        text.push_str(&line);
        text.push('\n');
    }
    gzip(text.as_bytes())
}

/// A merges file of CLIP's shape (a few real first merges, the rest one repeated pair), one a line
/// short, one with a line of three symbols, and text that is not gzip'd.
fn clip_bpe_seeds() -> Vec<(String, Vec<u8>)> {
    let file = |merges: &[&str]| {
        let mut text = String::from("\"bpe_simple_vocab_16e6.txt#version: 0.2\n");
        for line in merges.iter().chain(std::iter::repeat(&"a b")).take(MERGES) {
            text.push_str(line);
            text.push('\n');
        }
        text
    };
    let first = [
        "i n", "t h", "a n", "r e", "a r", "e r", "th e</w>", "in g</w>",
    ];
    let whole = file(&first);
    let short: String = whole
        .lines()
        .take(MERGES)
        .map(|l| format!("{l}\n"))
        .collect();
    let three = file(&["i n", "t h e", "a n"]);
    let mut out = seeds(&[("plain.txt.gz", b"i n\nt h\n")]);
    out.extend([
        ("clip_shape.txt.gz".into(), gzip(whole.as_bytes())),
        ("one_short.txt.gz".into(), gzip(short.as_bytes())),
        ("three_symbols.txt.gz".into(), gzip(three.as_bytes())),
    ]);
    out
}

#[cfg(feature = "embed")]
pub(super) fn tokenizer_json_target() -> super::Target {
    super::Target {
        name: "tokenizer_json",
        file: "tokenizer.json",
        run: run_tokenizer_json,
        dict: TOKENIZER_DICT,
        generate: None,
        seeds: tokenizer_json_seeds,
        shared_seeds: &[],
    }
}

/// `embed`'s loading (the file's padding replaced, truncation to the model's length), then a batch.
#[cfg(feature = "embed")]
fn run_tokenizer_json(path: &Path, _: &[u8]) {
    use crate::embed::tokenize::TextTokenizer;
    for max_length in [16, 2] {
        if let Ok(t) = crate::embed::hf_tokenizer::HfTokenizer::from_file(path, max_length) {
            if let Ok(m) = t.tokenize(TEXTS) {
                assert!(m.width <= max_length, "width {} > {max_length}", m.width);
            }
        }
    }
}

/// The JSON keys and type names of `tokenizer.json`'s parts.
#[cfg(feature = "embed")]
const TOKENIZER_DICT: &[&[u8]] = &[
    b"\"type\"",
    b"\"WordPiece\"",
    b"\"BPE\"",
    b"\"WordLevel\"",
    b"\"Unigram\"",
    b"\"vocab\"",
    b"\"merges\"",
    b"\"unk_token\"",
    b"\"[UNK]\"",
    b"\"added_tokens\"",
    b"\"id\"",
    b"\"content\"",
    b"\"special\"",
    b"\"normalizer\"",
    b"\"pre_tokenizer\"",
    b"\"post_processor\"",
    b"\"decoder\"",
    b"\"TemplateProcessing\"",
    b"\"Sequence\"",
    b"\"SpecialToken\"",
    b"\"BertNormalizer\"",
    b"\"BertPreTokenizer\"",
    b"\"ByteLevel\"",
    b"\"Split\"",
    b"\"Regex\"",
    b"\"padding\"",
    b"\"truncation\"",
    b"\"pad_id\"",
    b"\"max_length\"",
    b"null",
    b"true",
    b"4294967295",
    b"-1",
    b"1e400",
    b"{}",
    b"[]",
];

/// MiniLM's tokenizer in miniature (BERT normaliser and pre-tokenizer, WordPiece, `[CLS] A [SEP]`
/// template, fixed padding the loader replaces), a byte-level BPE one and a word-level one.
#[cfg(feature = "embed")]
fn tokenizer_json_seeds() -> Vec<(String, Vec<u8>)> {
    let wordpiece = serde_json::json!({
        "version": "1.0",
        "truncation": {"max_length": 128, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [
            {"id": 0, "special": true, "content": "[PAD]", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false},
            {"id": 1, "special": true, "content": "[UNK]", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false},
            {"id": 2, "special": true, "content": "[CLS]", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false},
            {"id": 3, "special": true, "content": "[SEP]", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false}
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100,
                  "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "cat": 5,
                            "on": 6, "mat": 7, "##s": 8, "猫": 9, "&": 10}}
    });
    let bpe = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false,
                  "vocab": {"a": 0, "c": 1, "t": 2, "ca": 3, "cat": 4, "Ġ": 5},
                  "merges": ["c a", "ca t"]}
    });
    let word_level = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "cat": 2},
                  "unk_token": "[UNK]"}
    });
    [
        ("wordpiece", wordpiece),
        ("bpe", bpe),
        ("word_level", word_level),
    ]
    .into_iter()
    .map(|(name, v)| (format!("{name}.json"), v.to_string().into_bytes()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated merges files are the same for a seed, fit the mutator's length whole (a cut gzip
    /// file never reaches the parser) and mostly load.
    #[test]
    fn generated_merges_files_fit_and_mostly_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bpe.txt.gz");
        let mut loaded = 0;
        for i in 0..12 {
            let input = gen_clip_bpe(&mut SplitMix64(i));
            assert_eq!(input, gen_clip_bpe(&mut SplitMix64(i)));
            assert!(
                input.len() <= crate::fuzz::Budget::default().max_len,
                "{}",
                input.len()
            );
            std::fs::write(&path, &input).unwrap();
            loaded += usize::from(ClipBpe::from_file(&path).is_ok());
        }
        assert!(loaded >= 4, "{loaded} of 12 loaded");
        for (name, bytes) in clip_bpe_seeds() {
            assert!(
                bytes.len() <= crate::fuzz::Budget::default().max_len,
                "{name}"
            );
        }
    }
}
