//! A synthetic training set whose image content determines its tags: coloured shapes on a noisy
//! background, tagged with their colours and shapes. Some vocabulary slots (`purple`, `triangle`,
//! …) are never drawn, so the slot manifest marks them absent. It comes with everything `tagfix
//! train` reads: the tag list, RAM-format annotations, the slot manifest, a RAM++-layout label
//! embedding file with provenance, and teacher features (CLIP-like image and caption vectors built
//! from fixed per-tag directions).
//!
//! `tagfix synth-images` writes one; the training tests use it.

use super::{TeacherFeatures, TEACHER_DIM};
use crate::error::{Error, Result};
use crate::manifest::{InputFile, SlotManifest};
use crate::tensors::provenance::EMBEDDINGS_TENSOR;
use crate::tensors::{EmbeddingFile, Provenance};
use crate::train::error::TrainError;
use crate::vocab::Vocabulary;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Colours drawn, then colours never drawn (absent).
const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 190, 40]),
    ("blue", [30, 60, 230]),
    ("yellow", [235, 220, 30]),
];
const SHAPES: [&str; 2] = ["circle", "square"];
const ABSENT: [&str; 2] = ["purple", "triangle"];

/// Generator settings.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Images.
    pub count: usize,
    /// Image side in pixels.
    pub size: u32,
    pub seed: u64,
    /// Description rows per tag in the label embedding file (RAM++ layout).
    pub descriptions: usize,
    /// Label the images in this vocabulary (a tag-list file or a preset such as `ram`) instead of the
    /// generator's own eight tags: annotations carry its slots, the manifest and the label embeddings
    /// cover all of them. Every colour and shape tag must be in it.
    pub vocab: Option<String>,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            count: 64,
            size: 64,
            seed: 0,
            descriptions: 3,
            vocab: None,
        }
    }
}

/// Paths of a generated dataset.
#[derive(Debug, Clone)]
pub struct SynthDataset {
    pub root: PathBuf,
    pub vocabulary: PathBuf,
    pub vocabulary_len: usize,
    pub image_root: PathBuf,
    pub annotations: PathBuf,
    pub manifest: PathBuf,
    pub label_embed: PathBuf,
    pub teacher: PathBuf,
    /// Slots no image carries.
    pub absent_slots: Vec<usize>,
}

/// The synthetic vocabulary in slot order: colours, shapes, then the absent tags interleaved so that
/// absent slots are not simply the last ones.
pub fn vocabulary_tags() -> Vec<String> {
    let mut tags: Vec<String> = COLOURS.iter().map(|c| c.0.to_string()).collect();
    tags.insert(2, ABSENT[0].to_string());
    tags.extend(SHAPES.iter().map(|s| s.to_string()));
    tags.push(ABSENT[1].to_string());
    tags
}

fn unit(rng: &mut ChaCha8Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..TEACHER_DIM)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// Most images a set may have: its annotations and teacher features (4 KiB an image) are built in
/// memory.
pub const MAX_COUNT: usize = 1_000_000;
/// Largest image side (RAM++ trains at 224 and 384).
pub const MAX_SIZE: u32 = 4096;
/// Most description rows per tag (RAM++ has 51).
pub const MAX_DESCRIPTIONS: usize = 256;
/// Most label-embedding values (tags × descriptions × 512), 4 GiB of f32 built in memory.
pub const MAX_LABEL_VALUES: usize = 1 << 30;

impl SynthOptions {
    /// Refuses settings the generator cannot meet: no images, images too small to draw a shape in,
    /// or a set too large to build in memory.
    pub fn check(&self) -> Result<()> {
        let out_of_range = |setting, rule: String, value: &dyn std::fmt::Display| {
            Err(TrainError::SynthOptions {
                setting,
                rule,
                value: value.to_string(),
            }
            .into())
        };
        if !(1..=MAX_COUNT).contains(&self.count) {
            return out_of_range("--count", format!("in 1..={MAX_COUNT}"), &self.count);
        }
        if !(16..=MAX_SIZE).contains(&self.size) {
            return out_of_range("--size", format!("in 16..={MAX_SIZE}"), &self.size);
        }
        if !(1..=MAX_DESCRIPTIONS).contains(&self.descriptions) {
            let rule = format!("in 1..={MAX_DESCRIPTIONS}");
            return out_of_range("--descriptions", rule, &self.descriptions);
        }
        Ok(())
    }

    /// Refuses a label embedding of `tags` × `descriptions` rows too large to build in memory.
    fn check_label_values(&self, tags: usize) -> Result<()> {
        let values = tags
            .saturating_mul(self.descriptions)
            .saturating_mul(TEACHER_DIM);
        if values > MAX_LABEL_VALUES {
            return Err(TrainError::SynthOptions {
                setting: "--descriptions",
                rule: format!(
                    "at most {} for a vocabulary of {tags} tags ({MAX_LABEL_VALUES} label-embedding values)",
                    MAX_LABEL_VALUES / TEACHER_DIM / tags.max(1)
                ),
                value: self.descriptions.to_string(),
            }
            .into());
        }
        Ok(())
    }
}

/// Writes a synthetic dataset into `dir` (created if missing).
pub fn generate(opts: &SynthOptions, dir: &Path) -> Result<SynthDataset> {
    opts.check()?;
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let (vocab, vocab_path) = synth_vocabulary(opts, dir)?;
    opts.check_label_values(vocab.len())?;
    let tags = vocab.tags.clone();
    let slots_of = drawn_tag_slots(&vocab, &vocab_path)?;

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let directions: Vec<Vec<f32>> = (0..tags.len()).map(|_| unit(&mut rng)).collect();

    let mut records = Vec::with_capacity(opts.count);
    let mut keys = Vec::with_capacity(opts.count);
    let mut image_feat = Vec::with_capacity(opts.count * TEACHER_DIM);
    let mut text_feat = Vec::with_capacity(opts.count * TEACHER_DIM);
    let mut union = vec![0u64; tags.len()];
    for i in 0..opts.count {
        let (img, slots) = draw_image(&mut rng, opts.size, &slots_of);
        for &t in &slots {
            union[t] += 1;
        }
        // Every third image is a JPEG, the others PNG: both decoders get exercised.
        let name = if i % 3 == 2 {
            format!("{i:05}.jpg")
        } else {
            format!("{i:05}.png")
        };
        let path = images.join(&name);
        img.save(&path).map_err(|e| TrainError::WriteImage {
            path: path.clone(),
            source: Box::new(e),
        })?;
        let caption = slots
            .iter()
            .map(|&t| tags[t].as_str())
            .collect::<Vec<_>>()
            .join(" and ");
        records.push(serde_json::json!({
            "image_path": name,
            "caption": [format!("a picture with {caption}")],
            "union_label_id": slots,
            "parse_label_id": [slots],
        }));
        keys.push(name);
        // Teacher: image feature = 0.5·Σ directions of its tags + noise; caption = normalised Σ + noise.
        let mut f = vec![0f32; TEACHER_DIM];
        for &t in &slots {
            for (a, b) in f.iter_mut().zip(&directions[t]) {
                *a += b;
            }
        }
        image_feat.extend(f.iter().map(|v| 0.5 * v + rng.gen_range(-0.02f32..0.02)));
        text_feat.extend(f.iter().map(|v| v + rng.gen_range(-0.05f32..0.05)));
    }

    let annotations = dir.join("train.json");
    crate::fsutil::write_atomic(&annotations, |w| {
        serde_json::to_writer(&mut *w, &records).map_err(std::io::Error::other)
    })?;
    let bytes = std::fs::metadata(&annotations)
        .map_err(|e| Error::io(&annotations, e))?
        .len();
    let manifest = SlotManifest::from_counts(
        &vocab,
        &union,
        &union,
        vec![InputFile {
            path: annotations.display().to_string(),
            bytes,
            records: opts.count as u64,
        }],
        0,
    );
    let manifest_path = dir.join("manifest.json");
    manifest.write(&manifest_path)?;

    let label_embed = dir.join("label_embed.safetensors");
    label_embeddings(&directions, opts.descriptions, &vocab, &mut rng).write(&label_embed)?;

    let teacher = dir.join("teacher.safetensors");
    TeacherFeatures::write(&teacher, &keys, &image_feat, &text_feat)?;

    Ok(SynthDataset {
        root: dir.to_path_buf(),
        vocabulary: vocab_path,
        vocabulary_len: tags.len(),
        image_root: images,
        annotations,
        manifest: manifest_path,
        label_embed,
        teacher,
        absent_slots: manifest.absent_slots(),
    })
}

/// The vocabulary the set is tagged in: the one asked for, else the generator's eight tags written
/// to `dir/tags.txt`.
fn synth_vocabulary(opts: &SynthOptions, dir: &Path) -> Result<(Vocabulary, PathBuf)> {
    match &opts.vocab {
        Some(spec) => {
            let v = Vocabulary::load(spec)?;
            let path = v.path.clone();
            Ok((v, path))
        }
        None => {
            let path = dir.join("tags.txt");
            crate::fsutil::write_bytes_atomic(&path, vocabulary_tags().join("\n").as_bytes())?;
            Ok((Vocabulary::from_file(&path)?, path))
        }
    }
}

/// The slot of every colour and shape the images are drawn with; each must be in the vocabulary.
fn drawn_tag_slots(vocab: &Vocabulary, path: &Path) -> Result<HashMap<String, usize>> {
    vocabulary_tags()
        .into_iter()
        .map(|name| match vocab.tags.iter().position(|t| *t == name) {
            Some(slot) => Ok((name, slot)),
            None => Err(TrainError::SynthVocabulary {
                path: path.to_path_buf(),
                tag: name,
                needed: vocabulary_tags(),
            }
            .into()),
        })
        .collect()
}

/// One image: grey noise with one or two coloured circles or squares, and the slots of their colours
/// and shapes, ascending.
fn draw_image(
    rng: &mut ChaCha8Rng,
    size: u32,
    slots_of: &HashMap<String, usize>,
) -> (RgbImage, Vec<usize>) {
    let s = size as i64;
    let mut img = RgbImage::from_fn(size, size, |_, _| {
        let g = rng.gen_range(90u8..130);
        Rgb([g, g, g])
    });
    let shapes = rng.gen_range(1..=2);
    let mut slots = Vec::new();
    for _ in 0..shapes {
        let (cname, colour) = COLOURS[rng.gen_range(0..COLOURS.len())];
        let shape = SHAPES[rng.gen_range(0..SHAPES.len())];
        let r = rng.gen_range(s / 6..=s / 3);
        let cx = rng.gen_range(r..s - r);
        let cy = rng.gen_range(r..s - r);
        for y in (cy - r).max(0)..(cy + r).min(s) {
            for x in (cx - r).max(0)..(cx + r).min(s) {
                let inside = match shape {
                    "circle" => (x - cx).pow(2) + (y - cy).pow(2) <= r * r,
                    _ => true,
                };
                if inside {
                    img.put_pixel(x as u32, y as u32, Rgb(colour));
                }
            }
        }
        slots.push(slots_of[cname]);
        slots.push(slots_of[shape]);
    }
    slots.sort_unstable();
    slots.dedup();
    (img, slots)
}

/// Label embeddings in RAM++ layout, `k` rows per tag: description d of tag t =
/// normalise(direction_t + 0.3·noise), with provenance naming the vocabulary.
fn label_embeddings(
    directions: &[Vec<f32>],
    k: usize,
    vocab: &Vocabulary,
    rng: &mut ChaCha8Rng,
) -> EmbeddingFile {
    let mut values = Vec::with_capacity(directions.len() * k * TEACHER_DIM);
    for dir_t in directions {
        for _ in 0..k {
            let noise = unit(rng);
            let row: Vec<f32> = dir_t.iter().zip(&noise).map(|(a, b)| a + 0.3 * b).collect();
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            values.extend(row.into_iter().map(|x| x / n));
        }
    }
    let mut emb = EmbeddingFile::new(values, directions.len() * k, TEACHER_DIM);
    emb.tensor_name = EMBEDDINGS_TENSOR.into();
    emb.metadata = Provenance {
        vocabulary_sha256: vocab.sha256.clone(),
        tag_count: vocab.len(),
        rows_per_slot: k,
        model: "synthetic".into(),
        recipe: "synthetic: per-tag direction + 0.3 noise per description".into(),
        pooling: "l2".into(),
        regenerated_slots: (0..vocab.len()).collect(),
        generator: format!("tagfix {}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    }
    .to_metadata();
    emb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_before_anything_is_built() {
        let dir = tempfile::tempdir().unwrap();
        for (opts, message) in [
            (
                SynthOptions {
                    count: 0,
                    ..Default::default()
                },
                "--count must be in 1..=1000000, got 0",
            ),
            (
                SynthOptions {
                    count: usize::MAX,
                    ..Default::default()
                },
                "--count must be in 1..=1000000, got 18446744073709551615",
            ),
            (
                SynthOptions {
                    size: 65535,
                    ..Default::default()
                },
                "--size must be in 16..=4096, got 65535",
            ),
            (
                SynthOptions {
                    descriptions: 100_000_000,
                    ..Default::default()
                },
                "--descriptions must be in 1..=256, got 100000000",
            ),
        ] {
            let e = generate(&opts, dir.path()).unwrap_err().to_string();
            assert_eq!(e, format!("synth-images: {message}"));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let wide = SynthOptions {
            descriptions: 256,
            ..Default::default()
        };
        wide.check().unwrap();
        let e = wide.check_label_values(10_000).unwrap_err().to_string();
        assert!(
            e.contains("--descriptions must be at most 209 for a vocabulary of 10000 tags"),
            "{e}"
        );
        wide.check_label_values(4585).unwrap();
    }

    #[test]
    fn generates_consistent_files() {
        let dir = tempfile::tempdir().unwrap();
        let ds = generate(
            &SynthOptions {
                count: 12,
                size: 32,
                ..Default::default()
            },
            dir.path(),
        )
        .unwrap();
        let tags = vocabulary_tags();
        assert_eq!(
            ds.absent_slots,
            vec![slot_of(&tags, "purple"), slot_of(&tags, "triangle")]
        );
        let m = SlotManifest::read(&ds.manifest).unwrap();
        assert_eq!(m.summary.absent, 2);
        let e = EmbeddingFile::read(&ds.label_embed, None).unwrap();
        assert_eq!((e.rows, e.dim), (tags.len() * 3, 512));
        let p = Provenance::from_metadata(&e.metadata, &ds.label_embed)
            .unwrap()
            .unwrap();
        assert_eq!(p.vocabulary_sha256, m.vocabulary.sha256);
        assert_eq!(TeacherFeatures::read(&ds.teacher).unwrap().len(), 12);
        assert!(
            ds.image_root.join("00002.jpg").is_file() && ds.image_root.join("00000.png").is_file()
        );
    }

    #[test]
    fn labels_images_in_another_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        let mut tags = vec!["cat".to_string(), "dog".into()];
        tags.extend(vocabulary_tags().into_iter().rev());
        std::fs::write(&list, tags.join("\n")).unwrap();
        let ds = generate(
            &SynthOptions {
                count: 8,
                size: 32,
                descriptions: 1,
                vocab: Some(list.display().to_string()),
                ..Default::default()
            },
            &dir.path().join("set"),
        )
        .unwrap();
        assert_eq!(ds.vocabulary_len, tags.len());
        // Never drawn: cat, dog, purple, triangle.
        let mut absent: Vec<usize> = ["cat", "dog", "purple", "triangle"]
            .iter()
            .map(|t| slot_of(&tags, t))
            .collect();
        absent.sort_unstable();
        assert_eq!(ds.absent_slots, absent);
        let records: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&ds.annotations).unwrap()).unwrap();
        for r in &records {
            let caption = r["caption"][0].as_str().unwrap();
            for id in r["union_label_id"].as_array().unwrap() {
                let tag = &tags[id.as_u64().unwrap() as usize];
                assert!(caption.contains(tag.as_str()), "{caption} / {tag}");
            }
        }

        std::fs::write(&list, "cat\ndog\n").unwrap();
        let err = generate(
            &SynthOptions {
                vocab: Some(list.display().to_string()),
                ..Default::default()
            },
            &dir.path().join("bad"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("has no tag `red`"), "{err}");
    }

    fn slot_of(tags: &[String], t: &str) -> usize {
        tags.iter().position(|x| x == t).unwrap()
    }
}
