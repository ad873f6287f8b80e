//! `tagfix export`: a checkpoint (tagfix training checkpoint, safetensors, or `.pth`) as the
//! official code reads it — `torch.save({"model": state_dict})` with the official key names, order
//! and dtypes (parameters f32, `relative_position_index` int64, `attn_mask` f32), so that
//! `ram_plus(pretrained=OUT.pth)` and `torch.load` (also `weights_only=True`) take it; or only the
//! label embedding as a bare tensor, as RAM loads its `frozen_tag_embedding/*.pth`.

use super::infer::{load_model, LoadedModel};
use super::weights::from_tch;
use crate::checkpoint::keymap::LoadReport;
use crate::checkpoint::model_config::EntryDtype;
use crate::checkpoint::pth;
use crate::error::{ErrorKind, Result};
use crate::tensors::{FileFormat, Tensor};
use serde::Serialize;
use std::path::Path;
use tch::{Device, Kind};

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// The state-dict file read.
    pub checkpoint: String,
    pub output: String,
    pub model: String,
    /// `{"model": state_dict}` or `label_embed` (bare tensor).
    pub content: String,
    pub tensors: usize,
    pub parameters: usize,
    pub buffers: usize,
    pub bytes: usize,
}

/// Why a model cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("model `{model}` holds {held} tensors, its official state dict {official}")]
    TensorCount {
        model: String,
        held: usize,
        official: usize,
    },

    #[error("model has no `{0}` of the official layout")]
    MissingTensor(String),

    #[error("`{name}` has shape {shape:?}, the official layout {official:?}")]
    Shape {
        name: String,
        shape: Vec<usize>,
        official: Vec<usize>,
    },

    #[error("output {0} must end in .pth (or .pt)")]
    NotPth(std::path::PathBuf),

    #[error("output {0} must be a file: the export is read back and compared")]
    NotAFile(std::path::PathBuf),

    #[error("{0}: written file does not read back identically")]
    ReadBack(std::path::PathBuf),
}

impl ExportError {
    /// The output's name is a usage error; a model that differs from its own layout is a bug.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExportError::NotPth(_) | ExportError::NotAFile(_) => ErrorKind::Usage,
            ExportError::ReadBack(_) => ErrorKind::Io,
            _ => ErrorKind::Internal,
        }
    }
}

/// The model's state dict under the official names, in the official order and dtypes
/// ([`RamPlusConfig::state_dict_layout`](super::model::RamPlusConfig::state_dict_layout)).
pub fn official_state_dict(m: &LoadedModel) -> Result<Vec<(String, Tensor)>> {
    let vars = m.vs.variables();
    let layout = m.config.state_dict_layout();
    if vars.len() != layout.len() {
        return Err(ExportError::TensorCount {
            model: m.config.name.clone(),
            held: vars.len(),
            official: layout.len(),
        }
        .into());
    }
    layout
        .into_iter()
        .map(|e| {
            let var = vars
                .get(&e.name)
                .ok_or_else(|| ExportError::MissingTensor(e.name.clone()))?;
            let kind = match e.dtype {
                EntryDtype::Float32 => Kind::Float,
                EntryDtype::Int64 => Kind::Int64,
            };
            let t = from_tch(&var.to_kind(kind))?;
            if t.shape != e.shape {
                return Err(ExportError::Shape {
                    name: e.name,
                    shape: t.shape,
                    official: e.shape,
                }
                .into());
            }
            Ok((e.name, t))
        })
        .collect()
}

/// Exports `input` to the `.pth` file `output` (written atomically, then read back and compared
/// tensor by tensor). `spec` / `num_class` as in [`load_model`].
pub fn export(
    input: &Path,
    output: &Path,
    spec: Option<&str>,
    num_class: Option<usize>,
    label_embed_only: bool,
) -> Result<(ExportSummary, LoadReport)> {
    if FileFormat::from_path(output).ok() != Some(FileFormat::Pth) {
        return Err(ExportError::NotPth(output.into()).into());
    }
    // Read back before success, so a pipe or device (which cannot be read back) is refused.
    if !matches!(
        crate::fsutil::check_output(output)?,
        crate::fsutil::OutputTarget::File(_)
    ) {
        return Err(ExportError::NotAFile(output.into()).into());
    }
    crate::fsutil::check_outputs([output], &[input])?;
    let m = load_model(input, spec, num_class, None, Device::Cpu)?;
    crate::fsutil::check_outputs([output], &[m.checkpoint.as_path()])?;
    let (items, content) = if label_embed_only {
        let t = from_tch(&m.model.label_embed.to_kind(Kind::Float))?;
        (
            vec![("label_embed".to_string(), t)],
            "label_embed (bare tensor)",
        )
    } else {
        (official_state_dict(&m)?, "{\"model\": state_dict}")
    };
    if label_embed_only {
        pth::write(output, pth::PthContent::Tensor(&items[0].1))?;
    } else {
        pth::write(output, pth::PthContent::Wrapped("model", &items))?;
    }
    let back = pth::read(output)?;
    let same = if label_embed_only {
        back.tensors.len() == 1 && back.tensors[0].1 == items[0].1
    } else {
        back.tensors == items && back.container == pth::Container::Wrapped("model".into())
    };
    if !same {
        return Err(ExportError::ReadBack(output.into()).into());
    }
    let buffers = m
        .config
        .state_dict_layout()
        .iter()
        .filter(|e| e.kind == crate::checkpoint::model_config::EntryKind::Buffer)
        .count();
    let summary = ExportSummary {
        checkpoint: m.checkpoint.display().to_string(),
        output: output.display().to_string(),
        model: m.config.name.clone(),
        content: content.into(),
        tensors: items.len(),
        parameters: if label_embed_only {
            1
        } else {
            items.len() - buffers
        },
        buffers: if label_embed_only { 0 } else { buffers },
        bytes: items.iter().map(|(_, t)| t.data.len()).sum(),
    };
    Ok((summary, m.report))
}
