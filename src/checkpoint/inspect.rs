//! What a checkpoint holds and which RAM++ model it fits: keys, shapes, dtypes, module groups, the
//! Swin geometry its keys imply, the label-embedding layout, and a fit against every official
//! preset (through the same key matching the loader uses). Needs no libtorch.

use super::keymap::{self, CheckpointKey, LoadReport, ModelKey};
use super::model_config::{module_group, EntryKind, RamPlusConfig, RAM_NUM_CLASS};
use super::pth;
use super::CheckpointError;
use crate::error::Result;
use crate::fsutil::checksums::Verified;
use crate::tensors::{self, FileFormat, TensorSet};
use crate::train::run_files::{newest_whole_checkpoint, read_whole_checkpoint, CHECKPOINT_TENSORS};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One tensor of the checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// Tensors and elements of one top-level module.
#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    pub group: String,
    pub tensors: usize,
    pub elements: usize,
}

/// The Swin encoder geometry the keys imply.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SwinGeometry {
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    /// Window of the first block (from its bias table).
    pub window_size: Option<usize>,
    /// Input resolution, when an `attn_mask` buffer reveals it.
    pub img_size: Option<usize>,
    /// "Swin-B", "Swin-L" or "custom".
    pub family: String,
}

/// How well a checkpoint fits a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Every key and shape matches.
    Exact,
    /// Everything loads once bias tables are resized to the preset's window.
    AfterResizing,
    /// The whole image encoder loads (a Swin ImageNet checkpoint): the rest must come from elsewhere.
    ImageEncoderOnly,
    /// Some tensors load, but not the whole image encoder.
    Partial,
    /// Nothing loads.
    None,
}

/// A preset and what loading the checkpoint into it would do.
#[derive(Debug, Clone, Serialize)]
pub struct PresetFit {
    pub preset: String,
    pub fit: Fit,
    pub report: LoadReport,
}

/// Everything `tagfix inspect` tells about a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    pub path: String,
    /// `safetensors`, `pytorch zip` or `pytorch legacy`.
    pub format: String,
    /// For PyTorch files: `state dict`, `{"model": state dict}`, `bare tensor`.
    pub container: Option<String>,
    pub keys: Vec<KeyInfo>,
    pub elements: usize,
    pub bytes: usize,
    pub dtypes: BTreeMap<String, usize>,
    pub groups: Vec<GroupInfo>,
    pub swin: Option<SwinGeometry>,
    /// RAM (one row per tag) or RAM++ (k description rows per tag) `label_embed`, in words.
    pub label_embed: Option<String>,
    /// Presets, best fit first.
    pub fits: Vec<PresetFit>,
    /// Non-tensor entries of a PyTorch checkpoint (epoch, config, ...).
    pub extras: BTreeMap<String, serde_json::Value>,
    /// The training checkpoint a folder named (its `model.safetensors` is what the rest describes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingCheckpoint>,
}

/// A tagfix training checkpoint (`RUN_DIR/checkpoints/step-NNNNNNNN/`): what its `state.json` says
/// and whether its files are whole.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingCheckpoint {
    pub dir: PathBuf,
    pub step: u64,
    pub epoch: u64,
    pub samples_seen: u64,
    pub seed: u64,
    pub records: usize,
    pub model: String,
    pub wall_s: f64,
    /// The loss weights in use at the step (`tag=…,align=…,dis=…`).
    pub loss_weights: String,
    /// Whether its files were checked against its `SHA256SUMS` (`false`: it has none).
    pub verified: bool,
    /// Of a run folder: newer checkpoints passed over as damaged, each with why.
    pub passed_over: Vec<(PathBuf, String)>,
}

/// The training checkpoint a folder names: a checkpoint folder (`state.json` beside its tensors)
/// once it is whole ([`read_whole_checkpoint`]), or a run folder's newest whole one; `None` for a
/// file. Another folder is an error.
pub fn training_checkpoint(path: &Path) -> Result<Option<TrainingCheckpoint>> {
    if !path.is_dir() {
        return Ok(None);
    }
    let (dir, state, verified, passed_over) = if path.join("state.json").is_file() {
        let (state, verified) = read_whole_checkpoint(path)?;
        (path.to_path_buf(), state, verified, Vec::new())
    } else if path.join(crate::monitor::run_dir::CHECKPOINTS_DIR).is_dir() {
        let found = newest_whole_checkpoint(&path.join(crate::monitor::run_dir::CHECKPOINTS_DIR))?
            .ok_or_else(|| CheckpointError::NoTrainingCheckpoint {
                path: path.to_path_buf(),
            })?;
        (found.dir, found.state, found.verified, found.skipped)
    } else {
        return Err(CheckpointError::NotACheckpointFolder {
            path: path.to_path_buf(),
        }
        .into());
    };
    Ok(Some(TrainingCheckpoint {
        dir,
        step: state.step,
        epoch: state.epoch,
        samples_seen: state.samples_seen,
        seed: state.seed,
        records: state.records,
        model: state.model,
        wall_s: state.wall_s,
        loss_weights: state.weighting.weights.to_string(),
        verified: verified == Verified::Matched,
        passed_over,
    }))
}

/// A checkpoint as read, with what `inspect` and `convert` report about its file.
pub struct ReadCheckpoint {
    pub set: TensorSet,
    /// `pytorch zip`, `pytorch legacy` or `safetensors`.
    pub format: String,
    /// How a `.pth` holds its state dict (`None`: safetensors).
    pub container: Option<String>,
    /// Non-tensor entries of a PyTorch checkpoint.
    pub extras: BTreeMap<String, serde_json::Value>,
}

/// Reads a checkpoint and its non-tensor extras.
pub fn read_checkpoint(path: &Path) -> Result<ReadCheckpoint> {
    match FileFormat::from_path(path)? {
        FileFormat::Pth => {
            let ck = pth::read(path)?;
            let container = match &ck.container {
                pth::Container::BareTensor => "bare tensor".to_string(),
                pth::Container::StateDict => "state dict".to_string(),
                pth::Container::Wrapped(k) => format!("{{\"{k}\": state dict}}"),
            };
            let format = if ck.legacy {
                "pytorch legacy"
            } else {
                "pytorch zip"
            };
            Ok(ReadCheckpoint {
                set: TensorSet {
                    tensors: ck.tensors,
                    metadata: Default::default(),
                },
                format: format.into(),
                container: Some(container),
                extras: ck.extras,
            })
        }
        _ => Ok(ReadCheckpoint {
            set: tensors::read_any(path)?,
            format: "safetensors".into(),
            container: None,
            extras: BTreeMap::new(),
        }),
    }
}

/// The model keys of a configuration (for planning loads without building the model).
pub fn config_model_keys(cfg: &RamPlusConfig) -> Vec<ModelKey> {
    cfg.state_dict_layout()
        .into_iter()
        .map(|e| ModelKey {
            buffer: e.kind == EntryKind::Buffer,
            name: e.name,
            shape: e.shape,
        })
        .collect()
}

/// Fits `keys` against each configuration, best first.
pub fn fit_presets(
    source: &str,
    keys: &[CheckpointKey],
    configs: &[RamPlusConfig],
) -> Vec<PresetFit> {
    let mut fits: Vec<PresetFit> = configs
        .iter()
        .map(|cfg| {
            let report = keymap::plan(source, keys, &config_model_keys(cfg)).report;
            let fit = if report.is_complete() && report.resized.is_empty() {
                Fit::Exact
            } else if report.is_complete() {
                Fit::AfterResizing
            } else if report.encoder_fully_loaded() && report.shape_mismatched.is_empty() {
                Fit::ImageEncoderOnly
            } else if report.loaded > 0 {
                Fit::Partial
            } else {
                Fit::None
            };
            PresetFit {
                preset: cfg.name.clone(),
                fit,
                report,
            }
        })
        .collect();
    fits.sort_by_key(|f| (f.fit, usize::MAX - f.report.loaded, f.report.resized.len()));
    fits
}

/// Reads the Swin geometry off the key names and shapes (with or without `visual_encoder.`).
pub fn swin_geometry(keys: &[CheckpointKey]) -> Option<SwinGeometry> {
    let strip = |n: &str| -> String {
        let n = n.trim_start_matches("module.");
        n.strip_prefix("visual_encoder.").unwrap_or(n).to_string()
    };
    let by_name: BTreeMap<String, &CheckpointKey> =
        keys.iter().map(|k| (strip(&k.name), k)).collect();
    let embed_dim = by_name
        .get("patch_embed.proj.weight")?
        .shape
        .first()
        .copied()?;
    let mut depths = Vec::new();
    let mut num_heads = Vec::new();
    for stage in 0.. {
        let blocks = (0..)
            .take_while(|b| {
                by_name.contains_key(&format!("layers.{stage}.blocks.{b}.norm1.weight"))
            })
            .count();
        if blocks == 0 {
            break;
        }
        depths.push(blocks);
        let table = by_name.get(&format!(
            "layers.{stage}.blocks.0.attn.relative_position_bias_table"
        ));
        num_heads.push(table.and_then(|t| t.shape.get(1).copied()).unwrap_or(0));
    }
    if depths.is_empty() {
        return None;
    }
    let window_size = by_name
        .get("layers.0.blocks.0.attn.relative_position_bias_table")
        .and_then(|t| t.shape.first())
        .map(|&rows| ((rows as f64).sqrt().round() as usize).div_ceil(2));
    let img_size = match (by_name.get("layers.0.blocks.1.attn_mask"), window_size) {
        (Some(m), Some(w)) if m.shape.len() == 3 => {
            let per_side = (m.shape[0] as f64).sqrt().round() as usize;
            Some(per_side * w * 4)
        }
        _ => None,
    };
    let family = match (embed_dim, depths.as_slice()) {
        (128, [2, 2, 18, 2]) => "Swin-B",
        (192, [2, 2, 18, 2]) => "Swin-L",
        _ => "custom",
    };
    Some(SwinGeometry {
        embed_dim,
        depths,
        num_heads,
        window_size,
        img_size,
        family: family.to_string(),
    })
}

/// Inspects a checkpoint file, or the model of a tagfix checkpoint folder or of a run folder's
/// newest whole checkpoint ([`training_checkpoint`]); `extra_configs` are fitted besides the
/// official presets.
pub fn inspect(path: &Path, extra_configs: &[RamPlusConfig]) -> Result<CheckpointInfo> {
    let training = training_checkpoint(path)?;
    let model_file = training.as_ref().map(|t| t.dir.join(CHECKPOINT_TENSORS[0]));
    let path = model_file.as_deref().unwrap_or(path);
    let ReadCheckpoint {
        set,
        format,
        container,
        extras,
    } = read_checkpoint(path)?;
    let keys = keymap::checkpoint_keys(&set);
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: Vec<GroupInfo> = Vec::new();
    // Index of each group in `groups` (first-seen order): a file of many top-level names stays linear.
    let mut group_index: HashMap<&str, usize> = HashMap::new();
    let (mut elements, mut bytes) = (0, 0);
    for (name, t) in &set.tensors {
        *dtypes.entry(t.dtype.to_string()).or_default() += 1;
        elements += t.numel();
        bytes += t.data.len();
        let g = module_group(name.trim_start_matches("module."));
        let i = *group_index.entry(g).or_insert_with(|| {
            groups.push(GroupInfo {
                group: g.to_string(),
                tensors: 0,
                elements: 0,
            });
            groups.len() - 1
        });
        groups[i].tensors += 1;
        groups[i].elements += t.numel();
    }
    let label_embed = keys.iter().find(|k| k.name.trim_start_matches("module.") == "label_embed").map(|k| {
        let rows = k.shape.first().copied().unwrap_or(0);
        let n = RAM_NUM_CLASS;
        match tensors::Layout::detect(rows, n, path) {
            Ok(tensors::Layout::PerTag { .. }) => format!("{rows} rows: RAM layout, one row per tag of a {n}-tag vocabulary"),
            Ok(tensors::Layout::PerDescription { per_tag, .. }) => {
                format!("{rows} rows: RAM++ layout, {per_tag} description rows per tag of a {n}-tag vocabulary")
            }
            Err(_) => format!("{rows} rows: not a multiple of the {n}-tag vocabulary (another vocabulary?)"),
        }
    });
    let mut configs = RamPlusConfig::presets();
    configs.extend(extra_configs.iter().cloned());
    let source = path.display().to_string();
    Ok(CheckpointInfo {
        path: source.clone(),
        format,
        container,
        keys: set
            .tensors
            .iter()
            .map(|(n, t)| KeyInfo {
                name: n.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype.to_string(),
            })
            .collect(),
        elements,
        bytes,
        dtypes,
        groups,
        swin: swin_geometry(&keys),
        label_embed,
        fits: fit_presets(&source, &keys, &configs),
        extras,
        training,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(cfg: &RamPlusConfig) -> Vec<CheckpointKey> {
        cfg.state_dict_layout()
            .into_iter()
            .map(|e| CheckpointKey {
                name: e.name,
                shape: e.shape,
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_folder_or_run_folder_is_inspected_through_its_whole_checkpoint() {
        use crate::train::run_files::tests::write_checkpoint;
        let run = tempfile::tempdir().unwrap();
        let step = |n: u64| run.path().join(format!("checkpoints/step-{n:08}"));
        for n in [2, 4] {
            write_checkpoint(&step(n), n);
        }
        let info = inspect(run.path(), &[]).unwrap();
        let t = info.training.as_ref().unwrap();
        assert_eq!((t.dir.clone(), t.step, t.verified), (step(4), 4, true));
        assert_eq!(t.loss_weights, "tag=1,align=10,dis=100");
        assert!(info.path.ends_with("step-00000004/model.safetensors"));
        assert_eq!(info.keys.len(), 1);
        // One changed byte of step 4's model: the run shows step 2 and why, the folder is refused.
        let model = step(4).join("model.safetensors");
        let mut bytes = std::fs::read(&model).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&model, bytes).unwrap();
        let t = inspect(run.path(), &[]).unwrap().training.unwrap();
        assert_eq!(t.step, 2);
        assert!(
            t.passed_over[0].1.contains("its bytes changed"),
            "{:?}",
            t.passed_over
        );
        let e = inspect(&step(4), &[]).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Input);
        // A folder that is neither, and a run without a checkpoint.
        let e = inspect(&run.path().join("checkpoints"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a tagfix checkpoint"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("checkpoints")).unwrap();
        let e = inspect(empty.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("has no checkpoint yet"), "{e}");
        // A file is inspected as it is.
        assert!(inspect(&step(2).join("model.safetensors"), &[])
            .unwrap()
            .training
            .is_none());
    }

    #[test]
    fn each_preset_fits_itself_exactly_and_others_less() {
        let presets = RamPlusConfig::presets();
        for cfg in &presets {
            let fits = fit_presets("x", &keys_of(cfg), &presets);
            assert_eq!(fits[0].preset, cfg.name);
            assert_eq!(fits[0].fit, Fit::Exact);
            assert!(
                fits[1..].iter().all(|f| f.fit != Fit::Exact),
                "{}",
                cfg.name
            );
        }
    }

    #[test]
    fn swin_l_224_fits_swin_l_384_after_resizing() {
        let presets = RamPlusConfig::presets();
        let l224 = RamPlusConfig::preset("swin_l_224").unwrap();
        let fits = fit_presets("x", &keys_of(&l224), &presets);
        let l384 = fits.iter().find(|f| f.preset == "swin_l_384").unwrap();
        assert_eq!(l384.fit, Fit::AfterResizing);
        assert_eq!(l384.report.resized.len(), 24);
    }

    #[test]
    fn bare_swin_keys_fit_the_encoder_only_and_geometry_is_read() {
        let cfg = RamPlusConfig::preset("swin_b_384").unwrap();
        let keys: Vec<CheckpointKey> = keys_of(&cfg)
            .into_iter()
            .filter_map(|k| {
                Some(CheckpointKey {
                    name: k.name.strip_prefix("visual_encoder.")?.to_string(),
                    shape: k.shape,
                })
            })
            .collect();
        let fits = fit_presets("x", &keys, &RamPlusConfig::presets());
        assert_eq!(
            (fits[0].preset.as_str(), fits[0].fit),
            ("swin_b_384", Fit::ImageEncoderOnly)
        );
        let g = swin_geometry(&keys).unwrap();
        assert_eq!(g.family, "Swin-B");
        assert_eq!((g.window_size, g.img_size), (Some(12), Some(384)));
        assert_eq!(g.depths, vec![2, 2, 18, 2]);
        assert_eq!(g.num_heads, vec![4, 8, 16, 32]);
    }
}
