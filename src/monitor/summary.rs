//! The end-of-run summary of health events as a table (stdout) — machine-readable output is
//! `events.jsonl` itself.

use super::event::HealthEvent;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};

/// One row per event: kind, subject, steps, message.
pub fn events_table(events: &[HealthEvent]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_content_arrangement(ContentArrangement::Dynamic);
    if table.width().is_none() {
        table.set_width(120); // not a terminal: wrap for a readable log
    }
    table.set_header(["event", "subject", "steps", "what"]);
    for e in events {
        let steps = if e.first_step == e.last_step {
            e.first_step.to_string()
        } else {
            format!("{}-{}", e.first_step, e.last_step)
        };
        // The message starts with the step range and subject, already in their own columns.
        let what = e
            .message
            .split_once(": ")
            .map(|(_, rest)| rest.strip_prefix(&e.subject).unwrap_or(rest).trim_start())
            .unwrap_or(&e.message);
        table.add_row([e.kind.name(), e.subject.as_str(), steps.as_str(), what]);
    }
    table
}
