// Batch upload and device memory for tagfix's trainer (feature `train`).
//
// `Tensor::pin_memory` as tch 0.24 calls it passes a device, an argument ATen 2.11 deprecates with a
// warning on every call; `tagfix_pin_memory` calls it without one. `tagfix_cuda_memory` reads the
// CUDA caching allocator's counters and the device's free memory for `--micro-batch-size auto`; it
// exists only in the CUDA build (TAGFIX_LINK_CUDA=1 defines TAGFIX_CUDA_MEMORY) and otherwise
// reports that. C++ exceptions are returned as a message, never thrown into Rust.
#include <ATen/core/Tensor.h>
#ifdef TAGFIX_CUDA_MEMORY
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <cstdint>
#include <cstring>
#include <exception>

namespace {
void set_error(char* err, size_t cap, const char* what) {
  if (err == nullptr || cap == 0) return;
  std::strncpy(err, what, cap - 1);
  err[cap - 1] = '\0';
}
}  // namespace

extern "C" {

// A copy of the CPU tensor `self` in page-locked memory (`*out`, owned by the caller).
int tagfix_pin_memory(const at::Tensor* self, at::Tensor** out, char* err, size_t cap) {
  try {
    *out = new at::Tensor(self->pin_memory());
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
}

// CUDA device `device`: stats[0] bytes allocated now, stats[1] the peak allocated since the last
// reset, stats[2] bytes reserved by the caching allocator, stats[3] free and stats[4] total device
// memory (cudaMemGetInfo). With `reset_peak` the peak is reset after reading.
int tagfix_cuda_memory(int device, int reset_peak, int64_t* stats, char* err, size_t cap) {
#ifdef TAGFIX_CUDA_MEMORY
  try {
    namespace alloc = c10::cuda::CUDACachingAllocator;
    auto index = static_cast<c10::DeviceIndex>(device);
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    auto s = alloc::getDeviceStats(index);
    auto info = alloc::get()->getMemoryInfo(index);
    stats[0] = s.allocated_bytes[agg].current;
    stats[1] = s.allocated_bytes[agg].peak;
    stats[2] = s.reserved_bytes[agg].current;
    stats[3] = static_cast<int64_t>(info.first);
    stats[4] = static_cast<int64_t>(info.second);
    if (reset_peak != 0) alloc::resetPeakStats(index);
    return 0;
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
    return 1;
  }
#else
  (void)device;
  (void)reset_peak;
  (void)stats;
  set_error(err, cap,
            "this tagfix was built without CUDA memory statistics (build with TAGFIX_LINK_CUDA=1, "
            "as scripts/setup-gpu.sh does)");
  return 1;
#endif
}
}
