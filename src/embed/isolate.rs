//! ONNX Runtime opens each model in a helper process first, so that a model file that crashes it
//! ends the helper rather than tagfix. ONNX Runtime's C++ aborts on some malformed graphs instead of
//! returning an error: a `Split` node whose `num_outputs` disagrees with its outputs fails a bounds
//! assertion while the session is created (found by mutating the CLIP fixture's graph). A damaged
//! or hostile `model.onnx` then becomes an error that names the file and how the helper ended.
//!
//! The helper is tagfix itself, started with a hidden subcommand and sent an [`OpenRequest`] on
//! its standard input; the command line names its own executable once ([`use_helper`]). A program
//! that uses the library without naming one opens models in its own process, as before.
//!
//! Opening a model twice costs its load time again (0.45 s for MiniLM), so a model the helper opened
//! is remembered: an empty file in `$XDG_CACHE_HOME/tagfix/onnx-opened/` (else `~/.cache/…`) named
//! by the hash of the model's path, size, modification time and inode and of the ONNX Runtime
//! library's. A model replaced or rewritten is opened apart again; without a writable cache folder,
//! every time.

use super::encoder::{open_session, EncoderOptions};
use super::{Device, EmbedError};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

/// The hidden subcommand the helper runs.
pub const HELPER_COMMAND: &str = "internal-open-onnx";

static HELPER: OnceLock<PathBuf> = OnceLock::new();

/// Models are opened in a helper process running `exe` (tagfix) from now on.
pub fn use_helper(exe: PathBuf) {
    let _ = HELPER.set(exe);
}

/// What the helper is asked to open: a model, with the ONNX Runtime library the caller loads.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpenRequest {
    pub onnx: PathBuf,
    pub ort_lib: PathBuf,
}

/// How opening a model in the helper process went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apart {
    /// It opened the model (now, or an earlier run did: remembered).
    Opened,
    /// ONNX Runtime refused the model with an ordinary error: the helper's last line.
    Refused(String),
    /// ONNX Runtime ended the helper: the signal, and the helper's last line.
    Crashed { signal: String, said: String },
    /// No helper is named (a program using the library without [`use_helper`]).
    NoHelper,
    /// The helper could not be started (why).
    NotStarted(String),
}

/// Opens `onnx` with the ONNX Runtime library `ort_lib` in the helper process (CPU provider, one
/// thread: graph checks and optimisations, where the crashes found happen, run there whatever the
/// device), unless the cache remembers it opened.
pub fn open_apart(onnx: &Path, ort_lib: &Path) -> Apart {
    let Some(exe) = HELPER.get() else {
        return Apart::NoHelper;
    };
    let stamp = opened_stamp(onnx, ort_lib);
    if stamp.as_ref().is_some_and(|s| s.is_file()) {
        return Apart::Opened;
    }
    let request = OpenRequest {
        onnx: onnx.to_path_buf(),
        ort_lib: ort_lib.to_path_buf(),
    };
    let (status, said) = match run_helper(exe, &request) {
        Ok(ended) => ended,
        Err(e) => return Apart::NotStarted(format!("could not run {}: {e}", exe.display())),
    };
    if status.success() {
        if let Some(stamp) = stamp {
            remember(&stamp);
        }
        return Apart::Opened;
    }
    match crash_of(status) {
        Some(signal) => Apart::Crashed {
            signal,
            said: last_line(&said),
        },
        // The helper's error line, without the "error: " every tagfix error line starts with.
        None => {
            let line = last_line(&said);
            Apart::Refused(line.strip_prefix("error: ").unwrap_or(&line).to_string())
        }
    }
}

/// [`open_apart`] before a model is opened in this process: an error when the helper crashed;
/// otherwise this process goes on to open it (and reports an ordinary error itself, in full).
pub fn open_in_helper(onnx: &Path, ort_lib: &Path) -> Result<()> {
    match open_apart(onnx, ort_lib) {
        Apart::Crashed { signal, said } => Err(EmbedError::RuntimeCrashed {
            path: onnx.to_path_buf(),
            signal,
            said,
        }
        .into()),
        Apart::NotStarted(why) => {
            tracing::warn!("{why}; opening {} in this process", onnx.display());
            Ok(())
        }
        Apart::Opened | Apart::Refused(_) | Apart::NoHelper => Ok(()),
    }
}

/// The file that says the helper opened `onnx` with `ort_lib` as they are now (see the module's
/// documentation); `None` without a cache folder or when either cannot be read.
fn opened_stamp(onnx: &Path, ort_lib: &Path) -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let mut key = String::new();
    for file in [onnx, ort_lib] {
        key.push_str(&file_identity(file)?);
    }
    let name = crate::fsutil::sha256_hex(key.as_bytes());
    Some(cache.join("tagfix").join("onnx-opened").join(name))
}

/// A file's canonical path, size, modification time and inode, as one line.
fn file_identity(file: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(file).ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    Some(format!(
        "{}\t{}\t{}.{:09}\t{}:{}\n",
        path.display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.dev(),
        meta.ino()
    ))
}

/// Leaves the stamp behind (quietly not, where the cache folder cannot be written).
fn remember(stamp: &Path) {
    let made = stamp
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::File::create(stamp).map(drop));
    if let Err(e) = made {
        tracing::debug!(
            "cannot remember the opened model in {}: {e}",
            stamp.display()
        );
    }
}

/// Runs the helper on `request`: how it ended and what it wrote to its standard error.
fn run_helper(exe: &Path, request: &OpenRequest) -> std::io::Result<(ExitStatus, String)> {
    let mut child = Command::new(exe)
        .arg(HELPER_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that died before reading leaves a broken pipe here; its status says why.
        let _ = stdin.write_all(&serde_json::to_vec(request).map_err(std::io::Error::other)?);
    }
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        // At most 64 KiB of it: the last line is quoted.
        let _ = stderr.by_ref().take(64 << 10).read_to_string(&mut said);
        std::io::copy(&mut stderr, &mut std::io::sink())?;
    }
    Ok((child.wait()?, said))
}

/// The signal that ended a process, by name, when one did.
fn crash_of(status: ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal()?;
    let name = match signal {
        libc::SIGABRT => "SIGABRT (an assertion or abort)",
        libc::SIGSEGV => "SIGSEGV (an invalid memory access)",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE (an arithmetic fault)",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL (killed: out of memory, or by hand)",
        _ => return Some(format!("signal {signal}")),
    };
    Some(name.to_string())
}

/// The last non-empty line of `text`, at most 300 characters of it.
fn last_line(text: &str) -> String {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty());
    line.map(|l| l.chars().take(300).collect())
        .unwrap_or_default()
}

/// The helper's side: reads an [`OpenRequest`] from standard input and opens its model.
pub fn serve(input: impl Read) -> Result<()> {
    let request: OpenRequest =
        serde_json::from_reader(input).map_err(|source| EmbedError::HelperRequest {
            command: HELPER_COMMAND,
            source,
        })?;
    let opts = EncoderOptions {
        device: Device::Cpu,
        threads: Some(1),
        ..EncoderOptions::default()
    };
    open_session(&request.onnx, &opts, &request.ort_lib)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_and_exits_are_not_crashes() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(crash_of(ExitStatus::from_raw(0)), None);
        assert_eq!(crash_of(ExitStatus::from_raw(2 << 8)), None);
        assert!(crash_of(ExitStatus::from_raw(libc::SIGABRT))
            .unwrap()
            .starts_with("SIGABRT"));
        assert_eq!(crash_of(ExitStatus::from_raw(33)).unwrap(), "signal 33");
        assert_eq!(last_line("a\nlast words\n\n"), "last words");
        assert_eq!(last_line(""), "");
    }

    #[test]
    fn a_rewritten_model_is_opened_apart_again() {
        let dir = tempfile::tempdir().unwrap();
        let (model, lib) = (dir.path().join("model.onnx"), dir.path().join("lib.so"));
        std::fs::write(&model, b"graph").unwrap();
        std::fs::write(&lib, b"library").unwrap();
        let id = |p: &Path| file_identity(p).unwrap();
        let before = id(&model);
        assert!(before.contains("model.onnx\t5\t"), "{before}");
        assert_eq!(id(&model), before);
        // Rewritten in place: the same inode, size and bytes, a later modification time.
        std::fs::write(&model, b"graph").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&model)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_ne!(id(&model), before, "same size and bytes, newer time");
        assert_ne!(id(&lib), id(&model));
        assert!(file_identity(&dir.path().join("missing.onnx")).is_none());
    }
}
