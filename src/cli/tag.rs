//! `tagfix tag`: a RAM++ checkpoint's tags for image files and folders, streamed batch by batch.

use super::args::{GlobalArgs, TagArgs};
use super::ExitStatus;

#[cfg(not(feature = "train"))]
pub fn run(_args: TagArgs, _global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("this tagfix was built without the `train` feature: rebuild with `cargo build --release --features train`")
}

#[cfg(feature = "train")]
pub use with_train::run;

#[cfg(feature = "train")]
mod with_train {
    use super::super::args::TagFormat;
    use super::super::launcher::ShardGiven;
    use super::*;
    use anyhow::Context;
    use rayon::prelude::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use tagfix::eval::scores::SCORE_SET;
    use tagfix::eval::ScoreWriter;
    use tagfix::imaging::files::{collect_images, read_image_list};
    use tagfix::manifest::SlotManifest;
    use tagfix::share::shard::{local_gpu, SetNaming, Shard};
    use tagfix::train::config::DeviceKind;
    use tagfix::train::infer::{
        load_model, tag_strings, LoadedModel, OpenSet, Prediction, SlotLabels,
    };
    use tagfix::vocab::Vocabulary;

    /// RAM's default `class_threshold` when no threshold file is known.
    const RAM_DEFAULT_THRESHOLD: f32 = 0.68;

    pub fn run(args: TagArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
        let shared = super::super::launcher::share_the_cores("libtorch", args.threads > 0)?;
        let shard = ShardGiven::resolve(args.shard)?;
        let (out_path, scores_path) = output_paths(&args, shard.as_ref().map(|s| s.shard))?;
        let vocab = Vocabulary::load(&args.vocab)
            .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
        let thresholds = args.thresholds.choose(
            &vocab,
            Some(RAM_DEFAULT_THRESHOLD),
            args.label_embed.is_some(),
        )?;
        let open_set = args
            .label_embed
            .as_deref()
            .map(|p| OpenSet::read(p, &vocab))
            .transpose()?;
        let manifest = SlotManifest::read_for(args.manifest.as_deref(), &vocab)?;
        let labels = SlotLabels::new(&vocab, args.zh.as_deref(), thresholds, manifest.as_ref())?;
        anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
        let mut images = images_to_tag(&args)?;
        let found = images.len();
        if let Some(s) = &shard {
            images = images.drain(s.shard.range(found)).collect();
        }
        // Outputs are checked before the model loads, so a typo fails at once.
        let mut inputs: Vec<&Path> = vec![args.checkpoint.as_path(), vocab.path.as_path()];
        inputs.extend(args.label_embed.as_deref());
        inputs.extend(args.thresholds.thresholds.as_deref());
        inputs.extend(args.manifest.as_deref());
        inputs.extend(args.zh.as_deref());
        inputs.extend(args.images_from.as_deref());
        inputs.extend(images.iter().map(|(p, _)| p.as_path()));
        // A shard's folders are made once its inputs have passed (below).
        super::super::launcher::check_outputs(
            out_path.iter().chain(&scores_path).map(|p| p.as_path()),
            &inputs,
            shard.is_some(),
        )?;
        let skipped = probe_all(&mut images, args.keep_going)?;

        tagfix::train::run::set_torch_threads(match (args.threads, shared) {
            (0, Some(share)) => share,
            (given, _) => given,
        });
        let device = device_of(args.device)?;
        let model = load_model(
            &args.checkpoint,
            args.model.as_deref(),
            Some(vocab.len()),
            open_set.as_ref(),
            device,
        )
        .with_context(|| format!("loading {}", args.checkpoint.display()))?;
        if !global.quiet {
            eprint!("{}", model.report.to_table());
            eprint!(
                "{}",
                model_summary(&model, &labels, manifest.as_ref(), open_set.as_ref())
            );
        }

        if shard.is_some() {
            make_shard_folders(&args, out_path.as_deref(), scores_path.as_deref())?;
        }
        let mut out = Output::create(out_path.as_deref(), args.format)?;
        let mut scores = scores_path
            .as_deref()
            .map(|p| ScoreWriter::create(p, vocab.len()))
            .transpose()?;
        if let Some(s) = &scores {
            s.check_ids_fit(images.iter().map(|(_, id)| id.as_str()))?;
        }
        let pb = super::super::progress_bar(global, "tag: images", images.len() as u64, false);
        let start = std::time::Instant::now();
        let (tagged, unreadable) = tag_images(
            &args,
            &model,
            &labels,
            &images,
            &mut out,
            scores.as_mut(),
            &pb,
        )?;
        let unreadable = unreadable + skipped;
        pb.finish_and_clear();
        out.finish()?;
        if let Some(s) = scores {
            s.finish()?;
        }
        let secs = start.elapsed().as_secs_f64();
        if !global.quiet {
            eprintln!(
                "tagged {tagged} images in {secs:.2} s ({:.2} images/s){}",
                tagged as f64 / secs.max(1e-9),
                if unreadable > 0 {
                    format!("; {unreadable} unreadable images skipped")
                } else {
                    String::new()
                }
            );
        }
        if let Some(s) = &shard {
            let scores = scores_path.as_deref().map(|p| {
                format!(
                    " and {} (`tagfix eval --scores {}` reads the set once all {} shards are there)",
                    p.display(),
                    args.scores.as_deref().unwrap_or(p).display(),
                    s.shard.count
                )
            });
            println!(
                "{}; wrote {}{}",
                s.describe("images", found),
                out_path.as_deref().unwrap_or(Path::new("")).display(),
                scores.unwrap_or_default()
            );
        }
        Ok(ExitStatus::Success)
    }

    /// The image files `--images` and `--images-from` name (folders walked), with their ids; none
    /// is an error naming where they were looked for.
    fn images_to_tag(args: &TagArgs) -> anyhow::Result<Vec<(PathBuf, String)>> {
        let mut given = args.images.clone();
        if let Some(list) = &args.images_from {
            given.extend(read_image_list(list)?);
        }
        let images = collect_images(&given)?;
        anyhow::ensure!(
            !images.is_empty(),
            "no .jpg, .jpeg or .png file under {}",
            match &args.images_from {
                Some(list) if args.images.is_empty() =>
                    format!("the paths {} lists", list.display()),
                _ => given
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        );
        Ok(images)
    }

    /// What is about to tag, for the log: the open-set embeddings in use, the model, its input and
    /// tags, where the thresholds come from and the absent slots flagged.
    fn model_summary(
        model: &LoadedModel,
        labels: &SlotLabels,
        manifest: Option<&SlotManifest>,
        open_set: Option<&OpenSet>,
    ) -> String {
        let mut text = String::new();
        if let Some(o) = open_set {
            text.push_str(&format!(
                "open set: label embeddings {} ({}) in place of the checkpoint's\n",
                o.embeddings.path.display(),
                o.layout.describe()
            ));
        }
        let size = model.input_size();
        text.push_str(&format!(
            "model {} ({size}×{size} input, {} tags); thresholds: {}",
            model.config.name, model.config.num_class, labels.thresholds.source,
        ));
        if let Some(m) = manifest {
            let absent = m.absent_slots().len();
            text.push_str(&format!("; {absent} absent slots flagged (manifest)"));
        }
        text + "\n"
    }

    /// Scores `images` batch by batch (the next one decoded while this one is scored) into `out`
    /// and `scores`. Returns how many were tagged and how many unreadable ones `--keep-going`
    /// passed over; without it the first unreadable image is the error.
    fn tag_images(
        args: &TagArgs,
        model: &LoadedModel,
        labels: &SlotLabels,
        images: &[(PathBuf, String)],
        out: &mut Output,
        mut scores: Option<&mut ScoreWriter>,
        pb: &indicatif::ProgressBar,
    ) -> anyhow::Result<(usize, usize)> {
        let (mut tagged, mut unreadable) = (0usize, 0usize);
        let (batch, ahead) = (args.batch_size, model.batches_ahead());
        model.score_files_ahead(images, |(p, _)| p, batch, ahead, |chunk, results| {
            for ((path, id), result) in chunk.iter().zip(results) {
                match result {
                    Ok(row) => {
                        let preds = labels.predictions(&row, args.top_k);
                        // generate_tag's strings hold every tag above its threshold, top-k or not.
                        let strings = match (args.format, args.top_k) {
                            (TagFormat::Json, Some(_)) => {
                                tag_strings(&labels.predictions(&row, None))
                            }
                            (TagFormat::Json, None) => tag_strings(&preds),
                            _ => Default::default(),
                        };
                        out.record(id, path, &preds, strings)?;
                        if let Some(s) = scores.as_deref_mut() {
                            s.push(id, &row)?;
                        }
                        tagged += 1;
                    }
                    Err(e) if args.keep_going => {
                        pb.suspend(|| eprintln!("skipped {}: {e}", path.display()));
                        unreadable += 1;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(
                            "an image could not be read (nothing written; --keep-going skips such images)",
                        ))
                    }
                }
                pb.inc(1);
            }
            anyhow::Ok(())
        })?;
        Ok((tagged, unreadable))
    }

    /// The per-image output and the score file: as given, or with `--shard` the shard's files in
    /// the folders given (`--out` is then required: N processes would write to one stdout).
    fn output_paths(
        args: &TagArgs,
        shard: Option<Shard>,
    ) -> anyhow::Result<(Option<PathBuf>, Option<PathBuf>)> {
        let Some(shard) = shard else {
            return Ok((args.out.clone(), args.scores.clone()));
        };
        let Some(out) = &args.out else {
            anyhow::bail!(
                "--shard needs --out DIR: each shard writes its tags into that folder (N processes would write to one stdout)"
            );
        };
        let tags = tag_set(args.format);
        let out = super::super::launcher::shard_file(out, &tags, shard, "--out")?;
        let scores = args
            .scores
            .as_deref()
            .map(|dir| super::super::launcher::shard_file(dir, &SCORE_SET, shard, "--scores"))
            .transpose()?;
        Ok((Some(out), scores))
    }

    /// The folders of a shard's tag and score files, made once the run's inputs have passed.
    fn make_shard_folders(
        args: &TagArgs,
        out: Option<&Path>,
        scores: Option<&Path>,
    ) -> anyhow::Result<()> {
        use super::super::launcher::make_shard_folder;
        if let Some(out) = out {
            make_shard_folder(out, &tag_set(args.format), "--out")?;
        }
        if let Some(scores) = scores {
            make_shard_folder(scores, &SCORE_SET, "--scores")?;
        }
        Ok(())
    }

    /// The files of a tag set in `format`: `tags-IIIII-of-NNNNN.jsonl` (`.csv`, `.txt`).
    fn tag_set(format: TagFormat) -> SetNaming {
        SetNaming {
            prefix: "tags",
            ext: match format {
                TagFormat::Json => "jsonl",
                TagFormat::Csv => "csv",
                TagFormat::Table => "txt",
            },
            what: "tag shard",
            made_by: "tagfix tag --shard I/N --out DIR",
        }
    }

    /// The device: `cuda` is the process's local GPU under a launcher (torchrun's LOCAL_RANK,
    /// srun's SLURM_LOCALID), as `tagfix teacher` takes it, else device 0.
    fn device_of(kind: DeviceKind) -> anyhow::Result<tch::Device> {
        let device = tagfix::train::run::device_of(kind)?;
        if device == tch::Device::Cpu {
            return Ok(device);
        }
        let local = local_gpu(|name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
        let Some((index, from)) = local else {
            return Ok(device);
        };
        let count = tch::Cuda::device_count();
        anyhow::ensure!(
            i64::from(index) < count,
            "--device cuda: this process would take cuda:{index} ({from}), but {count} CUDA device(s) are visible"
        );
        tracing::info!("--device cuda: this process takes cuda:{index} ({from})");
        Ok(tch::Device::Cuda(index as usize))
    }

    /// Reads every image's header first, so a missing or unreadable file fails before any output;
    /// with `keep_going` such files are reported and dropped. Returns how many were dropped.
    fn probe_all(images: &mut Vec<(PathBuf, String)>, keep_going: bool) -> anyhow::Result<usize> {
        let failures: Vec<(usize, String)> = images
            .par_iter()
            .enumerate()
            .filter_map(|(i, (p, _))| tagfix::imaging::probe(p).err().map(|e| (i, e.to_string())))
            .collect();
        if failures.is_empty() {
            return Ok(0);
        }
        if !keep_going {
            let listed: Vec<&str> = failures.iter().take(5).map(|(_, e)| e.as_str()).collect();
            anyhow::bail!(
                "{} of {} images cannot be read (nothing written; --keep-going skips them):\n  {}",
                failures.len(),
                images.len(),
                listed.join("\n  ")
            );
        }
        for (_, e) in &failures {
            eprintln!("skipped {e}");
        }
        let bad: std::collections::HashSet<usize> = failures.iter().map(|(i, _)| *i).collect();
        let mut i = 0;
        images.retain(|_| {
            i += 1;
            !bad.contains(&(i - 1))
        });
        Ok(bad.len())
    }

    /// One JSON Lines record (scores and thresholds keep their f32 digits).
    #[derive(serde::Serialize)]
    struct JsonRecord<'a> {
        image: &'a str,
        path: &'a Path,
        /// Best first.
        tags: &'a [Prediction],
        /// `generate_tag`'s strings: every tag above its threshold, slot order, " | ".
        tag_output: String,
        tag_output_chinese: Option<String>,
    }

    /// The per-image output: stdout, or a temporary file renamed over `--out` at the end.
    struct Output {
        format: TagFormat,
        w: Box<dyn Write>,
        tmp: Option<(tempfile::NamedTempFile, PathBuf)>,
        csv_header: bool,
    }

    impl Output {
        fn create(path: Option<&Path>, format: TagFormat) -> anyhow::Result<Self> {
            let (w, tmp): (Box<dyn Write>, _) = match path {
                Some(p) => {
                    let tmp = tagfix::fsutil::output_temp(p)?;
                    let file = tmp.as_file().try_clone()?;
                    (
                        Box::new(std::io::BufWriter::new(file)),
                        Some((tmp, p.to_path_buf())),
                    )
                }
                None => (Box::new(std::io::stdout().lock()), None),
            };
            Ok(Output {
                format,
                w,
                tmp,
                csv_header: true,
            })
        }

        fn record(
            &mut self,
            id: &str,
            path: &Path,
            preds: &[Prediction],
            (en, zh): (String, Option<String>),
        ) -> anyhow::Result<()> {
            match self.format {
                TagFormat::Json => {
                    let rec = JsonRecord {
                        image: id,
                        path,
                        tags: preds,
                        tag_output: en,
                        tag_output_chinese: zh,
                    };
                    serde_json::to_writer(&mut self.w, &rec)?;
                    writeln!(self.w)?;
                }
                TagFormat::Csv => {
                    let mut w = csv::WriterBuilder::new()
                        .has_headers(false)
                        .from_writer(&mut self.w);
                    if std::mem::take(&mut self.csv_header) {
                        w.write_record([
                            "image",
                            "slot",
                            "tag",
                            "zh",
                            "score",
                            "threshold",
                            "above",
                            "absent",
                        ])?;
                    }
                    for p in preds {
                        w.write_record([
                            id,
                            &p.slot.to_string(),
                            &p.tag,
                            p.zh.as_deref().unwrap_or(""),
                            &p.score.to_string(),
                            &p.threshold.to_string(),
                            &p.above.to_string(),
                            &p.absent.to_string(),
                        ])?;
                    }
                    w.flush()?;
                }
                TagFormat::Table => {
                    writeln!(self.w, "{id}: {} tags", preds.len())?;
                    for p in preds {
                        writeln!(
                            self.w,
                            "  {:.4}  {}{}  (threshold {}{}){}",
                            p.score,
                            p.tag,
                            p.zh.as_deref()
                                .map(|z| format!(" / {}", z.trim_end()))
                                .unwrap_or_default(),
                            p.threshold,
                            if p.above { "" } else { ", below" },
                            if p.absent {
                                "  [absent slot: regenerated embedding]"
                            } else {
                                ""
                            }
                        )?;
                    }
                }
            }
            Ok(())
        }

        fn finish(mut self) -> anyhow::Result<()> {
            self.w.flush()?;
            drop(self.w);
            if let Some((tmp, path)) = self.tmp {
                tagfix::fsutil::persist(tmp, &path)?;
            }
            Ok(())
        }
    }
}
