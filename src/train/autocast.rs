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
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

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
    fn tagfix_autocast_operand(
        t: *const C_tensor,
        device: c_int,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
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

/// The operand autocast would compute with for the weight `t` on `device`: inside an autocast
/// region its cached low-precision cast (made once per [`CastCacheScope`], like the weights the
/// matrix products take directly), outside `t` itself. For a weight the model reads through views
/// (`label_embed`: a transpose and a reshape), whose casts autocast neither caches nor shares.
pub fn operand(t: &Tensor, device: Device) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor handle; on success `out` is a new tensor the caller owns.
    call(|err, cap| unsafe {
        tagfix_autocast_operand(t.as_ptr(), device_code(device), &mut out, err, cap)
    })?;
    // SAFETY: allocated by the shim with `new at::Tensor`, which tch frees on drop.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Keeps autocast's cast cache alive from its creation to its drop, across the autocast regions
/// inside: a training step casts each f32 weight to the low-precision dtype once, not once per
/// micro-batch (ATen caches the casts of leaf tensors that require grad within a region and clears
/// the cache when the outermost region ends; this scope is that outermost level). The weights must
/// not change while it lives — end it before the optimizer update, or the next forward computes
/// with the previous step's casts.
///
/// ATen's cache is process-wide while the nesting is per thread: an outermost region ending on
/// another thread clears it, which costs a fresh cast, never a wrong value.
pub struct CastCacheScope(());

impl CastCacheScope {
    /// Opens the scope (it enables nothing by itself; [`with_autocast`] regions inside do).
    pub fn open() -> Self {
        // SAFETY: nesting counter of ATen's thread-local autocast state, decremented in `drop`.
        unsafe { tagfix_autocast_enter() };
        CastCacheScope(())
    }
}

impl Drop for CastCacheScope {
    fn drop(&mut self) {
        // SAFETY: see `open`; at depth 0 the shim clears the cast cache.
        unsafe { tagfix_autocast_exit() };
    }
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

    #[test]
    fn matmul_runs_in_bf16_inside_and_f32_outside() {
        let _torch = crate::train::torch_test_lock();
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
        let _torch = crate::train::torch_test_lock();
        let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        let out = with_autocast(Device::Cpu, Kind::Half, || a.matmul(&a)).unwrap();
        assert_eq!(out.kind(), Kind::Half);
        assert!(with_autocast(Device::Cpu, Kind::Double, || ()).is_err());
    }

    #[test]
    fn nested_regions_restore_the_outer_state() {
        let _torch = crate::train::torch_test_lock();
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

    /// `x · w` in a bf16 region, as f32.
    fn product(x: &Tensor, w: &Tensor) -> Tensor {
        with_autocast(Device::Cpu, Kind::BFloat16, || x.matmul(w))
            .unwrap()
            .to_kind(Kind::Float)
    }

    #[test]
    fn a_scope_casts_each_weight_once_for_all_its_regions() {
        let _torch = crate::train::torch_test_lock();
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([3, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let set = |v: f64| {
            tch::no_grad(|| {
                let _ = w.shallow_clone().fill_(v);
            })
        };
        let scope = CastCacheScope::open();
        let first = product(&x, &w);
        set(2.0);
        // The cached bf16 copy of `w` from the first region is reused: the change is not seen.
        assert!(product(&x, &w).equal(&first), "one cast per scope");
        drop(scope);
        assert_eq!(product(&x, &w).sum(Kind::Float).double_value(&[]), 24.0);
        // Without a scope every region casts afresh.
        set(3.0);
        assert_eq!(product(&x, &w).sum(Kind::Float).double_value(&[]), 36.0);
    }

    #[test]
    fn an_operand_is_cast_once_inside_a_region_and_itself_outside() {
        let _torch = crate::train::torch_test_lock();
        let w = Tensor::ones([3, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert_eq!(operand(&w, Device::Cpu).unwrap().kind(), Kind::Float);
        let scope = CastCacheScope::open();
        let first = with_autocast(Device::Cpu, Kind::BFloat16, || operand(&w, Device::Cpu))
            .unwrap()
            .unwrap();
        assert_eq!(first.kind(), Kind::BFloat16);
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(5.0);
        });
        let again = with_autocast(Device::Cpu, Kind::BFloat16, || operand(&w, Device::Cpu))
            .unwrap()
            .unwrap();
        assert!(again.equal(&first), "the cached cast of the scope");
        drop(scope);
        // Gradients reach the f32 weight through the cast.
        let y = with_autocast(Device::Cpu, Kind::BFloat16, || {
            operand(&w, Device::Cpu).map(|e| e.tr().sum(Kind::Float))
        })
        .unwrap()
        .unwrap();
        y.backward();
        assert_eq!(w.grad().sum(Kind::Float).double_value(&[]), 6.0);
    }

    #[test]
    fn gradients_accumulate_through_a_cached_cast() {
        let _torch = crate::train::torch_test_lock();
        let w = Tensor::randn([4, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let inputs: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn([5, 4], (Kind::Float, Device::Cpu)))
            .collect();
        let accumulate = |scoped: bool| {
            w.shallow_clone().zero_grad();
            let scope = scoped.then(CastCacheScope::open);
            for x in &inputs {
                // One backward per micro-batch, each through the same cached cast when scoped.
                let loss = with_autocast(Device::Cpu, Kind::BFloat16, || x.matmul(&w).tanh())
                    .unwrap()
                    .to_kind(Kind::Float)
                    .sum(Kind::Float);
                loss.backward();
            }
            drop(scope);
            w.grad().copy()
        };
        let cached = accumulate(true);
        let fresh = accumulate(false);
        assert!(cached.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(
            cached.equal(&fresh),
            "same gradients with and without the cache"
        );
    }

    #[test]
    fn tf32_is_set_through_the_shim_and_left_alone_on_the_cpu() {
        let _torch = crate::train::torch_test_lock();
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
