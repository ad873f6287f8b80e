//! Matching a checkpoint's keys to a model's state dict, as RAM's loaders do
//! (`ram/models/utils.py` `load_checkpoint_swinbase/swinlarge`, and RAM_plus' ImageNet Swin init):
//! strip the DDP prefix `module.`, rename `vision_multi` → `tagging_head`, map a bare Swin
//! checkpoint (`patch_embed.*`, `layers.*`, `norm.*`) under `visual_encoder.` (or strip that prefix
//! for a bare encoder model), drop the constant buffers `relative_position_index` / `attn_mask`
//! (always recomputed), and plan a bicubic resize of `relative_position_bias_table` when the window
//! differs. The outcome is a [`LoadPlan`] and a [`LoadReport`] that says all of this.
//!
//! Pure bookkeeping without libtorch: `tagfix inspect` uses it to tell which preset a checkpoint fits.

use super::model_config::module_group;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A key of the model being loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelKey {
    pub name: String,
    pub shape: Vec<usize>,
    /// Constant buffers (`relative_position_index`, `attn_mask`) are recomputed, never loaded.
    pub buffer: bool,
}

/// A tensor of the checkpoint (name and shape only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointKey {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The names and shapes of a tensor set, in its order.
pub fn checkpoint_keys(set: &crate::tensors::TensorSet) -> Vec<CheckpointKey> {
    set.tensors
        .iter()
        .map(|(n, t)| CheckpointKey {
            name: n.clone(),
            shape: t.shape.clone(),
        })
        .collect()
}

/// What to do with one checkpoint tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy as is (dtype converted to the model's).
    Copy,
    /// Resize a relative position bias table [(2w−1)², nH] to the model's window, bicubic.
    ResizeBiasTable {
        from_window: usize,
        to_window: usize,
    },
}

/// One checkpoint tensor that goes into the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    pub checkpoint_name: String,
    pub model_name: String,
    pub action: Action,
}

/// A checkpoint buffer the model recomputes; kept to compare it with the recomputed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedBuffer {
    pub checkpoint_name: String,
    /// The model buffer of the same name and shape, when there is one.
    pub model_name: Option<String>,
}

/// The plan: which checkpoint tensors go where, and the report of everything else.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub tensors: Vec<PlannedTensor>,
    pub dropped_buffers: Vec<DroppedBuffer>,
    pub report: LoadReport,
}

/// A key whose shape differs between checkpoint and model (not loaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShapeMismatch {
    pub name: String,
    pub checkpoint: Vec<usize>,
    pub model: Vec<usize>,
}

/// A bias table resized to the model's window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resized {
    pub name: String,
    pub from_window: usize,
    pub to_window: usize,
}

/// Counts for one top-level module (`visual_encoder`, `tagging_head`, `label_embed`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupCounts {
    pub group: String,
    /// Parameters the model has in this group (buffers excluded).
    pub expected: usize,
    pub loaded: usize,
    pub missing: usize,
    pub shape_mismatched: usize,
    /// Loaded after a bicubic resize (counted in `loaded` too).
    pub resized: usize,
    /// Checkpoint tensors mapped into this group that the model does not have.
    pub unexpected: usize,
}

/// What a load did, per module group and key by key. Printed as a table; serialisable to JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// The checkpoint file.
    pub source: String,
    /// What the checkpoint was read as (full RAM++ state dict, bare Swin encoder, ...).
    pub layout: String,
    /// Renames and prefix handling, in words ("stripped `module.` from 402 keys").
    pub notes: Vec<String>,
    pub groups: Vec<GroupCounts>,
    pub expected: usize,
    pub loaded: usize,
    /// Model parameters the checkpoint did not provide (left at their initial values).
    pub missing: Vec<String>,
    /// Checkpoint tensors with no place in the model (names as in the checkpoint).
    pub unexpected: Vec<String>,
    pub shape_mismatched: Vec<ShapeMismatch>,
    pub resized: Vec<Resized>,
    /// Constant buffers found in the checkpoint and recomputed instead of loaded.
    pub buffers_recomputed: usize,
    /// Checkpoint buffers whose values differ from the recomputed ones (filled when values are read).
    pub buffer_mismatches: Vec<String>,
    /// Tensors converted from another dtype (e.g. f16 → f32), filled when values are read.
    pub dtype_converted: usize,
}

const BUFFER_SUFFIXES: [&str; 2] = ["relative_position_index", "attn_mask"];
const ENCODER: &str = "visual_encoder";
const BIAS_TABLE: &str = "relative_position_bias_table";

fn is_buffer_key(name: &str) -> bool {
    BUFFER_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Side of the square window a bias table of `rows` rows belongs to (rows = (2w−1)²).
fn window_of_table(rows: usize) -> Option<usize> {
    let side = (rows as f64).sqrt().round() as usize;
    (side * side == rows && side % 2 == 1).then_some(side.div_ceil(2))
}

/// Stage index and rest of a `[visual_encoder.]layers.{i}.downsample.*` key.
fn downsample_stage(name: &str) -> Option<(&str, usize, &str)> {
    let start = if name.starts_with("layers.") {
        0
    } else {
        name.find(".layers.")? + 1
    };
    let after = &name[start + "layers.".len()..];
    let (stage, rest) = after.split_once('.')?;
    rest.starts_with("downsample.").then_some(())?;
    Some((&name[..start], stage.parse().ok()?, rest))
}

/// Renumbers timm-layout patch-merging keys (no `layers.0.downsample`, but later ones) one stage
/// down; returns how many keys moved.
fn remap_timm_downsample(names: &mut [(String, String)]) -> usize {
    let stages: Vec<usize> = names
        .iter()
        .filter_map(|(_, n)| downsample_stage(n).map(|(_, s, _)| s))
        .collect();
    if stages.is_empty() || stages.contains(&0) {
        return 0;
    }
    let mut moved = 0;
    for (_, n) in names.iter_mut() {
        if let Some((prefix, stage, rest)) = downsample_stage(n) {
            *n = format!("{prefix}layers.{}.{rest}", stage - 1);
            moved += 1;
        }
    }
    moved
}

/// Adds `template` with `{}` replaced by `count` when `count` is non-zero.
fn note_if(notes: &mut Vec<String>, count: usize, template: &str) {
    if count > 0 {
        notes.push(template.replacen("{}", &count.to_string(), 1));
    }
}

/// Plans loading `checkpoint` into a model with `model` keys, in four phases: [`normalise_names`],
/// [`place_encoder`], [`match_keys`], [`group_counts`].
pub fn plan(source: &str, checkpoint: &[CheckpointKey], model: &[ModelKey]) -> LoadPlan {
    let model_by_name: HashMap<&str, &ModelKey> =
        model.iter().map(|k| (k.name.as_str(), k)).collect();
    let (mut names, mut notes) = normalise_names(checkpoint);
    let (layout, encoder_notes) = place_encoder(&mut names, &model_by_name);
    notes.extend(encoder_notes);
    let matched = match_keys(checkpoint, &names, &model_by_name);
    notes.extend(matched.notes());
    let (groups, missing) = group_counts(model, &matched);
    let expected = groups.iter().map(|g| g.expected).sum();
    let loaded = groups.iter().map(|g| g.loaded).sum();
    LoadPlan {
        tensors: matched.tensors,
        report: LoadReport {
            source: source.to_string(),
            layout,
            notes,
            groups,
            expected,
            loaded,
            missing,
            unexpected: matched.unexpected,
            shape_mismatched: matched.mismatched,
            resized: matched.resized,
            buffers_recomputed: matched.dropped_buffers.len(),
            buffer_mismatches: Vec::new(),
            dtype_converted: 0,
        },
        dropped_buffers: matched.dropped_buffers,
    }
}

/// Phase 1: each checkpoint key with the name it is matched under (`(checkpoint, candidate)`):
/// the DDP prefix `module.` stripped, `vision_multi` renamed to `tagging_head` as RAM's loader does,
/// timm's patch-merging keys moved one stage down. Notes say what changed.
pub fn normalise_names(checkpoint: &[CheckpointKey]) -> (Vec<(String, String)>, Vec<String>) {
    let mut notes = Vec::new();
    let mut names: Vec<(String, String)> = Vec::with_capacity(checkpoint.len());
    let mut stripped_module = 0;
    let mut renamed = 0;
    for k in checkpoint {
        let mut n = k.name.as_str();
        while let Some(rest) = n.strip_prefix("module.") {
            n = rest;
            stripped_module += 1;
        }
        let mut n = n.to_string();
        if n.contains("vision_multi") {
            n = n.replace("vision_multi", "tagging_head");
            renamed += 1;
        }
        names.push((k.name.clone(), n));
    }
    note_if(
        &mut notes,
        stripped_module,
        "stripped the DDP prefix `module.` from {} keys",
    );
    note_if(
        &mut notes,
        renamed,
        "renamed `vision_multi` to `tagging_head` in {} keys (as RAM's loader does)",
    );

    // timm >= 0.9 stores a stage's patch merging at the start of the next stage
    // (`layers.{i+1}.downsample`); Microsoft's Swin and RAM put it at the end (`layers.{i}.downsample`).
    let moved = remap_timm_downsample(&mut names);
    note_if(
        &mut notes,
        moved,
        "timm-style Swin keys: moved {} patch-merging keys from `layers.{i+1}.downsample` to `layers.{i}.downsample`",
    );
    (names, notes)
}

/// Phase 2: the encoder prefix — a bare Swin checkpoint into RAM++ gains `visual_encoder.`, a RAM++
/// checkpoint into a bare encoder loses it — for names the model does not already have. Returns what
/// the checkpoint was read as, and notes.
pub fn place_encoder(
    names: &mut [(String, String)],
    model_by_name: &HashMap<&str, &ModelKey>,
) -> (String, Vec<String>) {
    let model_has_encoder_prefix = model_by_name
        .keys()
        .any(|k| k.starts_with("visual_encoder."));
    let checkpoint_has_encoder_prefix = names.iter().any(|(_, n)| n.starts_with("visual_encoder."));
    let mut added = 0;
    let mut stripped_encoder = 0;
    for (_, n) in names.iter_mut() {
        if model_by_name.contains_key(n.as_str()) {
            continue;
        }
        let with = format!("{ENCODER}.{n}");
        if model_has_encoder_prefix && model_by_name.contains_key(with.as_str()) {
            *n = with;
            added += 1;
        } else if let Some(rest) = n.strip_prefix("visual_encoder.") {
            if model_by_name.contains_key(rest) {
                *n = rest.to_string();
                stripped_encoder += 1;
            }
        }
    }
    let layout = if added > 0 && !checkpoint_has_encoder_prefix {
        "Swin image-encoder checkpoint (keys without `visual_encoder.`), loaded into visual_encoder"
    } else if stripped_encoder > 0 {
        "RAM++ checkpoint, image-encoder part loaded into a bare encoder"
    } else if checkpoint_has_encoder_prefix {
        "RAM++ state dict"
    } else {
        "state dict without image-encoder keys"
    };
    let mut notes = Vec::new();
    note_if(
        &mut notes,
        added,
        "added the prefix `visual_encoder.` to {} keys of a bare Swin checkpoint",
    );
    note_if(
        &mut notes,
        stripped_encoder,
        "stripped the prefix `visual_encoder.` from {} keys",
    );
    (layout.to_string(), notes)
}

/// What phase 3 decided for every checkpoint key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matched {
    pub tensors: Vec<PlannedTensor>,
    pub dropped_buffers: Vec<DroppedBuffer>,
    /// Checkpoint names with no place in the model.
    pub unexpected: Vec<String>,
    pub mismatched: Vec<ShapeMismatch>,
    pub resized: Vec<Resized>,
    /// Unexpected keys per module group (of their normalised names).
    pub unexpected_groups: BTreeMap<String, usize>,
    /// Model names that receive a tensor.
    pub loaded: HashSet<String>,
}

impl Matched {
    /// Notes on the buffers dropped and the tables resized.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let dropped = self.dropped_buffers.len();
        if dropped > 0 {
            notes.push(format!(
                "dropped {dropped} constant buffers (relative_position_index, attn_mask) from the checkpoint: recomputed for the model's geometry"
            ));
        }
        if let Some(r) = self.resized.first() {
            notes.push(format!(
                "resized {} relative_position_bias_table tensors bicubically (e.g. window {} → {})",
                self.resized.len(),
                r.from_window,
                r.to_window
            ));
        }
        notes
    }

    fn unexpected(&mut self, checkpoint_name: &str, name: &str) {
        self.unexpected.push(checkpoint_name.to_string());
        *self
            .unexpected_groups
            .entry(module_group(name).to_string())
            .or_default() += 1;
    }

    fn load(&mut self, checkpoint_name: &str, m: &ModelKey, action: Action) {
        self.tensors.push(PlannedTensor {
            checkpoint_name: checkpoint_name.to_string(),
            model_name: m.name.clone(),
            action,
        });
        self.loaded.insert(m.name.clone());
    }
}

/// Phase 3: matches each checkpoint key (under its normalised name from `names`) to the model:
/// constant buffers are dropped (recomputed), equal shapes copied, bias tables of another window
/// resized, anything else unexpected or a shape mismatch.
pub fn match_keys(
    checkpoint: &[CheckpointKey],
    names: &[(String, String)],
    model_by_name: &HashMap<&str, &ModelKey>,
) -> Matched {
    let mut out = Matched::default();
    for (k, (ck_name, name)) in checkpoint.iter().zip(names) {
        if is_buffer_key(name) {
            let model_name = model_by_name
                .get(name.as_str())
                .filter(|m| m.buffer && m.shape == k.shape)
                .map(|m| m.name.clone());
            out.dropped_buffers.push(DroppedBuffer {
                checkpoint_name: ck_name.clone(),
                model_name,
            });
            continue;
        }
        match model_by_name.get(name.as_str()) {
            None => out.unexpected(ck_name, name),
            Some(m) if m.buffer => out.unexpected(ck_name, name),
            Some(m) if m.shape == k.shape => out.load(ck_name, m, Action::Copy),
            Some(m) => match bias_table_resize(name, &k.shape, &m.shape) {
                Some((from_window, to_window)) => {
                    out.load(
                        ck_name,
                        m,
                        Action::ResizeBiasTable {
                            from_window,
                            to_window,
                        },
                    );
                    out.resized.push(Resized {
                        name: m.name.clone(),
                        from_window,
                        to_window,
                    });
                }
                None => out.mismatched.push(ShapeMismatch {
                    name: m.name.clone(),
                    checkpoint: k.shape.clone(),
                    model: m.shape.clone(),
                }),
            },
        }
    }
    out
}

/// The windows (from, to) when a bias table of shape `from` can be resized to `to`.
fn bias_table_resize(name: &str, from: &[usize], to: &[usize]) -> Option<(usize, usize)> {
    let tables = name.ends_with(BIAS_TABLE) && from.len() == 2 && to.len() == 2 && from[1] == to[1];
    tables
        .then(|| Some((window_of_table(from[0])?, window_of_table(to[0])?)))
        .flatten()
}

/// Phase 4: counts per module group (in RAM++'s `state_dict` order of top-level modules, others
/// after them), and the model parameters nothing was loaded into.
pub fn group_counts(model: &[ModelKey], matched: &Matched) -> (Vec<GroupCounts>, Vec<String>) {
    let mut groups: Vec<GroupCounts> = Vec::new();
    let mut group_index: HashMap<String, usize> = HashMap::new();
    let mut group_of = |g: &str, groups: &mut Vec<GroupCounts>| -> usize {
        *group_index.entry(g.to_string()).or_insert_with(|| {
            groups.push(GroupCounts {
                group: g.to_string(),
                ..Default::default()
            });
            groups.len() - 1
        })
    };
    let mut missing = Vec::new();
    for m in model.iter().filter(|m| !m.buffer) {
        let gi = group_of(module_group(&m.name), &mut groups);
        groups[gi].expected += 1;
        if matched.loaded.contains(&m.name) {
            groups[gi].loaded += 1;
        } else {
            groups[gi].missing += 1;
            missing.push(m.name.clone());
        }
    }
    for s in &matched.mismatched {
        let gi = group_of(module_group(&s.name), &mut groups);
        groups[gi].shape_mismatched += 1;
    }
    for r in &matched.resized {
        let gi = group_of(module_group(&r.name), &mut groups);
        groups[gi].resized += 1;
    }
    for (g, n) in &matched.unexpected_groups {
        let gi = group_of(g, &mut groups);
        groups[gi].unexpected += n;
    }
    const ORDER: [&str; 7] = [
        "label_embed",
        "reweight_scale",
        "visual_encoder",
        "tagging_head",
        "wordvec_proj",
        "fc",
        "image_proj",
    ];
    groups.sort_by_key(|g| {
        ORDER
            .iter()
            .position(|o| *o == g.group)
            .unwrap_or(ORDER.len())
    });
    (groups, missing)
}

impl LoadReport {
    /// Every model parameter loaded, nothing unexpected, no shape left unresolved.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatched.is_empty()
    }

    /// Number of checkpoint buffers that differ from the recomputed ones.
    pub fn buffer_mismatches(&self) -> usize {
        self.buffer_mismatches.len()
    }

    /// The counts of one module group.
    pub fn group(&self, name: &str) -> Option<&GroupCounts> {
        self.groups.iter().find(|g| g.group == name)
    }

    /// True when every image-encoder parameter came from the checkpoint.
    pub fn encoder_fully_loaded(&self) -> bool {
        self.group(ENCODER)
            .is_some_and(|g| g.expected > 0 && g.loaded == g.expected)
    }

    /// The report as a readable table, followed by the notes and the first keys of each problem list.
    pub fn to_table(&self) -> String {
        use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header([
            "module",
            "expected",
            "loaded",
            "missing",
            "shape mismatch",
            "resized",
            "unexpected",
        ]);
        let row = |g: &GroupCounts| {
            let mut cells = vec![Cell::new(&g.group)];
            for v in [
                g.expected,
                g.loaded,
                g.missing,
                g.shape_mismatched,
                g.resized,
                g.unexpected,
            ] {
                cells.push(Cell::new(v).set_alignment(CellAlignment::Right));
            }
            cells
        };
        for g in &self.groups {
            t.add_row(row(g));
        }
        let total = GroupCounts {
            group: "total".into(),
            expected: self.expected,
            loaded: self.loaded,
            missing: self.missing.len(),
            shape_mismatched: self.shape_mismatched.len(),
            resized: self.resized.len(),
            unexpected: self.unexpected.len(),
        };
        t.add_row(row(&total));
        let mut out = format!(
            "load report: {}\n  read as: {}\n{t}\n",
            self.source, self.layout
        );
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        if self.dtype_converted > 0 {
            out.push_str(&format!(
                "  note: {} tensors converted to the model's dtype\n",
                self.dtype_converted
            ));
        }
        let list = |out: &mut String, title: &str, items: Vec<String>| {
            if items.is_empty() {
                return;
            }
            out.push_str(&format!("  {title} ({}):\n", items.len()));
            for i in items.iter().take(12) {
                out.push_str(&format!("    {i}\n"));
            }
            if items.len() > 12 {
                out.push_str(&format!(
                    "    ... and {} more (see --json)\n",
                    items.len() - 12
                ));
            }
        };
        list(
            &mut out,
            "missing (left at initial values)",
            self.missing.clone(),
        );
        list(&mut out, "unexpected (ignored)", self.unexpected.clone());
        list(
            &mut out,
            "shape mismatch (not loaded)",
            self.shape_mismatched
                .iter()
                .map(|s| {
                    format!(
                        "{}: checkpoint {:?}, model {:?}",
                        s.name, s.checkpoint, s.model
                    )
                })
                .collect(),
        );
        list(
            &mut out,
            "checkpoint buffers differing from the recomputed ones",
            self.buffer_mismatches.clone(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(name: &str, shape: &[usize]) -> ModelKey {
        ModelKey {
            name: name.into(),
            shape: shape.to_vec(),
            buffer: is_buffer_key(name),
        }
    }
    fn ck(name: &str, shape: &[usize]) -> CheckpointKey {
        CheckpointKey {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    fn model() -> Vec<ModelKey> {
        vec![
            mk("label_embed", &[6, 4]),
            mk(
                "visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table",
                &[49, 2],
            ),
            mk(
                "visual_encoder.layers.0.blocks.0.attn.relative_position_index",
                &[16, 16],
            ),
            mk("visual_encoder.norm.weight", &[8]),
            mk("tagging_head.encoder.layer.0.output.dense.weight", &[3, 3]),
        ]
    }

    #[test]
    fn bare_swin_checkpoint_maps_under_visual_encoder_and_resizes_tables() {
        let ckpt = vec![
            ck(
                "module.layers.0.blocks.0.attn.relative_position_bias_table",
                &[169, 2],
            ),
            ck(
                "module.layers.0.blocks.0.attn.relative_position_index",
                &[49, 49],
            ),
            ck("module.norm.weight", &[8]),
            ck("module.head.weight", &[1000, 8]),
        ];
        let p = plan("swin.pth", &ckpt, &model());
        let r = &p.report;
        assert_eq!(r.loaded, 2);
        assert_eq!(
            r.resized,
            vec![Resized {
                name: "visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table".into(),
                from_window: 7,
                to_window: 4
            }]
        );
        assert_eq!(r.unexpected, vec!["module.head.weight"]);
        assert_eq!(r.buffers_recomputed, 1);
        assert!(r.encoder_fully_loaded());
        assert_eq!(
            r.missing,
            vec![
                "label_embed",
                "tagging_head.encoder.layer.0.output.dense.weight"
            ]
        );
        assert!(
            r.notes.iter().any(|n| n.contains("`module.`")),
            "{:?}",
            r.notes
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("added the prefix `visual_encoder.`")),
            "{:?}",
            r.notes
        );
        assert!(r.layout.starts_with("Swin image-encoder"));
    }

    #[test]
    fn vision_multi_is_renamed_and_shape_mismatch_reported() {
        let ckpt = vec![
            ck("vision_multi.encoder.layer.0.output.dense.weight", &[3, 3]),
            ck("label_embed", &[7, 4]),
            ck("visual_encoder.norm.weight", &[8]),
        ];
        let r = plan("x", &ckpt, &model()).report;
        assert_eq!(r.group("tagging_head").unwrap().loaded, 1);
        assert_eq!(
            r.shape_mismatched,
            vec![ShapeMismatch {
                name: "label_embed".into(),
                checkpoint: vec![7, 4],
                model: vec![6, 4]
            }]
        );
        assert!(!r.is_complete());
        assert!(!r.encoder_fully_loaded(), "the bias table is missing");
        let table = r.to_table();
        assert!(
            table.contains("label_embed: checkpoint [7, 4], model [6, 4]"),
            "{table}"
        );
    }

    #[test]
    fn encoder_prefix_is_stripped_for_a_bare_encoder_model() {
        let enc = vec![mk("norm.weight", &[8]), mk("patch_embed.proj.bias", &[4])];
        let ckpt = vec![
            ck("visual_encoder.norm.weight", &[8]),
            ck("visual_encoder.patch_embed.proj.bias", &[4]),
            ck("label_embed", &[6, 4]),
        ];
        let r = plan("x", &ckpt, &enc).report;
        assert_eq!(r.loaded, 2);
        assert_eq!(r.unexpected, vec!["label_embed"]);
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("stripped the prefix `visual_encoder.` from 2 keys")));
    }

    #[test]
    fn timm_patch_merging_keys_move_one_stage_down() {
        let model = vec![
            mk(
                "visual_encoder.layers.0.downsample.reduction.weight",
                &[16, 32],
            ),
            mk(
                "visual_encoder.layers.1.downsample.reduction.weight",
                &[32, 64],
            ),
            mk("visual_encoder.layers.1.blocks.0.norm1.weight", &[16]),
        ];
        let ckpt = vec![
            ck("layers.1.downsample.reduction.weight", &[16, 32]),
            ck("layers.2.downsample.reduction.weight", &[32, 64]),
            ck("layers.1.blocks.0.norm1.weight", &[16]),
            ck("head.fc.weight", &[1000, 64]),
        ];
        let r = plan("timm.safetensors", &ckpt, &model).report;
        assert!(r.encoder_fully_loaded(), "{}", r.to_table());
        assert_eq!(r.unexpected, vec!["head.fc.weight"]);
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("timm-style Swin keys: moved 2")),
            "{:?}",
            r.notes
        );
        // The official layout (with layers.0.downsample) is left alone.
        let official = vec![ck(
            "visual_encoder.layers.0.downsample.reduction.weight",
            &[16, 32],
        )];
        assert!(plan("x", &official, &model).report.notes.is_empty());
    }

    #[test]
    fn phases_work_alone() {
        // 1: prefix, rename and timm renumbering, without looking at the model.
        let ckpt = vec![
            ck("module.vision_multi.fc.weight", &[3]),
            ck("layers.1.downsample.norm.weight", &[4]),
        ];
        let (mut names, notes) = normalise_names(&ckpt);
        assert_eq!(names[0].1, "tagging_head.fc.weight");
        assert_eq!(names[1].1, "layers.0.downsample.norm.weight");
        assert_eq!(notes.len(), 3, "{notes:?}");

        // 2: only names the model lacks get the encoder prefix.
        let model = [
            mk("tagging_head.fc.weight", &[3]),
            mk("visual_encoder.layers.0.downsample.norm.weight", &[4]),
        ];
        let by_name: HashMap<&str, &ModelKey> =
            model.iter().map(|k| (k.name.as_str(), k)).collect();
        let (layout, notes) = place_encoder(&mut names, &by_name);
        assert_eq!(names[0].1, "tagging_head.fc.weight");
        assert_eq!(names[1].1, "visual_encoder.layers.0.downsample.norm.weight");
        assert!(layout.starts_with("Swin image-encoder"), "{layout}");
        assert_eq!(notes.len(), 1);

        // 3: a shape mismatch, a copy, a dropped buffer, an unexpected key.
        let ckpt = vec![
            ck("a", &[2]),
            ck("b", &[5]),
            ck("x.attn_mask", &[1, 4, 4]),
            ck("c.w", &[1]),
        ];
        let model = [mk("a", &[3]), mk("b", &[5])];
        let by_name: HashMap<&str, &ModelKey> =
            model.iter().map(|k| (k.name.as_str(), k)).collect();
        let names: Vec<_> = ckpt
            .iter()
            .map(|k| (k.name.clone(), k.name.clone()))
            .collect();
        let m = match_keys(&ckpt, &names, &by_name);
        assert_eq!(m.tensors.len(), 1);
        assert_eq!(m.tensors[0].model_name, "b");
        assert_eq!(m.mismatched[0].name, "a");
        assert_eq!(m.dropped_buffers.len(), 1);
        assert_eq!(m.unexpected, vec!["c.w"]);
        assert_eq!(m.unexpected_groups.get("c"), Some(&1));

        // 4: counts per group, RAM++'s module order first.
        let model = [mk("zz.w", &[1]), mk("b", &[5]), mk("label_embed", &[1])];
        let (groups, missing) = group_counts(&model, &m);
        let order: Vec<_> = groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(order, vec!["label_embed", "zz", "b", "a", "c"]);
        assert_eq!(missing, vec!["zz.w", "label_embed"]);
        let b = &groups[2];
        assert_eq!((b.expected, b.loaded), (1, 1));
    }

    #[test]
    fn table_sizes_map_to_windows() {
        assert_eq!(window_of_table(169), Some(7));
        assert_eq!(window_of_table(529), Some(12));
        assert_eq!(window_of_table(9), Some(2));
        assert_eq!(window_of_table(50), None);
        assert_eq!(window_of_table(16), None);
    }
}
