//! Looking at written plots as a user would: the PNG decodes, has the expected size and is drawn
//! (many colours, not a blank canvas); the SVG's text (title, captions, axis names, legend) says
//! what is shown.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::Path;

/// Decodes `path` and asserts it is `size` pixels, holds a drawing (at least 5 distinct colours and
/// 1 % non-white pixels), and returns the number of distinct colours.
pub fn assert_drawn_png(path: &Path, size: (u32, u32)) -> usize {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), size, "{}", path.display());
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let colours: HashSet<&[u8]> = pixels.iter().copied().collect();
    let drawn = pixels.iter().filter(|p| p.iter().any(|&c| c < 250)).count();
    assert!(
        colours.len() >= 5 && drawn * 100 >= pixels.len(),
        "{}: {} colours, {drawn} of {} pixels drawn",
        path.display(),
        colours.len(),
        pixels.len()
    );
    colours.len()
}

/// Every text element of an SVG written by plotters, entities decoded.
pub fn svg_texts(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(svg.starts_with("<svg"), "{} is not an SVG", path.display());
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .map(|t| {
            t.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&#39;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

/// Asserts that the SVG has a text element equal to each of `want`.
pub fn assert_texts(path: &Path, want: &[&str]) {
    let texts = svg_texts(path);
    for w in want {
        assert!(
            texts.iter().any(|t| t == w),
            "{} lacks the text `{w}`; it has {texts:?}",
            path.display()
        );
    }
}
