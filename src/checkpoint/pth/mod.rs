//! PyTorch's `torch.save` format, read without Python and without executing anything.
//!
//! The zip format (torch ≥ 1.6: `<archive>/data.pkl` + `<archive>/data/<key>` storages) and the legacy
//! format (a sequence of pickles followed by raw storages) are both read ([`read`]). The pickle is
//! interpreted by a small stack machine ([`super::pickle`]) that knows only the globals a checkpoint
//! needs (`_rebuild_tensor_v2`, `_rebuild_parameter`, typed storages, `OrderedDict`); any other
//! global — `os.system`, say — is refused with an error that names it. Nothing a pickle names is ever
//! called.
//!
//! Memory: a zip checkpoint is read pickle first, then one storage entry at a time, each copied into
//! the tensors that view it and dropped (a storage viewed whole by one tensor becomes that tensor
//! without a copy), so reading holds the tensors plus at most one storage. A legacy file is read
//! whole (its storages follow the pickles in one stream).
//!
//! Nothing in the file is trusted: offsets, sizes, strides and element counts are checked with
//! checked arithmetic against the storage's real length ([`view`]), nesting and memo copies are
//! bounded (see [`super::pickle`]), and a state dict that repeats a key is refused (see
//! docs/formats.md).
//!
//! The writer ([`write`]) produces the zip format with a pickle that `torch.load(...,
//! weights_only=True)` accepts: a bare tensor (as RAM stores `frozen_tag_embedding/*.pth`) or a dict
//! of tensors.

mod read;
mod view;
mod write;

pub use super::pickle::{TensorRef, Value};
pub use read::read;
pub use view::MAX_EXPANDED_BYTES;
pub use write::{write, PthContent};

use crate::tensors::{Tensor, TensorSet};
use std::collections::BTreeMap;

/// How the tensors sit in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    /// `torch.save(tensor)`.
    BareTensor,
    /// `torch.save(state_dict)` (dict or OrderedDict of tensors).
    StateDict,
    /// `torch.save({"model": state_dict, ...})`: the tensors are under this key.
    Wrapped(String),
}

/// A checkpoint read from a `.pth` file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Tensors in file order, contiguous.
    pub tensors: Vec<(String, Tensor)>,
    pub container: Container,
    /// Non-tensor entries beside the state dict (e.g. `epoch`), rendered as JSON.
    pub extras: BTreeMap<String, serde_json::Value>,
    /// True for the pre-1.6 non-zip format.
    pub legacy: bool,
}

impl Checkpoint {
    /// The tensors as a [`TensorSet`] (extras go into its metadata as JSON strings).
    pub fn into_tensor_set(self) -> TensorSet {
        TensorSet {
            tensors: self.tensors,
            metadata: self
                .extras
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        }
    }
}
