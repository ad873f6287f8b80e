//! File-system helpers shared by every command: atomic writes, hashing, locating `../shared`.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes a file atomically: the content goes to a temporary file in the same directory, which is
/// renamed over `path` only once `write` has succeeded. On error nothing is left behind.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let dir = check_output_dir(path)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tagfix-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    {
        let mut buf = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut buf).map_err(|e| Error::io(path, e))?;
        buf.flush().map_err(|e| Error::io(path, e))?;
    }
    persist(tmp, path)
}

/// Syncs a finished temporary file (made in `path`'s folder) and renames it over `path`: the last
/// step of [`write_atomic`], for writers that stream into the temporary file themselves.
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    // temporary files are created owner-only; the result should be an ordinary readable file
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// The folder an output file goes to, which must exist (checked before long work, so a typo in
/// `--out` fails at once).
pub fn check_output_dir(path: &Path) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::invalid(
            path,
            format!("output directory {} does not exist", dir.display()),
        ));
    }
    Ok(dir)
}

/// Writes bytes atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Reads a JSON file; a syntax error names the file and line.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("not valid JSON: {e}"),
    })
}

/// Lower-case hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Environment variable naming the shared material folder (the one holding `ram/`, `reference/`).
pub const SHARED_ENV: &str = "TAGFIX_SHARED";

/// Locates the shared material folder: `$TAGFIX_SHARED`, else `../shared` relative to the current
/// directory, else `../shared` relative to the crate's source folder (for binaries run from
/// elsewhere in a checkout). Returns `None` when none exists.
pub fn shared_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SHARED_ENV) {
        let p = PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    let candidates = [
        PathBuf::from("../shared"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    ];
    candidates.into_iter().find(|p| p.is_dir())
}

/// For tests that read the shared material: returns its folder, or `None` after printing why the
/// test is skipped. Under CI (`CI=true`) a missing folder is a failure, never a silent skip.
pub fn shared_dir_for_test(test: &str) -> Option<PathBuf> {
    match shared_dir() {
        Some(d) => Some(d),
        None if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => panic!(
            "{test}: the shared material folder is missing (set {SHARED_ENV} or provide ../shared); CI must not skip"
        ),
        None => {
            eprintln!("SKIPPED {test}: shared material not found (set {SHARED_ENV} or provide ../shared)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_nothing_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        let err = write_atomic(&out, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(err.is_err());
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_bytes_atomic(&out, b"ok").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"ok");
    }

    #[test]
    fn sha256_of_known_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
