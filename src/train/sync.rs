//! Device-to-host reads of the training step, counted. On CUDA every read waits for the queued
//! kernels to finish (a host sync), so the step keeps its values on the device and reads them once;
//! every read the step makes goes through [`read_f64s`], which counts it. The counters are always on
//! (an atomic add per read): [`host_reads`] for the process, [`thread_host_reads`] for the calling
//! thread (what a test or benchmark running next to other threads compares).

use super::error::TrainError;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

static HOST_READS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_READS: Cell<u64> = const { Cell::new(0) };
}

/// Device-to-host reads made by the training step in this process so far.
pub fn host_reads() -> u64 {
    HOST_READS.load(Ordering::Relaxed)
}

/// Device-to-host reads made by the training step on the calling thread so far.
pub fn thread_host_reads() -> u64 {
    THREAD_READS.with(Cell::get)
}

/// Copies `t` (any shape, any floating or integer kind) to the host as f64 values, flattened, and
/// counts the read. `what` names the values in an error.
pub fn read_f64s(t: &Tensor, what: &'static str) -> Result<Vec<f64>, TrainError> {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
    THREAD_READS.with(|c| c.set(c.get() + 1));
    let flat = t.detach().reshape([-1]).to_kind(Kind::Double);
    Vec::<f64>::try_from(flat.to_device(Device::Cpu)).map_err(|e| TrainError::HostRead {
        what,
        source: Box::new(e),
    })
}

/// [`read_f64s`] of a single value.
pub fn read_f64(t: &Tensor, what: &'static str) -> Result<f64, TrainError> {
    Ok(read_f64s(t, what)?.first().copied().unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_per_process_and_per_thread() {
        let (p0, t0) = (host_reads(), thread_host_reads());
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.0]).view([3, 1]);
        assert_eq!(read_f64s(&t, "test values").unwrap(), vec![1.5, -2.0, 3.0]);
        assert_eq!(read_f64(&Tensor::from(7i64), "a test value").unwrap(), 7.0);
        assert_eq!(thread_host_reads() - t0, 2);
        assert!(host_reads() - p0 >= 2, "other threads may read too");
        let other = std::thread::spawn(thread_host_reads).join().unwrap();
        assert_eq!(other, 0, "a fresh thread has made no read");
    }
}
