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
        Ok(lib) => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
        Err(_) => println!(
            "cargo:warning=torch-sys did not export DEP_TCH_LIBTORCH_LIB; set LD_LIBRARY_PATH to libtorch's lib folder to run"
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
