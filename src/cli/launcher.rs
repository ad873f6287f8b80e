//! What a command started once per GPU by a launcher (torchrun, srun) takes of the machine: its
//! share of the cores and its shard's output file (`tagfix teacher`, `tagfix tag`).

use std::path::{Path, PathBuf};
use tagfix::share::shard::{SetNaming, Shard, ShardSpec};

/// Where a launcher runs several processes on this machine's cores (torchrun starts each on all of
/// them), each decodes with its share on rayon's threads; returns the share, for the model's own
/// threads (`engine`, named in the log) unless `threads_given`; `None` for a process alone, which
/// uses every core. Runs before anything starts rayon's pool.
pub fn share_the_cores(engine: &str, threads_given: bool) -> anyhow::Result<Option<usize>> {
    let Some((share, sharing)) = tagfix::train::config::shared_cores() else {
        return Ok(None);
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(share)
        .build_global()
        .map_err(|e| anyhow::anyhow!("starting {share} decoding threads: {e}"))?;
    tracing::info!(
        "{sharing} processes share this machine's cores: each decodes on {share} threads{}",
        match threads_given {
            false => format!(" and runs {engine} on {share}"),
            true => String::new(),
        }
    );
    Ok(Some(share))
}

/// Shard `shard`'s file of the set in folder `dir`, named as `naming` says; `flag` names the option
/// that gave `dir`, for the errors. The folder is checked here and made by [`make_shard_folder`] once
/// the inputs have passed, so a run refused at its inputs leaves no empty folder behind.
pub fn shard_file(
    dir: &Path,
    naming: &SetNaming,
    shard: Shard,
    flag: &str,
) -> anyhow::Result<PathBuf> {
    if dir.is_file() {
        anyhow::bail!(
            "{flag} {}: with --shard it is a folder, which gets {}, but a file is there",
            dir.display(),
            naming.file_name(shard)
        );
    }
    // The nearest part of the path that exists must be a folder for the rest to be made in it.
    let existing = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| std::fs::symlink_metadata(a).is_ok());
    if let Some(part) = existing.filter(|a| !a.is_dir()) {
        anyhow::bail!(
            "{flag} {}: with --shard it is a folder to be made, but {} is a file",
            dir.display(),
            part.display()
        );
    }
    Ok(dir.join(naming.file_name(shard)))
}

/// Makes the folder of a shard's file from [`shard_file`] (and the folders above it), if missing.
pub fn make_shard_folder(file: &Path, naming: &SetNaming, flag: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating the {}s' folder {} ({flag} with --shard names a folder)",
            naming.what,
            dir.display()
        )
    })
}

/// [`tagfix::fsutil::check_outputs`] before any work; for a shard run (`sharded`) only the outputs
/// whose folder exists: a shard's file in a folder not made yet (by [`make_shard_folder`], once the
/// inputs have passed) can neither replace an input nor meet another output there.
pub fn check_outputs<'a>(
    outputs: impl IntoIterator<Item = &'a Path>,
    inputs: &[&Path],
    sharded: bool,
) -> anyhow::Result<()> {
    let checked = outputs.into_iter().filter(|p| {
        !sharded
            || p.parent()
                .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
    });
    Ok(tagfix::fsutil::check_outputs(checked, inputs)?)
}

/// `--shard` resolved: the shard, and for `auto` the launcher's variables it came from.
pub struct ShardGiven {
    pub shard: Shard,
    pub from: Option<String>,
}

impl ShardGiven {
    /// `--shard` as given (`auto` read from the environment); `None` without it.
    pub fn resolve(spec: Option<ShardSpec>) -> anyhow::Result<Option<ShardGiven>> {
        let Some(spec) = spec else { return Ok(None) };
        let (shard, from) = spec
            .resolve(|name| std::env::var(name).ok())
            .map_err(anyhow::Error::msg)?;
        Ok(Some(ShardGiven { shard, from }))
    }

    /// `shard 2/3 (--shard auto: RANK=2, WORLD_SIZE=3): images 4..7 of 7`.
    pub fn describe(&self, items: &str, n: usize) -> String {
        let range = self.shard.range(n);
        let from = self
            .from
            .as_ref()
            .map(|vars| format!(" (--shard auto: {vars})"))
            .unwrap_or_default();
        format!(
            "shard {}{from}: {items} {}..{} of {n}",
            self.shard, range.start, range.end
        )
    }
}
