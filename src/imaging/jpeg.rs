//! JPEG decoding by libjpeg-turbo, the decoder Pillow ships, through its TurboJPEG 3 API
//! (`turbojpeg-sys`, built from its bundled source with SIMD). With it the decoded pixels equal
//! `Image.open(p).convert("RGB")` bit for bit, so training crops and `tagfix tag` see what RAM's
//! Python pipeline sees, and decoding, the loader's largest cost, is 1.2–2× faster than the
//! `image` crate's decoder (docs/PERFORMANCE.md, "The loader's cost per image").
//!
//! CMYK and YCCK files (rare, from print workflows) are decoded to CMYK and converted as Pillow
//! converts them: the values inverted (Adobe's convention, which Pillow assumes for every CMYK
//! JPEG), then `Image.convert("RGB")`'s integer formula.

use image::RgbImage;
use std::ffi::{c_int, CStr};
use turbojpeg_sys as tj;

/// Most progressive scans a file may have: real encoders write about ten, a crafted file can
/// hold thousands of tiny scans that each cost a pass over the whole image (libjpeg-turbo's
/// fuzzers use the same limit).
const SCAN_LIMIT: c_int = 500;

/// libjpeg's message when the data ends before the image does (`JWRN_JPEG_EOF`).
const TRUNCATED: &str = "Premature end of JPEG file";

/// Why libjpeg-turbo could not decode a file; the text is libjpeg-turbo's own message.
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

/// A TurboJPEG decompressor with a file's header read: the size is known before any pixel
/// buffer is allocated.
pub struct Jpeg<'a> {
    handle: Handle,
    data: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// CMYK or YCCK: decoded to CMYK and converted here; else libjpeg converts to RGB.
    cmyk: bool,
}

impl<'a> Jpeg<'a> {
    /// Reads the header (`tj3DecompressHeader`). A warning about corrupt data in it (junk
    /// between two segments) is no error, as in Pillow, once the frame's size and colour space
    /// are known; data that ends, or holds only tables, before a frame header is.
    pub fn open(data: &'a [u8]) -> Result<Self, JpegError> {
        let mut handle = Handle::new()?;
        handle.set(tj::TJPARAM_TJPARAM_SCANLIMIT, SCAN_LIMIT)?;
        // SAFETY: `data` outlives the call; TurboJPEG only reads `data.len()` bytes of it.
        let rc = unsafe { tj::tj3DecompressHeader(handle.0, data.as_ptr(), data.len() as _) };
        let dimension = |h: &Handle, p| u32::try_from(h.get(p)).unwrap_or(0);
        let (width, height) = (
            dimension(&handle, tj::TJPARAM_TJPARAM_JPEGWIDTH),
            dimension(&handle, tj::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        let colorspace = handle.get(tj::TJPARAM_TJPARAM_COLORSPACE);
        let framed = width > 0 && height > 0 && colorspace >= 0;
        let warned = handle.error_code() == tj::TJERR_TJERR_WARNING as c_int;
        if rc != 0 && !(warned && framed) {
            return Err(JpegError::Header(handle.message()));
        }
        if !framed {
            return Err(JpegError::Header(
                "no frame header: the data ends, or holds only tables, before one".into(),
            ));
        }
        Ok(Jpeg {
            width,
            height,
            cmyk: [tj::TJCS_TJCS_CMYK, tj::TJCS_TJCS_YCCK]
                .iter()
                .any(|&cs| cs as c_int == colorspace),
            handle,
            data,
        })
    }

    /// Decodes to RGB8. libjpeg's warnings about corrupt data are not errors, as in Pillow,
    /// which decodes such files; a file whose data ends early is refused, as Pillow refuses it
    /// ("image file is truncated"). So the first attempt stops at the first warning; only a
    /// file with a warning other than the early end is decoded a second time, to the end.
    /// libjpeg reports only the first warning of a pass, so a second pass that ends with another
    /// message met an error after its warnings, which Pillow refuses too ("broken data stream").
    pub fn decode_rgb(mut self) -> Result<RgbImage, JpegError> {
        let channels = if self.cmyk { 4 } else { 3 };
        let mut pixels = vec![0u8; self.width as usize * self.height as usize * channels];
        self.handle.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        if let Err(first) = self.decompress_into(&mut pixels) {
            if !first.warning {
                return Err(JpegError::Decode(first.message));
            }
            if first.message.contains(TRUNCATED) {
                return Err(JpegError::Truncated(first.message));
            }
            self.handle.set(tj::TJPARAM_TJPARAM_STOPONWARNING, 0)?;
            if let Err(e) = self.decompress_into(&mut pixels) {
                if !e.warning || e.message != first.message {
                    return Err(JpegError::Decode(e.message));
                }
            }
        }
        if self.cmyk {
            inverted_cmyk_to_rgb(&mut pixels);
        }
        RgbImage::from_raw(self.width, self.height, pixels)
            .ok_or_else(|| JpegError::Decode("decoded buffer does not match the header".into()))
    }

    fn decompress_into(&mut self, pixels: &mut [u8]) -> Result<(), Failure> {
        // SAFETY: `pixels` holds width × height pixels of the format's size (RGB or CMYK) as the
        // header gave, and pitch 0 means rows of exactly that; TurboJPEG writes no more.
        let format = if self.cmyk {
            tj::TJPF_TJPF_CMYK
        } else {
            tj::TJPF_TJPF_RGB
        };
        let rc = unsafe {
            tj::tj3Decompress8(
                self.handle.0,
                self.data.as_ptr(),
                self.data.len() as _,
                pixels.as_mut_ptr(),
                0,
                format,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        Err(Failure {
            warning: self.handle.error_code() == tj::TJERR_TJERR_WARNING as c_int,
            message: self.handle.message(),
        })
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

/// A failed `tj3Decompress8`: a warning (non-fatal, data may be corrupt) or an error.
struct Failure {
    warning: bool,
    message: String,
}

/// An owned `tjhandle`, destroyed on drop.
struct Handle(tj::tjhandle);

impl Handle {
    fn new() -> Result<Self, JpegError> {
        // SAFETY: plain constructor; a null handle is reported through the global error string.
        let ptr = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if ptr.is_null() {
            return Err(JpegError::Decode(Self(ptr).message()));
        }
        Ok(Self(ptr))
    }

    fn set(&mut self, param: tj::TJPARAM, value: c_int) -> Result<(), JpegError> {
        // SAFETY: the handle is valid for the life of `self`.
        if unsafe { tj::tj3Set(self.0, param as c_int, value) } != 0 {
            return Err(JpegError::Decode(self.message()));
        }
        Ok(())
    }

    fn get(&self, param: tj::TJPARAM) -> c_int {
        // SAFETY: as in `set`.
        unsafe { tj::tj3Get(self.0, param as c_int) }
    }

    fn error_code(&self) -> c_int {
        // SAFETY: as in `set`.
        unsafe { tj::tj3GetErrorCode(self.0) }
    }

    /// The last error or warning (a null handle gives the last global error).
    fn message(&self) -> String {
        // SAFETY: TurboJPEG returns a NUL-terminated string it owns, valid until the next
        // call on the handle; it is copied at once.
        unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .trim()
            .to_string()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by `tj3Init`, destroyed once.
            unsafe { tj::tj3Destroy(self.0) }
        }
    }
}

// SAFETY: a TurboJPEG handle has no thread affinity; `Jpeg` is used by one thread at a time.
unsafe impl Send for Handle {}

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
