//! `tagfix eval`: scores on a benchmark -> mAP, P/R/F1 at per-class thresholds. The scores come
//! from a file, or with `--checkpoint` from the model, on one or more benchmarks.

use super::args::{EvalArgs, EvalFormat, GlobalArgs};
use super::ExitStatus;
use anyhow::Context;
use tagfix::eval::fit::{fit_thresholds, FittedThresholds, SlotColumn};
use tagfix::eval::{evaluate, output, read_scores, Benchmark, EvalReport, TagMapping};
use tagfix::manifest::SlotManifest;
use tagfix::vocab::Vocabulary;

pub fn run(args: EvalArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let vocab = Vocabulary::load(&args.vocab)
        .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
    let benches: Vec<Benchmark> = match (args.benchmark.as_slice(), &args.taglist, &args.annots) {
        ([], Some(t), Some(a)) => vec![Benchmark::load(t, a)?],
        ([], _, _) => anyhow::bail!("give --benchmark DIR or --taglist FILE --annots FILE"),
        (dirs, _, _) => dirs
            .iter()
            .map(|d| Benchmark::from_dir(d))
            .collect::<Result<_, _>>()?,
    };
    let outputs: Vec<&std::path::Path> = args
        .out
        .iter()
        .chain(&args.fit_thresholds)
        .map(|p| p.as_path())
        .collect();
    if !outputs.is_empty() {
        let mut inputs = vec![vocab.path.as_path()];
        for b in &benches {
            inputs.extend([b.taglist_path.as_path(), b.annots_path.as_path()]);
        }
        inputs.extend(args.scores.as_deref());
        inputs.extend(args.checkpoint.as_deref());
        inputs.extend(args.label_embed.as_deref());
        inputs.extend(args.thresholds.thresholds.as_deref());
        inputs.extend(args.manifest.as_deref());
        tagfix::fsutil::check_outputs(outputs, &inputs)?;
    }
    let thresholds = args
        .thresholds
        .choose(&vocab, None, args.label_embed.is_some())?;
    let manifest = SlotManifest::read_for(args.manifest.as_deref(), &vocab)?;
    let mappings: Vec<TagMapping> = benches
        .iter()
        .map(|b| {
            let mapping = TagMapping::new(&b.tags, &vocab);
            let unmapped = mapping.unmapped();
            if !unmapped.is_empty() {
                tracing::warn!(
                    "{}: {} of {} benchmark tags match no slot of {} and are not evaluated: {}",
                    b.name,
                    unmapped.len(),
                    b.tags.len(),
                    vocab.path.display(),
                    unmapped.join(", ")
                );
            }
            mapping
        })
        .collect();
    let scores = match (&args.scores, &args.checkpoint) {
        (Some(path), _) => {
            anyhow::ensure!(
                benches.len() == 1,
                "--scores evaluates one benchmark; several need --checkpoint"
            );
            vec![read_scores(path, &benches[0], &vocab, &mappings[0])?]
        }
        (None, Some(_)) => checkpoint_scores(&args, global, &benches, &vocab, &mappings)?,
        (None, None) => anyhow::bail!("give --scores FILE or --checkpoint CKPT"),
    };
    let reports: Vec<EvalReport> = benches
        .iter()
        .zip(&mappings)
        .zip(&scores)
        .map(|((b, m), s)| evaluate(b, &vocab, m, s, &thresholds, manifest.as_ref()))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        reports.len() == 1 || args.format != EvalFormat::Csv,
        "--format csv writes one benchmark; use table or json for several"
    );
    let write = |w: &mut dyn std::io::Write| match (args.format, reports.as_slice()) {
        (EvalFormat::Table, [r]) => output::write_table(w, r, args.per_class),
        (EvalFormat::Table, rs) => output::write_side_by_side(w, rs),
        (EvalFormat::Json, [r]) => output::write_json(w, r),
        (EvalFormat::Json, rs) => {
            serde_json::to_writer_pretty(&mut *w, rs)?;
            writeln!(w)
        }
        (EvalFormat::Csv, rs) => output::write_csv(w, &rs[0]),
    };
    match &args.out {
        Some(path) => tagfix::fsutil::write_atomic(path, write)?,
        None => write(&mut std::io::stdout().lock())?,
    }
    if let Some(path) = &args.fit_thresholds {
        let columns = slot_columns(&benches, &mappings, &scores);
        let fit = fit_thresholds(&columns, &thresholds);
        tagfix::fsutil::write_atomic(path, |w| {
            output::write_thresholds(w, &fit.thresholds.values)
        })?;
        if !global.quiet {
            eprintln!("{}", fit_summary(&fit, &vocab, manifest.as_ref(), path));
        }
    }
    Ok(ExitStatus::Success)
}

/// Each mapped slot's scores and targets over every benchmark's images, in slot order.
fn slot_columns(
    benches: &[Benchmark],
    mappings: &[TagMapping],
    scores: &[tagfix::eval::ScoreMatrix],
) -> Vec<(usize, SlotColumn)> {
    let mut columns: std::collections::BTreeMap<usize, SlotColumn> = Default::default();
    for ((bench, mapping), matrix) in benches.iter().zip(mappings).zip(scores) {
        for (col, (tag, slot)) in mapping.mapped().into_iter().enumerate() {
            let column = columns.entry(slot).or_default();
            column.scores.extend(matrix.column(col));
            column.targets.extend(bench.targets(tag));
        }
    }
    columns.into_iter().collect()
}

/// What `--fit-thresholds` did, in one paragraph.
fn fit_summary(
    fit: &FittedThresholds,
    vocab: &Vocabulary,
    manifest: Option<&SlotManifest>,
    path: &std::path::Path,
) -> String {
    let absent = manifest.map_or(String::new(), |m| {
        let n = fit
            .fitted
            .iter()
            .filter(|s| m.slots[s.slot].status == tagfix::manifest::SlotStatus::Absent)
            .count();
        format!(" ({n} of them absent from the training data)")
    });
    let kept = vocab.len() - fit.fitted.len();
    let f1 = fit.mean_f1().map_or(String::new(), |(before, after)| {
        format!(
            "; mean F1 of the fitted slots on these images {before:.4} → {after:.4} (in-sample: \
             check the file on other images with --thresholds)"
        )
    });
    format!(
        "wrote {}: thresholds of {} slots fitted{absent}, {kept} kept ({} mapped without a positive \
         image it can catch){f1}",
        path.display(),
        fit.fitted.len(),
        fit.unfitted.len()
    )
}

#[cfg(not(feature = "train"))]
fn checkpoint_scores(
    _args: &EvalArgs,
    _global: &GlobalArgs,
    _benches: &[Benchmark],
    _vocab: &Vocabulary,
    _mappings: &[TagMapping],
) -> anyhow::Result<Vec<tagfix::eval::ScoreMatrix>> {
    anyhow::bail!("--checkpoint needs the `train` feature: rebuild with `cargo build --release --features train`")
}

/// Scores every benchmark's images with the checkpoint (RAM's inference transform, as `tag`).
#[cfg(feature = "train")]
fn checkpoint_scores(
    args: &EvalArgs,
    global: &GlobalArgs,
    benches: &[Benchmark],
    vocab: &Vocabulary,
    mappings: &[TagMapping],
) -> anyhow::Result<Vec<tagfix::eval::ScoreMatrix>> {
    use rayon::prelude::*;
    use std::path::PathBuf;
    let ckpt = args.checkpoint.as_ref().expect("checked by the caller");
    let open_set = args
        .label_embed
        .as_deref()
        .map(|p| tagfix::train::infer::OpenSet::read(p, vocab))
        .transpose()?;
    let roots: Vec<PathBuf> = match args.images.len() {
        0 => benches
            .iter()
            .map(|b| {
                b.annots_path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("imgs")
            })
            .collect(),
        1 => vec![args.images[0].clone(); benches.len()],
        n if n == benches.len() => args.images.clone(),
        n => anyhow::bail!(
            "{n} --images for {} benchmarks: give one for all, or one per --benchmark",
            benches.len()
        ),
    };
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    // Every image must be readable before the model loads.
    let paths: Vec<Vec<PathBuf>> = benches
        .iter()
        .zip(&roots)
        .map(|(b, root)| {
            let paths: Vec<PathBuf> = (0..b.images.len()).map(|i| b.image_path(root, i)).collect();
            let failures: Vec<String> = paths
                .par_iter()
                .filter_map(|p| tagfix::imaging::probe(p).err().map(|e| e.to_string()))
                .collect();
            anyhow::ensure!(
                failures.is_empty(),
                "{}: {} of {} images cannot be read under {}, e.g. {}",
                b.name,
                failures.len(),
                paths.len(),
                root.display(),
                failures.first().map(String::as_str).unwrap_or("")
            );
            Ok(paths)
        })
        .collect::<anyhow::Result<_>>()?;
    tagfix::train::run::set_torch_threads(args.threads);
    let device = tagfix::train::run::device_of(args.device)?;
    let model = tagfix::train::infer::load_model(
        ckpt,
        args.model.as_deref(),
        Some(vocab.len()),
        open_set.as_ref(),
        device,
    )
    .with_context(|| format!("loading {}", ckpt.display()))?;
    if !global.quiet {
        eprint!("{}", model.report.to_table());
    }
    let total: usize = paths.iter().map(Vec::len).sum();
    let pb = super::progress_bar(global, "eval: images", total as u64, false);
    let mut out = Vec::new();
    for (bench_paths, mapping) in paths.iter().zip(mappings) {
        // Only the benchmark's columns are kept, batch by batch.
        let mut m = tagfix::eval::ScoreMatrix::zeros(0, mapping.mapped().len());
        // The next batch is decoded while this one is scored.
        let ahead = model.batches_ahead();
        let batch = args.batch_size;
        model.score_files_ahead(
            bench_paths,
            PathBuf::as_path,
            batch,
            ahead,
            |chunk, rows| {
                let mut full = Vec::with_capacity(chunk.len() * vocab.len());
                for row in rows {
                    full.extend(row?);
                }
                let part = tagfix::eval::gather_columns(&full, vocab.len(), mapping)?;
                m.rows += part.rows;
                m.data.extend(part.data);
                pb.inc(chunk.len() as u64);
                anyhow::Ok(())
            },
        )?;
        out.push(m);
    }
    pb.finish_and_clear();
    Ok(out)
}
