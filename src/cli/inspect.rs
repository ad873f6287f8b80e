//! `tagfix inspect`: keys, shapes, dtypes of a checkpoint and the RAM++ presets it fits; of a
//! training checkpoint folder or run folder, also its step and whether its files are whole.

use super::args::InspectArgs;
use super::ExitStatus;
use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use tagfix::checkpoint::inspect::{inspect, CheckpointInfo, Fit, TrainingCheckpoint};
use tagfix::checkpoint::RamPlusConfig;

pub fn run(args: InspectArgs) -> anyhow::Result<ExitStatus> {
    if let Some(p) = &args.expect {
        RamPlusConfig::preset(p)?;
    }
    let extra = match &args.model_config {
        Some(p) => vec![RamPlusConfig::from_reference_json(p)?],
        None => Vec::new(),
    };
    let info = inspect(&args.checkpoint, &extra)
        .with_context(|| format!("inspecting {}", args.checkpoint.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", text(&info, args.keys));
    }
    if let Some(p) = &args.expect {
        let fit = info.fits.iter().find(|f| &f.preset == p).map(|f| f.fit);
        if !matches!(fit, Some(Fit::Exact | Fit::AfterResizing)) {
            eprintln!(
                "{}: does not hold a complete `{p}` model ({fit:?})",
                args.checkpoint.display()
            );
            return Ok(ExitStatus::Failure);
        }
    }
    Ok(ExitStatus::Success)
}

fn right(v: impl ToString) -> Cell {
    Cell::new(v.to_string()).set_alignment(CellAlignment::Right)
}

fn fit_words(f: Fit) -> &'static str {
    match f {
        Fit::Exact => "exact",
        Fit::AfterResizing => "after resizing bias tables",
        Fit::ImageEncoderOnly => "image encoder only",
        Fit::Partial => "partial",
        Fit::None => "no",
    }
}

/// The training checkpoint's lines: where it is, its step and run, whether its files were verified,
/// and the newer ones passed over.
fn training_text(t: &TrainingCheckpoint) -> String {
    let mut out = format!(
        "training:   {} — step {} (epoch {}, {} samples seen; {} records, seed {}), model {}, {:.1} s \
         trained; loss weights {}\n",
        t.dir.display(),
        t.step,
        t.epoch,
        t.samples_seen,
        t.records,
        t.seed,
        t.model,
        t.wall_s,
        t.loss_weights
    );
    out.push_str(if t.verified {
        "            its files match its SHA256SUMS\n"
    } else {
        "            written without SHA256SUMS: its bytes not verified\n"
    });
    for (dir, why) in &t.passed_over {
        out.push_str(&format!(
            "            passed over (not whole): {}: {why}\n",
            dir.display()
        ));
    }
    out
}

fn text(info: &CheckpointInfo, list_keys: bool) -> String {
    let mut out = format!("checkpoint: {}\n", info.path);
    out.push_str(&format!(
        "format:     {}{}\n",
        info.format,
        info.container
            .as_deref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    ));
    let dtypes: Vec<String> = info
        .dtypes
        .iter()
        .map(|(d, n)| format!("{d} {n}"))
        .collect();
    out.push_str(&format!(
        "tensors:    {} ({} elements, {:.1} MiB); dtypes: {}\n",
        info.keys.len(),
        info.elements,
        info.bytes as f64 / (1 << 20) as f64,
        dtypes.join(", ")
    ));
    if let Some(s) = &info.swin {
        out.push_str(&format!(
            "swin:       {} (embed {}, depths {:?}, heads {:?}, window {}, image {})\n",
            s.family,
            s.embed_dim,
            s.depths,
            s.num_heads,
            s.window_size.map_or("?".into(), |w| w.to_string()),
            s.img_size.map_or("not recorded".into(), |w| w.to_string())
        ));
    }
    if let Some(t) = &info.training {
        out.push_str(&training_text(t));
    }
    if let Some(l) = &info.label_embed {
        out.push_str(&format!("label_embed: {l}\n"));
    }
    if !info.extras.is_empty() {
        let names: Vec<&String> = info.extras.keys().collect();
        out.push_str(&format!("extras:     {names:?}\n"));
    }
    let mut groups = Table::new();
    groups.load_preset(UTF8_FULL_CONDENSED);
    groups.set_header(["module", "tensors", "elements"]);
    for g in &info.groups {
        groups.add_row(vec![
            Cell::new(&g.group),
            right(g.tensors),
            right(g.elements),
        ]);
    }
    out.push_str(&format!("{groups}\n"));

    let mut fits = Table::new();
    fits.load_preset(UTF8_FULL_CONDENSED);
    fits.set_header([
        "preset",
        "fits",
        "loaded",
        "missing",
        "shape mismatch",
        "resized",
        "unexpected",
    ]);
    for f in &info.fits {
        let r = &f.report;
        fits.add_row(vec![
            Cell::new(&f.preset),
            Cell::new(fit_words(f.fit)),
            right(format!("{}/{}", r.loaded, r.expected)),
            right(r.missing.len()),
            right(r.shape_mismatched.len()),
            right(r.resized.len()),
            right(r.unexpected.len()),
        ]);
    }
    out.push_str(&format!("{fits}\n"));
    if let Some(best) = info.fits.first() {
        out.push_str(&format!(
            "best fit:   {} ({}); read as: {}\n",
            best.preset,
            fit_words(best.fit),
            best.report.layout
        ));
        for n in &best.report.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
    }
    if list_keys {
        out.push_str("keys:\n");
        for k in &info.keys {
            out.push_str(&format!(
                "  {:70} {:>20} {}\n",
                k.name,
                format!("{:?}", k.shape),
                k.dtype
            ));
        }
    }
    out
}
