//! `tagfix synth`: write a synthetic RAM-format annotation set.

use super::args::{GlobalArgs, SynthArgs};
use super::{progress_bar, ExitStatus};
use anyhow::Context;
use tagfix::annotations::Layout;
use tagfix::synth::{synthesize, AbsentSlots, SynthOptions};
use tagfix::vocab::slot_list;
use tagfix::vocab::Vocabulary;

pub fn run(args: SynthArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let vocab = Vocabulary::load(&args.vocab)
        .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
    let absent = match &args.absent_slots {
        Some(list) => AbsentSlots::List(slot_list::parse("--absent-slots", list, vocab.len())?),
        None => AbsentSlots::Count(args.absent),
    };
    tagfix::fsutil::check_outputs([args.out.as_path()], &[&vocab.path])?;
    let opts = SynthOptions {
        records: args.records,
        absent,
        seed: args.seed,
        layout: if args.jsonl {
            Layout::JsonLines
        } else {
            Layout::JsonArray
        },
        gzip: args.gzip,
        zipf_exponent: args.zipf,
    };
    let progress = progress_bar(global, "synth: records", args.records, false);
    let result = synthesize(&vocab, &opts, &args.out, &progress);
    progress.finish_and_clear();
    let summary = result?;
    // With `--out -` the records own standard output; the summary goes to stderr.
    let mut say: Box<dyn std::io::Write> = if tagfix::fsutil::is_stdout(&args.out) {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    if args.json {
        writeln!(say, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        writeln!(
            say,
            "wrote {} ({} records, {}{}, {} bytes)",
            summary.path,
            summary.records,
            summary.layout.name(),
            if summary.gzip { ", gzip" } else { "" },
            summary.bytes
        )?;
        let list: Vec<String> = summary.absent_slots.iter().map(|s| s.to_string()).collect();
        writeln!(say, "absent slots ({}): {}", list.len(), list.join(","))?;
    }
    Ok(ExitStatus::Success)
}
