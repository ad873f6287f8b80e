//! A Markdown summary, e.g. for `$GITHUB_STEP_SUMMARY`.

use super::{neighbours, num, op_symbol, slot_list};
use crate::consistency::report::{CheckReport, Mode};

/// Renders the summary.
pub fn check(r: &CheckReport) -> String {
    let mut s = String::new();
    let verdict = if r.passed { "✅ passed" } else { "❌ failed" };
    let mode = match r.mode {
        Mode::Drift => "drift",
        Mode::Consistency => "consistency",
    };
    s.push_str(&format!("### tagfix check ({mode}): {verdict}\n\n"));
    s.push_str(&format!(
        "`{}` against `{}` — {}, {} slots compared\n\n",
        r.candidate.path,
        r.baseline.path,
        r.layout.describe(),
        r.summary.compared_slots
    ));
    s.push_str(
        "| rule | what it checks | required | observed | result | slots |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for rule in &r.rules {
        s.push_str(&format!(
            "| `{}` | {} | {} {} | {} | {} | {} |\n",
            rule.id,
            rule.description.replace('|', "\\|"),
            op_symbol(&rule.op),
            num(rule.threshold),
            num(rule.observed),
            if rule.passed { "pass" } else { "**FAIL**" },
            slot_list(r, &rule.failing_slots, 5).replace('|', "\\|")
        ));
    }
    s.push_str("\n| metric | min | p05 | median | mean |\n| --- | --- | --- | --- | --- |\n");
    let mut row = |name: String, d: &crate::consistency::stats::Dist| {
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            num(d.min),
            num(d.p05),
            num(d.median),
            num(d.mean)
        ));
    };
    row("cosine".into(), &r.summary.cosine);
    for o in &r.summary.overlap {
        row(format!("kNN overlap @{}", o.k), &o.dist);
    }
    if let Some(c) = &r.calibration {
        row(format!("score @{} control", c.k), &c.control);
        row(format!("score @{} regenerated", c.k), &c.regenerated);
    }
    s.push_str(
        "\nPer compared slot: *cosine* of its row to the baseline row; *kNN overlap @k*, the share of \
         its k nearest baseline neighbours still among its k nearest (1 = the same neighbourhood)",
    );
    match &r.calibration {
        Some(c) => s.push_str(&format!(
            "; *score @{k}*, its neighbourhood score (mean similarity to its {k} nearest rows), for the \
             control rows and the regenerated rows: a regenerated row is trusted when its score reaches \
             the control rows' {q}% quantile, {t}.\n",
            k = c.k,
            q = num(c.quantile * 100.0),
            t = num(c.threshold)
        )),
        None => s.push_str(".\n"),
    }
    if !r.disagreements.is_empty() {
        s.push_str(&format!(
            "\n<details><summary>Neighbourhoods that disagree ({} listed)</summary>\n\n| slot | tag | cosine | overlap@{} | baseline neighbours | candidate neighbours |\n| --- | --- | --- | --- | --- | --- |\n",
            r.disagreements.len().min(10),
            r.k
        ));
        for d in r.disagreements.iter().take(10) {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                d.slot,
                d.tag.clone().unwrap_or_default().replace('|', "\\|"),
                num(d.cosine as f64),
                num(d.overlap as f64),
                neighbours(&d.baseline_neighbours, 5).replace('|', "\\|"),
                neighbours(&d.candidate_neighbours, 5).replace('|', "\\|")
            ));
        }
        s.push_str("\n† not among the other side's neighbours\n\n</details>\n");
    }
    s.push('\n');
    s
}
