//! The batch upload before and after issue #14, side by side in one run; run by
//! `scripts/bench-upload.sh`.
//!
//! Both paths decode and augment the same images with the same draws (the loader's work, on a
//! thread pool as the loader does) and differ only where the pixels become floats:
//! - before: the loader writes CLIP-normalised f32 CHW and the trainer copies them to the device
//!   from pageable memory (`Tensor::from_slice(..).to_device(..)`, blocking);
//! - after: the loader writes RGB8 CHW and the trainer uploads them through pinned memory without
//!   blocking (CUDA) and normalises on the device (`tagfix::train::upload::PixelNormalizer`).
//!
//! Reports per micro-batch the loader's time (decode + augment + conversion), the upload time (up to
//! the normalised tensor being ready on the device, synchronised on CUDA) and the bytes copied to the
//! device, and checks that both paths give the same tensor bit for bit.
//!
//!   bench_upload [MICRO] [SIZE] [ROUNDS] [DEVICE]      (defaults: 26 224 5 cpu; DEVICE cpu or cuda)

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;
use tagfix::train::data::augment::{decode, to_chw, to_normalized_chw, Augment};
use tagfix::train::data::synth::{generate, SynthOptions};
use tagfix::train::upload::PixelNormalizer;
use tch::{Device, Kind, Tensor};

#[path = "common/stats.rs"]
mod stats;
use stats::median;

/// Blocks until `device` has finished its queued work (timing an asynchronous copy needs it).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Decodes and augments `paths` (seeded per image) and converts each with `convert`.
fn load<T: Default + Clone + Send>(
    paths: &[std::path::PathBuf],
    aug: &Augment,
    round: u64,
    convert: impl Fn(&image::RgbImage, &mut [T]) + Sync,
) -> Vec<T> {
    let per = 3 * (aug.size * aug.size) as usize;
    let mut out = vec![T::default(); paths.len() * per];
    out.par_chunks_mut(per)
        .zip(paths.par_iter().enumerate())
        .for_each(|(dst, (k, p))| {
            let img = decode(p).expect("decode");
            let mut rng = ChaCha8Rng::seed_from_u64(round * 1000 + k as u64);
            let (_, augmented) = aug.augmented(&img, &mut rng);
            convert(&augmented, dst);
        });
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let micro: usize = args.first().map_or(26, |s| s.parse().expect("MICRO"));
    let size: u32 = args.get(1).map_or(224, |s| s.parse().expect("SIZE"));
    let rounds: u64 = args.get(2).map_or(5, |s| s.parse().expect("ROUNDS"));
    let device = match args.get(3).map_or("cpu", String::as_str) {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => panic!("DEVICE: cpu or cuda, not {other}"),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let ds = generate(
        &SynthOptions {
            count: micro,
            size: size + size / 4,
            seed: 1,
            ..Default::default()
        },
        dir.path(),
    )
    .expect("synthetic images");
    let mut paths: Vec<_> = std::fs::read_dir(&ds.image_root)
        .expect("image folder")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    let aug = Augment::ram(size);
    let (n, side) = (paths.len() as i64, i64::from(size));
    let norm = PixelNormalizer::clip(device);
    let (mut before, mut after) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    let mut identical = true;
    for round in 0..=rounds {
        let t = Instant::now();
        let f = load(&paths, &aug, round, to_normalized_chw);
        let load_f32 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let x_before = Tensor::from_slice(&f)
            .view([n, 3, side, side])
            .to_device(device);
        sync(device);
        let up_f32 = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let u = load(&paths, &aug, round, to_chw);
        let load_u8 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let x_after = norm.upload(&u, n, side, device).expect("upload");
        sync(device);
        let up_u8 = t.elapsed().as_secs_f64();

        identical &= x_before.kind() == Kind::Float
            && x_before.size() == x_after.size()
            && bool::try_from(x_before.eq_tensor(&x_after).all()).expect("compare");
        if round > 0 {
            before.0.push(load_f32);
            before.1.push(up_f32);
            after.0.push(load_u8);
            after.1.push(up_u8);
        }
    }
    let pixels = micro * 3 * (size * size) as usize;
    println!(
        "micro-batch of {micro} images at {size} px on {device:?}, {} loader threads, median of {rounds} rounds after one warm-up",
        rayon::current_num_threads()
    );
    println!("| path | loader ms (decode+augment+convert) | upload ms (to normalised on device) | loader+upload ms | bytes to device per micro-batch |");
    println!("|---|---:|---:|---:|---:|");
    for (label, (l, u), bytes) in [
        (
            "before: f32 from pageable memory, blocking",
            before,
            pixels * 4,
        ),
        (
            "after: uint8 (pinned, non-blocking on CUDA), normalised on device",
            after,
            pixels,
        ),
    ] {
        let (l, u) = (median(l) * 1e3, median(u) * 1e3);
        println!(
            "| {label} | {l:.2} | {u:.2} | {:.2} | {bytes} ({:.1} MB) |",
            l + u,
            bytes as f64 / 1e6
        );
    }
    println!(
        "normalised tensors identical bit for bit: {}",
        if identical { "yes" } else { "NO" }
    );
    assert!(
        identical,
        "the device normalisation differs from the host's"
    );
}
