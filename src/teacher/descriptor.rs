//! The image-encoder descriptor: `descriptor.toml` beside an ONNX CLIP image tower, naming its input
//! and output and the preprocessing the tower was trained with, so nothing about the model is
//! hard-coded (the text models' descriptor is [`crate::embed::ModelDescriptor`]).
//!
//! ```toml
//! kind = "clip-image"
//! name = "CLIP ViT-B/16 image tower (openai)"
//! onnx = "model.onnx"
//! [input]
//! name = "pixel_values"        # float32 [batch, 3, size, size]
//! size = 224
//! resize = "shortest-side"     # CLIP: shortest side to `size` (bicubic), then centre crop; or "squash"
//! mean = [0.48145466, 0.4578275, 0.40821073]
//! std = [0.26862954, 0.26130258, 0.27577711]
//! [output]
//! name = "image_embeds"        # float32 [batch, dim]
//! normalize = false            # CLIP's encode_image is not normalised; RAM distils the raw feature
//! ```

use super::TeacherError;
use crate::embed::descriptor::{
    parse_descriptor, read_descriptor_text, resolve_model_dir, DESCRIPTOR_FILE,
};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `kind` an image descriptor declares.
pub const IMAGE_KIND: &str = "clip-image";

/// The largest input side a descriptor may name: well above any CLIP tower's (224–448), and small
/// enough that a batch's pixel buffer (`batch × 3 × size²` floats) is never a surprise allocation.
pub const MAX_INPUT_SIZE: u32 = 4096;

/// CLIP's per-channel mean and standard deviation (RGB), OpenAI's values as published (more digits
/// than an f32 holds; the nearest f32 is what every implementation uses).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How an image is brought to `size × size` for the evaluation (un-augmented) view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// CLIP's `Resize(size)` (shortest side, bicubic) then `CenterCrop(size)`.
    ShortestSide,
    /// Both sides to `size` (aspect ratio not kept), no crop.
    Squash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    pub name: String,
    /// Side of the square input in pixels.
    pub size: u32,
    #[serde(default = "shortest_side")]
    pub resize: Resize,
    #[serde(default = "clip_mean")]
    pub mean: [f32; 3],
    #[serde(default = "clip_std")]
    pub std: [f32; 3],
}

impl ImageInput {
    /// Values per preprocessed image (`3·S·S`).
    pub fn pixels_per_image(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }
}

fn shortest_side() -> Resize {
    Resize::ShortestSide
}
fn clip_mean() -> [f32; 3] {
    CLIP_MEAN
}
fn clip_std() -> [f32; 3] {
    CLIP_STD
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOutput {
    pub name: String,
    /// L2-normalise each feature (CLIP's `encode_image` is not normalised).
    #[serde(default)]
    pub normalize: bool,
}

/// An image-encoder descriptor (`descriptor.toml` with `kind = "clip-image"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDescriptor {
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    /// The ONNX file, relative to the model directory.
    pub onnx: PathBuf,
    pub input: ImageInput,
    pub output: ImageOutput,
    /// The model directory (set when read).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl ImageDescriptor {
    /// Reads `dir/descriptor.toml` and checks it describes an image encoder.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let (path, text) = read_descriptor_text(
            dir,
            "image-encoder descriptor",
            &format!("an image-encoder directory holds the ONNX file and {DESCRIPTOR_FILE} with kind = \"{IMAGE_KIND}\""),
        )?;
        let kind: Option<String> = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("kind").and_then(|k| k.as_str().map(str::to_string)));
        if kind.as_deref() != Some(IMAGE_KIND) {
            return Err(TeacherError::NotImageDescriptor { path, kind }.into());
        }
        let mut d: ImageDescriptor = parse_descriptor(&path, &text, "image-encoder descriptor")?;
        if !(8..=MAX_INPUT_SIZE).contains(&d.input.size) {
            let size = d.input.size;
            return Err(TeacherError::InputSize { path, size }.into());
        }
        // NaN fails `> 0.0` too: a std that is not a positive number is refused.
        if let Some(s) = d.input.std.iter().find(|s| !s.is_finite() || **s <= 0.0) {
            return Err(TeacherError::InputStd { path, std: *s }.into());
        }
        d.dir = dir.to_path_buf();
        Ok(d)
    }

    /// Resolves a directory or a model name (`clip-vision`, `clip-tiny-vision`; see
    /// [`resolve_model_dir`]) and reads its descriptor.
    pub fn resolve(spec: &str) -> Result<Self> {
        Self::read_dir(&resolve_model_dir(spec)?)
    }

    pub fn onnx_path(&self) -> PathBuf {
        self.dir.join(&self.onnx)
    }

    /// Name for logs and provenance: the `name` field, else the directory.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// The preprocessing, for provenance.
    pub fn preprocessing_description(&self) -> String {
        let resize = match self.input.resize {
            Resize::ShortestSide => format!(
                "shortest side to {0} (bicubic), centre crop {0}×{0}",
                self.input.size
            ),
            Resize::Squash => format!("resize to {0}×{0} (bicubic)", self.input.size),
        };
        format!(
            "{resize}, (x/255 - mean)/std with mean {:?} std {:?}",
            self.input.mean, self.input.std
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"
kind = "clip-image"
onnx = "model.onnx"
[input]
name = "pixel_values"
size = 224
[output]
name = "image_embeds"
"#;

    #[test]
    fn reads_defaults_and_refuses_text_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DESCRIPTOR_FILE), TINY).unwrap();
        let d = ImageDescriptor::read_dir(dir.path()).unwrap();
        assert_eq!(d.input.resize, Resize::ShortestSide);
        assert_eq!(d.input.mean, CLIP_MEAN);
        assert!(!d.output.normalize);
        std::fs::write(
            dir.path().join(DESCRIPTOR_FILE),
            "onnx = \"model.onnx\"\nmax_length = 77\n",
        )
        .unwrap();
        let e = ImageDescriptor::read_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an image-encoder descriptor"), "{e}");
        std::fs::write(
            dir.path().join(DESCRIPTOR_FILE),
            TINY.replace("size = 224", "size = 224\nstd = [0.2, 0.0, 0.3]"),
        )
        .unwrap();
        let e = ImageDescriptor::read_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("std must be positive"), "{e}");
    }

    #[test]
    fn input_sizes_outside_the_bounds_are_refused_with_the_value() {
        let dir = tempfile::tempdir().unwrap();
        for (size, ok) in [
            (7u64, false),
            (8, true),
            (4096, true),
            (4097, false),
            (4_000_000_000, false),
        ] {
            let text = TINY.replace("size = 224", &format!("size = {size}"));
            std::fs::write(dir.path().join(DESCRIPTOR_FILE), text).unwrap();
            match ImageDescriptor::read_dir(dir.path()) {
                Ok(d) => assert!(ok, "{size} taken: {}", d.input.size),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        !ok && e
                            .contains(&format!("input.size = {size} is not between 8 and 4096")),
                        "{e}"
                    );
                }
            }
        }
    }
}
