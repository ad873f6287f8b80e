//! Pillow's resize of an 8-bit RGB image (`Image.resize` with `BILINEAR` or `BICUBIC`,
//! `src/libImaging/Resample.c`), restated so that tagfix's pixels are the Python pipeline's:
//! torchvision's `Resize` and `RandomResizedCrop` call it on PIL images (RAM's `get_transform` and
//! `transform_train`, CLIP's preprocessing). The same arithmetic: antialiased support (the filter
//! widens with the reduction factor), weights normalised per output pixel and rounded to 22-bit fixed
//! point, 32-bit integer sums, each pass rounded to 8 bits, the passes in Pillow's order (a
//! horizontal pass first reads only the rows the vertical pass needs).
//!
//! It is also the loader's fastest resize: precomputed integer weights over flat rows, the vertical
//! pass a row of multiply-adds per tap, where `image::imageops::resize` works in generic f32 pixels.

use image::RgbImage;

/// Pillow's resampling filters that RAM and CLIP use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.BILINEAR` (RAM's inference `Resize`, torchvision's default).
    Bilinear,
    /// `Image.BICUBIC` (RAM's `RandomResizedCrop`, CLIP's `Resize`): Keys' cubic with a = −0.5.
    Bicubic,
}

impl PilFilter {
    /// The filter's support at scale 1 (`struct filter`'s `support`).
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    /// The filter at `x` (`bilinear_filter`, `bicubic_filter`; same operations in the same order).
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            PilFilter::Bilinear if x < 1.0 => 1.0 - x,
            PilFilter::Bicubic if x < 1.0 => ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1.0,
            PilFilter::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5,
            _ => 0.0,
        }
    }
}

/// Fixed-point precision of the 8-bit passes (`PRECISION_BITS`): 8 bits for the result, two for
/// the overshoot of negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One half in fixed point: every sum starts from it, so the shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A sum back to 8 bits (`clip8`).
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The weights of one axis (`precompute_coeffs` + `normalize_coeffs_8bpc`): for each output pixel
/// the first input pixel it reads and its fixed-point weights, `taps` of them at most.
#[derive(Debug)]
struct Axis {
    first: Vec<usize>,
    count: Vec<usize>,
    /// `out_size × taps`, row-major; unused trailing weights are zero.
    weights: Vec<i32>,
    taps: usize,
}

impl Axis {
    fn new(in_size: u32, out_size: u32, filter: PilFilter) -> Self {
        // Pillow computes the box's extent in f32 and the rest in double.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let taps = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut axis = Axis {
            first: Vec::with_capacity(out_size as usize),
            count: Vec::with_capacity(out_size as usize),
            weights: vec![0; out_size as usize * taps],
            taps,
        };
        let mut w = Vec::with_capacity(taps);
        for xx in 0..out_size as usize {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            w.clear();
            w.extend((xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) * ss)));
            let total: f64 = w.iter().sum();
            let row = &mut axis.weights[xx * taps..][..w.len()];
            for (fixed, &v) in row.iter_mut().zip(&w) {
                let v = if total != 0.0 { v / total } else { v };
                let f = v * f64::from(1u32 << PRECISION_BITS);
                *fixed = if f < 0.0 {
                    (-0.5 + f) as i32
                } else {
                    (0.5 + f) as i32
                };
            }
            axis.first.push(xmin as usize);
            axis.count.push(w.len());
        }
        axis
    }

    fn weights(&self, out: usize) -> &[i32] {
        &self.weights[out * self.taps..][..self.count[out]]
    }

    /// The input pixels the axis reads: from the first output's first to the last output's last.
    fn span(&self) -> (usize, usize) {
        match (self.first.first(), self.first.len().checked_sub(1)) {
            (Some(&start), Some(last)) => (start, self.first[last] + self.count[last]),
            _ => (0, 0),
        }
    }
}

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

impl Region {
    /// The whole of `img`.
    pub fn of(img: &RgbImage) -> Self {
        Region {
            left: 0,
            top: 0,
            width: img.width(),
            height: img.height(),
        }
    }

    /// Whether the region has pixels and all of them lie inside a `width` × `height` image.
    pub fn lies_within(&self, width: u32, height: u32) -> bool {
        let fits = |start: u32, len: u32, side: u32| {
            len > 0 && start.checked_add(len).is_some_and(|end| end <= side)
        };
        fits(self.left, self.width, width) && fits(self.top, self.height, height)
    }
}

/// `img.resize((w, h), filter)` as Pillow computes it.
pub fn pil_resize(img: &RgbImage, w: u32, h: u32, filter: PilFilter) -> RgbImage {
    pil_resize_region(img, Region::of(img), w, h, filter)
}

/// `img.crop(region).resize((w, h), filter)` as Pillow computes it (torchvision's `resized_crop`),
/// reading the region in place. The region must lie inside the image.
pub fn pil_resize_region(
    img: &RgbImage,
    region: Region,
    w: u32,
    h: u32,
    filter: PilFilter,
) -> RgbImage {
    assert!(
        region.left + region.width <= img.width() && region.top + region.height <= img.height(),
        "resize region {region:?} outside the {}×{} image",
        img.width(),
        img.height()
    );
    let stride = img.width() as usize * 3;
    let source = Rows {
        bytes: img.as_raw(),
        start: region.top as usize * stride + region.left as usize * 3,
        stride,
        width: region.width as usize * 3,
        first: 0,
    };
    let (need_horizontal, need_vertical) = (region.width != w, region.height != h);
    // Built only where the width changes.
    let horizontal = || Axis::new(region.width, w, filter);
    let vertical = Axis::new(region.height, h, filter);
    let bytes = if vertical_first(region, w, h) {
        let tall = vertical_pass(&vertical, &source);
        let rows = Rows::packed(&tall, region.width as usize * 3);
        if need_horizontal {
            horizontal_pass(&horizontal(), &rows, 0..h as usize)
        } else {
            tall
        }
    } else {
        match (need_horizontal, need_vertical) {
            (false, false) => (0..h as usize)
                .flat_map(|y| source.row(y))
                .copied()
                .collect(),
            (false, true) => vertical_pass(&vertical, &source),
            (true, false) => horizontal_pass(&horizontal(), &source, 0..h as usize),
            (true, true) => {
                // Only the rows the vertical pass reads.
                let (from, to) = vertical.span();
                let narrowed = horizontal_pass(&horizontal(), &source, from..to);
                let rows = Rows {
                    first: from,
                    ..Rows::packed(&narrowed, w as usize * 3)
                };
                vertical_pass(&vertical, &rows)
            }
        }
    };
    RgbImage::from_raw(w, h, bytes).expect("w × h × 3 bytes")
}

/// Pillow's pass order (`ImagingResampleInner` of Pillow 13.0; older releases always ran the
/// horizontal pass first): horizontal first, unless the height shrinks by more than twice what the
/// width shrinks. Each pass rounds to 8 bits, so the order shows in the last bit of some pixels.
fn vertical_first(region: Region, w: u32, h: u32) -> bool {
    let shrink_y = i64::from(region.height) - i64::from(h);
    let shrink_x = i64::from(region.width) - i64::from(w);
    shrink_y > 0 && shrink_y > shrink_x * 2
}

/// Rows of `width` bytes, `stride` apart from `start`, where the region's row `first` begins.
struct Rows<'a> {
    bytes: &'a [u8],
    start: usize,
    stride: usize,
    width: usize,
    first: usize,
}

impl<'a> Rows<'a> {
    /// Rows stored one after the other, the first being the region's first.
    fn packed(bytes: &'a [u8], width: usize) -> Self {
        Rows {
            bytes,
            start: 0,
            stride: width,
            width,
            first: 0,
        }
    }

    /// Row `y` of the region (counted from its top).
    fn row(&self, y: usize) -> &'a [u8] {
        &self.bytes[self.start + (y - self.first) * self.stride..][..self.width]
    }
}

/// The horizontal pass (`ImagingResampleHorizontal_8bpc`) over rows `ys`, packed.
fn horizontal_pass(axis: &Axis, rows: &Rows, ys: std::ops::Range<usize>) -> Vec<u8> {
    let out_w = axis.first.len();
    let mut out = Vec::with_capacity(ys.len() * out_w * 3);
    for y in ys {
        let line = rows.row(y);
        for xx in 0..out_w {
            let taps = &line[axis.first[xx] * 3..];
            let mut sums = [HALF; 3];
            for (px, &k) in taps.chunks_exact(3).zip(axis.weights(xx)) {
                sums[0] += i32::from(px[0]) * k;
                sums[1] += i32::from(px[1]) * k;
                sums[2] += i32::from(px[2]) * k;
            }
            out.extend(sums.map(clip8));
        }
    }
    out
}

/// The vertical pass (`ImagingResampleVertical_8bpc`), packed: each output row the weighted sum
/// of its input rows, a row of multiply-adds per tap (integer sums, so the order is immaterial).
fn vertical_pass(axis: &Axis, rows: &Rows) -> Vec<u8> {
    let mut out = Vec::with_capacity(axis.first.len() * rows.width);
    let mut sums = vec![0i32; rows.width];
    for yy in 0..axis.first.len() {
        sums.fill(HALF);
        for (t, &k) in axis.weights(yy).iter().enumerate() {
            for (s, &v) in sums.iter_mut().zip(rows.row(axis.first[yy] + t)) {
                *s += i32::from(v) * k;
            }
        }
        out.extend(sums.iter().map(|&s| clip8(s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = |c: u32| ((x * 37 + y * 101 + c * 53 + (x * y) % 17) % 256) as u8;
            image::Rgb([v(0), v(1), v(2)])
        })
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_widen_when_reducing() {
        for filter in [PilFilter::Bilinear, PilFilter::Bicubic] {
            for (n, m) in [(640, 224), (224, 224), (100, 384), (7, 3)] {
                let a = Axis::new(n, m, filter);
                for o in 0..m as usize {
                    let s: i64 = a.weights(o).iter().map(|&k| i64::from(k)).sum();
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= a.count[o] as i64,
                        "{s}"
                    );
                    assert!(a.first[o] + a.count[o] <= n as usize);
                }
            }
        }
        // 640 → 224 widens the bicubic support to 2 × 640/224 ≈ 5.7 input pixels per side.
        assert_eq!(Axis::new(640, 224, PilFilter::Bicubic).taps, 13);
        assert_eq!(Axis::new(224, 448, PilFilter::Bicubic).taps, 5);
    }

    #[test]
    fn pil_resize_rounds_each_pass_to_eight_bits() {
        // 3×1 → 2×1 (scale 1.5, support 1.5): output 0 (centre 0.75) takes x = 0, 1 (xmax =
        // int(2.75) = 2) with weights 1 − |x + 0.5 − 0.75|/1.5 = 5/6, 1/2, normalised 0.625, 0.375:
        // 0.625·10 + 0.375·20 = 13.75, + 0.5 truncated -> 14. Output 1 (centre 2.25) takes x = 1, 2
        // with 0.375, 0.625: 7.5 + 25 = 32.5 -> 33 (the half rounds up).
        let img = RgbImage::from_fn(3, 1, |x, _| {
            let v = [10u8, 20, 40][x as usize];
            image::Rgb([v, v, v])
        });
        let out = pil_resize(&img, 2, 1, PilFilter::Bilinear);
        assert_eq!(out.get_pixel(0, 0)[0], 14);
        assert_eq!(out.get_pixel(1, 0)[0], 33);
        // Same size: unchanged.
        assert_eq!(pil_resize(&img, 3, 1, PilFilter::Bilinear), img);
    }

    #[test]
    fn sizes_that_stay_pass_the_pixels_through() {
        let img = pattern(9, 6);
        for filter in [PilFilter::Bilinear, PilFilter::Bicubic] {
            assert_eq!(pil_resize(&img, 9, 6, filter), img);
        }
        // One axis changes: the other's pixels are read as they are.
        let r = pil_resize(&img, 9, 3, PilFilter::Bilinear);
        assert_eq!(r.dimensions(), (9, 3));
    }

    #[test]
    fn bilinear_halving_averages_pairs_and_bicubic_overshoots_edges() {
        // 2 → 1 bilinear: support 2, weights ½ and ½ (PIL's antialiased reduction).
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 10 } else { 21 }; 3]));
        assert_eq!(
            pil_resize(&img, 1, 1, PilFilter::Bilinear)
                .get_pixel(0, 0)
                .0,
            [16; 3]
        );
        // A step edge upscaled bicubic rings past both levels, clipped to 0..=255.
        let step = RgbImage::from_fn(4, 1, |x, _| image::Rgb([if x < 2 { 0 } else { 255 }; 3]));
        let up = pil_resize(&step, 16, 1, PilFilter::Bicubic);
        let values: Vec<u8> = up.pixels().map(|p| p[0]).collect();
        assert_eq!((values[0], values[15]), (0, 255));
        assert!(values.windows(2).all(|v| v[0] <= v[1]), "{values:?}");
    }

    #[test]
    fn the_vertical_pass_goes_first_where_pillow_runs_it_first() {
        // Pillow 13.0's choice for each shape (probed with Image.resize on noise: the result equals
        // the vertical-then-horizontal resize, not the horizontal-then-vertical one, exactly here).
        let whole = |width, height| Region {
            left: 0,
            top: 0,
            width,
            height,
        };
        for ((w, h), (to_w, to_h), first) in [
            ((428, 640), (224, 224), true),
            ((300, 400), (224, 224), true),
            ((480, 640), (300, 224), true),
            ((640, 428), (224, 224), false),
            ((200, 300), (64, 64), false),
            ((500, 501), (224, 224), false),
            ((100, 150), (224, 224), false),
            ((224, 600), (224, 224), true),
        ] {
            assert_eq!(vertical_first(whole(w, h), to_w, to_h), first, "{w}×{h}");
        }
    }

    #[test]
    fn a_region_resizes_as_its_crop() {
        let img = pattern(50, 40);
        let region = Region {
            left: 7,
            top: 5,
            width: 30,
            height: 21,
        };
        let crop = image::imageops::crop_imm(&img, 7, 5, 30, 21).to_image();
        for filter in [PilFilter::Bilinear, PilFilter::Bicubic] {
            for (w, h) in [(16, 16), (30, 9), (11, 21), (64, 48), (29, 5)] {
                assert_eq!(
                    pil_resize_region(&img, region, w, h, filter),
                    pil_resize(&crop, w, h, filter),
                    "{filter:?} {w}×{h}"
                );
            }
        }
    }
}
