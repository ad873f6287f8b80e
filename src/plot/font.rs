//! The font the figures are drawn with: found once, from `$TAGFIX_FONT` or the system's usual places.

use super::PlotError;
use crate::error::Result;
use plotters::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Environment variable naming a TrueType font for plot text.
pub const FONT_ENV: &str = "TAGFIX_FONT";

/// Where a sans-serif TrueType font is looked for when `$TAGFIX_FONT` is not set (Debian's
/// `fonts-dejavu-core`, which `scripts/setup.sh` installs, first).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Why no font could be registered (kept, and cloned, for every later figure of the process).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FontError {
    #[error(
        "no TrueType font for plot text: set {FONT_ENV} to a .ttf file or install fonts-dejavu-core (looked at {})",
        .candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { candidates: Vec<PathBuf> },

    #[error("{path}: {cause}")]
    Unreadable {
        path: PathBuf,
        cause: std::sync::Arc<std::io::Error>,
    },

    #[error("{path}: not a usable TrueType font")]
    NotTrueType { path: PathBuf },
}

/// Registers a TrueType font as plotters' `sans-serif` (once per process). Errors name the
/// places looked at.
pub fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), FontError>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        let path = candidates
            .iter()
            .find(|p| p.is_file())
            .ok_or_else(|| FontError::NotFound {
                candidates: candidates.clone(),
            })?;
        let bytes = std::fs::read(path).map_err(|e| FontError::Unreadable {
            path: path.clone(),
            cause: e.into(),
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font("sans-serif", style, bytes)
                .map_err(|_| FontError::NotTrueType { path: path.clone() })?;
        }
        Ok(())
    })
    .clone()
    .map_err(|e| PlotError::Font(e).into())
}
