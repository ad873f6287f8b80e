//! `tagfix check`: semantic consistency of regenerated rows and drift of embedding files, measured by
//! per-slot cosine and k-nearest-neighbour overlap, calibrated by control rows, gated by a policy.
//!
//! * [`kernels`] — f32 dot product (AVX2/FMA at run time), normalisation.
//! * [`knn`] — exact search by blocked matrix products, HNSW ([`hnsw`]) for large vocabularies,
//!   recall of HNSW against exact search measured on a sample.
//! * [`compare`] — the drift and consistency comparisons.
//! * [`policy`] — thresholds (TOML file and flags) → one result per rule.
//! * [`report`] — the result types the writers in [`crate::report`] render.

pub mod compare;
pub mod hnsw;
pub mod inputs;
pub mod kernels;
pub mod knn;
pub mod policy;
pub mod report;
pub mod stats;
pub mod synthetic;

pub use compare::{run_check, CheckOptions};
pub use inputs::EmbeddingInput;
pub use knn::{SearchChoice, SearchConfig, SearchMethod};
pub use policy::Policy;
pub use report::{CheckReport, Mode};
