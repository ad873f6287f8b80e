//! The files a run keeps so that `--resume` needs nothing else: `RUN_DIR/run.json` (the inputs) and
//! each checkpoint's `state.json` (the step, the data position, the loss weighting). Free of libtorch,
//! so both readers are fuzzed (`src/fuzz/targets/run_files.rs`) in the harness built without it.

use super::error::TrainError;
use super::weighting::LossWeighting;
use crate::error::{Error, Result};
use crate::fsutil::checksums::{self, Verified};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const RUN_FILE: &str = "run.json";
/// The `schema` of a checkpoint's `state.json`.
pub const STATE_SCHEMA: &str = "tagfix.train-checkpoint/1";

/// The files a run reads. Saved as `RUN_DIR/run.json` so `--resume RUN_DIR` needs nothing else.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainInputs {
    /// RAM-format annotation files.
    pub data: Vec<PathBuf>,
    /// Image root.
    pub images: PathBuf,
    /// Slot manifest from `tagfix diff`.
    pub manifest: PathBuf,
    /// Label embeddings in RAM++ layout (`[num_class · k, d]`, d = 512 for the official models), e.g.
    /// from `tagfix embed`.
    pub label_embed: PathBuf,
    /// Teacher features (CLIP image features and caption embeddings); without them only the tag
    /// loss is trained.
    pub teacher: Option<PathBuf>,
    /// Checkpoints loaded in order before training (e.g. an ImageNet Swin, or a RAM++ checkpoint).
    pub init: Vec<PathBuf>,
    /// Vocabulary (file or preset) the manifest and embeddings must belong to, when given.
    pub vocab: Option<String>,
    /// Train even when the image encoder is not loaded from a pretrained checkpoint (loud warning).
    pub allow_random_encoder: bool,
    /// Held-out data validated on during training (`validation.jsonl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationInputs>,
}

/// An input in which two [`TrainInputs`] differ: its flag and both values, as a person reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDifference {
    pub flag: &'static str,
    pub given: String,
    pub recorded: String,
}

impl TrainInputs {
    /// What a recorded run lacks that every run has: a `--data` file, and a path for each required
    /// input (an empty path would resolve to the working folder).
    pub fn problem(&self) -> Option<String> {
        if self.data.is_empty() {
            return Some("names no --data file".into());
        }
        let empty = |p: &Path| p.as_os_str().is_empty();
        let named = [
            ("--data", self.data.iter().any(|p| empty(p))),
            ("--images", empty(&self.images)),
            ("--manifest", empty(&self.manifest)),
            ("--label-embed", empty(&self.label_embed)),
            ("--teacher", self.teacher.as_deref().is_some_and(empty)),
            ("--init", self.init.iter().any(|p| empty(p))),
            (
                "--val-data",
                self.validation.as_ref().is_some_and(|v| empty(&v.data)),
            ),
        ];
        named
            .iter()
            .find(|(_, is_empty)| *is_empty)
            .map(|(flag, _)| format!("{flag} is an empty path"))
    }

    /// The inputs with every path joined to the working folder where it is relative (symbolic links
    /// and `..` kept as given); a `--vocab` that names a preset stays a name.
    pub fn absolute(&self) -> Result<TrainInputs> {
        let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
        let all = |ps: &[PathBuf]| ps.iter().map(|p| abs(p)).collect::<Result<Vec<_>>>();
        let vocab = match self.vocab_file() {
            // A working folder whose name is not UTF-8 leaves the file as named.
            Some(file) => Some(
                abs(file)?
                    .to_str()
                    .map_or_else(|| file.to_string_lossy().into_owned(), String::from),
            ),
            None => self.vocab.clone(),
        };
        let validation = match &self.validation {
            Some(v) => Some(ValidationInputs {
                data: abs(&v.data)?,
                images: v.images.as_deref().map(abs).transpose()?,
                thresholds: v.thresholds.as_deref().map(abs).transpose()?,
            }),
            None => None,
        };
        Ok(TrainInputs {
            data: all(&self.data)?,
            images: abs(&self.images)?,
            manifest: abs(&self.manifest)?,
            label_embed: abs(&self.label_embed)?,
            teacher: self.teacher.as_deref().map(abs).transpose()?,
            init: all(&self.init)?,
            vocab,
            allow_random_encoder: self.allow_random_encoder,
            validation,
        })
    }

    /// The vocabulary file `--vocab` names; `None` for a preset (or none given).
    fn vocab_file(&self) -> Option<&Path> {
        self.vocab
            .as_deref()
            .filter(|v| crate::vocab::Preset::builtin(v).is_none())
            .map(Path::new)
    }

    /// The first input, by flag, naming other files in `self` than in `recorded` (paths compared
    /// after resolving them where they exist, so `./a` and `a` agree). Validation and
    /// `allow_random_encoder`, which a resume may change, are not compared.
    pub fn first_difference(&self, recorded: &TrainInputs) -> Option<InputDifference> {
        self.differences(recorded).into_iter().next()
    }

    /// The recorded inputs of a resumed run with the input flags of the command that resumes it:
    /// each flag given names where that input is now (a dataset mounted elsewhere, a file moved) and
    /// replaces the recorded path; the run then checks every input again as it checks a new run's, and
    /// the checkpoint's records, batch size and seed against the configuration. Returns what changed,
    /// by flag, for the log.
    pub fn moved_to(&mut self, given: MovedInputs) -> Vec<InputDifference> {
        let before = self.clone();
        if !given.data.is_empty() {
            self.data = given.data;
        }
        if let Some(p) = given.images {
            self.images = p;
        }
        if let Some(p) = given.manifest {
            self.manifest = p;
        }
        if let Some(p) = given.label_embed {
            self.label_embed = p;
        }
        if let Some(p) = given.teacher {
            self.teacher = Some(p);
        }
        if !given.init.is_empty() {
            self.init = given.init;
        }
        if let Some(v) = given.vocab {
            self.vocab = Some(v);
        }
        self.differences(&before)
    }

    /// Every input, by flag, naming other files in `self` than in `recorded` (as
    /// [`Self::first_difference`] compares them).
    pub fn differences(&self, recorded: &TrainInputs) -> Vec<InputDifference> {
        /// The file a path names: with links resolved where it exists, else joined to the working
        /// folder (run.json records paths absolute, a command may give them relative).
        fn resolved(p: &Path) -> PathBuf {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.to_path_buf())
        }
        let same = |a: &[PathBuf], b: &[PathBuf]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| resolved(x) == resolved(y))
        };
        let opt = |p: &Option<PathBuf>| p.iter().cloned().collect::<Vec<_>>();
        let vocab = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let pairs: [(&'static str, Vec<PathBuf>, Vec<PathBuf>); 6] = [
            ("--data", self.data.clone(), recorded.data.clone()),
            (
                "--images",
                vec![self.images.clone()],
                vec![recorded.images.clone()],
            ),
            (
                "--manifest",
                vec![self.manifest.clone()],
                vec![recorded.manifest.clone()],
            ),
            (
                "--label-embed",
                vec![self.label_embed.clone()],
                vec![recorded.label_embed.clone()],
            ),
            ("--teacher", opt(&self.teacher), opt(&recorded.teacher)),
            ("--init", self.init.clone(), recorded.init.clone()),
        ];
        let shown = |ps: &[PathBuf]| match ps {
            [] => "(none)".to_string(),
            ps => ps
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let mut found: Vec<InputDifference> = pairs
            .iter()
            .filter(|(_, a, b)| !same(a, b))
            .map(|(flag, a, b)| InputDifference {
                flag,
                given: shown(a),
                recorded: shown(b),
            })
            .collect();
        // A vocabulary file is compared as a path (run.json records it absolute); a preset by name.
        let same_vocab = match (self.vocab_file(), recorded.vocab_file()) {
            (Some(a), Some(b)) => resolved(a) == resolved(b),
            _ => self.vocab == recorded.vocab,
        };
        if !same_vocab {
            found.push(InputDifference {
                flag: "--vocab",
                given: vocab(&self.vocab),
                recorded: vocab(&recorded.vocab),
            });
        }
        found
    }
}

/// The input flags of a command that resumes a run ([`TrainInputs::moved_to`]): empty or `None` where
/// not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MovedInputs {
    pub data: Vec<PathBuf>,
    pub images: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub label_embed: Option<PathBuf>,
    /// A teacher file or shard folder (not `online`, which is a setting).
    pub teacher: Option<PathBuf>,
    pub init: Vec<PathBuf>,
    pub vocab: Option<String>,
}

/// What to validate on, as the run records it (`run.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationInputs {
    /// A benchmark folder (official format) or a RAM-format annotation file.
    pub data: PathBuf,
    /// Image root; unset: the training images' root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
    /// Per-slot thresholds (one a line, slot order); unset: the vocabulary preset's sidecar, else 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<PathBuf>,
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub schema: String,
    /// Optimizer steps completed.
    pub step: u64,
    pub epoch: u64,
    pub step_in_epoch: u64,
    pub samples_seen: u64,
    pub seed: u64,
    /// How libtorch's generator is driven (re-seeded per micro-batch, so nothing else to store).
    pub torch_rng: String,
    pub records: usize,
    /// [`crate::train::data::RecordSet::fingerprint`] of the training records.
    pub data_fingerprint: String,
    pub weighting: LossWeighting,
    pub wall_s: f64,
    pub model: String,
}

impl CheckpointState {
    /// The batch size the checkpoint's steps were taken with (`samples_seen / step`); `None` before
    /// the first step.
    pub fn batch_size(&self) -> Option<u64> {
        (self.step > 0).then(|| self.samples_seen / self.step)
    }

    /// Why the state cannot be continued from: counters that contradict the step (an epoch, or a
    /// step within it, beyond the steps done; samples seen that are not a whole batch size times the
    /// steps), a negative or non-finite wall time, or a loss weighting that cannot go on
    /// ([`LossWeighting::problem`]).
    pub fn problem(&self) -> Option<String> {
        if self.epoch > self.step || self.step_in_epoch > self.step {
            return Some(format!(
                "epoch {} and step in epoch {} do not fit {} steps done",
                self.epoch, self.step_in_epoch, self.step
            ));
        }
        if self.step > 0 && (self.samples_seen < self.step || self.samples_seen % self.step != 0) {
            return Some(format!(
                "{} samples seen are not a whole batch size times the {} steps done",
                self.samples_seen, self.step
            ));
        }
        if !(self.wall_s.is_finite() && self.wall_s >= 0.0) {
            return Some(format!(
                "wall time {} s is not finite and >= 0",
                self.wall_s
            ));
        }
        self.weighting
            .problem(self.step)
            .map(|p| format!("loss weighting: {p}"))
    }
}

/// The tensor files of a checkpoint folder, beside its `state.json`.
pub const CHECKPOINT_TENSORS: [&str; 2] = ["model.safetensors", "optimizer.safetensors"];

/// The files of a checkpoint folder its `SHA256SUMS` lists.
pub const CHECKPOINT_FILES: [&str; 3] =
    [CHECKPOINT_TENSORS[0], CHECKPOINT_TENSORS[1], "state.json"];

/// The `step-N` folders of a run's `checkpoints/` folder `dir` that hold the file `needs` (resume
/// needs `state.json`, inference only `model.safetensors`), oldest first.
pub fn checkpoint_folders(dir: &Path, needs: &str) -> Result<Vec<PathBuf>> {
    let mut found = step_folders(dir)?;
    found.retain(|p| p.join(needs).is_file());
    Ok(found)
}

/// Every `step-N` folder of a run's `checkpoints/` folder `dir` (N digits only: a copy a person
/// named `step-00000400-best` is not the run's), by step, oldest first.
pub fn step_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| Some((folder_step(&p)?, p)))
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The newest `step-*` folder holding the file `needs` in a run's `checkpoints/` folder `dir`.
pub fn newest_checkpoint_in(dir: &Path, needs: &str) -> Result<Option<PathBuf>> {
    Ok(checkpoint_folders(dir, needs)?.pop())
}

/// A checkpoint's `state.json` ([`read_state`]) once its files are found whole: each tensor file's
/// header parses and the file is as long as its header says, then every file hashes to the digest
/// its `SHA256SUMS` recorded (a checkpoint written before tagfix wrote them has none:
/// [`Verified::NoList`]). A checkpoint folder appears by a rename, so it is never half-written by
/// tagfix; this finds what a machine that died before its disk cache was written, a full quota, a
/// copy cut short or bytes changed on the disk left.
pub fn read_whole_checkpoint(dir: &Path) -> Result<(CheckpointState, Verified)> {
    let state = read_state(dir)?;
    for name in CHECKPOINT_TENSORS {
        crate::tensors::safetensors_io::SafetensorsFile::open(&dir.join(name))?;
    }
    let verified = checksums::verify_folder(dir, &CHECKPOINT_FILES)?;
    Ok((state, verified))
}

/// The checkpoint a resume continues from: the newest whole one ([`read_whole_checkpoint`]) and the
/// newer folders passed over, each with why.
#[derive(Debug)]
pub struct Resumable {
    pub dir: PathBuf,
    pub state: CheckpointState,
    /// Whether its files were checked against its `SHA256SUMS`.
    pub verified: Verified,
    pub skipped: Vec<(PathBuf, String)>,
}

/// The newest whole checkpoint in a run's `checkpoints/` folder `dir`; `None` when it holds none at
/// all, an error listing each when none is whole.
pub fn newest_whole_checkpoint(dir: &Path) -> Result<Option<Resumable>> {
    let folders = checkpoint_folders(dir, "state.json")?;
    let mut skipped = Vec::new();
    for folder in folders.iter().rev() {
        match read_whole_checkpoint(folder) {
            Ok((state, verified)) => {
                return Ok(Some(Resumable {
                    dir: folder.clone(),
                    state,
                    verified,
                    skipped,
                }))
            }
            Err(e) => skipped.push((folder.clone(), crate::error::report(&e))),
        }
    }
    if skipped.is_empty() {
        return Ok(None);
    }
    Err(none_whole(dir, &skipped))
}

/// A checkpoint's model for inference (`tag`, `eval`, `export`): the newest `step-*` folder of a
/// run's `checkpoints/` folder `dir` whose `model.safetensors` is whole — its header parses, it is as
/// long as the header says, and it hashes to its digest where the folder's `SHA256SUMS` lists it —
/// with the newer folders passed over and why. The optimizer state is not read: inference needs none.
/// `None` when no folder holds a model; an error naming each when none is whole.
pub fn newest_whole_model(dir: &Path) -> Result<Option<WholeModel>> {
    let model = CHECKPOINT_TENSORS[0];
    let mut skipped = Vec::new();
    for folder in checkpoint_folders(dir, model)?.iter().rev() {
        let file = folder.join(model);
        let whole = crate::tensors::safetensors_io::SafetensorsFile::open(&file)
            .and_then(|_| checksums::verify_file(&file));
        match whole {
            Ok(_) => return Ok(Some(WholeModel { file, skipped })),
            Err(e) => skipped.push((folder.clone(), crate::error::report(&e))),
        }
    }
    match skipped.is_empty() {
        true => Ok(None),
        false => Err(none_whole(dir, &skipped)),
    }
}

/// [`newest_whole_model`]'s find: the model file and the newer folders passed over, each with why.
#[derive(Debug, Clone, PartialEq)]
pub struct WholeModel {
    pub file: PathBuf,
    pub skipped: Vec<(PathBuf, String)>,
}

/// The error of a `checkpoints/` folder `dir` none of whose checkpoints is whole (`skipped`: each
/// with why).
fn none_whole(dir: &Path, skipped: &[(PathBuf, String)]) -> Error {
    TrainError::NoWholeCheckpoint {
        dir: dir.to_path_buf(),
        problems: skipped
            .iter()
            .map(|(_, why)| why.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    }
    .into()
}

/// Writes `state` as the checkpoint folder `dir`'s `state.json` (atomically).
pub fn write_state(dir: &Path, state: &CheckpointState) -> Result<()> {
    crate::fsutil::write_atomic(&dir.join("state.json"), |w| {
        serde_json::to_writer_pretty(&mut *w, state).map_err(std::io::Error::other)
    })
}

/// Writes `inputs` as `RUN_DIR/run.json` (atomically), what `--resume` reads back: each path made
/// absolute ([`TrainInputs::absolute`]), so a resume from another working folder finds the same files.
pub fn write_run_inputs(run_dir: &Path, inputs: &TrainInputs) -> Result<()> {
    let recorded = inputs.absolute()?;
    crate::fsutil::write_atomic(&run_dir.join(RUN_FILE), |w| {
        serde_json::to_writer_pretty(&mut *w, &recorded).map_err(std::io::Error::other)
    })
}

/// The step a checkpoint folder's name `step-NNNNNNNN` gives; `None` for another name.
pub fn folder_step(dir: &Path) -> Option<u64> {
    let digits = dir.file_name()?.to_str()?.strip_prefix("step-")?;
    match digits.bytes().all(|b| b.is_ascii_digit()) {
        true => digits.parse().ok(),
        false => None,
    }
}

/// A JSON file of the run (`what` names it in the error when it does not parse as one).
fn read_run_file<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let text = crate::fsutil::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| {
        TrainError::RunFile {
            path: path.to_path_buf(),
            what,
            source,
        }
        .into()
    })
}

/// A checkpoint's `state.json`: its schema, its values ([`CheckpointState::problem`]) and, in a
/// folder named `step-N`, its step N checked.
pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let state_path = dir.join("state.json");
    let state: CheckpointState = read_run_file(&state_path, "checkpoint state")?;
    if state.schema != STATE_SCHEMA {
        return Err(TrainError::Schema {
            path: state_path,
            found: state.schema,
            expected: STATE_SCHEMA,
        }
        .into());
    }
    if let Some(problem) = state.problem() {
        return Err(TrainError::RunFileValue {
            path: state_path,
            problem,
        }
        .into());
    }
    match folder_step(dir) {
        Some(folder_step) if folder_step != state.step => Err(TrainError::CheckpointFolder {
            dir: dir.to_path_buf(),
            folder_step,
            state_step: state.step,
        }
        .into()),
        _ => Ok(state),
    }
}

/// Reads `RUN_DIR/run.json` (the inputs of a run, for `--resume`): it must name the files every run
/// needs ([`TrainInputs::problem`]).
pub fn read_run_inputs(run_dir: &Path) -> Result<TrainInputs> {
    let p = run_dir.join(RUN_FILE);
    let inputs: TrainInputs = read_run_file(&p, "run description")?;
    match inputs.problem() {
        Some(problem) => Err(TrainError::RunFileValue { path: p, problem }.into()),
        None => Ok(inputs),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::train::config::{LossBalance, LossWeights};

    /// A state of the checkpoint at `step` (tiny model, 12 records, seed 7).
    pub(crate) fn state(step: u64) -> CheckpointState {
        CheckpointState {
            schema: STATE_SCHEMA.into(),
            step,
            epoch: 1,
            step_in_epoch: 2,
            samples_seen: step * 4,
            seed: 7,
            torch_rng: "reseeded".into(),
            records: 12,
            data_fingerprint: "ab".repeat(32),
            weighting: LossWeighting::new(LossWeights::default(), LossBalance::Fixed, 20),
            wall_s: 1.5,
            model: "tiny".into(),
        }
    }

    fn write_state(dir: &Path, s: &CheckpointState) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("state.json"), serde_json::to_vec(s).unwrap()).unwrap();
    }

    #[test]
    fn a_state_reads_back_in_its_own_step_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("step-00000005");
        write_state(&dir, &state(5));
        assert_eq!(read_state(&dir).unwrap(), state(5));
        assert_eq!(folder_step(&dir), Some(5));
        assert_eq!(folder_step(tmp.path()), None);
    }

    #[test]
    fn a_state_that_cannot_be_continued_is_refused_naming_why() {
        let tmp = tempfile::tempdir().unwrap();
        let refused = |s: CheckpointState, folder: &str| {
            let dir = tmp.path().join(folder);
            write_state(&dir, &s);
            let e = read_state(&dir).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Input, "{e}");
            e.to_string()
        };
        let e = refused(state(5), "step-00000006");
        assert!(
            e.contains("state.json is step 5's, not the folder's step 6"),
            "{e}"
        );
        let e = refused(
            CheckpointState {
                epoch: 9,
                ..state(5)
            },
            "step-00000005",
        );
        assert!(
            e.contains("epoch 9 and step in epoch 2 do not fit 5 steps done"),
            "{e}"
        );
        assert!(e.contains("damaged or was not written by tagfix"), "{e}");
        let e = refused(
            CheckpointState {
                samples_seen: 21,
                ..state(5)
            },
            "step-00000005",
        );
        assert!(
            e.contains("21 samples seen are not a whole batch size times the 5 steps"),
            "{e}"
        );
        assert_eq!(state(5).batch_size(), Some(4));
        let before_the_first_step = CheckpointState {
            samples_seen: 0,
            ..state(0)
        };
        assert_eq!(before_the_first_step.batch_size(), None);
        let e = refused(
            CheckpointState {
                wall_s: -1.0,
                ..state(5)
            },
            "step-00000005",
        );
        assert!(e.contains("wall time -1 s"), "{e}");
        let mut s = state(5);
        s.weighting.weights.dis = -2.0;
        let e = refused(s, "step-00000005");
        assert!(
            e.contains("loss weighting: weights tag=1,align=10,dis=-2"),
            "{e}"
        );
    }

    /// A checkpoint folder as the saver leaves it: `state.json`, two small tensor files and
    /// `SHA256SUMS`.
    pub(crate) fn write_checkpoint(dir: &Path, step: u64) {
        write_state(dir, &state(step));
        let t = crate::tensors::Tensor::from_f32(vec![4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        for name in CHECKPOINT_TENSORS {
            let set = crate::tensors::TensorSet {
                tensors: vec![("w".into(), t.clone())],
                metadata: Default::default(),
            };
            crate::tensors::safetensors_io::write(&dir.join(name), &set).unwrap();
        }
        checksums::write_checksums(dir, &CHECKPOINT_FILES).unwrap();
    }

    #[test]
    fn a_resume_passes_over_damaged_checkpoints_to_the_newest_whole_one() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpts = tmp.path().join("checkpoints");
        assert!(
            newest_whole_checkpoint(&ckpts).unwrap().is_none(),
            "no folder"
        );
        for step in [4, 8, 12, 16] {
            write_checkpoint(&ckpts.join(format!("step-{step:08}")), step);
        }
        let found = newest_whole_checkpoint(&ckpts).unwrap().unwrap();
        assert_eq!((found.state.step, found.skipped.len()), (16, 0));
        assert_eq!(found.verified, Verified::Matched);
        // Step 16's optimizer state with one byte of a value changed (a bit flipped on the disk;
        // its length and header still right), step 12's model cut short (a machine that died
        // before its cache reached the disk), step 8's state.json emptied: step 4 is the newest
        // whole one.
        let optimizer = ckpts.join("step-00000016/optimizer.safetensors");
        let mut bytes = std::fs::read(&optimizer).unwrap();
        *bytes.last_mut().unwrap() ^= 0x01;
        std::fs::write(&optimizer, &bytes).unwrap();
        let model = ckpts.join("step-00000012/model.safetensors");
        let bytes = std::fs::read(&model).unwrap();
        std::fs::write(&model, &bytes[..bytes.len() - 3]).unwrap();
        std::fs::write(ckpts.join("step-00000008/state.json"), b"").unwrap();
        let found = newest_whole_checkpoint(&ckpts).unwrap().unwrap();
        assert_eq!(found.dir, ckpts.join("step-00000004"));
        let why: Vec<_> = found
            .skipped
            .iter()
            .map(|(d, w)| (d.file_name().unwrap(), w))
            .collect();
        assert_eq!(why.len(), 3);
        assert_eq!(why[0].0, "step-00000016");
        assert!(
            why[0]
                .1
                .contains("optimizer.safetensors: its bytes changed"),
            "{}",
            why[0].1
        );
        assert_eq!(why[1].0, "step-00000012");
        assert!(why[1].1.contains("model.safetensors"), "{}", why[1].1);
        assert!(why[2].1.contains("not a checkpoint state"), "{}", why[2].1);
        // A checkpoint written before checkpoints carried a SHA256SUMS is whole, not verified.
        std::fs::remove_file(ckpts.join("step-00000004/SHA256SUMS")).unwrap();
        let found = newest_whole_checkpoint(&ckpts).unwrap().unwrap();
        assert_eq!((found.state.step, found.verified), (4, Verified::NoList));
        // None whole: an error naming each.
        std::fs::remove_file(ckpts.join("step-00000004/optimizer.safetensors")).unwrap();
        let e = newest_whole_checkpoint(&ckpts).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Input, "{e}");
        let e = crate::error::report(&e);
        assert!(
            e.contains("no checkpoint is whole") && e.contains("optimizer.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn inference_takes_the_newest_whole_model() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpts = tmp.path().join("checkpoints");
        assert_eq!(newest_whole_model(&ckpts).unwrap(), None);
        for step in [3, 6] {
            write_checkpoint(&ckpts.join(format!("step-{step:08}")), step);
        }
        let newest = ckpts.join("step-00000006/model.safetensors");
        let found = |file: PathBuf, skipped| Some(WholeModel { file, skipped });
        assert_eq!(
            newest_whole_model(&ckpts).unwrap(),
            found(newest.clone(), vec![])
        );
        // Its optimizer state damaged: the model is still whole.
        std::fs::write(ckpts.join("step-00000006/optimizer.safetensors"), b"").unwrap();
        assert_eq!(newest_whole_model(&ckpts).unwrap().unwrap().file, newest);
        // Its model changed: step 3's, with why.
        let mut bytes = std::fs::read(&newest).unwrap();
        *bytes.last_mut().unwrap() ^= 4;
        std::fs::write(&newest, bytes).unwrap();
        let WholeModel { file, skipped } = newest_whole_model(&ckpts).unwrap().unwrap();
        assert_eq!(file, ckpts.join("step-00000003/model.safetensors"));
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].1.contains("its bytes changed"), "{skipped:?}");
        // None whole: an error naming why.
        std::fs::write(ckpts.join("step-00000003/model.safetensors"), b"").unwrap();
        let e = crate::error::report(&newest_whole_model(&ckpts).unwrap_err());
        assert!(
            e.contains("no checkpoint is whole") && e.contains("its bytes changed"),
            "{e}"
        );
    }

    #[test]
    fn a_resumes_input_flags_move_the_recorded_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = inputs(dir.path());
        let same = inputs.clone();
        // Flags naming the recorded files (spelled otherwise) change nothing.
        std::fs::write(dir.path().join("e.safetensors"), b"x").unwrap();
        let respelled = MovedInputs {
            label_embed: Some(dir.path().join(".").join("e.safetensors")),
            ..MovedInputs::default()
        };
        assert_eq!(inputs.moved_to(respelled), []);
        let moved = MovedInputs {
            images: Some("/mnt/other/images".into()),
            init: vec!["/mnt/other/swin.pth".into()],
            vocab: Some("ram".into()),
            ..MovedInputs::default()
        };
        let changed = inputs.moved_to(moved);
        let flags: Vec<_> = changed.iter().map(|d| d.flag).collect();
        assert_eq!(flags, ["--images", "--init", "--vocab"]);
        assert_eq!(changed[1].recorded, "(none)");
        assert_eq!(inputs.images, PathBuf::from("/mnt/other/images"));
        assert_eq!(inputs.data, same.data, "not given: kept");
        assert_eq!(same.differences(&inputs).len(), 3);
    }

    /// run.json records absolute paths, so a resume from another working folder finds the files.
    #[test]
    fn run_json_records_absolute_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = TrainInputs {
            data: vec!["train.json".into()],
            images: "images".into(),
            manifest: "runs/../manifest.json".into(),
            label_embed: tmp.path().join("e.safetensors"),
            teacher: Some("teacher".into()),
            init: vec!["swin.pth".into()],
            vocab: Some("tags.txt".into()),
            allow_random_encoder: false,
            validation: Some(ValidationInputs {
                data: "bench".into(),
                images: None,
                thresholds: Some("t.txt".into()),
            }),
        };
        write_run_inputs(tmp.path(), &relative).unwrap();
        let read = read_run_inputs(tmp.path()).unwrap();
        assert_eq!(read.data, [cwd.join("train.json")]);
        assert_eq!(
            read.manifest,
            cwd.join("runs/../manifest.json"),
            "`..` kept"
        );
        assert_eq!(read.label_embed, relative.label_embed, "absolute already");
        assert_eq!(read.teacher, Some(cwd.join("teacher")));
        assert_eq!(read.vocab.as_deref(), cwd.join("tags.txt").to_str());
        let v = read.validation.clone().unwrap();
        assert_eq!(
            (v.data, v.images, v.thresholds),
            (cwd.join("bench"), None, Some(cwd.join("t.txt")))
        );
        assert_eq!(
            relative.differences(&read),
            [],
            "the same files, relative or absolute"
        );
        // A preset stays a name.
        let preset = TrainInputs {
            vocab: Some("ram".into()),
            ..relative
        };
        assert_eq!(preset.absolute().unwrap().vocab.as_deref(), Some("ram"));
    }

    #[test]
    fn run_inputs_must_name_the_files_every_run_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |i: &TrainInputs| {
            std::fs::write(tmp.path().join(RUN_FILE), serde_json::to_vec(i).unwrap()).unwrap();
            read_run_inputs(tmp.path())
        };
        let ok = inputs(tmp.path());
        assert_eq!(write(&ok).unwrap(), ok);
        let e = write(&TrainInputs {
            data: vec![],
            ..ok.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("run.json: names no --data file"), "{e}");
        let e = write(&TrainInputs {
            manifest: PathBuf::new(),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--manifest is an empty path"), "{e}");
        let no_val = TrainInputs {
            validation: Some(ValidationInputs::default()),
            ..ok
        };
        assert!(write(&no_val)
            .unwrap_err()
            .to_string()
            .contains("--val-data is an empty path"));
    }

    fn inputs(dir: &Path) -> TrainInputs {
        TrainInputs {
            data: vec![dir.join("a.json"), dir.join("b.json")],
            images: dir.to_path_buf(),
            manifest: dir.join("manifest.json"),
            label_embed: dir.join("e.safetensors"),
            teacher: None,
            init: Vec::new(),
            vocab: None,
            allow_random_encoder: false,
            validation: None,
        }
    }

    #[test]
    fn inputs_differ_by_the_files_they_name_not_by_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let recorded = inputs(dir.path());
        std::fs::write(dir.path().join("e.safetensors"), b"x").unwrap();
        let mut given = inputs(dir.path());
        given.label_embed = dir.path().join(".").join("e.safetensors");
        given.allow_random_encoder = true;
        assert_eq!(given.first_difference(&recorded), None);
        given.init = vec![dir.path().join("swin.pth")];
        let d = given.first_difference(&recorded).unwrap();
        assert_eq!((d.flag, d.recorded.as_str()), ("--init", "(none)"));
        let mut given = inputs(dir.path());
        given.data.reverse();
        assert_eq!(given.first_difference(&recorded).unwrap().flag, "--data");
        let mut given = inputs(dir.path());
        given.vocab = Some("ram".into());
        let d = given.first_difference(&recorded).unwrap();
        assert_eq!((d.flag, d.given.as_str()), ("--vocab", "ram"));
    }
}
