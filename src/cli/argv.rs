//! Typed subcommand arguments written back as the command line that parses to them, so `repair`
//! can print each step it ran as a line a user can paste into a shell.
//!
//! One definition per flag: the flag names, defaults and how several values are given (one flag
//! with many values, a delimiter, or the flag repeated) come from the clap definitions in
//! [`super::args`]; the fields come from an exhaustive destructuring ([`write_fields!`]), so a field
//! added, renamed or retyped without being written here fails to compile.

use super::args::{
    CheckArgs, CheckModeArg, DiffArgs, DistArgs, EmbedArgs, OrtArgs, OutputFormat, SynthArgs,
    SynthImagesArgs, TrainArgs,
};
use clap::ValueEnum;
use std::path::PathBuf;
use tagfix::consistency::policy::PolicyFlags;
use tagfix::train::config::TrainFlags;

/// Arguments of one subcommand that can be written back as its command line.
pub trait ToArgv: clap::Args {
    /// The subcommand's name on the command line.
    const NAME: &'static str;

    /// Writes every field that differs from what giving no flag would produce.
    fn write_args(&self, w: &mut ArgvWriter);

    /// `[NAME, --flag, value, ...]`.
    fn to_argv(&self) -> Vec<String> {
        let mut w = ArgvWriter::new::<Self>(Self::NAME);
        self.write_args(&mut w);
        w.argv
    }

    /// `tagfix NAME --flag value ...`, each word shell-quoted.
    fn command_line(&self) -> String {
        let argv = self.to_argv();
        let words = std::iter::once("tagfix").chain(argv.iter().map(String::as_str));
        // Only a NUL byte cannot be quoted, and no argument (a Rust string or a Unix path) holds one.
        shlex::try_join(words).unwrap_or_else(|_| format!("tagfix {}", argv.join(" ")))
    }
}

/// The argv being built, with the subcommand's clap definition to look flags up in.
pub struct ArgvWriter {
    command: clap::Command,
    argv: Vec<String>,
}

/// What one field contributes to the command line.
pub enum Given {
    /// Nothing: `None`, an empty list or a `false` switch.
    Absent,
    /// A switch without a value (`--keep-going`).
    Switch,
    /// One or more values.
    Values(Vec<String>),
}

impl ArgvWriter {
    fn new<A: clap::Args>(name: &'static str) -> Self {
        ArgvWriter {
            command: A::augment_args(clap::Command::new(name)),
            argv: vec![name.to_string()],
        }
    }

    /// Writes the field `id` (clap's id of an argument is its field's name).
    pub fn put(&mut self, id: &str, value: &impl FlagValue) {
        let Some(arg) = self.command.get_arguments().find(|a| a.get_id() == id) else {
            debug_assert!(false, "`{id}` is no argument of `{}`", self.argv[0]);
            return;
        };
        let flag = arg.get_long().map(|l| format!("--{l}"));
        let values = match value.given() {
            Given::Absent => return,
            Given::Switch => {
                self.argv.extend(flag);
                return;
            }
            Given::Values(v) => v,
        };
        let defaults: Vec<Option<&str>> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_str())
            .collect();
        if defaults == values.iter().map(|v| Some(v.as_str())).collect::<Vec<_>>() {
            return;
        }
        let many = arg.get_num_args().is_some_and(|r| r.max_values() > 1);
        // A value that looks like a flag (a file `-x.json`) is only read as a value after `=`.
        let hyphen = values.iter().any(|v| v.len() > 1 && v.starts_with('-'));
        match (flag, arg.get_value_delimiter()) {
            (None, _) => self.argv.extend(values),
            (Some(flag), Some(d)) => self.push(flag, values.join(&d.to_string()), hyphen),
            (Some(flag), None) if many && !hyphen => {
                self.argv.push(flag);
                self.argv.extend(values);
            }
            (Some(flag), None) => {
                for v in values {
                    self.push(flag.clone(), v, hyphen);
                }
            }
        }
    }

    /// `--flag value`, or `--flag=value`.
    fn push(&mut self, flag: String, value: String, joined: bool) {
        if joined {
            self.argv.push(format!("{flag}={value}"));
        } else {
            self.argv.extend([flag, value]);
        }
    }
}

/// A field's value(s) as the command line spells them.
pub trait FlagValue {
    fn given(&self) -> Given;
}

/// One value as its flag's value parser reads it back.
pub trait ArgValue {
    fn arg_value(&self) -> String;
}

impl FlagValue for bool {
    fn given(&self) -> Given {
        if *self {
            Given::Switch
        } else {
            Given::Absent
        }
    }
}

impl<T: ArgValue> FlagValue for T {
    fn given(&self) -> Given {
        Given::Values(vec![self.arg_value()])
    }
}

impl<T: ArgValue> FlagValue for Option<T> {
    fn given(&self) -> Given {
        self.as_ref()
            .map_or(Given::Absent, |v| Given::Values(vec![v.arg_value()]))
    }
}

impl<T: ArgValue> FlagValue for Vec<T> {
    fn given(&self) -> Given {
        if self.is_empty() {
            return Given::Absent;
        }
        Given::Values(self.iter().map(ArgValue::arg_value).collect())
    }
}

impl<T: ArgValue> FlagValue for Option<Vec<T>> {
    fn given(&self) -> Given {
        self.as_ref().map_or(Given::Absent, |v| v.given())
    }
}

/// `ArgValue` for types whose value parser reads their `Display`.
macro_rules! by_display {
    ($($t:ty),* $(,)?) => {$(
        impl ArgValue for $t {
            fn arg_value(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

/// The same for clap `ValueEnum`s: their possible value's name.
macro_rules! by_value_enum {
    ($($t:ty),* $(,)?) => {$(
        impl ArgValue for $t {
            fn arg_value(&self) -> String {
                self.to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            }
        }
    )*};
}

/// The same for enums whose flag takes their serde name (`cpu`, `bf16`).
macro_rules! by_serde_name {
    ($($t:ty),* $(,)?) => {$(
        impl ArgValue for $t {
            fn arg_value(&self) -> String {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => s,
                    _ => String::new(),
                }
            }
        }
    )*};
}

by_display!(
    String,
    u16,
    u32,
    u64,
    usize,
    f64,
    super::args::DeviceArg,
    tagfix::train::config::AbsentPolicy,
    tagfix::train::config::CheckpointEvery,
    tagfix::train::config::MicroBatchSize,
);
by_value_enum!(
    OutputFormat,
    CheckModeArg,
    tagfix::consistency::SearchChoice,
    tagfix::report::check::CheckFormat,
    tagfix::train::config::LossBalance,
    tagfix::train::config::Schedule,
    tagfix::train::config::Stage,
    tagfix::train::config::ImageCheck,
    tagfix::train::config::UnreadableImages,
    tagfix::train::dist::DistBackend,
);
by_serde_name!(
    tagfix::train::config::DeviceKind,
    tagfix::train::config::Precision,
    tagfix::train::config::GradComm,
    tagfix::train::config::GradSync
);

/// The same for types spelled by a function (`|value| spelling`).
macro_rules! spelled {
    ($($t:ty => $spell:expr),* $(,)?) => {$(
        impl ArgValue for $t {
            fn arg_value(&self) -> String {
                let spell: fn(&$t) -> String = $spell;
                spell(self)
            }
        }
    )*};
}

spelled!(
    PathBuf => |p| p.to_string_lossy().into_owned(),
    tagfix::diff::Check => |c| c.name().to_string(),
    tagfix::embed::plan::ControlSpec => |c| match c {
        tagfix::embed::plan::ControlSpec::Count(n) => n.to_string(),
        tagfix::embed::plan::ControlSpec::All => "all".to_string(),
    },
    // Every term, so the flag means the same whatever the defaults of the terms left out.
    tagfix::train::config::LossWeights => |w| {
        let tagfix::train::config::LossWeights { tag, align, dis } = w;
        format!("tag={tag},align={align},dis={dis}")
    },
    // `diff --sidecar NAME=FILE`, as `parse_sidecar` reads it.
    (String, PathBuf) => |(name, file)| format!("{name}={}", file.to_string_lossy()),
);

/// Writes the fields of `$value` (a `$ty`, destructured exhaustively) as flags; `[flatten]` marks
/// a flattened argument struct, written through its own [`WriteArgs`].
macro_rules! write_fields {
    (@one $w:expr, $field:ident) => {
        $w.put(stringify!($field), $field)
    };
    (@one $w:expr, $field:ident [flatten]) => {
        WriteArgs::write_args($field, $w)
    };
    ($w:expr, $ty:ident { $($field:ident $([$flatten:ident])?),* $(,)? } = $value:expr) => {{
        let $ty { $($field),* } = $value;
        $(write_fields!(@one $w, $field $([$flatten])?);)*
    }};
}

/// Argument structs flattened into a subcommand's (`#[command(flatten)]`).
pub trait WriteArgs {
    fn write_args(&self, w: &mut ArgvWriter);
}

impl WriteArgs for DistArgs {
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            DistArgs {
                nproc_per_node,
                dist_backend,
                dist_timeout,
                bucket_cap_mb
            } = self
        );
    }
}

impl WriteArgs for OrtArgs {
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            OrtArgs {
                device,
                batch_size,
                threads,
                ort_lib
            } = self
        );
    }
}

impl WriteArgs for PolicyFlags {
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            PolicyFlags {
                k,
                also_k,
                min_cosine,
                min_knn_overlap,
                min_slot_knn_overlap,
                max_changed_rows,
                max_mean_shift,
                max_norm_deviation,
                min_trusted_share
            } = self
        );
    }
}

impl WriteArgs for TrainFlags {
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            TrainFlags {
                model,
                absent,
                loss_weights,
                loss_balance,
                balance_steps,
                batch_size,
                micro_batch_size,
                max_steps,
                init_lr,
                schedule,
                lr_scale_linear,
                grad_clip,
                freeze,
                stage,
                device,
                precision,
                tf32,
                grad_comm,
                grad_sync,
                shard_optimizer,
                seed,
                workers,
                threads,
                check_images,
                unreadable_images,
                checkpoint_every,
                keep_checkpoints,
                val_every,
                val_max_images,
                no_random_augment
            } = self
        );
    }
}

impl ToArgv for SynthArgs {
    const NAME: &'static str = "synth";
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            SynthArgs {
                vocab,
                records,
                absent,
                absent_slots,
                seed,
                out,
                jsonl,
                gzip,
                zipf,
                json
            } = self
        );
    }
}

impl ToArgv for SynthImagesArgs {
    const NAME: &'static str = "synth-images";
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            SynthImagesArgs {
                out,
                count,
                size,
                seed,
                descriptions,
                vocab
            } = self
        );
    }
}

impl ToArgv for DiffArgs {
    const NAME: &'static str = "diff";
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            DiffArgs {
                vocab,
                data,
                tags,
                sidecars,
                no_preset_sidecars,
                format,
                out,
                report,
                fail_on,
                keep_going,
                rarest,
                max_problems
            } = self
        );
    }
}

impl ToArgv for EmbedArgs {
    const NAME: &'static str = "embed";
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(w, EmbedArgs {
            vocab, model, manifest, absent, slots, all, recipe, descriptions, base, tensor, out,
            ort [flatten], control, seed
        } = self);
    }
}

impl ToArgv for CheckArgs {
    const NAME: &'static str = "check";
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            CheckArgs {
                baseline,
                candidate,
                mode,
                vocab,
                slots,
                policy,
                thresholds[flatten],
                search,
                hnsw_ef,
                hnsw_m,
                hnsw_ef_construction,
                recall_sample,
                tensor,
                format,
                out,
                json,
                junit,
                summary,
                plot
            } = self
        );
    }
}

impl ToArgv for TrainArgs {
    const NAME: &'static str = "train";
    fn write_args(&self, w: &mut ArgvWriter) {
        write_fields!(
            w,
            TrainArgs {
                config,
                data,
                images,
                manifest,
                label_embed,
                teacher,
                teacher_image_model,
                teacher_text_model,
                init,
                vocab,
                allow_random_encoder,
                settings[flatten],
                val_data,
                val_images,
                val_thresholds,
                plot,
                set,
                resume,
                auto_resume,
                out,
                json,
                dry_run,
                dist [flatten]
            } = self
        );
    }
}

/// The arguments of a subcommand given no flag at all: clap's defaults, for argument structs
/// without a required flag (`train`), so a caller sets only the fields it means.
pub fn unset<A: clap::Args + clap::FromArgMatches>(name: &'static str) -> clap::error::Result<A> {
    let matches = A::augment_args(clap::Command::new(name)).try_get_matches_from([name])?;
    A::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    fn parse(words: &[&str]) -> Command {
        let argv = std::iter::once("tagfix").chain(words.iter().copied());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{words:?}: {e}"))
            .command
    }

    /// The command line of parsed arguments, and the arguments as `Debug` shows them.
    fn written(command: Command) -> (String, String) {
        match command {
            Command::Synth(a) => (a.command_line(), format!("{a:?}")),
            Command::SynthImages(a) => (a.command_line(), format!("{a:?}")),
            Command::Diff(a) => (a.command_line(), format!("{a:?}")),
            Command::Embed(a) => (a.command_line(), format!("{a:?}")),
            Command::Check(a) => (a.command_line(), format!("{a:?}")),
            Command::Train(a) => (a.command_line(), format!("{a:?}")),
            other => panic!("no command line for {other:?}"),
        }
    }

    /// Parses `words`, writes the arguments back and parses that line: both parses must agree.
    fn round_trip(words: &[&str]) -> String {
        let (line, back) = written(parse(words));
        let split = shlex::split(&line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
        assert_eq!(split[0], "tagfix", "{line}");
        let words: Vec<&str> = split[1..].iter().map(String::as_str).collect();
        assert_eq!(written(parse(&words)).1, back, "{line}");
        line
    }

    #[test]
    fn every_kind_of_flag_writes_back_to_the_same_arguments() {
        round_trip(&[
            "synth",
            "--vocab",
            "my tags.txt",
            "--records",
            "7",
            "--absent-slots",
            "3,5-9",
            "--seed",
            "2",
            "--out",
            "-",
            "--jsonl",
            "--gzip",
            "--zipf",
            "1.25",
            "--json",
        ]);
        round_trip(&[
            "synth-images",
            "--out",
            "it's here",
            "--count",
            "9",
            "--size",
            "32",
            "--vocab",
            "ram",
        ]);
        round_trip(&[
            "diff",
            "--data",
            "a b.json",
            "c.jsonl.gz",
            "--tags",
            "$HOME/t.txt",
            "--sidecar",
            "zh=z h.txt",
            "--sidecar",
            "threshold=t.txt",
            "--no-preset-sidecars",
            "--format",
            "csv",
            "--out",
            "m.json",
            "--fail-on",
            "absent,unknown",
            "--keep-going",
            "--rarest",
            "3",
            "--max-problems",
            "0",
        ]);
        round_trip(&[
            "embed",
            "--vocab",
            "v.txt",
            "--model",
            "minilm",
            "--slots",
            "1,4-6",
            "--recipe",
            "templates:a \"b\".txt",
            "--base",
            "b.pth",
            "--tensor",
            "t",
            "--out",
            "o.npy",
            "--device",
            "cuda:1",
            "--batch-size",
            "3",
            "--threads",
            "2",
            "--ort-lib",
            "l.so",
            "--control",
            "all",
            "--seed",
            "9",
        ]);
        round_trip(&[
            "check",
            "--base",
            "a.npy",
            "--patched",
            "b.npy",
            "--mode",
            "drift",
            "--slots",
            "2",
            "--k",
            "4",
            "--also-k",
            "2,8",
            "--min-cosine",
            "0.5",
            "--max-changed-rows",
            "3",
            "--search",
            "hnsw",
            "--hnsw-ef",
            "7",
            "--hnsw-m",
            "9",
            "--recall-sample",
            "5",
            "--format",
            "junit",
            "--out",
            "-",
            "--summary",
            "s.md",
            "--plot",
            "p",
        ]);
        round_trip(&[
            "train",
            "--config",
            "c.yaml",
            "--data",
            "a.json",
            "b c.json",
            "--images",
            "i",
            "--teacher",
            "online",
            "--teacher-image-model",
            "ci",
            "--teacher-text-model",
            "ct",
            "--init",
            "x.pth",
            "--init",
            "y.pth",
            "--absent",
            "smooth=0.1",
            "--loss-weights",
            "tag=1,align=2",
            "--loss-balance",
            "initial",
            "--lr",
            "0.0003",
            "--schedule",
            "cosine",
            "--freeze",
            "none",
            "--stage",
            "finetune",
            "--device",
            "cuda",
            "--precision",
            "bf16",
            "--grad-comm",
            "bf16",
            "--check-images",
            "header",
            "--checkpoint-every",
            "off",
            "--val-data",
            "v",
            "--val-images",
            "vi",
            "--plot",
            "--no-random-augment",
            "--set",
            "warmup_steps=3",
            "--set",
            "min_lr=1e-6",
            "--out",
            "r",
            "--json",
        ]);
    }

    #[test]
    fn flags_at_their_default_are_left_out() {
        let line = round_trip(&[
            "diff", "--data", "a.json", "--vocab", "ram", "--rarest", "20",
        ]);
        assert_eq!(line, "tagfix diff --data a.json");
    }

    #[test]
    fn values_that_look_like_flags_stay_values() {
        let line = round_trip(&[
            "diff",
            "--data=-a.json",
            "--data",
            "b.json",
            "--out=-m.json",
            "--report",
            "-",
        ]);
        assert!(
            line.contains("'--data=-a.json' '--data=b.json' '--out=-m.json' --report -"),
            "{line}"
        );
        round_trip(&[
            "check",
            "--base=-a.npy",
            "--patched",
            "b.npy",
            "--min-cosine=-0.5",
        ]);
    }

    #[test]
    fn words_a_shell_would_change_are_quoted() {
        let line = round_trip(&["diff", "--data", "a b.json", "$X;rm *"]);
        assert!(
            line.contains("'a b.json'") && line.contains("'$X;rm *'"),
            "{line}"
        );
    }

    #[test]
    fn train_arguments_without_flags_are_claps_defaults() {
        let t: TrainArgs = unset("train").unwrap();
        assert_eq!(t.command_line(), "tagfix train");
    }
}
