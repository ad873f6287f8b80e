//! `tagfix eval`: scores on a benchmark -> mAP, P/R/F1 at per-class thresholds.

use super::args::{EvalArgs, EvalFormat};
use super::ExitStatus;
use anyhow::Context;
use tagfix::eval::{evaluate, output, read_scores, Benchmark, TagMapping, Thresholds};
use tagfix::manifest::SlotManifest;
use tagfix::vocab::Vocabulary;

pub fn run(args: EvalArgs) -> anyhow::Result<ExitStatus> {
    let vocab = Vocabulary::load(&args.vocab)
        .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
    let bench = match (&args.benchmark, &args.taglist, &args.annots) {
        (Some(dir), _, _) => Benchmark::from_dir(dir)?,
        (None, Some(t), Some(a)) => Benchmark::load(t, a)?,
        _ => anyhow::bail!("give --benchmark DIR or --taglist FILE --annots FILE"),
    };
    if let Some(out) = &args.out {
        let mut inputs = vec![
            args.scores.as_path(),
            &bench.taglist_path,
            &bench.annots_path,
            &vocab.path,
        ];
        inputs.extend(args.thresholds.as_deref());
        inputs.extend(args.manifest.as_deref());
        tagfix::fsutil::check_outputs([out.as_path()], &inputs)?;
    }
    let thresholds = match (&args.thresholds, args.threshold) {
        (Some(path), _) => Thresholds::read(path, vocab.len())?,
        (None, Some(v)) => Thresholds::from_flag(v, vocab.len())?,
        (None, None) => Thresholds::from_preset(&vocab)
            .transpose()?
            .ok_or_else(|| {
                anyhow::anyhow!(
                "vocabulary {} has no threshold sidecar: pass --thresholds FILE or --threshold P",
                vocab.path.display()
            )
            })?,
    };
    let manifest = match &args.manifest {
        Some(path) => {
            let m = SlotManifest::read(path)?;
            m.check_vocabulary(&vocab, path)?;
            Some(m)
        }
        None => None,
    };
    let mapping = TagMapping::new(&bench.tags, &vocab);
    let unmapped = mapping.unmapped();
    if !unmapped.is_empty() {
        tracing::warn!(
            "{} of {} benchmark tags match no slot of {} and are not evaluated: {}",
            unmapped.len(),
            bench.tags.len(),
            vocab.path.display(),
            unmapped.join(", ")
        );
    }
    let scores = read_scores(&args.scores, &bench, &vocab, &mapping)?;
    let report = evaluate(
        &bench,
        &vocab,
        &mapping,
        &scores,
        &thresholds,
        manifest.as_ref(),
    )?;
    let write = |w: &mut dyn std::io::Write| match args.format {
        EvalFormat::Table => output::write_table(w, &report, args.per_class),
        EvalFormat::Json => output::write_json(w, &report),
        EvalFormat::Csv => output::write_csv(w, &report),
    };
    match &args.out {
        Some(path) => tagfix::fsutil::write_atomic(path, write)?,
        None => write(&mut std::io::stdout().lock())?,
    }
    Ok(ExitStatus::Success)
}
