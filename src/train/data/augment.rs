//! Image decoding and RAM's training augmentation: `RandomResizedCrop(size, scale=(0.2, 1.0),
//! bicubic)`, horizontal flip with probability ½, RAM's `RandomAugment(2, 5, …)`
//! ([`super::randaugment`], optional), CLIP normalisation (torchvision's algorithms,
//! `transform_train` in `ram/data/__init__.py`).

use super::randaugment::{apply_op, RandomAugment};
use crate::imaging::{normalize_chw, view_image, View};
use crate::train::config::AugOp;
use image::RgbImage;
use rand::Rng;

pub use crate::imaging::{decode, open, probe};
/// CLIP's per-channel mean and standard deviation (RGB), as RAM normalises.
pub use crate::teacher::descriptor::{CLIP_MEAN, CLIP_STD};

/// The training transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Output side in pixels.
    pub size: u32,
    /// Crop area as a fraction of the image.
    pub scale: (f64, f64),
    /// Crop aspect ratio range (w/h).
    pub ratio: (f64, f64),
    /// Flip probability.
    pub flip: f64,
    /// RAM's `RandomAugment` after the flip; `None`: off.
    pub random: Option<RandomAugment>,
}

impl Augment {
    /// RAM's training transform at `size`, `RandomAugment(2, 5)` included.
    pub fn ram(size: u32) -> Self {
        Augment {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: 0.5,
            random: Some(RandomAugment::ram()),
        }
    }

    /// The transform without `RandomAugment`.
    pub fn without_random_augment(self) -> Self {
        Augment {
            random: None,
            ..self
        }
    }

    /// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)`.
    pub fn crop_box<R: Rng>(&self, width: u32, height: u32, rng: &mut R) -> (u32, u32, u32, u32) {
        let area = f64::from(width) * f64::from(height);
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.gen_range(self.scale.0..=self.scale.1);
            let aspect = rng.gen_range(lr0..=lr1).exp();
            let w = (target * aspect).sqrt().round() as u32;
            let h = (target / aspect).sqrt().round() as u32;
            if w > 0 && h > 0 && w <= width && h <= height {
                let top = rng.gen_range(0..=height - h);
                let left = rng.gen_range(0..=width - w);
                return (top, left, h, w);
            }
        }
        // Fallback: central crop at the nearest allowed ratio.
        let in_ratio = f64::from(width) / f64::from(height);
        let (w, h) = if in_ratio < self.ratio.0 {
            (
                width,
                ((f64::from(width) / self.ratio.0).round() as u32).clamp(1, height),
            )
        } else if in_ratio > self.ratio.1 {
            (
                ((f64::from(height) * self.ratio.1).round() as u32).clamp(1, width),
                height,
            )
        } else {
            (width, height)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }

    /// Draws one crop box and flip.
    pub fn draw_view<R: Rng>(&self, width: u32, height: u32, rng: &mut R) -> View {
        let (top, left, h, w) = self.crop_box(width, height, rng);
        View {
            top,
            left,
            height: h,
            width: w,
            flip: rng.gen_bool(self.flip),
        }
    }

    /// Draws the random part of the transform: the crop box and flip, then (when on) the
    /// `RandomAugment` operations, in that order from `rng`.
    pub fn draw<R: Rng>(&self, width: u32, height: u32, rng: &mut R) -> Draw {
        let view = self.draw_view(width, height, rng);
        let ops = self.random.map(|ra| ra.draw(rng)).unwrap_or_default();
        Draw {
            view,
            ops,
            size: self.size,
        }
    }

    /// Draws the transform and writes the augmented image of `img`, CLIP-normalised CHW floats,
    /// into `out` (`3·size·size` values). Returns the draw, so another consumer (the online
    /// teacher) can render the same augmented view at its own resolution ([`Draw::image`]).
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R, out: &mut [f32]) -> Draw {
        let (draw, augmented) = self.augmented(img, rng);
        normalize_chw(&augmented, &CLIP_MEAN, &CLIP_STD, out);
        draw
    }

    /// Draws the transform and returns the draw with the augmented RGB8 image (`size × size`).
    pub fn augmented<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> (Draw, RgbImage) {
        let draw = self.draw(img.width(), img.height(), rng);
        let augmented = draw.image(img, self.size);
        (draw, augmented)
    }

    /// [`Augment::augmented`] of an image file, decoding only the crop's pixels
    /// ([`crate::imaging::Opened::view`]: the same image, for less decoding). Also returns those
    /// pixels with the draw moved onto them, for rendering the view at another size.
    pub fn augmented_file<R: Rng>(
        &self,
        file: crate::imaging::Opened,
        rng: &mut R,
    ) -> crate::error::Result<Augmented> {
        let (width, height) = file.dimensions();
        let draw = self.draw(width, height, rng);
        let (pixels, view) = file.view(&draw.view)?;
        let on_pixels = Draw {
            view,
            ..draw.clone()
        };
        let image = on_pixels.image(&pixels, self.size);
        Ok(Augmented {
            draw,
            image,
            pixels,
            on_pixels,
        })
    }
}

/// What [`Augment::augmented_file`] made of an image file.
pub struct Augmented {
    /// The draw, in the coordinates of the whole image.
    pub draw: Draw,
    /// The augmented image (`size × size`).
    pub image: RgbImage,
    /// The decoded pixels the crop needed.
    pub pixels: RgbImage,
    /// The draw moved onto `pixels`.
    pub on_pixels: Draw,
}

/// One draw of the training transform: the crop and flip, and the `RandomAugment` operations
/// applied after them with their arguments, for a model input of `size` pixels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draw {
    pub view: View,
    pub ops: Vec<(AugOp, f64)>,
    pub size: u32,
}

impl Draw {
    /// The augmented image at `size × size`: the view's crop resized (bicubic) and maybe flipped,
    /// then the operations in order. Translations are in pixels of the model's input and scale with
    /// `size / self.size`; shears about the corner and rotations about the centre keep their
    /// arguments. At another size the result is therefore close to, not equal to, a resize of the
    /// model's input (resampling, Sharpness's 3×3 kernel and the histogram operations see other
    /// pixels); at the model's own size it is exactly the model's input image.
    pub fn image(&self, img: &RgbImage, size: u32) -> RgbImage {
        let mut out = view_image(img, &self.view, size);
        let scale = if self.size == 0 || size == self.size {
            1.0
        } else {
            f64::from(size) / f64::from(self.size)
        };
        for &(op, arg) in &self.ops {
            let arg = match op {
                AugOp::TranslateX | AugOp::TranslateY => arg * scale,
                _ => arg,
            };
            apply_op(&mut out, op, arg);
        }
        out
    }
}

/// RGB8 → CLIP-normalised CHW floats.
pub fn to_normalized_chw(img: &RgbImage, out: &mut [f32]) {
    normalize_chw(img, &CLIP_MEAN, &CLIP_STD, out);
}

/// RGB8 → CHW bytes: the training loader's output, a quarter of the floats' size; the trainer
/// normalises them on the device ([`crate::train::upload::PixelNormalizer`]) to exactly the values
/// [`to_normalized_chw`] gives.
pub fn to_chw(img: &RgbImage, out: &mut [u8]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer size");
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn crop_box_stays_inside_and_covers_scale() {
        let aug = Augment::ram(32);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..500 {
            let (t, l, h, w) = aug.crop_box(100, 60, &mut rng);
            assert!(t + h <= 60 && l + w <= 100 && h > 0 && w > 0);
            let frac = f64::from(h * w) / 6000.0;
            assert!(frac > 0.15 && frac <= 1.0, "{frac}");
        }
        // A very wide image falls back to the ratio-limited centre crop eventually, never outside.
        let (t, l, h, w) = aug.crop_box(1000, 2, &mut rng);
        assert!(t + h <= 2 && l + w <= 1000);
    }

    #[test]
    fn apply_is_seeded_and_normalised() {
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
        });
        let aug = Augment::ram(16).without_random_augment();
        let mut a = vec![0f32; 3 * 256];
        let mut b = vec![0f32; 3 * 256];
        aug.apply(&img, &mut ChaCha8Rng::seed_from_u64(5), &mut a);
        aug.apply(&img, &mut ChaCha8Rng::seed_from_u64(5), &mut b);
        assert_eq!(a, b);
        aug.apply(&img, &mut ChaCha8Rng::seed_from_u64(6), &mut b);
        assert_ne!(a, b);
        // Blue channel is constant 128 everywhere: normalised value (128/255 - mean) / std.
        let blue = (128.0 / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2];
        assert!(a[512..].iter().all(|v| (v - blue).abs() < 1e-5));
    }

    #[test]
    fn random_augment_follows_the_crop_and_flip() {
        // With RandomAugment on, the crop and flip draw the same numbers first: images the drawn
        // operations leave alone (none applied, or Identity) equal the plain transform's.
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
        });
        let (plain, full) = (Augment::ram(16).without_random_augment(), Augment::ram(16));
        let (mut a, mut b) = (vec![0f32; 3 * 256], vec![0f32; 3 * 256]);
        let (mut same, mut differ) = (0, 0);
        for seed in 0..64 {
            plain.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed), &mut a);
            full.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed), &mut b);
            if a == b {
                same += 1;
            } else {
                differ += 1;
            }
            let mut c = vec![0f32; 3 * 256];
            full.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed), &mut c);
            assert_eq!(b, c, "seed {seed}: not reproducible");
        }
        assert!(same > 5 && differ > 20, "same {same}, differ {differ}");
    }

    #[test]
    fn draw_replays_the_model_input_and_scales_translations() {
        let img = RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x + y) * 3) as u8])
        });
        let aug = Augment::ram(24);
        let (mut with_ops, mut changed) = (0, 0);
        for seed in 0..32 {
            let mut px = vec![0f32; 3 * 24 * 24];
            let draw = aug.apply(&img, &mut ChaCha8Rng::seed_from_u64(seed), &mut px);
            // At the model's size the replay is the model's input, pixel for pixel.
            let mut again = vec![0f32; px.len()];
            normalize_chw(&draw.image(&img, 24), &CLIP_MEAN, &CLIP_STD, &mut again);
            assert_eq!(px, again, "seed {seed}");
            // The operations are part of the replay: without them the image mostly differs (an
            // operation may leave a given image as it is, e.g. AutoContrast on a full-range crop).
            if draw.ops.iter().any(|(op, _)| *op != AugOp::Identity) {
                with_ops += 1;
                let bare = Draw {
                    ops: Vec::new(),
                    ..draw.clone()
                };
                if bare.image(&img, 24) != draw.image(&img, 24) {
                    changed += 1;
                }
            }
        }
        assert!(
            with_ops > 10 && changed * 3 >= with_ops * 2,
            "{changed} of {with_ops} draws with operations changed the image"
        );

        // A translation of 3 px at 16 px moves a vertical edge 6 px at 32 px.
        let edge = RgbImage::from_fn(32, 32, |x, _| {
            image::Rgb(if x < 16 { [0, 0, 0] } else { [250, 250, 250] })
        });
        let full = View::full(&edge);
        let first_bright = |im: &RgbImage| {
            (0..im.width())
                .find(|&x| im.get_pixel(x, 8)[0] > 200)
                .map(i64::from)
                .expect("an edge")
        };
        let plain = Draw {
            view: full,
            ops: Vec::new(),
            size: 16,
        };
        let moved = Draw {
            ops: vec![(AugOp::TranslateX, 3.0)],
            ..plain.clone()
        };
        let (p16, m16) = (
            first_bright(&plain.image(&edge, 16)),
            first_bright(&moved.image(&edge, 16)),
        );
        let (p32, m32) = (
            first_bright(&plain.image(&edge, 32)),
            first_bright(&moved.image(&edge, 32)),
        );
        assert_eq!((p16 - m16).abs(), 3);
        assert_eq!((p32 - m32).abs(), 6);
    }

    /// Decoding only the crop ([`Augment::augmented_file`]) gives the image decoding the whole
    /// file gives, for JPEG (subsampled chroma, baseline and progressive) and PNG, with and
    /// without RandomAugment, and the draw replays on the crop's pixels at another size.
    #[test]
    fn the_crop_decoded_alone_gives_the_whole_files_augmented_image() {
        use crate::fuzz::targets::image::turbojpeg_seed;
        use turbojpeg_sys::{
            TJPARAM_TJPARAM_PROGRESSIVE as PROGRESSIVE, TJPARAM_TJPARAM_SUBSAMP as SUBSAMPLING,
            TJSAMP_TJSAMP_420 as S420, TJSAMP_TJSAMP_422 as S422,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (w, h, subsampling, progressive) in [(211, 157, S420, 0), (96, 301, S422, 1)] {
            let p = dir.path().join(format!("{w}x{h}.jpg"));
            let params = [(SUBSAMPLING, subsampling), (PROGRESSIVE, progressive)];
            std::fs::write(&p, turbojpeg_seed(w, h, false, &params)).unwrap();
            files.push(p);
        }
        let png = dir.path().join("a.png");
        RgbImage::from_fn(50, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 7]))
            .save(&png)
            .unwrap();
        files.push(png);
        for aug in [Augment::ram(32), Augment::ram(24).without_random_augment()] {
            for path in &files {
                let whole = decode(path).unwrap();
                for seed in 0..40 {
                    let (draw, image) = aug.augmented(&whole, &mut ChaCha8Rng::seed_from_u64(seed));
                    let file = open(path).unwrap();
                    let got = aug
                        .augmented_file(file, &mut ChaCha8Rng::seed_from_u64(seed))
                        .unwrap();
                    assert_eq!(
                        (&got.draw, &got.image),
                        (&draw, &image),
                        "{path:?} seed {seed}"
                    );
                    assert_eq!(got.on_pixels.image(&got.pixels, 20), draw.image(&whole, 20));
                }
            }
        }
    }

    #[test]
    fn a_view_outside_the_image_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        RgbImage::new(10, 8).save(&p).unwrap();
        let view = crate::imaging::View {
            top: 0,
            left: 5,
            height: 8,
            width: 6,
            flip: false,
        };
        let e = open(&p).unwrap().view(&view).unwrap_err().to_string();
        assert!(
            e.contains("a.png") && e.contains("outside the 10×8 image"),
            "{e}"
        );
    }

    #[test]
    fn decode_errors_name_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.jpg");
        std::fs::write(&p, b"not an image at all").unwrap();
        let e = probe(&p).unwrap_err().to_string();
        assert!(e.contains("bad.jpg"), "{e}");
        let e = probe(&dir.path().join("missing.png"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.png"), "{e}");
    }
}
