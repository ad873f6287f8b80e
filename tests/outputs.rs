//! Outputs never destroy (the real binary): `--out` / `--report` onto a symbolic link, a FIFO, `-`,
//! `/dev/full` or an input file; temporary files named after their destination and cleaned up after
//! a killed run; `.npy` provenance bound to its data by hash.
#![cfg(unix)]

mod common;

use assert_cmd::Command;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

fn tagfix(dir: &Path) -> Command {
    let mut c = common::tagfix();
    c.current_dir(dir);
    c
}

/// A folder with a six-tag vocabulary and a synthesized annotation file of 40 records.
struct Setup {
    dir: tempfile::TempDir,
    vocab: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let vocab = dir.path().join("tags.txt");
        std::fs::write(&vocab, "cat\ndog\nemu\nfox\nyak\nowl\n").unwrap();
        let data = dir.path().join("data.json");
        let s = Setup { dir, vocab, data };
        let out = s.synth("40", s.data.to_str().unwrap(), &["--absent", "1"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        tagfix(self.dir.path()).args(args).output().unwrap()
    }

    /// `tagfix synth` of `records` records of the vocabulary into `out`, with `extra` flags.
    fn synth(&self, records: &str, out: &str, extra: &[&str]) -> Output {
        let vocab = self.vocab.to_str().unwrap();
        let mut args = vec![
            "synth",
            "--records",
            records,
            "--vocab",
            vocab,
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `tagfix check` (k = 2, for the few rows of these files) with `args`.
    fn check(&self, args: &[&str]) -> Output {
        let mut all = vec!["check", "--k", "2", "--also-k", "2"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `tagfix diff` of the data with `extra` flags.
    fn diff(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "diff",
            "--vocab",
            self.vocab.to_str().unwrap(),
            "--data",
            self.data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_manifest(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v["schema"].as_str().is_some_and(|s| s.contains("manifest")))
}

#[test]
fn a_symbolic_link_keeps_pointing_at_the_new_content() {
    let s = Setup::new();
    let real = s.path("real.json");
    std::fs::write(&real, "old").unwrap();
    let link = s.path("link.json");
    std::os::unix::fs::symlink("real.json", &link).unwrap();
    let report_real = s.path("report.txt");
    std::fs::write(&report_real, "old").unwrap();
    let report_link = s.path("report-link.txt");
    std::os::unix::fs::symlink(&report_real, &report_link).unwrap();
    let out = s.diff(&[
        "--out",
        link.to_str().unwrap(),
        "--report",
        report_link.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(std::fs::symlink_metadata(&report_link)
        .unwrap()
        .is_symlink());
    assert!(is_manifest(&std::fs::read(&real).unwrap()));
    let report = std::fs::read_to_string(&report_real).unwrap();
    assert!(report.contains("absent"), "{report}");
}

#[test]
fn a_fifo_is_streamed_to_not_replaced() {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    let s = Setup::new();
    let fifo = s.path("report.pipe");
    mknodat(CWD, &fifo, FileType::Fifo, Mode::from(0o600), 0).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::fs::File::open(&fifo)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        })
    };
    let out = s.diff(&["--format", "json", "--report", fifo.to_str().unwrap()]);
    // Should the command have failed before opening the FIFO, a writer of our own releases the reader.
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&fifo);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&reader.join().unwrap()).unwrap();
    assert_eq!(report["summary"]["slots"], 6, "{report}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_dash_is_standard_output() {
    let s = Setup::new();
    let out = s.diff(&["--format", "json", "--report", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["slots"], 6);
    assert!(!s.path("-").exists());

    let report = s.path("report.txt");
    let out = s.diff(&["--out", "-", "--report", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(is_manifest(&out.stdout));
    assert!(report.is_file() && !s.path("-").exists());

    // The manifest and the report cannot share standard output.
    let out = s.diff(&["--out", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("standard output"), "{}", stderr(&out));

    // synth's records own standard output; its summary moves to stderr.
    let out = s.synth("3", "-", &["--jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    assert!(
        stderr(&out).contains("wrote - (3 records"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_full_device_is_a_clear_error() {
    if !Path::new("/dev/full").exists() {
        common::skip::<()>("a_full_device_is_a_clear_error", "no /dev/full");
        return;
    }
    let s = Setup::new();
    let out = s.diff(&["--report", "/dev/full"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("/dev/full") && err.contains("No space left"),
        "{err}"
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/full")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn an_input_is_refused_as_output_before_any_work() {
    let s = Setup::new();
    let hard = s.path("hard.json");
    std::fs::hard_link(&s.data, &hard).unwrap();
    let soft = s.path("soft.json");
    std::os::unix::fs::symlink(&s.data, &soft).unwrap();
    let before = std::fs::read(&s.data).unwrap();
    for (flag, out) in [("--out", &s.data), ("--out", &hard), ("--report", &soft)] {
        let o = s.diff(&[flag, out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{flag} {}", out.display());
        assert!(
            stderr(&o).contains("never writes over its inputs"),
            "{}",
            stderr(&o)
        );
        assert_eq!(std::fs::read(&s.data).unwrap(), before);
    }
    // Before any work: a broken data file is not even read.
    let broken = s.path("broken.json");
    std::fs::write(&broken, "[{").unwrap();
    let o = tagfix(s.dir.path())
        .args(["diff", "--vocab", s.vocab.to_str().unwrap(), "--data"])
        .args([&broken, &s.data])
        .args(["--out", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("never writes over its inputs"));
    assert_eq!(std::fs::read(&broken).unwrap(), b"[{");
    // The vocabulary is an input too.
    let o = s.synth("5", s.vocab.to_str().unwrap(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        s.vocab.is_file()
            && std::fs::read_to_string(&s.vocab)
                .unwrap()
                .starts_with("cat")
    );
}

/// Hidden files in `dir` that look like tagfix's temporary files.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tagfix-"))
        .collect()
}

#[test]
fn a_stale_temporary_file_is_removed_and_reported() {
    let s = Setup::new();
    let stale = s.path(".manifest.json.tagfix-Ab12Cd.tmp");
    std::fs::write(&stale, "half a manifest").unwrap();
    let other = s.path(".other.json.tagfix-Ab12Cd.tmp");
    std::fs::write(&other, "another destination's").unwrap();
    let out = s.diff(&["--out", "manifest.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stale.exists());
    assert!(other.exists());
    let err = stderr(&out);
    assert!(
        err.contains("removed") && err.contains(".manifest.json.tagfix-Ab12Cd.tmp"),
        "{err}"
    );
    assert!(is_manifest(
        &std::fs::read(s.path("manifest.json")).unwrap()
    ));
}

#[test]
fn a_killed_synth_leaves_a_named_temporary_file_the_next_run_removes() {
    let s = Setup::new();
    let big = s.path("big.json");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tagfix"))
        .current_dir(s.dir.path())
        .args(["--quiet", "synth", "--records", "50000000", "--vocab"])
        .arg(&s.vocab)
        .arg("--out")
        .arg(&big)
        .spawn()
        .unwrap();
    // Wait (bounded) until the temporary file has data, then kill -9 in the middle of the write.
    let mut found = Vec::new();
    for _ in 0..6000 {
        found = temps(s.dir.path());
        let has_data = found
            .iter()
            .any(|n| std::fs::metadata(s.path(n)).is_ok_and(|m| m.len() > 0));
        if has_data || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let name = &found[0];
    assert!(
        name.starts_with(".big.json.tagfix-") && name.ends_with(".tmp"),
        "{name}"
    );
    assert!(!big.exists());
    let out = s.synth("5", big.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(name.as_str()), "{}", stderr(&out));
    assert!(temps(s.dir.path()).is_empty());
    assert!(big.is_file());
}

/// `check --json -`: the JSON report on standard output, the table in --out.
#[test]
fn check_reports_go_where_they_are_told() {
    use tagfix::tensors::EmbeddingFile;
    let s = Setup::new();
    let a = s.path("a.npy");
    EmbeddingFile::new(vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8], 3, 2)
        .write(&a)
        .unwrap();
    let table = s.path("table.txt");
    let out = s.check(&[
        "--baseline",
        "a.npy",
        "--candidate",
        "a.npy",
        "--out",
        table.to_str().unwrap(),
        "--json",
        "-",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert!(table.is_file());
    // The candidate is an input: a report over it is refused, the file left intact.
    let before = std::fs::read(&a).unwrap();
    let out = s.check(&[
        "--baseline",
        "a.npy",
        "--candidate",
        "a.npy",
        "--junit",
        "a.npy",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(&a).unwrap(), before);
}

/// The provenance of a `.npy` names the data's sha256; `check` refuses data beside another run's
/// provenance (what a kill between embed's two renames leaves).
#[test]
fn npy_provenance_that_names_other_data_is_refused() {
    use tagfix::embed::{write_output, EmbedOutput};
    use tagfix::tensors::{EmbeddingFile, Provenance};
    let s = Setup::new();
    let base = s.path("base.npy");
    let values = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8, 0.8, 0.6];
    EmbeddingFile::new(values.clone(), 4, 2)
        .write(&base)
        .unwrap();
    let patched = s.path("patched.npy");
    let output = |v: Vec<f32>| EmbedOutput {
        embeddings: EmbeddingFile::new(v, 4, 2),
        control: None,
        provenance: Provenance {
            tag_count: 4,
            rows_per_slot: 1,
            model: "simulated".into(),
            regenerated_slots: vec![3],
            ..Default::default()
        },
    };
    write_output(&patched, &output(values.clone())).unwrap();
    // NumPy's header keeps only its own keys: np.load refuses any other.
    let bytes = std::fs::read(&patched).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..128]);
    assert!(
        header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2)}"),
        "{header}"
    );
    let check = || {
        s.check(&[
            "--baseline",
            "base.npy",
            "--candidate",
            "patched.npy",
            "--format",
            "json",
        ])
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["candidate"]["model"], "simulated", "{report}");

    // New rows renamed into place, the old provenance still beside them.
    let mut other = values;
    other[7] = 0.5;
    EmbeddingFile::new(other, 4, 2).write(&patched).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("patched.npy.provenance.json") && err.contains("describes other data"),
        "{err}"
    );
}

/// The real `embed` into an `.npy` through a symbolic link: data and provenance beside the link's
/// target, bound by hash; a rerun's data beside the first run's provenance (a kill between the two
/// renames) is refused by `check`; `--out` onto `--base` is refused before the model loads.
#[cfg(feature = "embed")]
#[test]
fn embed_npy_provenance_follows_its_data() {
    let test = "embed_npy_provenance_follows_its_data";
    if common::setup_file("models/minilm/descriptor.toml", test).is_none() {
        return;
    }
    let s = Setup::new();
    std::fs::create_dir(s.path("real")).unwrap();
    std::os::unix::fs::symlink("real/e.npy", s.path("e.npy")).unwrap();
    let embed = |extra: &[&str]| {
        let vocab = s.vocab.to_str().unwrap();
        let mut args = vec!["embed", "--vocab", vocab, "--model", "minilm", "--out"];
        args.extend_from_slice(extra);
        s.run(&args)
    };
    let out = embed(&["e.npy", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(s.path("e.npy"))
        .unwrap()
        .is_symlink());
    let data = s.path("real/e.npy");
    let sidecar = s.path("real/e.npy.provenance.json");
    let first: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(
        first["data_sha256"],
        tagfix::fsutil::sha256_file(&data).unwrap()
    );
    let check = || s.check(&["--baseline", "e.npy", "--candidate", "e.npy"]);
    assert_eq!(check().status.code(), Some(0));

    let first_sidecar = std::fs::read(&sidecar).unwrap();
    let out = embed(&["e.npy", "--all", "--recipe", "ram-ensemble"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(&sidecar, first_sidecar).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("describes other data"),
        "{}",
        stderr(&out)
    );

    let before = std::fs::read(&data).unwrap();
    let out = embed(&["e.npy", "--base", "real/e.npy", "--slots", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("never writes over its inputs"));
    assert_eq!(std::fs::read(&data).unwrap(), before);
}

/// A reader that goes away (`tagfix ... | head`) ends tagfix by SIGPIPE, as any Unix filter, and
/// never as a panic from `println!`.
#[test]
fn closed_stdout_pipe_is_no_panic() {
    use std::os::unix::process::ExitStatusExt;
    // `inspect --json` prints one JSON document of well over a pipe's 64 KiB buffer.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.safetensors");
    let tensors = (0..4000)
        .map(|i| {
            let t = tagfix::tensors::Tensor::from_f32(vec![1], &[0.5]).unwrap();
            (
                format!("module_{i}.some_rather_long_parameter_name.weight"),
                t,
            )
        })
        .collect();
    let set = tagfix::tensors::TensorSet {
        tensors,
        metadata: Default::default(),
    };
    tagfix::tensors::safetensors_io::write(&file, &set).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tagfix"))
        .args(["inspect", "--json"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little, then close the pipe while tagfix still has most of the document to print.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc_sigpipe()),
        "{:?}: {err}",
        out.status
    );
}

fn libc_sigpipe() -> i32 {
    13 // SIGPIPE on Linux and the BSDs
}
