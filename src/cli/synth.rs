//! `tagfix synth`: write a synthetic RAM-format annotation set.

use super::args::{GlobalArgs, SynthArgs};
use super::{progress_bar, ExitStatus};
use anyhow::Context;
use tagfix::annotations::Layout;
use tagfix::synth::{parse_slot_list, synthesize, AbsentSlots, SynthOptions};
use tagfix::vocab::Vocabulary;

pub fn run(args: SynthArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let vocab = Vocabulary::load(&args.vocab)
        .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
    let absent = match &args.absent_slots {
        Some(list) => AbsentSlots::List(parse_slot_list(list, vocab.len())?),
        None => AbsentSlots::Count(args.absent),
    };
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
    let progress = progress_bar(global, args.records, false);
    let result = synthesize(&vocab, &opts, &args.out, &progress);
    progress.finish_and_clear();
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote {} ({} records, {}{}, {} bytes)",
            summary.path,
            summary.records,
            summary.layout.name(),
            if summary.gzip { ", gzip" } else { "" },
            summary.bytes
        );
        let list: Vec<String> = summary.absent_slots.iter().map(|s| s.to_string()).collect();
        println!("absent slots ({}): {}", list.len(), list.join(","));
    }
    Ok(ExitStatus::Success)
}
