//! How many threads a run starts: image-decoding workers and libtorch's intra-op threads, each capped
//! at one per core and, where a launcher starts several ranks on one machine that are not bound to
//! their own cores, an equal share of them.

use super::TrainConfig;

impl TrainConfig {
    /// Image-decoding threads the loader starts: `workers`, 0 meaning this process's share of the
    /// cores ([`ranks_sharing_cores`]), and never more than one per core. Decoding is CPU-bound, so
    /// more threads only add memory and contention (`--workers 100000` once spent minutes starting
    /// threads).
    pub fn decode_workers(&self) -> usize {
        self.decode_workers_among(ranks_sharing_cores())
    }

    /// [`Self::decode_workers`] for a process that shares the cores with `sharing` ranks in all.
    pub fn decode_workers_among(&self, sharing: usize) -> usize {
        match self.workers {
            0 => core_share(sharing),
            n => cap_to_cores(n),
        }
    }

    /// libtorch intra-op threads to set: `threads` capped at one per core; 0 leaves libtorch's
    /// default (0), except where several ranks share the cores ([`ranks_sharing_cores`]) and
    /// `OMP_NUM_THREADS` does not say otherwise: then the process's share of the cores, since each
    /// rank's default would be every core.
    pub fn torch_threads(&self) -> usize {
        let omp = std::env::var_os("OMP_NUM_THREADS").is_some();
        self.torch_threads_among(ranks_sharing_cores(), omp)
    }

    /// [`Self::torch_threads`] for `sharing` ranks, `OMP_NUM_THREADS` set or not.
    pub fn torch_threads_among(&self, sharing: usize, omp_num_threads_set: bool) -> usize {
        match self.threads {
            0 if sharing > 1 && !omp_num_threads_set => core_share(sharing),
            n => torch_threads_for(n),
        }
    }
}

/// libtorch intra-op threads for a `--threads` value: capped at one per core (0: libtorch's default).
pub fn torch_threads_for(requested: usize) -> usize {
    match requested {
        0 => 0,
        n => cap_to_cores(n),
    }
}

/// The processes of this run that share this machine's cores: the launcher's ranks on this machine
/// (torchrun's and `--nproc-per-node`'s `LOCAL_WORLD_SIZE`, Slurm's `SLURM_NTASKS_PER_NODE`), unless
/// this process is bound to part of the machine. torchrun starts every rank on all the cores; Slurm
/// binds each task to its own (`--cpus-per-task`, task affinity) on most clusters but not all, and
/// `taskset` or `numactl` may bind a torchrun rank. A bound process's cores are its own, and
/// [`std::thread::available_parallelism`] already counts only them: then, as in a single-process
/// run, it is 1.
pub fn ranks_sharing_cores() -> usize {
    ranks_sharing_cores_in(
        crate::train::dist::Rendezvous::from_env()
            .ok()
            .flatten()
            .as_ref(),
        bound_to_part_of_machine(),
    )
}

/// This process's share of the cores where a launcher runs several ranks on this machine unbound
/// ([`ranks_sharing_cores`]), with how many share them; `None` where it has every core to itself.
/// For commands without a [`TrainConfig`] (`tagfix teacher` under torchrun).
pub fn shared_cores() -> Option<(usize, usize)> {
    let sharing = ranks_sharing_cores();
    (sharing > 1).then(|| (core_share(sharing), sharing))
}

/// The cores this process may keep busy: its [`shared_cores`] share, else every core it can run on.
pub fn process_cores() -> usize {
    shared_cores().map_or_else(|| cap_to_cores(0), |(share, _)| share)
}

/// [`ranks_sharing_cores`] for the launcher's description `rendezvous` (`None`: no launcher) and
/// whether this process is bound to part of the machine's cores.
fn ranks_sharing_cores_in(
    rendezvous: Option<&crate::train::dist::Rendezvous>,
    bound: bool,
) -> usize {
    match rendezvous {
        Some(r) if !bound => r.local_world_size.unwrap_or(1).max(1),
        _ => 1,
    }
}

/// Whether this process's CPU affinity leaves out some of the machine's online CPUs (Slurm's
/// task binding, `taskset`, `numactl`). Unknown (more than 1024 CPUs, no `sysconf`) counts as not
/// bound.
pub fn bound_to_part_of_machine() -> bool {
    // SAFETY: `cpu_set_t` is plain data; `sched_getaffinity` writes at most its size into it.
    let mine = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then(|| libc::CPU_COUNT(&set))
    };
    // SAFETY: a plain query.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    matches!(mine, Some(n) if n > 0 && i64::from(n) < online)
}

/// An equal share of the cores among `sharing` processes, at least one.
fn core_share(sharing: usize) -> usize {
    (cap_to_cores(0) / sharing.max(1)).max(1)
}

/// `n` threads (0: one per core), at most one per core.
fn cap_to_cores(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n == 0 {
        cores
    } else {
        n.min(cores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_and_threads_are_capped_at_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let c = TrainConfig {
            workers: 100_000,
            threads: 100_000,
            ..Default::default()
        };
        assert_eq!((c.decode_workers(), c.torch_threads()), (cores, cores));
        let c = TrainConfig {
            workers: 0,
            threads: 0,
            ..Default::default()
        };
        assert_eq!((c.decode_workers(), c.torch_threads()), (cores, 0));
        let c = TrainConfig {
            workers: 1,
            threads: 1,
            ..Default::default()
        };
        assert_eq!((c.decode_workers(), c.torch_threads()), (1, 1));
    }

    #[test]
    fn ranks_on_one_machine_share_its_cores_unless_told_otherwise() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let auto = TrainConfig::default();
        // 8 ranks (torchrun --nproc-per-node 8): an eighth of the cores each, at least one.
        assert_eq!(auto.decode_workers_among(8), (cores / 8).max(1));
        assert_eq!(auto.torch_threads_among(8, false), (cores / 8).max(1));
        // OMP_NUM_THREADS (torchrun sets 1) is libtorch's to read: left alone.
        assert_eq!(auto.torch_threads_among(8, true), 0);
        // One rank: every core, libtorch's default.
        assert_eq!(
            (
                auto.decode_workers_among(1),
                auto.torch_threads_among(1, false)
            ),
            (cores, 0)
        );
        // Chosen counts stay, capped at the cores.
        let chosen = TrainConfig {
            workers: 3,
            threads: 2,
            ..Default::default()
        };
        assert_eq!(chosen.decode_workers_among(8), 3.min(cores));
        assert_eq!(chosen.torch_threads_among(8, false), 2.min(cores));
        // Who shares: the launcher's ranks on this machine, unless bound to their own cores.
        use crate::train::dist::{Contract, Rendezvous};
        let launched = |contract, local| Rendezvous {
            contract,
            rank: 0,
            world_size: 16,
            local_rank: 0,
            local_world_size: local,
            master_addr: "node0".into(),
            master_port: 29500,
            agent_store: false,
            restart: 0,
        };
        for bound in [false, true] {
            assert_eq!(ranks_sharing_cores_in(None, bound), 1);
            for contract in [Contract::Torchrun, Contract::Slurm] {
                let r = launched(contract, Some(8));
                assert_eq!(
                    ranks_sharing_cores_in(Some(&r), bound),
                    if bound { 1 } else { 8 },
                    "{contract:?}, bound {bound}"
                );
                // Slurm states the tasks per machine only for a uniform layout.
                let unknown = launched(contract, None);
                assert_eq!(ranks_sharing_cores_in(Some(&unknown), bound), 1);
            }
        }
    }

    #[test]
    fn a_process_pinned_to_one_cpu_is_bound_to_part_of_a_larger_machine() {
        // SAFETY: as in `bound_to_part_of_machine`; only this test's own thread is pinned.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        if online < 2 {
            return; // one CPU: nothing to be bound to part of
        }
        std::thread::spawn(|| {
            // SAFETY: pins this test thread alone to CPU 0.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                    0
                );
            }
            assert!(bound_to_part_of_machine());
        })
        .join()
        .unwrap();
    }
}
