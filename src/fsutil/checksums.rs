//! Checksum lists in the format of GNU coreutils' `sha256sum`: a line `<64 hex digits>  <name>` per
//! file (a `*` for the second space marks binary mode, which Linux reads alike). tagfix writes one
//! into each training checkpoint folder, so that a resume or an evaluation finds a checkpoint whose
//! bytes changed on the disk after it was written (a bit flipped on a shared file system, a copy
//! damaged in transit), and `sha256sum -c SHA256SUMS` checks a copied checkpoint with coreutils alone.

use super::FileError;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The checksum list's name in the folder whose files it lists.
pub const CHECKSUM_FILE: &str = "SHA256SUMS";

/// Most bytes of a checksum list read: a checkpoint's lists a handful of files, and a hostile one
/// must not take the memory a huge file would.
const MAX_LIST_BYTES: u64 = 1 << 20;

/// Hex digits of a SHA-256 digest.
const DIGEST_HEX_LEN: usize = 64;

/// The files of one folder and their SHA-256 digests (lower-case hex), in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumList {
    pub entries: Vec<(String, String)>,
}

impl ChecksumList {
    /// The digest recorded for `name`.
    pub fn digest_of(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_str())
    }

    /// The list in `sha256sum`'s text format.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(name, digest)| format!("{digest}  {name}\n"))
            .collect()
    }

    /// Parses a list's text; `path` names it in errors. Each line is a digest of 64 hex digits, a
    /// space, a space or `*`, and a plain file name of the list's folder (no `/`, not `.` or `..`,
    /// listed once). Names `sha256sum` escapes (a line starting with `\`) are refused: tagfix writes
    /// none.
    pub fn parse(text: &str, path: &Path) -> std::result::Result<Self, FileError> {
        let malformed = |line: usize, problem: String| FileError::ChecksumList {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let mut entries: Vec<(String, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            let (digest, name) = split_line(line).map_err(|p| malformed(number, p))?;
            if entries.iter().any(|(n, _)| n == name) {
                return Err(malformed(number, format!("{name:?} is listed twice")));
            }
            entries.push((name.to_string(), digest.to_ascii_lowercase()));
        }
        if entries.is_empty() {
            return Err(malformed(0, "lists no file".into()));
        }
        Ok(ChecksumList { entries })
    }

    /// Digests each of `names` in the folder `dir` (in parallel: a checkpoint's files are
    /// gigabytes).
    pub fn of_files(dir: &Path, names: &[&str]) -> Result<Self> {
        let entries = names
            .par_iter()
            .map(|name| Ok((name.to_string(), super::sha256_file(&dir.join(name))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(ChecksumList { entries })
    }
}

/// A line's digest and name, or why it is not a `sha256sum` line.
fn split_line(line: &str) -> std::result::Result<(&str, &str), String> {
    if line.starts_with('\\') {
        return Err("escaped file names are not read".into());
    }
    let digest = line
        .get(..DIGEST_HEX_LEN)
        .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("does not start with {DIGEST_HEX_LEN} hex digits"))?;
    let name = line[DIGEST_HEX_LEN..]
        .strip_prefix("  ")
        .or_else(|| line[DIGEST_HEX_LEN..].strip_prefix(" *"))
        .ok_or("the digest is not followed by two spaces (or a space and '*') and a name")?;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!("{name:?} is not a file name of the list's folder"));
    }
    Ok((digest, name))
}

/// Writes `dir/SHA256SUMS` (atomically) with the digests of `names` in `dir`.
pub fn write_checksums(dir: &Path, names: &[&str]) -> Result<()> {
    write_list(dir, &ChecksumList::of_files(dir, names)?)
}

/// Writes `list` as `dir/SHA256SUMS` (atomically), for digests computed elsewhere (while the files
/// were written).
pub fn write_list(dir: &Path, list: &ChecksumList) -> Result<()> {
    super::write_bytes_atomic(&list_path(dir), list.to_text().as_bytes())
}

/// Reads `dir/SHA256SUMS`; `None` where the folder has none.
pub fn read_checksums(dir: &Path) -> Result<Option<ChecksumList>> {
    let path = list_path(dir);
    let file = match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        r => r.map_err(|e| Error::io(&path, e))?,
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_LIST_BYTES + 1),
        &mut bytes,
    )
    .map_err(|e| Error::io(&path, e))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) if t.len() as u64 <= MAX_LIST_BYTES => t,
        Ok(_) => {
            return Err(FileError::ChecksumList {
                path,
                line: 0,
                problem: format!("is longer than {MAX_LIST_BYTES} bytes"),
            }
            .into())
        }
        Err(_) => {
            return Err(FileError::ChecksumList {
                path,
                line: 0,
                problem: "is not UTF-8 text".into(),
            }
            .into())
        }
    };
    Ok(Some(ChecksumList::parse(&text, &path)?))
}

/// What [`verify_folder`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Every file named was listed and its bytes hash to the recorded digest.
    Matched,
    /// The folder has no `SHA256SUMS` (written before tagfix wrote them, or by something else).
    NoList,
}

/// Checks the files `names` of `dir` against its `SHA256SUMS`: each must be listed and hash to its
/// digest. A folder without a list is [`Verified::NoList`]; a list that omits one of `names`, a
/// file missing and a digest that differs are errors naming the file.
pub fn verify_folder(dir: &Path, names: &[&str]) -> Result<Verified> {
    match read_checksums(dir)? {
        Some(list) => verify_listed(dir, &list, names),
        None => Ok(Verified::NoList),
    }
}

/// [`verify_folder`] against the folder's list, already read.
fn verify_listed(dir: &Path, list: &ChecksumList, names: &[&str]) -> Result<Verified> {
    let list_path = list_path(dir);
    let recorded = names
        .iter()
        .map(|name| {
            list.digest_of(name)
                .map(|d| (*name, d))
                .ok_or_else(|| FileError::ChecksumList {
                    path: list_path.clone(),
                    line: 0,
                    problem: format!("lists no {name}"),
                })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    recorded.par_iter().try_for_each(|(name, digest)| {
        let path = dir.join(name);
        let found = super::sha256_file(&path)?;
        if found == *digest {
            return Ok(());
        }
        Err(Error::from(FileError::ChecksumMismatch {
            path,
            list: list_path.clone(),
            recorded: digest.to_string(),
            found,
        }))
    })?;
    Ok(Verified::Matched)
}

/// Checks one file against the `SHA256SUMS` beside it, where that lists it; `Verified::NoList`
/// otherwise.
pub fn verify_file(path: &Path) -> Result<Verified> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Verified::NoList);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match read_checksums(dir)? {
        Some(list) if list.digest_of(name).is_some() => verify_listed(dir, &list, &[name]),
        _ => Ok(Verified::NoList),
    }
}

/// The path of a folder's checksum list.
pub fn list_path(dir: &Path) -> PathBuf {
    dir.join(CHECKSUM_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn a_list_is_what_sha256sum_writes() {
        let dir = folder_with(&[("a.bin", b"abc"), ("b.json", b"")]);
        write_checksums(dir.path(), &["a.bin", "b.json"]).unwrap();
        let text = std::fs::read_to_string(list_path(dir.path())).unwrap();
        // `printf abc | sha256sum`, `sha256sum /dev/null`.
        assert_eq!(
            text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a.bin\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  b.json\n"
        );
        assert_eq!(
            verify_folder(dir.path(), &["a.bin", "b.json"]).unwrap(),
            Verified::Matched
        );
        assert_eq!(
            verify_file(&dir.path().join("a.bin")).unwrap(),
            Verified::Matched
        );
    }

    #[test]
    fn changed_bytes_of_the_same_length_are_found() {
        let dir = folder_with(&[("model.safetensors", b"0123456789")]);
        write_checksums(dir.path(), &["model.safetensors"]).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"0123456788").unwrap();
        let e = verify_folder(dir.path(), &["model.safetensors"]).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Input);
        let e = e.to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("SHA256SUMS") && e.contains("f76ecd51"),
            "{e}"
        );
        assert!(verify_file(&dir.path().join("model.safetensors")).is_err());
    }

    #[test]
    fn a_folder_without_a_list_or_a_file_it_does_not_list_is_not_verified() {
        let dir = folder_with(&[("a", b"x"), ("b", b"y")]);
        assert_eq!(verify_folder(dir.path(), &["a"]).unwrap(), Verified::NoList);
        write_checksums(dir.path(), &["a"]).unwrap();
        assert_eq!(
            verify_file(&dir.path().join("b")).unwrap(),
            Verified::NoList
        );
        let e = verify_folder(dir.path(), &["a", "b"]).unwrap_err();
        assert!(e.to_string().contains("lists no b"), "{e}");
        std::fs::remove_file(dir.path().join("a")).unwrap();
        let e = verify_folder(dir.path(), &["a"]).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Io, "{e}");
    }

    #[test]
    fn malformed_lists_are_refused_with_their_line() {
        let d = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let p = Path::new("SHA256SUMS");
        let parse = |t: &str| ChecksumList::parse(t, p).map_err(|e| e.to_string());
        assert_eq!(
            parse(&format!("{}  a\n{d} *b\n", d.to_uppercase()))
                .unwrap()
                .entries,
            vec![
                ("a".to_string(), d.to_string()),
                ("b".to_string(), d.to_string())
            ]
        );
        for (text, why) in [
            (String::new(), "SHA256SUMS:0: lists no file"),
            (format!("{d}  a\n{d}  a\n"), ":2: \"a\" is listed twice"),
            (format!("{}  a", &d[1..]), ":1: does not start with 64 hex"),
            (format!("{d} a"), ":1: the digest is not followed"),
            (format!("{d}  ../model"), "is not a file name"),
            (format!("{d}  "), "is not a file name"),
            (format!("\\{d}  a\\nb"), "escaped file names"),
            ("é".repeat(40), "does not start with 64 hex"),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_list_that_is_too_long_or_not_text_is_refused() {
        let dir = folder_with(&[(CHECKSUM_FILE, &[0xff, 0xfe])]);
        let e = read_checksums(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let long = vec![b'a'; MAX_LIST_BYTES as usize + 1];
        std::fs::write(list_path(dir.path()), long).unwrap();
        let e = read_checksums(dir.path()).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }
}
