//! What the ranks of a distributed run exchange around the steps: the agreement and parameters at
//! the start, the summed gradients, the sharded optimizer's updates.

use super::super::config::{GradComm, TrainConfig};
use super::super::dist::{zero, Fingerprint, ProcessGroup};
use super::super::optim::AdamW;
use super::super::run::TrainInputs;
use crate::error::Result;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Distributed start: fails (on every rank, naming the first that differs) unless all ranks train
/// the same configuration on the same vocabulary and label embeddings from the same step, then
/// gives every rank rank 0's parameters.
pub(super) fn agree_and_share(
    group: &mut ProcessGroup,
    config: &TrainConfig,
    inputs: &TrainInputs,
    step: u64,
    vs: &VarStore,
) -> Result<()> {
    let mine = Fingerprint {
        config_sha256: crate::fsutil::sha256_hex(config.to_toml().as_bytes()),
        vocab_sha256: crate::fsutil::sha256_file(&inputs.manifest)?,
        label_embed_sha256: crate::fsutil::sha256_file(&inputs.label_embed)?,
        step,
    };
    group.check_agreement(&mine)?;
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<Tensor> = params.into_iter().map(|(_, t)| t).collect();
    broadcast_in_chunks(group, &tensors)
}

/// How many bytes of tensors one broadcast of [`broadcast_in_chunks`] sends: each copies its
/// tensors into flat buckets, so a broadcast of a whole model or optimizer state at once would
/// hold a second copy of it on the device.
const BROADCAST_CHUNK_BYTES: usize = 256 << 20;

/// Rank 0's values of `tensors` to every rank, in place, at most [`BROADCAST_CHUNK_BYTES`] at a
/// time (every rank cuts the same list alike).
fn broadcast_in_chunks(group: &mut ProcessGroup, tensors: &[Tensor]) -> Result<()> {
    let bytes: Vec<usize> = tensors
        .iter()
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .collect();
    for chunk in chunks(&bytes, BROADCAST_CHUNK_BYTES) {
        tch::no_grad(|| group.broadcast_(&tensors[chunk], 0))?;
    }
    Ok(())
}

/// Consecutive ranges of items of `bytes` each, every range reaching `limit` bytes with its last
/// item (so none is empty, and an item larger than `limit` goes alone).
fn chunks(bytes: &[usize], limit: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, b) in bytes.iter().enumerate() {
        sum += b;
        if sum >= limit {
            out.push(start..i + 1);
            (start, sum) = (i + 1, 0);
        }
    }
    if start < bytes.len() {
        out.push(start..bytes.len());
    }
    out
}

/// A resume: rank 0's optimizer moments to every rank (it alone read them from the checkpoint).
/// Nothing when the state is sharded: each rank read its own share.
pub(super) fn share_moments(group: &mut ProcessGroup, opt: &AdamW) -> Result<()> {
    if opt.partition().is_some() {
        return Ok(());
    }
    let moments: Vec<Tensor> = opt.state_tensors().into_iter().map(|(_, t)| t).collect();
    broadcast_in_chunks(group, &moments)
}

/// Sharded optimizer state ([`zero`]): combines the update norms over the ranks (each measured its
/// own slices' updates; nothing on steps that measure none) and broadcasts each rank's slice. Nothing
/// when the state is not sharded.
pub(super) fn share_sharded_update(
    group: &mut ProcessGroup,
    opt: &AdamW,
    update_norms: Option<Tensor>,
) -> Result<()> {
    if opt.partition().is_none() {
        return Ok(());
    }
    if let Some(norms) = update_norms {
        opt.combine_update_norms(&norms, sum_over_ranks(group))?;
    }
    zero::broadcast_params(group, opt)?;
    Ok(())
}

/// Sums a tensor over the ranks in place (for [`AdamW::combine_update_norms`]).
pub(super) fn sum_over_ranks(group: &mut ProcessGroup) -> impl FnOnce(&Tensor) -> Result<()> + '_ {
    |t| Ok(group.all_reduce_sum_(std::slice::from_ref(t))?)
}

/// Sums the step's gradients over the ranks: completes the overlapped exchange when there is one
/// ([`ProcessGroup::overlap_grads`]), else all-reduces `opt`'s gradients now, sent as `grad_comm` says (a group
/// of one rank sends nothing anywhere, so its gradients are not rounded). Logs (debug) how long the step
/// waited for it after the backward pass (on the CPU; CUDA work is only queued) and, overlapped, how
/// many buckets started while the backward pass was still computing.
pub(super) fn all_reduce_grads(
    group: &mut ProcessGroup,
    opt: &AdamW,
    grad_comm: GradComm,
) -> Result<()> {
    let t0 = Instant::now();
    if group.has_grad_overlap() {
        let stats = group.finish_grad_overlap()?;
        tracing::debug!(
            "gradient exchange: {} of {} buckets overlapped the backward pass, {:.1} ms after it ({} gradients copied into bucket views)",
            stats.overlapped,
            stats.buckets,
            t0.elapsed().as_secs_f64() * 1e3,
            stats.copied
        );
        return Ok(());
    }
    let grads = opt.grads();
    match grad_comm {
        GradComm::Bf16 if group.world_size() > 1 => {
            group.all_reduce_sum_as_(&grads, Kind::BFloat16)?
        }
        _ => group.all_reduce_sum_(&grads)?,
    }
    tracing::debug!(
        "gradient exchange: after the backward pass, {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cover_every_item_once_and_reach_the_limit() {
        assert!(chunks(&[], 10).is_empty());
        assert_eq!(chunks(&[3, 3, 3, 3], 10), vec![0..4]);
        assert_eq!(chunks(&[4, 6, 1, 20, 2], 10), [0..2, 2..4, 4..5]);
        assert_eq!(chunks(&[30, 1], 10), [0..1, 1..2]);
    }
}
