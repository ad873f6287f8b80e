//! The short fuzz run of the test suite (`harness = false`: this binary is also the fuzz child it
//! starts). First a canary target proves that panics, aborts (allocation failure, stack overflow)
//! and hangs are caught, saved and counted; then every reader target runs a fixed number of inputs
//! from seed 1 and must not crash.

use std::path::{Path, PathBuf};
use tagfix::fuzz::{self, Budget, ChildCommand, Target};

/// Executions per reader target: a few seconds each in a debug build.
const EXECS: u64 = 3000;

fn canary(_: &Path, input: &[u8]) {
    let has = |w: &[u8]| memchr::memmem::find(input, w).is_some();
    if has(b"PANIC") {
        panic!("canary panic");
    }
    if has(b"ABORT") {
        std::process::abort();
    }
    if has(b"OOM") {
        // 1.5 GiB: more than the canary's 1 GiB limit, far less than the machine has
        let v = vec![0u8; 3 << 29];
        std::hint::black_box(&v);
    }
    if has(b"STACK") {
        #[allow(unconditional_recursion)]
        fn deep(n: u64) -> u64 {
            let pad = std::hint::black_box([n; 64]);
            deep(n + 1) + pad[3]
        }
        std::hint::black_box(deep(0));
    }
    if has(b"HANG") {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

fn canary_seeds() -> Vec<(String, Vec<u8>)> {
    [
        "fine", "a PANIC", "ABORT", "OOM", "STACK", "HANG", "fine too",
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| (format!("{i}"), s.as_bytes().to_vec()))
    .collect()
}

fn targets() -> Vec<Target> {
    let mut all = fuzz::targets::all();
    all.push(Target {
        name: "canary",
        file: "canary.txt",
        run: canary,
        dict: &[],
        generate: None,
        seeds: canary_seeds,
        shared_seeds: &[],
    });
    all
}

fn child() -> ChildCommand {
    ChildCommand {
        program: std::env::current_exe().expect("test binary path"),
        args: Vec::new(),
    }
}

fn check_canary(all: &[Target], crash_dir: &Path) -> Result<(), String> {
    let t = all.iter().find(|t| t.name == "canary").expect("canary");
    let budget = Budget {
        max_execs: 7,
        max_seconds: 120.0,
        timeout_seconds: 1.0,
        memory_mb: 1024,
        ..Budget::default()
    };
    let r = fuzz::run_target(t, &budget, &[], crash_dir, &child()).map_err(|e| e.to_string())?;
    print!("{}", fuzz::render(std::slice::from_ref(&r)));
    if r.execs != 7 {
        return Err(format!("canary: {} executions, expected 7", r.execs));
    }
    let expect = [
        (1, "panic", "canary panic"),
        (2, "abort", "signal 6"),
        (3, "abort", "memory allocation of 1610612736 bytes failed"),
        (4, "abort", "overflowed its stack"),
        (5, "hang", "no progress"),
    ];
    if r.crashes.len() != expect.len() {
        return Err(format!(
            "canary: {} distinct crashes, expected 5",
            r.crashes.len()
        ));
    }
    for (index, kind, says) in expect {
        let c = r
            .crashes
            .values()
            .find(|c| c.index == index)
            .ok_or(format!("canary: no crash at input {index}"))?;
        let saved = c.saved.as_ref().ok_or("canary: crash input not saved")?;
        let bytes = std::fs::read(saved).map_err(|e| e.to_string())?;
        if c.kind != kind || !c.message.contains(says) || bytes != canary_seeds()[index as usize].1
        {
            return Err(format!("canary: input {index} gave {c:?}"));
        }
    }
    Ok(())
}

fn main() {
    let all = targets();
    fuzz::child_main(&all);
    let crash_dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    if let Err(e) = check_canary(&all, crash_dir.path()) {
        failures.push(e);
    }
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let budget = Budget {
        max_execs: EXECS,
        max_seconds: 600.0,
        ..Budget::default()
    };
    let mut reports = Vec::new();
    for t in all.iter().filter(|t| t.name != "canary") {
        match fuzz::run_target(
            t,
            &budget,
            std::slice::from_ref(&corpus),
            crash_dir.path(),
            &child(),
        ) {
            Ok(r) => {
                if !r.crashes.is_empty() || r.execs != EXECS {
                    failures.push(format!(
                        "{}: {} crashes in {} executions",
                        r.target,
                        r.crashes.len(),
                        r.execs
                    ));
                }
                reports.push(r);
            }
            Err(e) => failures.push(format!("{}: {e}", t.name)),
        }
    }
    print!("{}", fuzz::render(&reports));
    if !failures.is_empty() {
        eprintln!("fuzz test failed:\n  {}", failures.join("\n  "));
        std::process::exit(1);
    }
    println!("fuzz: canary and {} reader targets passed", reports.len());
}
