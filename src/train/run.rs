//! The training loop: every input checked before the first step, micro-batches accumulated into
//! optimizer steps, one [`StepRecord`] per step in `RUN_DIR/metrics.jsonl`, atomic checkpoints
//! (model, optimizer state, step, RNG scheme, data position, loss weights) keeping the last N, exact
//! `--resume`, and a stop with a checkpoint on a non-finite loss.
//!
//! Randomness: the data order and augmentation derive from `(seed, epoch, position)` (see
//! [`super::data`]); libtorch's generator (dropout, DropPath) is re-seeded from `(seed, step, micro)`
//! before every micro-batch. A checkpoint's step therefore fixes all randomness that follows, and a
//! resumed CPU run reproduces the uninterrupted one bit for bit.

use super::config::{DeviceKind, ImageCheck, TrainConfig, UnreadableImages};
use super::data::{self, Augment, LoaderConfig, TeacherSource, TrainData};
use super::error::TrainError;
use super::failure;
pub use super::interrupt::StopRequest;
use super::model::{ParamInit, RamPlus, RamPlusConfig};
use super::optim::AdamW;
pub use super::run_files::{
    checkpoint_folders, newest_checkpoint_in, newest_whole_checkpoint, read_run_inputs, read_state,
    CheckpointState, InputDifference, Resumable, TrainInputs, RUN_FILE, STATE_SCHEMA,
};
pub use super::trainer::{RunStart, Trainer};
use super::validate::{score_images, score_readable_images, ValidationSet};
use super::weighting::LossWeighting;
use super::weights::{self, InitFingerprint, LoadOptions};
use crate::error::{Error, Result};
use crate::fsutil::checksums::{self, Verified};
use crate::imaging::PilFilter;
use crate::manifest::SlotManifest;
/// What a finished run reports (feature-free, so `repair` reads it without libtorch).
pub use crate::monitor::RunSummary;
use crate::monitor::{RunDir, ValidationRecord};
use crate::share::WorkShare;
use crate::tensors::{EmbeddingFile, Layout, Provenance};
use crate::vocab::Vocabulary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Resolves the configuration's model spec for a vocabulary of `num_class` slots with
/// `des_per_class` description rows each, `joint_dim` values a row (of the file `label_embed`, named
/// when the width does not fit). `tiny` takes the label
/// embeddings' width as its joint space; the official presets and reference configurations are
/// built for CLIP's 512-d space and refuse any other width.
pub fn resolve_model(
    spec: &str,
    num_class: usize,
    des_per_class: usize,
    joint_dim: usize,
    label_embed: &Path,
) -> Result<RamPlusConfig> {
    let mut cfg = if spec == "tiny" {
        RamPlusConfig::tiny(num_class, des_per_class).with_joint_dim(joint_dim)
    } else if spec.ends_with(".json") {
        RamPlusConfig::from_reference_json(Path::new(spec))?
    } else {
        RamPlusConfig::preset(spec)?
    };
    if cfg.joint_dim != joint_dim {
        return Err(TrainError::EmbeddingWidth {
            path: label_embed.to_path_buf(),
            width: joint_dim,
            model: spec.to_string(),
            expected: cfg.joint_dim,
        }
        .into());
    }
    cfg.num_class = num_class;
    cfg.des_per_class = des_per_class;
    Ok(cfg)
}

/// Everything checked and loaded, ready for the first step.
pub struct Prepared {
    pub config: TrainConfig,
    pub inputs: TrainInputs,
    pub model_config: RamPlusConfig,
    pub vs: VarStore,
    pub model: RamPlus,
    pub data: Arc<TrainData>,
    pub absent_slots: Vec<usize>,
    pub device: Device,
    pub loader: LoaderConfig,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// The validation set, when the run validates.
    pub validation: Option<ValidationSet>,
    /// Lines for the log: what was loaded, frozen, checked.
    pub notes: Vec<String>,
}

/// The libtorch device of a `--device` value; `cuda` fails clearly when libtorch sees no GPU.
pub fn device_of(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(TrainError::NoCuda.into())
            }
        }
    }
}

/// Checks every input against the others and builds the model; fails before any training step.
pub fn prepare(config: &TrainConfig, inputs: &TrainInputs) -> Result<Prepared> {
    config.validate()?;
    prepare_on(config, inputs, device_of(config.device)?)
}

/// [`prepare`] on a given device (a distributed CUDA rank's `cuda:LOCAL_RANK`). Each stage checks its
/// inputs against what the earlier ones established and adds its lines to the log's notes.
pub fn prepare_on(config: &TrainConfig, inputs: &TrainInputs, device: Device) -> Result<Prepared> {
    prepare_rank(config, inputs, device, WorkShare::WHOLE)
}

/// [`prepare_on`] as one rank of a distributed run: of the checks that read every item (the
/// images, the teacher file's values) this rank makes `share` (its rank of the world), so that the
/// ranks together read each item once; a failure is this rank's error, which the others name.
pub fn prepare_rank(
    config: &TrainConfig,
    inputs: &TrainInputs,
    device: Device,
    share: WorkShare,
) -> Result<Prepared> {
    config.validate()?;
    let mut notes = set_up_threads(config, device)?;
    let labels = LabelInputs::check(config, inputs, &mut notes)?;
    let (data, absent_slots) = open_data(config, inputs, &labels, share, &mut notes)?;
    let validation = open_validation(config, inputs, &labels, share, &mut notes)?;
    let loader = loader_config(config, &labels.model_config)?;
    notes.push(describe_augmentation(&loader.augment));
    let steps_per_epoch = loader.steps_per_epoch(data.len())?;
    let total_steps = config
        .max_steps
        .unwrap_or(steps_per_epoch * config.max_epoch as u64);
    let (vs, model) = build_model(config, inputs, &labels, device, &mut notes)?;
    Ok(Prepared {
        config: config.clone(),
        inputs: inputs.clone(),
        model_config: labels.model_config,
        vs,
        model,
        data: Arc::new(data),
        absent_slots,
        device,
        loader,
        steps_per_epoch,
        total_steps,
        validation,
        notes,
    })
}

/// Sets libtorch's intra-op threads to `requested` capped at one per core (0: libtorch's default,
/// left as it is) and returns the count set (0: none). More threads than cores only contend, and
/// libtorch refuses a count beyond `i32` (`--threads 18446744073709551615` panicked in `tag`).
pub fn set_torch_threads(requested: usize) -> usize {
    apply_torch_threads(super::config::torch_threads_for(requested))
}

/// Sets libtorch's intra-op threads to `n`, a count already resolved and capped (0: leaves
/// libtorch's default); returns `n`.
fn apply_torch_threads(n: usize) -> usize {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
    n
}

/// libtorch's thread count and TF32 switch; the notes say what was set and what was capped.
fn set_up_threads(config: &TrainConfig, device: Device) -> Result<Vec<String>> {
    let threads = apply_torch_threads(config.torch_threads());
    let workers = config.decode_workers();
    let mut notes = vec![super::autocast::set_tf32(
        config.tf32,
        device,
        config.precision,
    )?];
    let sharing = super::config::ranks_sharing_cores();
    if sharing > 1 && (config.workers == 0 || config.threads == 0) {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        notes.push(format!(
            "{sharing} ranks share this machine's {cores} cores: each decodes images on {workers} \
             thread(s) and runs libtorch on {} (--workers, --threads choose)",
            match threads {
                0 => "as many as OMP_NUM_THREADS says".to_string(),
                n => n.to_string(),
            }
        ));
    }
    if workers < config.workers || threads < config.threads {
        notes.push(format!(
            "threads capped at one per core: --workers {} → {workers}, --threads {} → {threads}",
            config.workers, config.threads,
        ));
    }
    Ok(notes)
}

/// The manifest, the vocabulary and the label embeddings, checked against each other, and the model
/// configuration they size.
struct LabelInputs {
    manifest: SlotManifest,
    vocab: Option<Vocabulary>,
    embeddings: EmbeddingFile,
    layout: Layout,
    model_config: RamPlusConfig,
}

impl LabelInputs {
    fn check(config: &TrainConfig, inputs: &TrainInputs, notes: &mut Vec<String>) -> Result<Self> {
        let manifest = SlotManifest::read(&inputs.manifest)?;
        let vocab = match &inputs.vocab {
            Some(spec) => {
                let vocab = Vocabulary::load(spec)?;
                manifest.check_vocabulary(&vocab, &inputs.manifest)?;
                Some(vocab)
            }
            None => None,
        };
        let num_class = manifest.slots.len();
        if let Some(n) = config.class_num.filter(|&n| n != num_class) {
            return Err(TrainError::ClassCount {
                manifest: inputs.manifest.clone(),
                slots: num_class,
                class_num: n,
            }
            .into());
        }
        let embeddings = EmbeddingFile::read(&inputs.label_embed, None)?;
        let layout = Layout::detect(embeddings.rows, num_class, &inputs.label_embed)?;
        notes.push(check_provenance(inputs, &manifest, &embeddings, layout)?);
        let model_config = resolve_model(
            &config.model_spec(),
            num_class,
            layout.rows_per_slot(),
            embeddings.dim,
            &inputs.label_embed,
        )?;
        check_teacher_width(config, inputs, &model_config)?;
        Ok(LabelInputs {
            manifest,
            vocab,
            embeddings,
            layout,
            model_config,
        })
    }
}

/// Label embeddings made by tagfix name their vocabulary; it must be the manifest's.
fn check_provenance(
    inputs: &TrainInputs,
    manifest: &SlotManifest,
    embeddings: &EmbeddingFile,
    layout: Layout,
) -> Result<String> {
    match Provenance::from_metadata(&embeddings.metadata, &inputs.label_embed)? {
        Some(p) if p.vocabulary_sha256 != manifest.vocabulary.sha256 => {
            Err(TrainError::VocabularyMismatch {
                label_embed: inputs.label_embed.clone(),
                embed_sha: short_sha(&p.vocabulary_sha256),
                embed_tags: p.tag_count,
                manifest: inputs.manifest.clone(),
                manifest_sha: short_sha(&manifest.vocabulary.sha256),
                manifest_tags: manifest.vocabulary.tag_count,
            }
            .into())
        }
        Some(_) => Ok(format!(
            "label embeddings {}: {}, provenance matches the manifest's vocabulary",
            inputs.label_embed.display(),
            layout.describe()
        )),
        None => Ok(format!(
            "label embeddings {}: {} (no tagfix provenance: only the row count was checked)",
            inputs.label_embed.display(),
            layout.describe()
        )),
    }
}

/// Teacher features live in CLIP's 512-d space, so a teacher needs a model of that joint width.
fn check_teacher_width(
    config: &TrainConfig,
    inputs: &TrainInputs,
    model_config: &RamPlusConfig,
) -> Result<()> {
    let teacher_named = match (&inputs.teacher, &config.online_teacher) {
        (Some(t), _) => Some(t.as_path()),
        (None, Some(_)) => Some(Path::new("--teacher online")),
        (None, None) => None,
    };
    match teacher_named {
        Some(t) if model_config.joint_dim != data::TEACHER_DIM => Err(TrainError::TeacherWidth {
            teacher: t.to_path_buf(),
            teacher_dim: data::TEACHER_DIM,
            label_embed: inputs.label_embed.clone(),
            embed_dim: model_config.joint_dim,
        }
        .into()),
        _ => Ok(()),
    }
}

/// Records, teacher rows and images, checked: no record tags an absent slot and the images read.
fn open_data(
    config: &TrainConfig,
    inputs: &TrainInputs,
    labels: &LabelInputs,
    share: WorkShare,
    notes: &mut Vec<String>,
) -> Result<(TrainData, Vec<usize>)> {
    let source = match (&inputs.teacher, &config.online_teacher) {
        (Some(_), Some(_)) => return Err(TrainError::TwoTeachers.into()),
        (Some(p), None) => TeacherSource::File(p),
        (None, Some(o)) => TeacherSource::Online(o),
        (None, None) => TeacherSource::None,
    };
    let num_class = labels.model_config.num_class;
    let data = TrainData::open_checking(&inputs.data, &inputs.images, num_class, source, share)?;
    if let Some(t) = &data.online_teacher {
        notes.push(t.summary.clone());
    }
    let absent_slots = labels.manifest.absent_slots();
    data.check_absent(&absent_slots, &inputs.manifest)?;
    let image_check = config
        .check_images
        .unwrap_or_else(|| ImageCheck::default_for(data.len()));
    let unreadable = data.check_images_of(image_check, share, config.unreadable_images)?;
    let mut checked_by = if share.is_whole() {
        String::new()
    } else {
        format!(
            "; this rank checked {} of the images and teacher values",
            share
        )
    };
    if unreadable > 0 {
        checked_by += &format!("; {unreadable} unreadable, to be skipped");
    }
    notes.push(format!(
        "data: {} records from {} file(s), images under {} (checked: {}{checked_by}), teacher {}; {} absent slot(s), policy {}",
        data.len(),
        inputs.data.len(),
        inputs.images.display(),
        match image_check {
            ImageCheck::Full => "every image decoded",
            ImageCheck::Header => "headers only",
            ImageCheck::None => "not checked ahead",
        },
        match (&inputs.teacher, &config.online_teacher) {
            (Some(p), _) => match data.teacher.as_ref().map_or(0, |t| t.unreadable_images()) {
                0 => p.display().to_string(),
                n => format!("{} ({n} row(s) flagged: images `tagfix teacher` could not read)", p.display()),
            },
            (None, Some(_)) => "online (CLIP towers through ONNX Runtime on each augmented batch)".into(),
            (None, None) => "none (tag loss only)".into(),
        },
        absent_slots.len(),
        config.absent
    ));
    Ok((data, absent_slots))
}

/// The held-out set, when the run validates; `--val-every` without one is an error.
fn open_validation(
    config: &TrainConfig,
    inputs: &TrainInputs,
    labels: &LabelInputs,
    share: WorkShare,
    notes: &mut Vec<String>,
) -> Result<Option<ValidationSet>> {
    let Some(v) = &inputs.validation else {
        return match config.val_every {
            0 => Ok(None),
            every => Err(TrainError::NoValidationData(every).into()),
        };
    };
    // Without --vocab the manifest's tags name the slots (no preset thresholds then).
    let vocab = labels.vocab.clone().unwrap_or_else(|| {
        Vocabulary::from_tags(
            labels
                .manifest
                .slots
                .iter()
                .map(|s| s.tag.clone())
                .collect(),
        )
    });
    let set = ValidationSet::open(
        v,
        &inputs.images,
        vocab,
        labels.manifest.clone(),
        config.val_max_images,
        share,
        config.unreadable_images,
    )?;
    notes.push(format!(
        "{}; every {} steps",
        set.describe(),
        if config.val_every > 0 {
            config.val_every.to_string()
        } else {
            "(only first and last)".into()
        }
    ));
    Ok(Some(set))
}

/// Batch sizes, augmentation at the model's image size, seed and loader threads.
fn loader_config(config: &TrainConfig, model_config: &RamPlusConfig) -> Result<LoaderConfig> {
    let (micro, _) = config.accumulation()?;
    Ok(LoaderConfig {
        micro_batch: micro,
        batch: config.batch_size,
        augment: Augment {
            random: data::randaugment::RandomAugment::from_config(&config.random_augment),
            ..Augment::ram(model_config.swin.img_size as u32)
        },
        seed: config.seed,
        workers: config.decode_workers(),
        prefetch: config.prefetch,
        unreadable: config.unreadable_images,
    })
}

fn describe_augmentation(augment: &Augment) -> String {
    match &augment.random {
        Some(ra) => format!(
            "augmentation: RandomResizedCrop({}, scale 0.2-1), flip, RandomAugment({}, {}) p {} over {:?}",
            augment.size,
            ra.n,
            ra.magnitude,
            ra.prob,
            ra.ops()
        ),
        None => format!(
            "augmentation: RandomResizedCrop({}, scale 0.2-1), flip; RandomAugment off",
            augment.size
        ),
    }
}

/// The model on `device`: official initialisation, the `--init` checkpoints in order, the proof that
/// the image encoder was loaded (or the loud warning `--allow-random-encoder` asks for), then the label
/// embeddings on top.
fn build_model(
    config: &TrainConfig,
    inputs: &TrainInputs,
    labels: &LabelInputs,
    device: Device,
    notes: &mut Vec<String>,
) -> Result<(VarStore, RamPlus)> {
    tch::manual_seed(config.seed as i64);
    let vs = VarStore::new(device);
    let model = RamPlus::new(&vs, &labels.model_config, ParamInit::Official)?;
    let fingerprint = InitFingerprint::capture(&vs, "visual_encoder.");
    let mut reports = Vec::new();
    for p in &inputs.init {
        let r = weights::load_state_dict(&vs, p, &LoadOptions::lenient())?;
        notes.push(format!("loaded {}:\n{}", p.display(), r.to_table()));
        reports.push(r);
    }
    let report_refs: Vec<_> = reports.iter().collect();
    let check = weights::verify_encoder_initialised(
        &report_refs,
        &fingerprint,
        &vs,
        inputs.allow_random_encoder,
    )?;
    notes.extend(check.warnings.iter().cloned());
    let table = weights::to_tch(&labels.embeddings.to_tensor()?)?;
    tch::no_grad(|| {
        let mut var = vs.variables()["label_embed"].shallow_clone();
        var.copy_(&table.to_kind(var.kind()).to_device(device));
    });
    notes.push(format!(
        "model {}: {} classes × {} descriptions; label_embed set from {}",
        labels.model_config.name,
        labels.model_config.num_class,
        labels.layout.rows_per_slot(),
        inputs.label_embed.display()
    ));
    Ok((vs, model))
}

/// Where checkpoints go and what they hold: `RUN_DIR/checkpoints/step-NNNNNNNN/{model.safetensors,
/// optimizer.safetensors, state.json}`, written into a hidden temporary folder and renamed.
pub fn checkpoint_dir(run: &RunDir, step: u64) -> PathBuf {
    run.checkpoints_dir().join(format!("step-{step:08}"))
}

/// The newest complete checkpoint of a run.
pub fn latest_checkpoint(run: &RunDir) -> Result<Option<PathBuf>> {
    newest_checkpoint_in(&run.checkpoints_dir(), "state.json")
}

/// How `--auto-resume` begins in `out`: [`RunStart::Resume`] when it holds a complete checkpoint,
/// [`RunStart::Again`] when an earlier attempt left metrics but no checkpoint, else
/// [`RunStart::New`] (also when `out` is not a folder: the new run then says what is wrong).
pub fn auto_start(out: &Path) -> Result<RunStart> {
    if !out.is_dir() {
        return Ok(RunStart::New);
    }
    // Adds no more than the checkpoints folder every run has.
    let run = RunDir::create(out)?;
    if latest_checkpoint(&run)?.is_some() {
        return Ok(RunStart::Resume);
    }
    let logged = std::fs::metadata(run.metrics_path()).is_ok_and(|m| m.len() > 0);
    Ok(if logged {
        RunStart::Again
    } else {
        RunStart::New
    })
}

/// The checkpoint a resume continues from in a run's `checkpoints` folder: the newest whole one
/// ([`newest_whole_checkpoint`]; each damaged one passed over is a warning), checked against the
/// run's records (`fingerprint`: `data`'s), batch size and seed ([`check_resumable`]) before any of
/// its tensors is read.
pub(super) fn checkpoint_to_resume(
    checkpoints: &Path,
    data: &TrainData,
    fingerprint: &str,
    config: &TrainConfig,
) -> Result<Resumable> {
    let found = newest_whole_checkpoint(checkpoints)?
        .ok_or_else(|| TrainError::NothingToResume(checkpoints.to_path_buf()))?;
    for (dir, why) in &found.skipped {
        tracing::warn!(
            "--resume: {} is not whole ({why}); passed over for {}",
            dir.display(),
            found.dir.display()
        );
    }
    if found.verified == Verified::NoList {
        tracing::warn!(
            "--resume: {} has no {} (written by a tagfix before checkpoints carried one): its \
             bytes cannot be verified",
            found.dir.display(),
            checksums::CHECKSUM_FILE
        );
    }
    check_resumable(&found.dir, &found.state, data, fingerprint, config)?;
    Ok(found)
}

/// Loads a checkpoint's model and optimizer tensors into `vs` and `opt`; `state` is its
/// `state.json`, read and checked first ([`read_state`], [`check_resumable`]).
pub(super) fn load_checkpoint(
    dir: &Path,
    state: &CheckpointState,
    vs: &VarStore,
    opt: &mut AdamW,
) -> Result<()> {
    let model_path = dir.join("model.safetensors");
    let report = weights::load_state_dict(vs, &model_path, &LoadOptions::strict())?;
    debug_assert!(report.is_complete());
    let opt_path = dir.join("optimizer.safetensors");
    let tensors =
        Tensor::read_safetensors(&opt_path).map_err(|e| tensors_error(&opt_path, "read", e))?;
    let map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    opt.load_state(&map, state.step, &opt_path.display().to_string())
}

/// A resume continues only where a step means what it meant: the same records (`fingerprint`:
/// `data`'s), split into batches of the same size and drawn in the same order (the configuration's
/// `batch_size` and `seed`). Another batch size would shift the epoch, the data position and the
/// learning-rate schedule the step counter stands for (a card with less memory keeps the batch with
/// smaller micro-batches); another seed would reorder the epoch in progress, so that its rest
/// repeats some records and skips others.
fn check_resumable(
    checkpoint: &Path,
    state: &CheckpointState,
    data: &TrainData,
    fingerprint: &str,
    config: &TrainConfig,
) -> Result<()> {
    let batch_size = config.batch_size;
    if state.data_fingerprint != fingerprint || state.records != data.len() {
        return Err(TrainError::DataChanged {
            checkpoint: checkpoint.to_path_buf(),
            then: state.records,
            now: data.len(),
        }
        .into());
    }
    match state.batch_size() {
        Some(then) if then != batch_size as u64 => Err(TrainError::BatchChanged {
            checkpoint: checkpoint.to_path_buf(),
            then,
            now: batch_size,
        }
        .into()),
        _ if state.seed != config.seed => Err(TrainError::SeedChanged {
            checkpoint: checkpoint.to_path_buf(),
            then: state.seed,
            now: config.seed,
        }
        .into()),
        _ => Ok(()),
    }
}

/// What `tagfix train --dry-run` established: the inputs checked and the model built ([`prepare`]),
/// and `--out` as the run would use it; nothing trained or written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    pub out: PathBuf,
    /// The checkpoint a resume would continue from.
    pub resume_from: Option<PathBuf>,
    /// Whether that checkpoint's files were checked against its `SHA256SUMS` (`false`: it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_verified: Option<bool>,
    /// `--auto-resume` on a folder an earlier attempt left without a checkpoint: its records would
    /// be replaced.
    pub again: bool,
    /// The step the run would start from (the checkpoint's, else 0).
    pub start_step: u64,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    pub records: usize,
    pub batch_size: usize,
    /// The ranks the batch is split among.
    pub world: usize,
    /// `None`: `micro_batch_size = "auto"`, chosen when the run starts.
    pub micro_batch_size: Option<usize>,
    /// The micro-batches each rank accumulates per step (with a fixed micro-batch size).
    pub micro_batches_per_rank: Option<usize>,
    /// The model's parameters (the frozen ones included).
    pub parameters: i64,
    /// What is trained and frozen (`--freeze` checked as the run checks it).
    pub trained: super::optim::ParamSummary,
    /// The model's state per rank before any activation.
    pub memory: super::memory::MemoryPlan,
    /// On a resume whose configuration changed the loss weighting, what the run would change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weighting_change: Option<String>,
    /// The run's checkpoints on the disk: their size, how many are kept, and the space free there.
    pub checkpoints: CheckpointSpace,
    /// Newer checkpoints a resume passes over as damaged, each with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<(PathBuf, String)>,
}

/// What a run's checkpoints take on the disk, for `--dry-run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointSpace {
    /// One checkpoint's files (model, both moments of every trained value, headers), about.
    pub bytes: u64,
    /// `keep_checkpoints`: a checkpoint is written before the oldest kept one is removed, so
    /// `keep + 1` are on the disk at the peak.
    pub keep: usize,
    /// What the run's checkpoints folder holds already (its checkpoints to resume from).
    pub existing: u64,
    /// Free space on the file system of `--out` (`None`: the system cannot say; quotas not counted).
    pub available: Option<u64>,
}

impl CheckpointSpace {
    /// The space the run still needs at its peak beyond what its folder holds.
    pub fn more_needed(&self) -> u64 {
        (self.bytes * (self.keep as u64 + 1)).saturating_sub(self.existing)
    }

    /// Whether the free space is known to be less than [`Self::more_needed`].
    pub fn short(&self) -> bool {
        self.available.is_some_and(|free| free < self.more_needed())
    }

    /// For a run whose tensors are `vs`'s, its trained ones `trained`, writing into `out`.
    pub(super) fn of_run<'a>(
        vs: &VarStore,
        trained: impl Iterator<Item = &'a Tensor> + Clone,
        keep: usize,
        out: &Path,
    ) -> Self {
        use super::saver::{checkpoint_bytes, tensor_bytes};
        // The model's tensors, then both moments of each trained one.
        let moments = trained.clone().chain(trained).map(tensor_bytes);
        let bytes = checkpoint_bytes(vs.variables().values().map(tensor_bytes).chain(moments));

        // The nearest folder that exists: a new run's --out may not yet (absolute, so that a relative
        // `runs/a` ends at the working folder rather than at an empty path).
        let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
        let available = out
            .ancestors()
            .find(|p| p.is_dir())
            .and_then(crate::fsutil::available_space);
        let folders = checkpoint_folders(
            &out.join(crate::monitor::run_dir::CHECKPOINTS_DIR),
            "state.json",
        )
        .unwrap_or_default();
        let existing = folders.iter().map(|d| crate::fsutil::folder_bytes(d)).sum();
        CheckpointSpace {
            bytes,
            keep,
            existing,
            available,
        }
    }
}

/// Checks `out` as a run begun with `start` would use it, without writing: a new run refuses a
/// folder that holds one; a resume needs a checkpoint whose records are `prepared`'s (its tensors
/// are read when the run starts). A fixed micro-batch size must split the batch evenly among
/// `world` ranks.
pub fn dry_run(prepared: &Prepared, out: &Path, start: RunStart, world: usize) -> Result<DryRun> {
    let checkpoints = out.join(crate::monitor::run_dir::CHECKPOINTS_DIR);
    let (mut start_step, mut weighting_change, mut resume_from) = (0, None, None);
    let mut resume_verified = None;
    let mut passed_over = Vec::new();
    match start {
        RunStart::New
            if newest_checkpoint_in(&checkpoints, "state.json")?.is_some()
                || out.join(crate::monitor::run_dir::METRICS_FILE).exists() =>
        {
            return Err(TrainError::RunExists(out.to_path_buf()).into());
        }
        RunStart::Resume => {
            let Resumable {
                dir: ckpt,
                state,
                verified,
                skipped,
            } = checkpoint_to_resume(
                &checkpoints,
                &prepared.data,
                &prepared.data.records.fingerprint(),
                &prepared.config,
            )?;
            start_step = state.step;
            weighting_change = LossWeighting::resumed(state.weighting, &prepared.config).1;
            resume_from = Some(ckpt);
            resume_verified = Some(verified == Verified::Matched);
            passed_over = skipped;
        }
        RunStart::New | RunStart::Again => {}
    }
    let config = &prepared.config;
    let auto = config.micro_batch_size == Some(super::config::MicroBatchSize::Auto);
    let split = if auto {
        None
    } else {
        Some(super::trainer::accumulation_per_rank(config, world)?)
    };
    let (trained, summary) = super::optim::select_trained(&prepared.vs, &config.frozen_prefixes())?;
    let shard_over = if config.shard_optimizer { world } else { 1 };
    let bf16 = config.precision == super::config::Precision::Bf16;
    let memory = super::memory::MemoryPlan::new(&prepared.vs, &trained, shard_over, bf16);
    let checkpoints = CheckpointSpace::of_run(
        &prepared.vs,
        trained.iter().map(|(_, t)| t),
        config.keep_checkpoints,
        out,
    );
    Ok(DryRun {
        out: out.to_path_buf(),
        resume_from,
        resume_verified,
        again: start == RunStart::Again,
        start_step,
        total_steps: prepared.total_steps,
        steps_per_epoch: prepared.steps_per_epoch,
        records: prepared.data.len(),
        batch_size: config.batch_size,
        world,
        micro_batch_size: split.map(|(micro, _)| micro),
        micro_batches_per_rank: split.map(|(_, n)| n),
        parameters: prepared
            .vs
            .variables()
            .values()
            .map(|t| t.numel() as i64)
            .sum(),
        trained: summary,
        memory,
        weighting_change,
        checkpoints,
        passed_over,
    })
}

/// Trains (or resumes, when `resume` is set and `out` holds a checkpoint) and returns a summary:
/// validation at the start of a new run, then each step followed by the validation and checkpoint
/// it makes due.
pub fn train(prepared: Prepared, out: &Path, resume: bool) -> Result<RunSummary> {
    train_until(prepared, out, resume, StopRequest::new())
}

/// [`train`] that stops after the step in progress, with a checkpoint, once `stop` is requested
/// (by a signal: [`StopRequest::on_signals`]), ending with [`TrainError::Interrupted`].
pub fn train_until(
    prepared: Prepared,
    out: &Path,
    start: impl Into<RunStart>,
    stop: StopRequest,
) -> Result<RunSummary> {
    let mut trainer = opened(|| Trainer::new(prepared, out, start))?;
    trainer.stop_on(stop);
    drive_caught(&mut trainer)?;
    finished(trainer)
}

/// [`train_until`] as one rank of a data-parallel run (docs/distributed.md). A failing rank tells
/// the others why through the rendezvous store before it returns, so that theirs name it; a stop
/// signal on any rank stops them all after the same step.
pub fn train_distributed(
    prepared: Prepared,
    out: &Path,
    start: impl Into<RunStart>,
    group: super::dist::ProcessGroup,
    stop: StopRequest,
) -> Result<RunSummary> {
    let mut trainer = opened(|| Trainer::with_group(prepared, out, start, Some(group)))?;
    trainer.stop_on(stop);
    match drive_caught(&mut trainer) {
        Ok(()) => finished(trainer),
        Err(e) if matches!(e.kind(), crate::error::ErrorKind::Interrupted { .. }) => Err(e),
        Err(e) => {
            trainer.report_failure(&e.to_string());
            Err(e)
        }
    }
}

/// Opens a run ([`Trainer::new`]) with libtorch's failures as errors ([`failure::catch`]).
fn opened(open: impl FnOnce() -> Result<Trainer>) -> Result<Trainer> {
    failure::catch(open).unwrap_or_else(|failure| {
        Err(TrainError::LibtorchFailed {
            during: "opening the run".into(),
            failure,
            then: "No step was taken.".into(),
        }
        .into())
    })
}

/// [`drive`] with libtorch's failures (out of memory on the card, most often) as errors that say
/// what was saved ([`Trainer::failed`]) rather than panics that lose the steps since the last
/// checkpoint.
fn drive_caught(trainer: &mut Trainer) -> Result<()> {
    match failure::catch(|| drive(trainer)) {
        Ok(driven) => driven,
        Err(failure) => Err(trainer.failed(failure)),
    }
}

/// Ends a run ([`Trainer::finish`]) with libtorch's failures as errors.
fn finished(trainer: Trainer) -> Result<RunSummary> {
    let checkpoints = trainer.checkpoints_dir();
    failure::catch(|| trainer.finish()).unwrap_or_else(|failure| {
        Err(TrainError::LibtorchFailed {
            during: "finishing the run".into(),
            failure,
            then: format!("Its checkpoints are in {}.", checkpoints.display()),
        }
        .into())
    })
}

/// The training loop: validation at the start of a new run, then each step followed by the
/// validation and checkpoint it makes due, or by the checkpoint a stop signal asks for.
fn drive(trainer: &mut Trainer) -> Result<()> {
    if trainer.at_start() {
        trainer.validate()?;
    }
    while !trainer.is_done() {
        trainer.step()?;
        if trainer.interrupt_due() {
            return Err(trainer.interrupt());
        }
        if trainer.validation_due() {
            trainer.validate()?;
        }
        if trainer.checkpoint_due() {
            trainer.checkpoint()?;
        }
    }
    Ok(())
}

/// `validation at step S (NAME, N images): mAP … CP … CR … CF1 … OF1 …; absent slots: mAP …`.
pub fn validation_line(rec: &ValidationRecord) -> String {
    let group = |s: &crate::eval::Summary| {
        format!(
            "mAP {:.4} CP {:.4} CR {:.4} CF1 {:.4} OF1 {:.4} ({} tags)",
            s.map, s.cp, s.cr, s.cf1, s.of1, s.classes
        )
    };
    let left_out = match rec.left_out {
        0 => String::new(),
        n => format!(", {n} unreadable left out"),
    };
    let mut line = format!(
        "validation at step {} ({}, {} images{left_out}): {}",
        rec.step,
        rec.benchmark,
        rec.images,
        rec.main
            .as_ref()
            .map(group)
            .unwrap_or_else(|| "no present tag with positives".into())
    );
    if let Some(a) = &rec.absent {
        line.push_str(&format!("; absent slots: {}", group(a)));
    }
    line
}

/// Mean sigmoid probability of every slot over the first `limit` records, each image resized (bicubic)
/// to the model's input without augmentation, in eval mode. Under [`UnreadableImages::Skip`] the
/// records whose image cannot be read are left out.
pub fn slot_probabilities(
    model: &RamPlus,
    data: &TrainData,
    device: Device,
    limit: usize,
    unreadable: UnreadableImages,
) -> Result<Vec<f64>> {
    let paths: Vec<PathBuf> = (0..data.len().min(limit))
        .map(|i| data.image_path(&data.records.get(i)))
        .collect();
    let probs = match unreadable {
        UnreadableImages::Stop => score_images(model, &paths, device, 16, PilFilter::Bicubic)?,
        UnreadableImages::Skip => {
            score_readable_images(model, &paths, device, 16, PilFilter::Bicubic)?.0
        }
    };
    let nc = model.config.num_class;
    let n = probs.len() / nc.max(1);
    let mut sums = vec![0f64; nc];
    for row in probs.chunks(nc) {
        for (s, p) in sums.iter_mut().zip(row) {
            *s += f64::from(*p);
        }
    }
    Ok(sums.into_iter().map(|s| s / n.max(1) as f64).collect())
}

pub(super) fn tensors_error(path: &Path, action: &'static str, e: tch::TchError) -> Error {
    TrainError::Tensors {
        path: path.to_path_buf(),
        action,
        source: Box::new(e),
    }
    .into()
}

/// The first 12 hex digits of a sha256, as error messages show them (a label embedding file's
/// provenance may hold any text there).
fn short_sha(sha: &str) -> String {
    crate::report::short_hash(sha).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The space of a run's checkpoints: one checkpoint is the model and both moments of each
    /// trained value (f32), plus headers; the free space is found for a relative `--out` that does
    /// not exist yet (the working folder's file system).
    #[test]
    fn checkpoint_space_counts_model_and_moments_and_finds_a_relative_outs_file_system() {
        let _torch = crate::train::torch_test_lock();
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1000], tch::nn::Init::Const(0.0));
        let space = CheckpointSpace::of_run(&vs, [&w].into_iter(), 2, Path::new("runs/not-yet"));
        // The model's 4000 bytes once, its two moments' each.
        let three = super::super::saver::checkpoint_bytes([4000, 4000, 4000].into_iter());
        assert_eq!(space.bytes, three);
        assert_eq!((space.keep, space.existing), (2, 0));
        assert!(space.available.is_some(), "{space:?}");
        assert_eq!(space.more_needed(), 3 * space.bytes);
    }

    /// The log's and the summary's validation line counts the images a validation left out.
    #[test]
    fn a_validation_line_says_how_many_images_were_left_out() {
        let rec = ValidationRecord {
            step: 30,
            benchmark: "synth".into(),
            images: 8,
            left_out: 0,
            main: None,
            absent: None,
        };
        let line = validation_line(&rec);
        assert!(
            line.starts_with("validation at step 30 (synth, 8 images): "),
            "{line}"
        );
        let line = validation_line(&ValidationRecord { left_out: 2, ..rec });
        assert!(
            line.starts_with("validation at step 30 (synth, 8 images, 2 unreadable left out): "),
            "{line}"
        );
    }

    /// A label embedding file's provenance may name any text as its vocabulary hash; the mismatch
    /// message shows its start without cutting a character.
    #[test]
    fn a_vocabulary_hash_of_any_text_shortens_without_panicking() {
        assert_eq!(short_sha(&"ab".repeat(32)), "abababababab");
        assert_eq!(
            short_sha(&format!("a{}", "é".repeat(20))).chars().count(),
            12
        );
    }
}
