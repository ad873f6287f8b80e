//! RAM's `RandomAugment(N, M)` (`ram/data/randaugment.py`, from BLIP): per image, N operations are
//! drawn uniformly with replacement from a list, and each is applied with probability `prob` at
//! magnitude M of 10, on the RGB8 image after the crop and flip.
//!
//! The operations follow RAM's NumPy/OpenCV code: lookup tables for AutoContrast, Equalize
//! (PIL's algorithm) and Brightness; the 3×3 smoothing blend for Sharpness; `cv2.warpAffine`
//! (bilinear, source coordinates in 1/32 pixel as OpenCV quantises them, constant fill 128) for the
//! shears, translations and rotation. BLIP's four further operations (`Solarize`, `Color`,
//! `Contrast`, `Posterize`, in its `func_dict` but not in RAM's list) follow its code likewise. One
//! deliberate difference: RAM's AutoContrast computes
//! `-low * scale` on a `uint8` and wraps, saturating every channel whose minimum is not 0
//! (salesforce/ALBEF#134, LAVIS#643); tagfix computes the offset as intended (PIL's autocontrast).

use crate::train::config::{AugOp, RandomAugmentConfig};
use image::{Rgb, RgbImage};
use rand::Rng;

/// RAM's `MAX_LEVEL`.
const MAX_LEVEL: f64 = 10.0;
/// RAM's `translate_const`: pixels at full magnitude.
const TRANSLATE_CONST: f64 = 10.0;
/// RAM's `replace_value` for pixels a geometric operation uncovers.
pub const FILL: [u8; 3] = [128, 128, 128];

/// The operations drawn from, as a fixed-size list so the transform stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomAugment {
    ops: [AugOp; AugOp::ALL.len()],
    len: usize,
    /// Operations drawn per image (N).
    pub n: usize,
    /// Magnitude of 10 (M).
    pub magnitude: f64,
    /// Probability each drawn operation is applied.
    pub prob: f64,
}

impl RandomAugment {
    /// From a validated configuration; `None` when it is turned off.
    pub fn from_config(c: &RandomAugmentConfig) -> Option<Self> {
        if !c.enabled || c.augs.is_empty() {
            return None;
        }
        let mut ops = [AugOp::Identity; AugOp::ALL.len()];
        let len = c.augs.len().min(ops.len());
        ops[..len].copy_from_slice(&c.augs[..len]);
        Some(RandomAugment {
            ops,
            len,
            n: c.ops,
            magnitude: c.magnitude,
            prob: c.prob,
        })
    }

    /// RAM's `RandomAugment(2, 5, isPIL=True, augs=[…])`.
    pub fn ram() -> Self {
        Self::from_config(&RandomAugmentConfig::default()).expect("enabled")
    }

    /// The operations drawn from.
    pub fn ops(&self) -> &[AugOp] {
        &self.ops[..self.len]
    }

    /// Draws the operations, then for each the apply/skip decision and (for the geometric ones)
    /// the direction, in RAM's order. Returns the operations to apply, with their arguments; the
    /// draws do not depend on the image, so one draw can be replayed on several renderings of it.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> Vec<(AugOp, f64)> {
        let drawn: Vec<AugOp> = (0..self.n)
            .map(|_| self.ops()[rng.gen_range(0..self.len)])
            .collect();
        let mut applied = Vec::new();
        for op in drawn {
            if rng.gen::<f64>() > self.prob {
                continue;
            }
            let level = self.magnitude / MAX_LEVEL;
            let signed = |v: f64, rng: &mut R| if rng.gen::<f64>() > 0.5 { -v } else { v };
            let arg = match op {
                AugOp::Identity | AugOp::AutoContrast | AugOp::Equalize => 0.0,
                AugOp::Brightness | AugOp::Sharpness | AugOp::Color | AugOp::Contrast => {
                    level * 1.8 + 0.1
                }
                // Python's `int(…)` of a non-negative value: the floor.
                AugOp::Solarize => (level * 256.0).floor(),
                AugOp::Posterize => (level * 4.0).floor(),
                AugOp::ShearX | AugOp::ShearY => signed(level * 0.3, rng),
                AugOp::TranslateX | AugOp::TranslateY => signed(level * TRANSLATE_CONST, rng),
                AugOp::Rotate => signed(level * 30.0, rng),
            };
            applied.push((op, arg));
        }
        applied
    }

    /// [`Self::draw`], then applies the operations to `img`. Returns what was applied.
    pub fn apply<R: Rng>(&self, img: &mut RgbImage, rng: &mut R) -> Vec<(AugOp, f64)> {
        let ops = self.draw(rng);
        for &(op, arg) in &ops {
            apply_op(img, op, arg);
        }
        ops
    }
}

/// Applies one operation with its argument (factor, shear, pixels or degrees).
pub fn apply_op(img: &mut RgbImage, op: AugOp, arg: f64) {
    apply_op_warping(img, op, arg, warp_affine);
}

/// A `warp_affine` implementation: the one in use or [`warp_affine_by_definition`].
pub type Warp = fn(&RgbImage, [[f64; 3]; 2], [u8; 3]) -> RgbImage;

/// [`apply_op`] with the geometric operations done by `warp` (`scripts/bench-loader.sh` times the
/// definition as its baseline).
#[doc(hidden)]
pub fn apply_op_warping(img: &mut RgbImage, op: AugOp, arg: f64, warp: Warp) {
    match op {
        AugOp::Identity => {}
        AugOp::AutoContrast => autocontrast(img),
        AugOp::Equalize => equalize(img),
        AugOp::Brightness => brightness(img, arg as f32),
        AugOp::Sharpness => sharpness(img, arg as f32),
        AugOp::ShearX => *img = warp(img, [[1.0, arg, 0.0], [0.0, 1.0, 0.0]], FILL),
        AugOp::ShearY => *img = warp(img, [[1.0, 0.0, 0.0], [arg, 1.0, 0.0]], FILL),
        AugOp::TranslateX => *img = warp(img, [[1.0, 0.0, -arg], [0.0, 1.0, 0.0]], FILL),
        AugOp::TranslateY => *img = warp(img, [[1.0, 0.0, 0.0], [0.0, 1.0, -arg]], FILL),
        AugOp::Rotate => *img = warp(img, rotation(img, arg), FILL),
        AugOp::Solarize => solarize(img, arg as u32),
        AugOp::Color => color(img, arg as f32),
        AugOp::Contrast => contrast(img, arg),
        AugOp::Posterize => posterize(img, arg as u32),
    }
}

/// Maps every channel value through its own 256-entry table.
fn map_channels(img: &mut RgbImage, tables: &[[u8; 256]; 3]) {
    for px in img.pixels_mut() {
        for c in 0..3 {
            px[c] = tables[c][px[c] as usize];
        }
    }
}

fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for px in img.pixels() {
        for c in 0..3 {
            h[c][px[c] as usize] += 1;
        }
    }
    h
}

/// Per channel, stretches `[min, max]` to `[0, 255]` (truncating), as PIL's `autocontrast` with
/// cutoff 0. A constant channel is left alone.
pub fn autocontrast(img: &mut RgbImage) {
    let hist = histograms(img);
    let mut tables = [[0u8; 256]; 3];
    for c in 0..3 {
        let low = hist[c].iter().position(|&n| n > 0).unwrap_or(0);
        let high = hist[c].iter().rposition(|&n| n > 0).unwrap_or(255);
        for (v, t) in tables[c].iter_mut().enumerate() {
            *t = if high <= low {
                v as u8
            } else {
                let scale = 255.0 / (high - low) as f64;
                let offset = -(low as f64) * scale;
                (v as f64 * scale + offset).clamp(0.0, 255.0) as u8
            };
        }
    }
    map_channels(img, &tables);
}

/// Per channel, PIL's `equalize`: `step = (pixels − count of the highest value) / 255` (floored);
/// value v maps to `(step/2 + pixels below v) / step`, clipped to 255. Unchanged when `step` is 0.
pub fn equalize(img: &mut RgbImage) {
    let hist = histograms(img);
    let mut tables = [[0u8; 256]; 3];
    for c in 0..3 {
        let h = &hist[c];
        let last = h.iter().rev().find(|&&n| n > 0).copied().unwrap_or(0);
        let step = (h.iter().sum::<u64>() - last) / 255;
        let mut below = step / 2;
        for (v, t) in tables[c].iter_mut().enumerate() {
            *t = below
                .checked_div(step)
                .map_or(v as u8, |q| q.min(255) as u8);
            below += h[v];
        }
    }
    map_channels(img, &tables);
}

/// Multiplies every value by `factor` (f32), clipped to `[0, 255]` and truncated.
pub fn brightness(img: &mut RgbImage, factor: f32) {
    let mut table = [0u8; 256];
    for (v, t) in table.iter_mut().enumerate() {
        *t = (v as f32 * factor).clamp(0.0, 255.0) as u8;
    }
    map_channels(img, &[table; 3]);
}

/// Inverts every value at or above `threshold` (255 − v), as BLIP's `solarize_func`; a threshold
/// of 256 or more leaves the image as it is.
pub fn solarize(img: &mut RgbImage, threshold: u32) {
    let mut table = [0u8; 256];
    for (v, t) in (0u8..=255).zip(table.iter_mut()) {
        *t = if u32::from(v) < threshold { v } else { 255 - v };
    }
    map_channels(img, &[table; 3]);
}

/// Keeps the top `bits` bits of every value, as BLIP's `posterize_func`
/// (`img & np.uint8(255 << (8 − bits))`). The mask wraps to 8 bits as NumPy 1.x wraps it, so that
/// 0 bits (a magnitude below 2.5) blacken the image as BLIP's code does.
pub fn posterize(img: &mut RgbImage, bits: u32) {
    let mask = (255u32 << (8 - bits.min(8))) as u8;
    for v in img.iter_mut() {
        *v &= mask;
    }
}

/// Colour saturation as BLIP's `color_func`: every pixel times a 3×3 f32 matrix that blends it
/// with its grey at `factor` (1: unchanged, 0: grey), clipped to `[0, 255]` and truncated. The grey
/// weights are BT.601's in OpenCV's BGR order, applied to RGB pixels as BLIP applies them (red
/// weighs 0.114). The sum runs in f32 as fused multiply-adds in channel order, as NumPy's `matmul`
/// computes it through OpenBLAS on a processor with FMA: `tests/randaugment_blip.rs` finds every
/// value equal to BLIP's, and a plain sum a level off in a few.
pub fn color(img: &mut RgbImage, factor: f32) {
    const BLEND: [[f32; 3]; 3] = [
        [0.886, -0.114, -0.114],
        [-0.587, 0.413, -0.587],
        [-0.299, -0.299, 0.701],
    ];
    const GREY: [f32; 3] = [0.114, 0.587, 0.299];
    let m: [[f32; 3]; 3] =
        std::array::from_fn(|i| std::array::from_fn(|j| BLEND[i][j] * factor + GREY[i]));
    for px in img.pixels_mut() {
        let p = px.0.map(f32::from);
        px.0 = std::array::from_fn(|j| {
            let sum = p[2].mul_add(m[2][j], p[1].mul_add(m[1][j], p[0] * m[0][j]));
            sum.clamp(0.0, 255.0) as u8
        });
    }
}

/// Contrast as BLIP's `contrast_func`: every value moved away from (`factor` > 1) or towards the
/// image's mean grey — the channel means weighted 0.114, 0.587, 0.299 in RGB order, as BLIP weighs
/// them — by `factor`, in f64, clipped and truncated. The arithmetic follows NumPy's step by step
/// (integer channel sums are exact in f64), so the table is BLIP's to the bit.
pub fn contrast(img: &mut RgbImage, factor: f64) {
    let pixels = u64::from(img.width()) * u64::from(img.height());
    if pixels == 0 {
        return;
    }
    let mut sums = [0u64; 3];
    for px in img.pixels() {
        for (s, &v) in sums.iter_mut().zip(&px.0) {
            *s += u64::from(v);
        }
    }
    let means = sums.map(|s| s as f64 / pixels as f64);
    let mean = means[0] * 0.114 + means[1] * 0.587 + means[2] * 0.299;
    let mut table = [0u8; 256];
    for (v, t) in table.iter_mut().enumerate() {
        *t = ((v as f64 - mean) * factor + mean).clamp(0.0, 255.0) as u8;
    }
    map_channels(img, &[table; 3]);
}

/// Blends the image with its 3×3 smoothing (`[[1,1,1],[1,5,1],[1,1,1]] / 13`, rounded):
/// `smooth + factor·(img − smooth)` on interior pixels, truncated; the border keeps its values.
/// Factor 1 is the identity; factor 0 is the smoothed image everywhere (the border reflected, as
/// OpenCV's `BORDER_REFLECT_101`).
pub fn sharpness(img: &mut RgbImage, factor: f32) {
    if factor == 1.0 {
        return;
    }
    let (w, h) = (img.width() as i64, img.height() as i64);
    let src = img.clone();
    let reflect = |i: i64, n: i64| -> u32 {
        if n == 1 {
            0
        } else if i < 0 {
            (-i) as u32
        } else if i >= n {
            (2 * n - 2 - i) as u32
        } else {
            i as u32
        }
    };
    for y in 0..h {
        for x in 0..w {
            let interior = x > 0 && y > 0 && x < w - 1 && y < h - 1;
            if factor != 0.0 && !interior {
                continue;
            }
            let out: [u8; 3] = std::array::from_fn(|c| {
                let mut sum = 0i64;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let weight = if dx == 0 && dy == 0 { 5 } else { 1 };
                        sum += weight
                            * i64::from(src.get_pixel(reflect(x + dx, w), reflect(y + dy, h))[c]);
                    }
                }
                // round(sum / 13): never a tie for an integer sum.
                let smooth = ((2 * sum + 13) / 26) as f32;
                let v = f32::from(src.get_pixel(x as u32, y as u32)[c]);
                (smooth + factor * (v - smooth)).clamp(0.0, 255.0) as u8
            });
            img.put_pixel(x as u32, y as u32, Rgb(out));
        }
    }
}

/// `cv2.getRotationMatrix2D((W/2, H/2), degrees, 1)` then [`warp_affine`]: positive degrees turn
/// the content counter-clockwise.
pub fn rotate(img: &RgbImage, degrees: f64, fill: [u8; 3]) -> RgbImage {
    warp_affine(img, rotation(img, degrees), fill)
}

/// `t.round() as i64` (halves away from zero; NaN 0, beyond i64 saturated, as `as` does) without
/// the libm call, which dominated the warp's time: the fraction after truncation is exact in f64.
#[inline]
fn round_half_away(t: f64) -> i64 {
    let whole = t as i64;
    let frac = t - whole as f64;
    if frac >= 0.5 {
        whole.saturating_add(1)
    } else if frac <= -0.5 {
        whole.saturating_sub(1)
    } else {
        whole
    }
}

/// `cv2.getRotationMatrix2D((w/2, h/2), degrees, 1)`.
fn rotation(img: &RgbImage, degrees: f64) -> [[f64; 3]; 2] {
    let (cx, cy) = (f64::from(img.width()) / 2.0, f64::from(img.height()) / 2.0);
    let a = degrees.to_radians();
    let (alpha, beta) = (a.cos(), a.sin());
    [
        [alpha, beta, (1.0 - alpha) * cx - beta * cy],
        [-beta, alpha, beta * cx + (1.0 - alpha) * cy],
    ]
}

/// The inverse of an affine map (`cv2.invertAffineTransform`; zero when it is singular).
fn inverse(m: [[f64; 3]; 2]) -> [[f64; 3]; 2] {
    let [[a, b, c], [d, e, f]] = m;
    let det = a * e - b * d;
    let det = if det != 0.0 { 1.0 / det } else { 0.0 };
    [
        [e * det, -b * det, (b * f - c * e) * det],
        [-d * det, a * det, (c * d - a * f) * det],
    ]
}

/// `cv2.warpAffine(img, m, (W, H), flags=INTER_LINEAR, borderValue=fill)`: `m` maps source to
/// destination pixel coordinates (pixel centres at integers); each destination pixel samples the
/// source bilinearly at `m⁻¹·(x, y)`, with the position rounded to 1/32 pixel as OpenCV does and
/// neighbours outside the image taking `fill`. Rounded to the nearest integer.
pub fn warp_affine(img: &RgbImage, m: [[f64; 3]; 2], fill: [u8; 3]) -> RgbImage {
    let inv = inverse(m);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (src, stride) = (img.as_raw(), w as usize * 3);
    // One neighbour's three values, or the fill outside the image.
    let pixel = |x: i64, y: i64| -> [f64; 3] {
        if x >= 0 && y >= 0 && x < w && y < h {
            let i = y as usize * stride + x as usize * 3;
            [src[i], src[i + 1], src[i + 2]].map(f64::from)
        } else {
            fill.map(f64::from)
        }
    };
    let mut out = Vec::with_capacity(src.len());
    for y in 0..h {
        let y = y as f64;
        for x in 0..w {
            let x = x as f64;
            let sx = round_half_away((inv[0][0] * x + inv[0][1] * y + inv[0][2]) * 32.0);
            let sy = round_half_away((inv[1][0] * x + inv[1][1] * y + inv[1][2]) * 32.0);
            let (x0, y0) = (sx.div_euclid(32), sy.div_euclid(32));
            let (fx, fy) = (
                sx.rem_euclid(32) as f64 / 32.0,
                sy.rem_euclid(32) as f64 / 32.0,
            );
            let (p00, p10) = (pixel(x0, y0), pixel(x0 + 1, y0));
            let (p01, p11) = (pixel(x0, y0 + 1), pixel(x0 + 1, y0 + 1));
            for ch in 0..3 {
                // A convex combination of 0..=255 with weights in 1/32 steps: exact in f64 and
                // never negative, so adding ½ and truncating rounds as `round` would.
                let v = (1.0 - fy) * ((1.0 - fx) * p00[ch] + fx * p10[ch])
                    + fy * ((1.0 - fx) * p01[ch] + fx * p11[ch]);
                out.push((v + 0.5) as u8);
            }
        }
    }
    RgbImage::from_raw(img.width(), img.height(), out).expect("w × h × 3 bytes")
}

/// [`warp_affine`] as first written, one channel and one neighbour at a time, `round` from libm:
/// the definition the faster loop equals to the bit (tested), and `scripts/bench-loader.sh`'s
/// baseline.
#[doc(hidden)]
pub fn warp_affine_by_definition(img: &RgbImage, m: [[f64; 3]; 2], fill: [u8; 3]) -> RgbImage {
    let inv = inverse(m);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let sample = |x: i64, y: i64, ch: usize| -> f64 {
        if x >= 0 && y >= 0 && x < w && y < h {
            f64::from(img.get_pixel(x as u32, y as u32)[ch])
        } else {
            f64::from(fill[ch])
        }
    };
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let (x, y) = (f64::from(x), f64::from(y));
        let sx = ((inv[0][0] * x + inv[0][1] * y + inv[0][2]) * 32.0).round() as i64;
        let sy = ((inv[1][0] * x + inv[1][1] * y + inv[1][2]) * 32.0).round() as i64;
        let (x0, y0) = (sx.div_euclid(32), sy.div_euclid(32));
        let (fx, fy) = (
            sx.rem_euclid(32) as f64 / 32.0,
            sy.rem_euclid(32) as f64 / 32.0,
        );
        let mut out = [0u8; 3];
        for (ch, o) in out.iter_mut().enumerate() {
            let v = (1.0 - fy) * ((1.0 - fx) * sample(x0, y0, ch) + fx * sample(x0 + 1, y0, ch))
                + fy * ((1.0 - fx) * sample(x0, y0 + 1, ch) + fx * sample(x0 + 1, y0 + 1, ch));
            *o = v.round().clamp(0.0, 255.0) as u8;
        }
        Rgb(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn rounding_halves_away_from_zero_as_round_does() {
        for t in [
            0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.4999999999999996,
            -2.4999999999999996,
            0.49999999999999994,
            -0.49999999999999994,
            1e15 + 0.5,
            -3.75,
            7.25,
            12345.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            -1e300,
        ] {
            assert_eq!(round_half_away(t), t.round() as i64, "{t}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..100_000 {
            let t: f64 = rng.gen_range(-40_000.0..40_000.0);
            assert_eq!(round_half_away(t), t.round() as i64, "{t}");
        }
    }

    #[test]
    fn warp_affine_equals_its_definition_to_the_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let img = RgbImage::from_fn(37, 29, |_, _| Rgb(rng.gen()));
        for m in [
            [[1.0, 0.3, 0.0], [0.0, 1.0, 0.0]],
            [[1.0, 0.0, 0.0], [-0.27, 1.0, 0.0]],
            [[1.0, 0.0, -4.5], [0.0, 1.0, 0.0]],
            [[1.0, 0.0, 0.0], [0.0, 1.0, 7.25]],
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ] {
            assert_eq!(
                warp_affine(&img, m, FILL),
                warp_affine_by_definition(&img, m, FILL),
                "{m:?}"
            );
        }
        for degrees in [-30.0, -12.5, 3.0, 29.9] {
            assert_eq!(
                rotate(&img, degrees, [1, 2, 3]),
                warp_affine_by_definition(&img, rotation(&img, degrees), [1, 2, 3]),
                "{degrees}°"
            );
        }
    }

    /// A grey image from rows of values.
    fn grey(rows: &[&[u8]]) -> RgbImage {
        RgbImage::from_fn(rows[0].len() as u32, rows.len() as u32, |x, y| {
            let v = rows[y as usize][x as usize];
            Rgb([v, v, v])
        })
    }

    fn rows(img: &RgbImage, ch: usize) -> Vec<Vec<u8>> {
        (0..img.height())
            .map(|y| (0..img.width()).map(|x| img.get_pixel(x, y)[ch]).collect())
            .collect()
    }

    /// 4×4, value 16·x + 64·y.
    fn ramp() -> RgbImage {
        RgbImage::from_fn(4, 4, |x, y| {
            let v = (16 * x + 64 * y) as u8;
            Rgb([v, v, v])
        })
    }

    #[test]
    fn autocontrast_stretches_each_channel() {
        // R spans 50..200: scale 255/150 = 1.7, offset −85: 50 → 0, 125 → 127.5 → 127, 200 → 255.
        // G is constant (left alone); B spans 0..85: scale 3, 40 → 120.
        let mut img = RgbImage::from_fn(3, 1, |x, _| {
            Rgb([[50, 125, 200][x as usize], 77, [0, 40, 85][x as usize]])
        });
        autocontrast(&mut img);
        assert_eq!(rows(&img, 0), vec![vec![0, 127, 255]]);
        assert_eq!(rows(&img, 1), vec![vec![77, 77, 77]]);
        assert_eq!(rows(&img, 2), vec![vec![0, 120, 255]]);
    }

    #[test]
    fn equalize_on_a_known_histogram() {
        // 32×32 = 1024 pixels, 256 each of 50, 100, 150, 200. step = (1024 − 256) / 255 = 3;
        // lut(v) = (1 + pixels below v) / 3: 50 → 0, 100 → 257/3 = 85, 150 → 513/3 = 171,
        // 200 → 769/3 = 256 → 255.
        let mut img = RgbImage::from_fn(32, 32, |_, y| {
            let v = [50, 100, 150, 200][(y / 8) as usize];
            Rgb([v, v, v])
        });
        equalize(&mut img);
        for (y, want) in [(0, 0), (8, 85), (16, 171), (31, 255)] {
            assert_eq!(img.get_pixel(5, y).0, [want; 3], "row {y}");
        }
        // Too few pixels for a step: unchanged.
        let mut small = ramp();
        equalize(&mut small);
        assert_eq!(small, ramp());
    }

    #[test]
    fn brightness_and_sharpness() {
        let mut img = grey(&[&[0, 100, 200, 255]]);
        brightness(&mut img, 1.5);
        assert_eq!(rows(&img, 0), vec![vec![0, 150, 255, 255]]);
        brightness(&mut img, 0.5);
        assert_eq!(rows(&img, 0), vec![vec![0, 75, 127, 127]]);

        // 3×3 with a bright centre: smoothing gives round(5·130/13) = 50 at the centre;
        // factor 2: 50 + 2·(130 − 50) = 210; the border is kept.
        let spot = grey(&[&[0, 0, 0], &[0, 130, 0], &[0, 0, 0]]);
        let mut s = spot.clone();
        sharpness(&mut s, 2.0);
        assert_eq!(
            rows(&s, 0),
            vec![vec![0, 0, 0], vec![0, 210, 0], vec![0, 0, 0]]
        );
        let mut s = spot.clone();
        sharpness(&mut s, 1.0);
        assert_eq!(s, spot);
        // Factor 0: the smoothed image; corner (0,0) reflects to see the centre 4 times:
        // round(4·130/13) = 40; edge (1,0) sees it twice (its reflected row): round(2·130/13) = 20.
        let mut s = spot.clone();
        sharpness(&mut s, 0.0);
        assert_eq!(
            rows(&s, 0),
            vec![vec![40, 20, 40], vec![20, 50, 20], vec![40, 20, 40]]
        );
    }

    #[test]
    fn shear_x_of_a_4x4_image() {
        // dst(x, y) = src(x − 0.5·y, y), fill 128.
        // y = 1: x − 0.5 → (128+64)/2 = 96, (64+80)/2 = 72, 88, 104
        // y = 2: x − 1 → 128, 128, 144, 160
        // y = 3: x − 1.5 → 128, (128+192)/2 = 160, 200, 216
        let out = warp_affine(&ramp(), [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]], FILL);
        assert_eq!(
            rows(&out, 1),
            vec![
                vec![0, 16, 32, 48],
                vec![96, 72, 88, 104],
                vec![128, 128, 144, 160],
                vec![128, 160, 200, 216],
            ]
        );
        // ShearY is ShearX of the transpose.
        let mut t = ramp();
        apply_op(&mut t, AugOp::ShearY, 0.5);
        let tr = RgbImage::from_fn(4, 4, |x, y| *ramp().get_pixel(y, x));
        let sheared = warp_affine(&tr, [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]], FILL);
        assert_eq!(t, RgbImage::from_fn(4, 4, |x, y| *sheared.get_pixel(y, x)));
    }

    #[test]
    fn translate_and_rotate() {
        // TranslateX by +1: the content moves left one pixel, the last column is filled.
        let mut img = ramp();
        apply_op(&mut img, AugOp::TranslateX, 1.0);
        assert_eq!(rows(&img, 0)[2], vec![144, 160, 176, 128]);
        // TranslateY by −1: down one row.
        let mut img = ramp();
        apply_op(&mut img, AugOp::TranslateY, -1.0);
        assert_eq!(rows(&img, 0)[0], vec![128; 4]);
        assert_eq!(rows(&img, 0)[1], vec![0, 16, 32, 48]);
        // Rotate 90° about (W/2, H/2) = (2, 2): dst(x, y) = src(4 − y, x); row 0 samples column 4
        // (outside: fill), row 1 is the right column read downwards (counter-clockwise turn).
        let out = rotate(&ramp(), 90.0, FILL);
        assert_eq!(rows(&out, 0)[0], vec![128; 4]);
        assert_eq!(rows(&out, 0)[1], vec![48, 112, 176, 240]);
        assert_eq!(rows(&out, 0)[3], vec![16, 80, 144, 208]);
    }

    #[test]
    fn solarize_and_posterize() {
        let mut img = grey(&[&[0, 127, 128, 200, 255]]);
        solarize(&mut img, 128);
        assert_eq!(rows(&img, 0), vec![vec![0, 127, 127, 55, 0]]);
        let mut img = grey(&[&[0, 127, 128, 200, 255]]);
        solarize(&mut img, 256);
        assert_eq!(rows(&img, 0), vec![vec![0, 127, 128, 200, 255]]);
        // 2 bits keep 0b1100_0000; 0 bits wrap the mask to 0, as NumPy 1.x does.
        let mut img = grey(&[&[0x3f, 0x40, 0xbf, 0xff]]);
        posterize(&mut img, 2);
        assert_eq!(rows(&img, 0), vec![vec![0x00, 0x40, 0x80, 0xc0]]);
        posterize(&mut img, 0);
        assert_eq!(rows(&img, 0), vec![vec![0; 4]]);
        // Magnitude 5 (RAM's): threshold 128, 2 bits; magnitude 10: 256 (no change), 4 bits.
        for (m, threshold, bits) in [(5.0, 128.0, 2.0), (10.0, 256.0, 4.0), (2.0, 51.0, 0.0)] {
            let ra = RandomAugment {
                prob: 1.0,
                magnitude: m,
                ..RandomAugment::ram()
            };
            let args = |op| {
                let one = RandomAugment {
                    ops: [op; AugOp::ALL.len()],
                    len: 1,
                    n: 1,
                    ..ra
                };
                one.draw(&mut ChaCha8Rng::seed_from_u64(0))[0].1
            };
            assert_eq!(args(AugOp::Solarize), threshold, "M = {m}");
            assert_eq!(args(AugOp::Posterize), bits, "M = {m}");
        }
    }

    #[test]
    fn color_and_contrast() {
        // Color at factor 0: every channel becomes 0.114·R + 0.587·G + 0.299·B (BLIP's weights
        // in BGR order, applied to RGB): (100, 50, 200) → 11.4 + 29.35 + 59.8 = 100.55 → 100.
        // Factor 1 leaves pixels as they are; factor 2 doubles the distance from that grey:
        // R 2·100 − 100.55 = 99.45 → 99, G −0.55 → 0, B 299.45 → 255.
        let px = RgbImage::from_pixel(1, 1, Rgb([100, 50, 200]));
        let mut img = px.clone();
        color(&mut img, 0.0);
        assert_eq!(img.get_pixel(0, 0).0, [100; 3]);
        let mut img = px.clone();
        color(&mut img, 1.0);
        assert_eq!(img, px);
        let mut img = px.clone();
        color(&mut img, 2.0);
        assert_eq!(img.get_pixel(0, 0).0, [99, 0, 255]);
        // Contrast: the image's mean grey is 0.114·60 + 0.587·100 + 0.299·140 = 107.4 (channel
        // means 60, 100, 140); factor 0.5: 20 → 63.7 → 63, 100 → 103.7 → 103, 180 → 143.7 → 143.
        let two = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([20, 100, 180])
            } else {
                Rgb([100, 100, 100])
            }
        });
        let mut img = two.clone();
        contrast(&mut img, 0.5);
        assert_eq!(img.get_pixel(0, 0).0, [63, 103, 143]);
        assert_eq!(img.get_pixel(1, 0).0, [103; 3]);
        // Factor 2 pushes away from it: 20 → −67.4 → 0, 180 → 252.6 → 252, 200 → 255.
        let mut img = two;
        contrast(&mut img, 2.0);
        assert_eq!(img.get_pixel(0, 0).0, [0, 92, 252]);
    }

    #[test]
    fn ram_magnitudes_and_determinism() {
        let ra = RandomAugment::ram();
        assert_eq!(ra.ops(), &AugOp::RAM);
        let img = RgbImage::from_fn(24, 20, |x, y| Rgb([(x * 9) as u8, (y * 11) as u8, 60]));
        let mut seen = std::collections::HashMap::new();
        let mut unchanged = 0;
        for seed in 0..400 {
            let (mut a, mut b) = (img.clone(), img.clone());
            let ops_a = ra.apply(&mut a, &mut ChaCha8Rng::seed_from_u64(seed));
            let ops_b = ra.apply(&mut b, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!((&a, &ops_a), (&b, &ops_b), "seed {seed}");
            assert!(ops_a.len() <= 2);
            unchanged += usize::from(ops_a.is_empty());
            for (op, arg) in ops_a {
                seen.insert(format!("{op:?}"), arg.abs());
            }
        }
        // Each of the 2 drawn ops is kept with p = 0.5: no op at all in about a quarter of images.
        assert!((60..140).contains(&unchanged), "{unchanged}");
        // M = 5: shear 0.15, translate 5 px, rotate 15°, enhance factor 1.0.
        assert_eq!(seen.len(), 10, "{seen:?}");
        assert!((seen["ShearX"] - 0.15).abs() < 1e-12);
        assert_eq!(seen["TranslateY"], 5.0);
        assert_eq!(seen["Rotate"], 15.0);
        assert_eq!(seen["Brightness"], 1.0);
    }
}
