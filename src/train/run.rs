//! The training loop: every input checked before the first step, micro-batches accumulated into
//! optimizer steps, one [`StepRecord`] per step in `RUN_DIR/metrics.jsonl`, atomic checkpoints
//! (model, optimizer state, step, RNG scheme, data position, loss weights) keeping the last N, exact
//! `--resume`, and a stop with a checkpoint on a non-finite loss.
//!
//! Randomness: the data order and augmentation derive from `(seed, epoch, position)` (see
//! [`super::data`]); libtorch's generator (dropout, DropPath) is re-seeded from `(seed, step, micro)`
//! before every micro-batch. A checkpoint's step therefore fixes all randomness that follows, and a
//! resumed CPU run reproduces the uninterrupted one bit for bit.

use super::autocast::with_autocast;
use super::config::{DeviceKind, ImageCheck, Precision, TrainConfig};
use super::data::{self, Augment, Loader, LoaderConfig, TeacherSource, TrainData};
use super::model::{ParamInit, RamPlus, RamPlusConfig};
use super::objective::{micro_losses, step_losses, AbsentSlots, LossWeighting, MicroInputs};
use super::optim::{AdamW, LrSchedule};
use super::validate::{score_images, ValidationInputs, ValidationSet};
use super::weights::{self, InitFingerprint, LoadOptions};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::manifest::SlotManifest;
/// What a finished run reports (feature-free, so `repair` reads it without libtorch).
pub use crate::monitor::RunSummary;
use crate::monitor::{
    events_table, LossTerm, RunDir, RunMonitor, StepRecord, ValidationRecord, ValidationWriter,
};
use crate::tensors::{EmbeddingFile, Layout, Provenance};
use crate::vocab::Vocabulary;
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

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

const RUN_FILE: &str = "run.json";
const STATE_SCHEMA: &str = "tagfix.train-checkpoint/1";

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
        return Err(Error::invalid(label_embed, format!(
            "rows have {joint_dim} values, but model `{spec}` takes {}-d label embeddings (CLIP space, as the \
             official checkpoints); embed the tags with a CLIP text tower (`tagfix embed --model clip`), or train \
             the small `model = \"tiny\"`, which follows the embeddings' width",
            cfg.joint_dim
        )));
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
                Err(Error::Usage(
                    "--device cuda: libtorch sees no CUDA device (no GPU, no driver, or a binary linked without \
                     libtorch_cuda: build it with scripts/setup-gpu.sh, docs/guide.md step 5)"
                        .into(),
                ))
            }
        }
    }
}

/// Checks every input against the others and builds the model; fails before any training step.
pub fn prepare(config: &TrainConfig, inputs: &TrainInputs) -> Result<Prepared> {
    config.validate()?;
    let device = device_of(config.device)?;
    if config.torch_threads() > 0 {
        tch::set_num_threads(config.torch_threads() as i32);
    }
    let mut notes = Vec::new();
    if config.decode_workers() < config.workers || config.torch_threads() < config.threads {
        notes.push(format!(
            "threads capped at one per core: --workers {} → {}, --threads {} → {}",
            config.workers,
            config.decode_workers(),
            config.threads,
            config.torch_threads()
        ));
    }

    // Manifest, vocabulary and label embeddings must agree.
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
    if let Some(n) = config.class_num {
        if n != num_class {
            return Err(Error::invalid(
                &inputs.manifest,
                format!("has {num_class} slots but the config says class_num = {n}"),
            ));
        }
    }
    let emb = EmbeddingFile::read(&inputs.label_embed, None)?;
    let layout = Layout::detect(emb.rows, num_class, &inputs.label_embed)?;
    match Provenance::from_metadata(&emb.metadata, &inputs.label_embed)? {
        Some(p) if p.vocabulary_sha256 != manifest.vocabulary.sha256 => {
            return Err(Error::invalid(
                &inputs.label_embed,
                format!(
                    "was made for another vocabulary (sha256 {}…, {} tags) than the slot manifest {} (sha256 {}…, {} tags)",
                    &p.vocabulary_sha256[..p.vocabulary_sha256.len().min(12)],
                    p.tag_count,
                    inputs.manifest.display(),
                    &manifest.vocabulary.sha256[..manifest.vocabulary.sha256.len().min(12)],
                    manifest.vocabulary.tag_count
                ),
            ))
        }
        Some(_) => notes.push(format!(
            "label embeddings {}: {}, provenance matches the manifest's vocabulary",
            inputs.label_embed.display(),
            layout.describe()
        )),
        None => notes.push(format!(
            "label embeddings {}: {} (no tagfix provenance: only the row count was checked)",
            inputs.label_embed.display(),
            layout.describe()
        )),
    }
    let model_config = resolve_model(
        &config.model_spec(),
        num_class,
        layout.rows_per_slot(),
        emb.dim,
        &inputs.label_embed,
    )?;
    let teacher_named = match (&inputs.teacher, &config.online_teacher) {
        (Some(t), _) => Some(t.as_path()),
        (None, Some(_)) => Some(Path::new("--teacher online")),
        (None, None) => None,
    };
    if let Some(t) = teacher_named {
        if model_config.joint_dim != data::TEACHER_DIM {
            return Err(Error::invalid(
                t,
                format!(
                    "holds {}-d CLIP teacher features, but the label embeddings {} are {}-d: leave out --teacher \
                     (the tag loss trains alone) or embed the tags with a CLIP text tower",
                    data::TEACHER_DIM,
                    inputs.label_embed.display(),
                    model_config.joint_dim
                ),
            ));
        }
    }

    // Data: records, teacher rows, absent slots, every image readable.
    let source = match (&inputs.teacher, &config.online_teacher) {
        (Some(_), Some(_)) => {
            return Err(Error::Usage(
                "both a teacher file (--teacher FILE) and the online teacher ([online_teacher] / --teacher online) \
                 are configured: choose one"
                    .into(),
            ))
        }
        (Some(p), None) => TeacherSource::File(p),
        (None, Some(o)) => TeacherSource::Online(o),
        (None, None) => TeacherSource::None,
    };
    let data = TrainData::open_with(&inputs.data, &inputs.images, num_class, source)?;
    if let Some(t) = &data.online_teacher {
        notes.push(t.summary.clone());
    }
    let absent_slots = manifest.absent_slots();
    data.check_absent(&absent_slots, &inputs.manifest)?;
    let image_check = config
        .check_images
        .unwrap_or_else(|| ImageCheck::default_for(data.len()));
    data.check_images(image_check)?;
    notes.push(format!(
        "data: {} records from {} file(s), images under {} (checked: {}), teacher {}; {} absent slot(s), policy {}",
        data.len(),
        inputs.data.len(),
        inputs.images.display(),
        match image_check {
            ImageCheck::Full => "every image decoded",
            ImageCheck::Header => "headers only",
            ImageCheck::None => "not checked ahead",
        },
        match (&inputs.teacher, &config.online_teacher) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(_)) => "online (CLIP towers through ONNX Runtime on each augmented batch)".into(),
            (None, None) => "none (tag loss only)".into(),
        },
        absent_slots.len(),
        config.absent
    ));
    let validation = match &inputs.validation {
        Some(v) => {
            // Without --vocab the manifest's tags name the slots (no preset thresholds then).
            let vocab = vocab.clone().unwrap_or_else(|| {
                Vocabulary::from_tags(manifest.slots.iter().map(|s| s.tag.clone()).collect())
            });
            let set = ValidationSet::open(
                v,
                &inputs.images,
                vocab,
                manifest.clone(),
                config.val_max_images,
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
            Some(set)
        }
        None if config.val_every > 0 => {
            return Err(Error::Usage(format!(
                "val_every = {} but the run has no validation data: give --val-data (a benchmark folder or a RAM-format annotation file)",
                config.val_every
            )))
        }
        None => None,
    };
    let (micro, _) = config.accumulation()?;
    let loader = LoaderConfig {
        micro_batch: micro,
        batch: config.batch_size,
        augment: Augment {
            random: data::randaugment::RandomAugment::from_config(&config.random_augment),
            ..Augment::ram(model_config.swin.img_size as u32)
        },
        seed: config.seed,
        workers: config.decode_workers(),
        prefetch: config.prefetch,
    };
    notes.push(match &loader.augment.random {
        Some(ra) => format!(
            "augmentation: RandomResizedCrop({}, scale 0.2-1), flip, RandomAugment({}, {}) p {} over {:?}",
            loader.augment.size,
            ra.n,
            ra.magnitude,
            ra.prob,
            ra.ops()
        ),
        None => format!(
            "augmentation: RandomResizedCrop({}, scale 0.2-1), flip; RandomAugment off",
            loader.augment.size
        ),
    });
    let steps_per_epoch = loader.steps_per_epoch(data.len());
    if steps_per_epoch == 0 {
        return Err(Error::Usage(format!(
            "{} records are fewer than one batch of {}",
            data.len(),
            config.batch_size
        )));
    }
    let total_steps = config
        .max_steps
        .unwrap_or(steps_per_epoch * config.max_epoch as u64);

    // Model, checkpoints, the encoder proof, then the label embeddings on top.
    tch::manual_seed(config.seed as i64);
    let vs = VarStore::new(device);
    let model = RamPlus::new(&vs, &model_config, ParamInit::Official)?;
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
    let table = weights::to_tch(&emb.to_tensor()?)?;
    tch::no_grad(|| {
        let mut var = vs.variables()["label_embed"].shallow_clone();
        var.copy_(&table.to_kind(var.kind()).to_device(device));
    });
    notes.push(format!(
        "model {}: {} classes × {} descriptions; label_embed set from {}",
        model_config.name,
        num_class,
        layout.rows_per_slot(),
        inputs.label_embed.display()
    ));

    Ok(Prepared {
        config: config.clone(),
        inputs: inputs.clone(),
        model_config,
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
    /// [`data::RecordSet::fingerprint`] of the training records.
    pub data_fingerprint: String,
    pub weighting: LossWeighting,
    pub wall_s: f64,
    pub model: String,
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

/// The newest `step-*` folder holding the file `needs` (resume needs `state.json`, inference only
/// `model.safetensors`) in a run's `checkpoints/` folder `dir`.
pub fn newest_checkpoint_in(dir: &Path, needs: &str) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join(needs).is_file()
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

fn save_checkpoint(
    run: &RunDir,
    vs: &VarStore,
    opt: &AdamW,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(run, state.step);
    let tmp = run
        .checkpoints_dir()
        .join(format!(".step-{:08}.tmp", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let model_path = tmp.join("model.safetensors");
    let cpu: Vec<(String, Tensor)> = {
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    Tensor::write_safetensors(&cpu, &model_path)
        .map_err(|e| Error::invalid(&model_path, e.to_string()))?;
    let opt_path = tmp.join("optimizer.safetensors");
    let opt_state: Vec<(String, Tensor)> = opt
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&opt_state, &opt_path)
        .map_err(|e| Error::invalid(&opt_path, e.to_string()))?;
    write_atomic(&tmp.join("state.json"), |w| {
        serde_json::to_writer_pretty(&mut *w, state).map_err(std::io::Error::other)
    })?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    // Keep the newest `keep`.
    let mut all: Vec<PathBuf> = std::fs::read_dir(run.checkpoints_dir())
        .map_err(|e| Error::io(run.checkpoints_dir(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    all.sort();
    while all.len() > keep {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(dir)
}

fn read_checkpoint(dir: &Path, vs: &VarStore, opt: &mut AdamW) -> Result<CheckpointState> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(&state_path, format!("not a checkpoint state: {e}")))?;
    if state.schema != STATE_SCHEMA {
        return Err(Error::invalid(
            &state_path,
            format!("checkpoint schema {} is not {STATE_SCHEMA}", state.schema),
        ));
    }
    let model_path = dir.join("model.safetensors");
    let report = weights::load_state_dict(vs, &model_path, &LoadOptions::strict())?;
    debug_assert!(report.is_complete());
    let opt_path = dir.join("optimizer.safetensors");
    let tensors = Tensor::read_safetensors(&opt_path)
        .map_err(|e| Error::invalid(&opt_path, e.to_string()))?;
    let map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    opt.load_state(&map, state.step, &opt_path.display().to_string())?;
    Ok(state)
}

/// splitmix-style seed for libtorch's generator at (step, micro).
fn torch_seed(seed: u64, step: u64, micro: usize) -> i64 {
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((z ^ (z >> 29)) >> 1) as i64
}

fn to_device(v: &[f32], shape: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(v).view(shape).to_device(device)
}

/// Trains (or resumes, when `resume` is set and `out` holds a checkpoint) and returns a summary.
pub fn train(prepared: Prepared, out: &Path, resume: bool) -> Result<RunSummary> {
    let Prepared {
        config,
        inputs,
        model_config,
        vs,
        model,
        data,
        absent_slots,
        device,
        loader: loader_cfg,
        steps_per_epoch,
        total_steps,
        validation,
        notes,
    } = prepared;
    for n in &notes {
        tracing::info!("{n}");
    }
    let run = RunDir::create(out)?;
    let frozen = config.frozen_prefixes();
    let mut opt = AdamW::new(&vs, &frozen, &config)?;
    tracing::info!("{}", opt.summary);
    let mut weighting = LossWeighting::new(
        config.loss_weights,
        config.loss_balance,
        config.balance_steps,
    );
    let mut start_step = 0u64;
    let mut wall_offset = 0.0;
    let fingerprint = data.records.fingerprint();
    if resume {
        let ckpt = latest_checkpoint(&run)?.ok_or_else(|| {
            Error::invalid(
                &run.checkpoints_dir(),
                "--resume: the run has no checkpoint to resume from",
            )
        })?;
        let state = read_checkpoint(&ckpt, &vs, &mut opt)?;
        if state.data_fingerprint != fingerprint || state.records != data.len() {
            return Err(Error::invalid(
                &ckpt,
                format!(
                    "--resume: the training records differ from the checkpoint's ({} records then, {} now): \
                     the data position would be meaningless",
                    state.records,
                    data.len()
                ),
            ));
        }
        start_step = state.step;
        wall_offset = state.wall_s;
        weighting = state.weighting;
        tracing::info!(
            "resuming from {} at step {start_step} (epoch {})",
            ckpt.display(),
            state.epoch
        );
    } else if run.metrics_path().exists() || latest_checkpoint(&run)?.is_some() {
        return Err(Error::invalid(
            out,
            "already holds a training run: pass --resume to continue it, or choose another --out",
        ));
    }
    write_atomic(&run.config_path(), |w| {
        w.write_all(config.to_toml().as_bytes())
    })?;
    write_atomic(&run.root().join(RUN_FILE), |w| {
        serde_json::to_writer_pretty(&mut *w, &inputs).map_err(std::io::Error::other)
    })?;
    let mut monitor = if resume {
        RunMonitor::resume(&run, config.monitor.clone(), start_step)?
    } else {
        RunMonitor::start(&run, config.monitor.clone())?
    };
    if start_step >= total_steps {
        return Err(Error::Usage(format!(
            "nothing to do: the run is at step {start_step} of {total_steps} (raise max_steps to continue)"
        )));
    }

    let mut validations = Vec::new();
    let mut val_writer = match &validation {
        Some(_) if resume => Some(ValidationWriter::resume(
            &run.validation_path(),
            start_step,
        )?),
        Some(_) => {
            crate::fsutil::write_bytes_atomic(&run.validation_path(), b"")?;
            Some(ValidationWriter::append(&run.validation_path())?)
        }
        None => None,
    };
    let (micro, accumulation) = config.accumulation()?;
    let val_batch = config.val_batch_size.unwrap_or(micro);
    let mut validate_at = |step: u64, bar: Option<&indicatif::ProgressBar>| -> Result<()> {
        let (Some(set), Some(writer)) = (&validation, val_writer.as_mut()) else {
            return Ok(());
        };
        let report = set.run(&model, device, val_batch)?;
        let rec = ValidationRecord::from_report(step, &report);
        writer.write(&rec)?;
        let line = validation_line(&rec);
        match bar {
            Some(b) => b.suspend(|| tracing::info!("{line}")),
            None => tracing::info!("{line}"),
        }
        validations.push(rec);
        Ok(())
    };
    if !resume {
        validate_at(0, None)?;
    }

    let sched = LrSchedule::new(&config, steps_per_epoch, total_steps);
    let absent = AbsentSlots::new(model_config.num_class, &absent_slots, config.absent, device);
    let side = model_config.swin.img_size as i64;
    let nc = model_config.num_class as i64;
    let joint = model_config.joint_dim as i64;
    let mut loader = Loader::start(data.clone(), loader_cfg, start_step, total_steps)?;
    let bar = indicatif::ProgressBar::new(total_steps);
    bar.set_position(start_step);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} train [{bar:30}] {pos}/{len} steps {per_sec} eta {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut history: Vec<Vec<(LossTerm, f64)>> = Vec::new();
    let state_at = |step: u64, weighting: &LossWeighting, wall: f64| CheckpointState {
        schema: STATE_SCHEMA.into(),
        step,
        epoch: step / steps_per_epoch,
        step_in_epoch: step % steps_per_epoch,
        samples_seen: step * config.batch_size as u64,
        seed: config.seed,
        torch_rng: "tch::manual_seed(mix(seed, step, micro)) before every micro-batch".into(),
        records: data.len(),
        data_fingerprint: fingerprint.clone(),
        weighting: weighting.clone(),
        wall_s: wall,
        model: model_config.name.clone(),
    };
    // A non-finite step: save the state before it, stop, and say where that state is.
    let stop_with_checkpoint =
        |opt: &AdamW, step: u64, weighting: &LossWeighting, what: String| -> Error {
            let elapsed = wall_offset + started.elapsed().as_secs_f64();
            let state = state_at(step, weighting, elapsed);
            match save_checkpoint(&run, &vs, opt, &state, config.keep_checkpoints) {
                Ok(ckpt) => {
                    bar.abandon();
                    Error::Stopped {
                        step: step + 1,
                        reason: what,
                        checkpoint: ckpt,
                    }
                }
                Err(e) => e,
            }
        };
    let mut last_saved = None;
    for step in start_step..total_steps {
        let t0 = Instant::now();
        let mut wait = 0.0;
        let mut raw: Vec<(LossTerm, f64)> = Vec::new();
        let mut total = 0.0;
        opt.zero_grad();
        let weights = weighting.weights;
        for m in 0..accumulation {
            let w0 = Instant::now();
            let mb = loader.next_batch().ok_or_else(|| {
                Error::Other(format!("step {}: the data loader stopped early", step + 1))
            })??;
            wait += w0.elapsed().as_secs_f64();
            debug_assert_eq!((mb.step, mb.micro), (step, m));
            let n = mb.len() as i64;
            let images = to_device(&mb.images, &[n, 3, side, side], device);
            let targets = to_device(&mb.targets, &[n, nc], device);
            let clip = mb
                .clip_feature
                .as_ref()
                .map(|c| to_device(c, &[n, joint], device));
            let text = mb
                .text_embed
                .as_ref()
                .map(|c| to_device(c, &[n, joint], device));
            tch::manual_seed(torch_seed(config.seed, step, m));
            let forward = || {
                micro_losses(
                    &model,
                    &MicroInputs {
                        images: &images,
                        targets: &targets,
                        clip_feature: clip.as_ref(),
                        text_embed: text.as_ref(),
                        mean_share: micro as f64 / config.batch_size as f64,
                    },
                    &absent,
                    true,
                )
            };
            // The backward pass runs outside the autocast region, as torch.autocast recommends.
            let losses = match config.precision {
                Precision::F32 => forward(),
                Precision::Bf16 => with_autocast(device, Kind::BFloat16, forward)?,
            };
            for (t, v) in losses.terms() {
                let v = v.double_value(&[]);
                if !v.is_finite() {
                    return Err(stop_with_checkpoint(
                        &opt,
                        step,
                        &weighting,
                        format!(
                            "loss term `{t}` is {v} (micro-batch {m}, records {:?})",
                            &mb.indices[..mb.indices.len().min(8)]
                        ),
                    ));
                }
                match raw.iter_mut().find(|(k, _)| *k == t) {
                    Some(e) => e.1 += v,
                    None => raw.push((t, v)),
                }
            }
            let weighted = losses.weighted_sum(&weights);
            total += weighted.double_value(&[]);
            weighted.backward();
        }
        let grad_norm = opt.grad_norms()?;
        if !grad_norm.total.is_finite() {
            return Err(stop_with_checkpoint(
                &opt,
                step,
                &weighting,
                format!(
                    "the gradient norm is {} although every loss term is finite",
                    grad_norm.total
                ),
            ));
        }
        if let Some(max) = config.grad_clip.filter(|c| *c > 0.0) {
            opt.clip_grad_norm(grad_norm.total, max);
        }
        let lr = sched.lr(step);
        // Update norms cost a parameter copy and a device read: measured on logging steps only.
        let logging_step = config.log_every > 0 && (step + 1) % config.log_every == 0;
        let update_norm = opt.step(lr, logging_step)?;
        let secs = t0.elapsed().as_secs_f64();
        let wall_s = wall_offset + started.elapsed().as_secs_f64();
        let record = StepRecord {
            step: step + 1,
            epoch: step / steps_per_epoch,
            lr,
            loss: step_losses(&raw, &weights),
            total,
            grad_norm,
            update_norm,
            images_per_s: config.batch_size as f64 / secs.max(1e-9),
            data_wait_s: wait,
            wall_s,
        };
        monitor.record(&record)?;
        if let Some(msg) = weighting.observe(step, &raw) {
            tracing::info!("{msg}");
        }
        history.push(raw.clone());
        let done = step + 1;
        if config.log_every > 0 && done % config.log_every == 0 {
            let terms: Vec<String> = raw.iter().map(|(t, v)| format!("{t} {v:.4}")).collect();
            bar.set_message(terms.join(" "));
            tracing::debug!("step {done}: lr {lr:.3e} {}", terms.join(" "));
        }
        bar.set_position(done);
        if (config.val_every > 0 && done % config.val_every == 0) || done == total_steps {
            validate_at(done, Some(&bar))?;
        }
        if config.checkpoint_every.due(done) {
            last_saved = Some(save_checkpoint(
                &run,
                &vs,
                &opt,
                &state_at(done, &weighting, wall_s),
                config.keep_checkpoints,
            )?);
        }
    }
    bar.finish_and_clear();
    drop(loader);
    let health_events = monitor.finish()?;
    if !health_events.is_empty() {
        tracing::warn!("training-health events:\n{}", events_table(&health_events));
    }
    let checkpoint = match last_saved {
        Some(p) if p == checkpoint_dir(&run, total_steps) => p,
        _ => save_checkpoint(
            &run,
            &vs,
            &opt,
            &state_at(
                total_steps,
                &weighting,
                wall_offset + started.elapsed().as_secs_f64(),
            ),
            config.keep_checkpoints,
        )?,
    };
    let window = (history.len() / 4).clamp(1, 20);
    let mean_over = |rows: &[Vec<(LossTerm, f64)>]| {
        let mut acc: BTreeMap<String, f64> = BTreeMap::new();
        for row in rows {
            for (t, v) in row {
                *acc.entry(t.name().to_string()).or_default() += v / rows.len() as f64;
            }
        }
        acc
    };
    let early = mean_over(&history[..window]);
    let late = mean_over(&history[history.len() - window..]);
    let slot_probabilities = slot_probabilities(&model, &data, device, 256)?;
    let summary = RunSummary {
        run_dir: out.to_path_buf(),
        first_step: start_step,
        steps: total_steps,
        early,
        late,
        final_weights: weighting.weights,
        checkpoint,
        slot_probabilities,
        absent_slots,
        health_events,
        validation: validations,
    };
    if let Some(p) = summary.absent_probability() {
        tracing::info!(
            "absent slots ({}): mean predicted probability {p:.4} under --absent {}",
            summary.absent_slots.len(),
            config.absent
        );
    }
    Ok(summary)
}

/// `validation at step S (NAME, N images): mAP … CP … CR … CF1 … OF1 …; absent slots: mAP …`.
pub fn validation_line(rec: &ValidationRecord) -> String {
    let group = |s: &crate::eval::Summary| {
        format!(
            "mAP {:.4} CP {:.4} CR {:.4} CF1 {:.4} OF1 {:.4} ({} tags)",
            s.map, s.cp, s.cr, s.cf1, s.of1, s.classes
        )
    };
    let mut line = format!(
        "validation at step {} ({}, {} images): {}",
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
/// to the model's input without augmentation, in eval mode.
pub fn slot_probabilities(
    model: &RamPlus,
    data: &TrainData,
    device: Device,
    limit: usize,
) -> Result<Vec<f64>> {
    let n = data.len().min(limit);
    let paths: Vec<PathBuf> = data.records.records[..n]
        .iter()
        .map(|r| data.image_path(r))
        .collect();
    let probs = score_images(model, &paths, device, 16, FilterType::CatmullRom)?;
    let nc = model.config.num_class;
    let mut sums = vec![0f64; nc];
    for row in probs.chunks(nc) {
        for (s, p) in sums.iter_mut().zip(row) {
            *s += f64::from(*p);
        }
    }
    Ok(sums.into_iter().map(|s| s / n.max(1) as f64).collect())
}

/// Reads `RUN_DIR/run.json` (the inputs of a run, for `--resume`).
pub fn read_run_inputs(run_dir: &Path) -> Result<TrainInputs> {
    let p = run_dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(&p, format!("not a run description: {e}")))
}
