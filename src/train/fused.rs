//! ATen's fused AdamW (`_fused_adamw_`, the kernel of `torch.optim.AdamW(fused=True)`) and batched
//! L2 norms (`_foreach_norm`), which tch 0.24 does not generate, through the C++ shim
//! `src/train/optim.cpp`. Both take whole lists of tensors, so one call replaces a loop of per-tensor
//! kernels.

use crate::error::{Error, Result};
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

/// Runs a shim call that reports failure as a NUL-terminated message in `err`.
pub(crate) fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut buf = vec![0 as c_char; 512];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message into `buf`.
    let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Err(Error::Other(format!(
        "libtorch {what}: {}",
        msg.to_string_lossy()
    )))
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
) -> Result<()> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len()] != [n; 3] {
        return Err(Error::Other(
            "fused AdamW: parameter, gradient and state lists differ in length".into(),
        ));
    }
    // The CPU kernel indexes all four tensors alike, so shapes are checked here first.
    for i in 0..n {
        let shape = params[i].size();
        if [grads[i], exp_avgs[i], exp_avg_sqs[i]]
            .iter()
            .any(|t| t.size() != shape)
        {
            return Err(Error::Other(format!(
                "fused AdamW: tensor {i} of shape {shape:?} has a gradient or state of another shape"
            )));
        }
    }
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

    #[test]
    fn mismatched_lists_are_refused() {
        let a = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let step = Tensor::from(1.0f32);
        let args = AdamWArgs {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            eps: 1e-8,
        };
        assert!(fused_adamw(&[&a], &[], &[&a], &[&a], &step, args).is_err());
        // A gradient of another shape is refused before the kernel runs.
        let g = Tensor::ones([3], (Kind::Float, Device::Cpu));
        let (m, v) = (a.zeros_like(), a.zeros_like());
        assert!(fused_adamw(&[&a], &[&g], &[&m], &[&v], &step, args).is_err());
    }
}
