//! Checkpoints without libtorch: PyTorch's `torch.save` format read and written without Python
//! ([`pickle`], [`pth`]), the RAM++ model configurations and their state-dict layout
//! ([`model_config`]), matching a checkpoint's keys to a model ([`keymap`]), and what `tagfix
//! inspect` / `convert` build on them ([`inspect`], [`convert`]).
//!
//! Nothing here needs a native library, so every build has it; the libtorch model and training loop
//! (`crate::train`, feature `train`) load and save through it.

pub mod convert;
mod error;
pub mod inspect;
pub mod keymap;
pub mod model_config;
pub mod model_def;
pub mod pickle;
pub mod pth;

pub use error::CheckpointError;
pub use model_config::RamPlusConfig;
