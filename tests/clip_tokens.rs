//! CLIP BPE tokenisation against the reference ids in ../shared/reference/clip_tokens/ (OpenAI's
//! simple tokenizer, context 77, truncate): every row, tricky strings included.

mod common;

use common::shared_dir_for_test;
use std::path::{Path, PathBuf};
use tagfix::embed::clip_bpe::{ClipBpe, CONTEXT_LENGTH};

fn bpe_path(test: &str) -> Option<PathBuf> {
    common::setup_file("models/clip-bpe/bpe_simple_vocab_16e6.txt.gz", test)
}

fn check_file(bpe: &ClipBpe, file: &Path) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    let mut rows = 0;
    let mut mismatches = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = v["text"].as_str().unwrap();
        let want: Vec<u32> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = bpe.tokenize(input, CONTEXT_LENGTH);
        if got != want {
            mismatches.push(format!("{input:?}\n  want {want:?}\n  got  {got:?}"));
        }
        rows += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{} of {rows} rows of {} differ:\n{}",
        mismatches.len(),
        file.display(),
        mismatches.join("\n")
    );
    rows
}

#[test]
fn clip_tokens_match_every_reference_row() {
    let Some(shared) = shared_dir_for_test("clip_tokens_match_every_reference_row") else {
        return;
    };
    let Some(path) = bpe_path("clip_tokens_match_every_reference_row") else {
        return;
    };
    let bpe = ClipBpe::from_file(&path).unwrap();
    let dir = shared.join("reference/clip_tokens");
    let tags = check_file(&bpe, &dir.join("ram_single_template.jsonl"));
    let tricky = check_file(&bpe, &dir.join("tricky.jsonl"));
    assert_eq!(tags, 4585);
    assert_eq!(tricky, 16);
    println!("CLIP tokens: {tags}/4585 tag rows and {tricky}/16 tricky rows match");
}

#[test]
fn clip_single_template_texts_are_the_reference_texts() {
    // The reference texts are RAM's single template over the vocabulary: the recipe must produce them.
    let Some(shared) = shared_dir_for_test("clip_single_template_texts_are_the_reference_texts")
    else {
        return;
    };
    let vocab =
        tagfix::vocab::Vocabulary::from_file(&shared.join("ram/data/ram_tag_list.txt")).unwrap();
    let text =
        std::fs::read_to_string(shared.join("reference/clip_tokens/ram_single_template.jsonl"))
            .unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let slot = v["slot"].as_u64().unwrap() as usize;
        let got = tagfix::embed::Recipe::Single
            .texts(slot, &vocab.tags[slot])
            .unwrap();
        assert_eq!(
            got,
            vec![v["text"].as_str().unwrap().to_string()],
            "slot {slot}"
        );
    }
}
