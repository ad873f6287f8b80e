//! Writes a synthetic training run with one of each health problem into a run directory, to see
//! what `tagfix plot` and the detectors make of it:
//!
//! ```sh
//! cargo run --example synthetic_run -- /tmp/run && tagfix plot /tmp/run
//! ```

use tagfix::monitor::synthetic::{Anomaly, SyntheticRun};
use tagfix::monitor::{DetectorConfig, LossTerm, RunDir, RunMonitor};

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: synthetic_run RUN_DIR"))?;
    let run = SyntheticRun {
        anomalies: vec![
            Anomaly::Spike {
                term: LossTerm::Tag,
                at: 1500,
                len: 3,
                factor: 4.0,
            },
            Anomaly::Oscillation {
                term: LossTerm::Align,
                from: 2000,
                to: 2200,
                rel_amplitude: 0.3,
            },
            Anomaly::StalledEncoder {
                from: 2500,
                factor: 1e-5,
            },
        ],
        ..SyntheticRun::default()
    };
    let dir = RunDir::create(std::path::Path::new(&out))?;
    let mut monitor = RunMonitor::start(&dir, DetectorConfig::default())?;
    for rec in run.records() {
        monitor.record(&rec)?;
    }
    let events = monitor.finish()?;
    println!("{}", tagfix::monitor::events_table(&events));
    Ok(())
}
