//! RAM++ training with libtorch (`tch`): the model, loading checkpoints into it, the data pipeline,
//! the optimizer and the training loop, all behind the feature `train` (below). The
//! training settings ([`config`]) build without it, since every build's command line parses them.
//! What else needs no libtorch — the model configurations and their state-dict layout, the `.pth`
//! reader and writer, key matching, inspection and conversion — is in [`crate::checkpoint`].

pub mod config;
pub mod dist;
pub mod error;
pub mod failure;
pub mod interrupt;
pub mod run_files;
pub mod weighting;

// The libtorch half, behind the feature `train`: the gate is written on each line, since a macro
// that applied it to a list hid the modules from `cargo fmt`.
#[cfg(feature = "train")]
pub mod autocast;
#[cfg(feature = "train")]
pub mod data;
#[cfg(feature = "train")]
pub mod export;
#[cfg(feature = "train")]
pub mod fused;
#[cfg(feature = "train")]
pub mod infer;
#[cfg(feature = "train")]
pub mod memory;
#[cfg(feature = "train")]
pub mod micro_auto;
#[cfg(feature = "train")]
pub mod model;
#[cfg(feature = "train")]
pub mod objective;
#[cfg(feature = "train")]
pub mod optim;
#[cfg(feature = "train")]
pub mod run;
#[cfg(feature = "train")]
pub mod saver;
#[cfg(feature = "train")]
pub mod sync;
#[cfg(feature = "train")]
pub mod trainer;
#[cfg(feature = "train")]
pub mod upload;
#[cfg(feature = "train")]
pub mod validate;
#[cfg(feature = "train")]
pub mod weights;

/// Serialises the tests that use libtorch's global state: its one CPU random generator (a test
/// comparing two runs after `manual_seed` fails when another test draws in between) and autocast's
/// process-wide cast cache.
#[cfg(all(test, feature = "train"))]
pub(crate) fn torch_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
