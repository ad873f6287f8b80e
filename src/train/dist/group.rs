//! A process group: the ranks of one run joined through a `c10d::TCPStore`, with the collectives
//! data-parallel training needs, each bounded by the group's timeout.
//!
//! Besides c10d's own key exchange, every rank keeps a few records in the store so that a failure
//! can name the rank behind it: a heartbeat counter (a thread adds to it twice a second), the number
//! of collectives it has entered with its training step, and a note when it stops with an error.
//! When a collective fails, [`ProcessGroup`] reads them: a stopped heartbeat without a note is a
//! dead rank, a note is a rank that failed, a rank still beating but behind is a hung one, and an
//! unreachable store means rank 0 (its host) is gone.

use super::ffi::{self, GlooDevice, Store};
use super::{DistBackend, DistError, Rendezvous, Suspect, DEFAULT_BUCKET_BYTES};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// The first bucket of the overlapped gradient exchange is small (DDP's
/// `_DEFAULT_FIRST_BUCKET_BYTES`), so that the network starts early in the backward pass.
const FIRST_BUCKET_BYTES: usize = 1024 * 1024;

const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a failing rank watches the heartbeats before calling one dead (several beats).
const HEARTBEAT_WATCH: Duration = Duration::from_millis(1600);
/// How long rank 0 keeps the store up for the other ranks' clean leave.
const LEAVE_WAIT: Duration = Duration::from_secs(10);
/// Timeout of the store reads made while diagnosing a failure.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A rendezvous store served at `127.0.0.1:port` for ranks that connect as clients, as torchrun's
/// elastic agent serves one (`TORCHELASTIC_USE_AGENT_STORE=True`) and keeps across the restarts of
/// its ranks: the stand-in the tests start in place of that agent. Stops when dropped.
pub struct AgentStore {
    _store: Store,
}

impl AgentStore {
    pub fn serve(port: u16, timeout: Duration) -> Result<AgentStore, DistError> {
        let store = Store::connect("127.0.0.1", port, true, 1, timeout, "agent/").map_err(|m| {
            DistError::Rendezvous {
                addr: "127.0.0.1".into(),
                port,
                rank: 0,
                world_size: 1,
                message: format!("cannot serve the rendezvous store: {m}"),
            }
        })?;
        Ok(AgentStore { _store: store })
    }
}

/// How to form a process group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub backend: DistBackend,
    /// Rendezvous and collective timeout (`--dist-timeout`).
    pub timeout: Duration,
    /// Flattened bucket size for [`ProcessGroup::all_reduce_sum_`] and friends.
    pub bucket_bytes: usize,
}

impl GroupOptions {
    pub fn new(backend: DistBackend, timeout: Duration) -> Self {
        GroupOptions {
            backend,
            timeout,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }
}

/// The heartbeat thread; stops (promptly) when dropped.
struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(store: Store, rank: usize) -> Heartbeat {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("tagfix-dist-heartbeat-{rank}"))
            .spawn(move || {
                let key = format!("hb/{rank}");
                while store.add(&key, 1).is_ok() {
                    if !matches!(
                        stopped.recv_timeout(HEARTBEAT),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    ) {
                        break;
                    }
                }
            })
            .ok();
        Heartbeat {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This rank's handle on the run's process group. Collectives take `&mut self`: one at a time, in
/// the same order on every rank.
pub struct ProcessGroup {
    rank: usize,
    world_size: usize,
    local_rank: usize,
    backend: DistBackend,
    device: Device,
    timeout: Duration,
    bucket_bytes: usize,
    agent_store: bool,
    // Field order is drop order: the overlap hooks (they hold the backend), the group, then the
    // heartbeat, then the store (rank 0 serves it).
    overlap: Option<GradOverlap>,
    group: Option<ffi::Group>,
    heartbeat: Option<Heartbeat>,
    store: Store,
    seq: u64,
    step: Option<u64>,
    failed: bool,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProcessGroup {{ rank: {}, world_size: {}, backend: {}, device: {:?} }}",
            self.rank, self.world_size, self.backend, self.device
        )
    }
}

/// A peer that dies closes its sockets, and the next write to one of them (the TCPStore client,
/// the heartbeat, Gloo's pairs) raises SIGPIPE. tagfix's `main` restores SIGPIPE's default action,
/// ending the process, so that `tagfix ... | head` ends quietly; a rank would then die without a
/// word instead of reporting which peer failed (PyTorch's ranks run under Python, which ignores
/// SIGPIPE). Ignored, the write fails with EPIPE and the collective names the peer.
pub fn ignore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: SIG_IGN is a valid disposition; changing it is process-wide and thread-safe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

impl ProcessGroup {
    /// Joins the run described by `rdzv`: connects to (rank 0: serves) the TCPStore at
    /// MASTER_ADDR:MASTER_PORT, waits up to the timeout for every rank, then creates the c10d
    /// process group. A CUDA (NCCL) rank uses `cuda:LOCAL_RANK`.
    /// SIGPIPE is ignored from here on ([`ignore_sigpipe`]).
    pub fn new(rdzv: &Rendezvous, opts: &GroupOptions) -> Result<ProcessGroup, DistError> {
        if opts.backend == DistBackend::Nccl && !ffi::has_nccl() {
            return Err(DistError::NoNccl);
        }
        ignore_sigpipe();
        let fail = |message: String| DistError::Rendezvous {
            addr: rdzv.master_addr.clone(),
            port: rdzv.master_port,
            rank: rdzv.rank,
            world_size: rdzv.world_size,
            message,
        };
        let serve = rdzv.rank == 0 && !rdzv.agent_store;
        let store = Store::connect(
            &rdzv.master_addr,
            rdzv.master_port,
            serve,
            rdzv.world_size,
            opts.timeout,
            &rdzv.store_prefix(),
        )
        .map_err(|m| {
            fail(if serve {
                format!("cannot serve the rendezvous store: {m}")
            } else {
                format!("cannot reach the rendezvous store (is rank 0 running?): {m}")
            })
        })?;
        join(&store, rdzv, opts.timeout).map_err(fail)?;
        let heartbeat = Heartbeat::start(store.try_clone().map_err(fail)?, rdzv.rank);
        let device = match opts.backend {
            DistBackend::Nccl => Device::Cuda(rdzv.local_rank),
            DistBackend::Gloo => Device::Cpu,
        };
        let group = ffi::Group::new(
            &store,
            opts.backend == DistBackend::Nccl,
            rdzv.rank,
            rdzv.world_size,
            opts.timeout,
            &gloo_device(&rdzv.master_addr),
        )
        .map_err(|m| fail(format!("creating the {} process group: {m}", opts.backend)))?;
        Ok(ProcessGroup {
            rank: rdzv.rank,
            world_size: rdzv.world_size,
            local_rank: rdzv.local_rank,
            backend: opts.backend,
            device,
            timeout: opts.timeout,
            bucket_bytes: opts.bucket_bytes.max(1),
            agent_store: rdzv.agent_store,
            overlap: None,
            group: Some(group),
            heartbeat: Some(heartbeat),
            store,
            seq: 0,
            step: None,
            failed: false,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0: the rank that writes the run's files.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn backend(&self) -> DistBackend {
        self.backend
    }

    /// Where the collectives' tensors live: the CPU for Gloo, `cuda:LOCAL_RANK` for NCCL.
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The training step this rank is at; errors (here and on the other ranks) name it.
    pub fn set_step(&mut self, step: u64) {
        self.step = Some(step);
    }

    /// Records that this rank is stopping because of `message` (an error outside the collectives,
    /// e.g. an unreadable image), so that the other ranks' failing collectives quote it; without it
    /// they report this rank as died.
    pub fn report_failure(&mut self, message: &str) {
        let _ = self
            .store
            .set(&format!("exit/{}", self.rank), message.as_bytes());
    }

    /// Whether this rank is the first of the group to ask for `what` (an atomic counter in the
    /// store: one rank gets `Some(true)`, every later one `Some(false)`); `None` when the store
    /// cannot be reached. Lets ranks that fail together agree, without a collective, which one acts.
    pub fn first_to(&mut self, what: &str) -> Option<bool> {
        self.store
            .add(&format!("first/{what}"), 1)
            .ok()
            .map(|n| n == 1)
    }

    /// Leaves `text` in the store under `what` for the ranks waiting in [`ProcessGroup::hear`].
    pub fn tell(&mut self, what: &str, text: &str) {
        let _ = self.store.set(&format!("told/{what}"), text.as_bytes());
    }

    /// What a rank [`ProcessGroup::tell`]s under `what`, waiting for it up to `timeout`; `None`
    /// when nothing came (or the store cannot be reached).
    pub fn hear(&mut self, what: &str, timeout: Duration) -> Option<String> {
        self.store
            .get(&format!("told/{what}"), timeout)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Sums the tensors in place across the ranks, in flattened buckets of at most
    /// `bucket_bytes` (one collective per bucket, all in flight together).
    pub fn all_reduce_sum_(&mut self, tensors: &[Tensor]) -> Result<(), DistError> {
        self.bucketed("all_reduce", tensors, None, |group, flats, timeout| {
            group.all_reduce_sum(flats, timeout)
        })
    }

    /// [`ProcessGroup::all_reduce_sum_`] with the f32 and f64 tensors sent, and summed, as `wire`
    /// (bf16: half the bytes of f32, as DDP's `bf16_compress_hook`), the sums written back in the
    /// tensors' own kind.
    pub fn all_reduce_sum_as_(&mut self, tensors: &[Tensor], wire: Kind) -> Result<(), DistError> {
        self.bucketed(
            "all_reduce",
            tensors,
            Some(wire),
            |group, flats, timeout| group.all_reduce_sum(flats, timeout),
        )
    }

    /// Averages the tensors in place across the ranks (sum, then divide by the world size), as
    /// DDP averages gradients.
    pub fn all_reduce_mean_(&mut self, tensors: &[Tensor]) -> Result<(), DistError> {
        self.all_reduce_sum_(tensors)?;
        let world = self.world_size as f64;
        tch::no_grad(|| {
            for t in tensors {
                let _ = t.shallow_clone().f_div_scalar_(world);
            }
        });
        Ok(())
    }

    /// Overwrites the tensors in place with rank `root`'s values (parameters at the start, so that
    /// every rank begins from the same weights).
    pub fn broadcast_(&mut self, tensors: &[Tensor], root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            return Err(DistError::BroadcastRoot {
                root,
                world_size: self.world_size,
            });
        }
        self.bucketed("broadcast", tensors, None, |group, flats, timeout| {
            group.broadcast(flats, root, timeout)
        })
    }

    /// The sums over the ranks of a few scalars (loss terms, squared norms), in f64.
    pub fn all_reduce_scalars(&mut self, values: &[f64]) -> Result<Vec<f64>, DistError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        let timeout = self.timeout;
        self.collective("all_reduce", |g| g.all_reduce_sum(&[&t], timeout))?;
        Vec::<f64>::try_from(t.to_device(Device::Cpu)).map_err(|e| DistError::ReadBack {
            what: "the reduced scalars",
            source: Box::new(e),
        })
    }

    /// Every rank's `t`, in rank order, on this group's device. The ranks' tensors must have the
    /// same kind and the same sizes after the first dimension; the first may differ (a sharded
    /// validation's rows).
    pub fn all_gather(&mut self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let size = t.size();
        let rows = size.first().copied().unwrap_or(1);
        let cols: i64 = size.get(1..).unwrap_or(&[]).iter().product();
        let row_counts: Vec<i64> = self
            .gather_same_shape(&Tensor::from_slice(&[rows]))?
            .iter()
            .map(|c| c.int64_value(&[0]))
            .collect();
        let max = row_counts.iter().copied().max().unwrap_or(0);
        let flat = t.to_device(self.device).reshape([rows, cols]);
        let padded = if rows == max {
            flat
        } else {
            let pad = Tensor::zeros([max - rows, cols], (t.kind(), self.device));
            Tensor::cat(&[flat, pad], 0)
        };
        let gathered = self.gather_same_shape(&padded)?;
        let trailing = size.get(1..).unwrap_or(&[]).to_vec();
        Ok(gathered
            .into_iter()
            .zip(row_counts)
            .map(|(g, n)| {
                let mut shape = if size.is_empty() { vec![] } else { vec![n] };
                shape.extend(&trailing);
                g.narrow(0, 0, n).reshape(shape.as_slice())
            })
            .collect())
    }

    /// Every rank's bytes, in rank order.
    pub fn all_gather_bytes(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let t = Tensor::from_slice(bytes);
        self.all_gather(&t)?
            .into_iter()
            .map(|g| {
                Vec::<u8>::try_from(g.to_device(Device::Cpu)).map_err(|e| DistError::ReadBack {
                    what: "gathered bytes",
                    source: Box::new(e),
                })
            })
            .collect()
    }

    /// Waits until every rank has arrived (e.g. while rank 0 writes a checkpoint).
    pub fn barrier(&mut self) -> Result<(), DistError> {
        let cuda = match self.device {
            Device::Cuda(i) => Some(i),
            _ => None,
        };
        let timeout = self.timeout;
        self.collective("barrier", |g| g.barrier(cuda, timeout))
    }

    /// From now on the gradients of `params` (leaves) are summed over the ranks while the backward
    /// pass runs, as DDP does: hooks start each bucket's all-reduce as soon as its gradients are
    /// complete, in a backward pass armed by [`Self::arm_grad_overlap`], and
    /// [`Self::finish_grad_overlap`] completes the exchange. Floating-point buckets travel as bf16
    /// when `bf16` (as [`Self::all_reduce_sum_as_`]). The buckets first follow the reverse of
    /// `params` and, after the first exchange, the order rank 0's gradients became ready in (DDP's
    /// bucket rebuild), so that the first bucket to fill is the first to go.
    pub fn overlap_grads(&mut self, params: &[Tensor], bf16: bool) -> Result<(), DistError> {
        let order: Vec<usize> = (0..params.len()).rev().collect();
        self.hook_overlap(
            params.iter().map(Tensor::shallow_clone).collect(),
            &order,
            bf16,
            false,
        )
    }

    /// Whether [`Self::overlap_grads`] is in force.
    pub fn has_grad_overlap(&self) -> bool {
        self.overlap.is_some()
    }

    /// The next backward pass (a step's last micro-batch) starts the gradient buckets as they fill.
    pub fn arm_grad_overlap(&mut self) {
        if let Some(o) = self.overlap.as_mut() {
            o.hooks.arm();
        }
    }

    /// After the armed backward pass: starts the buckets it did not (all of them when none was
    /// armed), waits for every bucket and leaves the sums in the gradients, which are views of the
    /// buckets from then on (DDP's `gradient_as_bucket_view`: no copy in or out, and no second copy
    /// of the gradients in memory during the exchange). A parameter without a
    /// gradient on this rank contributes zeros and keeps none (the ranks run the same graph, so it
    /// has none on any rank). Returns how much of the exchange overlapped the backward pass.
    pub fn finish_grad_overlap(&mut self) -> Result<OverlapStats, DistError> {
        let Some(mut o) = self.overlap.take() else {
            return Err(DistError::Overlap {
                rank: self.rank,
                message: "no overlapped gradient exchange was set up".into(),
            });
        };
        let timeout = self.timeout;
        let (overlapped, copied) = match self.collective("all_reduce", |_| o.hooks.finish(timeout))
        {
            Ok(n) => n,
            Err(e) => {
                // Its buckets may still wait on dead peers (see Drop).
                std::mem::forget(o);
                return Err(e);
            }
        };
        let stats = OverlapStats {
            buckets: o.buckets,
            overlapped,
            copied,
        };
        if o.rebuilt {
            self.overlap = Some(o);
        } else {
            self.rebuild_overlap(o)?;
        }
        Ok(stats)
    }

    /// DDP's bucket rebuild: the parameters in the order rank 0's gradients became ready (those
    /// that got none last), sent by rank 0 so that every rank forms the same buckets.
    fn rebuild_overlap(&mut self, o: GradOverlap) -> Result<(), DistError> {
        let n = o.params.len();
        let mut order = o.hooks.ready_order();
        let mut seen = vec![false; n];
        order.retain(|&i| i < n && !std::mem::replace(&mut seen[i], true));
        order.extend((0..n).rev().filter(|&i| !seen[i]));
        let wire: Vec<i64> = order.iter().map(|&i| i as i64).collect();
        let t = Tensor::from_slice(&wire);
        self.broadcast_(&[t.shallow_clone()], 0)?;
        let order: Vec<usize> = Vec::<i64>::try_from(&t)
            .map_err(|e| DistError::ReadBack {
                what: "rank 0's gradient order",
                source: Box::new(e),
            })?
            .into_iter()
            .map(|i| usize::try_from(i).unwrap_or(usize::MAX))
            .collect();
        let (params, bf16) = (o.params.iter().map(Tensor::shallow_clone).collect(), o.bf16);
        drop(o); // its hooks go before the new ones are set
        self.hook_overlap(params, &order, bf16, true)
    }

    /// Sets the hooks of the overlapped exchange, its buckets filled in `order`.
    fn hook_overlap(
        &mut self,
        params: Vec<Tensor>,
        order: &[usize],
        bf16: bool,
        rebuilt: bool,
    ) -> Result<(), DistError> {
        drop(self.overlap.take());
        let rank = self.rank;
        let fail = |message: String| DistError::Overlap { rank, message };
        let ordered: Vec<Tensor> = order
            .iter()
            .map(|&i| params.get(i).map(Tensor::shallow_clone))
            .collect::<Option<_>>()
            .ok_or_else(|| fail("the bucket order names a parameter that does not exist".into()))?;
        let first = FIRST_BUCKET_BYTES.min(self.bucket_bytes);
        let buckets: Vec<Vec<usize>> = buckets_with(&ordered, first, self.bucket_bytes)
            .into_iter()
            .map(|b| b.into_iter().map(|k| order[k]).collect())
            .collect();
        let Some(group) = self.group.as_mut().filter(|_| !self.failed) else {
            return Err(DistError::GroupFailed {
                op: "overlap",
                rank,
            });
        };
        let refs: Vec<&Tensor> = params.iter().collect();
        let hooks = ffi::Overlap::new(group, &refs, &buckets, bf16).map_err(fail)?;
        self.overlap = Some(GradOverlap {
            hooks,
            buckets: buckets.len(),
            params,
            bf16,
            rebuilt,
        });
        Ok(())
    }

    /// Gathers one tensor of identical shape from every rank.
    fn gather_same_shape(&mut self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let t = t.to_device(self.device).contiguous();
        let outs: Vec<Tensor> = (0..self.world_size).map(|_| t.empty_like()).collect();
        let refs: Vec<&Tensor> = outs.iter().collect();
        let timeout = self.timeout;
        self.collective("all_gather", |g| g.all_gather(&t, &refs, timeout))?;
        Ok(outs)
    }

    /// Runs `op` on flattened buckets of `tensors` (staged on this group's device, the f32 and f64
    /// ones as `wire` when given) and copies the results back into them.
    fn bucketed(
        &mut self,
        name: &'static str,
        tensors: &[Tensor],
        wire: Option<Kind>,
        op: impl FnOnce(&mut ffi::Group, &[&Tensor], Duration) -> Result<(), String>,
    ) -> Result<(), DistError> {
        if tensors.iter().any(|t| !t.defined()) {
            return Err(DistError::UndefinedTensor { op: name });
        }
        let buckets = buckets(tensors, self.bucket_bytes);
        let device = self.device;
        let flats: Vec<Tensor> = tch::no_grad(|| {
            buckets
                .iter()
                .map(|b| {
                    let parts: Vec<Tensor> = b.iter().map(|&i| tensors[i].reshape(-1)).collect();
                    let flat = Tensor::cat(&parts, 0).to_device(device);
                    match wire {
                        Some(kind) if matches!(flat.kind(), Kind::Float | Kind::Double) => {
                            flat.to_kind(kind)
                        }
                        _ => flat,
                    }
                })
                .collect()
        });
        let refs: Vec<&Tensor> = flats.iter().collect();
        let timeout = self.timeout;
        self.collective(name, |g| op(g, &refs, timeout))?;
        tch::no_grad(|| {
            for (b, flat) in buckets.iter().zip(&flats) {
                let mut offset = 0;
                for &i in b {
                    let t = &tensors[i];
                    let n = t.numel() as i64;
                    let part = flat.narrow(0, offset, n).view_as(t);
                    let _ = t.shallow_clone().f_copy_(&part);
                    offset += n;
                }
            }
        });
        Ok(())
    }

    /// Runs one collective (counted in the store), turning a failure into an error that names the
    /// rank to blame.
    fn collective<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut ffi::Group) -> Result<T, String>,
    ) -> Result<T, DistError> {
        let Some(group) = self.group.as_mut().filter(|_| !self.failed) else {
            return Err(DistError::GroupFailed {
                op,
                rank: self.rank,
            });
        };
        self.seq += 1;
        let progress = format!(
            "{} {}",
            self.seq,
            self.step.map_or(String::from("-"), |s| s.to_string())
        );
        let _ = self
            .store
            .set(&format!("seq/{}", self.rank), progress.as_bytes());
        match f(group) {
            Ok(v) => Ok(v),
            Err(message) => {
                self.failed = true;
                let suspect = self.suspect();
                self.report_failure(&format!("{op} failed: {message}"));
                Err(DistError::Collective {
                    op,
                    rank: self.rank,
                    step: self.step,
                    suspect,
                    message,
                })
            }
        }
    }

    /// The rank the store's records blame for a failed collective (see the module docs).
    fn suspect(&self) -> Option<Suspect> {
        let store = &self.store;
        let others: Vec<usize> = (0..self.world_size).filter(|&r| r != self.rank).collect();
        let beats = |store: &Store| -> Option<Vec<i64>> {
            others
                .iter()
                .map(|r| store.add(&format!("hb/{r}"), 0).ok())
                .collect()
        };
        let Some(before) = beats(store) else {
            return (!self.agent_store).then_some(Suspect::StoreHostGone);
        };
        std::thread::sleep(HEARTBEAT_WATCH);
        let after = beats(store)?;
        let read = |key: String| -> Option<String> {
            match store.check(&key) {
                Ok(true) => store
                    .get(&key, DIAGNOSIS_TIMEOUT)
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            }
        };
        let progress = |r: usize| -> (u64, Option<u64>) {
            let text = read(format!("seq/{r}")).unwrap_or_default();
            let mut it = text.split(' ');
            let seq = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            (seq, it.next().and_then(|s| s.parse().ok()))
        };
        let mut failed = None;
        for (i, &r) in others.iter().enumerate() {
            match read(format!("exit/{r}")) {
                Some(message) => {
                    failed.get_or_insert(Suspect::Failed { rank: r, message });
                }
                None if after[i] == before[i] => {
                    return Some(Suspect::Died {
                        rank: r,
                        last_step: progress(r).1,
                    })
                }
                None => {}
            }
        }
        if failed.is_some() {
            return failed;
        }
        others
            .iter()
            .map(|&r| (r, progress(r)))
            .filter(|(_, (seq, _))| *seq < self.seq)
            .min_by_key(|(_, (seq, _))| *seq)
            .map(|(rank, (at, last_step))| Suspect::Behind {
                rank,
                at,
                last_step,
            })
    }
}

/// The hooks of [`ProcessGroup::overlap_grads`] and what a rebuild needs.
struct GradOverlap {
    hooks: ffi::Overlap,
    params: Vec<Tensor>,
    buckets: usize,
    bf16: bool,
    /// Whether the buckets follow an observed gradient order yet.
    rebuilt: bool,
}

/// What one overlapped gradient exchange did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlapStats {
    /// Buckets (all-reduce calls) of the exchange.
    pub buckets: usize,
    /// How many of them started while the backward pass still had gradients to compute (the
    /// rest started with its last gradient or after it).
    pub overlapped: usize,
    /// Gradients copied into their bucket because they were not yet views of it (DDP's
    /// `gradient_as_bucket_view`): each parameter's once after its buckets are (re)built, then none,
    /// as the backward pass accumulates into the buckets.
    pub copied: usize,
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.failed {
            // A failed c10d group may still hold work waiting on dead peers; its destructor would
            // wait for that. The process is about to report the error and end: leave it.
            std::mem::forget(self.overlap.take());
            std::mem::forget(self.group.take());
            return;
        }
        // A clean leave: stop beating, say so, and keep rank 0's store up until every rank has
        // (bounded), so that no rank's last store operation meets a closed server.
        drop(self.heartbeat.take());
        let _ = self.store.add("done", 1);
        if self.rank == 0 && !self.agent_store {
            let deadline = Instant::now() + self.timeout.min(LEAVE_WAIT);
            while Instant::now() < deadline
                && self
                    .store
                    .add("done", 0)
                    .is_ok_and(|n| n < self.world_size as i64)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Registers this rank in the store and waits until all ranks have, naming the missing ones.
fn join(store: &Store, rdzv: &Rendezvous, timeout: Duration) -> Result<(), String> {
    let claims = store.add(&format!("claim/{}", rdzv.rank), 1)?;
    if claims > 1 {
        return Err(format!(
            "rank {} was claimed by {claims} processes (duplicate RANK / SLURM_PROCID?)",
            rdzv.rank
        ));
    }
    let me = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_default(),
        std::process::id()
    );
    store.set(&format!("join/{}", rdzv.rank), me.as_bytes())?;
    let deadline = Instant::now() + timeout;
    let mut missing: Vec<usize> = (0..rdzv.world_size).collect();
    loop {
        let mut still = Vec::new();
        for r in missing {
            if !store.check(&format!("join/{r}"))? {
                still.push(r);
            }
        }
        missing = still;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let list: Vec<String> = missing.iter().map(usize::to_string).collect();
            return Err(format!(
                "rank(s) {} did not join within {:?}",
                list.join(", "),
                timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Gloo's network device: `GLOO_SOCKET_IFNAME` as in PyTorch, loopback for a loopback master
/// (a single-node run), else the address this host's name resolves to.
fn gloo_device(master_addr: &str) -> GlooDevice {
    if let Some(iface) = std::env::var("GLOO_SOCKET_IFNAME")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return GlooDevice::Interface(iface);
    }
    let loopback = master_addr == "localhost"
        || master_addr
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        GlooDevice::Hostname("127.0.0.1".into())
    } else {
        GlooDevice::Default
    }
}

/// Groups tensor indices into buckets of one device and kind, each at most `cap` bytes (a larger
/// tensor is a bucket of its own), in order of first appearance, so every rank forms the same ones.
fn buckets(tensors: &[Tensor], cap: usize) -> Vec<Vec<usize>> {
    buckets_with(tensors, cap, cap)
}

/// [`buckets`] with the first bucket closed at `first_cap` bytes.
fn buckets_with(tensors: &[Tensor], first_cap: usize, cap: usize) -> Vec<Vec<usize>> {
    let mut open: Vec<((Device, Kind), Vec<usize>, usize)> = Vec::new();
    let mut done = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let key = (t.device(), t.kind());
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        let cap = if done.is_empty() { first_cap } else { cap };
        if let Some(pos) = open.iter().position(|(k, _, _)| *k == key) {
            if open[pos].2 + bytes > cap {
                done.push(open.remove(pos).1);
            }
        }
        match open.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, idx, size)) => {
                idx.push(i);
                *size += bytes;
            }
            None => open.push((key, vec![i], bytes)),
        }
    }
    done.extend(open.into_iter().map(|(_, idx, _)| idx));
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_kind_and_order() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let d = |n: i64| Tensor::zeros([n], (Kind::Double, Device::Cpu));
        // 4-byte floats, cap 40 bytes = 10 floats.
        let ts = vec![f(4), f(4), d(2), f(4), f(20), f(1)];
        let b = buckets(&ts, 40);
        assert_eq!(b, vec![vec![0, 1], vec![3], vec![4], vec![2], vec![5]]);
        let mut all: Vec<usize> = b.concat();
        all.sort();
        assert_eq!(all, (0..ts.len()).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_bucket_closes_at_its_own_cap() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        // First bucket at most 8 bytes (2 floats), the others 40 (10 floats).
        let ts = vec![f(2), f(2), f(4), f(4), f(4)];
        assert_eq!(
            buckets_with(&ts, 8, 40),
            vec![vec![0], vec![1, 2, 3], vec![4]]
        );
    }

    #[test]
    fn loopback_masters_bind_gloo_to_loopback() {
        if std::env::var_os("GLOO_SOCKET_IFNAME").is_some() {
            return;
        }
        for addr in ["127.0.0.1", "localhost", "::1"] {
            assert!(matches!(gloo_device(addr), GlooDevice::Hostname(h) if h == "127.0.0.1"));
        }
        assert!(matches!(gloo_device("10.1.2.3"), GlooDevice::Default));
    }
}
