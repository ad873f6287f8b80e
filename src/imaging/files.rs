//! The image files a command is given: files and folders on the command line, or listed one a
//! line in a file (`tag --images-from`).

use super::ImageError;
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Image files named by `inputs`: files as given, folders walked recursively (sorted, `.jpg`,
/// `.jpeg`, `.png` in any case). A link to a folder outside the one given is followed, each such
/// folder once; a link to a folder inside it is passed over (its images are found under their own
/// path), so that a link back up the tree is no endless loop. Each image comes with its id: the path
/// relative to the folder it was found in, or the file argument as given.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut walked = HashSet::new();
    for input in inputs {
        if input.is_dir() {
            let real_root = std::fs::canonicalize(input).map_err(|e| Error::io(input, e))?;
            walk(input, &real_root, input, &mut out, &mut walked)?;
        } else if input.exists() {
            out.push((input.clone(), input.display().to_string()));
        } else {
            return Err(ImageError::NoSuchImage {
                path: input.clone(),
            }
            .into());
        }
    }
    Ok(out)
}

/// The image files or folders a list file names, one a line (`tag --images-from`): each line a path
/// as written (a trailing `\r` dropped), empty lines skipped; a UTF-8 byte order mark at the start
/// (Windows editors write one) is not part of the first path.
pub fn read_image_list(path: &Path) -> Result<Vec<PathBuf>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|_| ImageError::ListLine {
            path: path.to_path_buf(),
            line: i + 1,
        })?;
        out.push(PathBuf::from(text));
    }
    Ok(out)
}

/// Whether a file name has an image extension `tag` reads.
pub fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// Adds the images under `dir` (found from `root`, whose resolved path is `real_root`) unless `dir`
/// was walked already.
fn walk(
    root: &Path,
    real_root: &Path,
    dir: &Path,
    out: &mut Vec<(PathBuf, String)>,
    walked: &mut HashSet<PathBuf>,
) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if !walked.insert(real) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.is_symlink()
                && std::fs::canonicalize(&p).is_ok_and(|target| target.starts_with(real_root))
            {
                continue;
            }
            walk(root, real_root, &p, out, walked)?;
        } else if is_image_name(&p) {
            let id = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push((p, id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_list_gives_its_paths_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(&list, b"a.jpg\r\n\nsub/b.png\n  spaced name.jpg\nimgs/").unwrap();
        let paths = read_image_list(&list).unwrap();
        let want = ["a.jpg", "sub/b.png", "  spaced name.jpg", "imgs/"];
        assert_eq!(paths, want.map(PathBuf::from));
        std::fs::write(&list, b"\xEF\xBB\xBFa.jpg\nb.jpg").unwrap();
        assert_eq!(
            read_image_list(&list).unwrap(),
            ["a.jpg", "b.jpg"].map(PathBuf::from)
        );
        std::fs::write(&list, b"a.jpg\n\xff\xfe.jpg\n").unwrap();
        let err = read_image_list(&list).unwrap_err().to_string();
        assert!(
            err.ends_with("list.txt:2: not a path: the line is not UTF-8"),
            "{err}"
        );
        let err = read_image_list(&dir.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }

    #[test]
    fn images_are_collected_recursively_with_relative_ids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        for f in ["b.JPG", "a.png", "notes.txt", "sub/c.jpeg"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let got = collect_images(&[d.path().to_path_buf()]).unwrap();
        let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, vec!["a.png", "b.JPG", "sub/c.jpeg"]);
        let missing = collect_images(&[d.path().join("nope.jpg")]).unwrap_err();
        assert!(missing.to_string().contains("nope.jpg"), "{missing}");
        // A link back to a folder above (a loop) and a second link to one folder: each folder is
        // walked once; a link to a folder outside is followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("o.png"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(d.path().join("sub"), d.path().join("again")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("z")).unwrap();
        let got = collect_images(&[d.path().to_path_buf()]).unwrap();
        let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, vec!["a.png", "b.JPG", "sub/c.jpeg", "z/o.png"]);
    }
}
