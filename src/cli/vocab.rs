//! `tagfix vocab`: where a vocabulary comes from and whether it is the official file.

use super::args::VocabArgs;
use super::ExitStatus;
use anyhow::Context;
use tagfix::vocab::Vocabulary;

pub fn run(args: VocabArgs) -> anyhow::Result<ExitStatus> {
    let vocab = Vocabulary::load(&args.vocab)
        .with_context(|| format!("loading vocabulary `{}`", args.vocab))?;
    let preset = vocab.preset.as_ref();
    if args.json {
        let value = serde_json::json!({
            "vocabulary": vocab.id(),
            "preset_status": preset.map(|p| p.status),
            "sidecars": preset.map(|p| p.sidecars.iter().map(|(n, f)| (n.clone(), f.display().to_string())).collect::<std::collections::BTreeMap<_, _>>()),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("file:    {}", vocab.path.display());
        println!("slots:   {}", vocab.len());
        println!("sha256:  {}", vocab.sha256);
        if let Some(p) = preset {
            println!("preset:  {} ({:?})", p.name, p.status);
            for (name, file) in &p.sidecars {
                println!("sidecar: {name} = {}", file.display());
            }
        }
    }
    Ok(ExitStatus::Success)
}
