//! `tagfix convert`: PyTorch checkpoint → safetensors.

use super::args::ConvertArgs;
use super::ExitStatus;
use anyhow::Context;
use tagfix::checkpoint::convert::{convert, ConvertSummary};

pub fn run(args: ConvertArgs) -> anyhow::Result<ExitStatus> {
    let summary = convert(&args.input, &args.output).with_context(|| {
        format!(
            "converting {} to {}",
            args.input.display(),
            args.output.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", text(&summary));
    }
    Ok(ExitStatus::Success)
}

fn text(s: &ConvertSummary) -> String {
    let dtypes: Vec<String> = s.dtypes.iter().map(|(d, n)| format!("{d} {n}")).collect();
    let mut out = format!(
        "converted {} ({}{}) -> {}\n  {} tensors, {} elements, {} bytes; dtypes: {}\n",
        s.input,
        s.format,
        s.container
            .as_deref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default(),
        s.output,
        s.tensors,
        s.elements,
        s.bytes,
        dtypes.join(", ")
    );
    if !s.extras.is_empty() {
        out.push_str(&format!(
            "  extras kept in the metadata as extra.<name>: {}\n",
            s.extras.join(", ")
        ));
    }
    out
}
