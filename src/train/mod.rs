//! RAM++ training (feature `train`, libtorch through `tch`): the model, checkpoint loading, the data
//! pipeline, the optimizer and the training loop. The model configuration, its state-dict layout,
//! checkpoint key matching, inspection, conversion and the training configuration are available
//! without the feature (`tagfix inspect` / `convert` use them).

#[cfg(feature = "train")]
pub mod autocast;
pub mod config;
pub mod convert;
#[cfg(feature = "train")]
pub mod data;
pub mod dist;
pub mod error;
#[cfg(feature = "train")]
pub mod export;
#[cfg(feature = "train")]
pub mod fused;
#[cfg(feature = "train")]
pub mod infer;
pub mod inspect;
pub mod keymap;
pub mod model;
#[cfg(feature = "train")]
pub mod objective;
#[cfg(feature = "train")]
pub mod optim;
#[cfg(feature = "train")]
pub mod run;
#[cfg(feature = "train")]
pub mod trainer;
#[cfg(feature = "train")]
pub mod validate;
#[cfg(feature = "train")]
pub mod weights;
