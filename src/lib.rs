//! tagfix: audit, repair and train the label vocabulary of open-vocabulary image taggers
//! (RAM / RAM++), keeping every slot where it is.
//!
//! Data flows one way: `diff` writes a [`manifest::SlotManifest`], `embed` consumes it and writes an
//! embedding file, `check` and `train` consume that.

pub mod annotations;
pub mod checkpoint;
pub mod consistency;
pub mod diff;
pub mod doctor;
pub mod embed;
pub mod error;
pub mod eval;
pub mod fsutil;
/// Stable-Rust fuzz harness for the file readers (`scripts/fuzz.sh`); not a supported API.
#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "embed")]
pub mod imaging;
pub mod manifest;
pub mod monitor;
pub mod plot;
pub mod prefetch;
pub mod progress;
pub mod report;
pub mod rng;
pub mod share;
pub mod strings;
pub mod synth;
pub mod teacher;
pub mod tensors;
#[cfg(test)]
mod testutil;
pub mod train;
pub mod vocab;

pub use error::{Error, Result};
