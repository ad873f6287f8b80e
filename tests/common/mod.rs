//! Helpers shared by the integration tests: where a test's material lives (a test whose material is
//! absent skips with its reason printed, and fails under CI), a builder for `tagfix` commands, and
//! (feature `train`) the model and training tests' setup.
#![allow(dead_code)]

#[cfg(feature = "train")]
mod model;
#[cfg(feature = "train")]
pub mod train;

// Not every test binary that includes this module uses the model helpers.
#[cfg(feature = "train")]
#[allow(unused_imports)]
pub use model::*;

use assert_cmd::Command;
use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// True under CI (`CI=true` or `CI=1`), where missing material is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips `test` for `reason`: prints `SKIPPED test: reason` and returns `None`; under CI it panics
/// with the same words instead. Every test that can return early goes through here (or through
/// [`skip_tool_ci_lacks`]), so no skip is silent.
pub fn skip<T>(test: &str, reason: impl Display) -> Option<T> {
    let test = label(test);
    if in_ci() {
        panic!("{test}: {reason} (CI=true: a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {reason}");
    None
}

/// Skips `test` for want of an optional tool that CI's setup (scripts/setup.sh) does not install:
/// prints the reason, under CI too, and never fails. The caller names the tool and says why CI lacks it.
pub fn skip_tool_ci_lacks<T>(test: &str, reason: impl Display) -> Option<T> {
    let test = label(test);
    eprintln!("SKIPPED {test}: {reason} (an optional tool that CI does not install)");
    None
}

/// `test`, preceded by the running test's name (the harness names each test's thread after it) when
/// `test` names a shared setup such as "RAM++ reference tests" rather than the test itself.
fn label(test: &str) -> String {
    match std::thread::current().name() {
        Some(name) if name != test && name != "main" => format!("{name} ({test})"),
        _ => test.to_string(),
    }
}

/// The shared material folder (`$TAGFIX_SHARED`, else `../shared`), or a [`skip`] when it is absent.
pub fn shared_dir_for_test(test: &str) -> Option<PathBuf> {
    tagfix::fsutil::shared_dir().or_else(|| {
        skip(
            test,
            format_args!(
                "shared material not found (set {} or provide ../shared)",
                tagfix::fsutil::SHARED_ENV
            ),
        )
    })
}

/// `rel` inside the shared material folder, or a [`skip`] when the folder or that file is absent.
pub fn shared_file(rel: &str, test: &str) -> Option<PathBuf> {
    let p = shared_dir_for_test(test)?.join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip(test, format_args!("{} not found", p.display()))
    }
}

/// A model directory installed by scripts/setup.sh (`models/<name>`, or `$TAGFIX_TEST_MODELS/<name>`:
/// scripts/check-fresh-setup.sh points it at a fresh copy's fixtures), or a [`skip`] when it lacks
/// its descriptor.
pub fn model_dir_for_test(name: &str, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TAGFIX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("models"))
        .join(name);
    if dir.join("descriptor.toml").is_file() {
        return Some(dir);
    }
    skip(
        test,
        format_args!("{} is missing; scripts/setup.sh installs it", dir.display()),
    )
}

/// A file of the checkout that scripts/setup.sh installs (`rel` from the crate root), or a [`skip`].
pub fn setup_file(rel: &str, test: &str) -> Option<PathBuf> {
    let p = crate_root().join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip(
            test,
            format_args!("{} is missing; scripts/setup.sh installs it", p.display()),
        )
    }
}

/// The crate's own folder (where `models/`, `fixtures/` and `scripts/` are).
pub fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tagfix` as built for these tests, with the shared material passed on as `TAGFIX_SHARED` when it
/// is found (so the binary sees the same folder whatever its working directory).
pub fn tagfix() -> Command {
    let mut c = Command::cargo_bin("tagfix").unwrap();
    if let Some(shared) = tagfix::fsutil::shared_dir() {
        c.env(tagfix::fsutil::SHARED_ENV, shared);
    }
    c
}

/// One test's `tagfix` runs: a temporary folder for its files, and the flags every command repeats
/// (`--quiet` before the subcommand, e.g. `--vocab FILE` after it).
pub struct Context {
    pub dir: tempfile::TempDir,
    quiet: bool,
    flags: Vec<OsString>,
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            quiet: false,
            flags: Vec::new(),
        }
    }

    /// Every command runs with `--quiet`.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Every command gets `flag value` right after its subcommand (`--vocab tags.txt`).
    pub fn flag(mut self, flag: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.flags.push(flag.into());
        self.flags.push(value.as_ref().into());
        self
    }

    /// `name` inside the temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tagfix [--quiet] SUBCOMMAND FLAGS...`, ready for more arguments.
    pub fn cmd(&self, subcommand: &str) -> Command {
        let mut c = tagfix();
        if self.quiet {
            c.arg("--quiet");
        }
        c.arg(subcommand).args(&self.flags);
        c
    }
}
