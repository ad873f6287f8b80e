//! Text recipes: which texts represent a tag and how their embeddings combine into its row(s).
//!
//! - `single`: "a photo of a {}." with the processed name (one text, one row).
//! - `ram-ensemble`: RAM's open-set recipe (`ram/utils/openset_utils.py`): its 63 templates with the
//!   processed name (trailing dots removed) and article, "This is " before texts starting with "a" or
//!   "the"; each text normalised, averaged, renormalised.
//! - `templates:FILE`: one template a line (`{}` = processed name, `{article}` = a/an), averaged the same way.
//! - descriptions (RAM++): a JSON file of tag → descriptions, one normalised row per description.

use super::EmbedError;
use crate::error::{Error, Result};
use crate::vocab::normalize_tag;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// RAM's single template.
pub const SINGLE_TEMPLATE: &str = "a photo of a {}.";

/// RAM's open-set templates (`multiple_templates` in recognize-anything `ram/utils/openset_utils.py`).
pub const RAM_TEMPLATES: [&str; 63] = [
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
];

/// RAM's name processing: `_` → space, `/` → " or ", lower case; optionally trailing dots removed.
pub fn processed_name(tag: &str, strip_dots: bool) -> String {
    let name = tag.replace('_', " ").replace('/', " or ").to_lowercase();
    if strip_dots {
        name.trim_end_matches('.').to_string()
    } else {
        name
    }
}

/// RAM's article: "an" when the (unprocessed) name starts with a lower-case vowel.
pub fn article(tag: &str) -> &'static str {
    match tag.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

fn fill(template: &str, name: &str, article: &str) -> String {
    template.replace("{article}", article).replace("{}", name)
}

/// How a slot's text embeddings become its row(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Each text is a row (single template: one; descriptions: k).
    Rows,
    /// Normalise each, average, renormalise: one row.
    Average,
}

/// RAM++ tag descriptions: tag → list of descriptions, matched to vocabulary tags by name.
#[derive(Debug, Clone)]
pub struct Descriptions {
    pub path: PathBuf,
    by_name: HashMap<String, Vec<String>>,
    /// Descriptions per tag (the same for every tag).
    pub per_tag: usize,
}

impl Descriptions {
    /// Reads RAM++'s format (a JSON array of one-key objects `{tag: [descriptions]}`) or a plain JSON
    /// object `{tag: [descriptions]}`. Every tag needs the same number of descriptions.
    pub fn read(path: &Path) -> Result<Self> {
        let value = crate::fsutil::read_json(path)?;
        let objects: Vec<&serde_json::Map<String, serde_json::Value>> = match &value {
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_object().ok_or_else(|| EmbedError::DescriptionItem {
                        path: path.into(),
                        index: i,
                    })
                })
                .collect::<Result<_, _>>()?,
            serde_json::Value::Object(m) => vec![m],
            _ => return Err(EmbedError::DescriptionShape { path: path.into() }.into()),
        };
        let mut by_name = HashMap::new();
        let mut per_tag = None;
        for obj in objects {
            for (tag, list) in obj {
                let descs: Vec<String> = list
                    .as_array()
                    .and_then(|a| a.iter().map(|d| d.as_str().map(str::to_string)).collect())
                    .ok_or_else(|| EmbedError::DescriptionsNotStrings {
                        path: path.into(),
                        tag: tag.clone(),
                    })?;
                match per_tag {
                    None => per_tag = Some(descs.len()),
                    Some(k) if k != descs.len() => {
                        return Err(EmbedError::UnevenDescriptions {
                            path: path.into(),
                            tag: tag.clone(),
                            count: descs.len(),
                            expected: k,
                        }
                        .into())
                    }
                    _ => {}
                }
                if descs.is_empty() {
                    return Err(EmbedError::NoDescriptions {
                        path: path.into(),
                        tag: tag.clone(),
                    }
                    .into());
                }
                if by_name.insert(normalize_tag(tag), descs).is_some() {
                    return Err(EmbedError::TagTwice {
                        path: path.into(),
                        tag: tag.clone(),
                    }
                    .into());
                }
            }
        }
        Ok(Descriptions {
            path: path.to_path_buf(),
            by_name,
            per_tag: per_tag.ok_or_else(|| EmbedError::EmptyRecipe {
                path: path.into(),
                what: "tags",
            })?,
        })
    }

    /// The descriptions of `tag` (matched after name normalisation).
    pub fn get(&self, tag: &str) -> Option<&[String]> {
        self.by_name.get(&normalize_tag(tag)).map(Vec::as_slice)
    }
}

/// A text recipe.
#[derive(Debug, Clone)]
pub enum Recipe {
    Single,
    RamEnsemble,
    Templates {
        path: PathBuf,
        templates: Vec<String>,
    },
    Descriptions(Descriptions),
}

impl Recipe {
    /// Parses `single`, `ram-ensemble` or `templates:FILE`.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "single" => Ok(Recipe::Single),
            "ram-ensemble" => Ok(Recipe::RamEnsemble),
            _ => match spec.strip_prefix("templates:") {
                Some(file) => Self::templates_file(Path::new(file)),
                None => Err(EmbedError::UnknownRecipe(spec.into()).into()),
            },
        }
    }

    /// Reads a template file: one template a line, each containing `{}`; `#` lines and blank lines skipped.
    pub fn templates_file(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut templates = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_end_matches('\r');
            if t.trim().is_empty() || t.trim_start().starts_with('#') {
                continue;
            }
            if !t.contains("{}") {
                return Err(EmbedError::TemplateWithoutSlot {
                    path: path.to_path_buf(),
                    line: i + 1,
                    template: t.into(),
                }
                .into());
            }
            templates.push(t.to_string());
        }
        if templates.is_empty() {
            return Err(EmbedError::EmptyRecipe {
                path: path.into(),
                what: "templates",
            }
            .into());
        }
        Ok(Recipe::Templates {
            path: path.to_path_buf(),
            templates,
        })
    }

    /// The name recorded in provenance.
    pub fn name(&self) -> String {
        match self {
            Recipe::Single => "single".into(),
            Recipe::RamEnsemble => "ram-ensemble".into(),
            Recipe::Templates { path, .. } => format!("templates:{}", path.display()),
            Recipe::Descriptions(d) => format!("descriptions:{}", d.path.display()),
        }
    }

    /// Rows each slot gets (1, or k descriptions).
    pub fn rows_per_slot(&self) -> usize {
        match self {
            Recipe::Descriptions(d) => d.per_tag,
            _ => 1,
        }
    }

    /// Texts embedded per slot.
    pub fn texts_per_slot(&self) -> usize {
        match self {
            Recipe::Single => 1,
            Recipe::RamEnsemble => RAM_TEMPLATES.len(),
            Recipe::Templates { templates, .. } => templates.len(),
            Recipe::Descriptions(d) => d.per_tag,
        }
    }

    /// How the texts of a slot combine.
    pub fn combine(&self) -> Combine {
        match self {
            Recipe::Single | Recipe::Descriptions(_) => Combine::Rows,
            Recipe::RamEnsemble | Recipe::Templates { .. } => Combine::Average,
        }
    }

    /// The texts that represent `tag` at `slot`.
    pub fn texts(&self, slot: usize, tag: &str) -> Result<Vec<String>> {
        Ok(match self {
            Recipe::Single => vec![fill(SINGLE_TEMPLATE, &processed_name(tag, false), "a")],
            Recipe::RamEnsemble => {
                let (name, art) = (processed_name(tag, true), article(tag));
                RAM_TEMPLATES
                    .iter()
                    .map(|t| {
                        let text = fill(t, &name, art);
                        if text.starts_with('a') || text.starts_with("the") {
                            format!("This is {text}")
                        } else {
                            text
                        }
                    })
                    .collect()
            }
            Recipe::Templates { templates, .. } => {
                let (name, art) = (processed_name(tag, false), article(tag));
                templates.iter().map(|t| fill(t, &name, art)).collect()
            }
            Recipe::Descriptions(d) => d
                .get(tag)
                .ok_or_else(|| EmbedError::MissingDescriptions {
                    path: d.path.clone(),
                    slot,
                    tag: tag.into(),
                })?
                .to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_template_matches_reference_processing() {
        let r = Recipe::Single;
        assert_eq!(
            r.texts(0, "3D CG rendering").unwrap(),
            vec!["a photo of a 3d cg rendering."]
        );
        assert_eq!(
            r.texts(0, "air_conditioner").unwrap(),
            vec!["a photo of a air conditioner."]
        );
        assert_eq!(
            r.texts(0, "cat/dog").unwrap(),
            vec!["a photo of a cat or dog."]
        );
    }

    #[test]
    fn ram_ensemble_follows_openset_utils() {
        let texts = Recipe::RamEnsemble.texts(0, "apple.").unwrap();
        assert_eq!(texts.len(), 63);
        assert_eq!(texts[0], "There is an apple in the scene.");
        assert_eq!(texts[2], "This is a photo of an apple in the scene.");
        assert_eq!(texts[5], "itap of an apple.");
        assert_eq!(texts[51], "This is a plastic apple.");
        assert_eq!(texts[52], "This is the plastic apple.");
        assert_eq!(texts[59], "This is an embroidered apple.");
        // article from the raw name: upper-case vowels get "a", as in RAM
        assert_eq!(
            Recipe::RamEnsemble.texts(0, "Apple").unwrap()[0],
            "There is a apple in the scene."
        );
    }

    #[test]
    fn descriptions_match_by_normalised_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        std::fs::write(
            &p,
            r#"[{"Aerial photography": ["x", "y"]}, {"Ale": ["z", "w"]}]"#,
        )
        .unwrap();
        let d = Descriptions::read(&p).unwrap();
        assert_eq!(d.per_tag, 2);
        assert_eq!(d.get("aerial photography").unwrap(), ["x", "y"]);
        let r = Recipe::Descriptions(d);
        assert!(r
            .texts(3, "beer")
            .unwrap_err()
            .to_string()
            .contains("slot 3 `beer`"));
        std::fs::write(&p, r#"[{"a": ["x", "y"]}, {"b": ["z"]}]"#).unwrap();
        assert!(Descriptions::read(&p)
            .unwrap_err()
            .to_string()
            .contains("same number"));
    }

    #[test]
    fn template_file_needs_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "# mine\n{article} {}\nno placeholder\n").unwrap();
        let err = Recipe::parse(&format!("templates:{}", p.display()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3:"), "{err}");
        std::fs::write(&p, "{article} {}.\n").unwrap();
        let r = Recipe::parse(&format!("templates:{}", p.display())).unwrap();
        assert_eq!(r.texts(0, "owl").unwrap(), vec!["an owl."]);
    }
}
