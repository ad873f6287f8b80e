//! `embed`: text embeddings for tag slots, patched into an embedding file in its slot layout.
//!
//! Feature-free parts (tokenizers for CLIP, recipes, descriptors, slot plans, patching, output) build
//! everywhere; the ONNX Runtime encoder and the Hugging Face tokenizer need feature `embed`.

pub mod clip_bpe;
pub mod descriptor;
mod error;
pub mod output;
pub mod patch;
pub mod plan;
pub mod recipe;
pub mod tokenize;

#[cfg(feature = "embed")]
pub mod cuda;
#[cfg(feature = "embed")]
pub mod encoder;
#[cfg(feature = "embed")]
pub mod hf_tokenizer;
#[cfg(feature = "embed")]
pub mod isolate;
#[cfg(feature = "embed")]
pub mod pipeline;

pub use descriptor::{Device, ModelDescriptor};
pub use error::EmbedError;
pub use output::{write_output, EmbedOutput};
pub use patch::SlotRows;
pub use recipe::Recipe;
