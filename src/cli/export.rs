//! `tagfix export`: a checkpoint as the official code reads it (`{"model": state_dict}` .pth).

use super::args::ExportArgs;
use super::ExitStatus;

#[cfg(not(feature = "train"))]
pub fn run(_args: ExportArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("this tagfix was built without the `train` feature: rebuild with `cargo build --release --features train`")
}

#[cfg(feature = "train")]
pub fn run(args: ExportArgs) -> anyhow::Result<ExitStatus> {
    use anyhow::Context;
    let num_class = match &args.vocab {
        Some(spec) => Some(
            tagfix::vocab::Vocabulary::load(spec)
                .with_context(|| format!("loading vocabulary `{spec}`"))?
                .len(),
        ),
        None => None,
    };
    let (summary, report) = tagfix::train::export::export(
        &args.checkpoint,
        &args.output,
        args.model.as_deref(),
        num_class,
        args.label_embed_only,
    )
    .with_context(|| {
        format!(
            "exporting {} to {}",
            args.checkpoint.display(),
            args.output.display()
        )
    })?;
    if args.json {
        let v = serde_json::json!({"export": summary, "load_report": report});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprint!("{}", report.to_table());
        println!(
            "exported {} (model {}) -> {}\n  {}: {} tensors ({} parameters, {} buffers), {} bytes; read back identical",
            summary.checkpoint,
            summary.model,
            summary.output,
            summary.content,
            summary.tensors,
            summary.parameters,
            summary.buffers,
            summary.bytes
        );
    }
    Ok(ExitStatus::Success)
}
