//! Loading checkpoints into a model's [`VarStore`], with a report, and proving that the image encoder
//! was really initialised from pretrained weights.
//!
//! Accepts safetensors and PyTorch `torch.save` files (zip or legacy, `{"model": state_dict}` as the
//! official RAM++ and Swin checkpoints are stored; read by [`crate::checkpoint::pth`] without running
//! any pickle code). Key matching follows RAM's loaders ([`crate::checkpoint::keymap`]); bias tables of another
//! window size are resized bicubically over the (2w−1)² grid as timm does
//! (`F.interpolate(mode="bicubic", align_corners=False)`), since the SciPy `interp2d` the official
//! code used no longer exists.

use crate::checkpoint::keymap::{self, Action, LoadReport, ModelKey};
use crate::error::Result;
use crate::tensors::{self, DType, TensorSet};
use crate::train::error::TrainError;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// How strict a load is.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Fail unless every model parameter is loaded and every checkpoint tensor is used
    /// (PyTorch's `strict=True`). The official loaders use `strict=False`: partial loads are
    /// reported, not refused.
    pub strict: bool,
}

impl LoadOptions {
    pub fn strict() -> Self {
        LoadOptions { strict: true }
    }
    pub fn lenient() -> Self {
        LoadOptions { strict: false }
    }
}

fn is_buffer_name(name: &str) -> bool {
    name.ends_with("relative_position_index") || name.ends_with("attn_mask")
}

/// The keys of the model in `vs` (constant buffers flagged).
pub fn model_keys(vs: &VarStore) -> Vec<ModelKey> {
    let mut keys: Vec<ModelKey> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| ModelKey {
            buffer: is_buffer_name(&name),
            shape: t.size().iter().map(|&d| d as usize).collect(),
            name,
        })
        .collect();
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    keys
}

fn kind_of(d: DType) -> Kind {
    match d {
        DType::F64 => Kind::Double,
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

/// A tagfix tensor as a CPU libtorch tensor (copies the bytes).
pub fn to_tch(t: &tensors::Tensor) -> Result<Tensor> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(&t.data, &shape, kind_of(t.dtype))
        .map_err(|e| TrainError::TensorConversion(Box::new(e)).into())
}

pub(crate) fn dtype_of(k: Kind) -> Result<DType> {
    Ok(match k {
        Kind::Double => DType::F64,
        Kind::Float => DType::F32,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        Kind::Int16 => DType::I16,
        Kind::Int8 => DType::I8,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        other => return Err(TrainError::UnsupportedKind(format!("{other:?}")).into()),
    })
}

/// A libtorch tensor as a tagfix tensor (moved to the CPU, made contiguous, bytes copied).
pub fn from_tch(t: &Tensor) -> Result<tensors::Tensor> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let dtype = dtype_of(t.kind())?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut data, numel)
        .map_err(|e| TrainError::TensorConversion(Box::new(e)))?;
    tensors::Tensor::new(dtype, t.size().iter().map(|&d| d as usize).collect(), data)
}

/// The model's state dict (parameters and buffers, official names, sorted by name).
pub fn state_dict(vs: &VarStore) -> Result<TensorSet> {
    let mut tensors: Vec<(String, tensors::Tensor)> = vs
        .variables()
        .iter()
        .map(|(n, t)| Ok((n.clone(), from_tch(t)?)))
        .collect::<Result<_>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TensorSet {
        tensors,
        metadata: Default::default(),
    })
}

/// Writes the state dict as safetensors, atomically, with string metadata.
pub fn save_state_dict(vs: &VarStore, path: &Path, metadata: &[(&str, String)]) -> Result<()> {
    let mut set = state_dict(vs)?;
    set.metadata
        .extend(metadata.iter().map(|(k, v)| (k.to_string(), v.clone())));
    tensors::safetensors_io::write(path, &set)
}

/// Resizes a Swin v1 relative position bias table [(2w−1)², nH] to window `to_window`: the table is
/// viewed as nH maps of (2w−1)×(2w−1) and resized bicubically (align_corners=False), as timm's
/// `resize_rel_pos_bias_table_simple` does.
pub fn resize_bias_table(table: &Tensor, to_window: usize) -> Tensor {
    let (rows, heads) = table.size2().expect("bias table [(2w-1)^2, nH]");
    let src = (rows as f64).sqrt().round() as i64;
    let dst = (2 * to_window - 1) as i64;
    if src == dst {
        return table.shallow_clone();
    }
    let kind = table.kind();
    table
        .to_kind(Kind::Float)
        .permute([1, 0])
        .reshape([1, heads, src, src])
        .upsample_bicubic2d([dst, dst], false, None, None)
        .reshape([heads, dst * dst])
        .permute([1, 0])
        .contiguous()
        .to_kind(kind)
}

/// Reads a checkpoint (safetensors or `torch.save`) and loads it into `vs`.
pub fn load_state_dict(vs: &VarStore, path: &Path, opts: &LoadOptions) -> Result<LoadReport> {
    let set = tensors::read_any(path)?;
    load_tensor_set(vs, &path.display().to_string(), &set, opts)
}

/// Loads named tensors into `vs` (see the module docs for the key rules).
pub fn load_tensor_set(
    vs: &VarStore,
    source: &str,
    set: &TensorSet,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let ckpt_keys = keymap::checkpoint_keys(set);
    let plan = keymap::plan(source, &ckpt_keys, &model_keys(vs));
    let mut report = plan.report;
    let vars = vs.variables();
    let by_name: std::collections::HashMap<&str, &tensors::Tensor> =
        set.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();

    if opts.strict && !report.is_complete() {
        return Err(TrainError::StrictLoad {
            checkpoint: source.to_string(),
            report: report.to_table(),
        }
        .into());
    }
    tch::no_grad(|| -> Result<()> {
        for item in &plan.tensors {
            let src = to_tch(by_name[item.checkpoint_name.as_str()])?;
            let mut var = vars[&item.model_name].shallow_clone();
            if src.kind() != var.kind() {
                report.dtype_converted += 1;
            }
            let src = match item.action {
                Action::Copy => src,
                Action::ResizeBiasTable { to_window, .. } => resize_bias_table(&src, to_window),
            };
            var.f_copy_(&src.to_kind(var.kind()))
                .map_err(|e| TrainError::CopyTensor {
                    checkpoint: source.to_string(),
                    from: item.checkpoint_name.clone(),
                    into: item.model_name.clone(),
                    source: Box::new(e),
                })?;
        }
        for b in &plan.dropped_buffers {
            if let Some(model_name) = &b.model_name {
                let src = to_tch(by_name[b.checkpoint_name.as_str()])?;
                let ours = &vars[model_name];
                let same = src
                    .to_kind(ours.kind())
                    .to_device(ours.device())
                    .equal(ours);
                if !same {
                    report.buffer_mismatches.push(b.checkpoint_name.clone());
                }
            }
        }
        Ok(())
    })?;
    Ok(report)
}

/// A cheap fingerprint of every parameter under a prefix (sum, sum of squares and first element,
/// in f64), taken right after the model's random initialisation. Comparing it after loading tells
/// which parameters a checkpoint left untouched.
#[derive(Debug, Clone)]
pub struct InitFingerprint {
    prefix: String,
    entries: Vec<(String, [f64; 3])>,
}

fn fingerprint(t: &Tensor) -> [f64; 3] {
    let d = t.detach().to_kind(Kind::Double);
    let first = if d.numel() > 0 {
        d.view([-1]).double_value(&[0])
    } else {
        0.0
    };
    [
        d.sum(Kind::Double).double_value(&[]),
        d.square().sum(Kind::Double).double_value(&[]),
        first,
    ]
}

impl InitFingerprint {
    /// Fingerprints the parameters (not buffers) whose names start with `prefix`.
    pub fn capture(vs: &VarStore, prefix: &str) -> Self {
        let mut entries: Vec<(String, [f64; 3])> = vs
            .variables()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && !is_buffer_name(n))
            .map(|(n, t)| (n.clone(), fingerprint(t)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        InitFingerprint {
            prefix: prefix.to_string(),
            entries,
        }
    }

    /// Parameters still equal to their initial values.
    pub fn unchanged(&self, vs: &VarStore) -> Vec<String> {
        let vars = vs.variables();
        self.entries
            .iter()
            .filter(|(n, fp)| vars.get(n).is_some_and(|t| fingerprint(t) == *fp))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Outcome of the encoder checks when they pass.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EncoderCheck {
    /// Encoder parameters checked.
    pub parameters: usize,
    /// Encoder parameters that still hold their initial values (only non-zero with the override).
    pub unchanged: Vec<String>,
    /// Warnings to show the user (non-empty only when the override was used).
    pub warnings: Vec<String>,
}

/// The banner printed when training goes on without a pretrained encoder.
pub const UNLOADED_ENCODER_WARNING: &str = "\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! WARNING: the image encoder is NOT fully initialised from a pretrained checkpoint.    !!
!! Training goes on because --allow-random-encoder was given. Expect very slow          !!
!! convergence: RAM++ is meant to start from an ImageNet-pretrained Swin encoder.       !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!";

/// Refuses training when the image encoder (`visual_encoder.*`) is not completely loaded by the
/// given loads, or when any of its parameters still equals its random initialisation afterwards.
/// With `allow_unloaded_encoder`, both become loud warnings instead.
pub fn verify_encoder_initialised(
    reports: &[&LoadReport],
    fingerprint: &InitFingerprint,
    vs: &VarStore,
    allow_unloaded_encoder: bool,
) -> Result<EncoderCheck> {
    let group = fingerprint.prefix.trim_end_matches('.');
    let expected = fingerprint.len();
    // A parameter counts as loaded when any of the loads provided it.
    let missing: Vec<&String> = fingerprint
        .entries
        .iter()
        .map(|(n, _)| n)
        .filter(|n| reports.iter().all(|r| r.missing.iter().any(|m| m == *n)))
        .collect();
    let unchanged = fingerprint.unchanged(vs);
    let mut problems = Vec::new();
    if expected == 0 {
        problems.push(format!("the model has no `{group}` parameters to check"));
    }
    if !missing.is_empty() {
        let sources: Vec<&str> = reports.iter().map(|r| r.source.as_str()).collect();
        problems.push(format!(
            "{} of {expected} `{group}` parameters were not in the checkpoint(s) [{}], e.g. `{}`",
            missing.len(),
            sources.join(", "),
            missing[0]
        ));
    }
    if !unchanged.is_empty() {
        problems.push(format!(
            "{} of {expected} `{group}` parameters still equal their random initialisation after loading, e.g. `{}`",
            unchanged.len(),
            unchanged[0]
        ));
    }
    if problems.is_empty() {
        return Ok(EncoderCheck {
            parameters: expected,
            unchanged,
            warnings: Vec::new(),
        });
    }
    if !allow_unloaded_encoder {
        return Err(TrainError::EncoderNotInitialised { problems }.into());
    }
    let mut warnings = vec![UNLOADED_ENCODER_WARNING.to_string()];
    warnings.extend(problems);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(EncoderCheck {
        parameters: expected,
        unchanged,
        warnings,
    })
}
