//! Photo-like JPEGs for the loader benchmarks (`bench_loader`, `bench_loader_pool`); each uses a part.
#![allow(dead_code)]

use image::RgbImage;
use std::path::{Path, PathBuf};

/// A photo-like image: smooth shading, hard-edged blocks and fine noise, so that the JPEG
/// encoder and decoder see the mix of flat areas and detail that photographs have.
pub fn photo_like(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 24) as i32 - 12
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let block = ((x / 37 + y / 53 + seed) % 5) as f32 * 20.0;
        let base = [
            120.0 + 90.0 * (fx * 6.3).sin() + block,
            100.0 + 80.0 * (fy * 4.1).cos() - block * 0.5,
            90.0 + 60.0 * ((fx + fy) * 9.7).sin(),
        ];
        image::Rgb(base.map(|v| (v as i32 + noise()).clamp(0, 255) as u8))
    })
}

/// Generated JPEGs (quality 90) at sizes common in RAM's training sets: CC3M/SBU-like 500×375,
/// COCO-like 640×480, and larger web images.
pub fn generated(dir: &Path) -> Vec<PathBuf> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| write_jpeg(&dir.join(format!("photo-{w}x{h}.jpg")), w, h, i as u32 + 1))
        .collect()
}

/// CC3M/SBU-like, COCO-like and larger web images.
pub const SIZES: [(u32, u32); 4] = [(500, 375), (640, 480), (1024, 768), (2048, 1536)];

/// A generated photo-like JPEG at quality 90.
pub fn write_jpeg(path: &Path, w: u32, h: u32, seed: u32) -> PathBuf {
    let file = std::fs::File::create(path).expect("create jpeg");
    let mut enc =
        image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90);
    enc.encode_image(&photo_like(w, h, seed))
        .expect("encode jpeg");
    path.to_path_buf()
}
