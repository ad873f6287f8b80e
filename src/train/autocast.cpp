// bf16 / fp16 autocast for tagfix's training loop (feature `train`).
//
// tch 0.24 exposes only the deprecated CUDA-only autocast switch with its default fp16 type. This shim
// sets the per-device enable flag and the autocast dtype through ATen's own API
// (ATen/autocast_mode.h: set_autocast_enabled / set_autocast_dtype, the calls behind
// torch.autocast(device_type, dtype) in Python). Every function catches C++ exceptions and reports
// them as a message so no exception crosses into Rust.
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>

#include <cstring>
#include <exception>
#include <string>

namespace {
void set_error(char* err, size_t cap, const char* what) {
  if (err == nullptr || cap == 0) return;
  std::strncpy(err, what, cap - 1);
  err[cap - 1] = '\0';
}

at::DeviceType device_type(int device) {
  return device == 1 ? at::kCUDA : at::kCPU;
}
}  // namespace

extern "C" {

// Reads the state: enabled flag and dtype (as c10::ScalarType's integer) of a device type
// (0 = CPU, 1 = CUDA). Returns 0 on success.
int tagfix_autocast_get(int device, int* enabled, int* dtype, char* err, size_t cap) {
  try {
    *enabled = at::autocast::is_autocast_enabled(device_type(device)) ? 1 : 0;
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(device_type(device)));
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
}

// Sets the state of a device type; `dtype` is a c10::ScalarType integer (5 = Half, 15 = BFloat16).
int tagfix_autocast_set(int device, int enabled, int dtype, char* err, size_t cap) {
  try {
    at::autocast::set_autocast_dtype(device_type(device), static_cast<c10::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(device_type(device), enabled != 0);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
}

// Nesting counter of autocast regions; the cast cache is cleared when the outermost region ends
// (what torch.autocast.__exit__ does).
int tagfix_autocast_enter() { return at::autocast::increment_nesting(); }

int tagfix_autocast_exit() {
  int depth = at::autocast::decrement_nesting();
  if (depth == 0) at::autocast::clear_cache();
  return depth;
}

// The operand autocast would use for `self` on `device`: while autocast is on there, ATen's cached cast
// to the autocast dtype (a trained f32 weight is cast once until the outermost region ends, then
// reused); otherwise `self`. For a weight the model uses through views (which autocast casts afresh
// each time, uncached). Returns 0 on success; `*out` is a new tensor the caller owns.
int tagfix_autocast_operand(const at::Tensor* self, int device, at::Tensor** out, char* err, size_t cap) {
  try {
    auto dt = device_type(device);
    if (at::autocast::is_autocast_enabled(dt)) {
      *out = new at::Tensor(at::autocast::cached_cast(at::autocast::get_autocast_dtype(dt), *self, dt));
    } else {
      *out = new at::Tensor(*self);
    }
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
}

// TF32 for f32 matrix products (cuBLAS) and convolutions (cuDNN) on CUDA, on or off (what
// torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 set). Process-wide; the
// flags exist in every libtorch build and change nothing on the CPU. Returns 0 on success.
int tagfix_set_tf32(int on, char* err, size_t cap) {
  try {
    at::globalContext().setAllowTF32CuBLAS(on != 0);
    at::globalContext().setAllowTF32CuDNN(on != 0);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
}

// Whether TF32 is on for cuBLAS f32 matrix products (1) or not (0).
int tagfix_tf32_cublas() { return at::globalContext().allowTF32CuBLAS() ? 1 : 0; }
}
