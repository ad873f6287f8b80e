//! `torch.save` checkpoints → safetensors, without Python and without executing pickle code
//! (the reader refuses unknown globals). Shared-storage views become contiguous tensors; non-tensor
//! extras (epoch, config, ...) go into the safetensors metadata as JSON strings. A `.pth` output goes
//! the other way: any tensor file to `{"model": state_dict}`.

use super::inspect::{read_checkpoint, ReadCheckpoint};
use super::pth;
use super::CheckpointError;
use crate::error::Result;
use crate::tensors::{safetensors_io, FileFormat, TensorSet};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertSummary {
    pub input: String,
    pub output: String,
    pub format: String,
    pub container: Option<String>,
    pub tensors: usize,
    pub elements: usize,
    pub bytes: usize,
    pub dtypes: BTreeMap<String, usize>,
    /// Extras carried into the metadata.
    pub extras: Vec<String>,
}

/// Converts `input` (`.pth`/`.pt`/`.bin`, or `.safetensors`) to the safetensors file `output`
/// (or, for an `output` ending in `.pth`, to `{"model": state_dict}`), written atomically and read
/// back to check that every tensor round-trips. Holds the tensors once: the input is read one
/// storage at a time, the output written and compared as a stream.
pub fn convert(input: &Path, output: &Path) -> Result<ConvertSummary> {
    let to_pth = match FileFormat::from_path(output).ok() {
        Some(FileFormat::Safetensors) => false,
        Some(FileFormat::Pth) => true,
        _ => {
            return Err(CheckpointError::OutputFormat {
                path: output.to_path_buf(),
            }
            .into())
        }
    };
    crate::fsutil::check_outputs([output], &[input])?;
    let ReadCheckpoint {
        mut set,
        format,
        container,
        extras,
    } = read_checkpoint(input)?;
    if set.tensors.is_empty() {
        return Err(CheckpointError::NoTensors {
            path: input.to_path_buf(),
        }
        .into());
    }
    if to_pth {
        return to_state_dict_pth(input, output, set, format, container);
    }
    let source = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    set.metadata.insert("tagfix.converted_from".into(), source);
    if let Some(c) = &container {
        set.metadata.insert("tagfix.container".into(), c.clone());
    }
    for (k, v) in &extras {
        set.metadata.insert(format!("extra.{k}"), v.to_string());
    }
    safetensors_io::write(output, &set)?;
    // Compared a chunk at a time: no second copy of the checkpoint in memory.
    if !safetensors_io::holds(output, &set)? {
        return Err(CheckpointError::RoundTrip {
            path: output.to_path_buf(),
        }
        .into());
    }
    Ok(summary(
        input,
        output,
        &set,
        format,
        container,
        extras.keys().cloned().collect(),
    ))
}

fn summary(
    input: &Path,
    output: &Path,
    set: &TensorSet,
    format: String,
    container: Option<String>,
    extras: Vec<String>,
) -> ConvertSummary {
    let mut dtypes = BTreeMap::new();
    for (_, t) in &set.tensors {
        *dtypes.entry(t.dtype.to_string()).or_default() += 1;
    }
    ConvertSummary {
        input: input.display().to_string(),
        output: output.display().to_string(),
        format,
        container,
        tensors: set.tensors.len(),
        elements: set.tensors.iter().map(|(_, t)| t.numel()).sum(),
        bytes: set.tensors.iter().map(|(_, t)| t.data.len()).sum(),
        dtypes,
        extras,
    }
}

/// The other direction: the tensors as they are (names, order, dtypes) into
/// `torch.save({"model": state_dict})`, read back and compared. Metadata is not carried (the
/// format holds tensors only); `tagfix export` writes a model's official key set and order.
fn to_state_dict_pth(
    input: &Path,
    output: &Path,
    set: TensorSet,
    format: String,
    container: Option<String>,
) -> Result<ConvertSummary> {
    pth::write(output, pth::PthContent::Wrapped("model", &set.tensors))?;
    if pth::read(output)?.tensors != set.tensors {
        return Err(CheckpointError::RoundTrip {
            path: output.to_path_buf(),
        }
        .into());
    }
    Ok(summary(input, output, &set, format, container, Vec::new()))
}
