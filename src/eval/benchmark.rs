//! Benchmarks in the official RAM format (`../shared/ram/benchmarks/`): a tag list (one tag a line)
//! and an annotation file with one image a line, `image_id,tag[,tag…]` (OpenImages) or
//! `image_id,i j k` (0-based indices into the tag list, HICO and ImageNet-multi), plus an image root.

use super::EvalError;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How the annotation file names the tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelForm {
    /// `image_id,tag,tag` — tag names from the tag list.
    Names,
    /// `image_id,3 17 42` — 0-based line numbers of the tag list.
    Indices,
}

/// A loaded benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    /// Name (the annotation file's stem without `_annots`).
    pub name: String,
    pub taglist_path: PathBuf,
    pub annots_path: PathBuf,
    /// Benchmark tags, in tag-list order.
    pub tags: Vec<String>,
    /// Image ids in first-appearance order.
    pub images: Vec<String>,
    /// Per image, the indices (into `tags`) of its ground-truth tags, ascending.
    pub labels: Vec<Vec<u32>>,
    pub form: LabelForm,
}

impl Benchmark {
    /// Finds the tag list and annotation file in a benchmark folder: `*_ram_taglist.txt` and
    /// `*_ram_annots.txt`, else `*_taglist.txt` and `*_annots.txt` (the Tag2Text id files are not
    /// used: they index another vocabulary). Two candidates for either file are refused: which one
    /// was meant cannot be told.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.contains("tag2text"))
            .collect();
        names.sort();
        let pick = |suffixes: &[&str]| -> Result<Option<PathBuf>> {
            for s in suffixes {
                let found: Vec<&String> = names.iter().filter(|n| n.ends_with(s)).collect();
                match found[..] {
                    [] => continue,
                    [one] => return Ok(Some(dir.join(one))),
                    _ => {
                        return Err(EvalError::SeveralBenchmarks {
                            path: dir.into(),
                            suffix: s.to_string(),
                            files: found.into_iter().cloned().collect(),
                        }
                        .into());
                    }
                }
            }
            Ok(None)
        };
        let taglist = pick(&["_ram_taglist.txt", "_taglist.txt"])?;
        let annots = pick(&["_ram_annots.txt", "_annots.txt"])?;
        match (taglist, annots) {
            (Some(t), Some(a)) => Self::load(&t, &a),
            _ => Err(EvalError::NotABenchmark { path: dir.into() }.into()),
        }
    }

    /// Loads a tag list and an annotation file; the label form is detected (names when every label
    /// is a tag of the list, else indices when every label is a whitespace-separated list of
    /// in-range integers). Errors name the file and line.
    pub fn load(taglist: &Path, annots: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(taglist).map_err(|e| Error::io(taglist, e))?;
        let tags: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
        if let Some(i) = tags.iter().position(|t| t.is_empty()) {
            return Err(EvalError::EmptyTag {
                path: taglist.to_path_buf(),
                line: i + 1,
            }
            .into());
        }
        let mut index: HashMap<&str, u32> = HashMap::new();
        for (i, t) in tags.iter().enumerate() {
            index.entry(t.as_str()).or_insert(i as u32);
        }
        let text = crate::fsutil::read_to_string(annots).map_err(|e| Error::io(annots, e))?;
        let lines: Vec<(usize, &str, &str)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let (id, rest) = l.split_once(',').unwrap_or((l, ""));
                (i + 1, id.trim(), rest)
            })
            .collect();
        let parse_names = |rest: &str| -> std::result::Result<Vec<u32>, String> {
            rest.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|t| index.get(t).copied().ok_or_else(|| t.to_string()))
                .collect()
        };
        let parse_indices = |rest: &str| -> Option<Vec<u32>> {
            rest.split_whitespace()
                .map(|s| s.parse::<u32>().ok().filter(|i| (*i as usize) < tags.len()))
                .collect()
        };
        let names_ok = lines.iter().all(|(_, _, r)| parse_names(r).is_ok());
        let form = if names_ok {
            LabelForm::Names
        } else if lines.iter().all(|(_, _, r)| parse_indices(r).is_some()) {
            LabelForm::Indices
        } else {
            let (line, tag) = lines
                .iter()
                .find_map(|(n, _, r)| parse_names(r).err().map(|t| (*n, t)))
                .expect("some line failed");
            return Err(EvalError::UnknownLabel {
                path: annots.to_path_buf(),
                line,
                tag,
                taglist: taglist.to_path_buf(),
            }
            .into());
        };
        let mut images = Vec::new();
        let mut labels: Vec<Vec<u32>> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (line, id, rest) in &lines {
            if id.is_empty() {
                return Err(EvalError::EmptyImageId {
                    path: annots.to_path_buf(),
                    line: *line,
                }
                .into());
            }
            let ls = match form {
                LabelForm::Names => parse_names(rest).expect("checked"),
                LabelForm::Indices => parse_indices(rest).expect("checked"),
            };
            let i = *seen.entry(id).or_insert_with(|| {
                images.push(id.to_string());
                labels.push(Vec::new());
                images.len() - 1
            });
            labels[i].extend(ls);
        }
        for l in &mut labels {
            l.sort_unstable();
            l.dedup();
        }
        let stem = annots
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = stem
            .trim_end_matches("_annots")
            .trim_end_matches("_ram")
            .to_string();
        Ok(Benchmark {
            name,
            taglist_path: taglist.to_path_buf(),
            annots_path: annots.to_path_buf(),
            tags,
            images,
            labels,
            form,
        })
    }

    /// Where an image lies under `root`: `root/ID` when it exists or `ID` has an extension, else
    /// `root/ID.jpg` (the OpenImages ids carry none; RAM's evaluation appends `.jpg`).
    pub fn image_path(&self, root: &Path, image: usize) -> PathBuf {
        let id = &self.images[image];
        let direct = root.join(id);
        if direct.exists() || Path::new(id).extension().is_some() {
            direct
        } else {
            root.join(format!("{id}.jpg"))
        }
    }

    /// Ground truth of one benchmark tag over all images.
    pub fn targets(&self, tag: usize) -> Vec<bool> {
        self.labels
            .iter()
            .map(|l| l.binary_search(&(tag as u32)).is_ok())
            .collect()
    }

    /// The benchmark over the images `keep` marks (one flag per image, in order; an image without a
    /// flag is kept): the same tags, those images' labels.
    pub fn only_images(&self, keep: &[bool]) -> Benchmark {
        let kept = |i: &usize| keep.get(*i).copied().unwrap_or(true);
        let images = self.images.len();
        Benchmark {
            name: self.name.clone(),
            taglist_path: self.taglist_path.clone(),
            annots_path: self.annots_path.clone(),
            tags: self.tags.clone(),
            images: (0..images)
                .filter(kept)
                .map(|i| self.images[i].clone())
                .collect(),
            labels: (0..images)
                .filter(kept)
                .map(|i| self.labels[i].clone())
                .collect(),
            form: self.form,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_benchmark_over_some_of_its_images_keeps_their_labels() {
        let bench = Benchmark {
            name: "b".into(),
            taglist_path: "t".into(),
            annots_path: "a".into(),
            tags: vec!["cat".into(), "dog".into()],
            images: vec!["1".into(), "2".into(), "3".into()],
            labels: vec![vec![0], vec![1], vec![0, 1]],
            form: LabelForm::Names,
        };
        let some = bench.only_images(&[true, false, true]);
        assert_eq!(some.images, ["1", "3"]);
        assert_eq!(some.labels, [vec![0], vec![0, 1]]);
        assert_eq!((some.tags, some.form), (bench.tags.clone(), bench.form));
        assert_eq!(bench.only_images(&[]), bench);
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn names_and_indices_forms() {
        let d = tempfile::tempdir().unwrap();
        let t = write(d.path(), "x_taglist.txt", "cat\ndog\nred car\n");
        let a = write(
            d.path(),
            "x_ram_annots.txt",
            "img/1,cat,red car\nimg/2\nimg/1,dog\n",
        );
        let b = Benchmark::load(&t, &a).unwrap();
        assert_eq!(b.form, LabelForm::Names);
        assert_eq!(b.name, "x");
        assert_eq!(b.images, vec!["img/1", "img/2"]);
        assert_eq!(b.labels, vec![vec![0, 1, 2], vec![]]);
        assert_eq!(b.targets(1), vec![true, false]);
        assert_eq!(
            b.image_path(Path::new("/r"), 0),
            PathBuf::from("/r/img/1.jpg")
        );

        let a = write(d.path(), "y_annots.txt", "a.JPEG,2 0\nb.JPEG\n");
        let b = Benchmark::load(&t, &a).unwrap();
        assert_eq!(b.form, LabelForm::Indices);
        assert_eq!(b.labels, vec![vec![0, 2], vec![]]);
        assert_eq!(b.image_path(Path::new("/r"), 0), PathBuf::from("/r/a.JPEG"));
    }

    #[test]
    fn unknown_tag_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let t = write(d.path(), "t.txt", "cat\ndog\n");
        let a = write(d.path(), "a.txt", "i1,cat\n\ni2,horse\n");
        let err = Benchmark::load(&t, &a).unwrap_err().to_string();
        assert!(err.contains("a.txt:3:") && err.contains("`horse`"), "{err}");
    }

    #[test]
    fn official_benchmarks_load() {
        let Some(shared) = crate::testutil::shared_dir_for_test("official_benchmarks_load") else {
            return;
        };
        let root = shared.join("ram/benchmarks");
        let oi = Benchmark::from_dir(&root.join("openimages_common_214")).unwrap();
        assert_eq!(
            (oi.form, oi.tags.len(), oi.images.len()),
            (LabelForm::Names, 214, 57224)
        );
        let rare = Benchmark::from_dir(&root.join("openimages_rare_200")).unwrap();
        assert_eq!((rare.form, rare.tags.len()), (LabelForm::Names, 200));
        let hico = Benchmark::from_dir(&root.join("hico")).unwrap();
        assert_eq!(
            (hico.form, hico.tags.len(), hico.images.len()),
            (LabelForm::Indices, 600, 9658)
        );
        let inet = Benchmark::from_dir(&root.join("imagenet_multi")).unwrap();
        assert_eq!((inet.form, inet.tags.len()), (LabelForm::Indices, 1000));
    }
}
