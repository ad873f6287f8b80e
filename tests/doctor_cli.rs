//! `tagfix doctor`: every item is reported once with a fix when it is not present, the exit code follows
//! the report (`--require` and broken items), and the items the test setup installs are found.

mod common;

use assert_cmd::Command;
use serde_json::Value;

fn doctor(args: &[&str]) -> (Value, i32) {
    let out = Command::cargo_bin("tagfix")
        .unwrap()
        .arg("doctor")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (report, code)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` in {report}"))
}

#[test]
fn report_lists_every_item_and_exit_code_follows_it() {
    let (report, code) = doctor(&[]);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, tagfix::doctor::CHECK_NAMES);
    for c in report["checks"].as_array().unwrap() {
        assert_eq!(c["fix"].is_string(), c["status"] != "ok", "{c}");
    }
    let broken = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "error")
        .count();
    assert_eq!(code, if broken == 0 { 0 } else { 1 }, "{report}");
    assert_eq!(report["failing"].as_array().unwrap().len(), broken);

    // What the build and the setup provide is found.
    let want_embed = cfg!(feature = "embed");
    assert_eq!(check(&report, "embed")["status"] == "ok", want_embed);
    if want_embed {
        assert_eq!(check(&report, "onnxruntime")["status"], "ok", "{report}");
        assert_eq!(check(&report, "minilm")["status"], "ok", "{report}");
    }
    if cfg!(feature = "train") {
        let torch = check(&report, "libtorch");
        assert_eq!(torch["status"], "ok", "{report}");
        assert!(
            torch["detail"].as_str().unwrap().contains("libtorch_cpu"),
            "{torch}"
        );
    }
    if common::shared_dir_for_test("doctor: the ram vocabulary").is_some() {
        assert_eq!(check(&report, "ram")["status"], "ok", "{report}");
    }
}

#[test]
fn require_turns_a_missing_item_into_exit_1() {
    let (report, code) = doctor(&["--require", "cuda"]);
    let cuda = check(&report, "cuda");
    if cuda["status"] == "ok" {
        assert_eq!(code, 0);
    } else {
        assert_eq!(code, 1, "{report}");
        assert!(report["failing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "cuda"));
        let fix = cuda["fix"].as_str().unwrap();
        assert!(
            fix.contains("setup-gpu.sh")
                || fix.contains("nvidia-smi")
                || fix.contains("--all-features"),
            "{fix}"
        );
    }
    let out = Command::cargo_bin("tagfix")
        .unwrap()
        .args(["doctor", "--require", "warp-drive"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("libtorch-cuda"));
}

/// `onnxruntime-cuda` with ONNX Runtime's CPU build: reported absent with the install to do, and
/// `--require onnxruntime-cuda` fails with exit 1.
#[cfg(feature = "embed")]
#[test]
fn require_onnxruntime_cuda_fails_with_the_cpu_build() {
    let test = "require_onnxruntime_cuda_fails_with_the_cpu_build";
    let Some(cpu_lib) = common::setup_file(".deps/libonnxruntime.so", test) else {
        return;
    };
    let out = Command::cargo_bin("tagfix")
        .unwrap()
        .env("ORT_DYLIB_PATH", &cpu_lib)
        .args(["doctor", "--json", "--require", "onnxruntime-cuda"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(
        check(&report, "onnxruntime")["detail"],
        cpu_lib.to_str().unwrap()
    );
    let cuda = check(&report, "onnxruntime-cuda");
    assert_eq!(cuda["status"], "absent", "{cuda}");
    assert!(
        cuda["detail"]
            .as_str()
            .unwrap()
            .contains("no CUDA execution provider"),
        "{cuda}"
    );
    assert!(
        cuda["fix"]
            .as_str()
            .unwrap()
            .contains("scripts/setup-gpu.sh"),
        "{cuda}"
    );
    assert!(report["failing"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "onnxruntime-cuda"));
}

/// A model folder whose files are cut short (an interrupted download) or empty is an error with the
/// way to replace them, not "ok" because the folder is there.
#[cfg(feature = "embed")]
#[test]
fn a_model_cut_short_is_an_error_with_the_fix() {
    let test = "a_model_cut_short_is_an_error_with_the_fix";
    let Some(minilm) = common::setup_file("models/minilm", test) else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join("minilm");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(minilm.join("descriptor.toml"), dir.join("descriptor.toml")).unwrap();
    let tokenizer = std::fs::read(minilm.join("tokenizer.json")).unwrap();
    let model = std::fs::read(minilm.join("model.onnx")).unwrap();
    let run = || {
        let out = Command::cargo_bin("tagfix")
            .unwrap()
            .args(["doctor", "--json"])
            .env(tagfix::embed::descriptor::MODELS_ENV, models.path())
            .current_dir(models.path())
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (check(&report, "minilm").clone(), out.status.code())
    };
    // A model cut short is opened by ONNX Runtime in tagfix's helper process, which refuses it.
    let cases: [(&[u8], &[u8], &str); 4] = [
        (b"onnx bytes", &tokenizer[..5000], "tokenizer.json"),
        (b"", &tokenizer, "the ONNX file is empty"),
        (
            &model[..100_000],
            &tokenizer,
            "ONNX Runtime cannot open this model (",
        ),
        (&model, &tokenizer, ""),
    ];
    for (onnx, tokenizer, says) in cases {
        std::fs::write(dir.join("model.onnx"), onnx).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
        let (minilm, code) = run();
        if says.is_empty() {
            assert_eq!(minilm["status"], "ok", "{minilm}");
            assert!(
                minilm["detail"]
                    .as_str()
                    .unwrap()
                    .contains("tokenizer loads, ONNX Runtime opens it"),
                "{minilm}"
            );
            continue;
        }
        assert_eq!(minilm["status"], "error", "{minilm}");
        assert!(
            minilm["detail"].as_str().unwrap().contains(says),
            "{minilm}"
        );
        assert!(
            minilm["fix"].as_str().unwrap().contains("scripts/setup.sh"),
            "{minilm}"
        );
        assert_eq!(code, Some(1));
    }
}
