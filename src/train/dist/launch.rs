//! The single-node launcher behind `tagfix train --nproc-per-node N`: starts N copies of a program
//! with torchrun's environment contract, prefixes their output lines with `[rank r]`, and when one
//! rank fails stops the others (SIGTERM, then SIGKILL after a grace period) and names it. A stop
//! signal the launcher gets (a scheduler's SIGTERM, Ctrl-C) goes on to every rank, which stop after
//! the same step with a checkpoint; the launch then ends with that signal's status.

use super::DistError;
use crate::train::interrupt::{signal_of_exit_code, StopRequest};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// The program every rank runs (`tagfix` itself: `std::env::current_exe()`).
    pub program: PathBuf,
    /// Its arguments, the same for every rank.
    pub args: Vec<OsString>,
    /// Ranks to start (WORLD_SIZE = LOCAL_WORLD_SIZE).
    pub nproc: usize,
    /// Rendezvous address (MASTER_ADDR).
    pub master_addr: String,
    /// Rendezvous port (MASTER_PORT); `None` picks a free one.
    pub master_port: Option<u16>,
    /// How long a rank has to exit after SIGTERM before it gets SIGKILL.
    pub grace: Duration,
    /// Set by a stop signal to the launcher ([`StopRequest::on_signals`]): forwarded to every rank.
    pub stop: StopRequest,
}

impl LaunchRequest {
    /// `nproc` ranks of `program args` meeting on loopback at a free port, 5 s of grace.
    pub fn new(program: PathBuf, args: Vec<OsString>, nproc: usize) -> Self {
        LaunchRequest {
            program,
            args,
            nproc,
            master_addr: "127.0.0.1".into(),
            master_port: None,
            grace: Duration::from_secs(5),
            stop: StopRequest::new(),
        }
    }
}

/// Where the ranks' prefixed lines go (the launcher's stdout and stderr, or buffers in tests).
pub type Sink = Arc<Mutex<dyn Write + Send>>;

/// `args` without `flag` and its value (`--flag N` or `--flag=N`): what the ranks get.
pub fn without_flag(args: &[OsString], flag: &str) -> Vec<OsString> {
    let prefix = format!("{flag}=");
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.to_str() {
            Some(s) if s == flag => skip_value = true,
            Some(s) if s.starts_with(&prefix) => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

/// A free TCP port on `addr` (bound and released: a small window remains for another process).
pub fn free_port(addr: &str) -> Result<u16, DistError> {
    let listener =
        std::net::TcpListener::bind((addr, 0)).map_err(|source| DistError::Launcher {
            message: format!("no free TCP port on {addr}"),
            source,
        })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| DistError::Launcher {
            message: "reading the bound port".into(),
            source,
        })
}

/// Copies `from` line by line into `to`, each line prefixed with `prefix`.
fn forward(from: impl Read + Send + 'static, to: Sink, prefix: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let mut out = to.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = out.write_all(prefix.as_bytes());
                    let _ = out.write_all(&line);
                    let _ = out.flush();
                }
            }
        }
    })
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended ({status})"),
    }
}

/// Asks a child to stop (SIGTERM on Unix).
fn terminate(child: &Child) {
    #[cfg(unix)]
    send_signal(child, libc::SIGTERM);
    #[cfg(not(unix))]
    let _ = child;
}

/// Sends `signal` to a child that has not been reaped.
#[cfg(unix)]
fn send_signal(child: &Child, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: signalling our own child, whose pid we hold and have not reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// The stop signal a rank ended on: its exit status 128 + signal (it saved a checkpoint first) or,
/// once the launcher itself was asked to stop, death by that signal (a rank still preparing, before
/// its handlers were installed: no step of this launch to lose).
fn stop_signal_of(status: ExitStatus, stop: &StopRequest) -> Option<i32> {
    if let Some(signal) = status.code().and_then(signal_of_exit_code) {
        return Some(signal);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        let stop_signals = crate::train::interrupt::STOP_SIGNALS;
        if let Some(signal) = status.signal().filter(|s| stop_signals.contains(s)) {
            return stop.signal().map(|_| signal);
        }
    }
    let _ = stop;
    None
}

/// Starts the ranks and waits for them. `Ok` when every rank exits with status 0; when one fails,
/// the others are stopped and the error names the first that failed.
pub fn launch(req: &LaunchRequest, stdout: Sink, stderr: Sink) -> Result<(), DistError> {
    if req.nproc == 0 {
        return Err(DistError::NoProcesses);
    }
    let port = match req.master_port {
        Some(p) => p,
        None => free_port(&req.master_addr)?,
    };
    let mut children: Vec<Option<Child>> = Vec::with_capacity(req.nproc);
    let mut forwarders = Vec::new();
    for rank in 0..req.nproc {
        match spawn_rank(req, rank, port) {
            Ok(mut child) => {
                let prefix = format!("[rank {rank}] ");
                if let Some(out) = child.stdout.take() {
                    forwarders.push(forward(out, stdout.clone(), prefix.clone()));
                }
                if let Some(err) = child.stderr.take() {
                    forwarders.push(forward(err, stderr.clone(), prefix));
                }
                children.push(Some(child));
            }
            Err(e) => {
                stop_all(&mut children, req.grace);
                return Err(e);
            }
        }
    }
    let result = supervise(&mut children, req.grace, &req.stop);
    for f in forwarders {
        let _ = f.join();
    }
    result
}

fn spawn_rank(req: &LaunchRequest, rank: usize, port: u16) -> Result<Child, DistError> {
    let mut cmd = Command::new(&req.program);
    cmd.args(&req.args)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("GROUP_RANK", "0")
        .env("WORLD_SIZE", req.nproc.to_string())
        .env("LOCAL_WORLD_SIZE", req.nproc.to_string())
        .env("MASTER_ADDR", &req.master_addr)
        .env("MASTER_PORT", port.to_string())
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it makes the rank receive SIGTERM if the launcher
        // dies, so no rank outlives it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    cmd.spawn().map_err(|source| DistError::Spawn {
        rank,
        program: req.program.display().to_string(),
        source,
    })
}

/// Polls the ranks until all have exited; the first failure stops the rest. A stop signal to the
/// launcher is passed on to every rank once; ranks that end on a stop signal are not failures, and
/// the launch then ends with [`DistError::Interrupted`].
fn supervise(
    children: &mut [Option<Child>],
    grace: Duration,
    stop: &StopRequest,
) -> Result<(), DistError> {
    let mut forwarded = false;
    let mut interrupted = None;
    loop {
        #[cfg(unix)]
        if let Some(signal) = stop.signal().filter(|_| !forwarded) {
            children
                .iter()
                .flatten()
                .for_each(|c| send_signal(c, signal));
            forwarded = true;
        }
        let mut running = false;
        for rank in 0..children.len() {
            let Some(child) = children[rank].as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(None) => running = true,
                Ok(Some(status)) => {
                    children[rank] = None;
                    if let Some(signal) = stop_signal_of(status, stop) {
                        interrupted.get_or_insert(signal);
                    } else if !status.success() {
                        stop_all(children, grace);
                        return Err(DistError::RankFailed {
                            rank,
                            status: describe(status),
                            code: status.code(),
                        });
                    }
                }
                Err(source) => {
                    stop_all(children, grace);
                    return Err(DistError::Launcher {
                        message: format!("waiting for rank {rank}"),
                        source,
                    });
                }
            }
        }
        if !running {
            return match interrupted {
                Some(signal) => Err(DistError::Interrupted { signal }),
                None => Ok(()),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to every running rank, SIGKILL to those still running after `grace`, then reaps them.
fn stop_all(children: &mut [Option<Child>], grace: Duration) {
    for child in children.iter().flatten() {
        terminate(child);
    }
    let deadline = Instant::now() + grace;
    for child in children.iter_mut().flatten() {
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// Which rank endings are a stop on a signal rather than a failure.
    #[cfg(unix)]
    #[test]
    fn a_rank_that_ended_on_a_stop_signal_is_stopped_not_failed() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let killed = |signal: i32| ExitStatus::from_raw(signal);
        let idle = StopRequest::new();
        let asked = StopRequest::new();
        asked.request(libc::SIGTERM);
        // 128 + signal: the rank saved its checkpoint and said so, whoever asked.
        assert_eq!(stop_signal_of(exited(143), &idle), Some(libc::SIGTERM));
        assert_eq!(stop_signal_of(exited(138), &idle), Some(libc::SIGUSR1));
        // Killed by a stop signal: stopped only when the launcher was asked to stop (a rank still
        // preparing); otherwise something else killed it.
        assert_eq!(
            stop_signal_of(killed(libc::SIGINT), &asked),
            Some(libc::SIGINT)
        );
        assert_eq!(stop_signal_of(killed(libc::SIGTERM), &idle), None);
        for failed in [exited(2), exited(3), killed(libc::SIGKILL)] {
            assert_eq!(stop_signal_of(failed, &asked), None, "{failed:?}");
        }
    }

    #[test]
    fn strips_the_flag_and_its_value() {
        assert_eq!(
            without_flag(
                &os(&["train", "--nproc-per-node", "4", "--out", "r"]),
                "--nproc-per-node"
            ),
            os(&["train", "--out", "r"])
        );
        assert_eq!(
            without_flag(
                &os(&["train", "--nproc-per-node=4", "--out", "r"]),
                "--nproc-per-node"
            ),
            os(&["train", "--out", "r"])
        );
        assert_eq!(
            without_flag(&os(&["train", "--nproc-per-nodes"]), "--nproc-per-node"),
            os(&["train", "--nproc-per-nodes"])
        );
    }
}
