//! Every key, shape, dtype and kind of the official RAM++ state dicts (the manifests in
//! `../shared/ram/reference/*.keys.json` and the tiny fixtures' `state_dict_keys_in_order`) is
//! produced, in order, by the configuration's layout and by the libtorch model's VarStore (whose
//! parameters are created in that order).
#![cfg(feature = "train")]

mod common;

use common::reference_dir;
use std::collections::BTreeMap;
use tagfix::checkpoint::model_config::{EntryDtype, EntryKind, StateEntry};
use tagfix::train::model::{ParamInit, RamPlus, RamPlusConfig};
use tch::{nn, Device, Kind};

#[derive(serde::Deserialize)]
struct Manifest {
    entries: Vec<StateEntry>,
    total_parameters: usize,
}

#[derive(serde::Deserialize)]
struct FixtureKeys {
    state_dict_keys_in_order: Vec<StateEntry>,
}

type Entries = BTreeMap<String, (Vec<usize>, EntryDtype, EntryKind)>;

/// The VarStore of a model built without writing its parameters (large tensors stay untouched),
/// and the names of its trainable variables in creation order (the order of the init's draws).
fn varstore_entries(cfg: &RamPlusConfig) -> (Entries, Vec<String>) {
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = RamPlus::new(&vs, cfg, ParamInit::Uninitialized).unwrap();
    let trainable: Vec<_> = vs.trainable_variables();
    let vars = vs.variables();
    let created = trainable
        .iter()
        .map(|t| {
            let (name, _) = vars
                .iter()
                .find(|(_, v)| v.data_ptr() == t.data_ptr() && v.size() == t.size())
                .expect("every trainable variable is named");
            name.clone()
        })
        .collect();
    let entries = vars
        .into_iter()
        .map(|(name, t)| {
            let dtype = match t.kind() {
                Kind::Float => EntryDtype::Float32,
                Kind::Int64 => EntryDtype::Int64,
                k => panic!("{name}: unexpected kind {k:?}"),
            };
            let is_param = trainable
                .iter()
                .any(|p| p.data_ptr() == t.data_ptr() && p.size() == t.size());
            let kind = if is_param {
                EntryKind::Parameter
            } else {
                EntryKind::Buffer
            };
            (
                name,
                (t.size().iter().map(|&d| d as usize).collect(), dtype, kind),
            )
        })
        .collect();
    (entries, created)
}

fn check(cfg: &RamPlusConfig, expected: &[StateEntry], what: &str) {
    // The pure layout: same entries in the same (state_dict) order.
    let layout = cfg.state_dict_layout();
    for (i, (a, b)) in layout.iter().zip(expected).enumerate() {
        assert_eq!(a, b, "{what}: entry {i} of the layout differs");
    }
    assert_eq!(layout.len(), expected.len(), "{what}: entry count");

    // The libtorch model: same names, shapes, dtypes, and parameter/buffer split; its parameters
    // are created in the layout's order (both walk `checkpoint::model_def`).
    let (got, created) = varstore_entries(cfg);
    let layout_params: Vec<_> = layout
        .iter()
        .filter(|e| e.kind == EntryKind::Parameter)
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(created, layout_params, "{what}: parameter creation order");
    let want: BTreeMap<_, _> = expected
        .iter()
        .map(|e| (e.name.clone(), (e.shape.clone(), e.dtype, e.kind)))
        .collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
    for (name, w) in &want {
        assert_eq!(&got[name], w, "{what}: {name}");
    }
}

#[test]
fn official_manifests_match_layout_and_model() {
    let Some(dir) = reference_dir() else { return };
    for preset in ["swin_l_224", "swin_l_384", "swin_b_224", "swin_b_384"] {
        let path = dir.join(format!("ram_plus_{preset}.keys.json"));
        let m: Manifest = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let cfg = RamPlusConfig::preset(preset).unwrap();
        check(&cfg, &m.entries, preset);
        assert_eq!(cfg.num_parameters(), m.total_parameters, "{preset}");
        println!(
            "{preset}: {} entries, {} parameters: match",
            m.entries.len(),
            m.total_parameters
        );
    }
}

#[test]
fn tiny_fixture_keys_match_layout_and_model() {
    let Some(dir) = reference_dir() else { return };
    for fixture in ["tiny", "tiny_224_w7"] {
        let path = dir.join(fixture).join("config.json");
        let cfg = RamPlusConfig::from_reference_json(&path).unwrap();
        let keys: FixtureKeys =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        check(&cfg, &keys.state_dict_keys_in_order, fixture);
        if fixture == "tiny" {
            let mut builtin = RamPlusConfig::tiny(cfg.num_class, cfg.des_per_class);
            builtin.name = cfg.name.clone();
            assert_eq!(
                builtin, cfg,
                "RamPlusConfig::tiny has the geometry of the tiny fixture"
            );
        }
    }
}
