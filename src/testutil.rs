//! Helpers for the unit tests (compiled only under `cfg(test)`, never part of the public API):
//! a test that needs material which may be absent skips with its reason printed, and fails under CI.
//! `tests/common/` holds the same rule for the integration tests.

use std::path::PathBuf;

/// True under CI (`CI=true` or `CI=1`), where missing material is a failure rather than a skip.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips `test` for `reason`: prints `SKIPPED test: reason` and returns `None`; under CI it panics
/// with the same words instead.
pub(crate) fn skip<T>(test: &str, reason: impl std::fmt::Display) -> Option<T> {
    if in_ci() {
        panic!("{test}: {reason} (CI=true: a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {reason}");
    None
}

/// The shared material folder ([`crate::fsutil::shared_dir`]), or a [`skip`] when it is absent.
pub(crate) fn shared_dir_for_test(test: &str) -> Option<PathBuf> {
    crate::fsutil::shared_dir().or_else(|| {
        skip(
            test,
            format_args!(
                "shared material not found (set {} or provide ../shared)",
                crate::fsutil::SHARED_ENV
            ),
        )
    })
}
