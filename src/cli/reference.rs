//! `tagfix cli-reference` (hidden): the command-line reference in Markdown, generated from the clap
//! definitions in `args.rs` — every subcommand's description, usage, arguments and options with their
//! help, defaults and possible values, and its examples. `docs/cli.md` is this output; a test fails
//! when it is stale.

use super::args::{Cli, CliReferenceArgs};
use super::ExitStatus;
use anyhow::Context;
use clap::{Arg, ArgAction, CommandFactory};
use std::fmt::Write as _;

/// The command that regenerates `docs/cli.md`.
pub const REGENERATE: &str =
    "cargo run --release --all-features -- cli-reference --out docs/cli.md";

pub fn run(args: CliReferenceArgs) -> anyhow::Result<ExitStatus> {
    let text = render();
    match (&args.out, args.check) {
        (Some(path), true) => {
            let current = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            if current == text {
                println!("{} is up to date", path.display());
                Ok(ExitStatus::Success)
            } else {
                eprintln!(
                    "{} is stale (the clap definitions changed): regenerate it with `{REGENERATE}`",
                    path.display()
                );
                Ok(ExitStatus::Failure)
            }
        }
        (Some(path), false) => {
            tagfix::fsutil::write_bytes_atomic(path, text.as_bytes())?;
            eprintln!("wrote {}", path.display());
            Ok(ExitStatus::Success)
        }
        (None, _) => {
            print!("{text}");
            Ok(ExitStatus::Success)
        }
    }
}

/// The whole reference.
pub fn render() -> String {
    let mut root = Cli::command();
    root.build();
    let mut md = String::new();
    let _ = writeln!(md, "# `tagfix` command-line reference\n");
    let _ = writeln!(
        md,
        "Generated from the clap definitions (`src/cli/args.rs`) by `{REGENERATE}`; a test fails when this \
         file is stale. The same text, wrapped to the terminal, is `tagfix <command> --help`.\n"
    );
    if let Some(about) = root.get_about() {
        let _ = writeln!(md, "{about}.\n");
    }
    let _ = writeln!(
        md,
        "Exit status of every command: 0 ok, 1 the command ran and a requested check failed, 2 usage or \
         input error; `train` also 3, a run that stopped itself (non-finite loss).\n"
    );
    let _ = writeln!(md, "| command | what it does |\n| --- | --- |");
    for sub in visible_commands(&root) {
        let _ = writeln!(
            md,
            "| [`tagfix {name}`](#tagfix-{name}) | {} |",
            first_sentence(&sub.get_about().map(|a| a.to_string()).unwrap_or_default()),
            name = sub.get_name()
        );
    }
    let _ = writeln!(md, "\n## Global options\n\nAccepted by every command.\n");
    for arg in root.get_arguments().filter(|a| documented(a)) {
        write_arg(&mut md, arg);
    }
    for sub in visible_commands(&root) {
        write_command(&mut md, sub);
    }
    md
}

/// Subcommands a user sees in `tagfix --help`, clap's own `help` left out.
fn visible_commands(root: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    root.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn documented(arg: &Arg) -> bool {
    !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version")
}

fn first_sentence(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let first = match one_line.find(". ") {
        Some(i) => &one_line[..i],
        None => &one_line,
    };
    first.trim_end_matches('.').to_string()
}

fn write_command(md: &mut String, cmd: &clap::Command) {
    let name = cmd.get_name();
    let _ = writeln!(md, "\n## `tagfix {name}`\n");
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(md, "{about}\n");
    }
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ").trim();
    let _ = writeln!(md, "```text\n{usage}\n```\n");
    let positionals: Vec<&Arg> = cmd
        .get_positionals()
        .filter(|a| documented(a) && !a.is_global_set())
        .collect();
    if !positionals.is_empty() {
        let _ = writeln!(md, "**Arguments**\n");
        for arg in positionals {
            write_arg(md, arg);
        }
        md.push('\n');
    }
    let options: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && documented(a) && !a.is_global_set())
        .collect();
    if !options.is_empty() {
        let _ = writeln!(md, "**Options**\n");
        for arg in options {
            write_arg(md, arg);
        }
        md.push('\n');
    }
    if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        let _ = writeln!(md, "```text\n{}\n```", after.to_string().trim_end());
    }
}

fn write_arg(md: &mut String, arg: &Arg) {
    let value = || {
        let name = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map(|s| s.to_string())
            .unwrap_or_else(|| arg.get_id().as_str().to_ascii_uppercase());
        let many = arg
            .get_num_args()
            .is_some_and(|n| n.max_values() > 1 || matches!(arg.get_action(), ArgAction::Append));
        format!("<{name}>{}", if many { "..." } else { "" })
    };
    let takes_value = arg.get_action().takes_values();
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(format!("-{s}"));
    }
    if let Some(l) = arg.get_long() {
        names.push(if takes_value {
            format!("--{l} {}", value())
        } else {
            format!("--{l}")
        });
    }
    if names.is_empty() {
        names.push(value());
    }
    let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| {
            h.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let mut line = format!("- {}", names.join(", "));
    if arg.is_required_set() {
        line.push_str(" (required)");
    }
    if !help.is_empty() {
        let _ = write!(line, " — {help}");
        if !help.ends_with(['.', ':']) {
            line.push('.');
        }
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    if !defaults.is_empty() && takes_value {
        let _ = write!(line, " Default: {}.", defaults.join(", "));
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !possible.is_empty() && takes_value {
        let _ = write!(line, " Values: {}.", possible.join(", "));
    }
    if let Some(env) = arg.get_env() {
        let _ = write!(line, " Environment: `{}`.", env.to_string_lossy());
    }
    let _ = writeln!(md, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_cli_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == render(),
            "docs/cli.md is stale (the clap definitions changed): regenerate it with `{REGENERATE}`"
        );
    }

    #[test]
    fn every_command_has_an_example() {
        let root = Cli::command();
        for sub in visible_commands(&root) {
            let after = sub
                .get_after_help()
                .map(|a| a.to_string())
                .unwrap_or_default();
            assert!(
                after.contains("Example") && after.contains(&format!("tagfix {}", sub.get_name())),
                "`tagfix {} --help` has no example (after_help \"Examples:\\n  tagfix {} ...\")",
                sub.get_name(),
                sub.get_name()
            );
        }
    }
}
