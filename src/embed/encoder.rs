//! The ONNX Runtime text encoder (feature `embed`): loads libonnxruntime at run time, checks the model
//! against its descriptor, and turns texts into pooled, normalised vectors in length-sorted batches
//! padded only to the longest text of each batch.

use super::clip_bpe::ClipBpe;
use super::descriptor::{Device, ModelDescriptor, Pooling, TokenizerKind};
use super::hf_tokenizer::HfTokenizer;
use super::tokenize::{ClipTokenizer, TextTokenizer, TokenBatch};
use super::EmbedError;
use crate::error::{Error, Result};
use crate::fsutil::sha256_file;
use indicatif::ProgressBar;
use ort::environment::Environment;
use ort::ep;
use ort::session::{Session, SessionInputValue};
use ort::value::{Shape, Tensor, TensorElementType, ValueType};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Environment variable naming libonnxruntime (the same one `ort` reads).
pub const ORT_LIB_ENV: &str = "ORT_DYLIB_PATH";
/// Where scripts/setup.sh puts the library, relative to the checkout.
pub const DEFAULT_ORT_LIB: &str = ".deps/libonnxruntime.so";
/// Texts tokenized at once (bounds memory for RAM++'s 4585 × 51 descriptions).
const TOKENIZE_CHUNK: usize = 8192;

/// Picks the ONNX Runtime library: `--ort-lib`, `$ORT_DYLIB_PATH`, onnxruntime-gpu in `ort-gpu/` beside
/// the path this build was configured with (`.cargo/config.toml`) when scripts/setup-gpu.sh installed
/// it, that path, else the same two under `.deps/` of the current directory.
pub fn ort_library(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(ORT_LIB_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let configured = option_env!("ORT_DYLIB_PATH")
        .map(Path::new)
        .filter(|p| p.exists());
    // onnxruntime-gpu, once scripts/setup-gpu.sh installed it beside the CPU build, serves both
    // devices: a process loads one ONNX Runtime library only.
    let gpu = match configured.and_then(Path::parent) {
        Some(deps) => deps.join("ort-gpu/libonnxruntime.so"),
        None => PathBuf::from(super::cuda::GPU_ORT_LIB),
    };
    if gpu.exists() {
        return gpu;
    }
    configured.map_or_else(|| PathBuf::from(DEFAULT_ORT_LIB), Path::to_path_buf)
}

static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Loads libonnxruntime from `lib` once per process and returns the ONNX Runtime environment.
pub fn runtime(lib: &Path) -> Result<&'static Environment> {
    let _guard = INIT.lock().expect("init lock");
    if let Some((loaded, env)) = ENVIRONMENT.get() {
        if loaded.as_path() != lib {
            tracing::warn!(
                "ONNX Runtime is already loaded from {}; ignoring {}",
                loaded.display(),
                lib.display()
            );
        }
        return Ok(env);
    }
    if !lib.is_file() {
        return Err(EmbedError::RuntimeNotFound {
            lib: lib.into(),
            env: ORT_LIB_ENV,
        }
        .into());
    }
    let abs = lib.canonicalize().map_err(|e| Error::io(lib, e))?;
    let env = ort::init_from(&abs)
        .map_err(|source| EmbedError::RuntimeLoad {
            lib: abs.clone(),
            source,
        })?
        .with_name("tagfix")
        .build()
        .map_err(runtime_error("ONNX Runtime environment"))?;
    tracing::info!("ONNX Runtime loaded from {}", abs.display());
    Ok(&ENVIRONMENT.get_or_init(|| (lib.to_path_buf(), env)).1)
}

/// How to run the encoder.
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    pub device: Device,
    /// Intra-op threads (default: all cores).
    pub threads: Option<usize>,
    pub batch_size: usize,
    /// libonnxruntime to load (default: see [`ort_library`]).
    pub ort_lib: Option<PathBuf>,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            device: Device::Cpu,
            threads: None,
            batch_size: 64,
            ort_lib: None,
        }
    }
}

/// A text encoder: ONNX session, tokenizer and the descriptor tying them together.
pub struct TextEncoder {
    session: Session,
    tokenizer: Box<dyn TextTokenizer>,
    pub descriptor: ModelDescriptor,
    /// Output width, when the model declares it.
    pub dim: Option<usize>,
    /// Whether batches are cut to their longest text (the model has a dynamic sequence axis).
    pub cut_to_longest: bool,
    /// The execution provider running the model.
    pub provider: String,
    pub model_sha256: String,
    batch_size: usize,
}

/// ONNX Runtime failing at `stage` of running the model at `path`.
pub(crate) fn ort_error(stage: &str, path: &Path) -> impl Fn(ort::Error) -> Error {
    let path = path.to_path_buf();
    let stage = stage.to_string();
    move |source| {
        EmbedError::Runtime {
            path: Some(path.clone()),
            stage: stage.clone(),
            source,
        }
        .into()
    }
}

/// ONNX Runtime failing at `stage` of its own set-up.
fn runtime_error<E: Into<ort::Error>>(stage: &'static str) -> impl Fn(E) -> EmbedError {
    move |source| EmbedError::Runtime {
        path: None,
        stage: stage.into(),
        source: source.into(),
    }
}

/// Loads the descriptor's tokenizer.
pub fn load_tokenizer(d: &ModelDescriptor) -> Result<Box<dyn TextTokenizer>> {
    let path = d.tokenizer_path();
    Ok(match d.tokenizer.kind {
        TokenizerKind::Huggingface => Box::new(HfTokenizer::from_file(&path, d.max_length)?),
        TokenizerKind::ClipBpe => Box::new(ClipTokenizer {
            bpe: ClipBpe::from_file(&path)?,
            context: d.max_length,
        }),
    })
}

impl TextEncoder {
    /// Loads the model of `descriptor` on the requested device. `--device cuda` either registers the
    /// CUDA execution provider or fails; it never falls back to the CPU.
    pub fn load(descriptor: ModelDescriptor, opts: &EncoderOptions) -> Result<Self> {
        let onnx = descriptor.onnx_path();
        if !onnx.is_file() {
            return Err(EmbedError::ModelFileMissing {
                path: onnx,
                by: "model descriptor",
            }
            .into());
        }
        let tokenizer = load_tokenizer(&descriptor)?;
        let (session, provider) = build_session(&onnx, opts)?;
        let (dim, dynamic) = check_model(&session, &descriptor)?;
        tracing::info!(
            "model {} on {provider}; batches cut to the longest text: {}",
            descriptor.display_name(),
            dynamic
        );
        Ok(TextEncoder {
            model_sha256: sha256_file(&onnx)?,
            session,
            tokenizer,
            dim,
            cut_to_longest: dynamic,
            provider,
            batch_size: opts.batch_size.max(1),
            descriptor,
        })
    }

    /// The tokenizer's description.
    pub fn tokenizer_description(&self) -> String {
        self.tokenizer.describe()
    }

    /// Tokenizes `texts` (exposed for tests and diagnostics).
    pub fn tokenize(&self, texts: &[&str]) -> Result<super::tokenize::TokenMatrix> {
        self.tokenizer.tokenize(texts)
    }

    /// Embeds `texts`: one pooled (and, per the descriptor, L2-normalised) vector per text, row-major.
    /// Returns the vectors and their width.
    pub fn encode(&mut self, texts: &[&str], progress: &ProgressBar) -> Result<(Vec<f32>, usize)> {
        let mut out: Vec<f32> = Vec::new();
        let mut dim = self.dim;
        for (c, chunk) in texts.chunks(TOKENIZE_CHUNK).enumerate() {
            let tokens = self.tokenizer.tokenize(chunk)?;
            // Longest first: similar lengths share a batch, so little padding is computed.
            let mut order: Vec<usize> = (0..chunk.len()).collect();
            order.sort_by(|&a, &b| tokens.lengths[b].cmp(&tokens.lengths[a]).then(a.cmp(&b)));
            for rows in order.chunks(self.batch_size) {
                let width = if self.cut_to_longest {
                    rows.iter()
                        .map(|&r| tokens.lengths[r])
                        .max()
                        .unwrap_or(1)
                        .max(1)
                } else {
                    self.descriptor.max_length
                };
                let batch = tokens.gather(rows, width);
                let vectors = self.run(&batch)?;
                let d = vectors.len() / rows.len();
                if out.is_empty() {
                    dim.get_or_insert(d);
                    out = vec![0.0; texts.len() * d];
                }
                for (i, &r) in rows.iter().enumerate() {
                    let at = (c * TOKENIZE_CHUNK + r) * d;
                    out[at..at + d].copy_from_slice(&vectors[i * d..(i + 1) * d]);
                }
                progress.inc(rows.len() as u64);
            }
        }
        Ok((out, dim.unwrap_or(0)))
    }

    /// Runs one batch and pools it.
    fn run(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        let shape = [batch.rows, batch.width];
        let names = &self.descriptor.inputs;
        let onnx = self.descriptor.onnx_path();
        let tensor = |data: &[i64]| -> Result<SessionInputValue<'static>> {
            Tensor::from_array((shape, data.to_vec()))
                .map(Into::into)
                .map_err(ort_error("input tensor", &onnx))
        };
        let mut feed: Vec<(String, SessionInputValue<'static>)> =
            vec![(names.input_ids.clone(), tensor(&batch.ids)?)];
        if let Some(n) = &names.attention_mask {
            feed.push((n.clone(), tensor(&batch.attention_mask)?));
        }
        if let Some(n) = &names.token_type_ids {
            feed.push((n.clone(), tensor(&batch.type_ids)?));
        }
        let output_name = self.descriptor.output.name.clone();
        let pooling = self.descriptor.output.pooling;
        let normalize = self.descriptor.output.normalize;
        let outputs = self
            .session
            .run(feed)
            .map_err(ort_error("inference failed", &onnx))?;
        let (out_shape, values) = outputs[output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(ort_error("reading the output", &onnx))?;
        let dims: Vec<usize> = out_shape.iter().map(|&d| d as usize).collect();
        let mut pooled =
            pool(pooling, &dims, values, batch).map_err(|problem| EmbedError::OutputShape {
                path: onnx.clone(),
                output: output_name.clone(),
                dims: dims.clone(),
                problem,
            })?;
        if normalize {
            let d = pooled.len() / batch.rows;
            pooled.chunks_mut(d).for_each(l2_normalize);
        }
        Ok(pooled)
    }
}

/// The intra-op threads a session of `opts` computes with on the CPU (default: all cores).
pub fn intra_threads(opts: &EncoderOptions) -> usize {
    opts.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Opens an ONNX Runtime session for `onnx` on the requested device (shared by the text and image
/// encoders), once a helper process has opened it without crashing ([`super::isolate`]).
/// `--device cuda` either registers the CUDA execution provider or fails; it never falls back to
/// the CPU. Returns the session and a description of its execution provider.
pub fn build_session(onnx: &Path, opts: &EncoderOptions) -> Result<(Session, String)> {
    let lib = ort_library(opts.ort_lib.as_deref());
    if lib.is_file() {
        super::isolate::open_in_helper(onnx, &lib)?;
    }
    open_session(onnx, opts, &lib)
}

/// [`build_session`] in this process, without the helper, with the ONNX Runtime library `lib`.
pub fn open_session(onnx: &Path, opts: &EncoderOptions, lib: &Path) -> Result<(Session, String)> {
    let env = runtime(lib)?;
    let threads = intra_threads(opts);
    let builder = Session::builder(env)
        .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
        .map_err(ort_error("session options", onnx))?;
    let (builder, provider) = match opts.device {
        Device::Cpu => (
            builder
                .with_execution_providers([ep::CPU::default().build().error_on_failure()])
                .map_err(runtime_error("CPU execution provider"))?,
            format!("CPUExecutionProvider ({threads} threads)"),
        ),
        Device::Cuda(id) => {
            let loaded = super::cuda::prepare(lib, id)?;
            tracing::info!(
                "CUDA libraries loaded from beside {}: {loaded:?}",
                lib.display()
            );
            (
                super::cuda::register(builder, id)?,
                format!("CUDAExecutionProvider (device {id})"),
            )
        }
    };
    let mut builder = builder;
    let session = builder
        .commit_from_file(onnx)
        .map_err(ort_error("cannot load the ONNX model", onnx))?;
    Ok((session, provider))
}

/// Pools a model output into one vector per row.
fn pool(
    pooling: Pooling,
    dims: &[usize],
    values: &[f32],
    batch: &TokenBatch,
) -> std::result::Result<Vec<f32>, String> {
    match (pooling, dims) {
        (Pooling::Pooled, [b, d]) if *b == batch.rows => Ok(values[..b * d].to_vec()),
        (Pooling::Mean | Pooling::Cls, [b, s, d]) if *b == batch.rows && *s == batch.width => {
            let (s, d) = (*s, *d);
            let mut out = vec![0.0f32; b * d];
            for r in 0..*b {
                let acc = &mut out[r * d..(r + 1) * d];
                if pooling == Pooling::Cls {
                    acc.copy_from_slice(&values[r * s * d..r * s * d + d]);
                    continue;
                }
                let mask = &batch.attention_mask[r * s..(r + 1) * s];
                let mut count = 0.0f32;
                for (t, &m) in mask.iter().enumerate() {
                    if m != 0 {
                        let h = &values[(r * s + t) * d..(r * s + t + 1) * d];
                        acc.iter_mut().zip(h).for_each(|(a, x)| *a += x);
                        count += 1.0;
                    }
                }
                let count = count.max(1e-9);
                acc.iter_mut().for_each(|a| *a /= count);
            }
            Ok(out)
        }
        _ => Err(format!(
            "does not fit pooling `{pooling:?}` for a batch of {} texts × {} tokens",
            batch.rows, batch.width
        )),
    }
}

/// Divides by the L2 norm (at least 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// The shape of the model output `name`, which must exist and be a float32 tensor (the message
/// says what is wrong otherwise).
pub(crate) fn float_output<'s>(
    session: &'s Session,
    name: &str,
) -> std::result::Result<&'s Shape, String> {
    let Some(output) = session.outputs().iter().find(|o| o.name() == name) else {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        return Err(format!(
            "the descriptor names output `{name}`, but the model's outputs are {names:?}"
        ));
    };
    match output.dtype() {
        ValueType::Tensor { ty, shape, .. } if *ty == TensorElementType::Float32 => Ok(shape),
        ValueType::Tensor { ty, .. } => Err(format!("output `{name}` is {ty:?}, expected float32")),
        _ => Err(format!("output `{name}` is not a tensor")),
    }
}

/// Checks the session's inputs and output against the descriptor. Returns the output width (when
/// static) and whether the sequence axis is dynamic.
fn check_model(session: &Session, d: &ModelDescriptor) -> Result<(Option<usize>, bool)> {
    let path = d.onnx_path();
    let descriptor_path = d.dir.join(super::descriptor::DESCRIPTOR_FILE);
    let mismatch = |problem: String| {
        Error::from(EmbedError::DescriptorMismatch {
            descriptor: descriptor_path.clone(),
            model: path.clone(),
            problem,
        })
    };
    let model_inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let wanted: Vec<&str> = [
        Some(d.inputs.input_ids.as_str()),
        d.inputs.attention_mask.as_deref(),
        d.inputs.token_type_ids.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for w in &wanted {
        if !model_inputs.contains(w) {
            return Err(mismatch(format!(
                "the descriptor names input `{w}`, but the model's inputs are {model_inputs:?}"
            )));
        }
    }
    let mut dynamic = false;
    for input in session.inputs() {
        if !wanted.contains(&input.name()) {
            return Err(mismatch(format!(
                "the model needs input `{}`, which the descriptor does not name (inputs: input_ids, attention_mask, token_type_ids)",
                input.name()
            )));
        }
        let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
            return Err(mismatch(format!(
                "input `{}` is not a tensor",
                input.name()
            )));
        };
        if *ty != TensorElementType::Int64 {
            return Err(mismatch(format!(
                "input `{}` is {ty:?}; tagfix feeds int64 token ids",
                input.name()
            )));
        }
        if shape.len() != 2 {
            return Err(mismatch(format!(
                "input `{}` has rank {} ({shape}); expected [batch, sequence]",
                input.name(),
                shape.len()
            )));
        }
        let seq = shape[1];
        if seq < 0 {
            dynamic = true;
        } else if d.dynamic_sequence {
            return Err(mismatch(format!(
                "dynamic_sequence = true, but input `{}` has a fixed sequence length {seq}",
                input.name()
            )));
        } else if seq as usize != d.max_length {
            return Err(mismatch(format!(
                "max_length = {}, but input `{}` has sequence length {seq}",
                d.max_length,
                input.name()
            )));
        }
    }
    let shape = float_output(session, &d.output.name).map_err(mismatch)?;
    let rank = match d.output.pooling {
        Pooling::Pooled => 2,
        Pooling::Mean | Pooling::Cls => 3,
    };
    if shape.len() != rank {
        return Err(mismatch(format!(
            "output `{}` has rank {} ({shape}), but pooling `{:?}` needs rank {rank}",
            d.output.name,
            shape.len(),
            d.output.pooling
        )));
    }
    let last = shape[shape.len() - 1];
    Ok((
        (last > 0).then_some(last as usize),
        dynamic && d.dynamic_sequence,
    ))
}
