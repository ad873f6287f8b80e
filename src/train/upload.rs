//! The batch upload: host buffers to the training device without blocking the host, and the
//! images' normalisation on the device.
//!
//! The loader hands over RGB8 pixels (a quarter of the floats' bytes). On CUDA each buffer is
//! copied into page-locked memory and from there with a non-blocking copy, so the host queues the
//! step's kernels instead of waiting for the transfer (and, through a blocking copy's stream
//! synchronisation, for the previous step). On the CPU the same code runs without pinning.
//! PyTorch's pinned allocator records the copy's stream, so a pinned buffer dropped right after
//! the copy is not reused before the transfer has finished.

use crate::error::Result;
use crate::train::data::augment::{CLIP_MEAN, CLIP_STD};
use crate::train::error::TrainError;
use crate::train::fused::call as shim_call;
use std::os::raw::{c_char, c_int};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn tagfix_pin_memory(
        t: *const C_tensor,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
}

/// A copy of the CPU tensor `t` in page-locked memory.
pub fn pin_memory(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor handle; on success `out` is a new tensor the caller owns.
    shim_call("pin_memory", |err, cap| unsafe {
        tagfix_pin_memory(t.as_ptr(), &mut out, err, cap)
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, which tch frees on drop.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `values` as a `shape` tensor on `device`: on CUDA through pinned memory with a non-blocking
/// copy, on the CPU the host tensor itself.
pub fn upload<T: tch::kind::Element>(
    values: &[T],
    shape: &[i64],
    device: Device,
) -> Result<Tensor> {
    let host = Tensor::from_slice(values).view(shape);
    if !device.is_cuda() {
        return Ok(host.to_device(device));
    }
    let pinned = pin_memory(&host)?;
    pinned
        .f_to_device_(device, pinned.kind(), true, false)
        .map_err(|e| {
            TrainError::Upload {
                device: format!("{device:?}"),
                source: Box::new(e),
            }
            .into()
        })
}

/// The training transform's normalisation on the device: RGB8 `[n, 3, S, S]` to
/// `(x/255 − mean)/std` per channel (CLIP's mean and std, as RAM normalises). The operands are
/// `[1, 3, 1, 1]` f32 tensors on the device, not host scalars: CUDA's division by a host scalar
/// multiplies by its reciprocal, which rounds differently from the host's division. With tensor
/// operands every element goes through the same IEEE f32 operations as
/// [`crate::imaging::normalize_value`], so the result equals the host normalisation bit for bit.
#[derive(Debug)]
pub struct PixelNormalizer {
    scale: Tensor,
    mean: Tensor,
    std: Tensor,
}

impl PixelNormalizer {
    /// CLIP's normalisation (the training transform's) with its operands on `device`.
    pub fn clip(device: Device) -> Self {
        let channel = |v: [f32; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]).to_device(device);
        PixelNormalizer {
            scale: channel([255.0; 3]),
            mean: channel(CLIP_MEAN),
            std: channel(CLIP_STD),
        }
    }

    /// `(x/255 − mean)/std` of uint8 pixels `[n, 3, S, S]` already on the device, as f32. One
    /// conversion, then the three operations in place: the same IEEE operations in the same order,
    /// without allocating (and on the CPU first touching) a new batch-sized tensor for each.
    pub fn normalize(&self, pixels: &Tensor) -> Tensor {
        let mut x = pixels.to_kind(Kind::Float);
        let _ = x.g_div_(&self.scale);
        let _ = x.g_sub_(&self.mean);
        let _ = x.g_div_(&self.std);
        x
    }

    /// Uploads RGB8 pixels `[n, 3, side, side]` and normalises them on `device`.
    pub fn upload(&self, pixels: &[u8], n: i64, side: i64, device: Device) -> Result<Tensor> {
        Ok(self.normalize(&upload(pixels, &[n, 3, side, side], device)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::normalize_value;

    #[test]
    fn device_normalisation_equals_the_host_bit_for_bit() {
        // Every byte value in every channel, two images of 16×16 = 256 pixels.
        let (n, side) = (2usize, 16usize);
        let plane = side * side;
        let pixels: Vec<u8> = (0..n * 3 * plane)
            .map(|i| ((i % plane) as u8).wrapping_add((i / plane) as u8 * 7))
            .collect();
        let norm = PixelNormalizer::clip(Device::Cpu);
        let got = norm
            .upload(&pixels, n as i64, side as i64, Device::Cpu)
            .unwrap();
        assert_eq!(got.size(), [2, 3, 16, 16]);
        assert_eq!(got.kind(), Kind::Float);
        let got = Vec::<f32>::try_from(got.reshape([-1])).unwrap();
        let want: Vec<f32> = pixels
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let c = (i / plane) % 3;
                normalize_value(x, CLIP_MEAN[c], CLIP_STD[c])
            })
            .collect();
        let differ = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "{differ} of {} values differ", want.len());
        // Each channel saw all 256 byte values.
        for c in 0..3 {
            let mut seen = [false; 256];
            for &x in &pixels[c * plane..(c + 1) * plane] {
                seen[x as usize] = true;
            }
            assert!(seen.iter().all(|s| *s), "channel {c}");
        }
    }

    #[test]
    fn cpu_upload_keeps_values_and_shape() {
        let t = upload(&[1.5f32, -2.0, 3.25, 0.0], &[2, 2], Device::Cpu).unwrap();
        assert_eq!(t.size(), [2, 2]);
        assert_eq!(
            Vec::<f32>::try_from(t.reshape([-1])).unwrap(),
            [1.5, -2.0, 3.25, 0.0]
        );
    }
}
