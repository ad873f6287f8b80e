//! RAM++ training (feature `train`, libtorch through `tch`): the model and checkpoint loading.
//! The model configuration, its state-dict layout and checkpoint key matching are available
//! without the feature (`tagfix inspect` uses them).

pub mod keymap;
pub mod model;
#[cfg(feature = "train")]
pub mod weights;
