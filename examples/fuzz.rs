//! Fuzzes tagfix's file readers (see `src/fuzz/mod.rs`); run through `scripts/fuzz.sh [SECONDS]`.
//! Prints one line per target (executions, executions per second, distinct crashes) and each crash
//! with its saved input; exits 1 when any target crashed.

use clap::Parser;
use std::path::PathBuf;
use tagfix::fuzz::{self, Budget, ChildCommand};

#[derive(Parser)]
#[command(about = "Fuzz tagfix's file readers")]
struct Args {
    /// Wall time per target, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop a target after this many executions (whichever of time and count comes first).
    #[arg(long)]
    execs: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Comma-separated target names (default: all).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Seed folders, one sub-folder per target.
    #[arg(long, default_value = "fuzz/corpus")]
    corpus: PathBuf,
    /// Where crashing inputs are saved (one sub-folder per target).
    #[arg(long, default_value = "fuzz/crashes")]
    crashes: PathBuf,
    /// An input running longer than this is a hang, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Limit on each target process's heap and private writable memory (`ulimit -d`), MiB.
    #[arg(long, default_value_t = 2048)]
    memory_mb: u64,
    /// Write the crafted seeds of every target to the corpus folder and exit.
    #[arg(long)]
    write_corpus: bool,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> anyhow::Result<()> {
    let all = fuzz::targets::all();
    fuzz::child_main(&all);
    let args = Args::parse();
    if args.list {
        for t in &all {
            println!("{}", t.name);
        }
        return Ok(());
    }
    if args.write_corpus {
        for t in &all {
            let dir = args.corpus.join(t.name);
            std::fs::create_dir_all(&dir)?;
            for (name, bytes) in (t.seeds)() {
                std::fs::write(dir.join(name), bytes)?;
            }
        }
        println!("wrote the crafted seeds under {}", args.corpus.display());
        return Ok(());
    }
    let selected: Vec<&fuzz::Target> = all
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
        .collect();
    if let Some(bad) = args
        .targets
        .iter()
        .find(|n| !all.iter().any(|t| t.name == n.as_str()))
    {
        anyhow::bail!("no fuzz target `{bad}` (see --list)");
    }
    let budget = Budget {
        seed: args.seed,
        max_execs: args.execs.unwrap_or(u64::MAX),
        max_seconds: args.seconds,
        timeout_seconds: args.timeout,
        memory_mb: args.memory_mb,
        ..Budget::default()
    };
    let child = ChildCommand {
        program: std::env::current_exe()?,
        args: Vec::new(),
    };
    let mut reports = Vec::new();
    for t in selected {
        eprintln!("fuzzing {} ...", t.name);
        let r = fuzz::run_target(
            t,
            &budget,
            std::slice::from_ref(&args.corpus),
            &args.crashes,
            &child,
        )?;
        eprintln!("  {} executions, {} crashes", r.execs, r.crashes.len());
        reports.push(r);
    }
    print!("{}", fuzz::render(&reports));
    println!(
        "seed {} (input i of a target is reproducible from the seed, i and the corpus)",
        args.seed
    );
    let crashed = reports.iter().any(|r| !r.crashes.is_empty());
    std::process::exit(i32::from(crashed));
}
