//! `--micro-batch-size auto`: the largest micro-batch whose forward and backward pass fit the
//! device, chosen once when training starts.
//!
//! On CUDA the trainer runs forward + backward at two small micro-batch sizes and reads the peak
//! bytes the caching allocator handed out in each (through the shim `src/train/device.cpp`). The
//! memory above what was allocated before (parameters, optimizer state) grows linearly with the
//! micro-batch (activations) on top of a constant (gradients, workspaces), so two measurements fix
//! the line; [`choose`] takes the largest divisor of the per-rank batch whose predicted peak stays
//! within 90 % of the memory still available. On the CPU there is no device limit: the whole
//! per-rank batch.

use crate::error::Result;
use crate::train::error::TrainError;
use std::os::raw::{c_char, c_int};
use tch::Device;

/// Share of the available device memory the predicted peak may take: the rest covers what the
/// measurement does not see (the optimizer step's temporaries, fragmentation, other processes).
pub const MEMORY_SHARE: f64 = 0.9;

/// One measurement: the peak bytes a forward and backward pass of `micro` images allocated above
/// the memory held before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub micro: usize,
    pub bytes: u64,
}

/// The size chosen and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub micro: usize,
    /// Predicted peak bytes above the baseline at `micro` (`None`: no measurement, the CPU).
    pub predicted: Option<u64>,
    /// Bytes the prediction had to stay within.
    pub budget: Option<u64>,
}

impl Choice {
    /// The log line: the size and where it came from.
    pub fn describe(&self, per_rank: usize) -> String {
        const GIB: f64 = (1u64 << 30) as f64;
        match (self.predicted, self.budget) {
            (Some(p), Some(b)) => format!(
                "micro_batch_size auto → {} of {per_rank} images per rank: forward + backward predicted at {:.2} GiB \
                 of {:.2} GiB available ({:.0} % of the free device memory)",
                self.micro,
                p as f64 / GIB,
                b as f64 / GIB,
                MEMORY_SHARE * 100.0
            ),
            _ => format!(
                "micro_batch_size auto → {} (the whole per-rank batch: no device memory limit on the CPU)",
                self.micro
            ),
        }
    }
}

/// The two micro-batch sizes measured for a per-rank batch: 2 and 4 images (fewer when the batch
/// is smaller), small enough to fit wherever a model fits at all.
pub fn probe_sizes(per_rank: usize) -> (usize, usize) {
    let hi = per_rank.clamp(1, 4);
    ((hi / 2).max(1), hi)
}

/// The largest divisor of `per_rank` whose peak, extrapolated linearly from the two probes, stays
/// within `budget` bytes. A slope the probes cannot give (equal sizes, or a smaller peak at the
/// larger size) is replaced by the larger probe's bytes per image, which over-estimates.
pub fn choose(per_rank: usize, probes: [Probe; 2], budget: u64) -> Result<Choice> {
    let [a, b] = if probes[0].micro <= probes[1].micro {
        probes
    } else {
        [probes[1], probes[0]]
    };
    let per_image = if b.micro > a.micro && b.bytes >= a.bytes {
        (b.bytes - a.bytes) as f64 / (b.micro - a.micro) as f64
    } else {
        b.bytes as f64 / b.micro.max(1) as f64
    };
    let fixed = (b.bytes as f64 - per_image * b.micro as f64).max(0.0);
    let predict = |m: usize| (fixed + per_image * m as f64).ceil() as u64;
    let fits = (1..=per_rank)
        .rev()
        .filter(|m| per_rank % m == 0)
        .find(|&m| predict(m) <= budget);
    match fits {
        Some(micro) => Ok(Choice {
            micro,
            predicted: Some(predict(micro)),
            budget: Some(budget),
        }),
        None => Err(TrainError::MicroBatchTooLarge {
            need_gib: predict(1) as f64 / (1u64 << 30) as f64,
            budget_gib: budget as f64 / (1u64 << 30) as f64,
        }
        .into()),
    }
}

/// The CUDA caching allocator's counters for one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub allocated: u64,
    /// Peak allocated since the previous [`device_memory`] call with `reset_peak`.
    pub peak: u64,
    pub reserved: u64,
    /// The device's free and total memory (`cudaMemGetInfo`).
    pub free: u64,
    pub total: u64,
}

impl DeviceMemory {
    /// Bytes a further allocation can still get: the device's free memory and what the allocator
    /// holds in reserve, less `baseline`'s share of it.
    pub fn available_above(&self, baseline: u64) -> u64 {
        (self.free + self.reserved).saturating_sub(baseline)
    }
}

extern "C" {
    fn tagfix_cuda_memory(
        device: c_int,
        reset_peak: c_int,
        stats: *mut i64,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
}

/// Reads the counters of CUDA device `index`; `reset_peak` starts a new peak after reading. Fails
/// on a build without CUDA memory statistics (`TAGFIX_LINK_CUDA=1` builds have them).
pub fn device_memory(index: usize, reset_peak: bool) -> Result<DeviceMemory> {
    let mut s = [0i64; 5];
    // SAFETY: `s` has the five slots the shim writes.
    crate::train::fused::call("CUDA memory statistics", |err, cap| unsafe {
        tagfix_cuda_memory(
            index as c_int,
            c_int::from(reset_peak),
            s.as_mut_ptr(),
            err,
            cap,
        )
    })?;
    let u = |v: i64| v.max(0) as u64;
    Ok(DeviceMemory {
        allocated: u(s[0]),
        peak: u(s[1]),
        reserved: u(s[2]),
        free: u(s[3]),
        total: u(s[4]),
    })
}

/// Chooses the micro-batch for `per_rank` images on `device`. `pass(m)` runs one forward and
/// backward pass of `m` images exactly as a training micro-batch does (its gradients are zeroed by
/// the next step); it is called only on CUDA: once to warm up (cuBLAS workspaces and the like are
/// allocated on the first pass and would otherwise count as activations), then at the two
/// [`probe_sizes`].
pub fn resolve(
    per_rank: usize,
    device: Device,
    mut pass: impl FnMut(usize) -> Result<()>,
) -> Result<Choice> {
    let Device::Cuda(index) = device else {
        return Ok(Choice {
            micro: per_rank,
            predicted: None,
            budget: None,
        });
    };
    let (m1, m2) = probe_sizes(per_rank);
    pass(m1)?;
    let baseline = device_memory(index, true)?.allocated;
    let mut measure = |m: usize| -> Result<Probe> {
        pass(m)?;
        let after = device_memory(index, true)?;
        Ok(Probe {
            micro: m,
            bytes: after.peak.saturating_sub(baseline),
        })
    };
    let probes = [measure(m1)?, measure(m2)?];
    let now = device_memory(index, false)?;
    let budget = (now.available_above(baseline) as f64 * MEMORY_SHARE) as u64;
    choose(per_rank, probes, budget)
}

/// What one trial pass of [`confirm`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Trial {
    Fits,
    /// libtorch failed in the pass: its message. Out of memory, most often; oneDNN says "could not
    /// create a primitive" when the host has no memory for its workspace.
    Failed(String),
}

/// The size [`confirm`] settled on, the larger ones whose pass failed (largest first) and the
/// last failure's message.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirmed {
    pub micro: usize,
    pub too_large: Vec<usize>,
    pub failure: Option<String>,
}

impl Confirmed {
    /// The log line when the prediction was too large: which sizes failed, and how.
    pub fn describe(&self) -> Option<String> {
        let sizes: Vec<String> = self.too_large.iter().map(usize::to_string).collect();
        let failure = self.failure.as_deref()?;
        Some(format!(
            "micro_batch_size auto → {}: a forward and backward pass of {} images failed ({failure})",
            self.micro,
            sizes.join(", then ")
        ))
    }
}

/// Runs one pass at the chosen micro-batch `start` and, while libtorch fails in it, at the next
/// smaller divisor of `per_rank`: a prediction is only a prediction (fragmentation, another
/// process on the card, a host that runs out first). `trial(m)` runs the pass with libtorch's
/// failures caught; an error it returns ends the search.
pub fn confirm(
    per_rank: usize,
    start: usize,
    mut trial: impl FnMut(usize) -> Result<Trial>,
) -> Result<Confirmed> {
    let mut too_large = Vec::new();
    let (mut first_failure, mut failure) = (None, None);
    for micro in (1..=start.min(per_rank))
        .rev()
        .filter(|m| per_rank % m == 0)
    {
        match trial(micro)? {
            Trial::Fits => {
                return Ok(Confirmed {
                    micro,
                    too_large,
                    failure,
                })
            }
            Trial::Failed(message) => {
                too_large.push(micro);
                first_failure.get_or_insert_with(|| message.clone());
                failure = Some(message);
            }
        }
    }
    Err(TrainError::NoMicroBatchFits {
        largest: too_large.first().copied().unwrap_or(start),
        first: first_failure.unwrap_or_default(),
        last: failure.unwrap_or_default(),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_steps_down_through_the_divisors_until_a_pass_fits() {
        let fits_up_to = |limit: usize| {
            move |m: usize| {
                Ok(match m <= limit {
                    true => Trial::Fits,
                    false => Trial::Failed(format!("{m} images: out of memory")),
                })
            }
        };
        let c = confirm(52, 52, fits_up_to(20)).unwrap();
        assert_eq!((c.micro, c.too_large.clone()), (13, vec![52, 26]));
        assert_eq!(
            c.describe().unwrap(),
            "micro_batch_size auto → 13: a forward and backward pass of 52, then 26 images failed \
             (26 images: out of memory)"
        );
        let c = confirm(52, 26, fits_up_to(52)).unwrap();
        assert_eq!((c.micro, c.describe()), (26, None));
        let e = confirm(6, 6, fits_up_to(0)).unwrap_err().to_string();
        assert!(
            e.contains(
                "failed at every size from 6 down to 1 (at 6: 6 images: out of memory; at 1: 1 \
                 images: out of memory)"
            ),
            "{e}"
        );
        // Another failure ends the search at once.
        let mut tried = Vec::new();
        let e = confirm(8, 8, |m| {
            tried.push(m);
            Err(TrainError::NoCuda.into())
        });
        assert!(e.is_err());
        assert_eq!(tried, [8]);
    }

    const GIB: u64 = 1 << 30;

    fn probes(fixed: u64, per_image: u64) -> [Probe; 2] {
        [2, 4].map(|m| Probe {
            micro: m,
            bytes: fixed + per_image * m as u64,
        })
    }

    #[test]
    fn takes_the_largest_divisor_that_fits() {
        // 10 GiB fixed + 2 GiB per image: 52 images need 114 GiB, 26 need 62 GiB.
        let p = probes(10 * GIB, 2 * GIB);
        let c = choose(52, p, 120 * GIB).unwrap();
        assert_eq!((c.micro, c.predicted), (52, Some(114 * GIB)));
        let c = choose(52, p, 100 * GIB).unwrap();
        assert_eq!((c.micro, c.predicted), (26, Some(62 * GIB)));
        // 26 does not fit 60 GiB; 13 (36 GiB) is the next divisor.
        assert_eq!(choose(52, p, 60 * GIB).unwrap().micro, 13);
        // Exactly at the budget fits.
        assert_eq!(choose(52, p, 36 * GIB).unwrap().micro, 13);
        assert_eq!(choose(52, p, 36 * GIB - 1).unwrap().micro, 4);
        // Order of the probes does not matter.
        let [a, b] = p;
        assert_eq!(choose(52, [b, a], 100 * GIB).unwrap().micro, 26);
    }

    #[test]
    fn refuses_when_one_image_does_not_fit() {
        let e = choose(52, probes(10 * GIB, 2 * GIB), 11 * GIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("12.00 GiB") && e.contains("11.00 GiB"), "{e}");
    }

    #[test]
    fn an_unusable_slope_is_replaced_by_an_over_estimate() {
        // A smaller peak at the larger size: bytes per image of the larger probe (6 GiB / 4).
        let p = [
            Probe {
                micro: 2,
                bytes: 7 * GIB,
            },
            Probe {
                micro: 4,
                bytes: 6 * GIB,
            },
        ];
        let c = choose(8, p, 9 * GIB).unwrap();
        assert_eq!((c.micro, c.predicted), (4, Some(6 * GIB)));
        // Equal sizes (a per-rank batch of 1 probes 1 and 1).
        let one = Probe {
            micro: 1,
            bytes: GIB,
        };
        assert_eq!(choose(1, [one, one], 2 * GIB).unwrap().micro, 1);
    }

    #[test]
    fn probe_sizes_stay_within_the_batch() {
        assert_eq!(probe_sizes(52), (2, 4));
        assert_eq!(probe_sizes(3), (1, 3));
        assert_eq!(probe_sizes(2), (1, 2));
        assert_eq!(probe_sizes(1), (1, 1));
    }

    #[test]
    fn the_cpu_takes_the_whole_per_rank_batch_without_a_pass() {
        let c = resolve(26, Device::Cpu, |_| panic!("no pass on the CPU")).unwrap();
        assert_eq!(c.micro, 26);
        assert!(c.describe(26).contains("whole per-rank batch"));
    }

    #[test]
    fn available_memory_counts_the_allocator_reserve() {
        let m = DeviceMemory {
            allocated: 30 * GIB,
            peak: 40 * GIB,
            reserved: 50 * GIB,
            free: 80 * GIB,
            total: 140 * GIB,
        };
        assert_eq!(m.available_above(30 * GIB), 100 * GIB);
    }
}
