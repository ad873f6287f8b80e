//! Named vocabulary presets. `vocab/<name>.toml` holds the project's manifest of a known vocabulary
//! (tag count, sha256 of the official file, its sidecars); the list itself is looked up at run time.

use super::VocabError;
use crate::error::Result;
use crate::fsutil::{sha256_file, shared_dir};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A preset manifest as stored in `vocab/*.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct Preset {
    pub name: String,
    pub description: String,
    /// File name of the tag list inside the data directory.
    pub file: String,
    pub tag_count: usize,
    pub sha256: String,
    #[serde(default)]
    pub sidecars: Vec<PresetSidecar>,
}

/// A sidecar file aligned with a preset vocabulary.
#[derive(Debug, Clone, Deserialize)]
pub struct PresetSidecar {
    pub name: String,
    pub file: String,
    /// `text` or `threshold`.
    pub kind: String,
    pub sha256: String,
}

/// Whether the file found for a preset is the official one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresetStatus {
    /// Same sha256 as the project's manifest.
    Official,
    /// The file differs from the official one (edited, re-saved, other version).
    Modified,
}

/// A preset resolved to a file on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedPreset {
    pub name: String,
    pub path: PathBuf,
    pub status: PresetStatus,
    /// Sidecars found beside the list, by name.
    pub sidecars: Vec<(String, PathBuf)>,
}

const BUILTIN: &[(&str, &str)] = &[("ram", include_str!("../../vocab/ram.toml"))];

impl Preset {
    /// The built-in preset called `name`, if any.
    pub fn builtin(name: &str) -> Option<Preset> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, text)| {
            toml::from_str(text).expect("built-in preset manifests are valid TOML")
        })
    }

    /// Names of the built-in presets.
    pub fn names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// Environment variable that points at the directory holding this preset's files.
    pub fn env_var(&self) -> String {
        format!("TAGFIX_{}_DATA", self.name.to_uppercase())
    }

    /// Directories searched, in order: `$TAGFIX_<NAME>_DATA`, then `<shared>/ram/data`.
    pub fn search_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os(self.env_var()) {
            dirs.push(PathBuf::from(d));
        }
        if let Some(shared) = shared_dir() {
            dirs.push(shared.join("ram").join("data"));
        }
        dirs
    }

    /// Finds the preset's tag list and checks its hash against the manifest.
    pub fn resolve(&self) -> Result<ResolvedPreset> {
        let dirs = self.search_dirs();
        let Some(dir) = dirs.iter().find(|d| d.join(&self.file).is_file()) else {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(VocabError::PresetNotFound {
                name: self.name.clone(),
                file: self.file.clone(),
                searched: if searched.is_empty() {
                    match std::env::var_os(crate::fsutil::SHARED_ENV) {
                        Some(v) => format!(
                            "nothing: {} is unset and {}={} is not a directory",
                            self.env_var(),
                            crate::fsutil::SHARED_ENV,
                            PathBuf::from(v).display()
                        ),
                        None => format!(
                            "nothing: {} is unset and there is no ../shared",
                            self.env_var()
                        ),
                    }
                } else {
                    searched.join(", ")
                },
                env_var: self.env_var(),
                shared_env: crate::fsutil::SHARED_ENV,
            }
            .into());
        };
        let path = dir.join(&self.file);
        let status = if sha256_file(&path)? == self.sha256 {
            PresetStatus::Official
        } else {
            tracing::warn!(
                "{} differs from the official `{}` vocabulary (sha256 mismatch): reporting it as modified",
                path.display(),
                self.name
            );
            PresetStatus::Modified
        };
        let sidecars = self
            .sidecars
            .iter()
            .filter(|s| dir.join(&s.file).is_file())
            .map(|s| (s.name.clone(), dir.join(&s.file)))
            .collect();
        Ok(ResolvedPreset {
            name: self.name.clone(),
            path,
            status,
            sidecars,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_preset_manifest_parses() {
        let p = Preset::builtin("ram").unwrap();
        assert_eq!(p.tag_count, 4585);
        assert_eq!(p.sidecars.len(), 2);
        assert_eq!(p.env_var(), "TAGFIX_RAM_DATA");
        assert!(Preset::builtin("nope").is_none());
    }
}
