//! Real MiniLM (int8 ONNX through ONNX Runtime) against the reference embeddings of all 4585 RAM tags.
#![cfg(feature = "embed")]

mod common;
mod embed_common;

use common::{model_dir_for_test, shared_dir_for_test};
use embed_common::cosine;
use indicatif::ProgressBar;
use tagfix::embed::encoder::{EncoderOptions, TextEncoder};
use tagfix::embed::pipeline::embed_slots;
use tagfix::embed::{ModelDescriptor, Recipe};
use tagfix::tensors::EmbeddingFile;
use tagfix::vocab::Vocabulary;

#[test]
fn minilm_matches_reference_for_every_tag() {
    let test = "minilm_matches_reference_for_every_tag";
    let Some(shared) = shared_dir_for_test(test) else {
        return;
    };
    let Some(dir) = model_dir_for_test("minilm", test) else {
        return;
    };
    let vocab = Vocabulary::from_file(&shared.join("ram/data/ram_tag_list.txt")).unwrap();
    let reference = EmbeddingFile::read(
        &shared.join("reference/minilm_ram_single_template.safetensors"),
        None,
    )
    .unwrap();
    assert_eq!((reference.rows, reference.dim), (4585, 384));

    let mut encoder = TextEncoder::load(
        ModelDescriptor::read_dir(&dir).unwrap(),
        &EncoderOptions::default(),
    )
    .unwrap();
    assert_eq!(encoder.dim, Some(384));
    assert!(encoder.cut_to_longest);
    // The tokenizer's built-in fixed padding to 128 is replaced by batch-longest padding.
    let m = encoder
        .tokenize(&["a photo of a dog.", "a photo of a cat."])
        .unwrap();
    assert_eq!(m.width, 8);
    assert_eq!(&m.ids[..8], &[101, 1037, 6302, 1997, 1037, 3899, 1012, 102]);

    let slots: Vec<usize> = (0..vocab.len()).collect();
    let rows = embed_slots(
        &mut encoder,
        &vocab,
        &Recipe::Single,
        &slots,
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!((rows.values.len(), rows.dim), (4585 * 384, 384));
    let mut worst = (f64::INFINITY, 0);
    for s in 0..vocab.len() {
        let c = cosine(rows.rows_of(s), reference.row(s));
        if c < worst.0 {
            worst = (c, s);
        }
    }
    println!(
        "MiniLM vs reference: min cosine {:.7} (slot {} `{}`) over 4585 tags",
        worst.0, worst.1, vocab.tags[worst.1]
    );
    assert!(
        worst.0 >= 0.9999,
        "slot {} `{}`: cosine {}",
        worst.1,
        vocab.tags[worst.1],
        worst.0
    );
    // Rows are unit length.
    for s in [0, 1000, 4584] {
        let n: f32 = rows.rows_of(s).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5);
    }
}
