//! Mixed-precision autocast regions with a chosen dtype (bf16 or fp16), on CPU or CUDA.
//!
//! The equivalent of Python's `with torch.autocast(device_type, dtype=torch.bfloat16): ...`: inside
//! the region, matrix products and convolutions run in the low-precision dtype while parameters,
//! their gradients and the optimizer state stay f32, and precision-sensitive ops (softmax, norms,
//! losses) keep f32 per ATen's autocast op lists. tch 0.24 only switches CUDA autocast with its default
//! fp16 type, so the dtype is set through a small ATen shim (`src/train/autocast.cpp`).

use super::config::Precision;
use super::error::TrainError;
use crate::error::Result;
use std::os::raw::{c_char, c_int};
use tch::{Device, Kind};

extern "C" {
    fn tagfix_autocast_get(
        device: c_int,
        enabled: *mut c_int,
        dtype: *mut c_int,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_autocast_set(
        device: c_int,
        enabled: c_int,
        dtype: c_int,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_autocast_enter() -> c_int;
    fn tagfix_set_tf32(on: c_int, err: *mut c_char, cap: usize) -> c_int;
    fn tagfix_tf32_cublas() -> c_int;
    fn tagfix_autocast_exit() -> c_int;
}

/// c10::ScalarType codes of the dtypes autocast accepts.
fn scalar_type(kind: Kind) -> Result<c_int> {
    match kind {
        Kind::Half => Ok(5),
        Kind::BFloat16 => Ok(15),
        other => Err(TrainError::AutocastDtype(format!("{other:?}")).into()),
    }
}

fn device_code(device: Device) -> c_int {
    match device {
        Device::Cuda(_) => 1,
        _ => 0,
    }
}

/// Runs an autocast shim call (see [`super::fused::call`]).
fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    super::fused::call("autocast", f)
}

/// Whether autocast is on for `device`'s type, and its dtype code.
fn state(device: Device) -> Result<(c_int, c_int)> {
    let (mut enabled, mut dtype) = (0, 0);
    // SAFETY: plain out-pointers to locals; the shim catches every C++ exception.
    call(|err, cap| unsafe {
        tagfix_autocast_get(device_code(device), &mut enabled, &mut dtype, err, cap)
    })?;
    Ok((enabled, dtype))
}

fn set_state(device: Device, enabled: c_int, dtype: c_int) -> Result<()> {
    // SAFETY: as above.
    call(|err, cap| unsafe { tagfix_autocast_set(device_code(device), enabled, dtype, err, cap) })
}

/// Runs `f` inside an autocast region for `device` computing in `kind` (`Kind::BFloat16` or
/// `Kind::Half`); the previous autocast state is restored afterwards, also when `f` panics.
pub fn with_autocast<T>(device: Device, kind: Kind, f: impl FnOnce() -> T) -> Result<T> {
    let dtype = scalar_type(kind)?;
    let previous = state(device)?;
    set_state(device, 1, dtype)?;
    // SAFETY: nesting counters of ATen's thread-local autocast state.
    unsafe { tagfix_autocast_enter() };
    struct Restore {
        device: Device,
        previous: (c_int, c_int),
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: see above; leaving the region restores what was there before.
            unsafe { tagfix_autocast_exit() };
            let _ = set_state(self.device, self.previous.0, self.previous.1);
        }
    }
    let _restore = Restore { device, previous };
    Ok(f())
}

/// Sets TF32 for f32 matrix products (cuBLAS) and convolutions (cuDNN), process-wide.
fn apply_tf32(on: bool) -> Result<()> {
    // SAFETY: two flags of ATen's global context; the shim catches every C++ exception.
    call(|err, cap| unsafe { tagfix_set_tf32(c_int::from(on), err, cap) })
}

/// Whether f32 matrix products on CUDA may use TF32 (ATen's cuBLAS flag).
pub fn tf32_enabled() -> bool {
    // SAFETY: reads a flag of ATen's global context.
    unsafe { tagfix_tf32_cublas() != 0 }
}

/// The `tf32` setting for a run on `device`: on CUDA, TF32 on or off for f32 matrix products and
/// convolutions (off: IEEE f32, also for cuDNN's convolutions, which PyTorch otherwise runs in TF32);
/// on the CPU nothing is set (TF32 is a CUDA tensor-core format). Returns the line for the log.
pub fn set_tf32(on: bool, device: Device, precision: Precision) -> Result<String> {
    if !device.is_cuda() {
        return Ok(if on {
            "TF32: --tf32 has no effect on the CPU (it only changes f32 matrix products and convolutions on CUDA); f32 stays IEEE".into()
        } else {
            "TF32: off (IEEE f32)".into()
        });
    }
    apply_tf32(on)?;
    let bf16 = match precision {
        Precision::Bf16 => " that bf16 autocast leaves in f32",
        Precision::F32 => "",
    };
    Ok(if on {
        format!("TF32: on for the f32 matrix products and convolutions{bf16} on CUDA (--tf32: inputs rounded to a 10-bit mantissa)")
    } else {
        "TF32: off (IEEE f32 matrix products and convolutions on CUDA; --tf32 turns it on)".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn matmul_runs_in_bf16_inside_and_f32_outside() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let inside = with_autocast(Device::Cpu, Kind::BFloat16, || a.matmul(&b)).unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        let exact = a.matmul(&b);
        assert_eq!(exact.kind(), Kind::Float, "state restored after the region");
        let diff = (inside.to_kind(Kind::Float) - &exact)
            .abs()
            .max()
            .double_value(&[]);
        let scale = exact.abs().max().double_value(&[]);
        assert!(
            diff > 0.0 && diff < 0.05 * scale,
            "bf16 rounding: {diff} vs scale {scale}"
        );
    }

    #[test]
    fn half_is_accepted_and_other_kinds_refused() {
        let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let out = with_autocast(Device::Cpu, Kind::Half, || a.matmul(&a)).unwrap();
        assert_eq!(out.kind(), Kind::Half);
        assert!(with_autocast(Device::Cpu, Kind::Double, || ()).is_err());
    }

    #[test]
    fn nested_regions_restore_the_outer_state() {
        let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        with_autocast(Device::Cpu, Kind::BFloat16, || {
            with_autocast(Device::Cpu, Kind::Half, || {
                assert_eq!(a.matmul(&a).kind(), Kind::Half)
            })
            .unwrap();
            assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
        })
        .unwrap();
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn tf32_is_set_through_the_shim_and_left_alone_on_the_cpu() {
        let note = set_tf32(true, Device::Cpu, Precision::F32).unwrap();
        assert!(note.contains("no effect on the CPU"), "{note}");
        assert!(!tf32_enabled(), "a CPU run sets nothing");
        // The shim itself works in the CPU libtorch (the flags only matter to CUDA kernels).
        apply_tf32(true).unwrap();
        assert!(tf32_enabled());
        apply_tf32(false).unwrap();
        assert!(!tf32_enabled());
    }
}
