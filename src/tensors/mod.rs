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
use crate::error::{Error, Result};
use std::path::Path;

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
            return Err(Error::Other(format!(
                "tensor of shape {shape:?} {dtype} needs {} bytes, got {}",
                numel * dtype.size(),
                data.len()
            )));
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
            other => {
                return Err(Error::Other(format!(
                    "cannot store float values as {other}"
                )))
            }
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
            other => {
                return Err(Error::Other(format!(
                    "expected a floating-point tensor, found {other}"
                )))
            }
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
