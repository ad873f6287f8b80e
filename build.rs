//! Build script: with feature `train`, bakes libtorch's library folder into the binaries' run path so
//! `tagfix` and `cargo test --features train` run without `LD_LIBRARY_PATH`. torch-sys (a direct
//! dependency for this reason, `links = "tch"`) exports that folder as `DEP_TCH_LIBTORCH_LIB`.
//!
//! `TAGFIX_LINK_CUDA=1` also links `libtorch_cuda` / `libc10_cuda` for binaries meant to run on a GPU
//! (the linker's default `--as-needed` drops them, and libtorch then never sees CUDA). The CUDA
//! libraries they need only have to exist where the binary runs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=TAGFIX_LINK_CUDA");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            #[cfg(feature = "train")]
            build_autocast_shim(std::path::Path::new(&lib));
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
