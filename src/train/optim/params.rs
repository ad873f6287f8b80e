//! Which parameters AdamW trains and how: module groups, weight decay by name and shape, frozen
//! prefixes, and each trained parameter with its moments.

use crate::error::Result;
use crate::monitor::ModuleGroup;
use crate::train::dist::zero::Slice;
use crate::train::error::TrainError;
use tch::nn::VarStore;
use tch::Tensor;

/// The monitor's module group of a parameter name.
pub fn module_group(name: &str) -> ModuleGroup {
    match name.split('.').next().unwrap_or(name) {
        "visual_encoder" => ModuleGroup::ImageEncoder,
        "tagging_head" | "fc" => ModuleGroup::TaggingHead,
        "label_embed" => ModuleGroup::LabelEmbed,
        _ => ModuleGroup::Projections,
    }
}

/// Whether AdamW decays a parameter: weight matrices and convolution kernels do; biases, norm
/// weights, scalars (`reweight_scale`) and Swin's relative position tables (timm's
/// `no_weight_decay_keywords`) do not.
pub fn decays(name: &str, dims: usize) -> bool {
    dims >= 2 && !name.ends_with("relative_position_bias_table")
}

/// One trained parameter and its AdamW state.
pub(super) struct Param {
    pub(super) name: String,
    pub(super) var: Tensor,
    pub(super) decay: bool,
    pub(super) group: ModuleGroup,
    /// The moments of the values this rank updates: the parameter's shape when it updates all of
    /// it, else flat (the slice's values); empty when it updates none.
    pub(super) exp_avg: Tensor,
    pub(super) exp_avg_sq: Tensor,
    /// The values this rank updates: all of them unless sharded.
    pub(super) slice: Option<Slice>,
}

impl Param {
    pub(super) fn numel(&self) -> i64 {
        self.var.numel() as i64
    }

    /// Whether this rank updates every value.
    pub(super) fn whole(&self) -> bool {
        self.slice
            .is_some_and(|s| s.start == 0 && s.len == self.numel())
    }

    /// The part of `t` (the parameter or its gradient) this rank updates: `t` itself or a flat view
    /// of the slice. Make views of the parameter under `no_grad`.
    pub(super) fn part_of(&self, t: &Tensor) -> Option<Tensor> {
        let slice = self.slice?;
        Some(if self.whole() {
            t.shallow_clone()
        } else {
            slice.of(t)
        })
    }
}

/// Which parameters are trained and how; stated in the log at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParamSummary {
    pub trained_tensors: usize,
    pub trained_values: i64,
    pub decayed_tensors: usize,
    pub frozen: Vec<String>,
    pub frozen_values: i64,
}

impl std::fmt::Display for ParamSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "training {} tensors ({} values; weight decay on {}, none on norms/biases/position tables); frozen: {}",
            self.trained_tensors,
            self.trained_values,
            self.decayed_tensors,
            if self.frozen.is_empty() {
                "nothing".to_string()
            } else {
                format!("{} ({} values)", self.frozen.join(", "), self.frozen_values)
            }
        )
    }
}

/// The variables training updates, sorted by name, and their summary: those with `requires_grad`
/// (constant buffers have none) whose names start with none of `frozen_prefixes`; the frozen ones get
/// `requires_grad` off. A prefix matching nothing, or nothing left to train, is an error. Allocates
/// nothing, so `train --dry-run` makes the same checks.
pub fn select_trained(
    vs: &VarStore,
    frozen_prefixes: &[String],
) -> Result<(Vec<(String, Tensor)>, ParamSummary)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for p in frozen_prefixes {
        if !vars.iter().any(|(n, _)| n.starts_with(p.as_str())) {
            return Err(TrainError::FreezeMatchesNothing(p.clone()).into());
        }
    }
    let mut summary = ParamSummary::default();
    let mut trained = Vec::new();
    for (name, var) in vars {
        if !var.requires_grad() {
            continue; // constant buffers
        }
        if frozen_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = var.set_requires_grad(false);
            summary.frozen_values += var.numel() as i64;
            summary.frozen.push(name);
            continue;
        }
        summary.trained_tensors += 1;
        summary.trained_values += var.numel() as i64;
        summary.decayed_tensors += usize::from(decays(&name, var.dim()));
        trained.push((name, var));
    }
    if trained.is_empty() {
        return Err(TrainError::AllFrozen.into());
    }
    Ok((trained, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::TrainConfig;
    use crate::train::optim::AdamW;
    use tch::nn;
    use tch::Device;

    #[test]
    fn groups_by_name_and_freeze() {
        let _torch = crate::train::torch_test_lock();
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _l = nn::linear(&root / "visual_encoder" / "proj", 4, 3, Default::default());
        let _n = nn::layer_norm(
            &root / "tagging_head" / "LayerNorm",
            vec![3],
            Default::default(),
        );
        let _e = root.var("label_embed", &[6, 4], nn::Init::Const(0.1));
        let opt = AdamW::new(&vs, &["label_embed".to_string()], &TrainConfig::default()).unwrap();
        assert_eq!(opt.summary.frozen, vec!["label_embed".to_string()]);
        assert_eq!(opt.summary.trained_tensors, 4);
        assert_eq!(
            opt.summary.decayed_tensors, 1,
            "only the linear weight decays"
        );
        assert!(!vs.variables()["label_embed"].requires_grad());
        assert!(AdamW::new(&vs, &["nope".to_string()], &TrainConfig::default()).is_err());
        assert_eq!(module_group("fc.weight"), ModuleGroup::TaggingHead);
        assert_eq!(module_group("image_proj.bias"), ModuleGroup::Projections);
    }
}
