//! The pace of the steps: the clocks of this invocation, and the progress line or bar.

use crate::monitor::RunPace;
use std::time::Instant;

/// The clocks of this invocation's steps: since the first step (the run's [`RunPace`]) and since
/// the last progress line ([`Pace`]), with the seconds waited for data in each.
#[derive(Debug, Default)]
pub(super) struct StepPace {
    /// When the first step began and the last ended.
    pub(super) run: Option<(Instant, Instant)>,
    pub(super) waited_in_run_s: f64,
    /// When the last progress line was logged and after how many steps (the first step's start
    /// and step before the first line).
    pub(super) line: Option<(Instant, u64)>,
    pub(super) waited_since_line_s: f64,
}

impl StepPace {
    /// A step begins at `t0`, after `step` steps (starts the clocks at the first).
    pub(super) fn begin(&mut self, t0: Instant, step: u64) {
        self.run.get_or_insert((t0, t0));
        self.line.get_or_insert((t0, step));
    }

    /// The step ended now, having waited `data_wait_s` for its micro-batches.
    pub(super) fn end(&mut self, data_wait_s: f64) {
        if let Some((_, end)) = self.run.as_mut() {
            *end = Instant::now();
        }
        self.waited_in_run_s += data_wait_s;
        self.waited_since_line_s += data_wait_s;
    }

    /// The pace since the last line, now that a line is logged after `done` steps of `batch`.
    pub(super) fn since_last_line(&mut self, done: u64, batch: usize) -> Option<Pace> {
        let now = Instant::now();
        let (since, from) = self.line.replace((now, done)).unwrap_or((now, done));
        let waited = std::mem::take(&mut self.waited_since_line_s);
        Pace::measure(done - from, now - since, batch, waited)
    }

    /// The pace of the run's `steps` steps of `batch` (`None` before a step).
    pub(super) fn of_run(&self, steps: u64, batch: usize) -> Option<RunPace> {
        self.run.map(|(start, end)| {
            let seconds = (end - start).as_secs_f64();
            RunPace {
                seconds,
                images_per_s: (steps * batch as u64) as f64 / seconds.max(1e-9),
                data_wait_s: self.waited_in_run_s,
            }
        })
    }
}

/// How fast the steps since the last progress line went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Pace {
    pub(super) images_per_s: f64,
    pub(super) s_per_step: f64,
    /// The share of the time spent waiting for the next micro-batch (0..=1): an input pipeline
    /// slower than the steps.
    pub(super) waiting: f64,
}

impl Pace {
    /// `steps` of `batch` images in `took`, `waited_s` of it waiting for data.
    pub(super) fn measure(
        steps: u64,
        took: std::time::Duration,
        batch: usize,
        waited_s: f64,
    ) -> Option<Self> {
        let secs = took.as_secs_f64();
        (steps > 0 && secs > 0.0).then(|| Pace {
            images_per_s: (steps * batch as u64) as f64 / secs,
            s_per_step: secs / steps as f64,
            waiting: (waited_s / secs).clamp(0.0, 1.0),
        })
    }
}

/// The line that stands for the progress bar where none is drawn: `step 50/1000 (5 %): tag 123.4567
/// align 12.3456 | lr 1.00e-4 | 155.5 images/s, 3 % waiting for data | eta 1h 2m 3s`, the pace
/// (when known) being that since the previous line, pauses for validation and checkpoints included.
pub(super) fn progress_line(
    done: u64,
    total: u64,
    terms: &str,
    lr: f64,
    pace: Option<Pace>,
) -> String {
    let percent = 100 * done / total.max(1);
    let mut line = format!("step {done}/{total} ({percent} %): {terms} | lr {lr:.2e}");
    if let Some(p) = pace {
        let left = total.saturating_sub(done) as f64 * p.s_per_step;
        let eta = humantime::format_duration(std::time::Duration::from_secs(left.round() as u64));
        line.push_str(&format!(
            " | {:.1} images/s, {:.0} % waiting for data | eta {eta}",
            p.images_per_s,
            100.0 * p.waiting
        ));
    }
    line
}

pub(super) fn progress_bar(start_step: u64, total_steps: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total_steps);
    bar.set_position(start_step);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} train [{bar:30}] {pos}/{len} steps {per_sec} eta {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_says_where_the_run_is_and_when_it_ends() {
        let pace = Pace::measure(50, std::time::Duration::from_secs(25), 52, 1.0);
        assert_eq!(
            pace,
            Some(Pace {
                images_per_s: 104.0,
                s_per_step: 0.5,
                waiting: 0.04
            })
        );
        assert_eq!(
            progress_line(250, 10_000, "tag 123.4568 dis 0.2800", 1e-4, pace),
            "step 250/10000 (2 %): tag 123.4568 dis 0.2800 | lr 1.00e-4 | 104.0 images/s, 4 % waiting for data | eta 1h 21m 15s"
        );
        // No steps or no time measured: no pace, no eta.
        assert_eq!(
            Pace::measure(0, std::time::Duration::from_secs(3), 8, 0.0),
            None
        );
        assert_eq!(
            progress_line(4, 4, "tag 1.0000", 2e-3, None),
            "step 4/4 (100 %): tag 1.0000 | lr 2.00e-3"
        );
    }
}
