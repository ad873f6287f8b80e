//! The CLIP path on the generated random-weight CLIP text tower (models/clip-tiny, real vocabulary):
//! ONNX Runtime output equals the generator's numpy forward pass, and cutting batches to their longest
//! text gives the same embeddings as CLIP's full 77-token input.
#![cfg(feature = "embed")]

mod common;
mod embed_common;

use common::{model_dir_for_test, shared_dir_for_test};
use embed_common::cosine;
use indicatif::ProgressBar;
use tagfix::embed::encoder::{l2_normalize, EncoderOptions, TextEncoder};
use tagfix::embed::pipeline::embed_slots;
use tagfix::embed::{ModelDescriptor, Recipe};
use tagfix::vocab::Vocabulary;

fn clip_tiny(test: &str) -> Option<TextEncoder> {
    let dir = model_dir_for_test("clip-tiny", test)?;
    let opts = EncoderOptions {
        batch_size: 16,
        ..Default::default()
    };
    Some(TextEncoder::load(ModelDescriptor::read_dir(&dir).unwrap(), &opts).unwrap())
}

#[test]
fn clip_tiny_matches_numpy_forward() {
    let Some(mut enc) = clip_tiny("clip_tiny_matches_numpy_forward") else {
        return;
    };
    assert_eq!(enc.dim, Some(512));
    assert!(enc.cut_to_longest);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(enc.descriptor.dir.join("expected.json")).unwrap(),
    )
    .unwrap();
    let samples = expected["samples"].as_array().unwrap();
    let texts: Vec<&str> = samples.iter().filter_map(|s| s["text"].as_str()).collect();
    assert!(
        texts.len() >= 3,
        "expected.json was generated without reference texts"
    );
    let ids = enc.tokenize(&texts).unwrap();
    let (vectors, dim) = enc.encode(&texts, &ProgressBar::hidden()).unwrap();
    for (i, s) in samples.iter().enumerate() {
        let want_ids: Vec<i64> = s["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            &ids.ids[i * ids.width..i * ids.width + want_ids.len()],
            &want_ids[..]
        );
        let mut want: Vec<f32> = s["text_embeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        l2_normalize(&mut want);
        let got = &vectors[i * dim..(i + 1) * dim];
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-4, "{:?}: max |diff| {max_diff}", texts[i]);
        assert!(cosine(got, &want) > 0.99999);
    }
}

#[test]
fn cutting_batches_to_the_longest_text_equals_77_tokens() {
    let Some(mut enc) = clip_tiny("cutting_batches_to_the_longest_text_equals_77_tokens") else {
        return;
    };
    let Some(shared) = shared_dir_for_test("cutting_batches_to_the_longest_text_equals_77_tokens")
    else {
        return;
    };
    let vocab = Vocabulary::from_file(&shared.join("ram/data/ram_tag_list.txt")).unwrap();
    // Every 15th tag plus long descriptions (truncated at 77) so batches of very different widths occur.
    let mut texts: Vec<String> = (0..vocab.len())
        .step_by(15)
        .map(|s| Recipe::Single.texts(s, &vocab.tags[s]).unwrap().remove(0))
        .collect();
    texts.push("word ".repeat(120));
    texts.push("a photo of a dog".into());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = enc.tokenize(&refs).unwrap();
    assert!(
        tokens.lengths.iter().filter(|&&l| l < 20).count() > 100,
        "most texts are short"
    );
    let (cut, dim) = enc.encode(&refs, &ProgressBar::hidden()).unwrap();
    enc.cut_to_longest = false;
    let (full, _) = enc.encode(&refs, &ProgressBar::hidden()).unwrap();
    let mut worst = 0.0f32;
    for i in 0..refs.len() {
        let (a, b) = (&cut[i * dim..(i + 1) * dim], &full[i * dim..(i + 1) * dim]);
        worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(worst, f32::max);
    }
    println!(
        "cut vs 77 tokens: {} texts, max |diff| {worst:e}",
        refs.len()
    );
    assert!(
        worst < 1e-5,
        "cut batches differ from 77-token batches by {worst}"
    );
}

#[test]
fn ram_ensemble_averages_normalised_template_embeddings() {
    let Some(mut enc) = clip_tiny("ram_ensemble_averages_normalised_template_embeddings") else {
        return;
    };
    let vocab = Vocabulary::from_tags(vec![
        "apple".into(),
        "traffic_light".into(),
        "cat/dog".into(),
    ]);
    let rows = embed_slots(
        &mut enc,
        &vocab,
        &Recipe::RamEnsemble,
        &[0, 2],
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!((rows.rows_per_slot, rows.values.len()), (1, 2 * 512));
    let texts = Recipe::RamEnsemble.texts(2, "cat/dog").unwrap();
    assert!(texts.contains(&"This is a photo of a cat or dog.".to_string()));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (v, d) = enc.encode(&refs, &ProgressBar::hidden()).unwrap();
    let mut mean = vec![0.0f32; d];
    for row in v.chunks(d) {
        mean.iter_mut().zip(row).for_each(|(m, x)| *m += x / 63.0);
    }
    l2_normalize(&mut mean);
    assert!(cosine(rows.rows_of(1), &mean) > 0.999999);
    // The ensemble differs from the single template.
    let single = embed_slots(
        &mut enc,
        &vocab,
        &Recipe::Single,
        &[2],
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert!(cosine(single.rows_of(0), &mean) < 0.9999);
}
