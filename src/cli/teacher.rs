//! `tagfix teacher`: the teacher file for `tagfix train --teacher FILE`, from RAM-format annotations,
//! an image root and two CLIP towers (ONNX Runtime).

use super::args::{GlobalArgs, TeacherArgs};
use super::ExitStatus;

#[cfg(not(feature = "embed"))]
pub fn run(_args: TeacherArgs, _global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    anyhow::bail!(
        "this tagfix was built without the `embed` feature (ONNX Runtime); rebuild with `cargo build --features embed`"
    )
}

#[cfg(feature = "embed")]
pub fn run(args: TeacherArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    use anyhow::Context;
    use tagfix::annotations::records::{ReadOptions, RecordSet};
    use tagfix::embed::descriptor::{resolve_model_dir, ModelDescriptor};
    use tagfix::embed::encoder::TextEncoder;
    use tagfix::teacher::image_encoder::ImageEncoder;
    use tagfix::teacher::produce::{write_teacher_file, TeacherRequest};
    use tagfix::teacher::{ImageDescriptor, TeacherError};
    use tagfix::Error;

    let shared = super::launcher::share_the_cores("ONNX Runtime", args.ort.threads.is_some())?;
    let shard = super::launcher::ShardGiven::resolve(args.shard)?;
    if !args.images.is_dir() {
        return Err(Error::from(TeacherError::ImageRoot {
            path: args.images.clone(),
        })
        .into());
    }
    let out = match &shard {
        Some(s) => super::launcher::shard_file(
            &args.out,
            &tagfix::teacher::shard::TEACHER_SET,
            s.shard,
            "--out",
        )?,
        None => args.out.clone(),
    };
    let inputs: Vec<&std::path::Path> = args.data.iter().map(|p| p.as_path()).collect();
    // A shard's folder is made once its inputs have passed (below).
    super::launcher::check_outputs([out.as_path()], &inputs, shard.is_some())?;
    let records = RecordSet::read_with(
        &args.data,
        ReadOptions {
            num_slots: None,
            captions: true,
        },
    )?;
    let mut opts = args.ort.encoder_options();
    if opts.threads.is_none() {
        opts.threads = shared;
    }
    if args.ort.device.gpu_without_index {
        // One process per GPU under torchrun or srun: each takes its local GPU, not all device 0.
        let local = tagfix::teacher::shard::local_gpu(|name| std::env::var(name).ok())
            .map_err(anyhow::Error::msg)?;
        if let Some((index, from)) = local {
            opts.device = tagfix::embed::Device::Cuda(index);
            tracing::info!("--device cuda: this process takes cuda:{index} ({from})");
        }
    }
    let mut image = ImageEncoder::load(ImageDescriptor::resolve(&args.image_model)?, &opts)
        .with_context(|| format!("loading the image tower `{}`", args.image_model))?;
    let text_dir = resolve_model_dir(&args.text_model)?;
    let mut text = TextEncoder::load(ModelDescriptor::read_dir(&text_dir)?, &opts)
        .with_context(|| format!("loading the text tower `{}`", args.text_model))?;
    let request = TeacherRequest {
        records: &records,
        image_root: &args.images,
        caption: args.caption.parse().map_err(anyhow::Error::msg)?,
        max_words: usize::try_from(args.max_words).unwrap_or(usize::MAX),
        image_batch: args.ort.batch_size as usize,
        decode_ahead: tagfix::prefetch::batches_ahead(image.cpu_threads),
        shard: shard.as_ref().map(|s| s.shard),
        unreadable: args.unreadable_images,
    };
    if shard.is_some() {
        super::launcher::make_shard_folder(&out, &tagfix::teacher::shard::TEACHER_SET, "--out")?;
    }
    let text_bar = super::progress_bar(global, "teacher: captions", 0, false);
    let image_bar = super::progress_bar(global, "teacher: images", 0, false);
    let written = write_teacher_file(&out, &mut text, &mut image, &request, &text_bar, &image_bar)?;
    let rows = written.rows;
    println!(
        "wrote {}: {rows} records × (image_features, text_features) [{rows}, {}]",
        out.display(),
        tagfix::teacher::TEACHER_DIM
    );
    if let Some(s) = &shard {
        println!(
            "  {}; `tagfix train --teacher {}` reads the set once all {} shards are there",
            s.describe("records", records.len()),
            args.out.display(),
            s.shard.count
        );
    }
    if request.unreadable == tagfix::train::config::UnreadableImages::Skip {
        println!(
            "  unreadable images skipped: {} (image rows of zeros, flagged in image_unreadable; each named above)",
            written.unreadable_images
        );
    }
    println!(
        "  image: {} on {}",
        image.descriptor.display_name(),
        image.provider
    );
    println!(
        "  text:  {} on {} (caption {})",
        text.descriptor.display_name(),
        text.provider,
        args.caption
    );
    Ok(ExitStatus::Success)
}
