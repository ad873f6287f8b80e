//! Configuration files and overrides: a `.toml` in tagfix's keys or RAM's `.yaml` read into a
//! [`TrainConfig`] (unknown keys set aside and reported, numbers in strings read as numbers, values
//! TOML cannot hold refused naming the key), `--set KEY=VALUE` overrides, and the `config.toml` a run
//! writes.

use super::{ConfigError, Stage, TrainConfig};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// RAM YAML keys tagfix reads but does not act on; they are listed in the log.
const IGNORED_RAM_KEYS: &[&str] = &["vit_grad_ckpt", "vit_ckpt_layer"];

/// A loaded configuration file and what it did not use.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: TrainConfig,
    /// Keys present in the file that tagfix ignores (RAM-only settings or unknown keys).
    pub ignored_keys: Vec<String>,
}

impl TrainConfig {
    /// Reads a `.toml`, `.yaml` or `.yml` file. Unknown keys are collected in `ignored_keys`; a value of
    /// the wrong type is an error naming the file and key.
    pub fn load(path: &Path) -> Result<LoadedConfig> {
        let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let map = read_table(path, &text)?;
        Ok(Self::from_table(path, map)?)
    }

    /// The settings of a file's top-level table: unknown keys set aside, numbers in strings read as
    /// numbers, the stage taken from a `finetune` file name when the file does not say.
    fn from_table(
        path: &Path,
        mut map: serde_json::Map<String, serde_json::Value>,
    ) -> Result<LoadedConfig, ConfigError> {
        let known = known_keys();
        let mut ignored = Vec::new();
        map.retain(|k, _| {
            let keep = known.contains(&k.as_str());
            if !keep {
                ignored.push(k.clone());
            }
            keep
        });
        if let Some(key) = map.iter().find_map(|(k, v)| beyond_toml(v).then_some(k)) {
            return Err(ConfigError::BeyondToml {
                path: path.into(),
                key: key.clone(),
            });
        }
        let stage_given = map.contains_key("stage");
        // YAML writes 1e-4 as a string ("1e-4" without a dot is not a YAML float); accept numbers in strings.
        for v in map.values_mut() {
            if let serde_json::Value::String(s) = v {
                if let Ok(n) = s.trim().parse::<f64>() {
                    if let Some(num) = serde_json::Number::from_f64(n) {
                        *v = serde_json::Value::Number(num);
                    }
                }
            }
        }
        let mut config: TrainConfig = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|cause| ConfigError::Value {
                path: path.into(),
                cause,
            })?;
        if !stage_given
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.contains("finetune"))
        {
            config.stage = Stage::Finetune;
        }
        ignored.sort();
        Ok(LoadedConfig {
            config,
            ignored_keys: ignored,
        })
    }

    /// The configuration as TOML (written to the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }

    /// Overrides from a `KEY=VALUE` list (TOML values), as `--set` passes them.
    pub fn apply_overrides(&mut self, pairs: &[String]) -> Result<(), ConfigError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut map: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(serde_json::to_value(&*self).expect("serialisable"))
                .expect("object");
        for pair in pairs {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::SetSyntax { pair: pair.clone() })?;
            let k = k.trim();
            if !known_keys().contains(&k) {
                return Err(ConfigError::SetUnknownKey { key: k.into() });
            }
            let parsed: toml::Value = toml::from_str(&format!("v = {v}"))
                .map(|t: toml::Table| t["v"].clone())
                .unwrap_or_else(|_| toml::Value::String(v.to_string()));
            if has_non_finite(&parsed) {
                return Err(ConfigError::SetNonFinite {
                    key: k.into(),
                    value: v.trim().into(),
                });
            }
            map.insert(k.to_string(), serde_json::to_value(parsed).expect("json"));
        }
        *self = serde_json::from_value(serde_json::to_value(map).expect("json"))
            .map_err(|cause| ConfigError::SetValue { cause })?;
        Ok(())
    }

    /// The first setting holding an integer TOML cannot write, and its value (a flag such as
    /// `--seed` takes any u64; a config file was checked when read).
    pub(super) fn first_integer_beyond_toml(&self) -> Option<(String, serde_json::Value)> {
        let serde_json::Value::Object(map) = serde_json::to_value(self).ok()? else {
            return None;
        };
        map.into_iter().find(|(_, v)| beyond_toml(v))
    }
}

/// The top-level table of a config file's text, as TOML (`.toml`) or YAML (`.yaml`, `.yml`) by its
/// extension. TOML `inf` / `nan` are refused here, naming the key (JSON has no form for them).
fn read_table(
    path: &Path,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let convert = |cause| ConfigError::Convert {
        path: path.into(),
        cause,
    };
    let value = match ext.as_deref() {
        Some("toml") => {
            let v: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.into(),
                line: e
                    .span()
                    .map(|s| text[..s.start].lines().count().max(1))
                    .unwrap_or(0),
                format: "TOML",
                message: e.message().to_string(),
            })?;
            let non_finite = v
                .as_table()
                .and_then(|t| t.iter().find(|(_, x)| has_non_finite(x)));
            if let Some((key, _)) = non_finite {
                return Err(ConfigError::NonFinite {
                    path: path.into(),
                    key: key.clone(),
                });
            }
            serde_json::to_value(v).map_err(convert)?
        }
        Some("yaml" | "yml") => {
            let v: serde_yaml::Value =
                serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
                    path: path.into(),
                    line: e.location().map(|l| l.line()).unwrap_or(0),
                    format: "YAML",
                    message: e.to_string(),
                })?;
            serde_json::to_value(v).map_err(convert)?
        }
        _ => return Err(ConfigError::UnknownFormat { path: path.into() }),
    };
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(ConfigError::NotATable { path: path.into() }),
    }
}

/// Whether a TOML value holds `inf` or `nan` anywhere (JSON, which the overrides pass through, has
/// neither: they would arrive as a confusing "null").
fn has_non_finite(v: &toml::Value) -> bool {
    match v {
        toml::Value::Float(f) => !f.is_finite(),
        toml::Value::Array(a) => a.iter().any(has_non_finite),
        toml::Value::Table(t) => t.values().any(has_non_finite),
        _ => false,
    }
}

/// Whether a value holds an integer TOML cannot write (above `i64::MAX`; YAML reads them as u64).
fn beyond_toml(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_u64() && n.as_i64().is_none(),
        serde_json::Value::Array(a) => a.iter().any(beyond_toml),
        serde_json::Value::Object(o) => o.values().any(beyond_toml),
        _ => false,
    }
}

/// The configuration's keys, sorted: the field names [`TrainConfig`] serialises (also used by the
/// fuzz harness's config generator).
pub(crate) fn known_keys() -> Vec<&'static str> {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        let serde_json::Value::Object(fields) =
            serde_json::to_value(TrainConfig::default()).expect("the config serialises")
        else {
            unreachable!("a struct serialises to an object")
        };
        let keys: Vec<String> = fields.into_iter().map(|(k, _)| k).collect();
        debug_assert!(IGNORED_RAM_KEYS
            .iter()
            .all(|k| !keys.iter().any(|x| x == k)));
        keys
    });
    let mut keys: Vec<&'static str> = keys.iter().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::tests::chain;
    use crate::train::config::{AbsentPolicy, Schedule};

    #[test]
    fn toml_roundtrip_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "model = \"tiny\"\nbatch_size = 8\nmicro_batch_size = 4\nabsent = \"mask\"\nfoo = 3\n[loss_weights]\ntag = 1\nalign = 1\ndis = 5\n",
        )
        .unwrap();
        let l = TrainConfig::load(&p).unwrap();
        assert_eq!(l.ignored_keys, vec!["foo".to_string()]);
        assert_eq!(l.config.accumulation().unwrap(), (4, 2));
        assert_eq!(l.config.absent, AbsentPolicy::Mask);
        assert_eq!(l.config.loss_weights.dis, 5.0);
        let back: TrainConfig = toml::from_str(&l.config.to_toml()).unwrap();
        assert_eq!(back, l.config);
    }

    #[test]
    fn wrong_type_names_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "batch_size = \"many\"\n").unwrap();
        let e = chain(&TrainConfig::load(&p).unwrap_err());
        assert!(
            e.contains("c.toml: bad value: invalid type: string \"many\""),
            "{e}"
        );
    }

    /// Found by `scripts/fuzz.sh` (target `ram_yaml`): a YAML integer above `i64::MAX` loaded, then
    /// writing the run's config.toml panicked.
    #[test]
    fn integers_toml_cannot_hold_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        for text in [
            "image_size: 9223372036854775808\n",
            "seed: 18446744073709551615\n",
            "random_augment:\n  ops: 9223372036854775808\n",
        ] {
            std::fs::write(&p, text).unwrap();
            let e = TrainConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains("c.yaml") && e.contains("integers above"), "{e}");
        }
        std::fs::write(&p, "seed: 9223372036854775807\n").unwrap();
        let c = TrainConfig::load(&p).unwrap().config;
        assert_eq!(c.seed, i64::MAX as u64);
        assert!(c.to_toml().contains("seed = 9223372036854775807"));
    }

    #[test]
    fn overrides() {
        let mut c = TrainConfig::default();
        c.apply_overrides(&[
            "batch_size=8".into(),
            "absent=\"mask\"".into(),
            "schedule=cosine".into(),
        ])
        .unwrap();
        assert_eq!(c.batch_size, 8);
        assert_eq!(c.absent, AbsentPolicy::Mask);
        assert_eq!(c.schedule, Schedule::Cosine);
        assert!(c.apply_overrides(&["nope=1".into()]).is_err());
    }

    #[test]
    fn ram_yaml_configs_load() {
        let Some(shared) = crate::testutil::shared_dir_for_test("ram_yaml_configs_load") else {
            return;
        };
        let pre = TrainConfig::load(&shared.join("ram/configs/pretrain.yaml")).unwrap();
        let c = &pre.config;
        assert_eq!(c.stage, Stage::Pretrain);
        assert_eq!(
            (c.batch_size, c.init_lr, c.min_lr, c.warmup_lr),
            (52, 1e-4, 5e-7, 5e-7)
        );
        assert_eq!(
            (c.lr_decay_rate, c.max_epoch, c.warmup_steps),
            (0.9, 5, 3000)
        );
        assert_eq!((c.weight_decay, c.class_num), (0.05, Some(4585)));
        assert_eq!(c.model_spec(), "swin_l_224");
        assert_eq!(c.train_file.len(), 6);
        assert_eq!(pre.ignored_keys, vec!["vit_ckpt_layer", "vit_grad_ckpt"]);
        c.validate().unwrap();

        let fine = TrainConfig::load(&shared.join("ram/configs/finetune.yaml")).unwrap();
        let c = &fine.config;
        assert_eq!(c.stage, Stage::Finetune);
        assert_eq!(
            (c.batch_size, c.init_lr, c.min_lr, c.max_epoch),
            (26, 5e-6, 0.0, 2)
        );
        assert_eq!(c.model_spec(), "swin_l_384");
        assert_eq!(c.frozen_prefixes(), vec!["label_embed".to_string()]);
        c.validate().unwrap();
    }

    #[test]
    fn non_finite_numbers_in_a_config_file_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "batch_size = 8\ninit_lr = inf\n").unwrap();
        let e = TrainConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml: init_lr (--lr) holds inf or nan"), "{e}");
    }
}
