//! Build script: with feature `train`, bakes libtorch's library folder into the binaries' RPATH so
//! `tagfix` and `cargo test --features train` run without `LD_LIBRARY_PATH`. torch-sys (a direct
//! dependency for this reason, `links = "tch"`) exports that folder as `DEP_TCH_LIBTORCH_LIB`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
        Err(_) => println!(
            "cargo:warning=torch-sys did not export DEP_TCH_LIBTORCH_LIB; set LD_LIBRARY_PATH to libtorch's lib folder to run"
        ),
    }
}
