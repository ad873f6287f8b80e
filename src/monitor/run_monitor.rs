//! [`RunMonitor`]: what the training loop holds — it appends each step to `metrics.jsonl`, runs the
//! detectors online, appends finished events to `events.jsonl`, and prints the summary at the end.

use super::detectors::{DetectorConfig, HealthMonitor};
use super::event::{EventWriter, HealthEvent};
use super::record::{read_all_records, MetricsWriter, StepRecord};
use super::run_dir::RunDir;
use super::MonitorError;
use crate::error::Result;

/// Writes a run's metrics and health events while it trains.
pub struct RunMonitor {
    metrics: MetricsWriter,
    events: EventWriter,
    health: HealthMonitor,
}

impl RunMonitor {
    /// Starts monitoring a new run. Refuses a directory that already holds steps (use
    /// [`RunMonitor::resume`] or another directory).
    pub fn start(dir: &RunDir, config: DetectorConfig) -> Result<Self> {
        let metrics = dir.metrics_path();
        if std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0) {
            return Err(MonitorError::RunExists {
                path: dir.root().into(),
            }
            .into());
        }
        crate::fsutil::write_bytes_atomic(&dir.events_path(), b"")?;
        Ok(RunMonitor {
            metrics: MetricsWriter::append(&metrics)?,
            events: EventWriter::append(&dir.events_path())?,
            health: HealthMonitor::new(config),
        })
    }

    /// Resumes monitoring from a checkpoint at `step`: drops later records from `metrics.jsonl`,
    /// replays the kept ones through the detectors (so their windows are warm), and rewrites
    /// `events.jsonl` with the events that had ended by then.
    pub fn resume(dir: &RunDir, config: DetectorConfig, step: u64) -> Result<Self> {
        let metrics = MetricsWriter::resume(&dir.metrics_path(), step)?;
        let mut health = HealthMonitor::quiet(config.clone());
        for rec in read_all_records(&dir.metrics_path())? {
            health.observe(&rec);
        }
        let ended = health.events().to_vec();
        crate::fsutil::write_atomic(&dir.events_path(), |w| {
            for e in &ended {
                serde_json::to_writer(&mut *w, e)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })?;
        health.set_speak(true);
        Ok(RunMonitor {
            metrics,
            events: EventWriter::append(&dir.events_path())?,
            health,
        })
    }

    /// Records one optimizer step: appends it, runs the detectors (warning through `tracing` when a
    /// condition starts) and appends the events that ended.
    pub fn record(&mut self, rec: &StepRecord) -> Result<Vec<HealthEvent>> {
        self.metrics.write(rec)?;
        let ended = self.health.observe(rec);
        for e in &ended {
            self.events.write(e)?;
        }
        Ok(ended)
    }

    /// Ends the run: closes open conditions, appends them, and returns every event of the run
    /// (ordered by first step), e.g. for [`super::summary::events_table`].
    pub fn finish(mut self) -> Result<Vec<HealthEvent>> {
        for e in self.health.finish() {
            self.events.write(&e)?;
        }
        Ok(self.health.events().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::event::read_events;
    use crate::monitor::synthetic::{Anomaly, SyntheticRun};
    use crate::monitor::LossTerm;

    #[test]
    fn resumed_run_writes_the_same_files_as_an_uninterrupted_one() {
        let mut cfg = DetectorConfig::default();
        cfg.plateau.window = 200;
        let run = SyntheticRun {
            steps: 600,
            anomalies: vec![
                Anomaly::Spike {
                    term: LossTerm::Tag,
                    at: 200,
                    len: 2,
                    factor: 5.0,
                },
                Anomaly::Spike {
                    term: LossTerm::Dis,
                    at: 420,
                    len: 1,
                    factor: 5.0,
                },
            ],
            ..SyntheticRun::default()
        };
        let records = run.records();
        let tmp = tempfile::tempdir().unwrap();

        let full = RunDir::create(&tmp.path().join("full")).unwrap();
        let mut m = RunMonitor::start(&full, cfg.clone()).unwrap();
        for r in &records {
            m.record(r).unwrap();
        }
        let all = m.finish().unwrap();
        assert_eq!(all.len(), 2, "{all:#?}");

        // Interrupted after step 450, checkpoint at 400, resumed.
        let part = RunDir::create(&tmp.path().join("part")).unwrap();
        let mut m = RunMonitor::start(&part, cfg.clone()).unwrap();
        for r in &records[..450] {
            m.record(r).unwrap();
        }
        drop(m);
        assert!(RunMonitor::start(&part, cfg.clone()).is_err());
        let mut m = RunMonitor::resume(&part, cfg, 400).unwrap();
        for r in &records[400..] {
            m.record(r).unwrap();
        }
        assert_eq!(m.finish().unwrap(), all);
        for file in ["metrics.jsonl", "events.jsonl"] {
            assert_eq!(
                std::fs::read(full.root().join(file)).unwrap(),
                std::fs::read(part.root().join(file)).unwrap(),
                "{file}"
            );
        }
        assert_eq!(read_events(&part.events_path()).unwrap(), all);
    }
}
