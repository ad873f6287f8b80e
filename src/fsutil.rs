//! File-system helpers shared by every command: where an output goes and how it is written without
//! destroying anything (symbolic links, streams, `-`, inputs, temporary files), hashing, locating
//! `../shared`.

pub mod checksums;

use crate::error::{Error, ErrorKind, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where an output goes once `-`, symbolic links and special files are accounted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A regular file (existing or new) at the end of any symbolic links. It is replaced through a
    /// temporary file beside it and one rename, so a link keeps pointing at the new content.
    File(PathBuf),
    /// Standard output (`-`).
    Stdout,
    /// A FIFO, a character device or a `/proc` descriptor link (`/dev/stdout`): written in place,
    /// because renaming a file over it would replace the node instead of feeding it.
    Stream(PathBuf),
}

/// Why an output cannot be written where it was asked for, or a JSON input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: is a folder; give a file name")]
    OutputIsFolder { path: PathBuf },

    #[error(
        "{path}: is a block device or socket; tagfix writes regular files, pipes and character devices only"
    )]
    UnwritableKind { path: PathBuf },

    #[error("{path}: too many levels of symbolic links")]
    LinkLoop { path: PathBuf },

    #[error("{path}: output directory {dir} does not exist")]
    NoOutputDir { path: PathBuf, dir: PathBuf },

    #[error(
        "{output} is the input {input} (the same file): tagfix never writes over its inputs; choose another output"
    )]
    OverwritesInput { output: PathBuf, input: PathBuf },

    #[error("{first} and {second} are the same file: give each output its own name")]
    SameOutput { first: PathBuf, second: PathBuf },

    #[error("{} would all go to standard output; give file names to all but one", .outputs.join(" and "))]
    SeveralOnStdout { outputs: Vec<String> },

    /// A `SHA256SUMS` list ([`checksums`]) that cannot be read as one (`line` 0: the whole file).
    #[error("{}:{line}: {problem}", .path.display())]
    ChecksumList {
        path: PathBuf,
        line: usize,
        problem: String,
    },

    /// A file whose bytes no longer hash to the digest its folder's `SHA256SUMS` recorded.
    #[error(
        "{}: its bytes changed since they were written: sha256 {found}, {} recorded {recorded}",
        .path.display(),
        .list.display()
    )]
    ChecksumMismatch {
        path: PathBuf,
        list: PathBuf,
        recorded: String,
        found: String,
    },

    #[error("{path}:{line}: not valid JSON")]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

impl FileError {
    /// Outputs that clash are usage errors; the rest concern a file's content or kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FileError::OverwritesInput { .. }
            | FileError::SameOutput { .. }
            | FileError::SeveralOnStdout { .. } => ErrorKind::Usage,
            _ => ErrorKind::Input,
        }
    }
}

/// Symbolic links followed before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;
/// Random characters in a temporary file's name.
const TEMP_RAND_LEN: usize = 6;
/// Bytes of the destination's name kept in a temporary file's name (names are limited to 255).
const TEMP_NAME_MAX: usize = 200;

/// `true` for `-`, the name of standard output wherever tagfix writes a file.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Works out where `path` really goes: standard output, a stream, or the regular file at the end
/// of its symbolic links (whose folder must exist). Refuses folders and block devices.
pub fn resolve_output(path: &Path) -> Result<OutputTarget> {
    if is_stdout(path) {
        return Ok(OutputTarget::Stdout);
    }
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&current) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                parent_dir(path, &current)?;
                return Ok(OutputTarget::File(current));
            }
            Err(e) => return Err(Error::io(&current, e)),
            Ok(m) => m,
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            if is_proc_link(&current) {
                return Ok(OutputTarget::Stream(path.to_path_buf()));
            }
            let target = std::fs::read_link(&current).map_err(|e| Error::io(&current, e))?;
            current = match current.parent() {
                Some(dir) => dir.join(target),
                None => target,
            };
        } else if kind.is_file() {
            return Ok(OutputTarget::File(current));
        } else if kind.is_dir() {
            return Err(FileError::OutputIsFolder { path: path.into() }.into());
        } else if is_streamable(&kind) {
            return Ok(OutputTarget::Stream(path.to_path_buf()));
        } else {
            return Err(FileError::UnwritableKind { path: path.into() }.into());
        }
    }
    Err(FileError::LinkLoop { path: path.into() }.into())
}

/// A link inside `/proc` (`/dev/stdout` → `/proc/self/fd/1`) names an open descriptor, whose target
/// text (`pipe:[…]`, a deleted file) is no path to follow.
fn is_proc_link(link: &Path) -> bool {
    link.parent()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .is_some_and(|d| d.starts_with("/proc"))
}

#[cfg(unix)]
fn is_streamable(kind: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    kind.is_fifo() || kind.is_char_device()
}

#[cfg(not(unix))]
fn is_streamable(_kind: &std::fs::FileType) -> bool {
    false
}

/// The folder `file` goes to, which must exist (`shown` is the path the user gave, for the message).
fn parent_dir(shown: &Path, file: &Path) -> Result<PathBuf> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(FileError::NoOutputDir {
            path: shown.into(),
            dir,
        }
        .into());
    }
    Ok(dir)
}

/// Checks an output before long work: where it goes (see [`resolve_output`]), and removes the
/// temporary files interrupted runs left for the same destination (see [`remove_stale_temps`]).
pub fn check_output(path: &Path) -> Result<OutputTarget> {
    let target = resolve_output(path)?;
    if let OutputTarget::File(file) = &target {
        remove_stale_temps(file);
    }
    Ok(target)
}

/// The folder an output file goes to, which must exist (checked before long work, so a typo in
/// `--out` fails at once); a stream's folder for `-` and devices. See [`check_output`].
pub fn check_output_dir(path: &Path) -> Result<PathBuf> {
    match check_output(path)? {
        OutputTarget::File(file) => parent_dir(path, &file),
        OutputTarget::Stdout | OutputTarget::Stream(_) => Ok(PathBuf::from(".")),
    }
}

/// Refuses an output that is one of `inputs` (the same device and inode, so also through a hard or
/// symbolic link), before any work: replacing it would destroy the input. Streams and new files pass.
pub fn ensure_not_an_input<'a>(
    output: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    let Ok(out) = std::fs::metadata(output) else {
        return Ok(());
    };
    if is_stdout(output) || !out.is_file() {
        return Ok(());
    }
    for input in inputs {
        if std::fs::metadata(input).is_ok_and(|m| same_file(&out, &m, output, input)) {
            return Err(FileError::OverwritesInput {
                output: output.into(),
                input: input.into(),
            }
            .into());
        }
    }
    Ok(())
}

/// The argument check of every command that writes files: each output is checked before any work
/// ([`check_output`]), refused when it is one of the inputs ([`ensure_not_an_input`]) or the same
/// file as another output (the second would replace the first).
pub fn check_outputs<'a>(
    outputs: impl IntoIterator<Item = &'a Path>,
    inputs: &[&Path],
) -> Result<()> {
    let mut files: Vec<(PathBuf, &Path)> = Vec::new();
    for out in outputs {
        if let OutputTarget::File(file) = check_output(out)? {
            let key = canonical_file(&file);
            if let Some((_, first)) = files.iter().find(|(k, _)| *k == key) {
                return Err(FileError::SameOutput {
                    first: first.to_path_buf(),
                    second: out.to_path_buf(),
                }
                .into());
            }
            files.push((key, out));
        }
        ensure_not_an_input(out, inputs.iter().copied())?;
    }
    Ok(())
}

/// A regular file's path with its folder canonicalised, so that two spellings of one file compare
/// equal whether or not it exists yet.
fn canonical_file(file: &Path) -> PathBuf {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(dir), file.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => file.to_path_buf(),
    }
}

/// Refuses two outputs on standard output, where they would interleave. `outputs` pairs what the
/// user calls each output (`--out`, `the report`) with whether it goes to standard output.
pub fn ensure_one_stdout(outputs: &[(&str, bool)]) -> Result<()> {
    let on_stdout: Vec<&str> = outputs.iter().filter(|o| o.1).map(|o| o.0).collect();
    if on_stdout.len() > 1 {
        return Err(FileError::SeveralOnStdout {
            outputs: on_stdout.iter().map(|o| o.to_string()).collect(),
        }
        .into());
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata, _: &Path, _: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata, a: &Path, b: &Path) -> bool {
    matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// Writes an output without ever destroying what is there: a regular file (also behind symbolic
/// links) is replaced atomically (a temporary `.NAME.tagfix-XXXXXX.tmp` beside it, renamed once
/// `write` has succeeded, removed on every error); `-` writes standard output; a FIFO or character
/// device is written in place.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    match resolve_output(path)? {
        OutputTarget::Stdout => stream(path, &mut std::io::stdout().lock(), write),
        OutputTarget::Stream(p) => stream(path, &mut open_stream(&p)?, write),
        OutputTarget::File(target) => {
            let mut tmp = create_temp(path, &target, "")?;
            {
                let mut buf = std::io::BufWriter::new(tmp.as_file_mut());
                write(&mut buf).map_err(|e| Error::io(path, e))?;
                buf.flush().map_err(|e| Error::io(path, e))?;
            }
            commit(tmp, path, &target)
        }
    }
}

/// A temporary file for an output that its writer fills itself before [`persist`] (a stream of
/// rows of unknown length): beside the destination, named after it and locked, for a regular file;
/// a private one for standard output or a stream, which get the finished content.
pub fn output_temp(path: &Path) -> Result<tempfile::NamedTempFile> {
    match resolve_output(path)? {
        OutputTarget::File(target) => create_temp(path, &target, ""),
        _ => tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e)),
    }
}

/// Completes an output started with [`output_temp`]: renamed over a regular file, copied to
/// standard output or a stream.
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    match resolve_output(path)? {
        OutputTarget::File(target) => commit(tmp, path, &target),
        _ => {
            let mut file = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
            write_atomic(path, |w| std::io::copy(&mut file, w).map(drop))
        }
    }
}

/// Like [`write_atomic`] for writers that need a file name (image encoders that pick the format by
/// extension): `render` fills a temporary file with the destination's extension.
pub fn write_atomic_via_path<F>(path: &Path, render: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    match resolve_output(path)? {
        OutputTarget::File(target) => {
            let tmp = create_temp(path, &target, &ext)?;
            render(tmp.path())?;
            commit(tmp, path, &target)
        }
        _ => {
            // A stream gets a finished file: rendered privately, then copied.
            let tmp = tempfile::Builder::new()
                .suffix(&ext)
                .tempfile()
                .map_err(|e| Error::io(std::env::temp_dir(), e))?;
            render(tmp.path())?;
            let mut file = std::fs::File::open(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
            write_atomic(path, |w| std::io::copy(&mut file, w).map(drop))
        }
    }
}

/// Appends to an output (a CI step summary): `-` is standard output; a symbolic link's target, a FIFO
/// or a device is appended to as the system resolves it; a new file is created.
pub fn append_output(path: &Path, bytes: &[u8]) -> Result<()> {
    if is_stdout(path) {
        return stream(path, &mut std::io::stdout().lock(), |w| w.write_all(bytes));
    }
    resolve_output(path)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| Error::io(path, e))
}

/// Opens a FIFO or device for writing (a FIFO waits for its reader). Appending leaves a regular file
/// that `/dev/stdout` leads to (`>> log`) intact.
fn open_stream(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn stream<F>(path: &Path, out: &mut dyn Write, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let mut buf = std::io::BufWriter::new(out);
    write(&mut buf)
        .and_then(|_| buf.flush())
        .map_err(|e| Error::io(path, e))
}

/// The start of the temporary files' names for `target`: `.NAME.tagfix-`.
fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = name.len().min(TEMP_NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.tagfix-", &name[..end])
}

/// `name` is a temporary file of the destination whose prefix is `prefix`: `PREFIX` + random
/// alphanumerics + `.tmp`, optionally followed by the destination's extension.
fn is_temp_of(name: &str, prefix: &str, ext: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let Some((random, tail)) = rest.split_at_checked(TEMP_RAND_LEN) else {
        return false;
    };
    random.bytes().all(|b| b.is_ascii_alphanumeric())
        && (tail == ".tmp" || tail.strip_prefix(".tmp") == Some(ext) && !ext.is_empty())
}

/// Removes the temporary files a killed run left for `target` (named after it, and locked by no
/// live writer, since every writer holds a lock on its temporary file), saying so on stderr.
/// Returns what was removed. Temporary files locked by a running tagfix are left alone.
pub fn remove_stale_temps(target: &Path) -> Vec<PathBuf> {
    let Ok(dir) = parent_dir(target, target) else {
        return Vec::new();
    };
    let prefix = temp_prefix(target);
    let ext = target
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !is_temp_of(&name.to_string_lossy(), &prefix, &ext) {
            continue;
        }
        let path = entry.path();
        let unlocked = std::fs::File::open(&path).is_ok_and(|f| try_lock(&f).unwrap_or(false));
        if unlocked && std::fs::remove_file(&path).is_ok() {
            tracing::warn!(
                "removed {}, a temporary file an interrupted run left for {}",
                path.display(),
                target.display()
            );
            removed.push(path);
        }
    }
    removed
}

/// Takes the exclusive advisory lock on `file` without waiting: `Ok(false)` when another process
/// holds it. The lock goes with the open file, so a killed writer's lock is gone.
#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Without advisory locks no temporary file can be shown to be abandoned, so none is removed.
#[cfg(not(unix))]
fn try_lock(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(false)
}

/// A locked temporary file beside `target`, after removing stale ones.
fn create_temp(shown: &Path, target: &Path, ext: &str) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(shown, target)?;
    remove_stale_temps(target);
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .suffix(&format!(".tmp{ext}"))
        .rand_bytes(TEMP_RAND_LEN)
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    // Without a lock (a file system without flock) the file is still removed on error, just not
    // recognised as in use by a concurrent cleaner.
    let _ = try_lock(tmp.as_file());
    Ok(tmp)
}

/// Flushes a file's data, or a folder's entries, to the disk (`fsync`): what was written to it
/// survives the machine dying, not only the process. On a file system that cannot sync a folder the
/// folder's sync is skipped.
pub fn sync_to_disk(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    match file.sync_all() {
        Err(e) if path.is_dir() && e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        r => r.map_err(|e| Error::io(path, e)),
    }
}

/// Bytes an unprivileged process may still write on the file system holding `path` (`statvfs`'s
/// available blocks times their size); `None` where the system cannot say, which includes a file
/// system that reports no blocks at all (some FUSE and object-store mounts do, and take writes all
/// the same). A quota is not counted, so a write can still fail with space left.
#[cfg(unix)]
pub fn available_space(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    if stat.f_blocks == 0 {
        return None;
    }
    stat.f_bavail.checked_mul(stat.f_frsize)
}

#[cfg(not(unix))]
pub fn available_space(_: &Path) -> Option<u64> {
    None
}

/// The bytes of the regular files directly in `dir` (0 where it cannot be listed).
pub fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Makes the temporary file durable with the destination's permissions (0644 for a new file; the
/// temporary file is owner-only) and renames it over `target`.
fn commit(tmp: tempfile::NamedTempFile, shown: &Path, target: &Path) -> Result<()> {
    let file = tmp.as_file();
    file.sync_all().map_err(|e| Error::io(shown, e))?;
    let permissions = std::fs::metadata(target)
        .map(|m| m.permissions())
        .ok()
        .or_else(new_file_permissions);
    if let Some(p) = permissions {
        file.set_permissions(p).map_err(|e| Error::io(shown, e))?;
    }
    tmp.persist(target).map_err(|e| Error::io(shown, e.error))?;
    Ok(())
}

#[cfg(unix)]
fn new_file_permissions() -> Option<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Some(std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn new_file_permissions() -> Option<std::fs::Permissions> {
    None
}

/// Writes bytes atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Most bytes [`read`] takes from an input that is not a regular file (a FIFO, `/dev/stdin`, a
/// character device): such an input has no size to trust, and `/dev/zero` would never end.
pub const STREAM_LIMIT: u64 = 1 << 30;

/// `std::fs::read` for a user's input file: a regular file is read whole (its size bounds it);
/// anything else at most [`STREAM_LIMIT`] bytes, beyond which it is an error rather than memory
/// growing until the process is killed (`--vocab /dev/zero` did that).
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    read_with_limit(path, STREAM_LIMIT)
}

/// [`read`] with another limit on what a stream may give.
fn read_with_limit(path: &Path, stream_limit: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_file() {
        // Reserved fallibly, as `std::fs::read` does: a file larger than memory is an error, not an
        // abort.
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(usize::try_from(meta.len()).unwrap_or(usize::MAX))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        file.read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    let mut bytes = Vec::new();
    file.take(stream_limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > stream_limit {
        return Err(std::io::Error::other(format!(
            "not a regular file, and more than {stream_limit} bytes came from it: give a file"
        )));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text (an invalid byte is `InvalidData`, as `std::fs::read_to_string` says).
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Reads a JSON file; a syntax error names the file and line.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        FileError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            source: e,
        }
        .into()
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
/// elsewhere in a checkout). Returns `None` when none exists. The path is made absolute, so a
/// relative `TAGFIX_SHARED=../shared` still names the same folder for a child process started in
/// another working directory.
pub fn shared_dir() -> Option<PathBuf> {
    let absolute_dir = |p: PathBuf| p.canonicalize().ok().filter(|p| p.is_dir());
    if let Some(p) = std::env::var_os(SHARED_ENV) {
        return absolute_dir(PathBuf::from(p));
    }
    let candidates = [
        PathBuf::from("../shared"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    ];
    candidates.into_iter().find_map(absolute_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_space_is_known_for_a_folder_and_not_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_space(dir.path()).is_some_and(|b| b > 0));
        assert_eq!(available_space(&dir.path().join("missing")), None);
        // A file system that reports no blocks (procfs here, some FUSE mounts elsewhere) cannot say.
        #[cfg(target_os = "linux")]
        assert_eq!(available_space(Path::new("/proc")), None);
    }

    #[test]
    fn inputs_that_never_end_are_cut_off_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tags.txt");
        std::fs::write(&file, "cat\ndog\n").unwrap();
        assert_eq!(read(&file).unwrap(), b"cat\ndog\n");
        // A regular file is read whole whatever the stream limit.
        assert_eq!(read_with_limit(&file, 2).unwrap().len(), 8);
        let zero = Path::new("/dev/zero");
        if zero.exists() {
            let e = read_with_limit(zero, 4096).unwrap_err().to_string();
            assert_eq!(
                e,
                "not a regular file, and more than 4096 bytes came from it: give a file"
            );
        }
        let null = Path::new("/dev/null");
        if null.exists() {
            assert!(read(null).unwrap().is_empty());
        }
        std::fs::write(&file, b"\xff").unwrap();
        assert_eq!(
            read_to_string(&file).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }

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

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    #[test]
    fn symbolic_links_lead_to_the_file_that_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        let chain = dir.path().join("chain.json");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        assert_eq!(
            resolve_output(&chain).unwrap(),
            OutputTarget::File(real.clone())
        );
        write_bytes_atomic(&chain, b"new").unwrap();
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert!(std::fs::symlink_metadata(&chain).unwrap().is_symlink());
        assert_eq!(names(dir.path()), ["chain.json", "link.json", "real.json"]);
        // A dangling link: its target is created.
        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink("made.json", &dangling).unwrap();
        write_bytes_atomic(&dangling, b"made").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("made.json")).unwrap(),
            b"made"
        );
        let looped = dir.path().join("loop");
        std::os::unix::fs::symlink("loop", &looped).unwrap();
        let err = write_bytes_atomic(&looped, b"x").unwrap_err().to_string();
        assert!(err.contains("too many levels"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn streams_and_refusals_are_told_apart() {
        use rustix::fs::{mknodat, FileType, Mode, CWD};
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_output(Path::new("-")).unwrap(),
            OutputTarget::Stdout
        );
        let fifo = dir.path().join("pipe");
        mknodat(CWD, &fifo, FileType::Fifo, Mode::from(0o600), 0).unwrap();
        assert_eq!(
            resolve_output(&fifo).unwrap(),
            OutputTarget::Stream(fifo.clone())
        );
        let null = Path::new("/dev/null");
        assert_eq!(
            resolve_output(null).unwrap(),
            OutputTarget::Stream(null.into())
        );
        write_bytes_atomic(null, b"gone").unwrap();
        assert!(std::fs::metadata(null)
            .unwrap()
            .file_type()
            .is_char_device());
        if Path::new("/dev/stdout").exists() {
            let out = Path::new("/dev/stdout");
            assert_eq!(
                resolve_output(out).unwrap(),
                OutputTarget::Stream(out.into())
            );
        }
        if Path::new("/dev/full").exists() {
            let err = write_bytes_atomic(Path::new("/dev/full"), b"x").unwrap_err();
            assert!(err.to_string().contains("/dev/full"), "{err}");
        }
        let err = resolve_output(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        let err = resolve_output(&dir.path().join("no/such.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn temporary_files_are_named_after_their_destination() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        let mut seen = Vec::new();
        write_atomic(&out, |w| {
            seen = names(dir.path());
            w.write_all(b"x")
        })
        .unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(is_temp_of(&seen[0], ".out.txt.tagfix-", ".txt"), "{seen:?}");
        assert_eq!(names(dir.path()), ["out.txt"]);
        assert!(is_temp_of(
            ".a.png.tagfix-Ab3xY9.tmp.png",
            ".a.png.tagfix-",
            ".png"
        ));
        assert!(!is_temp_of(
            ".a.png.tagfix-Ab3xY9.tmp.svg",
            ".a.png.tagfix-",
            ".png"
        ));
        assert!(!is_temp_of(
            ".a.png.tagfix-Ab3.tmp",
            ".a.png.tagfix-",
            ".png"
        ));
        assert!(!is_temp_of(
            ".b.png.tagfix-Ab3xY9.tmp",
            ".a.png.tagfix-",
            ".png"
        ));
        let long = "n".repeat(250);
        assert!(temp_prefix(Path::new(&long)).len() < 255 - TEMP_RAND_LEN - 4);
    }

    #[cfg(unix)]
    #[test]
    fn stale_temporary_files_of_the_same_destination_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("data.json");
        let stale = dir.path().join(".data.json.tagfix-Qw3rty.tmp");
        let in_use = dir.path().join(".data.json.tagfix-Busy01.tmp");
        let other = dir.path().join(".other.json.tagfix-Qw3rty.tmp");
        let unrelated = dir.path().join(".data.json.tagfix-notmine.tmp");
        for p in [&stale, &in_use, &other, &unrelated] {
            std::fs::write(p, "partial").unwrap();
        }
        let holder = std::fs::File::open(&in_use).unwrap();
        assert!(try_lock(&holder).unwrap());
        assert_eq!(check_output(&out).unwrap(), OutputTarget::File(out.clone()));
        assert!(!stale.exists());
        assert!(in_use.exists() && other.exists() && unrelated.exists());
        drop(holder);
        write_bytes_atomic(&out, b"{}").unwrap();
        assert!(!in_use.exists());
        assert_eq!(
            names(dir.path()),
            [
                ".data.json.tagfix-notmine.tmp",
                ".other.json.tagfix-Qw3rty.tmp",
                "data.json"
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_input_is_never_an_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.json");
        std::fs::write(&input, "[]").unwrap();
        let hard = dir.path().join("hard.json");
        std::fs::hard_link(&input, &hard).unwrap();
        let soft = dir.path().join("soft.json");
        std::os::unix::fs::symlink(&input, &soft).unwrap();
        for out in [&input, &hard, &soft] {
            let err = check_outputs([out.as_path()], &[input.as_path()]).unwrap_err();
            assert!(
                err.to_string().contains("never writes over its inputs"),
                "{err}"
            );
        }
        let other = dir.path().join("other.json");
        std::fs::write(&other, "{}").unwrap();
        check_outputs([other.as_path(), &dir.path().join("new.json")], &[&input]).unwrap();
        check_outputs(
            [Path::new("-"), Path::new("/dev/null")],
            &[Path::new("/dev/null")],
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let twice = dir.path().join("sub/../new.json");
        let err = check_outputs([dir.path().join("new.json").as_path(), &twice], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("give each output its own name"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        write_bytes_atomic(&out, b"a").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o644);
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_bytes_atomic(&out, b"b").unwrap();
        assert_eq!(mode(&out), 0o600);
    }

    #[test]
    fn one_output_on_stdout_at_most() {
        ensure_one_stdout(&[("--out -", false), ("the report", true)]).unwrap();
        let err = ensure_one_stdout(&[("--out -", true), ("the report", true)]).unwrap_err();
        assert!(err.to_string().contains("--out - and the report"), "{err}");
    }

    #[test]
    fn sha256_of_known_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
