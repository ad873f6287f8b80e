//! Splitting one optimizer step's global batch across ranks.
//!
//! Like `DistributedSampler`, every rank sees the same global order (a function of seed and epoch
//! only) and takes its own part of it. Unlike `DistributedSampler` it never pads: a padded sample
//! would be counted twice and make the gradient (and a sharded validation's mAP) differ from the
//! one-rank run. Shares therefore differ in size by at most one sample; a rank whose share is empty
//! (global batch smaller than the world) still takes part in every collective with a zero gradient.
//! For the summed gradient to equal the one-rank mean, each rank divides its loss by the **global**
//! batch size ([`Share::global_len`]) and the ranks sum (not average) their gradients.

/// One rank's contiguous part of a global index list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// This rank's indices, in global order.
    pub indices: Vec<usize>,
    /// Position of the first of them in the global list.
    pub start: usize,
    /// Length of the global list.
    pub global_len: usize,
}

impl Share {
    /// This share's weight in a mean over the global list (`len / global_len`; 0 when both are empty).
    pub fn weight(&self) -> f64 {
        if self.global_len == 0 {
            0.0
        } else {
            self.indices.len() as f64 / self.global_len as f64
        }
    }
}

/// Rank `rank`'s share of `global` among `world_size` ranks: a contiguous block, the first
/// `len % world_size` ranks taking one index more. Concatenating all shares in rank order gives
/// `global` back.
///
/// # Panics
/// If `world_size == 0` or `rank >= world_size` (a [`super::Rendezvous`] never holds such values).
pub fn shard(global: &[usize], rank: usize, world_size: usize) -> Share {
    assert!(
        rank < world_size,
        "rank {rank} out of range for world size {world_size}"
    );
    let (base, extra) = (global.len() / world_size, global.len() % world_size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    Share {
        indices: global[start..start + len].to_vec(),
        start,
        global_len: global.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_partition_the_global_list() {
        let global: Vec<usize> = (100..111).collect();
        for world in 1..=13 {
            let shares: Vec<Share> = (0..world).map(|r| shard(&global, r, world)).collect();
            let joined: Vec<usize> = shares.iter().flat_map(|s| s.indices.clone()).collect();
            assert_eq!(joined, global, "world {world}");
            let lens: Vec<usize> = shares.iter().map(|s| s.indices.len()).collect();
            assert!(
                lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1,
                "{lens:?}"
            );
            let weights: f64 = shares.iter().map(Share::weight).sum();
            assert!((weights - 1.0).abs() < 1e-12);
            for s in &shares {
                assert_eq!(&global[s.start..s.start + s.indices.len()], &s.indices[..]);
            }
        }
    }

    #[test]
    fn small_batches_leave_ranks_empty() {
        let s = shard(&[7, 8], 2, 4);
        assert!(s.indices.is_empty());
        assert_eq!((s.start, s.global_len, s.weight()), (2, 2, 0.0));
        assert_eq!(shard(&[7, 8], 1, 4).indices, vec![8]);
    }
}
