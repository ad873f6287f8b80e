//! An in-process fuzz harness that runs on stable Rust (no libFuzzer, no coverage feedback): per
//! target, seed inputs are run as they are, then mutated ([`mutate`]) or generated from the format's
//! structure ([`targets`]), written to a file on tmpfs and handed to the reader under
//! `catch_unwind`. Input `i` depends only on the seed, `i` and the corpus, so every crash is
//! reproducible from its saved file or from `(seed, index)`.
//!
//! Aborts (stack overflow, allocation failure) and hangs cannot be caught in-process, so each target
//! runs in a child process ([`run_target`] re-executes the current binary) under a memory limit;
//! the child records the index of the input it is about to run in a state file, and the parent,
//! when the child dies or stops advancing, saves the input, records the crash and starts a new
//! child after it. Used by `examples/fuzz.rs` (`scripts/fuzz.sh`) and `tests/fuzz.rs`; not part of
//! tagfix's supported API.

pub mod mutate;
pub mod targets;

use crate::rng::SplitMix64;
use mutate::Mutator;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Environment variable carrying a child's job (JSON); its presence makes a binary a fuzz child.
pub const CHILD_ENV: &str = "TAGFIX_FUZZ_CHILD";

/// One reader under test.
pub struct Target {
    pub name: &'static str,
    /// File name the input is written to; its extension selects the reader's format.
    pub file: &'static str,
    /// Runs the reader on the input (already written to `path`). Errors are fine; a panic is a crash.
    pub run: fn(path: &Path, input: &[u8]),
    /// Format tokens the mutator inserts.
    pub dict: &'static [&'static [u8]],
    /// Builds an input from the format's structure (a share of the inputs come from here).
    pub generate: Option<fn(&mut SplitMix64) -> Vec<u8>>,
    /// Crafted seed files `(name, bytes)`, written to `fuzz/corpus/<name>/` by `--write-corpus`.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
    /// Files (relative to the shared folder, `*` as the last component allowed) also used as seeds.
    pub shared_seeds: &'static [&'static str],
}

/// How long and how hard to fuzz one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Budget {
    pub seed: u64,
    /// Stop after this many executions.
    pub max_execs: u64,
    /// Stop after this much wall time.
    pub max_seconds: f64,
    /// An input running longer than this is a hang.
    pub timeout_seconds: f64,
    /// Limit on the child's heap and other private writable memory (MiB, `ulimit -d`, not `-v`: shared
    /// libraries such as libtorch and reserved but inaccessible ranges do not count); exceeding it
    /// aborts the allocation.
    pub memory_mb: u64,
    /// Longest input produced by mutation.
    pub max_len: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            seed: 1,
            max_execs: u64::MAX,
            max_seconds: 10.0,
            timeout_seconds: 10.0,
            memory_mb: 2048,
            max_len: 16 << 10,
        }
    }
}

/// How a target's child process is started: the current binary and the arguments that make it
/// call [`child_main`] (none for `examples/fuzz.rs`; a test filter for a test binary).
#[derive(Debug, Clone)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// What the child is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    target: String,
    budget: Budget,
    first: u64,
    end: u64,
    deadline_seconds: f64,
    seed_dirs: Vec<PathBuf>,
    work: PathBuf,
    crash_dir: PathBuf,
}

/// One distinct crash of a target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Crash {
    /// `panic`, `abort` (signal or exit code) or `hang`.
    pub kind: String,
    /// Panic message and location, or the child's last words.
    pub message: String,
    /// Index of the first input that caused it.
    pub index: u64,
    /// How many inputs caused it.
    pub count: u64,
    /// The first such input.
    pub saved: Option<PathBuf>,
}

/// The outcome of fuzzing one target.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub target: String,
    pub execs: u64,
    pub seconds: f64,
    pub seeds: usize,
    /// Keyed by a message with digits masked, so the same bug at other sizes counts once.
    pub crashes: BTreeMap<String, Crash>,
}

impl TargetReport {
    pub fn execs_per_second(&self) -> f64 {
        self.execs as f64 / self.seconds.max(1e-9)
    }
}

/// Seed inputs of a target: every file of its seed folders (sorted, cut to `max_len`), then its
/// shared files when the shared folder exists (long text files cut to whole lines); the crafted
/// seeds when there are none.
pub fn load_seeds(target: &Target, dirs: &[PathBuf], max_len: usize) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d.join(target.name)).ok())
        .flat_map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())))
        .collect();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .map(|mut b| {
            b.truncate(max_len);
            b
        })
        .collect();
    if let Some(shared) = crate::fsutil::shared_dir() {
        let files = target.shared_seeds.iter().flat_map(|p| expand(&shared, p));
        seeds.extend(files.filter_map(|p| std::fs::read(p).ok()).map(|b| {
            // long text lists (4585 alike lines) only slow every execution down: keep whole lines
            // of their first quarter of `max_len`
            let quarter = max_len / 4;
            if b.len() > quarter && std::str::from_utf8(&b).is_ok() {
                let cut = b[..quarter].iter().rposition(|&c| c == b'\n');
                b[..cut.map_or(quarter, |i| i + 1)].to_vec()
            } else {
                b[..b.len().min(max_len)].to_vec()
            }
        }));
    }
    if seeds.is_empty() {
        seeds = (target.seeds)().into_iter().map(|(_, b)| b).collect();
    }
    seeds
}

/// `dir/a/b` or every file of `dir/a` for `dir/a/*`, sorted.
fn expand(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    match pattern.strip_suffix("/*") {
        Some(folder) => {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(folder))
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            v.sort();
            v
        }
        None => vec![dir.join(pattern)],
    }
}

/// Input number `i`: the seeds as they are first, then (from an RNG seeded by `seed` and `i`) a
/// generated input or a mutated seed.
pub fn input_at(target: &Target, seeds: &[Vec<u8>], seed: u64, i: u64, max_len: usize) -> Vec<u8> {
    if let Some(s) = seeds.get(i as usize) {
        return s.clone();
    }
    let mut rng = SplitMix64(seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
    rng.next_u64();
    let mut data = match target.generate {
        Some(g) if seeds.is_empty() || rng.below(4) == 0 => {
            let mut d = g(&mut rng);
            d.truncate(max_len);
            if rng.below(2) == 0 {
                return d;
            }
            d
        }
        _ if seeds.is_empty() => Vec::new(),
        _ => seeds[rng.below(seeds.len() as u64) as usize].clone(),
    };
    Mutator::new(rng, target.dict, max_len).mutate(&mut data, seeds);
    data
}

/// The first panic since the last reset: message and location.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let mut slot = PANIC.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(format!("{msg} at {at}"));
    }));
}

/// In a binary that may be a fuzz child: runs the job given in [`CHILD_ENV`] and exits, else returns.
pub fn child_main(targets: &[Target]) {
    let Ok(job) = std::env::var(CHILD_ENV) else {
        return;
    };
    let job: Job = serde_json::from_str(&job).expect("fuzz child job");
    let target = targets
        .iter()
        .find(|t| t.name == job.target)
        .unwrap_or_else(|| panic!("no fuzz target `{}`", job.target));
    // the CLI runs readers on the main thread, whose stack is 8 MiB
    let code = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn_scoped(s, || run_child(target, &job))
            .expect("fuzz child thread")
            .join()
    });
    std::process::exit(if code.is_ok() { 0 } else { 101 });
}

/// The child's loop: runs inputs `first..end` until the deadline, recording panics as it goes.
fn run_child(target: &Target, job: &Job) {
    install_panic_hook();
    let b = &job.budget;
    let seeds = load_seeds(target, &job.seed_dirs, b.max_len);
    let input_path = job.work.join(target.file);
    let state = std::fs::OpenOptions::new()
        .write(true)
        .open(job.work.join("state"))
        .expect("fuzz state file");
    let deadline = Instant::now() + Duration::from_secs_f64(job.deadline_seconds);
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(job.work.join("panics.jsonl"))
        .expect("fuzz panic log");
    let mut i = job.first;
    while i < job.end && (i & 63 != 0 || Instant::now() < deadline) {
        let input = input_at(target, &seeds, b.seed, i, b.max_len);
        std::fs::write(&input_path, &input).expect("writing fuzz input");
        state.write_at(&i.to_le_bytes(), 0).expect("fuzz state");
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let caught = std::panic::catch_unwind(|| (target.run)(&input_path, &input));
        let message = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
        if caught.is_err() || message.is_some() {
            let message = message.unwrap_or_else(|| "panic without message".into());
            let saved = save_crash(&job.crash_dir, target, &message, &input);
            let rec = Crash {
                kind: "panic".into(),
                message,
                index: i,
                count: 1,
                saved,
            };
            serde_json::to_writer(&mut log, &rec).expect("fuzz panic log");
            std::io::Write::write_all(&mut log, b"\n").expect("fuzz panic log");
        }
        i += 1;
    }
    state.write_at(&i.to_le_bytes(), 8).expect("fuzz state");
}

/// A crash's identity: its message with digits masked (sizes and addresses vary).
fn crash_key(kind: &str, message: &str) -> String {
    let masked: String = message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    format!("{kind}: {masked}")
}

/// Saves a crashing input once per distinct crash: `<crash_dir>/<target>/<kind>-<hash>.<ext>`.
fn save_crash(dir: &Path, target: &Target, message: &str, input: &[u8]) -> Option<PathBuf> {
    let kind = message.split(':').next().unwrap_or("crash");
    let key = crash_key("", message);
    let hash = &crate::fsutil::sha256_hex(key.as_bytes())[..12];
    let ext = Path::new(target.file)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let kind: String = kind
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    let folder = dir.join(target.name);
    std::fs::create_dir_all(&folder).ok()?;
    let path = folder.join(format!("crash-{kind}-{hash}{ext}"));
    if !path.exists() {
        std::fs::write(&path, input).ok()?;
    }
    Some(path)
}

/// Fuzzes one target in child processes until the budget is spent; see the module comment.
pub fn run_target(
    target: &Target,
    budget: &Budget,
    seed_dirs: &[PathBuf],
    crash_dir: &Path,
    child: &ChildCommand,
) -> std::io::Result<TargetReport> {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let work = tempfile::Builder::new()
        .prefix(&format!("tagfix-fuzz-{}-", target.name))
        .tempdir_in(base)?;
    let start = Instant::now();
    let mut crashes: BTreeMap<String, Crash> = BTreeMap::new();
    let mut next = 0u64;
    while next < budget.max_execs {
        let left = budget.max_seconds - start.elapsed().as_secs_f64();
        if left <= 0.0 && next > 0 {
            break;
        }
        let job = Job {
            target: target.name.into(),
            budget: budget.clone(),
            first: next,
            end: budget.max_execs,
            deadline_seconds: left.max(0.0),
            seed_dirs: seed_dirs.to_vec(),
            work: work.path().to_path_buf(),
            crash_dir: crash_dir.to_path_buf(),
        };
        let outcome = run_child_process(&job, child)?;
        let (at, done) = read_state(work.path())?;
        for c in drain_panics(work.path())? {
            merge(&mut crashes, c);
        }
        let started = at != next.wrapping_sub(1);
        match outcome {
            ChildEnd::Finished if done != u64::MAX => next = done,
            ChildEnd::Finished if started => {
                merge(&mut crashes, unexplained_exit(at));
                next = at.wrapping_add(1);
            }
            ChildEnd::Finished => {
                return Err(std::io::Error::other(format!(
                    "fuzz child of `{}` exited before its first input",
                    target.name
                )));
            }
            ChildEnd::Died(message) | ChildEnd::Hung(message) if !started => {
                return Err(std::io::Error::other(format!(
                    "fuzz child of `{}` failed before its first input: {message}",
                    target.name
                )));
            }
            ChildEnd::Died(message) | ChildEnd::Hung(message) => {
                let kind = if message.starts_with("hang") {
                    "hang"
                } else {
                    "abort"
                };
                let input = std::fs::read(work.path().join(target.file)).unwrap_or_default();
                let saved = save_crash(crash_dir, target, &format!("{kind}: {message}"), &input);
                let c = Crash {
                    kind: kind.into(),
                    message,
                    index: at,
                    count: 1,
                    saved,
                };
                merge(&mut crashes, c);
                next = at + 1;
            }
        }
    }
    let seeds = load_seeds(target, seed_dirs, budget.max_len).len();
    Ok(TargetReport {
        target: target.name.into(),
        execs: next,
        seconds: start.elapsed().as_secs_f64(),
        seeds,
        crashes,
    })
}

fn unexplained_exit(at: u64) -> Crash {
    Crash {
        kind: "abort".into(),
        message: "child exited early with status 0 (std::process::exit in a reader?)".into(),
        index: at,
        count: 1,
        saved: None,
    }
}

fn merge(into: &mut BTreeMap<String, Crash>, c: Crash) {
    into.entry(crash_key(&c.kind, &c.message))
        .and_modify(|e| e.count += c.count)
        .or_insert(c);
}

enum ChildEnd {
    /// Exit status 0: the budget or the deadline was reached.
    Finished,
    /// Killed by a signal or exited with an error; the child's last stderr line.
    Died(String),
    /// Stopped advancing for longer than the timeout and was killed.
    Hung(String),
}

/// The state file: `[input being run, index after the last input run]`, little-endian u64s.
fn read_state(work: &Path) -> std::io::Result<(u64, u64)> {
    let b = std::fs::read(work.join("state"))?;
    let word = |k: usize| u64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
    Ok((word(0), word(1)))
}

fn drain_panics(work: &Path) -> std::io::Result<Vec<Crash>> {
    let path = work.join("panics.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    std::fs::remove_file(&path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// How long a child may take to reach its first input (a hang is still `timeout_seconds` per input).
const CHILD_START_ALLOWANCE: Duration = Duration::from_secs(60);

/// Starts one child under the memory limit and watches it for progress.
fn run_child_process(job: &Job, child: &ChildCommand) -> std::io::Result<ChildEnd> {
    let state_path = job.work.join("state");
    let unset = u64::MAX.to_le_bytes();
    std::fs::write(
        &state_path,
        [job.first.wrapping_sub(1).to_le_bytes(), unset].concat(),
    )?;
    let mut proc = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -d "$TAGFIX_FUZZ_MEM_KB" && exec "$0" "$@""#)
        .arg(&child.program)
        .args(&child.args)
        .env(
            "TAGFIX_FUZZ_MEM_KB",
            (job.budget.memory_mb * 1024).to_string(),
        )
        .env(CHILD_ENV, serde_json::to_string(job).expect("job json"))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = proc.stderr.take().expect("piped stderr");
    let tail = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    let timeout = Duration::from_secs_f64(job.budget.timeout_seconds);
    // Before its first input the child is still starting (exec, shared libraries, seeds), which
    // under load can take longer than one input may: that phase gets its own allowance.
    let not_started = job.first.wrapping_sub(1);
    let (mut last, mut since) = (u64::MAX - 1, Instant::now());
    let status = loop {
        if let Some(status) = proc.try_wait()? {
            break Some(status);
        }
        let (at, _) = read_state(&job.work)?;
        let limit = if at == not_started {
            timeout.max(CHILD_START_ALLOWANCE)
        } else {
            timeout
        };
        if at != last {
            (last, since) = (at, Instant::now());
        } else if since.elapsed() > limit {
            proc.kill()?;
            proc.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = tail.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&err);
    let words: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note:"))
        .collect();
    let last_line = words[words.len().saturating_sub(2)..].join(" | ");
    Ok(match status {
        None if last == not_started => ChildEnd::Hung(format!(
            "hang: the child did not reach its first input within {:.0} s",
            timeout.max(CHILD_START_ALLOWANCE).as_secs_f64()
        )),
        None => ChildEnd::Hung(format!(
            "hang: no progress for {:.1} s",
            timeout.as_secs_f64()
        )),
        Some(s) if s.success() => ChildEnd::Finished,
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match s.signal() {
                Some(sig) => format!("signal {sig}"),
                None => format!("exit code {}", s.code().unwrap_or(-1)),
            };
            ChildEnd::Died(format!("{how}: {last_line}"))
        }
    })
}

/// A plain-text table of reports, one line per target, then one line per distinct crash.
pub fn render(reports: &[TargetReport]) -> String {
    let mut out = format!(
        "{:<18} {:>12} {:>10} {:>8}\n",
        "target", "executions", "execs/s", "crashes"
    );
    for r in reports {
        out += &format!(
            "{:<18} {:>12} {:>10.0} {:>8}\n",
            r.target,
            r.execs,
            r.execs_per_second(),
            r.crashes.len()
        );
    }
    for r in reports {
        for c in r.crashes.values() {
            out += &format!(
                "  {}: {} ×{} (first at input {}) {} -> {}\n",
                r.target,
                c.kind,
                c.count,
                c.index,
                c.message,
                c.saved
                    .as_ref()
                    .map_or("(not saved)".into(), |p| p.display().to_string())
            );
        }
    }
    out
}
