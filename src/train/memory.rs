//! What the model's state takes on each rank before the first activation: parameters, gradients,
//! AdamW's moments and (bf16) the weight casts autocast keeps for a step, from the tensors' sizes.
//! `train --dry-run` prints it, so a job can be sized before it waits in a queue; the activations
//! come on top and grow with the micro-batch (`--micro-batch-size auto` measures them at the start).

use super::dist::zero::Partition;
use serde::Serialize;
use tch::nn::VarStore;
use tch::Tensor;

/// Bytes per rank, before any activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    /// Every parameter and buffer, frozen ones included, as stored.
    pub parameters: u64,
    /// A gradient per trained value (distributed, they are views of the exchange's buckets, so
    /// nothing more).
    pub gradients: u64,
    /// AdamW's two moments per trained value this rank keeps: all of them, or with
    /// `shard_optimizer` the largest rank's share.
    pub optimizer: u64,
    /// The ranks the moments are split among (`shard_optimizer` with more than one rank), else 1.
    pub optimizer_shared_by: usize,
    /// bf16 runs: the bf16 copies of the trained matrices (2-D and more) autocast caches for the
    /// step. An upper bound: only those a matrix product or convolution reads are cast.
    pub bf16_casts: u64,
}

impl MemoryPlan {
    /// The plan for `trained` (from [`super::optim::select_trained`]) within `vs`, the moments
    /// split among `shard_over` ranks (1: not sharded), with bf16 casts when `bf16`.
    pub fn new(vs: &VarStore, trained: &[(String, Tensor)], shard_over: usize, bf16: bool) -> Self {
        let bytes = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        let parameters = vs.variables().values().map(bytes).sum();
        let gradients: u64 = trained.iter().map(|(_, t)| bytes(t)).sum();
        let shard_over = shard_over.max(1);
        let optimizer = if shard_over > 1 {
            let sizes: Vec<i64> = trained.iter().map(|(_, t)| t.numel() as i64).collect();
            let partition = Partition::new(&sizes, shard_over);
            let largest = (0..shard_over)
                .map(|r| partition.share(r))
                .max()
                .unwrap_or(0);
            let element = trained
                .first()
                .map_or(4, |(_, t)| t.kind().elt_size_in_bytes() as u64);
            2 * largest as u64 * element
        } else {
            2 * gradients
        };
        let bf16_casts = if bf16 {
            trained
                .iter()
                .filter(|(_, t)| t.dim() >= 2)
                .map(|(_, t)| t.numel() as u64 * 2)
                .sum()
        } else {
            0
        };
        MemoryPlan {
            parameters,
            gradients,
            optimizer,
            optimizer_shared_by: shard_over,
            bf16_casts,
        }
    }

    /// Everything above, per rank.
    pub fn total(&self) -> u64 {
        self.parameters + self.gradients + self.optimizer + self.bf16_casts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn store() -> (VarStore, Vec<(String, Tensor)>) {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let w = root.zeros("w", &[100, 10]); // 1000 values, 2-D
        let b = root.zeros("b", &[10]); // 10 values
        let _frozen = root.zeros_no_train("frozen", &[50]); // counted as a parameter only
        (vs, vec![("b".into(), b), ("w".into(), w)])
    }

    #[test]
    fn the_plan_counts_bytes_of_each_kind_of_state() {
        let (vs, trained) = store();
        let plan = MemoryPlan::new(&vs, &trained, 1, false);
        assert_eq!(plan.parameters, (1000 + 10 + 50) * 4);
        assert_eq!(plan.gradients, 1010 * 4);
        assert_eq!(plan.optimizer, 2 * 1010 * 4);
        assert_eq!(plan.bf16_casts, 0);
        assert_eq!(plan.total(), (1060 + 1010 * 3) * 4);
        // bf16: the 2-D weight's cast only.
        assert_eq!(MemoryPlan::new(&vs, &trained, 1, true).bf16_casts, 1000 * 2);
        assert_eq!(trained[1].1.kind(), Kind::Float);
    }

    #[test]
    fn sharded_moments_are_the_largest_share() {
        let (vs, trained) = store();
        let plan = MemoryPlan::new(&vs, &trained, 2, false);
        assert_eq!(plan.optimizer_shared_by, 2);
        // 1010 values in shares cut at multiples of 64: the larger share holds at most 505 + 64.
        let share = plan.optimizer / 8;
        assert!((505..=505 + 64).contains(&share), "{share}");
        assert_eq!(plan.gradients, 1010 * 4, "gradients stay whole");
    }
}
