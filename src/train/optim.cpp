// Fused AdamW and batched norms for tagfix's optimizer (feature `train`).
//
// tch 0.24 does not generate bindings for ATen's `_fused_adamw_` (the kernel behind
// torch.optim.AdamW(fused=True), for CPU and CUDA) nor `_foreach_norm`. These wrappers take tch's
// tensor handles (a `C_tensor*` is an `at::Tensor*`), run with gradient recording off, and report C++
// exceptions as a message so none crosses into Rust.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/stack.h>
#include <c10/core/GradMode.h>

#include <cstring>
#include <exception>
#include <optional>
#include <vector>

namespace {
void set_error(char* err, size_t cap, const char* what) {
  if (err == nullptr || cap == 0) return;
  std::strncpy(err, what, cap - 1);
  err[cap - 1] = '\0';
}

std::vector<at::Tensor> list(at::Tensor* const* xs, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*xs[i]);
  return out;
}
}  // namespace

extern "C" {

// One `_fused_adamw_` call over `n` parameters (one weight-decay group), updating params, exp_avgs and
// exp_avg_sqs in place. `step` is a 0-dim f32 tensor on the parameters' device holding the step
// number already counted for this update (the kernel reads it for the bias corrections); it is shared
// by every parameter of the group. `grad_scale` and `found_inf` may be null; otherwise they are 1-value
// f32 tensors on the same device: the kernel divides every gradient by `grad_scale` (global-norm
// clipping without a host read) and changes nothing when `found_inf` is 1 (a non-finite step skipped
// without a host read). Returns 0 on success.
int tagfix_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads,
                       at::Tensor* const* exp_avgs, at::Tensor* const* exp_avg_sqs, size_t n,
                       const at::Tensor* step, double lr, double beta1, double beta2,
                       double weight_decay, double eps, const at::Tensor* grad_scale,
                       const at::Tensor* found_inf, char* err, size_t cap) {
  try {
    c10::AutoGradMode no_grad(false);
    std::vector<at::Tensor> steps(n, *step);
    auto optional = [](const at::Tensor* t) {
      return t == nullptr ? std::optional<at::Tensor>() : std::optional<at::Tensor>(*t);
    };
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                      {}, steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false, optional(grad_scale), optional(found_inf));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
}

// The L2 norms of `n` tensors as one f64 vector of length n (`_foreach_norm`, then one stack), so the
// caller reads them all with a single device-to-host copy. `*out` receives a new tensor owned by the
// caller (freed by tch's `at_free`). Returns 0 on success.
int tagfix_foreach_norm(at::Tensor* const* xs, size_t n, at::Tensor** out, char* err, size_t cap) {
  try {
    c10::AutoGradMode no_grad(false);
    auto norms = at::_foreach_norm(list(xs, n), 2, at::kDouble);
    *out = new at::Tensor(at::stack(norms));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
}
}
