//! [`TrainError`]: what can go wrong in a training run, by kind. Folded into [`crate::Error`]; the
//! CLI gives [`TrainError::Stopped`] its own exit status (3) because the run's inputs were fine.

use std::path::PathBuf;

/// A libtorch (or other foreign) error kept as the source of a variant; `Box` keeps this module
/// free of the `train` feature's types.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of `tagfix train` (checks before the first step, the run, its checkpoints).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The run was healthy to start but a step went non-finite (a loss term or the gradient norm);
    /// the state before that step is saved in `checkpoint`.
    #[error("step {step}: {reason}; training stopped. The state before this step is saved in {}", .checkpoint.display())]
    Stopped {
        /// The 1-based step that failed.
        step: u64,
        reason: String,
        checkpoint: PathBuf,
    },

    /// A stop signal arrived (on this rank, or on another: `from_other_rank`); the state after
    /// `step` steps is saved in `checkpoint`, from which `--resume` goes on exactly.
    #[error("{}{} after step {step}: training stopped. The state is saved in {}; continue with `tagfix train --resume {}`",
            crate::train::interrupt::signal_name(*.signal),
            if *.from_other_rank { " to another rank" } else { "" },
            .checkpoint.display(), .run_dir.display())]
    Interrupted {
        /// Optimizer steps completed (and saved).
        step: u64,
        /// The signal the ranks stopped for: this rank's, or the one the others voted (SIGTERM when
        /// they received different ones).
        signal: i32,
        from_other_rank: bool,
        checkpoint: PathBuf,
        run_dir: PathBuf,
    },

    #[error("--device cuda: libtorch sees no CUDA device (no GPU, no driver, or a binary linked without \
             libtorch_cuda: build it with scripts/setup-gpu.sh, docs/guide.md step 5)")]
    NoCuda,

    /// The label embeddings' width does not fit the model (which is not `tiny`).
    #[error("{}: rows have {width} values, but model `{model}` takes {expected}-d label embeddings (CLIP space, \
             as the official checkpoints); embed the tags with a CLIP text tower (`tagfix embed --model clip`), or \
             train the small `model = \"tiny\"`, which follows the embeddings' width", .path.display())]
    EmbeddingWidth {
        path: PathBuf,
        width: usize,
        model: String,
        expected: usize,
    },

    #[error("{}: has {slots} slots but the config says class_num = {class_num}", .manifest.display())]
    ClassCount {
        manifest: PathBuf,
        slots: usize,
        class_num: usize,
    },

    /// The label embeddings' provenance names another vocabulary than the manifest's.
    #[error("{}: was made for another vocabulary (sha256 {embed_sha}…, {embed_tags} tags) than the slot manifest {} \
             (sha256 {manifest_sha}…, {manifest_tags} tags)", .label_embed.display(), .manifest.display())]
    VocabularyMismatch {
        label_embed: PathBuf,
        embed_sha: String,
        embed_tags: usize,
        manifest: PathBuf,
        manifest_sha: String,
        manifest_tags: usize,
    },

    #[error("{}: holds {teacher_dim}-d CLIP teacher features, but the label embeddings {} are {embed_dim}-d: leave \
             out --teacher (the tag loss trains alone) or embed the tags with a CLIP text tower",
            .teacher.display(), .label_embed.display())]
    TeacherWidth {
        teacher: PathBuf,
        teacher_dim: usize,
        label_embed: PathBuf,
        embed_dim: usize,
    },

    #[error("both a teacher file (--teacher FILE) and the online teacher ([online_teacher] / --teacher online) \
             are configured: choose one")]
    TwoTeachers,

    #[error("val_every = {0} but the run has no validation data: give --val-data (a benchmark folder or a \
             RAM-format annotation file)")]
    NoValidationData(u64),

    /// Distributed: the global batch's micro-batches do not divide evenly among the ranks.
    #[error("--batch-size {batch} makes {} micro-batches of {micro}, which {world} ranks cannot share evenly: \
             choose a --micro-batch-size that divides --batch-size / {world}", batch / micro)]
    UnevenShares {
        batch: usize,
        micro: usize,
        world: usize,
    },

    #[error("{records} records are fewer than one batch of {batch}")]
    TooFewRecords { records: usize, batch: usize },

    #[error("{}: --resume: the run has no checkpoint to resume from", .0.display())]
    NothingToResume(PathBuf),

    /// A distributed resume: rank 0 chooses the checkpoint, and it found none it could resume from.
    #[error("{}: --resume: rank 0 found no checkpoint to resume from (its error says why)", .0.display())]
    NoResumeOnRank0(PathBuf),

    #[error("{}: already holds a training run: pass --resume to continue it, or choose another --out", .0.display())]
    RunExists(PathBuf),

    #[error("{}: --resume: the training records differ from the checkpoint's ({then} records then, {now} now): the \
             data position would be meaningless", .checkpoint.display())]
    DataChanged {
        checkpoint: PathBuf,
        then: usize,
        now: usize,
    },

    #[error("{}: --resume: the checkpoint's steps are batches of {then} images, this configuration's batch is \
             {now}: each step would stand for another epoch, data position and learning rate. Resume with \
             --batch-size {then}; on a card with less memory keep it and split it with --micro-batch-size \
             (a divisor of {then} per rank) or --micro-batch-size auto", .checkpoint.display())]
    BatchChanged {
        checkpoint: PathBuf,
        then: u64,
        now: usize,
    },

    #[error("{}: --resume: the checkpoint's run draws its data order and augmentation from seed {then}, this \
             configuration's seed is {now}: the rest of the epoch in progress would repeat some records and \
             skip others. Resume with --seed {then}", .checkpoint.display())]
    SeedChanged {
        checkpoint: PathBuf,
        then: u64,
        now: u64,
    },

    #[error("nothing to do: the run is at step {step} of {total} (raise max_steps to continue)")]
    NothingToDo { step: u64, total: u64 },

    /// Values of the training step could not be copied from the device.
    #[error("cannot read {what} from the device")]
    HostRead {
        what: &'static str,
        #[source]
        source: Source,
    },

    #[error("step {0}: the data loader stopped early")]
    LoaderStopped(u64),

    /// `--unreadable-images skip` and no image of a micro-batch can be read: nothing could take
    /// their places (a wrong image root, a lost disk).
    #[error("step {step}: none of the {images} images of micro-batch {micro} can be read, so none can stand in for the others (the first: {first})")]
    NoReadableImage {
        step: u64,
        micro: usize,
        images: usize,
        first: String,
    },

    /// Decoding a micro-batch panicked (a bug); the message is the panic's.
    #[error("step {step}: loading micro-batch {micro} failed unexpectedly: {reason}")]
    LoaderPanicked {
        step: u64,
        micro: usize,
        reason: String,
    },

    /// A checkpoint file (`model.safetensors`, `optimizer.safetensors`) could not be written or read.
    #[error("{}: cannot {action} its tensors", .path.display())]
    Tensors {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Source,
    },

    /// A checkpoint could not be written (its partial files were removed); `newest` is the newest
    /// checkpoint on the disk, which a resume continues from.
    #[error(
        "{}: checkpoint not written (its partial files removed); {}",
        .dir.display(),
        match .newest {
            Some(p) => format!("the newest written is {}, which --resume continues from", p.display()),
            None => "no checkpoint of this run is written yet".to_string(),
        }
    )]
    CheckpointNotWritten {
        dir: PathBuf,
        newest: Option<PathBuf>,
        #[source]
        source: Box<crate::error::Error>,
    },

    /// The file system of a run's checkpoints has less space than the next checkpoint needs.
    #[error(
        "{} needs {} for the checkpoint and {} is free on its file system: free space (or lower \
         keep_checkpoints: each is written before the oldest kept one is removed)",
        .dir.display(),
        indicatif::HumanBytes(*.needed),
        indicatif::HumanBytes(*.available)
    )]
    NoSpaceForCheckpoint {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },

    /// libtorch failed in the middle of the run (out of memory, most often): where, what it said,
    /// and what was saved (`then`, which also says what to change).
    #[error("{during}: libtorch failed: {failure}. {then}")]
    LibtorchFailed {
        during: String,
        failure: crate::train::failure::LibtorchFailure,
        then: String,
    },

    /// The background thread writing a checkpoint ended without a result (it panicked).
    #[error("{}: the thread writing this checkpoint failed: {reason}", .dir.display())]
    CheckpointWriter { dir: PathBuf, reason: String },

    /// A JSON file of the run (`state.json`, `run.json`) is not what it should be.
    #[error("{}: not a {what}", .path.display())]
    RunFile {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// A `state.json` or `run.json` that parses but whose values cannot be continued from.
    #[error("{}: {problem}; the file is damaged or was not written by tagfix", .path.display())]
    RunFileValue { path: PathBuf, problem: String },

    /// Every checkpoint of a run is damaged (`problems`: each one's, newest first), for a resume or
    /// for inference from the run's folder.
    #[error(
        "{}: no checkpoint is whole (restore one from a copy): {problems}",
        .dir.display()
    )]
    NoWholeCheckpoint { dir: PathBuf, problems: String },

    /// A checkpoint folder whose `state.json` is another step's (copied or renamed by hand).
    #[error("{}: its state.json is step {state_step}'s, not the folder's step {folder_step}", .dir.display())]
    CheckpointFolder {
        dir: PathBuf,
        folder_step: u64,
        state_step: u64,
    },

    #[error("{}: checkpoint schema {found} is not {expected}", .path.display())]
    Schema {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },

    /// `what` is "image root" or "validation image root".
    #[error("{}: {what} is not a folder", .path.display())]
    NotAFolder { path: PathBuf, what: &'static str },

    #[error("{}: has no features for {missing} of {records} records, e.g. `{image}` ({origin})", .teacher.display())]
    TeacherRowsMissing {
        teacher: PathBuf,
        missing: usize,
        records: usize,
        /// The first record without a row: its image path and where it is (`file:line:column, record N`).
        image: String,
        origin: String,
    },

    /// A record whose teacher row is a flagged row of zeros: `tagfix teacher --unreadable-images skip`
    /// could not read its image, so training counts the image as unreadable too.
    #[error("{image}: the teacher file {} has no image features for it (its image could not be read when `tagfix teacher --unreadable-images skip` made the file)", .teacher.display())]
    TeacherImageUnreadable { teacher: PathBuf, image: String },

    /// Images found unreadable before the first step; `examples` are the first few, each
    /// `error (where the record is)`.
    #[error("{failed} of {total} training images{} cannot be read (image root {}):{}",
            .part.as_ref().map(|p| format!(" ({p} of the set, this rank's share of the check)")).unwrap_or_default(),
            .image_root.display(), listed(.examples, .failed))]
    UnreadableImages {
        failed: usize,
        total: usize,
        /// Which part of the set this process checked, when the ranks split the check.
        part: Option<String>,
        image_root: PathBuf,
        examples: Vec<String>,
    },

    /// A validation under `unreadable_images = "skip"` that could read none of its images.
    #[error("{}: none of the {images} validation images could be read", .benchmark.display())]
    NoReadableValidationImage { images: usize, benchmark: PathBuf },

    /// Validation images found unreadable before the first step; `first` is the first failure.
    #[error("{failed} of {total} validation images{} cannot be read (image root {})",
            .part.as_ref().map(|p| format!(" ({p} of the set, this rank's share of the check)")).unwrap_or_default(),
            .image_root.display())]
    UnreadableValidationImages {
        failed: usize,
        total: usize,
        /// Which part of the set this process checked, when the ranks split the check.
        part: Option<String>,
        image_root: PathBuf,
        #[source]
        first: Box<crate::Error>,
    },

    #[error("{}: marks slot {slot} absent, but {origin} carries it: the manifest does not describe this training data \
             (rerun `tagfix diff` on it)", .manifest.display())]
    AbsentSlotCarried {
        manifest: PathBuf,
        slot: u32,
        origin: String,
    },

    /// The online teacher failed on a micro-batch (`records`: its first few record indices).
    #[error("online teacher, step {step} micro-batch {micro} (records {records:?}…)")]
    OnlineTeacher {
        /// 1-based.
        step: u64,
        micro: usize,
        records: Vec<usize>,
        #[source]
        source: Box<crate::Error>,
    },

    /// `what`: "data threads", "the loader thread".
    #[error("cannot start {what}")]
    Threads {
        what: &'static str,
        #[source]
        source: Source,
    },

    /// A `synth-images` setting out of its range (the set is built in memory, so sizes are bounded).
    #[error("synth-images: {setting} must be {rule}, got {value}")]
    SynthOptions {
        setting: &'static str,
        rule: String,
        value: String,
    },

    #[error("{}: has no tag `{tag}`: the synthetic images are tagged with {} (a vocabulary without them cannot \
             label them)", .path.display(), .needed.join(", "))]
    SynthVocabulary {
        path: PathBuf,
        tag: String,
        needed: Vec<String>,
    },

    #[error("{}: cannot write image", .path.display())]
    WriteImage {
        path: PathBuf,
        #[source]
        source: Source,
    },

    /// A libtorch tensor could not be made from (or copied into) tagfix's bytes.
    #[error("tensor conversion")]
    TensorConversion(#[source] Source),

    #[error("cannot store tensors of kind {0}")]
    UnsupportedKind(String),

    /// Reading a tensor's values back to the host failed (`what`: "optimizer norms", ...).
    #[error("reading {what}")]
    ReadBack {
        what: &'static str,
        #[source]
        source: Source,
    },

    /// `checkpoint` is the path (or name) of the tensors being loaded; `report` the load report.
    #[error("{checkpoint}: strict load failed:\n{report}")]
    StrictLoad { checkpoint: String, report: String },

    #[error("{checkpoint}: copying `{from}` into `{into}`")]
    CopyTensor {
        checkpoint: String,
        from: String,
        into: String,
        #[source]
        source: Source,
    },

    /// Training would start with an image encoder that no pretrained checkpoint initialised.
    #[error("image encoder not initialised from a pretrained checkpoint: {}. Pass a pretrained Swin or RAM++ \
             checkpoint with --init (see the load report above), or --allow-random-encoder to train from scratch \
             anyway", .problems.join("; "))]
    EncoderNotInitialised { problems: Vec<String> },

    #[error("{}: validation set has no images", .0.display())]
    NoValidationImages(PathBuf),

    /// More records than the loader numbers (32-bit record numbers keep its per-epoch order and the
    /// teacher rows at 4 bytes a record in every rank).
    #[error("{records} training records: at most {} are supported", u32::MAX)]
    TooManyRecords { records: usize },

    #[error("{}: none of its {tags} tags matches a slot of the vocabulary", .path.display())]
    NoValidationTags { path: PathBuf, tags: usize },

    #[error("freeze: no parameter name starts with `{0}`")]
    FreezeMatchesNothing(String),

    #[error("every parameter is frozen: nothing to train")]
    AllFrozen,

    #[error("{checkpoint}: optimizer state has no `{key}` (was the checkpoint written with another model or frozen \
             set?)")]
    OptimizerStateMissing { checkpoint: String, key: String },

    #[error("{checkpoint}: optimizer state `{key}` has shape {state:?}, the parameter {param:?}")]
    OptimizerStateShape {
        checkpoint: String,
        key: String,
        state: Vec<i64>,
        param: Vec<i64>,
    },

    /// A C++ shim (fused AdamW, foreach norm, autocast) reported a libtorch error.
    #[error("libtorch {op}: {message}")]
    Libtorch { op: &'static str, message: String },

    #[error("fused AdamW: parameter, gradient and state lists differ in length")]
    FusedLengths,

    #[error(
        "fused AdamW: tensor {tensor} of shape {shape:?} has a gradient or state of another shape"
    )]
    FusedShape { tensor: usize, shape: Vec<i64> },

    #[error("fused AdamW: grad_scale and found_inf must be one f32 value, not {kind} {shape:?}")]
    FusedGuard { kind: String, shape: Vec<i64> },

    #[error("the per-parameter loop optimizer reads its norms on the host: it has no device-side update")]
    NoDeviceUpdate,

    #[error("the per-parameter loop optimizer cannot run sharded (the fused one can)")]
    ShardedLoop,

    #[error("cannot shard the optimizer state: parameter `{0}` is not contiguous in memory")]
    ShardNonContiguous(String),

    #[error("optimizer: {read} values read back for an update that left {expected}")]
    UpdateReadBack { read: usize, expected: usize },

    #[error(
        "--micro-batch-size auto: even one image per forward and backward pass needs about {need_gib:.2} GiB \
         on the device, more than the {budget_gib:.2} GiB available"
    )]
    MicroBatchTooLarge { need_gib: f64, budget_gib: f64 },

    #[error(
        "--micro-batch-size auto: a forward and backward pass failed at every size from {largest} down to 1 \
         (at {largest}: {first}; at 1: {last})"
    )]
    NoMicroBatchFits {
        largest: usize,
        first: String,
        last: String,
    },

    #[error("upload to {device}")]
    Upload {
        device: String,
        #[source]
        source: Source,
    },

    #[error("autocast dtype must be bf16 or f16, not {0}")]
    AutocastDtype(String),

    /// The model configuration cannot be built (`problem` says which dimension does not fit).
    #[error("model config `{name}`: {problem}")]
    ModelConfig { name: String, problem: String },

    #[error("model `{model}` takes images [B, {}, {}, {}], got {got:?}", .expected[0], .expected[1], .expected[2])]
    ImageShape {
        model: String,
        expected: [i64; 3],
        got: Vec<i64>,
    },

    /// A model input other than the image has the wrong shape (`expected`: e.g. `[4, 512]`, `[B_t, 512]`).
    #[error("{tensor}: expected shape {expected}, got shape {got:?}")]
    InputShape {
        tensor: &'static str,
        expected: String,
        got: Vec<i64>,
    },
}

/// The examples on lines of their own, indented, and `…` when there are more than shown.
fn listed(examples: &[String], total: &usize) -> String {
    let mut out: String = examples.iter().map(|e| format!("\n  {e}")).collect();
    if *total > examples.len() {
        out.push_str("\n  …");
    }
    out
}

impl TrainError {
    /// Whether the run stopped on its own (exit status 3) rather than on bad input or a fault.
    pub fn is_stopped_run(&self) -> bool {
        matches!(self, TrainError::Stopped { .. })
    }

    /// What kind of failure this is (the CLI's exit status follows from it).
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            TrainError::Stopped { .. } => ErrorKind::Stopped,
            TrainError::Interrupted { signal, .. } => ErrorKind::Interrupted { signal: *signal },
            TrainError::NoCuda => ErrorKind::Environment,
            TrainError::TwoTeachers
            | TrainError::NoValidationData(_)
            | TrainError::UnevenShares { .. }
            | TrainError::NothingToResume(_)
            | TrainError::NoResumeOnRank0(_)
            | TrainError::RunExists(_)
            | TrainError::NothingToDo { .. }
            | TrainError::SynthOptions { .. }
            | TrainError::FreezeMatchesNothing(_)
            | TrainError::AllFrozen
            | TrainError::AutocastDtype(_)
            | TrainError::ModelConfig { .. }
            | TrainError::ImageShape { .. }
            | TrainError::InputShape { .. } => ErrorKind::Usage,
            TrainError::EmbeddingWidth { .. }
            | TrainError::ClassCount { .. }
            | TrainError::VocabularyMismatch { .. }
            | TrainError::TeacherWidth { .. }
            | TrainError::TooFewRecords { .. }
            | TrainError::DataChanged { .. }
            | TrainError::BatchChanged { .. }
            | TrainError::SeedChanged { .. }
            | TrainError::RunFile { .. }
            | TrainError::RunFileValue { .. }
            | TrainError::CheckpointFolder { .. }
            | TrainError::NoWholeCheckpoint { .. }
            | TrainError::Schema { .. }
            | TrainError::NotAFolder { .. }
            | TrainError::TeacherRowsMissing { .. }
            | TrainError::TeacherImageUnreadable { .. }
            | TrainError::UnreadableImages { .. }
            | TrainError::NoReadableImage { .. }
            | TrainError::UnreadableValidationImages { .. }
            | TrainError::NoReadableValidationImage { .. }
            | TrainError::AbsentSlotCarried { .. }
            | TrainError::SynthVocabulary { .. }
            | TrainError::StrictLoad { .. }
            | TrainError::CopyTensor { .. }
            | TrainError::EncoderNotInitialised { .. }
            | TrainError::NoValidationImages(_)
            | TrainError::TooManyRecords { .. }
            | TrainError::NoValidationTags { .. }
            | TrainError::OptimizerStateMissing { .. }
            | TrainError::OptimizerStateShape { .. } => ErrorKind::Input,
            TrainError::Tensors { .. } | TrainError::WriteImage { .. } => ErrorKind::Io,
            TrainError::Threads { .. } => ErrorKind::Environment,
            // The teacher's own failure says what kind it is (a missing model, a failing runtime).
            TrainError::OnlineTeacher { source, .. } => source.kind(),
            TrainError::LoaderStopped(_)
            | TrainError::LoaderPanicked { .. }
            | TrainError::TensorConversion(_)
            | TrainError::UnsupportedKind(_)
            | TrainError::ReadBack { .. }
            | TrainError::HostRead { .. }
            | TrainError::Libtorch { .. }
            | TrainError::FusedLengths
            | TrainError::FusedShape { .. }
            | TrainError::FusedGuard { .. }
            | TrainError::NoDeviceUpdate
            | TrainError::ShardedLoop
            | TrainError::ShardNonContiguous(_)
            | TrainError::UpdateReadBack { .. }
            | TrainError::Upload { .. }
            | TrainError::CheckpointWriter { .. } => ErrorKind::Internal,
            TrainError::CheckpointNotWritten { source, .. } => source.kind(),
            TrainError::NoSpaceForCheckpoint { .. } => ErrorKind::Io,
            TrainError::MicroBatchTooLarge { .. } | TrainError::NoMicroBatchFits { .. } => {
                ErrorKind::Environment
            }
            TrainError::LibtorchFailed { failure, .. } if failure.out_of_memory => {
                ErrorKind::Environment
            }
            TrainError::LibtorchFailed { .. } => ErrorKind::Internal,
        }
    }
}

/// What a caught panic said (its `&str` or `String` payload).
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "it panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn unreadable_images_list_the_first_few_and_mark_the_rest() {
        let e = |failed| TrainError::UnreadableImages {
            failed,
            total: 9,
            part: None,
            image_root: "img".into(),
            examples: vec!["a.png: missing (x)".into(), "b.png: empty (y)".into()],
        };
        assert_eq!(
            e(2).to_string(),
            "2 of 9 training images cannot be read (image root img):\n  a.png: missing (x)\n  b.png: empty (y)"
        );
        assert!(e(7).to_string().ends_with("(y)\n  …"));
    }

    #[test]
    fn a_failing_online_teacher_keeps_its_cause_and_kind() {
        let cause: crate::Error = crate::embed::EmbedError::NoSelection.into();
        let cause_text = cause.to_string();
        let e = TrainError::OnlineTeacher {
            step: 3,
            micro: 1,
            records: vec![4, 5],
            source: Box::new(cause),
        };
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert_eq!(
            crate::error::report(&e),
            format!("online teacher, step 3 micro-batch 1 (records [4, 5]…): {cause_text}")
        );
    }
}
