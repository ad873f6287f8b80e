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

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
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

namespace {
// The gradient all-reduce overlapped with the backward pass, as DDP's Reducer does it
// (torch/csrc/distributed/c10d/reducer.cpp): a hook after each parameter's gradient accumulation
// marks it ready; when every parameter of a bucket is ready, the bucket is flattened (cast to the
// wire type) and its all-reduce started, while the backward pass goes on. Buckets start strictly in
// their index order, so every rank issues the same collectives in the same order whatever order its
// gradients arrive in. Hooks do nothing unless armed: only the last micro-batch's backward of a
// step is overlapped (the earlier ones accumulate locally, as under DDP's `no_sync`).
//
// As under DDP's `gradient_as_bucket_view`, each bucket is one persistent buffer and the gradients
// of its (contiguous) parameters become views of it: the backward pass accumulates straight into
// the buffer, the all-reduce sums it in place, and neither a flattened copy of the bucket nor a
// copy back into the gradients is made (nor held in memory during the exchange).
struct Overlap {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::vector<at::Tensor> params;
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;
  std::optional<at::ScalarType> wire;
  std::vector<char> in_place;     // per bucket: its gradients become views of one buffer
  std::vector<at::Tensor> bufs;   // per bucket: that buffer, once the bucket has started
  std::vector<at::Tensor> views;  // per parameter: its part of its bucket's buffer, shaped as it

  std::mutex mu;
  bool armed = false;
  std::vector<size_t> pending;  // per bucket: parameters not yet ready
  std::vector<char> ready;
  size_t next = 0;               // the next bucket to start
  size_t n_ready = 0;
  size_t copied = 0;             // gradients copied into their bucket (not yet its views)
  std::vector<size_t> ready_at_start;  // per bucket started by a hook: gradients ready by then
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::vector<int64_t> order;    // parameters in the order they became ready (last armed backward)
  std::string error;

  // Back to "nothing ready, nothing started" (caller holds `mu`).
  void reset() {
    armed = false;
    next = 0;
    n_ready = 0;
    copied = 0;
    ready.assign(params.size(), 0);
    ready_at_start.assign(buckets.size(), SIZE_MAX);
    for (size_t b = 0; b < buckets.size(); ++b) pending[b] = buckets[b].size();
    flats.assign(buckets.size(), at::Tensor());
    works.assign(buckets.size(), nullptr);
  }

  // Which buckets get a buffer: those of a single dtype and device (all of them, as bucketed by
  // tagfix); the buffers themselves are allocated when the bucket first starts, so that the
  // gradients they replace are freed bucket by bucket rather than all held twice.
  void plan_buffers() {
    bufs.assign(buckets.size(), at::Tensor());
    views.assign(params.size(), at::Tensor());
    in_place.assign(buckets.size(), 0);
    for (size_t b = 0; b < buckets.size(); ++b) {
      if (buckets[b].empty()) continue;
      const at::Tensor& first = params[buckets[b].front()];
      in_place[b] = std::all_of(buckets[b].begin(), buckets[b].end(), [&](size_t i) {
        return params[i].scalar_type() == first.scalar_type() && params[i].device() == first.device();
      });
    }
  }

  // Bucket b's buffer and each of its parameters' view of it (made with `set_`, so that the view is
  // not an autograd view and can be zeroed and detached in place).
  void make_buffer(size_t b) {
    const at::Tensor& first = params[buckets[b].front()];
    int64_t total = 0;
    for (size_t i : buckets[b]) total += params[i].numel();
    bufs[b] = at::empty({total}, at::TensorOptions().dtype(first.scalar_type()).device(first.device()));
    int64_t offset = 0;
    for (size_t i : buckets[b]) {
      const auto sizes = params[i].sizes();
      views[i] = at::empty({0}, bufs[b].options()).set_(bufs[b].storage(), offset, sizes, c10::contiguous_strides(sizes));
      offset += params[i].numel();
    }
  }

  // Whether parameter i's gradient `g` is its view of the bucket buffer.
  bool bound(size_t i, const at::Tensor& g) const {
    return views[i].defined() && g.data_ptr() == views[i].data_ptr() && g.sizes() == views[i].sizes() &&
           g.strides() == views[i].strides();
  }

  // Bucket `b`'s gradients, flat: its buffer, into which a gradient not yet a view of it (the first
  // step, a rebuilt bucket) is copied and, for a contiguous parameter, replaced by the view (as DDP's
  // Reducer does in its hook); zeros for a parameter without one, which keeps none. A bucket of mixed
  // kinds is concatenated instead.
  at::Tensor gather(size_t b) {
    if (!in_place[b]) {
      std::vector<at::Tensor> parts;
      parts.reserve(buckets[b].size());
      for (size_t i : buckets[b]) {
        const at::Tensor g = params[i].grad();
        parts.push_back(g.defined() ? g.reshape(-1) : at::zeros({params[i].numel()}, params[i].options()));
      }
      return at::cat(parts, 0);
    }
    if (!bufs[b].defined()) make_buffer(b);
    for (size_t i : buckets[b]) {
      const at::Tensor g = params[i].grad();
      if (!g.defined()) {
        views[i].zero_();
      } else if (!bound(i, g)) {
        views[i].copy_(g);
        ++copied;
        if (params[i].is_contiguous()) params[i].mutable_grad() = views[i];
      }
    }
    return bufs[b];
  }

  // Flattens bucket `b`'s gradients and starts its all-reduce (cast to the wire type first, if any).
  void start(size_t b) {
    at::NoGradGuard no_grad;
    at::Tensor flat = gather(b);
    if (wire && at::isFloatingType(flat.scalar_type())) flat = flat.to(*wire);
    std::vector<at::Tensor> one{flat};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    works[b] = backend->allreduce(one, opts);
    flats[b] = flat;
  }

  // After bucket `b`'s all-reduce: the sums into the gradients. A view already holds them unless
  // they travelled in another type; other gradients (mixed buckets, non-contiguous parameters) are
  // copied from the summed values.
  void scatter(size_t b) {
    const bool viewed = in_place[b];
    if (viewed && !flats[b].is_same(bufs[b])) bufs[b].copy_(flats[b]);
    int64_t offset = 0;
    for (size_t i : buckets[b]) {
      const int64_t len = params[i].numel();
      at::Tensor g = params[i].grad();
      if (g.defined() && !bound(i, g))
        g.copy_(viewed ? views[i] : flats[b].narrow(0, offset, len).view(g.sizes()));
      offset += len;
    }
  }

  // The hook's body (on the autograd engine's thread): never throws into the engine.
  void mark_ready(size_t i) noexcept {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed) return;
    try {
      if (ready[i]) throw std::runtime_error("a parameter's gradient was accumulated twice in one backward pass");
      ready[i] = 1;
      ++n_ready;
      order.push_back(static_cast<int64_t>(i));
      pending[bucket_of[i]] -= 1;
      while (next < buckets.size() && pending[next] == 0) {
        ready_at_start[next] = n_ready;
        start(next++);
      }
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
      armed = false;
    } catch (const std::exception& e) {
      error = e.what();
      armed = false;
    }
  }
};

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  std::weak_ptr<Overlap> overlap;
  size_t index;
  ReadyHook(std::weak_ptr<Overlap> o, size_t i) : overlap(std::move(o)), index(i) {}
  void operator()(const torch::autograd::Variable&) override {
    if (auto o = overlap.lock()) o->mark_ready(index);
  }
};
}  // namespace

struct TagfixOverlap {
  std::shared_ptr<Overlap> overlap;
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

// Registers the overlap hooks on the `n` parameters (leaves), grouped into buckets: `order` lists
// parameter indices bucket after bucket, `ends[b]` is where bucket b ends in `order`. `wire`: 1 sends
// floating-point buckets as bf16, 0 as they are. Replaces any post-accumulate hook of theirs.
int tagfix_dist_overlap_new(TagfixGroup* group, at::Tensor* const* params, size_t n,
                            const int64_t* order, const int64_t* ends, size_t n_buckets, int wire,
                            TagfixOverlap** out, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    auto o = std::make_shared<Overlap>();
    o->backend = group->backend;
    o->params = list(params, n);
    o->bucket_of.assign(n, SIZE_MAX);
    int64_t begin = 0;
    for (size_t b = 0; b < n_buckets; ++b) {
      if (ends[b] < begin || ends[b] > static_cast<int64_t>(n)) throw std::invalid_argument("bucket ends out of order");
      std::vector<size_t> bucket;
      for (int64_t k = begin; k < ends[b]; ++k) {
        if (order[k] < 0 || order[k] >= static_cast<int64_t>(n) || o->bucket_of[order[k]] != SIZE_MAX)
          throw std::invalid_argument("bucket order is not a permutation of the parameters");
        o->bucket_of[order[k]] = b;
        bucket.push_back(static_cast<size_t>(order[k]));
      }
      o->buckets.push_back(std::move(bucket));
      begin = ends[b];
    }
    if (begin != static_cast<int64_t>(n)) throw std::invalid_argument("the buckets do not hold every parameter");
    if (wire == 1) o->wire = at::kBFloat16;
    o->pending.assign(n_buckets, 0);
    o->plan_buffers();
    o->reset();
    for (size_t i = 0; i < n; ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(o->params[i], std::make_unique<ReadyHook>(o, i));
    *out = new TagfixOverlap{o};
  });
}

// Removes the hooks (those still this overlap's) and frees it.
void tagfix_dist_overlap_free(TagfixOverlap* o) {
  if (o == nullptr) return;
  for (auto& p : o->overlap->params) {
    auto& hook = torch::autograd::impl::post_acc_grad_hooks(p);
    auto* ours = dynamic_cast<ReadyHook*>(hook.get());
    if (ours != nullptr && ours->overlap.lock() == o->overlap) hook.reset();
  }
  delete o;
}

// The next backward pass starts each bucket's all-reduce as soon as its gradients are complete.
void tagfix_dist_overlap_arm(TagfixOverlap* o) {
  std::lock_guard<std::mutex> lock(o->overlap->mu);
  o->overlap->reset();
  o->overlap->order.clear();
  o->overlap->armed = true;
}

// After the backward pass: starts the buckets not yet started (in order), waits for all, and leaves
// the sums in the gradients (views of the buckets; a parameter without a gradient keeps none).
// `overlapped`: how many buckets started while the backward pass still had gradients to compute
// (before its last parameter's gradient was ready); `copied`: how many gradients were copied into
// their bucket because they were not yet views of it.
int tagfix_dist_overlap_finish(TagfixOverlap* handle, int64_t timeout_ms, size_t* overlapped,
                               size_t* copied, char* err, size_t cap) {
  return guarded(err, cap, [&] {
    Overlap& o = *handle->overlap;
    std::lock_guard<std::mutex> lock(o.mu);
    o.armed = false;
    if (!o.error.empty()) {
      std::string e = o.error;
      o.error.clear();
      throw std::runtime_error(e);
    }
    *overlapped = static_cast<size_t>(std::count_if(o.ready_at_start.begin(), o.ready_at_start.end(),
                                                    [&](size_t r) { return r < o.n_ready; }));
    while (o.next < o.buckets.size()) o.start(o.next++);
    at::NoGradGuard no_grad;
    for (size_t b = 0; b < o.buckets.size(); ++b) {
      wait(o.works[b], timeout_ms);
      o.scatter(b);
    }
    *copied = o.copied;
    o.reset();
  });
}

// The parameters in the order their gradients became ready in the last armed backward pass
// (`*n` of them, at most the parameter count; `out` holds room for all).
void tagfix_dist_overlap_ready_order(TagfixOverlap* handle, int64_t* out, size_t* n) {
  Overlap& o = *handle->overlap;
  std::lock_guard<std::mutex> lock(o.mu);
  size_t k = std::min(o.order.size(), o.params.size());
  for (size_t i = 0; i < k; ++i) out[i] = o.order[i];
  *n = k;
}
}
