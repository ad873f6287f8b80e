//! Training records: read by [`crate::annotations::records`] (shared with `tagfix teacher`).

pub use crate::annotations::records::*;
