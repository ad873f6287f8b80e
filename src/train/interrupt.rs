//! Stopping a run cleanly on a signal. A cluster ends a job with SIGTERM (Slurm sends it to every
//! task at the time limit or on preemption, then SIGKILL after `KillWait`), a user with Ctrl-C
//! (SIGINT), and `sbatch --signal=B:USR1@120` warns ahead of the limit with SIGUSR1. A run that dies
//! there loses every step since its last checkpoint; instead the signal is recorded here, the
//! training loop reads it after each optimizer step, saves a checkpoint of that step and exits with
//! 128 + the signal's number (the status of a process the signal ended), and `--resume` goes on
//! exactly from there. The handlers are only installed while the loop runs: before it (reading the
//! data, loading checkpoints) nothing is lost, and the signal acts as it always does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The signals that ask for a stop with a checkpoint.
#[cfg(unix)]
pub const STOP_SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGUSR1,
];
#[cfg(not(unix))]
pub const STOP_SIGNALS: [i32; 0] = [];

/// SIGTERM's number: the signal the ranks stop for when they received different stop signals.
#[cfg(unix)]
pub const SIGTERM: i32 = signal_hook::consts::SIGTERM;
#[cfg(not(unix))]
pub const SIGTERM: i32 = 15;

/// The signals a rank votes with, one counter each in the step's summed values (SIGTERM, SIGINT,
/// SIGUSR1: Linux's numbers where there are no such signals, so the counters stay three).
#[cfg(unix)]
const VOTED: [i32; 3] = STOP_SIGNALS;
#[cfg(not(unix))]
const VOTED: [i32; 3] = [15, 2, 10];

/// Counters of a step's stop votes, summed over the ranks.
pub const VOTES: usize = VOTED.len();

/// This rank's vote: 1 in the counter of `signal` (a stop signal it received), else zeros.
pub fn vote(signal: Option<i32>) -> [f64; VOTES] {
    VOTED.map(|s| f64::from(u8::from(signal == Some(s))))
}

/// The signal the ranks stop for, from the summed counters `votes`: the one kind voted, or SIGTERM
/// when the ranks received different ones; `None` when no rank voted.
pub fn agreed(votes: &[f64]) -> Option<i32> {
    let mut voted = VOTED.iter().zip(votes).filter(|(_, n)| **n > 0.0);
    let (first, _) = voted.next()?;
    Some(if voted.next().is_none() {
        *first
    } else {
        SIGTERM
    })
}

/// Whether a stop was asked for, and by which signal: shared between the signal thread and the
/// training loop (clones share it). Tests and embedders set it with [`StopRequest::request`].
#[derive(Debug, Clone, Default)]
pub struct StopRequest {
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    /// A request nothing has asked for yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a stop, as `signal` would.
    pub fn request(&self, signal: i32) {
        let value = usize::try_from(signal).unwrap_or(0).max(1);
        self.signal.store(value, Ordering::SeqCst);
    }

    /// The signal that asked for a stop (the latest, when several came), or `None`.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => i32::try_from(s).ok(),
        }
    }

    /// Records [`STOP_SIGNALS`] in this request until the guard is dropped, and says on stderr as
    /// the first arrives what will happen (from a thread: a signal handler may not allocate or lock).
    /// `who` says what stops in that line ("training stops", "the ranks stop").
    #[cfg(unix)]
    pub fn on_signals(&self, who: &'static str) -> std::io::Result<SignalGuard> {
        use signal_hook::iterator::Signals;
        hold_signals()?;
        let mut signals = match Signals::new(STOP_SIGNALS) {
            Ok(signals) => signals,
            Err(e) => {
                release_signals();
                return Err(e);
            }
        };
        let handle = signals.handle();
        let request = self.clone();
        let thread = std::thread::Builder::new()
            .name("stop-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let first = request.signal().is_none();
                    request.request(sig);
                    if first {
                        eprintln!(
                            "{}: {who} after the current step with a checkpoint (SIGKILL or Ctrl-\\ stops at once)",
                            signal_name(sig)
                        );
                    }
                }
            })?;
        Ok(SignalGuard {
            handle,
            thread: Some(thread),
        })
    }
}

/// While no [`SignalGuard`] lives, the stop signals act as they did before any was made (signal-hook
/// would otherwise leave them caught with nothing to do, so that SIGTERM no longer ended the process).
/// One flag per process, registered once, with a count of the live guards: registering a flag per
/// guard would leave the first guard's released flag in force, and a signal during a second guard
/// would end the process instead of being recorded.
#[cfg(unix)]
static DEFAULT_ACTION: std::sync::Mutex<Option<(Arc<AtomicBool>, usize)>> =
    std::sync::Mutex::new(None);

/// Counts a new guard in and keeps the default actions off while it lives.
#[cfg(unix)]
fn hold_signals() -> std::io::Result<()> {
    let mut state = DEFAULT_ACTION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &mut *state {
        Some((released, live)) => {
            *live += 1;
            released.store(false, Ordering::SeqCst);
        }
        None => {
            let released = Arc::new(AtomicBool::new(false));
            for sig in STOP_SIGNALS {
                signal_hook::flag::register_conditional_default(sig, Arc::clone(&released))?;
            }
            *state = Some((released, 1));
        }
    }
    Ok(())
}

/// Counts a guard out; the last one gives the signals their default action back.
#[cfg(unix)]
fn release_signals() {
    let mut state = DEFAULT_ACTION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((released, live)) = &mut *state {
        *live = live.saturating_sub(1);
        if *live == 0 {
            released.store(true, Ordering::SeqCst);
        }
    }
}

/// Keeps [`StopRequest::on_signals`]' recording on; dropping it ends the signal thread and gives the
/// signals their default action again (SIGTERM, SIGINT and SIGUSR1 then end the process).
#[cfg(unix)]
pub struct SignalGuard {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(unix)]
impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        release_signals();
    }
}

/// "SIGTERM", "SIGINT", … or "signal N".
pub fn signal_name(signal: i32) -> String {
    #[cfg(unix)]
    if let Some(name) = signal_hook::low_level::signal_name(signal) {
        return name.to_string();
    }
    format!("signal {signal}")
}

/// The exit status of a run a stop signal ended: 128 + its number, as the shell reports a process
/// the signal killed (130 for SIGINT, 143 for SIGTERM).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// The stop signal behind exit status `code` (the inverse of [`exit_code`]), if it is one.
pub fn signal_of_exit_code(code: i32) -> Option<i32> {
    STOP_SIGNALS.into_iter().find(|s| exit_code(*s) == code)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_agree_on_the_one_signal_voted_else_sigterm() {
        let sum = |votes: &[[f64; VOTES]]| -> Vec<f64> {
            (0..VOTES)
                .map(|i| votes.iter().map(|v| v[i]).sum())
                .collect()
        };
        let [term, int, usr1] = VOTED;
        assert_eq!(agreed(&sum(&[vote(None), vote(None)])), None);
        assert_eq!(agreed(&sum(&[vote(None), vote(Some(usr1))])), Some(usr1));
        assert_eq!(agreed(&sum(&[vote(Some(int)), vote(Some(int))])), Some(int));
        assert_eq!(
            agreed(&sum(&[vote(Some(int)), vote(Some(usr1))])),
            Some(term)
        );
    }

    #[test]
    fn a_request_keeps_its_signal_and_clones_share_it() {
        let stop = StopRequest::new();
        assert_eq!(stop.signal(), None);
        let seen_by_loop = stop.clone();
        stop.request(SIGTERM);
        assert_eq!(seen_by_loop.signal(), Some(SIGTERM));
    }

    #[test]
    fn exit_codes_are_128_plus_the_signal_and_map_back() {
        assert_eq!(exit_code(SIGTERM), 143);
        assert_eq!(signal_of_exit_code(130), Some(signal_hook::consts::SIGINT));
        assert_eq!(signal_of_exit_code(143), Some(SIGTERM));
        assert_eq!(signal_of_exit_code(3), None);
        assert_eq!(
            signal_of_exit_code(137),
            None,
            "SIGKILL is not a stop with a checkpoint"
        );
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
    }

    /// A real SIGUSR1 raised in this process lands in the request while the guard lives, and so it
    /// does under a second guard made after the first was dropped (were the first guard's default
    /// action still in force, the signal would end this test process).
    #[test]
    fn a_raised_signal_is_recorded_under_each_guard_in_turn() {
        for _ in 0..2 {
            let stop = StopRequest::new();
            let guard = stop.on_signals("the test stops").unwrap();
            signal_hook::low_level::raise(signal_hook::consts::SIGUSR1).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while stop.signal().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(stop.signal(), Some(signal_hook::consts::SIGUSR1));
            drop(guard);
        }
    }
}
