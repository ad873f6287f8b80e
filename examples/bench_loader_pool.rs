//! The training loader's throughput on several threads (`tagfix::train::data::Loader`, RAM's
//! training transform at 224 px): micro-batches decoded one at a time, as the loader did before
//! 2026-12-06 (`prefetch = 1` still does), against several at once (`prefetch = 4`, the default),
//! alternating in one run; run by `scripts/bench-loader-pool.sh`.
//!
//! The set mixes image sizes as a web-crawled training set does (per ten images: five 500×375,
//! three 640×480, one 1024×768, one 2048×1536; generated photo-like JPEGs), so the images of one
//! micro-batch take unequal times. The loader's rate with one thread, times the threads, is the
//! most the threads can give; the efficiency column is the share of it reached.
//!
//!   bench_loader_pool [THREADS] [MICRO] [STEPS] [ROUNDS]   (defaults: all cores, 26, 8, 3)

use std::sync::Arc;
use std::time::Instant;
use tagfix::train::config::UnreadableImages;
use tagfix::train::data::augment::Augment;
use tagfix::train::data::{Loader, LoaderConfig, TrainData};

#[path = "common/stats.rs"]
mod stats;
use stats::median;

#[path = "common/photos.rs"]
mod photos;

const RECORDS: usize = 208;

/// A training set of `RECORDS` generated JPEGs in `dir` with one tag each.
fn training_set(dir: &std::path::Path) -> Arc<TrainData> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).expect("images dir");
    let mix = [0, 0, 1, 0, 2, 0, 1, 0, 3, 1];
    let records: Vec<serde_json::Value> = (0..RECORDS)
        .map(|i| {
            let (w, h) = photos::SIZES[mix[i % mix.len()]];
            let name = format!("{i:04}.jpg");
            photos::write_jpeg(&images.join(&name), w, h, i as u32 + 1);
            serde_json::json!({"image_path": name, "caption": ["a photo"], "union_label_id": [i % 8]})
        })
        .collect();
    let ann = dir.join("train.json");
    std::fs::write(&ann, serde_json::to_vec(&records).expect("json")).expect("annotations");
    Arc::new(TrainData::open(&[ann], &images, 8, None).expect("training set"))
}

/// Images per second of one pass of the loader over `steps` steps.
fn rate(data: &Arc<TrainData>, threads: usize, micro: usize, steps: u64, prefetch: usize) -> f64 {
    let cfg = LoaderConfig {
        micro_batch: micro,
        batch: 2 * micro,
        augment: Augment::ram(224),
        seed: 1,
        workers: threads,
        prefetch,
        unreadable: UnreadableImages::Stop,
    };
    let t = Instant::now();
    let mut loader = Loader::start(data.clone(), cfg, 0, steps).expect("loader");
    let mut images = 0;
    while let Some(batch) = loader.next_batch() {
        images += batch.expect("micro-batch").len();
    }
    images as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.first().copied().filter(|&t| t > 0).unwrap_or(cores);
    let micro = args.get(1).copied().unwrap_or(26);
    let steps = args.get(2).copied().unwrap_or(8) as u64;
    let rounds = args.get(3).copied().unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = training_set(dir.path());
    // Warm the page cache and the allocator once.
    rate(&data, threads, micro, 1, 4);
    let (mut single, mut before, mut now) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        single.push(rate(&data, 1, micro, steps, 1));
        before.push(rate(&data, threads, micro, steps, 1));
        now.push(rate(&data, threads, micro, steps, 4));
    }
    let [single, before, now] = [single, before, now].map(median);
    let bound = single * threads as f64;
    println!("| threads | micro-batch | one thread images/s | one at a time images/s | efficiency | several at once images/s | efficiency | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {threads} | {micro} | {single:.1} | {before:.1} | {:.0} % | {now:.1} | {:.0} % | {:.2}× |",
        100.0 * before / bound,
        100.0 * now / bound,
        now / before
    );
    println!(
        "\n{steps} steps of 2 × {micro} images per variant (the same images), median of {rounds} rounds"
    );
}
