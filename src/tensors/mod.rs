//! Tensor files: safetensors (primary) and `.npy`, one entry point for those and PyTorch's
//! `torch.save` format ([`crate::checkpoint::pth`]), plus embedding matrices and their slot layouts
//! (RAM `[N, d]`, RAM++ `[N·k, d]`).

mod embedding;
pub mod npy;
pub mod provenance;
pub mod safetensors_io;

pub use embedding::{EmbeddingFile, FileFormat, Layout};
pub use provenance::Provenance;

use crate::checkpoint::pth;
use crate::error::Result;
use std::path::{Path, PathBuf};

/// Why a tensor or a tensor file (safetensors, `.npy`, an embedding matrix, its provenance) cannot
/// be used.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("tensor of shape {shape:?} {dtype} needs {needed} bytes, got {got}")]
    ByteLength {
        shape: Vec<usize>,
        dtype: DType,
        needed: usize,
        got: usize,
    },

    #[error("cannot store float values as {0}")]
    NotFloatStorage(DType),

    #[error("expected a floating-point tensor, found {0}")]
    NotFloat(DType),

    #[error("{path}: unknown file type: use .safetensors, .npy or .pth/.pt")]
    UnknownFileType { path: PathBuf },

    #[error(
        "{path}: has {rows} rows, which fits neither one row per tag ({tags}) nor k descriptions per tag \
         (a multiple of {tags}, e.g. {} for RAM++'s 51): is it for another vocabulary?",
        .tags * 51
    )]
    RowsFitNoLayout {
        path: PathBuf,
        rows: usize,
        tags: usize,
    },

    #[error("{path}: holds several tensors ({}); choose one with --tensor NAME", .names.join(", "))]
    SeveralTensors { path: PathBuf, names: Vec<String> },

    #[error("{path}: has no tensor `{name}` (it holds: {})", .names.join(", "))]
    NoSuchTensor {
        path: PathBuf,
        name: String,
        names: Vec<String>,
    },

    #[error("{path}: tensor `{name}` is {dtype}, but embeddings must be floating point")]
    EmbeddingNotFloat {
        path: PathBuf,
        name: String,
        dtype: DType,
    },

    #[error("{path}: tensor `{name}` has shape {shape:?}; embeddings must be 2-D [rows, dim]")]
    EmbeddingNot2d {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },

    #[error("{path}: cannot read .npy")]
    Npy {
        path: PathBuf,
        #[source]
        source: ndarray_npy::ReadNpyError,
    },

    #[error("{path}: cannot read .npy: the header claims {declared} bytes, the file holds {len}")]
    NpyHeaderLength {
        path: PathBuf,
        declared: usize,
        len: usize,
    },

    #[error("{path}: cannot read .npy: shape {shape:?} overflows")]
    NpyShapeOverflow { path: PathBuf, shape: Vec<usize> },

    #[error(
        "{path}: cannot read .npy: shape {shape:?} needs more data than the {available} bytes after the header (truncated file?)"
    )]
    NpyTruncated {
        path: PathBuf,
        shape: Vec<usize>,
        available: usize,
    },

    #[error("writing {path}")]
    NpyWrite {
        path: PathBuf,
        #[source]
        source: ndarray_npy::WriteNpyError,
    },

    #[error("{path}: .npy output supports f32, f64 and i64, not {dtype}")]
    NpyDtype { path: PathBuf, dtype: DType },

    #[error("{path}: not a valid safetensors file")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    #[error("{path}: not a valid safetensors file")]
    SafetensorsHeader {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{path}: not a valid safetensors file: the header names `{name}` more than once (refusing rather than picking one)"
    )]
    SafetensorsRepeatedName { path: PathBuf, name: String },

    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    SafetensorsDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("writing {path}: tensor name `{name}` appears more than once")]
    DuplicateName { path: PathBuf, name: String },

    #[error("tensor `{name}`")]
    SafetensorsView {
        name: String,
        #[source]
        source: safetensors::SafeTensorError,
    },

    #[error("serializing {path}")]
    SafetensorsWrite {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    #[error("{path}: embedding provenance schema {schema} is not supported (expected {expected})")]
    ProvenanceSchema {
        path: PathBuf,
        schema: String,
        expected: &'static str,
    },

    #[error("{path}: metadata tagfix.{key} is not valid JSON")]
    ProvenanceField {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: malformed tagfix metadata")]
    ProvenanceMalformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: not a tagfix provenance file")]
    NotProvenance {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{data}: its provenance {sidecar} describes other data (sha256 {expected}, this file has {actual}): the two were not written together (an interrupted `tagfix embed`, or the data replaced since); re-run `tagfix embed`, or delete the provenance file to use the data without provenance"
    )]
    ProvenanceMismatch {
        data: PathBuf,
        sidecar: PathBuf,
        expected: String,
        actual: String,
    },
}

/// Element types tagfix reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// True for floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// The name safetensors uses.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.safetensors_name().to_lowercase())
    }
}

/// A dense, contiguous, little-endian tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Row-major little-endian bytes, `numel * dtype.size()` long.
    pub data: Vec<u8>,
}

impl Tensor {
    /// Builds a tensor, checking the byte length against the shape.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel * dtype.size() != data.len() {
            return Err(TensorError::ByteLength {
                shape,
                dtype,
                needed: numel * dtype.size(),
                got: data.len(),
            }
            .into());
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// An f32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Tensor::new(
            DType::F32,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// A float tensor of `dtype` from f32 values (rounded to nearest for f16 / bf16).
    pub fn from_f32_as(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let data: Vec<u8> = match dtype {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F64 => values
                .iter()
                .flat_map(|v| f64::from(*v).to_le_bytes())
                .collect(),
            DType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            other => return Err(TensorError::NotFloatStorage(other).into()),
        };
        Tensor::new(dtype, shape, data)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values widened to f32 (float types only; f64 is rounded).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let c = self.data.chunks_exact(self.dtype.size());
        Ok(match self.dtype {
            DType::F32 => c
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            DType::F64 => c
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            DType::F16 => c
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => c
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err(TensorError::NotFloat(other).into()),
        })
    }
}

/// Named tensors in file order, with optional string metadata (safetensors `__metadata__`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorSet {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl TensorSet {
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Reads every tensor of a `.safetensors`, `.pth`/`.pt`/`.bin` (torch.save) or `.npy` file.
pub fn read_any(path: &Path) -> Result<TensorSet> {
    match FileFormat::from_path(path)? {
        FileFormat::Safetensors => safetensors_io::read(path),
        FileFormat::Pth => Ok(pth::read(path)?.into_tensor_set()),
        FileFormat::Npy => Ok(TensorSet {
            tensors: vec![("array".into(), npy::read(path)?)],
            metadata: Default::default(),
        }),
    }
}
