//! The `image_list` target: the list file of `tag --images-from` (feature `embed`, where the image
//! file helpers live).

use crate::imaging::files::{collect_images, is_image_name, read_image_list};
use std::path::{Component, Path};

pub(super) fn target() -> super::Target {
    super::Target {
        name: "image_list",
        file: "images.txt",
        run: run_image_list,
        dict: LIST_DICT,
        generate: None,
        seeds: image_list_seeds,
        shared_seeds: &[],
    }
}

/// The list read as `tag` reads it, then each path's extension judged and the paths that stay inside
/// the input's folder (relative, no `..`: the harness must not walk the machine's disks) collected
/// as `tag` collects files and folders.
fn run_image_list(path: &Path, _: &[u8]) {
    let Ok(paths) = read_image_list(path) else {
        return;
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let inside: Vec<_> = paths
        .iter()
        .inspect(|p| {
            let _ = is_image_name(p);
        })
        .filter(|p| p.components().all(|c| matches!(c, Component::Normal(_))))
        .map(|p| dir.join(p))
        .collect();
    let _ = collect_images(&inside);
}

/// Line ends, the byte order mark, bytes that are not UTF-8, path separators and the extensions
/// `tag` takes.
const LIST_DICT: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\r",
    b"\xEF\xBB\xBF",
    b"\xFF",
    b"\xC0\x80",
    b"/",
    b"..",
    b".",
    b"\0",
    b".jpg",
    b".JPEG",
    b".png",
    b" ",
    b"images.txt",
];

/// A list of files and a folder with Windows line ends and a byte order mark, and one naming the
/// list itself (a file, not an image).
fn image_list_seeds() -> Vec<(String, Vec<u8>)> {
    super::seeds::seeds(&[
        ("files.txt", b"a.jpg\nsub/b.PNG\n\nimgs/\n"),
        ("windows.txt", b"\xEF\xBB\xBFa.jpeg\r\nb.jpg\r\n"),
        ("itself.txt", b"images.txt\n.\n"),
    ])
}
