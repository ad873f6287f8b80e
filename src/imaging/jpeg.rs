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
//! CMYK and YCCK files (rare, from print workflows) are decoded to CMYK and converted as Pillow
//! converts them: the values inverted (Adobe's convention, which Pillow assumes for every CMYK
//! JPEG), then `Image.convert("RGB")`'s integer formula.

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
        out: *mut u8,
        message: *mut c_char,
    ) -> c_int;
}

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
        let channels = if self.cmyk { 4 } else { 3 };
        let mut pixels = vec![0u8; self.width as usize * self.height as usize * channels];
        let mut message = message_buffer();
        // SAFETY: `pixels` holds width × height pixels of `channels` bytes, which the C side
        // checks the decoder's output size against before writing a row; `data` is only read.
        let rc = unsafe {
            tagfix_jpeg_decode(
                self.data.as_ptr(),
                self.data.len(),
                self.scan_limit,
                self.width,
                self.height,
                c_int::from(self.cmyk),
                pixels.as_mut_ptr(),
                message.as_mut_ptr(),
            )
        };
        match rc {
            OK => {}
            TRUNCATED => return Err(JpegError::Truncated(message_text(&message))),
            _ => return Err(JpegError::Decode(message_text(&message))),
        }
        if self.cmyk {
            inverted_cmyk_to_rgb(&mut pixels);
        }
        RgbImage::from_raw(self.width, self.height, pixels)
            .ok_or_else(|| JpegError::Decode("decoded buffer does not match the header".into()))
    }
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
