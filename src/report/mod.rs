//! Output writers, separate from the computations: a readable table (comfy-table), Markdown, JSON
//! and CSV. Table and Markdown render the same [`Section`]s; JSON is the report's serde form.

pub mod check;
mod diff;

pub use diff::write_diff;

/// Why a report could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("serializing the report")]
    Json(#[source] serde_json::Error),

    #[error("writing JUnit XML")]
    Junit(#[source] quick_junit::SerializeError),
}

use comfy_table::{presets, ContentArrangement, Table};
use std::io::{self, Write};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
    Markdown,
}

/// A titled block of a readable report: a few lines of text and an optional table.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub lines: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Section {
    pub fn new(title: impl Into<String>) -> Self {
        Section {
            title: title.into(),
            ..Default::default()
        }
    }

    pub fn line(mut self, text: impl Into<String>) -> Self {
        self.lines.push(text.into());
        self
    }

    pub fn header(mut self, names: &[&str]) -> Self {
        self.header = names.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// Renders sections as terminal tables (`markdown == false`) or Markdown.
pub fn write_sections(sections: &[Section], markdown: bool, w: &mut dyn Write) -> io::Result<()> {
    for (i, s) in sections.iter().enumerate() {
        if markdown {
            writeln!(w, "## {}\n", s.title)?;
        } else {
            if i > 0 {
                writeln!(w)?;
            }
            writeln!(w, "{}", s.title)?;
        }
        for l in &s.lines {
            if markdown {
                writeln!(w, "- {l}")?;
            } else {
                writeln!(w, "  {l}")?;
            }
        }
        if !s.header.is_empty() && !s.rows.is_empty() {
            if markdown && !s.lines.is_empty() {
                writeln!(w)?;
            }
            let mut t = Table::new();
            if markdown {
                t.load_preset(presets::ASCII_MARKDOWN);
            } else {
                t.load_preset(presets::UTF8_FULL_CONDENSED)
                    .set_content_arrangement(ContentArrangement::Dynamic);
            }
            t.set_header(&s.header);
            for r in &s.rows {
                t.add_row(r);
            }
            writeln!(w, "{t}")?;
        }
        if markdown {
            writeln!(w)?;
        }
    }
    Ok(())
}

/// The first 12 characters of a hash, as reports and messages show it. Characters, not bytes: a
/// hash read from a file's metadata may hold anything, and cutting inside a character would panic.
pub fn short_hash(hash: &str) -> &str {
    hash.char_indices()
        .nth(12)
        .map_or(hash, |(end, _)| &hash[..end])
}

/// `1, 2, 3 … (+N more)`: a long list shortened for a readable report.
pub fn short_list<T: std::fmt::Display>(items: &[T], keep: usize) -> String {
    let shown: Vec<String> = items.iter().take(keep).map(|i| i.to_string()).collect();
    if items.len() > keep {
        format!("{} … (+{} more)", shown.join(", "), items.len() - keep)
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hashes_cut_at_characters_not_bytes() {
        let hex = "0123456789abcdef0123";
        assert_eq!(short_hash(hex), "0123456789ab");
        assert_eq!(short_hash("abc"), "abc");
        // Byte 12 falls inside the sixth `é`: a byte cut would panic.
        let odd = format!("a{}", "é".repeat(13));
        assert_eq!(short_hash(&odd), format!("a{}", "é".repeat(11)));
    }
}
