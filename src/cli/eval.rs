//! `tagfix eval`: scores on a benchmark -> mAP, P/R/F1 at per-class thresholds. The scores come
//! from a file, or with `--checkpoint` from the model, on one or more benchmarks.

use super::args::{EvalArgs, EvalFormat, GlobalArgs};
use super::ExitStatus;
use anyhow::Context;
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
    if let Some(out) = &args.out {
        let mut inputs = vec![vocab.path.as_path()];
        for b in &benches {
            inputs.extend([b.taglist_path.as_path(), b.annots_path.as_path()]);
        }
        inputs.extend(args.scores.as_deref());
        inputs.extend(args.checkpoint.as_deref());
        inputs.extend(args.thresholds.thresholds.as_deref());
        inputs.extend(args.manifest.as_deref());
        tagfix::fsutil::check_outputs([out.as_path()], &inputs)?;
    }
    let thresholds = args.thresholds.choose(&vocab, None)?;
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
    Ok(ExitStatus::Success)
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
    let model =
        tagfix::train::infer::load_model(ckpt, args.model.as_deref(), Some(vocab.len()), device)
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
        model.score_files_ahead(bench_paths, args.batch_size, ahead, |chunk, rows| {
            let mut full = Vec::with_capacity(chunk.len() * vocab.len());
            for row in rows {
                full.extend(row?);
            }
            let part = tagfix::eval::gather_columns(&full, vocab.len(), mapping)?;
            m.rows += part.rows;
            m.data.extend(part.data);
            pb.inc(chunk.len() as u64);
            anyhow::Ok(())
        })?;
        out.push(m);
    }
    pb.finish_and_clear();
    Ok(out)
}
