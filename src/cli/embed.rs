//! `tagfix embed`: regenerate tag embeddings through ONNX Runtime and patch them into a base file.

use super::args::{EmbedArgs, GlobalArgs};
use super::ExitStatus;

#[cfg(not(feature = "embed"))]
pub fn run(_args: EmbedArgs, _global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!(
        "this tagfix was built without the `embed` feature (ONNX Runtime); rebuild with `cargo build --features embed`"
    )
}

#[cfg(feature = "embed")]
pub fn run(args: EmbedArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    use anyhow::Context;
    use tagfix::embed::descriptor::{resolve_model_dir, ModelDescriptor};
    use tagfix::embed::encoder::TextEncoder;
    use tagfix::embed::output::check_output_path;
    use tagfix::embed::patch::check_base;
    use tagfix::embed::pipeline::{self, EmbedRequest};
    use tagfix::embed::plan::{select, SelectionRequest, SlotSelection};
    use tagfix::embed::recipe::{Descriptions, Recipe};
    use tagfix::fsutil::sha256_file;
    use tagfix::manifest::SlotManifest;
    use tagfix::tensors::EmbeddingFile;
    use tagfix::vocab::Vocabulary;

    let vocab = Vocabulary::load(&args.vocab)
        .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
    let manifest = match &args.manifest {
        Some(p) => {
            let m = SlotManifest::read(p)?;
            m.check_vocabulary(&vocab, p)?;
            Some(m)
        }
        None => None,
    };
    let recipe = match &args.descriptions {
        Some(p) => Recipe::Descriptions(Descriptions::read(p)?),
        None => Recipe::parse(&args.recipe)?,
    };
    check_output_path(&args.out, args.control.is_some())?;
    let mut inputs: Vec<&std::path::Path> = vec![&vocab.path];
    inputs.extend(args.base.as_deref());
    inputs.extend(args.manifest.as_deref());
    inputs.extend(args.descriptions.as_deref());
    tagfix::fsutil::check_outputs([args.out.as_path()], &inputs)?;
    let base = match &args.base {
        Some(p) => {
            let file = EmbeddingFile::read(p, args.tensor.as_deref())?;
            let layout = check_base(&file, &vocab, recipe.rows_per_slot())?;
            tracing::info!("base {}: {} {}", p.display(), layout.describe(), file.dtype);
            Some((file, sha256_file(p)?))
        }
        None => None,
    };

    let SlotSelection {
        regenerate,
        control,
    } = select(&SelectionRequest {
        slot_count: vocab.len(),
        all: args.all,
        slots: args.slots.as_deref(),
        absent: args.absent,
        manifest: manifest.as_ref(),
        has_base: base.is_some(),
        control: args.control,
        seed: args.seed,
    })?;
    if regenerate.is_empty() {
        tracing::warn!("no slots to regenerate: the output rows equal the base");
    }

    let dir = resolve_model_dir(&args.model)?;
    let descriptor = ModelDescriptor::read_dir(&dir)?;
    let options = args.ort.encoder_options();
    let mut encoder = TextEncoder::load(descriptor, &options)?;

    let texts = ((regenerate.len() + control.len()) * recipe.texts_per_slot()) as u64;
    let progress = super::progress_bar(global, "embed: texts", texts, false);
    tracing::info!(
        "{} slots to regenerate, {} control slots, recipe {}, {} texts",
        regenerate.len(),
        control.len(),
        recipe.name(),
        texts
    );
    let request = EmbedRequest {
        vocab: &vocab,
        recipe: &recipe,
        regenerate,
        control,
        base: base.as_ref().map(|(f, sha)| (f, sha.clone())),
    };
    let started = std::time::Instant::now();
    let output = pipeline::run(&mut encoder, &request, &progress)?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tagfix::embed::write_output(&args.out, &output)?;
    let e = &output.embeddings;
    println!(
        "wrote {}: [{}, {}] {} — {} slots regenerated{}, {} control slots; {} texts in {:.1} s on {}",
        args.out.display(),
        e.rows,
        e.dim,
        e.dtype,
        output.provenance.regenerated_slots.len(),
        match &args.base {
            Some(b) => format!(" (other rows copied bit-identically from {})", b.display()),
            None => " (full file)".into(),
        },
        output.provenance.control_slots.len(),
        texts,
        seconds,
        encoder.provider
    );
    Ok(ExitStatus::Success)
}
