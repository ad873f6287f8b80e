//! Progress bars on stderr. On a terminal indicatif redraws a bar in place; where stderr is a file
//! or a pipe (a cluster job's log) indicatif would draw nothing, which leaves a long `teacher`,
//! `embed` or image check silent for hours, so there the bar's state is written as a plain line now
//! and then.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a log-file progress line is written at most.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A progress bar on stderr named `what`, counting items (or bytes): redrawn on a terminal, else a
/// plain line every 30 s (from 30 s on: a short task adds nothing but its finished line). Hidden
/// where info-level logging is off (`--quiet`): progress is info.
pub fn stderr_bar(what: &str, total: u64, bytes: bool) -> indicatif::ProgressBar {
    if !tracing::enabled!(tracing::Level::INFO) {
        return indicatif::ProgressBar::hidden();
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let target = if terminal {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        let lines = LogLines::new(LOG_EVERY, |line| {
            let _ = writeln!(std::io::stderr(), "{line}");
        });
        indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(lines), 1)
    };
    let pb = indicatif::ProgressBar::with_draw_target(Some(total), target);
    pb.set_style(
        indicatif::ProgressStyle::with_template(template(terminal, bytes))
            .expect("valid progress template"),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// The bar's template: redrawn on a terminal, one self-contained line in a log.
fn template(terminal: bool, bytes: bool) -> &'static str {
    match (terminal, bytes) {
        (true, true) => "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        (true, false) => "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        (false, true) => "{prefix} {bytes}/{total_bytes} ({percent} %, {bytes_per_sec}, {elapsed} elapsed, eta {eta})",
        (false, false) => "{prefix} {pos}/{len} ({percent} %, {per_sec}, {elapsed} elapsed, eta {eta})",
    }
}

/// indicatif's "terminal" for a log: a drawn line goes to `sink` once `every` has passed since the
/// bar was made or the last line went; a line at 100 % always goes (once), when it is drawn.
struct LogLines {
    every: Duration,
    /// When the last line was written (at first: when the bar was made), and that line.
    last: Mutex<(Instant, String)>,
    sink: Box<dyn Fn(&str) + Send + Sync>,
}

impl LogLines {
    fn new(every: Duration, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        LogLines {
            every,
            last: Mutex::new((Instant::now(), String::new())),
            sink: Box::new(sink),
        }
    }
}

impl std::fmt::Debug for LogLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLines")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl indicatif::TermLike for LogLines {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let line = s.trim_end();
        if line.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let finished = line.contains("(100 %");
        let due = now.duration_since(last.0) >= self.every;
        if (due || finished) && last.1 != line {
            *last = (now, line.to_string());
            (self.sink)(line);
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;
    use std::sync::Arc;

    fn collecting(every: Duration) -> (LogLines, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let log = LogLines::new(every, move |l| sink.lock().unwrap().push(l.to_string()));
        (log, lines)
    }

    #[test]
    fn a_log_gets_a_line_per_interval_and_the_finished_one() {
        let (log, lines) = collecting(Duration::from_secs(3600));
        for line in [
            "diff: 1/4 (25 %, 1/s, 1s elapsed, eta 3s)",
            "diff: 2/4 (50 %, 1/s, 2s elapsed, eta 2s)",
            "",
            "diff: 4/4 (100 %, 1/s, 4s elapsed, eta 0s)",
            "diff: 4/4 (100 %, 1/s, 4s elapsed, eta 0s)",
        ] {
            log.write_line(line).unwrap();
        }
        // Within the first interval only the finished state is written.
        assert_eq!(
            *lines.lock().unwrap(),
            ["diff: 4/4 (100 %, 1/s, 4s elapsed, eta 0s)"]
        );
        // With no interval to wait, every new state is written.
        let (log, lines) = collecting(Duration::ZERO);
        for line in ["a: 1/3 (33 %", "a: 1/3 (33 %", "a: 2/3 (66 %"] {
            log.write_str(line).unwrap();
        }
        assert_eq!(lines.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_bar_drawn_into_a_log_writes_plain_self_contained_lines() {
        let (log, lines) = collecting(Duration::ZERO);
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(log));
        let pb = indicatif::ProgressBar::with_draw_target(Some(4), target);
        pb.set_style(indicatif::ProgressStyle::with_template(template(false, false)).unwrap());
        pb.set_prefix("embed");
        pb.inc(2);
        pb.inc(2);
        pb.finish();
        let lines = lines.lock().unwrap();
        let last = lines.last().expect("a line");
        assert!(last.starts_with("embed 4/4 (100 %, "), "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:?}");
    }
}
