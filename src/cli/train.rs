//! `tagfix train`: resolve the configuration (file, then `--set`, then flags), check every input,
//! train, print a summary.

use super::args::TrainArgs;
use super::ExitStatus;
use tagfix::train::config::TrainConfig;

/// How this invocation begins: `--resume`; under `--auto-resume`, a resume when `--out` holds a
/// checkpoint (else a new run, or the same run again); else a new run. The one place that looks at
/// `--out` for it, so the configuration and the inputs follow the same answer.
#[cfg(feature = "train")]
fn run_start(args: &TrainArgs) -> anyhow::Result<tagfix::train::run::RunStart> {
    use tagfix::train::run::{auto_start, RunStart};
    Ok(match (&args.resume, args.auto_resume, &args.out) {
        (Some(_), _, _) => RunStart::Resume,
        (None, true, Some(out)) => auto_start(out)?,
        _ => RunStart::New,
    })
}

/// The configuration the flags describe: the file (or, when the run resumes, its `config.toml`:
/// `--resume`'s folder, or `--out` under `--auto-resume`), then `--set`, then the dedicated flags.
pub fn resolve_config(args: &TrainArgs, resume: bool) -> anyhow::Result<TrainConfig> {
    use anyhow::Context;
    let resumed = resume
        .then(|| args.resume.clone().or_else(|| args.out.clone()))
        .flatten();
    let file = match (&args.config, &resumed) {
        (Some(f), _) => Some(f.clone()),
        (None, Some(run)) => Some(run.join("config.toml")),
        (None, None) => None,
    };
    let mut cfg = match file {
        Some(f) => {
            let loaded =
                TrainConfig::load(&f).with_context(|| format!("reading config {}", f.display()))?;
            if !loaded.ignored_keys.is_empty() {
                tracing::warn!(
                    "{}: keys not used by tagfix: {}",
                    f.display(),
                    loaded.ignored_keys.join(", ")
                );
            }
            loaded.config
        }
        None => TrainConfig::default(),
    };
    cfg.apply_overrides(&args.set)?;
    args.settings.clone().apply(&mut cfg);
    let run_config = resumed.is_some() && args.config.is_none();
    apply_teacher_flags(&mut cfg, args, run_config && !args.auto_resume)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Whether `--teacher` names the online teacher rather than a file.
fn teacher_is_online(args: &TrainArgs) -> bool {
    args.teacher.as_deref() == Some(std::path::Path::new("online"))
}

/// `--teacher online` and `--teacher-image-model` / `--teacher-text-model` into `[online_teacher]`.
/// `replaces_online`: the configuration is a run's own, which `--resume` continues, so a teacher
/// file replaces its online teacher (as `--teacher online` replaces a recorded teacher file,
/// [`resolve_inputs`]) rather than conflicting with it.
fn apply_teacher_flags(
    cfg: &mut TrainConfig,
    args: &TrainArgs,
    replaces_online: bool,
) -> anyhow::Result<()> {
    let models = (&args.teacher_image_model, &args.teacher_text_model);
    if !teacher_is_online(args) {
        anyhow::ensure!(
            models.0.is_none() && models.1.is_none(),
            "--teacher-image-model / --teacher-text-model are for --teacher online"
        );
        if args.teacher.is_some() && cfg.online_teacher.is_some() {
            if replaces_online {
                tracing::warn!(
                    "--resume: --teacher FILE replaces the online teacher of the run's configuration: \
                     the distillation targets are the file's rows from the checkpoint's step on"
                );
                cfg.online_teacher = None;
                return Ok(());
            }
            anyhow::bail!(
                "--teacher FILE, but the configuration has [online_teacher]: remove one (or pass --teacher online)"
            );
        }
        return Ok(());
    }
    let current = cfg.online_teacher.take();
    let image = models
        .0
        .clone()
        .or_else(|| current.as_ref().map(|c| c.image_model.clone()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--teacher online needs --teacher-image-model (or online_teacher.image_model)"
            )
        })?;
    let text = models
        .1
        .clone()
        .or_else(|| current.as_ref().map(|c| c.text_model.clone()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--teacher online needs --teacher-text-model (or online_teacher.text_model)"
            )
        })?;
    let mut online = current
        .unwrap_or_else(|| tagfix::teacher::OnlineTeacherConfig::new(image.clone(), text.clone()));
    online.image_model = image;
    online.text_model = text;
    cfg.online_teacher = Some(online);
    Ok(())
}

#[cfg(not(feature = "train"))]
pub fn run(args: TrainArgs) -> anyhow::Result<ExitStatus> {
    resolve_config(&args, args.resume.is_some())?;
    anyhow::bail!("this tagfix was built without the `train` feature: rebuild with `cargo build --release --features train`")
}

/// This process's rank of a data-parallel run when torchrun's or Slurm's environment names more than
/// one rank: joins the process group (backend by device unless `--dist-backend`).
#[cfg(feature = "train")]
fn join_group(
    args: &TrainArgs,
    cfg: &TrainConfig,
) -> anyhow::Result<Option<tagfix::train::dist::ProcessGroup>> {
    use tagfix::train::config::DeviceKind;
    use tagfix::train::dist::{DistBackend, GroupOptions, ProcessGroup, Rendezvous};
    let Some(rdzv) = Rendezvous::from_env()?.filter(Rendezvous::is_multi_rank) else {
        return Ok(None);
    };
    let backend = args
        .dist
        .dist_backend
        .unwrap_or(DistBackend::for_cuda(cfg.device == DeviceKind::Cuda));
    let timeout = std::time::Duration::from_secs(args.dist.dist_timeout);
    let mut opts = GroupOptions::new(backend, timeout);
    opts.bucket_bytes = (args.dist.bucket_cap_mb as usize) << 20;
    Ok(Some(ProcessGroup::new(&rdzv, &opts)?))
}

/// `--nproc-per-node N` (N > 1) in a process that is not already one of several ranks: starts N
/// ranks of this same command instead of training here, and returns their joint status.
#[cfg(feature = "train")]
fn launch_ranks(args: &TrainArgs) -> anyhow::Result<Option<ExitStatus>> {
    use anyhow::Context;
    use std::sync::{Arc, Mutex};
    use tagfix::train::dist::{launch, Rendezvous};
    let n = usize::from(args.dist.nproc_per_node);
    if n == 1 {
        return Ok(None);
    }
    refuse_nproc_under_launcher(
        n,
        Rendezvous::from_env()
            .map_err(tagfix::Error::from)?
            .as_ref(),
    )?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let request = launch::LaunchRequest::new(
        std::env::current_exe()?,
        launch::without_flag(&argv, "--nproc-per-node"),
        n,
    );
    let (out, err): (launch::Sink, launch::Sink) = (
        Arc::new(Mutex::new(std::io::stdout())),
        Arc::new(Mutex::new(std::io::stderr())),
    );
    let _signals = request
        .stop
        .on_signals("the ranks stop")
        .context("installing the stop-signal handlers")?;
    launch::launch(&request, out, err).map_err(tagfix::Error::from)?;
    Ok(Some(ExitStatus::Success))
}

#[cfg(feature = "train")]
pub fn run(args: TrainArgs) -> anyhow::Result<ExitStatus> {
    use tagfix::train::run::{prepare, prepare_rank, train_distributed, train_until, StopRequest};
    if args.dry_run {
        return dry_run(&args);
    }
    if let Some(status) = launch_ranks(&args)? {
        return Ok(status);
    }
    let start = run_start(&args)?;
    let cfg = resolve_config(&args, start == tagfix::train::run::RunStart::Resume)?;
    let (inputs, out) = resolve_inputs(&args, &cfg, start)?;
    // Stop signals are caught from the loop's start (everything before it is lost by nothing).
    let stop = StopRequest::new();
    let summary = match join_group(&args, &cfg)? {
        None => {
            let prepared = prepare(&cfg, &inputs).map_err(|e| on_resume(e, start, &out))?;
            let _signals = catch_stop_signals(&stop)?;
            train_until(prepared, &out, start, stop)?
        }
        Some(mut group) => {
            let main = group.is_main();
            // The ranks split the checks that read every image and teacher value.
            let share = tagfix::share::WorkShare::new(group.rank(), group.world_size())
                .ok_or_else(|| {
                    anyhow::anyhow!("rank {} of {}", group.rank(), group.world_size())
                })?;
            let prepared = match prepare_rank(&cfg, &inputs, group.device(), share) {
                Ok(p) => p,
                Err(e) => {
                    group.report_failure(&tagfix::error::report(&e));
                    return Err(on_resume(e, start, &out));
                }
            };
            let _signals = catch_stop_signals(&stop)?;
            let summary = train_distributed(prepared, &out, start, group, stop)?;
            if !main {
                return Ok(ExitStatus::Success); // rank 0 writes and prints the summary
            }
            summary
        }
    };
    summary.write(&out)?;
    if args.plot {
        super::plot::write_plots(&out, None, false, None, None)?;
    }
    let text = if args.json {
        serde_json::to_string_pretty(&summary)? + "\n"
    } else {
        summary_text(&summary, &out, args.plot)
    };
    super::write_stdout(&text)?;
    Ok(ExitStatus::Success)
}

/// `--nproc-per-node N` (N > 1) starts ranks itself: refused in a process a launcher already made
/// one rank of several.
#[cfg(feature = "train")]
fn refuse_nproc_under_launcher(
    n: usize,
    launcher: Option<&tagfix::train::dist::Rendezvous>,
) -> anyhow::Result<()> {
    match launcher.filter(|r| n > 1 && r.is_multi_rank()) {
        Some(r) => anyhow::bail!(
            "--nproc-per-node {n}: this process is already rank {} of {} ({}); give the rank count to the launcher only",
            r.rank,
            r.world_size,
            r.contract.name()
        ),
        None => Ok(()),
    }
}

/// `--dry-run`: the checks of the run's start in this one process, then the plan on stdout.
#[cfg(feature = "train")]
fn dry_run(args: &TrainArgs) -> anyhow::Result<ExitStatus> {
    use tagfix::train::run::{dry_run, prepare, RunStart};
    // Under a launcher every rank runs the command: one process checks for the job (its inputs
    // are the same files on a shared file system), rather than each reading every image again.
    let launcher = tagfix::train::dist::Rendezvous::from_env()?;
    refuse_nproc_under_launcher(usize::from(args.dist.nproc_per_node), launcher.as_ref())?;
    if let Some(r) = launcher.as_ref().filter(|r| r.rank != 0) {
        tracing::info!(
            "rank {} of {}: the dry run checks in one process, rank 0; nothing to do here",
            r.rank,
            r.world_size
        );
        return Ok(ExitStatus::Success);
    }
    let start = run_start(args)?;
    let cfg = resolve_config(args, start == RunStart::Resume)?;
    let (inputs, out) = resolve_inputs(args, &cfg, start)?;
    let prepared = prepare(&cfg, &inputs).map_err(|e| on_resume(e, start, &out))?;
    for note in &prepared.notes {
        tracing::info!("{note}");
    }
    // The ranks the run would have: --nproc-per-node's, else the launcher's (torchrun, srun).
    let world = match args.dist.nproc_per_node {
        1 => launcher.map_or(1, |r| r.world_size),
        n => usize::from(n),
    };
    let plan = dry_run(&prepared, &out, start, world)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan_text(&plan));
    }
    Ok(ExitStatus::Success)
}

/// `--dry-run`'s plan for a person.
#[cfg(feature = "train")]
fn plan_text(plan: &tagfix::train::run::DryRun) -> String {
    let begin = match (&plan.resume_from, plan.again) {
        (Some(ckpt), _) => format!(
            "resuming at step {} from {}, {}",
            plan.start_step,
            ckpt.display(),
            match plan.resume_verified {
                Some(true) => "its files checked against its SHA256SUMS",
                _ => "written without SHA256SUMS: its bytes not verified",
            }
        ),
        (None, true) => format!(
            "again from the start in {}: an earlier attempt left no checkpoint, its records would be replaced",
            plan.out.display()
        ),
        (None, false) => format!("a new run in {}", plan.out.display()),
    };
    let ranks = match plan.world {
        1 => String::new(),
        n => format!("{n} ranks × "),
    };
    let micro = match (plan.micro_batch_size, plan.micro_batches_per_rank) {
        (Some(m), Some(n)) => format!("{ranks}{n} micro-batch(es) of {m}"),
        _ => "micro-batches chosen when the run starts (auto)".into(),
    };
    let weighting = plan
        .weighting_change
        .as_ref()
        .map_or(String::new(), |c| format!("  {c}\n"));
    format!(
        "dry run: every input checked; nothing trained or written\n  steps {}..{} ({begin})\n  \
         {} records, {} steps per epoch; batch {} = {micro}\n  model: {} parameters, {}\n  {}\n  \
         {}\n{weighting}",
        plan.start_step,
        plan.total_steps,
        plan.records,
        plan.steps_per_epoch,
        plan.batch_size,
        plan.parameters,
        plan.trained,
        memory_text(&plan.memory),
        checkpoint_space_text(&plan.checkpoints),
    )
}

/// The checkpoints' line: their size, the peak while one is written, the free space.
#[cfg(feature = "train")]
fn checkpoint_space_text(c: &tagfix::train::run::CheckpointSpace) -> String {
    use indicatif::HumanBytes;
    let held = match c.existing {
        0 => String::new(),
        b => format!(", {} of it there already", HumanBytes(b)),
    };
    let free = match c.available {
        Some(free) if c.short() => format!(
            "; only {} free there: the run will stop at a checkpoint it cannot write",
            HumanBytes(free)
        ),
        Some(free) => format!("; {} free there", HumanBytes(free)),
        None => "; the free space there is unknown".into(),
    };
    format!(
        "checkpoints: {} each; up to {} on the disk while one is written (keep_checkpoints = {}): \
         {}{held}{free}",
        HumanBytes(c.bytes),
        c.keep + 1,
        c.keep,
        HumanBytes(c.bytes * (c.keep as u64 + 1)),
    )
}

/// The memory plan's line: each part, then what comes on top.
#[cfg(feature = "train")]
fn memory_text(m: &tagfix::train::memory::MemoryPlan) -> String {
    use indicatif::HumanBytes;
    let moments = match m.optimizer_shared_by {
        1 => format!("AdamW moments {}", HumanBytes(m.optimizer)),
        n => format!(
            "AdamW moments {} (a share of {n} ranks)",
            HumanBytes(m.optimizer)
        ),
    };
    let casts = match m.bf16_casts {
        0 => String::new(),
        b => format!(", bf16 weight casts up to {}", HumanBytes(b)),
    };
    format!(
        "memory per rank before activations: {} = parameters {}, gradients {}, {moments}{casts}; \
         the activations come on top and grow with the micro-batch",
        HumanBytes(m.total()),
        HumanBytes(m.parameters),
        HumanBytes(m.gradients),
    )
}

/// Records SIGTERM, SIGINT and SIGUSR1 in `stop` while the guard lives: the loop then stops after
/// the step in progress with a checkpoint (docs/training.md, "Stopping and resuming").
#[cfg(feature = "train")]
fn catch_stop_signals(
    stop: &tagfix::train::run::StopRequest,
) -> anyhow::Result<tagfix::train::interrupt::SignalGuard> {
    use anyhow::Context;
    stop.on_signals("training stops")
        .context("installing the stop-signal handlers")
}

/// The run's inputs, its folder and how it begins: from `run.json` when it resumes (`--resume`, or
/// `--auto-resume` on a folder with a checkpoint, whose flags must name the same inputs; the flags may
/// add validation and `--allow-random-encoder`), else from the flags and the configuration.
#[cfg(feature = "train")]
fn resolve_inputs(
    args: &TrainArgs,
    cfg: &TrainConfig,
    start: tagfix::train::run::RunStart,
) -> anyhow::Result<(tagfix::train::run::TrainInputs, std::path::PathBuf)> {
    use anyhow::Context;
    use tagfix::train::run::{read_run_inputs, RunStart};
    use tagfix::train::validate::ValidationInputs;
    let validation = args.val_data.as_ref().map(|data| ValidationInputs {
        data: data.clone(),
        images: args.val_images.clone(),
        thresholds: args.val_thresholds.clone(),
    });
    let (mut inputs, out) = match (start, &args.resume) {
        (RunStart::Resume, resume) => {
            let run_dir = required(resume.as_ref().or(args.out.as_ref()), "--resume")?;
            if let (Some(o), Some(_)) = (&args.out, resume) {
                anyhow::ensure!(
                    *o == run_dir,
                    "--resume {} and --out {} differ",
                    run_dir.display(),
                    o.display()
                );
            }
            let mut inputs = read_run_inputs(&run_dir).context("--resume")?;
            if args.auto_resume {
                refuse_other_inputs(&inputs_from_flags(args, cfg)?, &inputs, &run_dir)?;
            } else {
                log_moved_inputs(&inputs.moved_to(moved_inputs(args)));
                if teacher_is_online(args) {
                    if let Some(file) = inputs.teacher.take() {
                        tracing::warn!(
                            "--resume: --teacher online replaces the teacher file {} the run recorded: \
                             the distillation targets come from the towers, on each sample's augmented \
                             view, from the checkpoint's step on",
                            file.display()
                        );
                    }
                }
            }
            inputs.allow_random_encoder |= args.allow_random_encoder;
            (inputs, run_dir)
        }
        (RunStart::New | RunStart::Again, _) => {
            let inputs = inputs_from_flags(args, cfg)?;
            let out = required(args.out.as_ref(), "--out")?;
            if start == RunStart::Again {
                tracing::warn!(
                    "--auto-resume: {} holds no checkpoint of an earlier attempt; training it again from \
                     step 0 (that attempt's metrics are replaced)",
                    out.display()
                );
            }
            (inputs, out)
        }
    };
    if validation.is_some() {
        inputs.validation = validation;
    }
    Ok((inputs, out))
}

/// The input flags given to `--resume`: where the run's files are now.
#[cfg(feature = "train")]
fn moved_inputs(args: &TrainArgs) -> tagfix::train::run_files::MovedInputs {
    tagfix::train::run_files::MovedInputs {
        data: args.data.clone(),
        images: args.images.clone(),
        manifest: args.manifest.clone(),
        label_embed: args.label_embed.clone(),
        teacher: args.teacher.clone().filter(|_| !teacher_is_online(args)),
        init: args.init.clone(),
        vocab: args.vocab.clone(),
    }
}

/// Each input a resume's flag moved, and for the label embeddings what the file still does: the
/// checkpoint holds the trained rows, so another file is checked but not trained from.
#[cfg(feature = "train")]
fn log_moved_inputs(moved: &[tagfix::train::run::InputDifference]) {
    for d in moved {
        tracing::info!(
            "--resume: {} {} (the run recorded {})",
            d.flag,
            d.given,
            d.recorded
        );
        if d.flag == "--label-embed" {
            tracing::warn!(
                "--resume: the label embeddings the run trains on are the checkpoint's; {} is checked \
                 against the manifest and the model as a new run's, but its rows are not loaded (to train \
                 from other label embeddings, start a new run with --init on the checkpoint's \
                 model.safetensors)",
                d.given
            );
        }
    }
}

/// An input or file-system error checking a resumed run's inputs, with where they came from and how
/// to say where a file is now (the error itself keeps its kind, and so the exit status).
#[cfg(feature = "train")]
fn on_resume(
    e: tagfix::Error,
    start: tagfix::train::run::RunStart,
    out: &std::path::Path,
) -> anyhow::Error {
    use tagfix::error::ErrorKind;
    let about_inputs = matches!(e.kind(), ErrorKind::Input | ErrorKind::Io);
    let e = anyhow::Error::from(e);
    match start {
        tagfix::train::run::RunStart::Resume if about_inputs => e.context(format!(
            "resuming {}: its inputs are those {} records (give --data, --images, --manifest, \
             --label-embed, --teacher or --init where a file is now)",
            out.display(),
            out.join(tagfix::train::run::RUN_FILE).display()
        )),
        _ => e,
    }
}

/// A path flag's value, or the error that says it is needed.
#[cfg(feature = "train")]
fn required(v: Option<&std::path::PathBuf>, flag: &str) -> anyhow::Result<std::path::PathBuf> {
    v.cloned()
        .ok_or_else(|| anyhow::anyhow!("{flag} is required (or --resume RUN_DIR)"))
}

/// A new run's inputs: the flags, with the configuration's `train_file` and `image_path_root` where
/// `--data` and `--images` are not given.
#[cfg(feature = "train")]
fn inputs_from_flags(
    args: &TrainArgs,
    cfg: &TrainConfig,
) -> anyhow::Result<tagfix::train::run::TrainInputs> {
    let data = if args.data.is_empty() {
        cfg.train_file.iter().map(Into::into).collect()
    } else {
        args.data.clone()
    };
    let images = args
        .images
        .clone()
        .or_else(|| (!cfg.image_path_root.is_empty()).then(|| cfg.image_path_root.clone().into()));
    Ok(tagfix::train::run::TrainInputs {
        data,
        images: required(images.as_ref(), "--images")?,
        manifest: required(args.manifest.as_ref(), "--manifest")?,
        label_embed: required(args.label_embed.as_ref(), "--label-embed")?,
        teacher: args.teacher.clone().filter(|_| !teacher_is_online(args)),
        init: args.init.clone(),
        vocab: args.vocab.clone(),
        allow_random_encoder: args.allow_random_encoder,
        validation: None,
    })
}

/// `--auto-resume` continues a run only with the inputs it was started with.
#[cfg(feature = "train")]
fn refuse_other_inputs(
    given: &tagfix::train::run::TrainInputs,
    recorded: &tagfix::train::run::TrainInputs,
    run_dir: &std::path::Path,
) -> anyhow::Result<()> {
    match given.first_difference(recorded) {
        None => Ok(()),
        Some(d) => anyhow::bail!(
            "--auto-resume: {} was started with {} {}, this command gives {}; continue it with \
             `tagfix train --resume {}`, or train into another --out",
            run_dir.display(),
            d.flag,
            d.recorded,
            d.given,
            run_dir.display()
        ),
    }
}

/// The finished run for a person: steps, each loss term first vs last, weights, absent slots, health
/// events, validation and where the files are.
#[cfg(feature = "train")]
fn summary_text(
    summary: &tagfix::train::run::RunSummary,
    out: &std::path::Path,
    plotted: bool,
) -> String {
    use tagfix::train::run::validation_line;
    let mut lines = vec![format!(
        "trained steps {}..{} → {}",
        summary.first_step,
        summary.steps,
        summary.checkpoint.display()
    )];
    for (term, late) in &summary.late {
        let early = summary.early.get(term).copied().unwrap_or(f64::NAN);
        lines.push(format!(
            "  {term:<6} {early:>10.4} → {late:>10.4} (mean raw, first vs last steps)"
        ));
    }
    let w = summary.final_weights;
    lines.push(format!(
        "  weights tag {} align {} dis {}",
        w.tag, w.align, w.dis
    ));
    if let Some(pace) = summary.pace {
        lines.push(format!("  steps took {pace}"));
    }
    if summary.skipped_images > 0 {
        lines.push(format!(
            "  unreadable images skipped: {} (named in the log; summary.json)",
            summary.skipped_images
        ));
    }
    if let Some(p) = summary.absent_probability() {
        lines.push(format!("  absent slots: mean predicted probability {p:.4}"));
    }
    lines.push(format!(
        "  health events: {} (events.jsonl; `tagfix plot {}` draws them)",
        summary.health_events.len(),
        out.display()
    ));
    if let (Some(first), Some(last)) = (summary.validation.first(), summary.validation.last()) {
        lines.push(format!("  first {}", validation_line(first)));
        if last.step != first.step {
            lines.push(format!("  last  {}", validation_line(last)));
        }
    }
    lines.push(format!(
        "  metrics: {}",
        out.join("metrics.jsonl").display()
    ));
    if plotted {
        lines.push(format!("  plots: {}", out.join("plots").display()));
    }
    lines.join("\n") + "\n"
}
