//! The `image` target: the image decoder behind training, `tag` and the teacher, from seeds of every
//! JPEG flavour libjpeg-turbo's encoder writes and 8- and 16-bit PNGs (feature `embed`).

use std::path::Path;
use turbojpeg_sys::{
    TJPARAM_TJPARAM_ARITHMETIC as ARITHMETIC, TJPARAM_TJPARAM_PROGRESSIVE as PROGRESSIVE,
    TJPARAM_TJPARAM_RESTARTBLOCKS as RESTART_BLOCKS, TJPARAM_TJPARAM_SUBSAMP as SUBSAMPLING,
    TJSAMP_TJSAMP_422 as SAMP_422, TJSAMP_TJSAMP_444 as SAMP_444, TJSAMP_TJSAMP_GRAY as SAMP_GRAY,
};

pub(super) fn target() -> super::Target {
    super::Target {
        name: "image",
        file: "image.jpg",
        run: run_image,
        dict: JPEG_DICT,
        generate: None,
        seeds: image_seeds,
        shared_seeds: &[],
    }
}

/// The image decoder behind training, `tag` and the teacher (libjpeg-turbo for JPEG, the `image`
/// crate for PNG; the file name says `.jpg` whatever the bytes are, as a mislabelled file would),
/// then the header probe, a resize of what it decoded, and the training loader's decoding of a
/// crop alone (the lower right quarter).
fn run_image(path: &Path, _: &[u8]) {
    let _ = crate::imaging::probe(path);
    if let Ok(img) = crate::imaging::decode(path) {
        let _ = crate::imaging::pil_resize(&img, 7, 5, crate::imaging::PilFilter::Bicubic);
    }
    if let Ok(file) = crate::imaging::open(path) {
        let (w, h) = file.dimensions();
        let view = crate::imaging::View {
            left: w / 2,
            top: h / 2,
            width: w - w / 2,
            height: h - h / 2,
            flip: true,
        };
        if let Ok((pixels, moved)) = file.view(&view) {
            let _ = crate::imaging::view_image(&pixels, &moved, 5);
        }
    }
}

/// JPEG markers (start and end of image, frame headers baseline/progressive/lossless/arithmetic,
/// tables, scan, restarts, APP0/APP14) and the values that stress them.
#[rustfmt::skip]
const JPEG_DICT: &[&[u8]] = &[
    b"\xFF\xD8\xFF", b"\xFF\xD9", b"\xFF\xC0", b"\xFF\xC1", b"\xFF\xC2", b"\xFF\xC3", b"\xFF\xC9",
    b"\xFF\xCA", b"\xFF\xC4", b"\xFF\xCC", b"\xFF\xDB", b"\xFF\xDA", b"\xFF\xDD", b"\xFF\xD0",
    b"\xFF\xD7", b"\xFF\xE0", b"\xFF\xEE", b"Adobe", b"JFIF\x00", b"\xFF\xFF", b"\x00\x00",
    b"\xFF\x00", b"\x11", b"\x22", b"\x01\x01", b"\x08", b"\x0C", b"\x10", b"\x03", b"\x04",
    b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND",
];

/// Small images: baseline JPEG from the `image` crate in colour (4:2:0) and grayscale, at sizes that
/// are and are not multiples of the 8×8 and 16×16 blocks; JPEG flavours from libjpeg-turbo's own
/// encoder (progressive, arithmetic-coded, restart markers, 4:2:2, CMYK, grayscale); PNG in 8-bit RGB and
/// 16-bit RGB and gray+alpha.
fn image_seeds() -> Vec<(String, Vec<u8>)> {
    use image::codecs::jpeg::JpegEncoder;
    let rgb = |w: u32, h: u32| {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 29) as u8, (y * 41) as u8, ((x ^ y) * 13) as u8])
        })
    };
    let jpeg = |img: image::DynamicImage, quality: u8| {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(&img)
            .expect("encoding a seed");
        out
    };
    let mut png = Vec::new();
    rgb(9, 6)
        .write_to(
            &mut std::io::Cursor::new(&mut png),
            image::ImageOutputFormat::Png,
        )
        .expect("encoding a seed");
    vec![
        ("rgb_16x16.jpg".into(), jpeg(rgb(16, 16).into(), 90)),
        ("rgb_37x21.jpg".into(), jpeg(rgb(37, 21).into(), 50)),
        (
            "gray_13x9.jpg".into(),
            jpeg(
                image::DynamicImage::ImageRgb8(rgb(13, 9))
                    .into_luma8()
                    .into(),
                75,
            ),
        ),
        ("rgb_9x6.png".into(), png),
        ("rgb16_7x5.png".into(), png16(7, 5, false)),
        ("gray_alpha16_6x9.png".into(), png16(6, 9, true)),
        (
            "progressive_23x17.jpg".into(),
            turbojpeg_seed(23, 17, false, &[(PROGRESSIVE, 1)]),
        ),
        (
            "arithmetic_19x11.jpg".into(),
            turbojpeg_seed(19, 11, false, &[(ARITHMETIC, 1)]),
        ),
        (
            "restarts_33x18.jpg".into(),
            turbojpeg_seed(33, 18, false, &[(RESTART_BLOCKS, 1)]),
        ),
        (
            "subsampled_422_21x13.jpg".into(),
            turbojpeg_seed(21, 13, false, &[(SUBSAMPLING, SAMP_422)]),
        ),
        (
            "cmyk_12x10.jpg".into(),
            turbojpeg_seed(12, 10, true, &[(SUBSAMPLING, SAMP_444)]),
        ),
        (
            "gray_15x7.jpg".into(),
            turbojpeg_seed(15, 7, false, &[(SUBSAMPLING, SAMP_GRAY)]),
        ),
    ]
}

/// 16-bit PNG in RGB or gray+alpha (the image crate's encoder).
fn png16(w: u32, h: u32, gray_alpha: bool) -> Vec<u8> {
    let value = |x: u32, y: u32, k: u32| ((x * 7919 + y * 104_729 + k * 31_337) % 65_536) as u16;
    let img: image::DynamicImage = if gray_alpha {
        image::ImageBuffer::<image::LumaA<u16>, _>::from_fn(w, h, |x, y| {
            image::LumaA([value(x, y, 0), value(x, y, 1)])
        })
        .into()
    } else {
        image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(w, h, |x, y| {
            image::Rgb([value(x, y, 0), value(x, y, 1), value(x, y, 2)])
        })
        .into()
    };
    let mut out = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageOutputFormat::Png,
    )
    .expect("encoding a seed");
    out
}

/// A `w`×`h` JPEG (RGB, or CMYK) from libjpeg-turbo's encoder at quality 80, 4:2:0 unless
/// `params` (TurboJPEG parameters and values, set in order) say otherwise.
pub(crate) fn turbojpeg_seed(
    w: usize,
    h: usize,
    cmyk: bool,
    params: &[(turbojpeg_sys::TJPARAM, i32)],
) -> Vec<u8> {
    use std::os::raw::c_int;
    use turbojpeg_sys as tj;
    let channels = if cmyk { 4 } else { 3 };
    let pixels: Vec<u8> = (0..w * h * channels)
        .map(|i| ((i / channels % w) * 37 + (i / channels / w) * 23 + (i % channels) * 71) as u8)
        .collect();
    let format = if cmyk {
        tj::TJPF_TJPF_CMYK
    } else {
        tj::TJPF_TJPF_RGB
    };
    // SAFETY: the handle is checked and destroyed; the source buffer holds w·h·channels bytes as
    // the pitch says; TurboJPEG allocates the output, which is copied and freed with tj3Free.
    unsafe {
        let handle = tj::tj3Init(tj::TJINIT_TJINIT_COMPRESS as c_int);
        assert!(!handle.is_null(), "tj3Init");
        let mut ok = tj::tj3Set(handle, tj::TJPARAM_TJPARAM_QUALITY as c_int, 80) == 0;
        let defaults = [(SUBSAMPLING, tj::TJSAMP_TJSAMP_420)];
        for &(param, value) in defaults.iter().chain(params) {
            ok &= tj::tj3Set(handle, param as c_int, value) == 0;
        }
        let (mut buf, mut size) = (std::ptr::null_mut(), 0);
        ok &= tj::tj3Compress8(
            handle,
            pixels.as_ptr(),
            w as c_int,
            (w * channels) as c_int,
            h as c_int,
            format as c_int,
            &mut buf,
            &mut size,
        ) == 0;
        let out = if ok && !buf.is_null() {
            std::slice::from_raw_parts(buf, size as usize).to_vec()
        } else {
            Vec::new()
        };
        tj::tj3Free(buf.cast());
        tj::tj3Destroy(handle);
        assert!(!out.is_empty(), "libjpeg-turbo could not encode a seed");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every image seed decodes, at the size its name says, so that mutations start from each
    /// flavour's decoding path.
    #[test]
    fn image_seeds_decode_at_their_size() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in image_seeds() {
            let p = dir.path().join(&name);
            std::fs::write(&p, bytes).unwrap();
            let img = crate::imaging::decode(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            let size = name
                .rsplit('_')
                .next()
                .and_then(|s| s.split('.').next())
                .unwrap();
            assert_eq!(format!("{}x{}", img.width(), img.height()), size, "{name}");
        }
    }
}
