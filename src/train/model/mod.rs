//! The RAM++ model in libtorch, one file per part; variable names equal the official state-dict keys.
//! [`config`] (presets and the state-dict layout) builds without libtorch.

pub mod config;
#[cfg(feature = "train")]
pub mod layers;
#[cfg(feature = "train")]
pub mod loss;
#[cfg(feature = "train")]
pub mod ram_plus;
#[cfg(feature = "train")]
pub mod swin;
#[cfg(feature = "train")]
pub mod tagging_head;

pub use config::RamPlusConfig;
#[cfg(feature = "train")]
pub use layers::{ParamInit, Trace};
#[cfg(feature = "train")]
pub use ram_plus::{RamPlus, RamPlusBatch, RamPlusOutputs};
