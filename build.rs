//! Build script: with feature `train`, bakes libtorch's library folder into the binaries' run path so
//! `tagfix` and `cargo test --features train` run without `LD_LIBRARY_PATH`. torch-sys (a direct
//! dependency for this reason, `links = "tch"`) exports that folder as `DEP_TCH_LIBTORCH_LIB`.
//!
//! With feature `train` it also compiles the C++ shims in `src/train/*.cpp`, among them
//! `src/train/dist.cpp` (PyTorch's distributed engine, c10d), which needs gloo's headers from Debian's
//! `libgloo-dev` (or `GLOO_INCLUDE_DIR`): the torch wheel ships gloo's library code but not its headers.
//!
//! With feature `embed` it compiles `src/imaging/jpeg_decode.c` (JPEG decoding with Pillow's
//! verdicts on broken files) against the libjpeg-turbo that turbojpeg-sys builds.
//!
//! `TAGFIX_LINK_CUDA=1` also links `libtorch_cuda` / `libc10_cuda` for binaries meant to run on a GPU
//! (the linker's default `--as-needed` drops them, and libtorch then never sees CUDA). The CUDA
//! libraries they need only have to exist where the binary runs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=TAGFIX_LINK_CUDA");
    #[cfg(feature = "embed")]
    build_jpeg_shim();
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            #[cfg(feature = "train")]
            build_autocast_shim(std::path::Path::new(&lib));
            #[cfg(feature = "train")]
            build_dist_shim(std::path::Path::new(&lib));
        }
        Err(_) => panic!(
            "torch-sys did not export DEP_TCH_LIBTORCH_LIB: cannot find libtorch's headers for the autocast shim \
             (run scripts/setup.sh, or set LIBTORCH to a libtorch 2.11 folder)"
        ),
    }
    if std::env::var("TAGFIX_LINK_CUDA").is_ok_and(|v| v == "1") {
        for arg in [
            "-Wl,--no-as-needed",
            "-ltorch_cuda",
            "-lc10_cuda",
            "-Wl,--as-needed",
            "-Wl,--allow-shlib-undefined",
        ] {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}

/// Compiles `src/imaging/jpeg_decode.c` (feature `embed`) against the libjpeg-turbo that
/// turbojpeg-sys builds; turbojpeg-sys (`links = "turbojpeg"`) exports its headers' folder as
/// `DEP_TURBOJPEG_INCLUDE`.
#[cfg(feature = "embed")]
fn build_jpeg_shim() {
    println!("cargo:rerun-if-changed=src/imaging/jpeg_decode.c");
    println!("cargo:rerun-if-env-changed=DEP_TURBOJPEG_INCLUDE");
    let include = std::env::var("DEP_TURBOJPEG_INCLUDE").unwrap_or_default();
    let mut build = cc::Build::new();
    build.file("src/imaging/jpeg_decode.c").warnings(true);
    for dir in include.split(',').filter(|d| !d.is_empty()) {
        build.include(dir);
    }
    build.compile("tagfix_jpeg");
}

/// Compiles `src/train/autocast.cpp`, the few lines of ATen that select the autocast dtype (bf16), and
/// `src/train/optim.cpp` (fused AdamW, batched norms), which tch 0.24 does not expose. Headers come from the same libtorch that torch-sys links. (`cc` is a
/// build dependency of feature `train` only.)
#[cfg(feature = "train")]
fn build_autocast_shim(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/train/autocast.cpp");
    println!("cargo:rerun-if-changed=src/train/optim.cpp");
    let root = lib.parent().expect("libtorch lib folder has a parent");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("src/train/autocast.cpp")
        .file("src/train/optim.cpp")
        .include(root.join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("tagfix_autocast");
}

/// Compiles `src/train/dist.cpp` (TCPStore, ProcessGroupGloo and, in the CUDA build, ProcessGroupNCCL)
/// and links `libtorch_cpu` / `libc10`, which export c10d. Gloo's headers must come from the system.
#[cfg(feature = "train")]
fn build_dist_shim(lib: &std::path::Path) {
    use std::path::PathBuf;
    println!("cargo:rerun-if-changed=src/train/dist.cpp");
    println!("cargo:rerun-if-changed=src/train/device.cpp");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    let root = lib.parent().expect("libtorch lib folder has a parent");
    let gloo_dirs: Vec<PathBuf> = match std::env::var_os("GLOO_INCLUDE_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec!["/usr/include".into(), "/usr/local/include".into()],
    };
    let Some(gloo) = gloo_dirs.iter().find(|d| d.join("gloo/config.h").is_file()) else {
        panic!(
            "gloo's headers (gloo/config.h) are missing: PyTorch's ProcessGroupGloo.hpp includes them and the torch \
             wheel does not ship them. Install Debian's libgloo-dev (`apt-get install libgloo-dev`, which \
             scripts/setup.sh does when run as root) or set GLOO_INCLUDE_DIR to the folder holding gloo/. \
             Looked in: {gloo_dirs:?}"
        );
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/train/dist.cpp")
        // Pinned copies and CUDA memory counters (the batch upload, `--micro-batch-size auto`).
        .file("src/train/device.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(gloo)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    if std::env::var("TAGFIX_LINK_CUDA").is_ok_and(|v| v == "1") {
        // ProcessGroupNCCL: CUDA's headers and nccl.h come from the torch wheel's nvidia-* wheels.
        build
            .define("USE_C10D_NCCL", None)
            .define("TAGFIX_DIST_NCCL", None)
            .define("TAGFIX_CUDA_MEMORY", None);
        // The torch folder itself, not the link to it (setup.sh makes `.libtorch` a link into the
        // venv), so that its parent is the venv's site-packages holding nvidia/*/include.
        let torch = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let nvidia = torch
            .parent()
            .map(|site| site.join("nvidia"))
            .unwrap_or_default();
        let includes: Vec<PathBuf> = std::fs::read_dir(&nvidia)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path().join("include"))
                    .filter(|include| include.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        // What ProcessGroupNCCL.hpp pulls in, from the runtime, crt, cuSPARSE and NCCL wheels.
        let missing: Vec<&str> = [
            "cuda_runtime.h",
            "crt/host_config.h",
            "cusparse.h",
            "nccl.h",
        ]
        .into_iter()
        .filter(|h| !includes.iter().any(|d| d.join(h).is_file()))
        .collect();
        if !missing.is_empty() {
            panic!(
                "TAGFIX_LINK_CUDA=1: CUDA headers {missing:?} are not under {}/*/include, beside libtorch \
                 ({}): install torch's CUDA stack into that venv first (scripts/setup-gpu.sh does, from \
                 scripts/requirements-gpu.txt)",
                nvidia.display(),
                torch.display()
            );
        }
        for include in includes {
            build.include(include);
        }
    }
    build.compile("tagfix_dist");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
