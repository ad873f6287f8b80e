// PyTorch's distributed engine (c10d) for tagfix's data-parallel training (feature `train`).
//
// tch 0.24 has no bindings for torch.distributed, so this shim exposes the few pieces the trainer
// needs through a C ABI: a `c10d::TCPStore` rendezvous, a process group (`ProcessGroupGloo` on CPU,
// `ProcessGroupNCCL` on CUDA when built with TAGFIX_DIST_NCCL), and blocking collectives with a
// timeout. Tensors are tch's handles (a `C_tensor*` is an `at::Tensor*`). Every entry point returns
// 0 on success and 1 on failure with the C++ exception's message in `err`: nothing is thrown across
// the C boundary and nothing aborts.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef TAGFIX_DIST_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
using std::chrono::milliseconds;

void set_error(char* err, size_t cap, const char* what) {
  if (err == nullptr || cap == 0) return;
  std::strncpy(err, what, cap - 1);
  err[cap - 1] = '\0';
}

// Runs `body`, turning any C++ exception into an error message (c10's without its backtrace).
template <class F>
int guarded(char* err, size_t cap, F&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    set_error(err, cap, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_error(err, cap, e.what());
  } catch (...) {
    set_error(err, cap, "unknown C++ exception");
  }
  return 1;
}

std::vector<at::Tensor> list(at::Tensor* const* xs, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*xs[i]);
  return out;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms) {
  work->wait(milliseconds(timeout_ms));
}

// One collective per tensor (`start` issues it), all issued before the first wait so that the
// backend pipelines them, then waits for each.
template <class F>
void each_then_wait(at::Tensor* const* xs, size_t n, int64_t timeout_ms, F&& start) {
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  works.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    std::vector<at::Tensor> one{*xs[i]};
    works.push_back(start(one));
  }
  for (auto& w : works) wait(w, timeout_ms);
}
}  // namespace

struct TagfixStore {
  c10::intrusive_ptr<c10d::Store> store;
};

struct TagfixGroup {
  c10::intrusive_ptr<c10d::Backend> backend;
};

extern "C" {

// Connects to (or, with `is_server`, serves) the TCPStore at host:port; a client retries until
// `timeout_ms`. The server does not wait for the clients: the caller checks which ranks joined, so
// that a missing one can be named. Keys live under
// `prefix` so that a store shared with torchrun's agent is not confused by other keys.
int tagfix_dist_store_new(const char* host, uint16_t port, int is_server, int world_size,
                          int64_t timeout_ms, const char* prefix, TagfixStore** out, char* err,
                          size_t cap) {
  return guarded(err, cap, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<size_t>(world_size);
    opts.waitWorkers = false;
    opts.timeout = milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new TagfixStore{c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp)};
  });
}

// A second connection to the same store (for a thread of its own, e.g. the heartbeat).
int tagfix_dist_store_clone(const TagfixStore* store, TagfixStore** out, char* err, size_t cap) {
  return guarded(err, cap, [&] { *out = new TagfixStore{store->store->clone()}; });
}

void tagfix_dist_store_free(TagfixStore* store) { delete store; }

int tagfix_dist_store_set(const TagfixStore* store, const char* key, const uint8_t* value,
                          size_t len, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    store->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
  });
}

// Waits up to `timeout_ms` for `key`, then returns its value in a malloc'ed buffer the caller
// releases with `tagfix_dist_bytes_free`.
int tagfix_dist_store_get(const TagfixStore* store, const char* key, int64_t timeout_ms,
                          uint8_t** out, size_t* out_len, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    store->store->wait({std::string(key)}, milliseconds(timeout_ms));
    auto value = store->store->get(std::string(key));
    auto* buf = static_cast<uint8_t*>(std::malloc(value.empty() ? 1 : value.size()));
    if (buf == nullptr) throw std::bad_alloc();
    if (!value.empty()) std::memcpy(buf, value.data(), value.size());
    *out = buf;
    *out_len = value.size();
  });
}

void tagfix_dist_bytes_free(uint8_t* bytes) { std::free(bytes); }

// Adds `delta` to the integer at `key` (created as 0) and returns the new value.
int tagfix_dist_store_add(const TagfixStore* store, const char* key, int64_t delta, int64_t* out,
                          char* err, size_t cap) {
  return guarded(err, cap, [&] { *out = store->store->add(std::string(key), delta); });
}

// Whether `key` exists, without waiting.
int tagfix_dist_store_check(const TagfixStore* store, const char* key, int* out, char* err,
                            size_t cap) {
  return guarded(err, cap, [&] { *out = store->store->check({std::string(key)}) ? 1 : 0; });
}

// A process group of `size` ranks over `store`: backend 0 is Gloo, 1 is NCCL (only in builds with
// TAGFIX_DIST_NCCL). Gloo binds `device_kind` 0: the host's default address, 1: the address of
// hostname `device_name`, 2: network interface `device_name`. Every collective of the group gives up
// after `timeout_ms`.
int tagfix_dist_group_new(const TagfixStore* store, int backend, int rank, int size,
                          int64_t timeout_ms, int device_kind, const char* device_name,
                          TagfixGroup** out, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("pg", store->store);
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(milliseconds(timeout_ms));
      std::string name(device_name);
      using PG = c10d::ProcessGroupGloo;
      opts->devices.push_back(device_kind == 1   ? PG::createDeviceForHostname(name)
                              : device_kind == 2 ? PG::createDeviceForInterface(name)
                                                 : PG::createDefaultDevice());
      *out = new TagfixGroup{
          c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, opts)};
      return;
    }
#ifdef TAGFIX_DIST_NCCL
    if (backend == 1) {
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = milliseconds(timeout_ms);
      *out = new TagfixGroup{
          c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, size, opts)};
      return;
    }
    throw std::invalid_argument("unknown process group backend " + std::to_string(backend));
#else
    throw std::invalid_argument(
        backend == 1 ? std::string("this tagfix was built without NCCL (build with TAGFIX_LINK_CUDA=1)")
                     : "unknown process group backend " + std::to_string(backend));
#endif
  });
}

void tagfix_dist_group_free(TagfixGroup* group) { delete group; }

// Whether this build has the NCCL process group.
int tagfix_dist_has_nccl() {
#ifdef TAGFIX_DIST_NCCL
  return 1;
#else
  return 0;
#endif
}

// Sums each of the `n` tensors in place across all ranks.
int tagfix_dist_allreduce_sum(TagfixGroup* group, at::Tensor* const* xs, size_t n,
                              int64_t timeout_ms, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = milliseconds(timeout_ms);
    each_then_wait(xs, n, timeout_ms,
                   [&](std::vector<at::Tensor>& one) { return group->backend->allreduce(one, opts); });
  });
}

// Overwrites each of the `n` tensors with rank `root`'s values.
int tagfix_dist_broadcast(TagfixGroup* group, at::Tensor* const* xs, size_t n, int root,
                          int64_t timeout_ms, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = milliseconds(timeout_ms);
    each_then_wait(xs, n, timeout_ms,
                   [&](std::vector<at::Tensor>& one) { return group->backend->broadcast(one, opts); });
  });
}

// Gathers `input` from every rank into `outputs[r]` (world-size tensors of input's shape and
// dtype, allocated by the caller).
int tagfix_dist_allgather(TagfixGroup* group, const at::Tensor* input, at::Tensor* const* outputs,
                          size_t world_size, int64_t timeout_ms, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    std::vector<std::vector<at::Tensor>> outs{list(outputs, world_size)};
    std::vector<at::Tensor> ins{*input};
    c10d::AllgatherOptions opts;
    opts.timeout = milliseconds(timeout_ms);
    wait(group->backend->allgather(outs, ins, opts), timeout_ms);
  });
}

// Waits until every rank has called it. `device_index` (>= 0) names this rank's CUDA device for NCCL.
int tagfix_dist_barrier(TagfixGroup* group, int device_index, int64_t timeout_ms, char* err,
                        size_t cap) {
  return guarded(err, cap, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = milliseconds(timeout_ms);
    if (device_index >= 0) opts.device_ids.push_back(device_index);
    wait(group->backend->barrier(opts), timeout_ms);
  });
}
}
