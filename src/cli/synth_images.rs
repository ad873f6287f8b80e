//! `tagfix synth-images`: a synthetic training set for smoke runs and tests.

use super::args::SynthImagesArgs;
use super::ExitStatus;

#[cfg(not(feature = "train"))]
pub fn run(_args: SynthImagesArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!("this tagfix was built without the `train` feature: rebuild with `cargo build --release --features train`")
}

#[cfg(feature = "train")]
pub fn run(args: SynthImagesArgs) -> anyhow::Result<ExitStatus> {
    use tagfix::train::data::synth::{generate, SynthOptions};
    let ds = generate(
        &SynthOptions {
            count: args.count,
            size: args.size,
            seed: args.seed,
            descriptions: args.descriptions,
            vocab: args.vocab.clone(),
        },
        &args.out,
    )?;
    println!(
        "vocabulary:   {} ({} tags)",
        ds.vocabulary.display(),
        ds.vocabulary_len
    );
    println!("images:       {}", ds.image_root.display());
    println!("annotations:  {}", ds.annotations.display());
    println!(
        "manifest:     {} ({} absent slots: {})",
        ds.manifest.display(),
        ds.absent_slots.len(),
        tagfix::vocab::slot_list::format(&ds.absent_slots)
    );
    println!("label embed:  {}", ds.label_embed.display());
    println!("teacher:      {}", ds.teacher.display());
    Ok(ExitStatus::Success)
}
