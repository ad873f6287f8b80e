//! Safe handles over the C ABI of `src/train/dist.cpp` (c10d's TCPStore and process groups). Every
//! call returns the C++ exception's message as an `Err(String)`; callers wrap it in a
//! [`super::DistError`] that names the rank and the operation.

use crate::train::fused::call_message as call;
use std::ffi::{c_char, c_int, CString};
use std::time::Duration;
use tch::Tensor;
use torch_sys::C_tensor;

#[repr(C)]
struct RawStore {
    _private: [u8; 0],
}
#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}
#[repr(C)]
struct RawOverlap {
    _private: [u8; 0],
}

extern "C" {
    fn tagfix_dist_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut RawStore,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_store_clone(
        store: *const RawStore,
        out: *mut *mut RawStore,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_store_free(store: *mut RawStore);
    fn tagfix_dist_store_set(
        store: *const RawStore,
        key: *const c_char,
        value: *const u8,
        len: usize,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_store_get(
        store: *const RawStore,
        key: *const c_char,
        timeout_ms: i64,
        out: *mut *mut u8,
        out_len: *mut usize,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_bytes_free(bytes: *mut u8);
    fn tagfix_dist_store_add(
        store: *const RawStore,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_store_check(
        store: *const RawStore,
        key: *const c_char,
        out: *mut c_int,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_group_new(
        store: *const RawStore,
        backend: c_int,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        device_kind: c_int,
        device_name: *const c_char,
        out: *mut *mut RawGroup,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_group_free(group: *mut RawGroup);
    fn tagfix_dist_has_nccl() -> c_int;
    fn tagfix_dist_allreduce_sum(
        group: *mut RawGroup,
        xs: *const *const C_tensor,
        n: usize,
        timeout_ms: i64,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_broadcast(
        group: *mut RawGroup,
        xs: *const *const C_tensor,
        n: usize,
        root: c_int,
        timeout_ms: i64,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_allgather(
        group: *mut RawGroup,
        input: *const C_tensor,
        outputs: *const *const C_tensor,
        world_size: usize,
        timeout_ms: i64,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_overlap_new(
        group: *mut RawGroup,
        params: *const *const C_tensor,
        n: usize,
        order: *const i64,
        ends: *const i64,
        n_buckets: usize,
        wire: c_int,
        out: *mut *mut RawOverlap,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_overlap_free(overlap: *mut RawOverlap);
    fn tagfix_dist_overlap_arm(overlap: *mut RawOverlap);
    fn tagfix_dist_overlap_finish(
        overlap: *mut RawOverlap,
        timeout_ms: i64,
        overlapped: *mut usize,
        copied: *mut usize,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn tagfix_dist_overlap_ready_order(overlap: *mut RawOverlap, out: *mut i64, n: *mut usize);
    fn tagfix_dist_barrier(
        group: *mut RawGroup,
        device_index: c_int,
        timeout_ms: i64,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn handles(xs: &[&Tensor]) -> Vec<*const C_tensor> {
    xs.iter().map(|t| t.as_ptr()).collect()
}

/// Whether this build has c10d's NCCL process group.
pub fn has_nccl() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { tagfix_dist_has_nccl() == 1 }
}

/// A connection to a `c10d::TCPStore` (keys under a prefix of tagfix's own: see
/// [`super::Rendezvous::store_prefix`]).
pub struct Store(*mut RawStore);

// SAFETY: a TCPStore client serialises its operations with its own lock.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Connects to host:port, or serves it when `server` (waiting for nobody: the caller checks who
    /// joined), with every key under `prefix`. Gives up after `timeout`.
    pub fn connect(
        host: &str,
        port: u16,
        server: bool,
        world_size: usize,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Store, String> {
        let (host, prefix) = (cstring(host)?, cstring(prefix)?);
        let world = c_int::try_from(world_size).map_err(|_| "world size too large".to_string())?;
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C strings and an out-pointer to a local; the shim catches every exception.
        call(|e, c| unsafe {
            tagfix_dist_store_new(
                host.as_ptr(),
                port,
                c_int::from(server),
                world,
                millis(timeout),
                prefix.as_ptr(),
                &mut out,
                e,
                c,
            )
        })?;
        Ok(Store(out))
    }

    /// A second connection, for another thread.
    pub fn try_clone(&self) -> Result<Store, String> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `self.0` is live; out-pointer to a local.
        call(|e, c| unsafe { tagfix_dist_store_clone(self.0, &mut out, e, c) })?;
        Ok(Store(out))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = cstring(key)?;
        // SAFETY: `value` outlives the call, which copies it.
        call(|e, c| unsafe {
            tagfix_dist_store_set(self.0, key.as_ptr(), value.as_ptr(), value.len(), e, c)
        })
    }

    /// The value of `key`, waiting up to `timeout` for it to be set.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let key = cstring(key)?;
        let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: out-pointers to locals; on success `ptr` holds `len` bytes from malloc.
        call(|e, c| unsafe {
            tagfix_dist_store_get(
                self.0,
                key.as_ptr(),
                millis(timeout),
                &mut ptr,
                &mut len,
                e,
                c,
            )
        })?;
        // SAFETY: see above; the buffer is copied, then released by the shim's free.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len).to_vec() };
        unsafe { tagfix_dist_bytes_free(ptr) };
        Ok(bytes)
    }

    /// Adds `delta` to the counter at `key` and returns its new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let key = cstring(key)?;
        let mut out = 0;
        // SAFETY: out-pointer to a local.
        call(|e, c| unsafe { tagfix_dist_store_add(self.0, key.as_ptr(), delta, &mut out, e, c) })?;
        Ok(out)
    }

    /// Whether `key` is set, without waiting.
    pub fn check(&self, key: &str) -> Result<bool, String> {
        let key = cstring(key)?;
        let mut out = 0;
        // SAFETY: out-pointer to a local.
        call(|e, c| unsafe { tagfix_dist_store_check(self.0, key.as_ptr(), &mut out, e, c) })?;
        Ok(out == 1)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by the shim, freed once.
        unsafe { tagfix_dist_store_free(self.0) }
    }
}

/// Which network device Gloo binds (`GLOO_SOCKET_IFNAME` names an interface, as in PyTorch).
pub enum GlooDevice {
    /// The address this host's name resolves to (falls back to loopback).
    Default,
    Hostname(String),
    Interface(String),
}

/// A c10d process group (a `c10d::Backend`: Gloo or NCCL).
pub struct Group(*mut RawGroup);

// SAFETY: c10d backends are used from any thread (PyTorch's own DDP does); tagfix uses one at a time.
unsafe impl Send for Group {}

impl Group {
    /// Creates the group (a collective in itself: every rank must call it).
    pub fn new(
        store: &Store,
        nccl: bool,
        rank: usize,
        size: usize,
        timeout: Duration,
        device: &GlooDevice,
    ) -> Result<Group, String> {
        let (kind, name) = match device {
            GlooDevice::Default => (0, ""),
            GlooDevice::Hostname(h) => (1, h.as_str()),
            GlooDevice::Interface(i) => (2, i.as_str()),
        };
        let name = cstring(name)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: the store is live for the call; out-pointer to a local.
        call(|e, c| unsafe {
            tagfix_dist_group_new(
                store.0,
                c_int::from(nccl),
                rank as c_int,
                size as c_int,
                millis(timeout),
                kind,
                name.as_ptr(),
                &mut out,
                e,
                c,
            )
        })?;
        Ok(Group(out))
    }

    /// Sums each tensor in place across the ranks.
    pub fn all_reduce_sum(&mut self, xs: &[&Tensor], timeout: Duration) -> Result<(), String> {
        let h = handles(xs);
        // SAFETY: the tensors outlive the blocking call.
        call(|e, c| unsafe {
            tagfix_dist_allreduce_sum(self.0, h.as_ptr(), h.len(), millis(timeout), e, c)
        })
    }

    /// Overwrites each tensor with rank `root`'s.
    pub fn broadcast(
        &mut self,
        xs: &[&Tensor],
        root: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let h = handles(xs);
        // SAFETY: as above.
        call(|e, c| unsafe {
            tagfix_dist_broadcast(
                self.0,
                h.as_ptr(),
                h.len(),
                root as c_int,
                millis(timeout),
                e,
                c,
            )
        })
    }

    /// Gathers `input` from every rank into `outputs` (one tensor per rank, input's shape and kind).
    pub fn all_gather(
        &mut self,
        input: &Tensor,
        outputs: &[&Tensor],
        timeout: Duration,
    ) -> Result<(), String> {
        let h = handles(outputs);
        // SAFETY: as above.
        call(|e, c| unsafe {
            tagfix_dist_allgather(
                self.0,
                input.as_ptr(),
                h.as_ptr(),
                h.len(),
                millis(timeout),
                e,
                c,
            )
        })
    }

    /// Waits for every rank; `cuda_index` names this rank's device for NCCL.
    pub fn barrier(&mut self, cuda_index: Option<usize>, timeout: Duration) -> Result<(), String> {
        let device = cuda_index.map_or(-1, |i| i as c_int);
        // SAFETY: no pointers but the group's.
        call(|e, c| unsafe { tagfix_dist_barrier(self.0, device, millis(timeout), e, c) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by the shim, freed once.
        unsafe { tagfix_dist_group_free(self.0) }
    }
}

/// The hooks that start each gradient bucket's all-reduce during the backward pass (DDP's Reducer;
/// see `Overlap` in `src/train/dist.cpp`). Holds the parameters and a reference to the group's
/// backend; dropping it removes the hooks.
pub struct Overlap {
    raw: *mut RawOverlap,
    params: usize,
}

// SAFETY: the shim guards the overlap's state with a mutex; tagfix drives it from one thread.
unsafe impl Send for Overlap {}

impl Overlap {
    /// Hooks `params` (leaves), bucketed as `buckets` (parameter indices, a permutation of all of
    /// them, started in this order); floating-point buckets travel as bf16 when `bf16`.
    pub fn new(
        group: &mut Group,
        params: &[&Tensor],
        buckets: &[Vec<usize>],
        bf16: bool,
    ) -> Result<Overlap, String> {
        let h = handles(params);
        let order: Vec<i64> = buckets.iter().flatten().map(|&i| i as i64).collect();
        let ends: Vec<i64> = buckets
            .iter()
            .scan(0i64, |end, b| {
                *end += b.len() as i64;
                Some(*end)
            })
            .collect();
        let mut out = std::ptr::null_mut();
        // SAFETY: the slices outlive the call, which copies them (the tensors by reference count);
        // the shim checks that `order` and `ends` describe a partition of the parameters.
        call(|e, c| unsafe {
            tagfix_dist_overlap_new(
                group.0,
                h.as_ptr(),
                h.len(),
                order.as_ptr(),
                ends.as_ptr(),
                ends.len(),
                c_int::from(bf16),
                &mut out,
                e,
                c,
            )
        })?;
        Ok(Overlap {
            raw: out,
            params: params.len(),
        })
    }

    /// The next backward pass starts the buckets as their gradients complete.
    pub fn arm(&mut self) {
        // SAFETY: `raw` is live.
        unsafe { tagfix_dist_overlap_arm(self.raw) }
    }

    /// Starts the buckets the backward pass did not, waits for every bucket and leaves the sums in
    /// the gradients; returns how many buckets started while the backward pass still had
    /// gradients to compute, and how many gradients were copied into their bucket (not yet views
    /// of it).
    pub fn finish(&mut self, timeout: Duration) -> Result<(usize, usize), String> {
        let (mut overlapped, mut copied) = (0usize, 0usize);
        // SAFETY: `raw` is live; out-pointers to locals.
        call(|e, c| unsafe {
            tagfix_dist_overlap_finish(
                self.raw,
                millis(timeout),
                &mut overlapped,
                &mut copied,
                e,
                c,
            )
        })?;
        Ok((overlapped, copied))
    }

    /// The parameters in the order their gradients became ready in the last armed backward pass
    /// (those that got none are missing).
    pub fn ready_order(&self) -> Vec<usize> {
        let mut out = vec![0i64; self.params];
        let mut n = 0usize;
        // SAFETY: `out` has room for every parameter, the most the shim writes.
        unsafe { tagfix_dist_overlap_ready_order(self.raw, out.as_mut_ptr(), &mut n) };
        out.truncate(n);
        out.into_iter().map(|i| i as usize).collect()
    }
}

impl Drop for Overlap {
    fn drop(&mut self) {
        // SAFETY: created by the shim, freed once.
        unsafe { tagfix_dist_overlap_free(self.raw) }
    }
}
