//! Image decoding and the pixel transforms shared by training augmentation and the CLIP teacher
//! (feature `embed`; `train` includes it): decode JPEG/PNG to RGB8, crop + bicubic resize + flip to
//! a square view, normalise to CHW floats, and CLIP's evaluation transform (shortest side, centre
//! crop) as torchvision computes its geometry.

use crate::error::{Error, Result};
use crate::teacher::descriptor::{ImageInput, Resize};
use image::RgbImage;
use std::path::{Path, PathBuf};

pub mod files;
pub mod jpeg;
pub mod resample;
pub use resample::{pil_resize, pil_resize_region, PilFilter, Region};

/// Why an image cannot be used. Unreadable images are listed one line each (`tag --keep-going`,
/// the image checks before training), so the decoder's reason is part of the message, like
/// [`Error::Io`]'s, rather than a source.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot decode image: {cause}")]
    Decode { path: PathBuf, cause: DecoderError },

    #[error("{path}: unreadable image: {cause}")]
    Header { path: PathBuf, cause: DecoderError },

    #[error("{path}: JPEG file larger than tagfix decodes ({limit} bytes)")]
    FileTooLarge { path: PathBuf, limit: u64 },

    #[error("{path}: the crop {view:?} lies outside the {width}×{height} image")]
    ViewOutside {
        path: PathBuf,
        view: View,
        width: u32,
        height: u32,
    },

    #[error("{path}: no such image file or folder")]
    NoSuchImage { path: PathBuf },

    #[error("{path}:{line}: not a path: the line is not UTF-8")]
    ListLine { path: PathBuf, line: usize },

    #[error("{path}: image has zero size")]
    ZeroSize { path: PathBuf },

    #[error(
        "{path}: image claims {width}×{height} pixels, more than tagfix decodes ({} MP): resize it",
        MAX_PIXELS / 1_000_000
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
}

/// The decoder that refused a file: libjpeg-turbo for JPEG, the `image` crate for the rest.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error(transparent)]
    Jpeg(#[from] jpeg::JpegError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

impl ImageError {
    fn header(path: &Path, cause: impl Into<DecoderError>) -> Self {
        ImageError::Header {
            path: path.into(),
            cause: cause.into(),
        }
    }

    fn decode(path: &Path, cause: impl Into<DecoderError>) -> Self {
        ImageError::Decode {
            path: path.into(),
            cause: cause.into(),
        }
    }
}

/// The largest JPEG file decoded (1 GiB): JPEG files are read whole, and one of [`MAX_PIXELS`]
/// pixels at the highest quality is a few hundred MB.
pub const MAX_JPEG_BYTES: u64 = 1 << 30;

/// The most pixels an image may have (100 MP: 300 MB as RGB8). A header is only a claim: one
/// saying 100000×100000 is refused before anything is allocated for it.
pub const MAX_PIXELS: u64 = 100_000_000;

/// Decodes a JPEG or PNG file to RGB8: JPEG by libjpeg-turbo, as Pillow decodes it ([`jpeg`]),
/// PNG by the `image` crate. The file is opened once; the size is checked on its header before
/// the pixel buffer exists, and the PNG decoder may allocate no more than the largest allowed
/// image needs (16-bit RGBA).
pub fn decode(path: &Path) -> Result<RgbImage> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    match sniff(&mut file, path, MAX_JPEG_BYTES)? {
        Sniffed::Jpeg(data) => {
            let header = jpeg::Jpeg::open(&data).map_err(|e| ImageError::header(path, e))?;
            check_size(path, header.width, header.height)?;
            Ok(header
                .decode_rgb()
                .map_err(|e| ImageError::decode(path, e))?)
        }
        Sniffed::Other(magic) => decode_other(file, &magic, path),
    }
}

/// An image file read and its size checked but, for a JPEG, not yet decoded: a crop can be drawn
/// from its size and then decoded alone ([`Opened::view`]). Other formats are decoded whole.
pub struct Opened {
    path: PathBuf,
    content: Content,
}

enum Content {
    /// The file's bytes, its header read once already.
    Jpeg {
        data: Vec<u8>,
        width: u32,
        height: u32,
    },
    Decoded(RgbImage),
}

/// Reads an image file for [`Opened::view`]: a JPEG's header only, any other image whole. Refuses
/// what [`decode`] refuses before decoding (the file's format, its size).
pub fn open(path: &Path) -> Result<Opened> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = match sniff(&mut file, path, MAX_JPEG_BYTES)? {
        Sniffed::Jpeg(data) => {
            let header = jpeg::Jpeg::open(&data).map_err(|e| ImageError::header(path, e))?;
            let (width, height) = (header.width, header.height);
            check_size(path, width, height)?;
            Content::Jpeg {
                data,
                width,
                height,
            }
        }
        Sniffed::Other(magic) => Content::Decoded(decode_other(file, &magic, path)?),
    };
    Ok(Opened {
        path: path.into(),
        content,
    })
}

impl Opened {
    /// Width and height in pixels.
    pub fn dimensions(&self) -> (u32, u32) {
        match &self.content {
            Content::Jpeg { width, height, .. } => (*width, *height),
            Content::Decoded(img) => img.dimensions(),
        }
    }

    /// The pixels `view` needs, with the view moved onto them: for a JPEG only the rows and about
    /// the columns of its rectangle are decoded ([`jpeg::Jpeg::decode_region`]: the same pixels
    /// and verdicts as decoding it whole, for less work: the rows outside are only
    /// entropy-decoded), so that `view_image(&pixels, &moved, size)` is
    /// `view_image(&decode(path)?, view, size)`. A view outside the image is an error.
    pub fn view(self, view: &View) -> Result<(RgbImage, View)> {
        let (width, height) = self.dimensions();
        let region = view.region();
        if !region.lies_within(width, height) {
            return Err(ImageError::ViewOutside {
                path: self.path,
                view: *view,
                width,
                height,
            }
            .into());
        }
        match self.content {
            Content::Jpeg { data, .. } => {
                let decoded = jpeg::Jpeg::open(&data)
                    .and_then(|j| j.decode_region(region))
                    .map_err(|e| ImageError::decode(&self.path, e))?;
                let moved = View {
                    left: view.left - decoded.left,
                    top: 0,
                    ..*view
                };
                Ok((decoded.image, moved))
            }
            Content::Decoded(img) => Ok((img, *view)),
        }
    }
}

/// What the start of a file says it is.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// A JPEG file, read whole.
    Jpeg(Vec<u8>),
    /// Anything else: its first bytes (up to 8), the rest unread.
    Other(Vec<u8>),
}

/// The PNG signature.
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Reads a file's first bytes and, when they are a JPEG's, the whole file. A JPEG file of more
/// than `limit` bytes is refused before it is read into memory.
fn sniff(file: &mut std::fs::File, path: &Path, limit: u64) -> Result<Sniffed> {
    let mut data = Vec::new();
    read_up_to(file, &mut data, PNG_MAGIC.len() as u64, path)?;
    if !jpeg::is_jpeg(&data) {
        return Ok(Sniffed::Other(data));
    }
    read_whole_jpeg(file, &mut data, path, limit)?;
    Ok(Sniffed::Jpeg(data))
}

/// Appends `file`'s next bytes to `data` until it holds `upto` bytes or the file ends; true
/// where the file ended first.
fn read_up_to(
    file: &mut std::fs::File,
    data: &mut Vec<u8>,
    upto: u64,
    path: &Path,
) -> Result<bool> {
    use std::io::Read;
    let want = upto.saturating_sub(data.len() as u64);
    let read = file
        .by_ref()
        .take(want)
        .read_to_end(data)
        .map_err(|e| Error::io(path, e))?;
    Ok((read as u64) < want)
}

/// Reads the rest of a JPEG file into `data`, refusing one of more than `limit` bytes.
fn read_whole_jpeg(
    file: &mut std::fs::File,
    data: &mut Vec<u8>,
    path: &Path,
    limit: u64,
) -> Result<()> {
    read_up_to(file, data, limit + 1, path)?;
    if data.len() as u64 > limit {
        return Err(ImageError::FileTooLarge {
            path: path.into(),
            limit,
        }
        .into());
    }
    Ok(())
}

/// The rest of a file whose first bytes were read: those bytes, then the file.
type Rest<'a> = std::io::Chain<&'a [u8], std::io::BufReader<std::fs::File>>;

/// A file that is not a JPEG, its first bytes `magic` already read from `file`, as a PNG decoder
/// with its header read and its size checked; any other format is an error naming what the
/// `image` crate guesses it is (tagfix reads JPEG and PNG only). [`decode`] and [`probe`] both
/// come here, so they agree on every such file.
fn png_header<'a>(
    file: std::fs::File,
    magic: &'a [u8],
    path: &Path,
) -> Result<image::codecs::png::PngDecoder<Rest<'a>>> {
    use image::codecs::png::PngDecoder;
    use image::error::{ImageFormatHint, UnsupportedError, UnsupportedErrorKind};
    use image::ImageDecoder;
    if magic != PNG_MAGIC {
        let hint =
            image::guess_format(magic).map_or(ImageFormatHint::Unknown, ImageFormatHint::Exact);
        let unsupported = UnsupportedError::from_format_and_kind(
            hint.clone(),
            UnsupportedErrorKind::Format(hint),
        );
        return Err(ImageError::header(path, image::ImageError::Unsupported(unsupported)).into());
    }
    let mut limits = image::io::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    let rest = std::io::BufReader::new(file);
    let png = PngDecoder::with_limits(std::io::Read::chain(magic, rest), limits)
        .map_err(|e| ImageError::header(path, e))?;
    let (w, h) = png.dimensions();
    check_size(path, w, h)?;
    Ok(png)
}

/// Decodes a file that is not a JPEG ([`png_header`]).
fn decode_other(file: std::fs::File, magic: &[u8], path: &Path) -> Result<RgbImage> {
    let png = png_header(file, magic, path)?;
    let img = image::DynamicImage::from_decoder(png).map_err(|e| ImageError::decode(path, e))?;
    Ok(pillow_rgb(img))
}

/// What `Image.open(p).convert("RGB")` gives for a decoded PNG. 8-bit images as the `image`
/// crate converts them (alpha dropped, gray and palettes expanded: Pillow's values). Pillow reads
/// 16-bit RGB, RGBA and gray+alpha PNGs as 8-bit by keeping each value's high byte, where the
/// `image` crate rounds, and converts 16-bit gray (`I;16`) by clipping at 255, not scaling.
fn pillow_rgb(img: image::DynamicImage) -> RgbImage {
    use image::{DynamicImage, Rgb};
    let high = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageLuma16(g) => RgbImage::from_fn(g.width(), g.height(), |x, y| {
            Rgb([g.get_pixel(x, y)[0].min(255) as u8; 3])
        }),
        DynamicImage::ImageLumaA16(g) => RgbImage::from_fn(g.width(), g.height(), |x, y| {
            Rgb([high(g.get_pixel(x, y)[0]); 3])
        }),
        DynamicImage::ImageRgb16(c) => RgbImage::from_fn(c.width(), c.height(), |x, y| {
            Rgb(c.get_pixel(x, y).0.map(high))
        }),
        DynamicImage::ImageRgba16(c) => RgbImage::from_fn(c.width(), c.height(), |x, y| {
            let [r, g, b, _] = c.get_pixel(x, y).0;
            Rgb([high(r), high(g), high(b)])
        }),
        other => other.to_rgb8(),
    }
}

/// Not zero, at most [`MAX_PIXELS`].
fn check_size(path: &Path, w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(ImageError::ZeroSize { path: path.into() }.into());
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(ImageError::TooLarge {
            path: path.into(),
            width: w,
            height: h,
        }
        .into());
    }
    Ok(())
}

/// How much of a JPEG file [`probe`] reads at first: the header is nearly always within it (an
/// EXIF or ICC segment holds at most 64 KiB); where it is not, the whole file is read.
const JPEG_PROBE_BYTES: u64 = 64 * 1024;

/// Reads only the header: the image exists, its format is known and its size is sane (not zero,
/// at most [`MAX_PIXELS`]). A JPEG's header is read by the parser that decodes it ([`jpeg`]), so
/// the check and the decoding agree on it.
pub fn probe(path: &Path) -> Result<(u32, u32)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut data = Vec::new();
    read_up_to(&mut file, &mut data, PNG_MAGIC.len() as u64, path)?;
    let (w, h) = if jpeg::is_jpeg(&data) {
        let ended = read_up_to(&mut file, &mut data, JPEG_PROBE_BYTES, path)?;
        let header = match jpeg::Jpeg::open(&data) {
            Err(jpeg::JpegError::Truncated(_)) if !ended => {
                read_whole_jpeg(&mut file, &mut data, path, MAX_JPEG_BYTES)?;
                jpeg::Jpeg::open(&data)
            }
            header => header,
        };
        let header = header.map_err(|e| ImageError::header(path, e))?;
        (header.width, header.height)
    } else {
        image::ImageDecoder::dimensions(&png_header(file, &data, path)?)
    };
    check_size(path, w, h)?;
    Ok((w, h))
}

/// A rectangle of the source image and whether its resized square is flipped horizontally: one draw
/// of the training augmentation's crop and flip (`train::data::Draw` adds its other operations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
    pub flip: bool,
}

impl View {
    /// The whole image, not flipped.
    pub fn full(img: &RgbImage) -> Self {
        View {
            top: 0,
            left: 0,
            height: img.height(),
            width: img.width(),
            flip: false,
        }
    }

    /// The rectangle the view crops.
    pub fn region(&self) -> Region {
        Region {
            left: self.left,
            top: self.top,
            width: self.width,
            height: self.height,
        }
    }
}

/// Moves the images of a batch buffer (`per` values each) that `keep` says to keep to its front,
/// in order, and returns how many there are: the batch that goes to the model once the images
/// that could not be read are left out.
pub fn keep_images(pixels: &mut [f32], per: usize, keep: &[bool]) -> usize {
    let mut kept = 0;
    for (k, _) in keep.iter().enumerate().filter(|(_, &keep)| keep) {
        if k != kept {
            pixels.copy_within(k * per..(k + 1) * per, kept * per);
        }
        kept += 1;
    }
    kept
}

/// RGB8 → CHW floats `(x/255 − mean)/std`.
pub fn normalize_chw(img: &RgbImage, mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer size");
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = normalize_value(px[c], mean[c], std[c]);
        }
    }
}

/// One pixel value standardised, `(x/255 − mean)/std` in f32 in this order (torchvision's
/// `ToTensor` then `Normalize`); the trainer's device normalisation performs the same f32 operations.
#[inline]
pub fn normalize_value(x: u8, mean: f32, std: f32) -> f32 {
    (f32::from(x) / 255.0 - mean) / std
}

/// Crops `view`, resizes it to `size × size` (bicubic), flips it when the view says so and writes
/// normalised CHW floats into `out` (`3·size·size` values).
pub fn render_view(
    img: &RgbImage,
    view: &View,
    size: u32,
    mean: &[f32; 3],
    std: &[f32; 3],
    out: &mut [f32],
) {
    normalize_chw(&view_image(img, view, size), mean, std, out);
}

/// The view's crop, resized to `size`×`size` with Pillow's bicubic filter (torchvision's
/// `RandomResizedCrop` on a PIL image) and flipped when the view says so.
pub fn view_image(img: &RgbImage, view: &View, size: u32) -> RgbImage {
    let mut resized = pil_resize_region(img, view.region(), size, size, PilFilter::Bicubic);
    if view.flip {
        image::imageops::flip_horizontal_in_place(&mut resized);
    }
    resized
}

/// The evaluation (un-augmented) transform of an image encoder's input: CLIP's
/// `Resize(size, bicubic)` (Pillow's, [`pil_resize`]) on the shortest side (the long side `int(size·long/short)`, as
/// torchvision) and `CenterCrop(size)` (offsets `round((side − size)/2)`, ties to even, as Python's
/// `round`), or a plain resize for `squash`; then normalisation.
pub fn eval_transform(img: &RgbImage, input: &ImageInput, out: &mut [f32]) {
    let size = input.size;
    let resized = match input.resize {
        Resize::Squash => pil_resize(img, size, size, PilFilter::Bicubic),
        Resize::ShortestSide => {
            let (w, h) = (img.width(), img.height());
            let (nw, nh) = if w <= h {
                (
                    size,
                    ((u64::from(size) * u64::from(h)) / u64::from(w)) as u32,
                )
            } else {
                (
                    ((u64::from(size) * u64::from(w)) / u64::from(h)) as u32,
                    size,
                )
            };
            let r = pil_resize(img, nw, nh, PilFilter::Bicubic);
            let top = (f64::from(nh - size) / 2.0).round_ties_even() as u32;
            let left = (f64::from(nw - size) / 2.0).round_ties_even() as u32;
            image::imageops::crop_imm(&r, left, top, size, size).to_image()
        }
    };
    normalize_chw(&resized, &input.mean, &input.std, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teacher::descriptor::{CLIP_MEAN, CLIP_STD};

    #[test]
    fn only_jpeg_files_are_read_whole_and_only_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let sniffed = |p: &Path, limit| sniff(&mut std::fs::File::open(p).unwrap(), p, limit);
        let png = file("a.jpg", b"\x89PNG\r\n\x1a\n rest");
        assert_eq!(
            sniffed(&png, 8).unwrap(),
            Sniffed::Other(PNG_MAGIC.to_vec())
        );
        let short = file("short", b"\xFF");
        assert_eq!(
            sniffed(&short, 8).unwrap(),
            Sniffed::Other(b"\xFF".to_vec())
        );
        let jpeg = file("b.png", b"\xFF\xD8\xFF\xE0 12345");
        assert!(matches!(sniffed(&jpeg, 10).unwrap(), Sniffed::Jpeg(d) if d.len() == 10));
        let e = sniffed(&jpeg, 9).unwrap_err().to_string();
        assert!(e.contains("b.png") && e.contains("larger than"), "{e}");
        assert!(sniffed(dir.path(), 9).is_err(), "a folder is an error");
    }

    #[test]
    fn a_jpeg_header_is_probed_from_the_file_start_or_whole_where_it_is_longer() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, 50]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        // Three 60 KiB application segments after SOI: the frame header starts past 180 KiB.
        let mut long = jpeg[..2].to_vec();
        for _ in 0..3 {
            long.extend([0xFF, 0xE3, 0xF0, 0x00]);
            long.extend(std::iter::repeat_n(7u8, 0xF000 - 2));
        }
        long.extend(&jpeg[2..]);
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let long_path = write("long.jpg", &long);
        assert_eq!(probe(&long_path).unwrap(), (40, 24));
        assert_eq!(decode(&long_path).unwrap().dimensions(), (40, 24));
        // Cut inside those segments: the whole file is read, and it ends in its header.
        let cut = write("cut.jpg", &long[..100_000]);
        let e = probe(&cut).unwrap_err().to_string();
        assert!(
            e.contains("cut.jpg") && e.contains("ends before the image"),
            "{e}"
        );
        // Junk between two segments is a warning for the header check as for decoding.
        let first = 4 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
        let mut junk = jpeg[..first].to_vec();
        junk.extend([0x12, 0x34]);
        junk.extend(&jpeg[first..]);
        let junk = write("junk.jpg", &junk);
        assert_eq!(probe(&junk).unwrap(), (40, 24));
        assert_eq!(decode(&junk).unwrap().dimensions(), (40, 24));
    }

    #[test]
    fn sixteen_bit_pngs_convert_as_pillow_converts_them() {
        use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
        let values = [0u16, 200, 255, 256, 0x7F80, 0xFFFF];
        let row = |f: &dyn Fn(u16) -> [u8; 3]| values.map(f).concat();
        let luma = ImageBuffer::from_fn(6, 1, |x, _| Luma([values[x as usize]]));
        assert_eq!(
            pillow_rgb(DynamicImage::ImageLuma16(luma)).into_raw(),
            row(&|v| [v.min(255) as u8; 3]),
            "I;16 → RGB clips at 255"
        );
        let high = |v: u16| [(v >> 8) as u8; 3];
        let luma_a = ImageBuffer::from_fn(6, 1, |x, _| LumaA([values[x as usize], 9]));
        assert_eq!(
            pillow_rgb(DynamicImage::ImageLumaA16(luma_a)).into_raw(),
            row(&high)
        );
        let rgb = ImageBuffer::from_fn(6, 1, |x, _| Rgb([values[x as usize]; 3]));
        assert_eq!(
            pillow_rgb(DynamicImage::ImageRgb16(rgb)).into_raw(),
            row(&high)
        );
        let rgba = ImageBuffer::from_fn(6, 1, |x, _| {
            Rgba([
                values[x as usize],
                values[x as usize],
                values[x as usize],
                1,
            ])
        });
        assert_eq!(
            pillow_rgb(DynamicImage::ImageRgba16(rgba)).into_raw(),
            row(&high)
        );
    }

    #[test]
    fn png_is_decoded_from_one_open_file_and_other_formats_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 9]));
        let png = dir.path().join("p.jpg");
        img.save_with_format(&png, image::ImageFormat::Png).unwrap();
        assert_eq!(decode(&png).unwrap(), img);
        assert_eq!(probe(&png).unwrap(), (5, 3));
        let gif = dir.path().join("g.png");
        std::fs::write(&gif, b"GIF89a\x05\x00\x03\x00 rest").unwrap();
        let e = decode(&gif).unwrap_err().to_string();
        assert!(e.contains("g.png") && e.contains("Gif"), "{e}");
        let text = dir.path().join("t.png");
        std::fs::write(&text, b"hello").unwrap();
        let e = decode(&text).unwrap_err().to_string();
        assert!(e.contains("t.png") && e.contains("unreadable image"), "{e}");
        // A PNG claiming 0 × 0 pixels: refused on its header.
        let mut bytes = std::fs::read(&png).unwrap();
        bytes[16..24].fill(0);
        let zero = dir.path().join("zero.png");
        std::fs::write(&zero, &bytes).unwrap();
        assert!(decode(&zero).is_err());
        // The header check says what decoding says of every file that is not a JPEG.
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &std::fs::read(&png).unwrap()[..20]).unwrap();
        let bmp = dir.path().join("b.png");
        std::fs::write(&bmp, b"BM\x3e\0\0\0\0\0\0\0").unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        for p in [&gif, &text, &zero, &cut, &bmp, &empty] {
            let (d, h) = (decode(p).unwrap_err(), probe(p).unwrap_err());
            assert_eq!(d.to_string(), h.to_string(), "{}", p.display());
            assert_eq!(crate::error::report(&d), crate::error::report(&h));
        }
    }

    fn input(size: u32, resize: Resize) -> ImageInput {
        ImageInput {
            name: "pixel_values".into(),
            size,
            resize,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    #[test]
    fn kept_images_move_to_the_front_in_order() {
        let mut px: Vec<f32> = (0..10).map(|v| v as f32).collect();
        assert_eq!(
            keep_images(&mut px, 2, &[false, true, false, true, true]),
            3
        );
        assert_eq!(px[..6], [2.0, 3.0, 6.0, 7.0, 8.0, 9.0]);
        assert_eq!(keep_images(&mut px, 2, &[false; 5]), 0);
        let mut px = vec![1.0, 2.0];
        assert_eq!(keep_images(&mut px, 2, &[true]), 1);
        assert_eq!(px, [1.0, 2.0]);
    }

    #[test]
    fn eval_transform_centre_crops_the_shortest_side() {
        // 40×20: a left half of red and a right half of blue, with a green 2-px border column at
        // each side. Shortest side 20 → 10: resized 20×10, centre crop 10×10 drops 5 px per side.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if !(2..38).contains(&x) {
                image::Rgb([0, 255, 0])
            } else if x < 20 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut out = vec![0f32; 3 * 100];
        eval_transform(&img, &input(10, Resize::ShortestSide), &mut out);
        let green = |i: usize| out[100 + i] * CLIP_STD[1] + CLIP_MEAN[1];
        // No border green survives the crop: the first and last columns are red and blue.
        assert!(
            green(0) < 0.05 && green(9) < 0.05,
            "{} {}",
            green(0),
            green(9)
        );
        let red0 = out[0] * CLIP_STD[0] + CLIP_MEAN[0];
        let blue9 = out[200 + 9] * CLIP_STD[2] + CLIP_MEAN[2];
        assert!(red0 > 0.95 && blue9 > 0.95, "{red0} {blue9}");
        // A square image of the input size passes unchanged.
        let sq = RgbImage::from_fn(10, 10, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 20) as u8, 7])
        });
        let mut a = vec![0f32; 300];
        let mut b = vec![0f32; 300];
        eval_transform(&sq, &input(10, Resize::ShortestSide), &mut a);
        normalize_chw(&sq, &CLIP_MEAN, &CLIP_STD, &mut b);
        assert_eq!(a, b);
        // The full view of a square image of the input size is the same tensor.
        render_view(&sq, &View::full(&sq), 10, &CLIP_MEAN, &CLIP_STD, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn render_view_flips() {
        let img = RgbImage::from_fn(8, 8, |x, _| image::Rgb([(x * 30) as u8, 0, 0]));
        let mut a = vec![0f32; 3 * 64];
        let mut b = vec![0f32; 3 * 64];
        let v = View::full(&img);
        render_view(&img, &v, 8, &CLIP_MEAN, &CLIP_STD, &mut a);
        render_view(
            &img,
            &View { flip: true, ..v },
            8,
            &CLIP_MEAN,
            &CLIP_STD,
            &mut b,
        );
        assert_eq!(a[0], b[7]);
        assert_ne!(a[0], b[0]);
    }
}
