//! Everything `train` checks and builds before the first step: the model, its label embeddings
//! and their provenance, the data and validation sets, the loader and the threads ([`prepare`]).

use super::Prepared;
use crate::error::Result;
use crate::manifest::SlotManifest;
use crate::share::WorkShare;
use crate::tensors::{EmbeddingFile, Layout, Provenance};
use crate::train::config::{DeviceKind, ImageCheck, TrainConfig};
use crate::train::data::{self, Augment, LoaderConfig, TeacherSource, TrainData};
use crate::train::error::TrainError;
use crate::train::model::{ParamInit, RamPlus, RamPlusConfig};
use crate::train::run_files::TrainInputs;
use crate::train::validate::ValidationSet;
use crate::train::weights::{self, InitFingerprint, LoadOptions};
use crate::vocab::Vocabulary;
use std::path::Path;
use std::sync::Arc;
use tch::nn::VarStore;
use tch::Device;

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
    apply_torch_threads(crate::train::config::torch_threads_for(requested))
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
    let mut notes = vec![crate::train::autocast::set_tf32(
        config.tf32,
        device,
        config.precision,
    )?];
    let sharing = crate::train::config::ranks_sharing_cores();
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

/// The first 12 hex digits of a sha256, as error messages show them (a label embedding file's
/// provenance may hold any text there).
fn short_sha(sha: &str) -> String {
    crate::report::short_hash(sha).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
