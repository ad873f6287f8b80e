//! What one training image costs the loader on one core, stage by stage, with the loader before
//! (the `image` crate's JPEG decoder and resize, the warp by its definition) and now
//! (libjpeg-turbo, `tagfix::imaging::jpeg`; Pillow's resize, `tagfix::imaging::resample`; the
//! faster warp) side by side in one run; run by `scripts/bench-loader.sh`.
//!
//! Each image gets the same draw of RAM's training transform (`RandomResizedCrop` + flip +
//! `RandomAugment(2, 5)`) for both variants. Stages: decode (JPEG/PNG to RGB8; before: the `image`
//! crate's decoder; now: libjpeg-turbo for JPEG, bit for bit what Pillow decodes), crop + resize +
//! flip (before: `image::imageops::resize` with `CatmullRom` on a crop; now: Pillow's bicubic on
//! the region in place), the `RandomAugment` operations (before: the geometric ones through
//! `warp_affine_by_definition`, one channel and neighbour at a time with libm's `round`; now: the
//! same values from the faster loop), and the RGB8 → CHW copy the trainer
//! uploads. Single-threaded: the loader runs one image per core, so images per second per core
//! times the cores it gets is its rate.
//!
//!   bench_loader [SIZE] [ROUNDS] [IMAGES...]   (defaults: 224 5, generated photo-like JPEGs)

use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tagfix::imaging::{view_image, View};
use tagfix::train::config::AugOp;
use tagfix::train::data::augment::{decode, to_chw, Augment};
use tagfix::train::data::randaugment::{apply_op, apply_op_warping, warp_affine_by_definition};

#[path = "common/photos.rs"]
mod photos;
use photos::generated;

#[path = "common/stats.rs"]
mod stats;
use stats::median;

/// The decoder before: the `image` crate's, whatever the format.
fn decode_before(path: &Path) -> RgbImage {
    image::open(path).expect("decode").to_rgb8()
}

/// The resize before: the crop copied, then `image::imageops::resize` (bicubic, Catmull-Rom).
fn resize_before(img: &RgbImage, view: &View, size: u32) -> RgbImage {
    let crop = image::imageops::crop_imm(img, view.left, view.top, view.width, view.height);
    let mut out = if (view.width, view.height) == (size, size) {
        crop.to_image()
    } else {
        image::imageops::resize(&*crop, size, size, image::imageops::FilterType::CatmullRom)
    };
    if view.flip {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    out
}

/// Seconds `f` takes, and what it returns.
fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed().as_secs_f64(), v)
}

/// Per-stage medians for one image, in seconds.
#[derive(Default)]
struct Stages {
    decode_before: Vec<f64>,
    decode: Vec<f64>,
    before: Vec<f64>,
    now: Vec<f64>,
    ops_before: Vec<f64>,
    ops: Vec<f64>,
    chw: Vec<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size: u32 = args.first().map_or(224, |s| s.parse().expect("SIZE"));
    let rounds: usize = args.get(1).map_or(5, |s| s.parse().expect("ROUNDS"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut paths: Vec<PathBuf> = args.iter().skip(2).map(PathBuf::from).collect();
    if paths.is_empty() {
        paths = generated(dir.path());
    }
    let aug = Augment::ram(size);
    let mut chw = vec![0u8; 3 * (size * size) as usize];
    println!(
        "| image | decode before ms | decode now ms | crop+resize before ms | crop+resize now ms | RandomAugment before ms | RandomAugment now ms | CHW ms | before: images/s per core | now: images/s per core |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut sum_before, mut sum_now) = (0.0, 0.0);
    for path in &paths {
        let mut s = Stages::default();
        for round in 0..=rounds {
            let (t_decode_before, old_img) = timed(|| decode_before(path));
            let (t_decode, img) = timed(|| decode(path).expect("decode"));
            std::hint::black_box(old_img);
            // The same draw for both resizes, a new one each round.
            let mut rng = ChaCha8Rng::seed_from_u64(round as u64);
            let draw = aug.draw(img.width(), img.height(), &mut rng);
            let (t_before, mut old) = timed(|| resize_before(&img, &draw.view, size));
            let (t_ops_before, ()) = timed(|| {
                for &(op, arg) in &draw.ops {
                    apply_op_warping(&mut old, op, arg, warp_affine_by_definition);
                }
            });
            let (t_now, mut out) = timed(|| view_image(&img, &draw.view, size));
            let (t_ops, ()) = timed(|| {
                for &(op, arg) in &draw.ops {
                    apply_op(&mut out, op, arg);
                }
            });
            let (t_chw, ()) = timed(|| to_chw(&out, &mut chw));
            if round > 0 {
                s.decode_before.push(t_decode_before);
                s.decode.push(t_decode);
                s.before.push(t_before);
                s.ops_before.push(t_ops_before);
                s.now.push(t_now);
                s.ops.push(t_ops);
                s.chw.push(t_chw);
            }
        }
        let img = image::image_dimensions(path).expect("dimensions");
        let [decode_before, decode, before, now, ops_before, ops, chw] = [
            s.decode_before,
            s.decode,
            s.before,
            s.now,
            s.ops_before,
            s.ops,
            s.chw,
        ]
        .map(|v| median(v) * 1e3);
        let (total_before, total_now) = (
            decode_before + before + ops_before + chw,
            decode + now + ops + chw,
        );
        sum_before += total_before;
        sum_now += total_now;
        println!(
            "| {} ({}×{}) | {decode_before:.2} | {decode:.2} | {before:.2} | {now:.2} | {ops_before:.2} | {ops:.2} | {chw:.3} | {:.0} | {:.0} |",
            path.file_name().unwrap_or_default().to_string_lossy(),
            img.0,
            img.1,
            1e3 / total_before,
            1e3 / total_now
        );
    }
    let n = paths.len() as f64;
    let (per_before, per_now) = (n * 1e3 / sum_before, n * 1e3 / sum_now);
    println!(
        "\nat {size} px, these images in equal shares: {per_before:.1} images/s per core before, {per_now:.1} now ({:.2}×); \
         cores for 320 images/s: {:.1} before, {:.1} now (median of {rounds} rounds after one warm-up)",
        per_now / per_before,
        320.0 / per_before,
        320.0 / per_now
    );
    per_operation(&aug, &paths[0], size, rounds);
}

/// Each `RandomAugment` operation alone on the first image's first view, at RAM's magnitude 5,
/// through the definition's warp and the one in use.
fn per_operation(aug: &Augment, path: &Path, size: u32, rounds: usize) {
    let img = decode(path).expect("decode");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let view = aug.draw(img.width(), img.height(), &mut rng).view;
    let base = view_image(&img, &view, size);
    println!(
        "\n| RandomAugment operation at {size} px (magnitude 5) | before ms | now ms |\n|---|---:|---:|"
    );
    for op in AugOp::ALL {
        let arg = match op {
            AugOp::Brightness | AugOp::Sharpness => 0.5 * 1.8 + 0.1,
            AugOp::ShearX | AugOp::ShearY => 0.15,
            AugOp::TranslateX | AugOp::TranslateY => 0.5 * 10.0,
            AugOp::Rotate => 15.0,
            _ => 0.0,
        };
        let time = |apply: &dyn Fn(&mut RgbImage)| {
            let times = (0..=rounds)
                .map(|_| {
                    let mut out = base.clone();
                    timed(|| apply(&mut out)).0
                })
                .skip(1)
                .collect();
            median(times) * 1e3
        };
        let before = time(&|img| apply_op_warping(img, op, arg, warp_affine_by_definition));
        let now = time(&|img| apply_op(img, op, arg));
        println!("| {op:?} | {before:.2} | {now:.2} |");
    }
}
