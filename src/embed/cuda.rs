//! ONNX Runtime's CUDA execution provider (feature `embed`): its files beside the library, the CUDA
//! libraries it needs loaded before it, and a probe that runs a one-node model on the device.
//!
//! `libonnxruntime_providers_cuda.so` of onnxruntime-gpu 1.31.1 has no run path: the dynamic loader
//! finds its CUDA libraries only when they are already loaded. scripts/setup-gpu.sh links the ones of
//! torch's CUDA install into the library's folder, and [`prepare`] loads them from there first.

use super::EmbedError;
use crate::error::Result;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::SessionBuilder;
use std::path::{Path, PathBuf};

/// Where scripts/setup-gpu.sh installs onnxruntime-gpu, relative to the checkout.
pub const GPU_ORT_LIB: &str = ".deps/ort-gpu/libonnxruntime.so";

/// The provider's own files, which ONNX Runtime loads from its library's folder.
pub const PROVIDER_FILES: [&str; 2] = [
    "libonnxruntime_providers_shared.so",
    "libonnxruntime_providers_cuda.so",
];

/// What `libonnxruntime_providers_cuda.so` 1.31.1 lists as needed beyond glibc and libstdc++ (its
/// ELF `NEEDED` entries); `libcuda.so.1` comes with the NVIDIA driver.
pub const PROVIDER_NEEDS: [&str; 5] = [
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcurand.so.10",
    "libcuda.so.1",
];

/// The driver's library: its absence means no NVIDIA driver rather than a broken install.
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Checks that `lib` has a usable CUDA execution provider and loads the CUDA libraries it needs:
/// those beside `lib` first (CUDA's in ONNX Runtime's order, then cuDNN's entry library, which
/// loads its own parts), then each needed one by name. Returns the libraries loaded from `lib`'s
/// folder.
pub fn prepare(lib: &Path, device: i32) -> Result<Vec<String>> {
    let available = ep::CUDA::is_available().map_err(|source| EmbedError::Runtime {
        path: None,
        stage: "querying execution providers".into(),
        source,
    })?;
    let dir = lib.parent().unwrap_or(Path::new("."));
    if !available {
        return Err(EmbedError::NoCudaProvider {
            device,
            lib: lib.into(),
        }
        .into());
    }
    let mut missing: Vec<String> = PROVIDER_FILES
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| format!("{f} (not in {})", dir.display()))
        .collect();
    let loaded: Vec<String> = ep::cuda::CUDA_DYLIBS
        .iter()
        .chain(&ep::cuda::CUDNN_DYLIBS[..1])
        .filter(|name| dir.join(name).exists())
        .filter(|name| ort::util::preload_dylib(dir.join(name)).is_ok())
        .map(|name| name.to_string())
        .collect();
    missing.extend(PROVIDER_NEEDS.iter().filter_map(|name| {
        ort::util::preload_dylib(*name)
            .err()
            .map(|e| dl_error(name, &e))
    }));
    if !missing.is_empty() {
        return Err(EmbedError::CudaLibraries {
            device,
            lib: lib.into(),
            missing,
        }
        .into());
    }
    Ok(loaded)
}

/// `name (the loader's reason)`: libloading's message alone says only "dlopen failed".
fn dl_error(name: &str, e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(cause) => format!("{name} ({cause})"),
        None => format!("{name} ({e})"),
    }
}

/// Registers the CUDA execution provider for `device` on `builder`, failing (never falling back to
/// the CPU) when it cannot be.
pub fn register(builder: SessionBuilder, device: i32) -> Result<SessionBuilder> {
    let cuda = ep::CUDA::default()
        .with_device_id(device)
        .build()
        .error_on_failure();
    builder.with_execution_providers([cuda]).map_err(|cause| {
        EmbedError::CudaProvider {
            device,
            cause: cause.into(),
        }
        .into()
    })
}

/// Runs a one-node model (`y = x + x`) on `device` through the CUDA execution provider, with the
/// CPU fallback switched off, and checks its result. Returns what ran.
pub fn probe(env: &ort::environment::Environment, lib: &Path, device: i32) -> Result<String> {
    use ort::editor::{Graph, Model, Node, Opset, ONNX_DOMAIN};
    use ort::value::{Outlet, Shape, SymbolicDimensions, Tensor, TensorElementType, ValueType};
    let loaded = prepare(lib, device)?;
    let fail = |stage: &str| {
        let stage = format!("CUDA execution provider probe: {stage}");
        move |source: ort::Error| EmbedError::Runtime {
            path: None,
            stage: stage.clone(),
            source,
        }
    };
    let vector = || ValueType::Tensor {
        ty: TensorElementType::Float32,
        shape: Shape::new([4]),
        dimension_symbols: SymbolicDimensions::empty(1),
    };
    let mut graph = Graph::new().map_err(fail("model"))?;
    graph
        .set_inputs([Outlet::new("x", vector())])
        .and_then(|()| graph.set_outputs([Outlet::new("y", vector())]))
        .and_then(|()| Node::new("Add", ONNX_DOMAIN, "add", ["x", "x"], ["y"], []))
        .and_then(|node| graph.add_node(node))
        .map_err(fail("model"))?;
    let mut model =
        Model::new([Opset::new(ONNX_DOMAIN, 17).map_err(fail("model"))?]).map_err(fail("model"))?;
    model.set_graph(graph).map_err(fail("model"))?;
    let builder = SessionBuilder::new(env)
        .and_then(|b| b.with_disable_cpu_fallback().map_err(Into::into))
        .map_err(fail("session options"))?;
    let builder = register(builder, device)?;
    let mut session = model
        .into_session(&builder)
        .map_err(|cause| EmbedError::CudaProvider { device, cause })?;
    let x = [1.0f32, -2.0, 0.5, 3.0];
    let input = Tensor::from_array((Shape::new([4]), x.to_vec())).map_err(fail("input"))?;
    let outputs = session
        .run(ort::inputs![input])
        .map_err(|cause| EmbedError::CudaProvider { device, cause })?;
    let (_, y) = outputs["y"]
        .try_extract_tensor::<f32>()
        .map_err(fail("output"))?;
    if y.iter().zip(&x).any(|(y, x)| *y != 2.0 * x) {
        return Err(EmbedError::CudaProvider {
            device,
            cause: ort::Error::new(format!("x + x gave {y:?} for {x:?}")),
        }
        .into());
    }
    Ok(format!(
        "CUDAExecutionProvider ran a test model on cuda:{device} (CUDA libraries loaded from {}: {})",
        lib.parent().map_or(PathBuf::new(), Path::to_path_buf).display(),
        if loaded.is_empty() {
            "none, found by name".to_string()
        } else {
            loaded.join(", ")
        }
    ))
}
