//! RAM++ training (feature `train`, libtorch through `tch`): the model and checkpoint loading.
//! The model configuration, its state-dict layout, checkpoint key matching, inspection and
//! conversion are available without the feature (`tagfix inspect` / `convert` use them).

pub mod convert;
pub mod inspect;
pub mod keymap;
pub mod model;
#[cfg(feature = "train")]
pub mod weights;
