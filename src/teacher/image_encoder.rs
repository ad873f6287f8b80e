//! The ONNX Runtime CLIP image encoder (feature `embed`): checks the model against its descriptor
//! and turns preprocessed `[n, 3, S, S]` pixels into `[n, dim]` features, in batches.

use super::descriptor::ImageDescriptor;
use super::file::TEACHER_DIM;
use super::TeacherError;
use crate::embed::descriptor::DESCRIPTOR_FILE;
use crate::embed::encoder::{
    build_session, float_output, intra_threads, l2_normalize, ort_error, EncoderOptions,
};
use crate::embed::Device;
use crate::embed::EmbedError;
use crate::error::{Error, Result};
use crate::fsutil::sha256_file;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};

/// A CLIP image tower in an ONNX Runtime session.
pub struct ImageEncoder {
    session: Session,
    pub descriptor: ImageDescriptor,
    /// Output width.
    pub dim: usize,
    /// The execution provider running the model.
    pub provider: String,
    /// The CPU threads the model computes with; `None` on a GPU.
    pub cpu_threads: Option<usize>,
    pub model_sha256: String,
    batch_size: usize,
}

impl ImageEncoder {
    /// Loads the model of `descriptor` (see [`build_session`] for devices and threads).
    pub fn load(descriptor: ImageDescriptor, opts: &EncoderOptions) -> Result<Self> {
        let onnx = descriptor.onnx_path();
        if !onnx.is_file() {
            return Err(EmbedError::ModelFileMissing {
                path: onnx,
                by: "image-encoder descriptor",
            }
            .into());
        }
        let (session, provider) = build_session(&onnx, opts)?;
        let dim = check_model(&session, &descriptor)?;
        tracing::info!(
            "image encoder {} on {provider}: {}",
            descriptor.display_name(),
            descriptor.preprocessing_description()
        );
        Ok(ImageEncoder {
            model_sha256: sha256_file(&onnx)?,
            session,
            dim,
            provider,
            cpu_threads: (opts.device == Device::Cpu).then(|| intra_threads(opts)),
            batch_size: opts.batch_size.max(1),
            descriptor,
        })
    }

    /// Refuses a tower whose features are not the teacher width (512, CLIP ViT-B's joint space).
    pub fn check_teacher_dim(&self) -> Result<()> {
        if self.dim != TEACHER_DIM {
            return Err(TeacherError::ImageWidth {
                path: self.descriptor.onnx_path(),
                dim: self.dim,
            }
            .into());
        }
        Ok(())
    }

    /// Input side in pixels.
    pub fn size(&self) -> u32 {
        self.descriptor.input.size
    }

    /// Values per preprocessed image (`3·S·S`).
    pub fn pixels_per_image(&self) -> usize {
        self.descriptor.input.pixels_per_image()
    }

    /// Features of `pixels` (`n` preprocessed images, CHW, row-major): `[n, dim]`, L2-normalised when
    /// the descriptor says so.
    pub fn encode(&mut self, pixels: &[f32]) -> Result<Vec<f32>> {
        let per = self.pixels_per_image();
        assert_eq!(pixels.len() % per, 0, "whole images");
        let n = pixels.len() / per;
        let onnx = self.descriptor.onnx_path();
        let s = self.size() as usize;
        let mut out = Vec::with_capacity(n * self.dim);
        for chunk in pixels.chunks(self.batch_size * per) {
            let rows = chunk.len() / per;
            let input = Tensor::from_array(([rows, 3, s, s], chunk.to_vec()))
                .map_err(ort_error("input tensor", &onnx))?;
            let outputs = self
                .session
                .run(ort::inputs![self.descriptor.input.name.as_str() => input])
                .map_err(ort_error("inference failed", &onnx))?;
            let (shape, values) = outputs[self.descriptor.output.name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(ort_error("reading the output", &onnx))?;
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            if dims != [rows, self.dim] {
                return Err(TeacherError::OutputShape {
                    path: onnx.clone(),
                    output: self.descriptor.output.name.clone(),
                    dims,
                    rows,
                    dim: self.dim,
                }
                .into());
            }
            let start = out.len();
            out.extend_from_slice(&values[..rows * self.dim]);
            if self.descriptor.output.normalize {
                out[start..].chunks_mut(self.dim).for_each(l2_normalize);
            }
        }
        Ok(out)
    }
}

/// Checks the session against the descriptor: the one input is the named float32
/// `[batch, 3, size, size]` tensor (static axes must match), the named output is float32
/// `[batch, dim]` with a static `dim`. Returns `dim`.
fn check_model(session: &Session, d: &ImageDescriptor) -> Result<usize> {
    let path = d.onnx_path();
    let descriptor_path = d.dir.join(DESCRIPTOR_FILE);
    let mismatch = |problem: String| {
        Error::from(EmbedError::DescriptorMismatch {
            descriptor: descriptor_path.clone(),
            model: path.clone(),
            problem,
        })
    };
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    if names != [d.input.name.as_str()] {
        return Err(mismatch(format!(
            "the descriptor names input `{}`, but the model's inputs are {names:?}",
            d.input.name
        )));
    }
    let ValueType::Tensor { ty, shape, .. } = session.inputs()[0].dtype() else {
        return Err(mismatch(format!(
            "input `{}` is not a tensor",
            d.input.name
        )));
    };
    if *ty != TensorElementType::Float32 {
        return Err(mismatch(format!(
            "input `{}` is {ty:?}; tagfix feeds float32 pixels",
            d.input.name
        )));
    }
    let want = [-1, 3, i64::from(d.input.size), i64::from(d.input.size)];
    let fits = shape.len() == 4
        && shape
            .iter()
            .zip(want)
            .enumerate()
            .all(|(i, (&got, w))| got < 0 || i == 0 || got == w);
    if !fits {
        return Err(mismatch(format!(
            "input `{}` has shape {shape}; input.size = {} needs [batch, 3, {0}, {0}]",
            d.input.name, d.input.size
        )));
    }
    let shape = float_output(session, &d.output.name).map_err(mismatch)?;
    if shape.len() != 2 || shape[1] <= 0 {
        return Err(mismatch(format!(
            "output `{}` has shape {shape}; expected [batch, dim] with a fixed dim",
            d.output.name
        )));
    }
    Ok(shape[1] as usize)
}
