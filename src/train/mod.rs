//! RAM++ training with libtorch (`tch`): the model, loading checkpoints into it, the data pipeline,
//! the optimizer and the training loop, all behind the feature `train` (one gate, below). The
//! training settings ([`config`]) build without it, since every build's command line parses them.
//! What else needs no libtorch — the model configurations and their state-dict layout, the `.pth`
//! reader and writer, key matching, inspection and conversion — is in [`crate::checkpoint`].

pub mod config;
pub mod dist;
pub mod error;
pub mod interrupt;
pub mod run_files;
pub mod weighting;

/// Puts every item given behind the feature `train`: the one place the libtorch half is gated.
macro_rules! with_libtorch {
    ($($item:item)*) => { $( #[cfg(feature = "train")] $item )* };
}

with_libtorch! {
    pub mod autocast;
    pub mod data;
    pub mod export;
    pub mod fused;
    pub mod infer;
    pub mod memory;
    pub mod micro_auto;
    pub mod model;
    pub mod objective;
    pub mod optim;
    pub mod run;
    pub mod saver;
    pub mod sync;
    pub mod trainer;
    pub mod upload;
    pub mod validate;
    pub mod weights;
}

/// Serialises the tests that use libtorch's global state: its one CPU random generator (a test
/// comparing two runs after `manual_seed` fails when another test draws in between) and autocast's
/// process-wide cast cache.
#[cfg(all(test, feature = "train"))]
pub(crate) fn torch_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
