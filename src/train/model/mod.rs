//! The RAM++ model in libtorch, one file per part; variable names equal the official state-dict keys.
//! Its configuration and state-dict layout are [`crate::checkpoint::model_config`] (no libtorch),
//! also reachable here as [`config`]; the parameters themselves (names, shapes, init, order) are
//! defined once in [`crate::checkpoint::model_def`], which the layout and these modules both walk.

pub mod layers;
pub mod loss;
pub mod ram_plus;
pub mod swin;
pub mod tagging_head;

pub use crate::checkpoint::model_config as config;
pub use config::RamPlusConfig;
pub use layers::{ParamInit, Trace};
pub use ram_plus::{RamPlus, RamPlusBatch, RamPlusOutputs};
