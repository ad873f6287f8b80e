//! The `model_config` target: a reference `config.json` given as `--model` to `tag`, `eval`,
//! `train` and `inspect` (`checkpoint::model_config::RamPlusConfig::from_reference_json`), then
//! everything computed from an accepted configuration before libtorch builds it: the state-dict
//! layout, the parameter count, the block geometry, the drop-path rates and `inspect`'s key list.

use super::generate::{int, pick_from};
use crate::checkpoint::model_config::RamPlusConfig;
use crate::rng::SplitMix64;
use std::path::Path;

pub(super) fn target() -> super::Target {
    super::Target {
        name: "model_config",
        file: "config.json",
        run: run_model_config,
        dict: CONFIG_DICT,
        generate: Some(gen_model_config),
        seeds: model_config_seeds,
        shared_seeds: &[],
    }
}

fn run_model_config(path: &Path, _: &[u8]) {
    let Ok(cfg) = RamPlusConfig::from_reference_json(path) else {
        return;
    };
    let layout = cfg.state_dict_layout();
    assert!(!layout.is_empty());
    let _ = (
        cfg.num_parameters(),
        cfg.swin.num_tokens(),
        cfg.swin.vision_width(),
    );
    assert_eq!(cfg.swin.blocks().len(), cfg.swin.drop_path_rates().len());
    let _ = crate::checkpoint::inspect::config_model_keys(&cfg);
}

/// The fields `from_reference_json` reads and values at their edges.
#[rustfmt::skip]
const CONFIG_DICT: &[&[u8]] = &[
    b"\"swin\"", b"\"q2l\"", b"\"config_json\"", b"\"num_class\"", b"\"des_per_class\"",
    b"\"img_size\"", b"\"patch_size\"", b"\"in_chans\"", b"\"embed_dim\"", b"\"depths\"",
    b"\"num_heads\"", b"\"window_size\"", b"\"mlp_ratio\"", b"\"qkv_bias\"", b"\"drop_path_rate\"",
    b"\"hidden_size\"", b"\"num_hidden_layers\"", b"\"num_attention_heads\"",
    b"\"intermediate_size\"", b"\"layer_norm_eps\"", b"\"encoder_width_override\"",
    b"18446744073709551615", b"4294967296", b"1e308", b"-0.0", b"NaN", b"null", b"[]",
];

/// The tiny reference model's fields (RAM_plus at 64 px, as `ram/reference/tiny` describes it).
const TINY: &str = r#"{"variant": "tiny", "num_class": 10, "des_per_class": 3,
 "swin": {"img_size": 64, "patch_size": 4, "in_chans": 3, "embed_dim": 16, "depths": [2, 2, 2, 2],
          "num_heads": [2, 2, 4, 4], "window_size": 4, "mlp_ratio": 4.0, "qkv_bias": true,
          "drop_path_rate": 0.1},
 "q2l": {"config_json": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 64, "layer_norm_eps": 1e-12,
                         "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                         "initializer_range": 0.02},
         "encoder_width_override": 512}}"#;

/// The tiny model, its 224 px form with window 7, and one whose blocks a stage would hold billions.
fn model_config_seeds() -> Vec<(String, Vec<u8>)> {
    let w7 = TINY
        .replace("\"img_size\": 64", "\"img_size\": 224")
        .replace("\"window_size\": 4", "\"window_size\": 7");
    let huge = TINY.replace("[2, 2, 2, 2]", "[2, 2, 4294967296, 2]");
    [
        ("tiny.json", TINY.to_string()),
        ("tiny_224_w7.json", w7),
        ("deep.json", huge),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.into_bytes()))
    .collect()
}

/// A configuration of the tiny model's shape: in one file of three every value sane, in the others
/// each number now and then a boundary integer, the stages of another count, the ratio and epsilon
/// out of range.
fn gen_model_config(rng: &mut SplitMix64) -> Vec<u8> {
    // One in `odds` values is wild; never in a sane file.
    let odds = *pick_from(rng, &[0u64, 6, 30]);
    let wild = |rng: &mut SplitMix64| odds > 0 && rng.below(odds) == 0;
    let n = |sane: i64, rng: &mut SplitMix64| match wild(rng) {
        true => int(rng).to_string(),
        false => sane.to_string(),
    };
    let stages = match wild(rng) {
        true => *pick_from(rng, &[0usize, 1, 3, 9]),
        false => 4,
    };
    let list = |rng: &mut SplitMix64| {
        (0..stages)
            .map(|_| n(2, rng))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (depths, heads) = (list(rng), list(rng));
    let ratio = match wild(rng) {
        true => *pick_from(rng, &["0.0", "-1", "1e300", "0.5"]),
        false => "4.0",
    };
    let eps = match wild(rng) {
        true => *pick_from(rng, &["0", "1.0", "-1e-5"]),
        false => "1e-12",
    };
    format!(
        r#"{{"num_class": {}, "des_per_class": {},
 "swin": {{"img_size": {}, "patch_size": {}, "in_chans": {}, "embed_dim": {}, "depths": [{depths}],
          "num_heads": [{heads}], "window_size": {}, "mlp_ratio": {ratio}, "qkv_bias": true,
          "drop_path_rate": 0.1}},
 "q2l": {{"config_json": {{"hidden_size": {}, "num_hidden_layers": {}, "num_attention_heads": {},
                         "intermediate_size": {}, "layer_norm_eps": {eps},
                         "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                         "initializer_range": 0.02}}, "encoder_width_override": {}}}}}"#,
        n(10, rng),
        n(3, rng),
        n(64, rng),
        n(4, rng),
        n(3, rng),
        n(16, rng),
        n(4, rng),
        n(32, rng),
        n(2, rng),
        n(2, rng),
        n(64, rng),
        n(512, rng),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny seed loads as the reference fixture does; the deep one is refused by name; generated
    /// configurations are the same for a seed and some load.
    #[test]
    fn seeds_and_generated_configs_reach_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let seeds = model_config_seeds();
        std::fs::write(&path, &seeds[0].1).unwrap();
        let tiny = RamPlusConfig::from_reference_json(&path).unwrap();
        assert_eq!(tiny.swin.num_tokens(), 4);
        std::fs::write(&path, &seeds[2].1).unwrap();
        let err = crate::error::report(&RamPlusConfig::from_reference_json(&path).unwrap_err());
        assert!(err.contains("blocks in a stage"), "{err}");
        let mut loaded = 0;
        for i in 0..40 {
            let input = gen_model_config(&mut SplitMix64(i));
            assert_eq!(input, gen_model_config(&mut SplitMix64(i)));
            std::fs::write(&path, &input).unwrap();
            loaded += usize::from(RamPlusConfig::from_reference_json(&path).is_ok());
        }
        assert!(loaded >= 10, "{loaded} of 40 loaded");
    }
}
