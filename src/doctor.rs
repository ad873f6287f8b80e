//! `tagfix doctor`: what this build and this machine provide, each item found or not, with the fix —
//! compiled features, the `ram` vocabulary, ONNX Runtime and its CUDA provider, the text and image
//! models (their files read, not only found), libtorch (which library is loaded, whether `libtorch_cuda` is linked, the CUDA devices it
//! sees), the distributed backends and launcher environment, and the plot font. The checks only look; they change nothing.

use serde::Serialize;

/// The state of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and working.
    Ok,
    /// Not present; optional for most work (a GPU, an extra model).
    Absent,
    /// Expected from the setup but missing or broken.
    Error,
}

/// One item of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short stable name, also what `--require` takes.
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do when it is not `Ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn not_ok(name: &'static str, status: Status, detail: impl Into<String>, fix: &str) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.to_string()),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Names `--require` accepts, in report order.
pub const CHECK_NAMES: &[&str] = &[
    "embed",
    "train",
    "ram",
    "onnxruntime",
    "onnxruntime-cuda",
    "minilm",
    "clip",
    "clip-vision",
    "libtorch",
    "libtorch-cuda",
    "cuda",
    "gloo",
    "nccl",
    "rendezvous",
    "font",
];

const BUILD_ALL: &str = "build with `cargo build --release --all-features` (scripts/setup.sh installs the native libraries)";

/// Runs every check.
pub fn diagnose() -> Report {
    let mut checks = vec![
        feature("embed", cfg!(feature = "embed")),
        feature("train", cfg!(feature = "train")),
        vocabulary(),
    ];
    checks.extend(onnx_runtime());
    for (name, spec) in [
        ("minilm", "minilm"),
        ("clip", "clip"),
        ("clip-vision", "clip-vision"),
    ] {
        checks.push(model(name, spec));
    }
    checks.extend(libtorch());
    checks.extend(distributed());
    checks.push(match crate::plot::ensure_font() {
        Ok(()) => Check::ok("font", "a TrueType font for plot text"),
        Err(e) => Check::not_ok(
            "font",
            Status::Absent,
            e.to_string(),
            "install fonts-dejavu-core or set TAGFIX_FONT to a .ttf file",
        ),
    });
    Report {
        version: env!("CARGO_PKG_VERSION"),
        checks,
    }
}

fn feature(name: &'static str, on: bool) -> Check {
    if on {
        Check::ok(name, "feature compiled in")
    } else {
        Check::not_ok(name, Status::Absent, "feature not compiled in", BUILD_ALL)
    }
}

fn vocabulary() -> Check {
    let preset = crate::vocab::Preset::builtin("ram").expect("builtin preset");
    match preset.resolve() {
        Ok(r) => Check::ok(
            "ram",
            format!(
                "{} ({:?}, {} sidecars)",
                r.path.display(),
                r.status,
                r.sidecars.len()
            ),
        ),
        Err(e) => Check::not_ok(
            "ram",
            Status::Error,
            e.to_string(),
            "set TAGFIX_RAM_DATA or TAGFIX_SHARED, or pass --vocab FILE to each command",
        ),
    }
}

/// A model directory found and usable: its descriptor read, its ONNX file there and not empty, a text
/// model's tokenizer loaded and (feature `embed`, with ONNX Runtime's library at hand) the model
/// opened by ONNX Runtime in tagfix's helper process ([`crate::embed::isolate`]; remembered, so a
/// model costs its load time once), so that a download cut short shows here, not in the middle of
/// `embed`.
fn model(name: &'static str, spec: &str) -> Check {
    use crate::embed::descriptor::{install_hint, resolve_model_dir};
    let dir = match resolve_model_dir(spec) {
        Ok(dir) => dir,
        // The error says where it looked and how to get the model.
        Err(e) => return Check::not_ok(name, Status::Absent, "not found", &e.to_string()),
    };
    match model_files(name, &dir) {
        Ok(what) => Check::ok(name, format!("{} ({what})", dir.display())),
        Err(e) => Check::not_ok(
            name,
            Status::Error,
            crate::error::report(&e),
            &format!("replace the folder's files: {}", install_hint(spec)),
        ),
    }
}

/// What [`model`] checked of the model in `dir`, or why it cannot be used.
fn model_files(name: &str, dir: &std::path::Path) -> crate::Result<String> {
    let onnx = if name == "clip-vision" {
        let d = crate::teacher::ImageDescriptor::read_dir(dir)?;
        d.dir.join(&d.onnx)
    } else {
        let d = crate::embed::descriptor::ModelDescriptor::read_dir(dir)?;
        #[cfg(feature = "embed")]
        crate::embed::encoder::load_tokenizer(&d)?;
        d.onnx_path()
    };
    let size = std::fs::metadata(&onnx)
        .map_err(|e| crate::Error::io(&onnx, e))?
        .len();
    if size == 0 {
        return Err(crate::Error::io(
            &onnx,
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the ONNX file is empty"),
        ));
    }
    let opens = opens_apart(&onnx)?;
    Ok(match (name, cfg!(feature = "embed")) {
        ("clip-vision", _) => format!("descriptor read, ONNX file present{opens}"),
        (_, true) => format!("descriptor read, ONNX file present, tokenizer loads{opens}"),
        (_, false) => {
            "descriptor read, ONNX file present; the tokenizer needs feature embed".into()
        }
    })
}

/// Whether ONNX Runtime opens `onnx` in the helper process, as words to append (nothing when
/// there is no library or helper to ask); an error when it refuses or crashes on it.
#[cfg(feature = "embed")]
fn opens_apart(onnx: &std::path::Path) -> crate::Result<String> {
    use crate::embed::isolate::{open_apart, Apart};
    use crate::embed::EmbedError;
    let lib = crate::embed::encoder::ort_library(None);
    if !lib.is_file() {
        return Ok(String::new());
    }
    match open_apart(onnx, &lib) {
        Apart::Opened => Ok(", ONNX Runtime opens it".into()),
        Apart::NoHelper | Apart::NotStarted(_) => Ok(String::new()),
        Apart::Refused(said) => Err(EmbedError::RuntimeRefused {
            path: onnx.to_path_buf(),
            said,
        }
        .into()),
        Apart::Crashed { signal, said } => Err(EmbedError::RuntimeCrashed {
            path: onnx.to_path_buf(),
            signal,
            said,
        }
        .into()),
    }
}

#[cfg(not(feature = "embed"))]
fn opens_apart(_onnx: &std::path::Path) -> crate::Result<String> {
    Ok(String::new())
}

#[cfg(feature = "embed")]
fn onnx_runtime() -> Vec<Check> {
    use crate::embed::encoder::{ort_library, runtime};
    let lib = ort_library(None);
    match runtime(&lib) {
        Ok(env) => vec![
            Check::ok("onnxruntime", lib.display().to_string()),
            onnx_runtime_cuda(env, &lib),
        ],
        Err(e) => vec![
            Check::not_ok(
                "onnxruntime",
                Status::Error,
                e.to_string(),
                "run scripts/setup.sh, or set ORT_DYLIB_PATH",
            ),
            Check::not_ok(
                "onnxruntime-cuda",
                Status::Absent,
                "ONNX Runtime not loaded",
                "fix `onnxruntime` first",
            ),
        ],
    }
}

/// The CUDA execution provider of `lib`: present, its libraries loadable, and a one-node model run
/// on device 0. A CPU build or a machine without the NVIDIA driver is `Absent`; an installed provider
/// that cannot run is `Error`.
#[cfg(feature = "embed")]
fn onnx_runtime_cuda(env: &ort::environment::Environment, lib: &std::path::Path) -> Check {
    use crate::embed::cuda::{probe, DRIVER_LIBRARY};
    use crate::embed::EmbedError;
    use crate::error::Error;
    const NAME: &str = "onnxruntime-cuda";
    const INSTALL: &str = "for `embed --device cuda`: scripts/setup-gpu.sh installs onnxruntime-gpu 1.31.1 into \
        .deps/ort-gpu/ (used by default once there), or point ORT_DYLIB_PATH at that build's libonnxruntime.so";
    let e = match probe(env, lib, 0) {
        Ok(detail) => return Check::ok(NAME, detail),
        Err(e) => e,
    };
    let embed_error = match &e {
        Error::Embed(inner) => Some(&**inner),
        _ => None,
    };
    let (status, fix) = match embed_error {
        Some(EmbedError::NoCudaProvider { .. }) => (Status::Absent, INSTALL),
        Some(EmbedError::CudaLibraries { missing, .. })
            if missing.iter().all(|m| m.starts_with(DRIVER_LIBRARY)) =>
        {
            (
                Status::Absent,
                "install the NVIDIA driver (nvidia-smi must list a GPU)",
            )
        }
        _ => (Status::Error, INSTALL),
    };
    Check::not_ok(NAME, status, e.to_string(), fix)
}

#[cfg(not(feature = "embed"))]
fn onnx_runtime() -> Vec<Check> {
    ["onnxruntime", "onnxruntime-cuda"]
        .into_iter()
        .map(|n| {
            Check::not_ok(
                n,
                Status::Absent,
                "feature `embed` not compiled in",
                BUILD_ALL,
            )
        })
        .collect()
}

/// Shared libraries mapped into this process whose file name contains `part` (Linux).
#[cfg(feature = "train")]
fn loaded_library(part: &str) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            std::path::Path::new(p)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().contains(part))
        })
        .map(std::path::PathBuf::from)
}

#[cfg(feature = "train")]
fn libtorch() -> Vec<Check> {
    const GPU_BUILD: &str =
        "build with scripts/setup-gpu.sh (torch's CUDA libraries, libtorch_cuda linked)";
    // Touch libtorch so its libraries are certainly mapped.
    let cuda_available = tch::Cuda::is_available();
    let cpu = loaded_library("libtorch_cpu.so");
    let version = cpu
        .as_ref()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("version.py")))
        .and_then(|v| std::fs::read_to_string(v).ok())
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_string())
            })
        });
    let mut checks = vec![match &cpu {
        Some(p) => Check::ok(
            "libtorch",
            format!(
                "{} (torch {})",
                p.display(),
                version.as_deref().unwrap_or("version unknown")
            ),
        ),
        None => Check::not_ok(
            "libtorch",
            Status::Error,
            "libtorch_cpu.so is not loaded",
            BUILD_ALL,
        ),
    }];
    let cuda_lib = loaded_library("libtorch_cuda.so");
    checks.push(match &cuda_lib {
        Some(p) => Check::ok("libtorch-cuda", format!("linked: {}", p.display())),
        None => Check::not_ok(
            "libtorch-cuda",
            Status::Absent,
            "libtorch_cuda is not linked into this binary: it runs on the CPU only",
            GPU_BUILD,
        ),
    });
    checks.push(if cuda_available {
        let n = tch::Cuda::device_count();
        Check::ok(
            "cuda",
            format!(
                "{n} CUDA device(s) visible to libtorch; cuDNN {}",
                if tch::Cuda::cudnn_is_available() {
                    "available"
                } else {
                    "not available"
                }
            ),
        )
    } else {
        Check::not_ok(
            "cuda",
            Status::Absent,
            "libtorch sees no CUDA device (`train --device cuda` will refuse to start)",
            if cuda_lib.is_some() {
                "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
            } else {
                GPU_BUILD
            },
        )
    });
    checks
}

#[cfg(not(feature = "train"))]
fn libtorch() -> Vec<Check> {
    ["libtorch", "libtorch-cuda", "cuda"]
        .into_iter()
        .map(|n| {
            Check::not_ok(
                n,
                Status::Absent,
                "feature `train` not compiled in",
                BUILD_ALL,
            )
        })
        .collect()
}

/// The c10d backends this build has and the launcher environment this process sees.
fn distributed() -> Vec<Check> {
    use crate::train::dist::{available_backends, DistBackend, Rendezvous};
    let backends = available_backends();
    let backend = |b: DistBackend, what: &str, fix: &str| {
        if backends.contains(&b) {
            Check::ok(b.name(), format!("c10d process group for {what}"))
        } else {
            Check::not_ok(
                b.name(),
                Status::Absent,
                format!("this build has no {} process group", b.name()),
                fix,
            )
        }
    };
    let rendezvous = match Rendezvous::from_env() {
        Ok(Some(r)) => Check::ok(
            "rendezvous",
            format!(
                "{}: rank {} of {} (local rank {}), master {}:{}{}",
                r.contract.name(),
                r.rank,
                r.world_size,
                r.local_rank,
                r.master_addr,
                r.master_port,
                if r.agent_store { ", torchrun's agent store" } else { "" }
            ),
        ),
        Ok(None) => Check::not_ok(
            "rendezvous",
            Status::Absent,
            "no torchrun or Slurm environment: a single-process run",
            "start ranks with `tagfix train --nproc-per-node N`, torchrun or srun (docs/distributed.md)",
        ),
        Err(e) => Check::not_ok(
            "rendezvous",
            Status::Error,
            e.to_string(),
            "set all of torchrun's (or Slurm's) variables, or none (docs/distributed.md)",
        ),
    };
    vec![
        backend(DistBackend::Gloo, "CPU tensors", BUILD_ALL),
        backend(
            DistBackend::Nccl,
            "CUDA tensors",
            "build with scripts/setup-gpu.sh (TAGFIX_LINK_CUDA=1 compiles ProcessGroupNCCL in)",
        ),
        rendezvous,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_every_named_check_once() {
        let r = diagnose();
        let names: Vec<&str> = r.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, CHECK_NAMES);
        for c in &r.checks {
            assert_eq!(c.fix.is_some(), c.status != Status::Ok, "{c:?}");
        }
    }
}
