//! ATen's fused AdamW (`_fused_adamw_`, the kernel of `torch.optim.AdamW(fused=True)`) and batched
//! L2 norms (`_foreach_norm`), which tch 0.24 does not generate, through the C++ shim
//! `src/train/optim.cpp`. Both take whole lists of tensors, so one call replaces a loop of per-tensor
//! kernels.

use super::error::TrainError;
use crate::error::Result;
use std::os::raw::{c_char, c_int};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn tagfix_fused_adamw(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        n: usize,
        step: *const C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        grad_scale: *const C_tensor,
        found_inf: *const C_tensor,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_foreach_norm(
        xs: *const *const C_tensor,
        n: usize,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
}

/// Runs a call into one of the C++ shims (`src/train/*.cpp`), which return non-zero on failure and
/// write a NUL-terminated message into the buffer they are given: that message, trimmed.
pub(crate) fn call_message(
    f: impl FnOnce(*mut c_char, usize) -> c_int,
) -> std::result::Result<(), String> {
    let mut buf = vec![0 as c_char; 2048];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message into `buf` (zeroed, so terminated anyway).
    let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Err(msg.to_string_lossy().trim().to_string())
}

/// [`call_message`], its failure as [`TrainError::Libtorch`] naming `what`.
pub(crate) fn call(what: &'static str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    call_message(f).map_err(|message| TrainError::Libtorch { op: what, message }.into())
}

fn handles(xs: &[&Tensor]) -> Vec<*const C_tensor> {
    xs.iter().map(|t| t.as_ptr()).collect()
}

/// The hyper-parameters of one fused AdamW call.
#[derive(Debug, Clone, Copy)]
pub struct AdamWArgs {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// Device-side controls of a fused update, each a 1-value f32 tensor on the parameters' device, so
/// that clipping and skipping need no host read.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepGuards<'a> {
    /// Every gradient is divided by it (global-norm clipping: `max(1, norm / max_norm)`).
    pub grad_scale: Option<&'a Tensor>,
    /// When it holds 1, nothing changes (parameters, moments): a non-finite step is skipped.
    pub found_inf: Option<&'a Tensor>,
}

/// One AdamW update of `params` in place (PyTorch's decoupled-decay formula), with their moments.
/// `step` is a 0-dim f32 tensor on the parameters' device holding this update's step number (from 1).
/// All lists have the same length; the tensors share one device and dtype.
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    step: &Tensor,
    a: AdamWArgs,
    guards: StepGuards,
) -> Result<()> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len()] != [n; 3] {
        return Err(TrainError::FusedLengths.into());
    }
    // The CPU kernel indexes all four tensors alike, so shapes are checked here first.
    for i in 0..n {
        let shape = params[i].size();
        if [grads[i], exp_avgs[i], exp_avg_sqs[i]]
            .iter()
            .any(|t| t.size() != shape)
        {
            return Err(TrainError::FusedShape { tensor: i, shape }.into());
        }
    }
    for t in [guards.grad_scale, guards.found_inf].into_iter().flatten() {
        if t.kind() != tch::Kind::Float || t.numel() != 1 {
            return Err(TrainError::FusedGuard {
                kind: format!("{:?}", t.kind()),
                shape: t.size(),
            }
            .into());
        }
    }
    let guard = |t: Option<&Tensor>| t.map_or(std::ptr::null(), |t| t.as_ptr());
    let (p, g, m, v) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
    );
    // SAFETY: every handle is a live tch tensor borrowed for the call; the shim catches C++ exceptions.
    call("fused AdamW", |err, cap| unsafe {
        tagfix_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n,
            step.as_ptr(),
            a.lr,
            a.beta1,
            a.beta2,
            a.weight_decay,
            a.eps,
            guard(guards.grad_scale),
            guard(guards.found_inf),
            err,
            cap,
        )
    })
}

/// The L2 norm of each tensor, as one f64 tensor of length `xs.len()` on their device.
pub fn foreach_norm(xs: &[&Tensor]) -> Result<Tensor> {
    let h = handles(xs);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as above; on success `out` is a new tensor that the returned `Tensor` owns.
    call("foreach norm", |err, cap| unsafe {
        tagfix_foreach_norm(h.as_ptr(), h.len(), &mut out, err, cap)
    })?;
    // SAFETY: `out` was allocated by the shim with `new at::Tensor`, which tch frees on drop.
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn norms_of_a_list() {
        let a = Tensor::from_slice(&[3.0f32, 4.0]);
        let b = Tensor::from_slice(&[1.0f32, 2.0, 2.0]);
        let n = foreach_norm(&[&a, &b]).unwrap();
        assert_eq!(n.kind(), Kind::Double);
        assert_eq!(Vec::<f64>::try_from(&n).unwrap(), vec![5.0, 3.0]);
    }

    const ARGS: AdamWArgs = AdamWArgs {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        weight_decay: 0.0,
        eps: 1e-8,
    };

    #[test]
    fn mismatched_lists_are_refused() {
        let a = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let step = Tensor::from(1.0f32);
        let args = ARGS;
        let none = StepGuards::default();
        assert!(fused_adamw(&[&a], &[], &[&a], &[&a], &step, args, none).is_err());
        // A gradient of another shape is refused before the kernel runs.
        let g = Tensor::ones([3], (Kind::Float, Device::Cpu));
        let (m, v) = (a.zeros_like(), a.zeros_like());
        assert!(fused_adamw(&[&a], &[&g], &[&m], &[&v], &step, args, none).is_err());
        // So is a guard that is not one f32 value.
        let two = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let bad = StepGuards {
            found_inf: Some(&two),
            ..none
        };
        let g = a.ones_like();
        assert!(fused_adamw(&[&a], &[&g], &[&m], &[&v], &step, args, bad).is_err());
    }

    #[test]
    fn found_inf_skips_and_grad_scale_divides() {
        let args = ARGS;
        let step = Tensor::from(1.0f32);
        let run = |grad: f32, guards: StepGuards| {
            let p = Tensor::from_slice(&[1.0f32, 2.0]);
            let g = Tensor::from_slice(&[grad, -grad]);
            let (m, v) = (p.zeros_like(), p.zeros_like());
            fused_adamw(&[&p], &[&g], &[&m], &[&v], &step, args, guards).unwrap();
            let values = |t: &Tensor| Vec::<f32>::try_from(t).unwrap();
            (values(&p), values(&m))
        };
        let (one, zero) = (Tensor::from_slice(&[1.0f32]), Tensor::from(0.0f32));
        // found_inf = 1: parameters and moments untouched, even with a NaN gradient.
        let skip = StepGuards {
            found_inf: Some(&one),
            grad_scale: None,
        };
        assert_eq!(run(f32::NAN, skip), (vec![1.0, 2.0], vec![0.0, 0.0]));
        // found_inf = 0: the update runs.
        let go = StepGuards {
            found_inf: Some(&zero),
            grad_scale: None,
        };
        let (p, m) = run(4.0, go);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] - 2.1).abs() < 1e-6,
            "{p:?}"
        );
        assert!((m[0] - 0.4).abs() < 1e-6, "{m:?}");
        // grad_scale 4: the first moment sees gradient 1 instead of 4.
        let four = Tensor::from(4.0f32);
        let scaled = StepGuards {
            grad_scale: Some(&four),
            found_inf: None,
        };
        let (_, m) = run(4.0, scaled);
        assert!(
            (m[0] - 0.1).abs() < 1e-6 && (m[1] + 0.1).abs() < 1e-6,
            "{m:?}"
        );
    }
}
