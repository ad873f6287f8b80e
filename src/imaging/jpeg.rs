//! JPEG decoding by libjpeg-turbo, the decoder Pillow ships (`turbojpeg-sys` builds it from its
//! bundled source with SIMD), through its libjpeg API and a few lines of C
//! (`src/imaging/jpeg_decode.c`). With it the decoded pixels equal `Image.open(p).convert("RGB")`
//! bit for bit, so training crops and `tagfix tag` see what RAM's Python pipeline sees, and
//! decoding, the loader's largest cost, is 1.2–2× faster than the `image` crate's decoder
//! (docs/PERFORMANCE.md, "The loader's cost per image").
//!
//! Broken files get Pillow's verdicts: libjpeg's warnings (corrupt entropy data, junk between
//! segments) are not errors, its errors are, and data that ends before the last row of pixels is
//! refused as truncated while data that only lacks its end marker is not. The C file exists for
//! these: TurboJPEG's API reports only a decoding's first warning and not where the data ran out.
//!
//! The training loader decodes only the crop it drew ([`Jpeg::decode_region`]): the same pixels
//! and verdicts, for less work (docs/PERFORMANCE.md, "Decoding only the crop").
//!
//! CMYK and YCCK files (rare, from print workflows) are decoded to CMYK and converted as Pillow
//! converts them: the values inverted (Adobe's convention, which Pillow assumes for every CMYK
//! JPEG), then `Image.convert("RGB")`'s integer formula.

use super::resample::Region;
use image::RgbImage;
use std::ffi::{c_char, c_int, c_uint, CStr};
// The library the C file calls into; nothing of its TurboJPEG API is used.
use turbojpeg_sys as _;

/// Most progressive scans a file may have: real encoders write about ten, a crafted file can
/// hold thousands of tiny scans that each cost a pass over the whole image (libjpeg-turbo's
/// fuzzers use the same limit).
const SCAN_LIMIT: c_int = 500;

/// Why libjpeg-turbo could not decode a file; the text is libjpeg's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("{0}")]
    Header(String),
    #[error("the file ends before the image does ({0})")]
    Truncated(String),
    #[error("{0}")]
    Decode(String),
}

/// The first bytes of every JPEG file: start of image and the first marker's prefix.
pub fn is_jpeg(data: &[u8]) -> bool {
    data.starts_with(&[0xFF, 0xD8, 0xFF])
}

// src/imaging/jpeg_decode.c
extern "C" {
    static tagfix_jpeg_message_len: usize;
    fn tagfix_jpeg_header(
        data: *const u8,
        len: usize,
        scan_limit: c_int,
        width: *mut c_uint,
        height: *mut c_uint,
        cmyk: *mut c_int,
        message: *mut c_char,
    ) -> c_int;
    fn tagfix_jpeg_decode(
        data: *const u8,
        len: usize,
        scan_limit: c_int,
        width: c_uint,
        height: c_uint,
        cmyk: c_int,
        region: *const c_uint,
        cap: c_uint,
        out: *mut u8,
        left: *mut c_uint,
        out_width: *mut c_uint,
        message: *mut c_char,
    ) -> c_int;
}

/// Columns a region decoding may add on each side of the region (`REGION_MARGIN` in the C file)
/// and, on the left, to reach an iMCU boundary (at most 32 columns).
const REGION_EXTRA_COLUMNS: u32 = 2 * 32 + 32;

/// What the C functions return.
const OK: c_int = 0;
const TRUNCATED: c_int = 2;

/// A buffer for libjpeg's message (`JMSG_LENGTH_MAX` bytes).
fn message_buffer() -> Vec<c_char> {
    // SAFETY: a constant defined in the C file.
    vec![0; unsafe { tagfix_jpeg_message_len }]
}

fn message_text(buffer: &[c_char]) -> String {
    // SAFETY: the C side writes NUL-terminated text into the zeroed buffer (snprintf and
    // libjpeg's format_message stay within JMSG_LENGTH_MAX), so a NUL is always within it.
    unsafe { CStr::from_ptr(buffer.as_ptr()) }
        .to_string_lossy()
        .trim()
        .to_string()
}

/// A JPEG file with its header read: the size is known before any pixel buffer is allocated.
pub struct Jpeg<'a> {
    data: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// CMYK or YCCK: decoded to CMYK and converted here; else libjpeg converts to RGB.
    cmyk: bool,
    scan_limit: c_int,
}

impl<'a> Jpeg<'a> {
    /// Reads the header. A warning about corrupt data in it (junk between two segments) is no
    /// error, as in Pillow; data that ends, or holds only tables, before a frame header is.
    pub fn open(data: &'a [u8]) -> Result<Self, JpegError> {
        let (mut width, mut height, mut cmyk) = (0, 0, 0);
        let mut message = message_buffer();
        // SAFETY: `data` outlives the call and is only read within its length; the out-pointers
        // are valid locals; `message` holds JMSG_LENGTH_MAX bytes.
        let rc = unsafe {
            tagfix_jpeg_header(
                data.as_ptr(),
                data.len(),
                SCAN_LIMIT,
                &mut width,
                &mut height,
                &mut cmyk,
                message.as_mut_ptr(),
            )
        };
        match rc {
            OK if width > 0 && height > 0 => Ok(Jpeg {
                data,
                width,
                height,
                cmyk: cmyk != 0,
                scan_limit: SCAN_LIMIT,
            }),
            OK => Err(JpegError::Header(format!("the frame is {width}×{height}"))),
            TRUNCATED => Err(JpegError::Truncated(message_text(&message))),
            _ => Err(JpegError::Header(message_text(&message))),
        }
    }

    /// Refuses, when decoding, a progressive file of more than `scans` scans (default 500).
    pub fn with_scan_limit(self, scans: u16) -> Self {
        Jpeg {
            scan_limit: c_int::from(scans),
            ..self
        }
    }

    /// Decodes to RGB8 in one pass, with Pillow's verdicts on broken data (see the module).
    pub fn decode_rgb(self) -> Result<RgbImage, JpegError> {
        let (width, height) = (self.width, self.height);
        let (pixels, _) = self.decode_into(None, width, height as usize)?;
        RgbImage::from_raw(width, height, pixels)
            .ok_or_else(|| JpegError::Decode("decoded buffer does not match the header".into()))
    }

    /// Decodes only the rows of `region` (inside the image), and only its columns and a few
    /// around them (libjpeg-turbo's cropped and skipped scanlines): its pixels are those of
    /// [`Jpeg::decode_rgb`]'s image bit for bit, and broken data gets the same verdict (the rows
    /// below are read to the end), for less work: the rows above and below are entropy-decoded
    /// but not transformed, and the columns beside are not decoded at all.
    pub fn decode_region(self, region: Region) -> Result<DecodedRegion, JpegError> {
        if !region.lies_within(self.width, self.height) {
            return Err(JpegError::Decode(format!(
                "region {region:?} outside the {}×{} image",
                self.width, self.height
            )));
        }
        let cap = self
            .width
            .min(region.width.saturating_add(REGION_EXTRA_COLUMNS));
        // The region's rows and one of scratch (the image's last row, decoded for the verdict).
        let corners = [region.left, region.top, region.width, region.height];
        let (pixels, (left, width)) =
            self.decode_into(Some(&corners), cap, region.height as usize + 1)?;
        let image = RgbImage::from_raw(width, region.height, pixels)
            .ok_or_else(|| JpegError::Decode("decoded buffer does not match the region".into()))?;
        Ok(DecodedRegion { image, left })
    }

    /// Runs the C decoder into a buffer of `rows` rows of `cap` pixels: the whole image (`region`
    /// `None`) or a region (left, top, width, height). Returns the pixels, cut to the rows
    /// written and converted to RGB, and the columns the rows hold (first, count).
    fn decode_into(
        self,
        region: Option<&[u32; 4]>,
        cap: u32,
        rows: usize,
    ) -> Result<(Vec<u8>, (u32, u32)), JpegError> {
        let channels = if self.cmyk { 4 } else { 3 };
        let mut pixels = vec![0u8; cap as usize * rows * channels];
        let (mut left, mut width) = (0, 0);
        let mut message = message_buffer();
        // SAFETY: `pixels` holds `rows` rows of `cap` pixels of `channels` bytes: the whole image
        // (the C side checks the decoder's output size against it before writing a row) or a
        // region's rows and one of scratch (a cropping wider than `cap` is refused before a row is
        // written); `data` and `region` are only read; the out-pointers are valid locals;
        // `message` holds JMSG_LENGTH_MAX bytes.
        let rc = unsafe {
            tagfix_jpeg_decode(
                self.data.as_ptr(),
                self.data.len(),
                self.scan_limit,
                self.width,
                self.height,
                c_int::from(self.cmyk),
                region.map_or(std::ptr::null(), |r| r.as_ptr()),
                cap,
                pixels.as_mut_ptr(),
                &mut left,
                &mut width,
                message.as_mut_ptr(),
            )
        };
        let height = region.map_or(self.height, |r| r[3]);
        pixels.truncate(width as usize * height as usize * channels);
        finish(rc, &message, &mut pixels, self.cmyk)?;
        Ok((pixels, (left, width)))
    }
}

/// The rows of a region of a JPEG image, decoded with some columns around it
/// ([`Jpeg::decode_region`]).
pub struct DecodedRegion {
    /// The region's rows, from column [`DecodedRegion::left`] of the image.
    pub image: RgbImage,
    /// The image column the decoded rows begin at: the region begins at column
    /// `region.left - left` of [`DecodedRegion::image`], at its top row.
    pub left: u32,
}

/// The C side's verdict `rc` as an error (with libjpeg's `message`); decoded CMYK `pixels`
/// converted to RGB.
fn finish(
    rc: c_int,
    message: &[c_char],
    pixels: &mut Vec<u8>,
    cmyk: bool,
) -> Result<(), JpegError> {
    match rc {
        OK => {}
        TRUNCATED => return Err(JpegError::Truncated(message_text(message))),
        _ => return Err(JpegError::Decode(message_text(message))),
    }
    if cmyk {
        inverted_cmyk_to_rgb(pixels);
    }
    Ok(())
}

/// What `Image.open(p).convert("RGB")` gives for CMYK JPEG data as libjpeg decodes it: Pillow reads
/// it as inverted CMYK (`CMYK;I`), then converts each channel as `k' − c'·k'/255` with
/// `c' = 255 − c`, `k' = 255 − k` (Pillow's `cmyk2rgb`, its rounded division by 255 included).
/// In place: pixel `i`'s RGB goes to bytes `3i..3i + 3`, never past the CMYK still to be read, and
/// the buffer is cut to the RGB.
fn inverted_cmyk_to_rgb(pixels: &mut Vec<u8>) {
    let mul_div_255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let n = pixels.len() / 4;
    for i in 0..n {
        let nk = i32::from(pixels[4 * i + 3]); // 255 − (255 − k)
        for c in 0..3 {
            let ink = 255 - i32::from(pixels[4 * i + c]);
            pixels[3 * i + c] = (nk - mul_div_255(ink, nk)).clamp(0, 255) as u8;
        }
    }
    pixels.truncate(3 * n);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small JPEG written by the `image` crate's encoder.
    fn encoded(w: u32, h: u32, quality: u8) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn decodes_what_the_image_crate_encoded_at_its_size() {
        let data = encoded(37, 21, 95);
        assert!(is_jpeg(&data));
        let jpeg = Jpeg::open(&data).unwrap();
        assert_eq!((jpeg.width, jpeg.height, jpeg.cmyk), (37, 21, false));
        let img = jpeg.decode_rgb().unwrap();
        assert_eq!(img.dimensions(), (37, 21));
        // Quality 95 keeps the gradient within a few levels.
        let (x, y) = (10, 7);
        let p = img.get_pixel(x, y).0;
        assert!((i32::from(p[0]) - 70).abs() <= 6, "{p:?}");
        assert!((i32::from(p[1]) - 35).abs() <= 6, "{p:?}");
    }

    /// Regions along every edge, single pixels, whole rows and columns and the whole image, and
    /// the pixels of a whole decoding under each (`tests/tag_export.rs` does the same for
    /// Pillow's 4:2:2, 4:4:4, progressive, gray and CMYK files and the shared photos).
    fn regions(w: u32, h: u32) -> Vec<Region> {
        let r = |left, top, width, height| Region {
            left,
            top,
            width,
            height,
        };
        let mut out = vec![
            r(0, 0, w, h),
            r(0, 0, 1, 1),
            r(w - 1, h - 1, 1, 1),
            r(0, h - 1, w, 1),
        ];
        out.extend([
            r(w - 1, 0, 1, h),
            r(w / 3, 0, w / 3 + 1, h),
            r(0, h / 2, w, h - h / 2),
        ]);
        for left in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33] {
            for width in [1, 2, 15, 16, 17, 40] {
                if left + width <= w {
                    out.push(r(left, (left * 7) % h, width, h - (left * 7) % h));
                    out.push(r(w - left - width, h / 3, width, (h - h / 3).min(5)));
                }
            }
        }
        out
    }

    /// The rows of `region` in `img`, whose first column is the image's column `left`.
    fn rows_of(img: &RgbImage, left: u32, region: Region) -> Vec<Vec<u8>> {
        (region.top..region.top + region.height)
            .map(|y| {
                let start = (y as usize * img.width() as usize + (region.left - left) as usize) * 3;
                img.as_raw()[start..start + region.width as usize * 3].to_vec()
            })
            .collect()
    }

    #[test]
    fn a_region_decodes_to_the_whole_decodings_pixels() {
        use crate::fuzz::targets::image::turbojpeg_seed;
        use turbojpeg_sys::{
            TJPARAM_TJPARAM_PROGRESSIVE as PROGRESSIVE, TJPARAM_TJPARAM_SUBSAMP as SUBSAMPLING,
            TJSAMP_TJSAMP_420 as S420, TJSAMP_TJSAMP_422 as S422,
        };
        // Chroma subsampled 2×1 and 2×2: a cropped decoding upsamples the crop's edge columns
        // as the image's edges unless it decodes columns beyond them (the margin).
        let files = [
            (37, 21, S420, 0),
            (203, 131, S422, 0),
            (203, 131, S420, 1),
            (640, 48, S420, 0),
        ];
        for (w, h, subsampling, progressive) in files {
            let params = [(SUBSAMPLING, subsampling), (PROGRESSIVE, progressive)];
            let data = turbojpeg_seed(w as usize, h as usize, false, &params);
            let quality = format!("sampling {subsampling}, progressive {progressive}");
            let whole = Jpeg::open(&data).unwrap().decode_rgb().unwrap();
            for region in regions(w, h) {
                let got = Jpeg::open(&data).unwrap().decode_region(region).unwrap();
                assert!(got.left <= region.left && got.image.height() == region.height);
                assert_eq!(
                    rows_of(&got.image, got.left, Region { top: 0, ..region }),
                    rows_of(&whole, 0, region),
                    "{w}×{h} {quality}, {region:?} (decoded from column {})",
                    got.left
                );
            }
        }
    }

    #[test]
    fn a_region_outside_the_image_is_refused() {
        let data = encoded(40, 30, 90);
        let r = |left, top, width, height| Region {
            left,
            top,
            width,
            height,
        };
        for region in [
            r(0, 0, 41, 1),
            r(39, 0, 2, 1),
            r(0, 30, 1, 1),
            r(0, 0, 0, 5),
            r(u32::MAX, 0, 2, 1),
        ] {
            let e = Jpeg::open(&data).unwrap().decode_region(region).err();
            assert!(matches!(e, Some(JpegError::Decode(_))), "{region:?}: {e:?}");
        }
    }

    #[test]
    fn a_region_of_a_file_cut_short_gets_the_whole_decodings_verdict() {
        // The region's rows end long before the data does: the rows below are still read.
        let data = encoded(64, 48, 90);
        let top = Region {
            left: 8,
            top: 0,
            width: 16,
            height: 2,
        };
        for cut in (data.len() / 3..data.len()).step_by(37) {
            let whole = Jpeg::open(&data[..cut]).and_then(Jpeg::decode_rgb).err();
            let part = Jpeg::open(&data[..cut])
                .and_then(|j| j.decode_region(top))
                .err();
            let kind = |e: &Option<JpegError>| e.as_ref().map(std::mem::discriminant);
            assert_eq!(
                kind(&whole),
                kind(&part),
                "cut at {cut}: {whole:?} / {part:?}"
            );
        }
    }

    #[test]
    fn inverted_cmyk_converts_as_pillow_does() {
        // Stored values (c, m, y, k) as libjpeg returns them, i.e. inverted: 255 is no ink.
        let mut got = vec![
            255, 255, 255, 255, 0, 0, 0, 255, 255, 0, 128, 200, 7, 9, 11, 0,
        ];
        inverted_cmyk_to_rgb(&mut got);
        // No ink: white; full cyan, magenta and yellow: black; k' = 200 scales the inverted
        // (255, 0, 127) to (200, 0, 100) (200·127/255 = 99.6, rounded); full black: black.
        assert_eq!(got, [255, 255, 255, 0, 0, 0, 200, 0, 100, 0, 0, 0]);
    }

    #[test]
    fn a_file_cut_short_is_refused_as_truncated() {
        let data = encoded(64, 48, 90);
        for cut in [data.len() - 2, data.len() * 2 / 3, data.len() / 3] {
            let err = Jpeg::open(&data[..cut])
                .and_then(Jpeg::decode_rgb)
                .unwrap_err();
            assert!(
                matches!(err, JpegError::Truncated(_) | JpegError::Header(_)),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn garbage_is_a_header_error_and_mutations_never_panic() {
        assert!(!is_jpeg(b"not a jpeg"));
        assert!(matches!(
            Jpeg::open(b"\xFF\xD8\xFFnot really"),
            Err(JpegError::Header(_))
        ));
        let data = encoded(40, 30, 80);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut bad = data.clone();
            for _ in 0..1 + next() % 8 {
                let i = (next() as usize) % bad.len();
                bad[i] = next() as u8;
            }
            if let Ok(jpeg) = Jpeg::open(&bad) {
                if u64::from(jpeg.width) * u64::from(jpeg.height) <= 1 << 24 {
                    let _ = jpeg.decode_rgb();
                }
            }
        }
    }
}
