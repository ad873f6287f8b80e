//! RAM++ training (feature `train`, libtorch through `tch`): the model and checkpoint loading.
//! The model configuration and its state-dict layout are available without the feature.

pub mod model;
