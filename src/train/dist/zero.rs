//! A sharded optimizer state (ZeRO stage 1): every rank still all-reduces every gradient, but each
//! updates only its share of the parameters ([`AdamW::shard`]) and keeps only that share's moments.
//!
//! The shares are equal slices of all trained values laid end to end (as DeepSpeed's ZeRO and FSDP's
//! flat parameters), not whole tensors as PyTorch's `ZeroRedundancyOptimizer` hands out: RAM++'s label
//! embedding alone is 37 % of the values, so whole tensors would leave its moments on one rank. After
//! the update each share is broadcast from its rank, so all ranks hold the same weights, the unsharded
//! run's; for a checkpoint rank 0 gathers the whole state, so checkpoints are the same files either way
//! and resume on any number of ranks, sharded or not.

use super::{DistError, ProcessGroup};
use crate::train::optim::AdamW;
use tch::Tensor;

/// Share boundaries fall on multiples of this many values from the start of the parameter they cut,
/// so a slice's vectorised and scalar parts line up with the whole tensor's: the fused update of a
/// slice is bit-identical to that of the whole.
pub const SLICE_ALIGN: i64 = 64;

/// The values `start..start + len` of trained parameter `param` (flattened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub param: usize,
    pub start: i64,
    pub len: i64,
}

impl Slice {
    /// The slice's values in `t` (the parameter, its gradient or a moment of its shape): a flat view
    /// when `t` is contiguous, so that writing to it writes `t`.
    pub fn of(&self, t: &Tensor) -> Tensor {
        t.reshape([-1]).narrow(0, self.start, self.len)
    }
}

/// How the trained values are split over the ranks: rank r updates the values `bounds[r]..bounds[r +
/// 1]` of the parameters laid end to end in parameter order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Each parameter's number of values.
    sizes: Vec<i64>,
    /// Each parameter's first value in the end-to-end order.
    offsets: Vec<i64>,
    /// `world + 1` boundaries, from 0 to the total.
    bounds: Vec<i64>,
}

impl Partition {
    /// Equal shares of the parameters of `sizes` values among `world` ranks, each boundary moved down
    /// to a multiple of [`SLICE_ALIGN`] within the parameter it cuts.
    pub fn new(sizes: &[i64], world: usize) -> Self {
        let world = world.max(1);
        let offsets: Vec<i64> = sizes
            .iter()
            .scan(0i64, |at, &n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        let total: i64 = sizes.iter().sum();
        let bounds = (0..=world)
            .map(|r| {
                let even = (i128::from(total) * r as i128 / world as i128) as i64;
                // The parameter holding value `even` (the last one starting at or before it).
                match offsets.partition_point(|&o| o <= even).checked_sub(1) {
                    Some(i) if even < total => {
                        offsets[i] + (even - offsets[i]) / SLICE_ALIGN * SLICE_ALIGN
                    }
                    _ => even,
                }
            })
            .collect();
        Partition {
            sizes: sizes.to_vec(),
            offsets,
            bounds,
        }
    }

    /// The ranks the values are split among.
    pub fn world(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Rank `rank`'s slices, in parameter order (at most one per parameter).
    pub fn slices(&self, rank: usize) -> Vec<Slice> {
        let (lo, hi) = (self.bounds[rank], self.bounds[rank + 1]);
        (0..self.sizes.len())
            .filter_map(|param| {
                let (o, n) = (self.offsets[param], self.sizes[param]);
                let (a, b) = (lo.max(o), hi.min(o + n));
                (a < b).then_some(Slice {
                    param,
                    start: a - o,
                    len: b - a,
                })
            })
            .collect()
    }

    /// The number of values rank `rank` updates.
    pub fn share(&self, rank: usize) -> i64 {
        self.bounds[rank + 1] - self.bounds[rank]
    }
}

/// Rank `rank`'s slices of the trained parameters `vars`, as flat views (call under `no_grad`).
fn slice_views(vars: &[Tensor], partition: &Partition, rank: usize) -> Vec<Tensor> {
    partition
        .slices(rank)
        .iter()
        .map(|s| s.of(&vars[s.param]))
        .collect()
}

/// After a sharded update: every rank's slice is broadcast from it, so all ranks hold every updated
/// value (one bucketed broadcast per rank). Nothing to do when `opt` is not sharded.
pub fn broadcast_params(group: &mut ProcessGroup, opt: &AdamW) -> Result<(), DistError> {
    let Some(partition) = opt.partition() else {
        return Ok(());
    };
    let vars = opt.trained_vars();
    tch::no_grad(|| {
        for rank in 0..partition.world() {
            let views = slice_views(&vars, partition, rank);
            if !views.is_empty() {
                // Every rank knows the plan, so every rank skips an empty share alike.
                group.broadcast_(&views, rank)?;
            }
        }
        Ok(())
    })
}

/// The whole optimizer state for a checkpoint, named and ordered as [`AdamW::state_tensors`] names
/// it, on rank 0 (the others take part in the broadcasts and get `None`). Unsharded, rank 0's own
/// state. Sharded, each other rank's slices of the moments reach rank 0 in one bucketed broadcast;
/// the ranks that only pass them on drop them at once.
pub fn gather_state(
    group: &mut ProcessGroup,
    opt: &AdamW,
) -> Result<Option<Vec<(String, Tensor)>>, DistError> {
    let main = group.is_main();
    let Some(partition) = opt.partition() else {
        return Ok(main.then(|| opt.state_tensors()));
    };
    let vars = opt.trained_vars();
    // Rank 0's buffers of the whole moments, filled slice by slice.
    let whole: Vec<[Tensor; 2]> = if main {
        vars.iter()
            .map(|v| [v.zeros_like(), v.zeros_like()])
            .collect()
    } else {
        Vec::new()
    };
    let mine = opt.state_slices();
    let me = group.rank();
    tch::no_grad(|| -> Result<(), DistError> {
        for rank in 0..partition.world() {
            let slices = partition.slices(rank);
            if slices.is_empty() || (rank == 0 && !main) {
                continue;
            }
            let moments: Vec<Tensor> = if rank == me {
                mine.iter()
                    .flat_map(|(_, m, v)| [m.shallow_clone(), v.shallow_clone()])
                    .collect()
            } else {
                let kind = vars[0].kind();
                let device = vars[0].device();
                slices
                    .iter()
                    .flat_map(|s| [0, 1].map(|_| Tensor::zeros([s.len], (kind, device))))
                    .collect()
            };
            if rank != 0 {
                group.broadcast_(&moments, rank)?;
            }
            if main {
                for (s, pair) in slices.iter().zip(moments.chunks_exact(2)) {
                    for (dst, src) in whole[s.param].iter().zip(pair) {
                        s.of(dst).copy_(src);
                    }
                }
            }
        }
        Ok(())
    })?;
    if !main {
        return Ok(None);
    }
    Ok(Some(
        opt.trained_names()
            .zip(whole)
            .flat_map(|(name, [m, v])| {
                [
                    (format!("exp_avg.{name}"), m),
                    (format!("exp_avg_sq.{name}"), v),
                ]
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value of each parameter in exactly one rank's slices, in order.
    fn assert_covers(p: &Partition, sizes: &[i64]) {
        let mut next = vec![0i64; sizes.len()];
        for rank in 0..p.world() {
            let slices = p.slices(rank);
            assert_eq!(slices.iter().map(|s| s.len).sum::<i64>(), p.share(rank));
            for s in slices {
                assert_eq!(s.start, next[s.param], "{s:?}");
                next[s.param] += s.len;
            }
        }
        assert_eq!(next, sizes);
    }

    #[test]
    fn equal_shares_cut_at_multiples_of_64_within_a_parameter() {
        // 1407 values: even cuts at 469 and 938, both inside the second parameter (values 100..1100),
        // moved down to 100 + 320 and 100 + 832.
        let sizes = [100, 1000, 300, 7];
        let p = Partition::new(&sizes, 3);
        let cuts = |rank| -> Vec<(usize, i64, i64)> {
            p.slices(rank)
                .iter()
                .map(|s| (s.param, s.start, s.len))
                .collect()
        };
        assert_eq!(cuts(0), [(0, 0, 100), (1, 0, 320)]);
        assert_eq!(cuts(1), [(1, 320, 512)]);
        assert_eq!(cuts(2), [(1, 832, 168), (2, 0, 300), (3, 0, 7)]);
        assert_covers(&p, &sizes);
        // One rank: everything whole; more ranks than values: the last takes them.
        let one = Partition::new(&sizes, 1);
        assert_eq!(one.slices(0).len(), 4);
        assert_covers(&one, &sizes);
        let many = Partition::new(&[3], 4);
        assert!((0..3).all(|r| many.slices(r).is_empty()));
        assert_eq!(many.share(3), 3);
        assert_covers(&many, &[3]);
        // A cut that falls on a parameter's start stays there.
        let even = Partition::new(&[640, 640], 2);
        assert_eq!(
            even.slices(1),
            [Slice {
                param: 1,
                start: 0,
                len: 640
            }]
        );
        assert_covers(
            &Partition::new(&[1 << 40, 5, 0, 77], 7),
            &[1 << 40, 5, 0, 77],
        );
    }
}
