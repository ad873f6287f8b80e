//! Decoding a training crop: the whole JPEG decoded, then the crop resized (the loader before),
//! against only the crop's rows and columns decoded (`imaging::open` + `Opened::view`, the loader
//! now), in one run on the same images and the same `RandomResizedCrop` draws, each path over all
//! the draws in turn, `ROUNDS` times (medians); run by `scripts/bench-crop-decode.sh`. Both give
//! the same pixels (checked on every draw first). Single-threaded: the loader decodes one image
//! per core.
//!
//!   bench_crop_decode [SIZE] [DRAWS] [ROUNDS] [IMAGES...]   (defaults: 224 20 5, generated photo-like JPEGs)

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;
use tagfix::imaging::{view_image, View};
use tagfix::train::data::augment::{decode, open, Augment};

#[path = "common/stats.rs"]
mod stats;
use stats::median;

#[path = "common/photos.rs"]
mod photos;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size: u32 = args.first().map_or(224, |s| s.parse().expect("SIZE"));
    let draws: u64 = args.get(1).map_or(20, |s| s.parse().expect("DRAWS"));
    let rounds: usize = args.get(2).map_or(5, |s| s.parse().expect("ROUNDS"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut paths: Vec<PathBuf> = args.iter().skip(3).map(PathBuf::from).collect();
    if paths.is_empty() {
        paths = photos::generated(dir.path());
    }
    // The crop and flip only: RandomAugment works on the resized view either way.
    let aug = Augment::ram(size).without_random_augment();
    println!("| image | whole decode + crop resize ms | crop decode + resize ms | ratio |");
    println!("|---|---:|---:|---:|");
    let (mut sum_whole, mut sum_crop) = (0.0, 0.0);
    for path in &paths {
        let (width, height) = open(path).expect("open").dimensions();
        let views: Vec<View> = (0..draws)
            .map(|seed| {
                aug.draw(width, height, &mut ChaCha8Rng::seed_from_u64(seed))
                    .view
            })
            .collect();
        let whole = |view: &View| view_image(&decode(path).expect("decode"), view, size);
        let crop = |view: &View| {
            let (pixels, moved) = open(path).and_then(|f| f.view(view)).expect("view");
            view_image(&pixels, &moved, size)
        };
        for (k, view) in views.iter().enumerate() {
            assert_eq!(
                whole(view),
                crop(view),
                "{} draw {k}: the two paths differ",
                path.display()
            );
        }
        // Milliseconds per draw over all the draws, one path after the other, `ROUNDS` times:
        // alternating per draw would let one path's freed buffers shape the other's allocations.
        let per_draw = |f: &dyn Fn(&View) -> RgbImage| {
            let t = Instant::now();
            for view in &views {
                std::hint::black_box(f(view));
            }
            t.elapsed().as_secs_f64() * 1e3 / views.len() as f64
        };
        let (mut whole_ms, mut crop_ms) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            whole_ms.push(per_draw(&whole));
            crop_ms.push(per_draw(&crop));
        }
        let (w, c) = (median(whole_ms), median(crop_ms));
        sum_whole += w;
        sum_crop += c;
        let name = path.file_name().unwrap().to_string_lossy();
        println!(
            "| {name} ({width}×{height}) | {w:.2} | {c:.2} | {:.2}× |",
            w / c
        );
    }
    let n = paths.len() as f64;
    println!(
        "\nimages in equal shares: {:.1} → {:.1} images/s per core for decode + crop resize ({:.2}×)",
        n * 1e3 / sum_whole,
        n * 1e3 / sum_crop,
        sum_whole / sum_crop
    );
}
