//! `tagfix repair`: the whole repair in one command — diff → embed → check → a short train — on the
//! user's data or on the embedded default (the `ram` vocabulary and a synthesized training set), ending
//! with a report of what was found, repaired, checked and trained and where every output is.
//!
//! The short train needs images whose content determines their tags. The synthesized annotation
//! records have none, so the embedded default adds a small synthetic image set (coloured shapes tagged
//! with the vocabulary's colour and shape slots) to the audited data and trains the small `tiny`
//! RAM++ on it, with the repaired label embeddings and the slot manifest.
//!
//! Each step calls its subcommand's own entry point with typed arguments (the struct clap fills
//! from a command line), so `repair` and a user running the step by hand take one path; the
//! report prints those arguments back as shell-quoted command lines ([`super::argv`]), so its
//! "run it yourself" lines are exact.

use super::args::{
    defaults, CheckArgs, CheckModeArg, DiffArgs, EmbedArgs, GlobalArgs, OrtArgs, OutputFormat,
    RepairArgs, SynthArgs, SynthImagesArgs, TrainArgs,
};
use super::argv::{unset, ToArgv};
use super::ExitStatus;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tagfix::consistency::hnsw::HnswParams;
use tagfix::consistency::report::CheckReport;
use tagfix::consistency::SearchChoice;
use tagfix::manifest::SlotManifest;
use tagfix::monitor::RunSummary;
use tagfix::report::check::{num, op_symbol, CheckFormat};
use tagfix::tensors::{EmbeddingFile, Provenance};
use tagfix::train::config::{AbsentPolicy, DeviceKind, TrainConfig};

/// Why `repair` stopped (a step that ran and found problems is no error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("creating {}", path.display())]
    CreateOut {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no --base given and no default base found: pass the label-embedding file to patch with --base FILE")]
    NoBase,
    #[error("building the `{step}` step")]
    Build {
        step: &'static str,
        #[source]
        source: clap::Error,
    },
    #[error("step `{step}` failed")]
    Step {
        step: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("reading the output of step `{step}`")]
    Output {
        step: &'static str,
        #[source]
        source: tagfix::Error,
    },
    #[error("{}: embed wrote no provenance metadata", path.display())]
    NoProvenance { path: PathBuf },
    #[error("clearing the previous run {}", path.display())]
    ClearRun {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading what the short training run produced")]
    TrainOutcome(#[source] anyhow::Error),
    #[error("writing the report")]
    Report(#[source] tagfix::Error),
}

/// One step: its command line, how it ended and how long it took.
struct Step {
    name: &'static str,
    line: String,
    status: ExitStatus,
    seconds: f64,
}

/// How a step's outcome maps to the exit status its subcommand would have.
trait Outcome {
    fn status(&self) -> ExitStatus;
}

impl Outcome for ExitStatus {
    fn status(&self) -> ExitStatus {
        *self
    }
}

impl Outcome for CheckReport {
    fn status(&self) -> ExitStatus {
        super::check::status(self)
    }
}

/// The steps run so far.
#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    /// Runs `step` on `args` (a subcommand's entry point) and records its command line and status.
    fn run<A: ToArgv, T: Outcome>(
        &mut self,
        name: &'static str,
        args: A,
        step: impl FnOnce(A) -> anyhow::Result<T>,
    ) -> Result<T, RepairError> {
        let line = args.command_line();
        eprintln!("\n==> {name}: {line}");
        let started = std::time::Instant::now();
        let outcome = step(args).map_err(|source| RepairError::Step { step: name, source })?;
        self.0.push(Step {
            name,
            line,
            status: outcome.status(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(outcome)
    }

    fn any_failed(&self) -> bool {
        self.0.iter().any(|s| s.status != ExitStatus::Success)
    }
}

/// Where `repair` writes each output under `--out`.
struct Layout {
    out: PathBuf,
}

impl Layout {
    fn synthesized(&self) -> PathBuf {
        self.out.join("train.json")
    }
    fn image_set(&self) -> PathBuf {
        self.out.join("image-set")
    }
    fn image_annotations(&self) -> PathBuf {
        self.image_set().join("train.json")
    }
    fn manifest(&self) -> PathBuf {
        self.out.join("manifest.json")
    }
    fn diff_report(&self) -> PathBuf {
        self.out.join("diff.md")
    }
    fn embeddings(&self) -> PathBuf {
        self.out.join("embeddings.safetensors")
    }
    fn check_report(&self) -> PathBuf {
        self.out.join("check.md")
    }
    fn check_json(&self) -> PathBuf {
        self.out.join("check.json")
    }
    fn check_plots(&self) -> PathBuf {
        self.out.join("plots")
    }
    fn run_dir(&self) -> PathBuf {
        self.out.join("train")
    }
}

/// `tagfix synth`: the embedded default's RAM-format set with absent slots.
fn synth_args(args: &RepairArgs, at: &Layout) -> SynthArgs {
    SynthArgs {
        vocab: args.vocab.clone(),
        records: args.records,
        absent: args.absent,
        absent_slots: None,
        seed: args.seed,
        out: at.synthesized(),
        jsonl: false,
        gzip: false,
        zipf: defaults::ZIPF,
        json: false,
    }
}

/// `tagfix synth-images`: the images the short train learns from.
fn synth_images_args(args: &RepairArgs, at: &Layout) -> SynthImagesArgs {
    SynthImagesArgs {
        out: at.image_set(),
        count: usize::try_from(args.train_images).unwrap_or(usize::MAX),
        size: defaults::SYNTH_IMAGE_SIZE,
        seed: args.seed,
        descriptions: 1,
        vocab: Some(args.vocab.clone()),
    }
}

/// `tagfix diff`: the slot manifest and a Markdown report.
fn diff_args(args: &RepairArgs, at: &Layout, data: Vec<PathBuf>) -> DiffArgs {
    DiffArgs {
        vocab: args.vocab.clone(),
        data,
        tags: None,
        sidecars: Vec::new(),
        no_preset_sidecars: false,
        format: OutputFormat::Markdown,
        out: Some(at.manifest()),
        report: Some(at.diff_report()),
        fail_on: Vec::new(),
        keep_going: args.keep_going,
        rarest: defaults::RAREST,
        max_problems: defaults::MAX_PROBLEMS,
    }
}

/// `tagfix embed`: the absent slots regenerated into `base`'s layout, with control rows.
fn embed_args(args: &RepairArgs, at: &Layout, base: &Path) -> EmbedArgs {
    EmbedArgs {
        vocab: args.vocab.clone(),
        model: args.model.clone(),
        manifest: Some(at.manifest()),
        absent: true,
        slots: None,
        all: false,
        recipe: "single".into(),
        descriptions: None,
        base: Some(base.to_path_buf()),
        tensor: None,
        out: at.embeddings(),
        ort: OrtArgs {
            device: args.embed_device,
            batch_size: defaults::ORT_BATCH,
            threads: None,
            ort_lib: None,
        },
        control: Some(args.control),
        seed: args.seed,
    }
}

/// `tagfix check`: do the regenerated rows sit in the base file's semantic space (calibrated by the
/// control rows), and are all other rows untouched?
fn check_args(args: &RepairArgs, at: &Layout, base: &Path) -> CheckArgs {
    let hnsw = HnswParams::default();
    CheckArgs {
        baseline: base.to_path_buf(),
        candidate: at.embeddings(),
        mode: CheckModeArg::Auto,
        vocab: Some(args.vocab.clone()),
        slots: None,
        policy: None,
        thresholds: Default::default(),
        search: SearchChoice::Auto,
        hnsw_ef: hnsw.ef_search,
        hnsw_m: hnsw.max_connections as u16,
        hnsw_ef_construction: hnsw.ef_construction,
        recall_sample: defaults::RECALL_SAMPLE,
        tensor: None,
        format: CheckFormat::Markdown,
        out: Some(at.check_report()),
        json: Some(at.check_json()),
        junit: None,
        summary: None,
        plot: Some(at.check_plots()),
    }
}

/// `KEY=VALUE` for `tagfix train --set`; KEY must be a [`TrainConfig`] setting of the value's type,
/// or this fails to compile.
macro_rules! config_override {
    ($field:ident = $value:expr) => {{
        let _ = |c: &mut TrainConfig| c.$field = $value;
        format!("{}={}", stringify!($field), $value)
    }};
}

/// `tagfix train`: the small `tiny` RAM++ on the synthetic images with the repaired embeddings.
fn train_args(args: &RepairArgs, at: &Layout) -> Result<TrainArgs, RepairError> {
    let mut t: TrainArgs = unset("train").map_err(|source| RepairError::Build {
        step: "train",
        source,
    })?;
    t.settings.model = Some("tiny".into());
    t.vocab = Some(args.vocab.clone());
    t.data = vec![at.image_annotations()];
    t.images = Some(at.image_set().join("images"));
    t.manifest = Some(at.manifest());
    t.label_embed = Some(at.embeddings());
    t.allow_random_encoder = true;
    t.settings.absent = Some(ABSENT_POLICY);
    t.settings.batch_size = Some(8);
    t.settings.max_steps = Some(args.train_steps);
    t.settings.init_lr = Some(2e-3);
    t.set = vec![
        config_override!(warmup_steps = 5),
        config_override!(warmup_lr = 1e-4),
    ];
    // One libtorch thread: OpenMP workers spin-wait when the cores are busy (measured 8 s/step
    // with 2 threads on a loaded 2-core machine, 2 s/step with 1).
    t.settings.threads = Some(1);
    t.settings.workers = Some(1);
    t.settings.seed = Some(args.seed);
    t.settings.device = Some(args.train_device);
    // The training curves, into RUN_DIR/plots.
    t.plot = true;
    t.out = Some(at.run_dir());
    Ok(t)
}

pub fn run(args: RepairArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    Ok(repair(&args, global)?)
}

fn repair(args: &RepairArgs, global: &GlobalArgs) -> Result<ExitStatus, RepairError> {
    let at = Layout {
        out: args.out.clone(),
    };
    std::fs::create_dir_all(&at.out).map_err(|source| RepairError::CreateOut {
        path: at.out.clone(),
        source,
    })?;
    let mut steps = Steps::default();

    // 1. The data: the user's files, or a synthesized RAM-format set with absent slots.
    let mut data: Vec<PathBuf> = if args.data.is_empty() {
        steps.run("synth", synth_args(args, &at), |a| {
            super::synth::run(a, global)
        })?;
        vec![at.synthesized()]
    } else {
        args.data.clone()
    };
    let train_plan = plan_training(args);
    if train_plan.is_ok() {
        steps.run("synth-images", synth_images_args(args, &at), |a| {
            super::synth_images::run(a)
        })?;
        data.push(at.image_annotations());
    }

    // 2. diff → slot manifest.
    steps.run("diff", diff_args(args, &at, data), |a| {
        super::diff::run(a, global)
    })?;
    let manifest = SlotManifest::read(&at.manifest()).map_err(|source| RepairError::Output {
        step: "diff",
        source,
    })?;

    // 3. embed → patched embedding file in the base file's slot layout.
    let base = match &args.base {
        Some(b) => b.clone(),
        None => default_base().ok_or(RepairError::NoBase)?,
    };
    steps.run("embed", embed_args(args, &at, &base), |a| {
        super::embed::run(a, global)
    })?;
    let provenance = read_provenance(&at.embeddings())?;

    // 4. check.
    let check = steps.run("check", check_args(args, &at, &base), |a| {
        super::check::check(&a)
    })?;

    // 5. A short train of the small RAM++ with the repaired label embeddings.
    let trained = match &train_plan {
        Ok(()) => {
            let run_dir = at.run_dir();
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir).map_err(|source| RepairError::ClearRun {
                    path: run_dir.clone(),
                    source,
                })?;
            }
            steps.run("train", train_args(args, &at)?, super::train::run)?;
            Ok(TrainOutcome::read(&run_dir, &at.image_annotations())
                .map_err(RepairError::TrainOutcome)?)
        }
        Err(why) => Err(why.clone()),
    };

    let report = render(
        args,
        &RepairOutcome {
            steps: &steps.0,
            manifest,
            provenance,
            embeddings: at.embeddings(),
            base,
            check,
            trained,
        },
    );
    let report_path = at.out.join("REPORT.md");
    tagfix::fsutil::write_bytes_atomic(&report_path, report.as_bytes())
        .map_err(RepairError::Report)?;
    println!("{report}");
    eprintln!("report: {}", report_path.display());
    Ok(if steps.any_failed() {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

/// The provenance `embed` wrote into the patched file.
fn read_provenance(embeddings: &Path) -> Result<Provenance, RepairError> {
    let output = |source| RepairError::Output {
        step: "embed",
        source,
    };
    let patched = EmbeddingFile::read(
        embeddings,
        Some(tagfix::tensors::provenance::EMBEDDINGS_TENSOR),
    )
    .map_err(output)?;
    Provenance::from_metadata(&patched.metadata, embeddings)
        .map_err(output)?
        .ok_or_else(|| RepairError::NoProvenance {
            path: embeddings.to_path_buf(),
        })
}

/// Absent-slot policy of the short train.
const ABSENT_POLICY: AbsentPolicy = AbsentPolicy::Smooth(0.05);

/// Whether the short train can run, or why not (stated in the report).
fn plan_training(args: &RepairArgs) -> Result<(), String> {
    if args.train_steps == 0 {
        return Err("skipped (`--train-steps 0`).".into());
    }
    if !cfg!(feature = "train") {
        return Err("not run: this tagfix was built without the `train` feature (libtorch). Build it with \
             `cargo build --release --all-features` (scripts/setup.sh installs libtorch) and rerun."
            .into());
    }
    if !args.data.is_empty() {
        return Err("not run on your data from here: `repair` trains only on the embedded default's synthetic \
             images. Train RAM++ on your images with the commands under \"On real data and a GPU\" below."
            .into());
    }
    Ok(())
}

/// What the short train produced, from its run directory (`summary.json` written by `tagfix train`).
struct TrainOutcome {
    run_dir: PathBuf,
    summary: RunSummary,
    /// Slots the training images carry.
    drawn_slots: Vec<usize>,
    images: usize,
}

impl TrainOutcome {
    fn read(run_dir: &Path, annotations: &Path) -> anyhow::Result<Self> {
        let summary = RunSummary::read(run_dir)?;
        let (mut drawn_slots, mut images) = (Vec::new(), 0);
        let spec = tagfix::annotations::RecordSpec::labels(u32::MAX as usize);
        for record in tagfix::annotations::Records::open(annotations, spec)? {
            drawn_slots.extend(record?.union_label_id.into_iter().map(|s| s as usize));
            images += 1;
        }
        drawn_slots.sort_unstable();
        drawn_slots.dedup();
        Ok(TrainOutcome {
            run_dir: run_dir.to_path_buf(),
            summary,
            drawn_slots,
            images,
        })
    }
}

/// The MiniLM embeddings of the whole RAM vocabulary from the shared material, standing in for a
/// model's original label-embedding file in the embedded default.
fn default_base() -> Option<PathBuf> {
    let p = tagfix::fsutil::shared_dir()?.join("reference/minilm_ram_single_template.safetensors");
    p.is_file().then_some(p)
}

/// What the repair found, wrote and measured: the content of `REPORT.md`.
struct RepairOutcome<'a> {
    steps: &'a [Step],
    manifest: SlotManifest,
    /// The provenance `embed` wrote into the patched file.
    provenance: Provenance,
    /// The label-embedding file patched.
    base: PathBuf,
    /// The patched file.
    embeddings: PathBuf,
    check: CheckReport,
    /// The short train's outcome, or why it was not run.
    trained: Result<TrainOutcome, String>,
}

/// `REPORT.md`: found, repaired, checked, trained, the outputs and what to run next.
fn render(args: &RepairArgs, outcome: &RepairOutcome) -> String {
    let RepairOutcome {
        steps,
        manifest,
        provenance,
        base,
        embeddings,
        check,
        trained,
    } = outcome;
    let mut r = String::new();
    let s = &manifest.summary;
    let _ = writeln!(r, "# tagfix repair report\n");
    let _ = writeln!(r, "## Found (diff)\n");
    let _ = writeln!(
        r,
        "- {} records in {} file(s) cover {} of {} slots; **{} slots are absent**; {} problems.",
        s.records,
        manifest.inputs.len(),
        s.present,
        s.slots,
        s.absent,
        s.problems
    );
    let absent: Vec<String> = manifest
        .slots
        .iter()
        .filter(|e| e.status == tagfix::manifest::SlotStatus::Absent)
        .take(12)
        .map(|e| format!("{} `{}`", e.slot, e.tag))
        .collect();
    if !absent.is_empty() {
        let more = s.absent.saturating_sub(absent.len());
        let _ = writeln!(
            r,
            "- Absent slots: {}{}",
            absent.join(", "),
            if more > 0 {
                format!(" … and {more} more")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(r, "\n## Repaired (embed)\n");
    let _ = writeln!(
        r,
        "- {} rows regenerated in place with `{}` (recipe `{}`, {}); every other row of `{}` copied bit-identically.",
        provenance.regenerated_slots.len(),
        provenance.model,
        provenance.recipe,
        provenance.pooling,
        base.display()
    );
    let _ = writeln!(
        r,
        "- {} present slots re-embedded as a control set for `check`.",
        provenance.control_slots.len()
    );
    let _ = writeln!(r, "\n## Checked (check, {:?} mode)\n", check.mode);
    let _ = writeln!(
        r,
        "- Verdict: **{}** ({} of {} rules hold).",
        if check.passed { "PASS" } else { "FAIL" },
        check.rules.iter().filter(|x| x.passed).count(),
        check.rules.len()
    );
    for rule in &check.rules {
        let _ = writeln!(
            r,
            "  - {} `{}`: {} (required {} {}) — {}",
            if rule.passed { "ok  " } else { "FAIL" },
            rule.id,
            num(rule.observed),
            op_symbol(&rule.op),
            num(rule.threshold),
            rule.description
        );
    }
    if let Some(c) = &check.calibration {
        let _ = writeln!(
            r,
            "- Calibration: {:.1}% of regenerated rows are trusted (their neighbourhood score is at least the control set's {:.0}% quantile, {:.3}).",
            100.0 * c.trusted_share,
            100.0 * c.quantile,
            c.threshold
        );
    }
    render_trained(&mut r, manifest, trained, args.train_device);
    let _ = writeln!(r, "\n## Outputs\n");
    let o = &args.out;
    let mut outputs = vec![
        ("slot manifest", o.join("manifest.json")),
        ("diff report", o.join("diff.md")),
        ("patched embeddings", embeddings.to_path_buf()),
        ("check report", o.join("check.md")),
        ("check report (JSON)", o.join("check.json")),
        ("check plots (PNG, SVG)", o.join("plots")),
    ];
    if let Ok(t) = trained {
        outputs.push(("training images and annotations", o.join("image-set")));
        outputs.push((
            "training run (metrics.jsonl, events.jsonl, summary.json)",
            t.run_dir.clone(),
        ));
        outputs.push(("training curves (PNG, SVG)", t.run_dir.join("plots")));
        outputs.push((
            "checkpoint (model, optimizer, state)",
            t.summary.checkpoint.clone(),
        ));
    }
    for (what, p) in outputs {
        let _ = writeln!(r, "- {what}: `{}`", p.display());
    }
    let _ = writeln!(r, "\n## Steps (run them yourself)\n\n```sh");
    for step in *steps {
        let _ = writeln!(
            r,
            "{}    # {}: {:?}, {:.1} s",
            step.line, step.name, step.status, step.seconds
        );
    }
    let _ = writeln!(r, "```");
    let _ = writeln!(
        r,
        "\n## On real data and a GPU\n\n\
         Audit and repair your annotation files against the model's own label-embedding file (CLIP space, as \
         the official checkpoints expect), then train RAM++ on your images with the repaired embeddings:\n\n\
         ```sh\n\
         tagfix repair --vocab {vocab} --data ram_4m_part1.json.gz ram_4m_part2.json.gz \\\n    \
         --model clip --base ram_plus_tag_embedding_class_4585_des_51.pth --out repair-run\n\
         tagfix teacher --data ram_4m_part1.json.gz ram_4m_part2.json.gz --images IMAGE_ROOT \\\n    \
         --image-model clip-vision --text-model clip --device cuda --out teacher.safetensors\n\
         tagfix train --config ../shared/ram/configs/finetune.yaml --data ram_4m_part1.json.gz ram_4m_part2.json.gz \\\n    \
         --images IMAGE_ROOT --manifest repair-run/manifest.json --label-embed repair-run/embeddings.safetensors \\\n    \
         --teacher teacher.safetensors --init ram_plus_swin_large_14m.pth --vocab {vocab} --device cuda --out runs/ft\n\
         tagfix plot runs/ft   # loss curves and training-health events\n\
         ```\n\n\
         `--model clip` needs a CLIP text tower exported to ONNX (`scripts/export_clip_text_onnx.py`; 512-d, what \
         the official presets take), `tagfix teacher` also the image tower (`scripts/export_clip_image_onnx.py`; \
         or `tagfix train --teacher online`) and `--device cuda` the GPU build of tagfix (`scripts/setup-gpu.sh`: torch's CUDA \
         libraries from PyPI, libtorch_cuda linked; `tagfix doctor --require train,cuda` confirms it sees the GPU). \
         On the embedded default, `--train-device cuda` runs the short training on the GPU and `--embed-device cuda` the \
         text encoder (with the onnxruntime-gpu library). docs/guide.md walks through \
         every step (audit, repair, verify, gate in CI, train, monitor).",
        vocab = args.vocab,
    );
    r
}

fn render_trained(
    r: &mut String,
    manifest: &SlotManifest,
    trained: &Result<TrainOutcome, String>,
    device: DeviceKind,
) {
    let _ = writeln!(r, "\n## Trained (train)\n");
    let t = match trained {
        Ok(t) => t,
        Err(why) => {
            let _ = writeln!(r, "- Short training run {why}");
            return;
        }
    };
    let s = &t.summary;
    let absent = manifest.absent_slots();
    let drawn: Vec<String> = t
        .drawn_slots
        .iter()
        .map(|&i| format!("{i} `{}`", manifest.slots[i].tag))
        .collect();
    let _ = writeln!(
        r,
        "- The small `tiny` RAM++ (Swin 64×64 px, tagging head hidden 32, from random weights) trained {} steps of \
         batch 8 on {} with the patched label embeddings above, on {} synthetic images of coloured shapes \
         tagged with slots {} (the synthesized annotation records have no pixels).",
        s.steps,
        match device {
            DeviceKind::Cpu => "CPU (one libtorch thread)",
            DeviceKind::Cuda => "CUDA",
        },
        t.images,
        drawn.join(", ")
    );
    let _ = writeln!(
        r,
        "- Loss (raw value per batch: the tag loss is the asymmetric loss summed over the batch's images × {} tags), \
         mean over the first → the last quarter of the steps (at most 20 each):",
        manifest.slots.len()
    );
    for (term, &e) in &s.early {
        let l = s.late.get(term).copied().unwrap_or(f64::NAN);
        let _ = writeln!(r, "  - `{term}`: {} → {}", sig4(e), sig4(l));
    }
    if let (Some(d), Some(a)) = (
        s.mean_probability(&t.drawn_slots),
        s.mean_probability(&absent),
    ) {
        let _ = writeln!(
            r,
            "- Mean predicted probability on the training images: {d:.3} over the drawn tags, {a:.3} over the {} absent slots \
             (absent-slot policy `{ABSENT_POLICY}`: their targets are 0.05, not 0).",
            absent.len()
        );
    }
    let _ = writeln!(
        r,
        "- Only the tag loss trains here: alignment and distillation need teacher features (CLIP image features and \
         caption embeddings, `--teacher`) in the label embeddings' space. Health events: {}. The curves (loss, \
         gradient and update norms, learning rate) are in `{}`; `tagfix plot {}` redraws them.",
        s.health_events.len(),
        t.run_dir.join("plots").display(),
        t.run_dir.display()
    );
}

/// Four significant digits (`185.3`, `10.69`, `0.04713`).
fn sig4(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    format!("{x:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    /// `repair`'s arguments as a user gives them, with words a shell would split or expand.
    fn repair_args() -> RepairArgs {
        let cli = Cli::try_parse_from([
            "tagfix",
            "repair",
            "--vocab",
            "my tags.txt",
            "--data",
            "a b.json",
            "it's.json",
            "--control",
            "all",
            "--embed-device",
            "cuda:1",
            "--train-device",
            "cuda",
            "--train-images",
            "16",
            "--keep-going",
            "--out",
            "/tmp/out dir/$HOME",
        ])
        .unwrap();
        match cli.command {
            Command::Repair(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// The printed line, split as a shell splits it and parsed by the real command line.
    fn reparse(line: &str) -> Command {
        let words = shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
        assert_eq!(words[0], "tagfix", "{line}");
        Cli::try_parse_from(words)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .command
    }

    /// The step's line parses back to the same arguments; returns the flags the line gives.
    macro_rules! round_trip {
        ($args:expr, $variant:ident) => {{
            let args = $args;
            let line = args.command_line();
            match reparse(&line) {
                Command::$variant(back) => {
                    assert_eq!(format!("{back:?}"), format!("{args:?}"), "{line}")
                }
                other => panic!("{line} parsed as {other:?}"),
            }
            let mut flags: Vec<String> = shlex::split(&line)
                .unwrap()
                .into_iter()
                .filter(|w| w.starts_with("--"))
                .collect();
            flags.sort();
            flags.dedup();
            (line, flags)
        }};
    }

    /// Each step's line gives back its arguments, and gives only the flags repair sets to other
    /// than their defaults (so the values repair leaves alone are clap's defaults).
    #[test]
    fn every_step_line_parses_back_to_the_arguments_it_ran_with() {
        let args = repair_args();
        let at = Layout {
            out: args.out.clone(),
        };
        let base = PathBuf::from("base (v2).safetensors");
        let flags = |list: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = list.iter().map(|f| format!("--{f}")).collect();
            v.sort();
            v
        };
        let (_, f) = round_trip!(synth_args(&args, &at), Synth);
        assert_eq!(f, flags(&["vocab", "records", "absent", "seed", "out"]));
        let (_, f) = round_trip!(synth_images_args(&args, &at), SynthImages);
        assert_eq!(f, flags(&["out", "count", "seed", "descriptions", "vocab"]));
        let (line, f) = round_trip!(diff_args(&args, &at, args.data.clone()), Diff);
        assert_eq!(
            f,
            flags(&["vocab", "data", "format", "out", "report", "keep-going"])
        );
        assert!(
            line.contains("'/tmp/out dir/$HOME/manifest.json'"),
            "{line}"
        );
        let (_, f) = round_trip!(embed_args(&args, &at, &base), Embed);
        let embed = [
            "vocab", "model", "manifest", "absent", "base", "out", "device",
        ];
        assert_eq!(f, flags(&[&embed[..], &["control", "seed"]].concat()));
        let (_, f) = round_trip!(check_args(&args, &at, &base), Check);
        assert_eq!(
            f,
            flags(&[
                "baseline",
                "candidate",
                "vocab",
                "format",
                "out",
                "json",
                "plot"
            ])
        );
        let (line, f) = round_trip!(train_args(&args, &at).unwrap(), Train);
        let train = [
            "data",
            "images",
            "manifest",
            "label-embed",
            "vocab",
            "allow-random-encoder",
            "model",
            "absent",
            "batch-size",
            "max-steps",
            "lr",
            "device",
            "seed",
            "workers",
            "threads",
            "plot",
            "set",
            "out",
        ];
        assert_eq!(f, flags(&train));
        assert!(line.contains("--device cuda "), "{line}");
    }

    /// The `--set` keys of the train step are settings the configuration takes.
    #[test]
    fn the_train_step_sets_what_repair_means() {
        let args = repair_args();
        let at = Layout {
            out: args.out.clone(),
        };
        let cfg =
            super::super::train::resolve_config(&train_args(&args, &at).unwrap(), false).unwrap();
        assert_eq!((cfg.warmup_steps, cfg.warmup_lr), (5, 1e-4));
        assert_eq!((cfg.absent, cfg.batch_size), (ABSENT_POLICY, 8));
        assert_eq!(cfg.model.as_deref(), Some("tiny"));
    }
}
