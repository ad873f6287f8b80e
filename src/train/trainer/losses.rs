//! A step's loss bookkeeping: the raw terms summed over its micro-batches, the values kept on the
//! device until the step's one read, and the votes every rank casts with them.

use super::super::data::MicroBatch;
use super::super::interrupt;
use crate::monitor::{GroupNorms, LossTerm};
use tch::{Device, Kind, Tensor};

/// The raw loss terms of one step, summed over its micro-batches, in the order they first appeared.
pub type RawTerms = Vec<(LossTerm, f64)>;

/// What the micro-batches of one step produced before the update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accumulated {
    /// Raw terms summed over the micro-batches (each already a share of the batch mean).
    pub raw: RawTerms,
    /// The weighted total that was back-propagated, summed likewise.
    pub total: f64,
    /// Seconds spent waiting for the data loader.
    pub data_wait_s: f64,
}

impl Accumulated {
    /// Adds one micro-batch's raw term.
    pub(super) fn add(&mut self, term: LossTerm, v: f64) {
        match self.raw.iter_mut().find(|(k, _)| *k == term) {
            Some(e) => e.1 += v,
            None => self.raw.push((term, v)),
        }
    }
}

/// One step's values as the host sees them.
pub(super) struct StepValues {
    pub(super) acc: Accumulated,
    pub(super) grad_norm: GroupNorms,
    pub(super) update_norm: Option<GroupNorms>,
    /// What the ranks agreed on through the step's votes.
    pub(super) agreed: Agreed,
}

/// The votes a rank casts in each step, each summed over the ranks so that all act after the same
/// step: a counter per stop signal ([`interrupt::vote`]), then whether the rank's clock makes a
/// time checkpoint due (`checkpoint_every` a duration).
pub(super) const VOTES: usize = interrupt::VOTES + 1;

/// What the ranks agreed on through a step's summed votes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Agreed {
    /// The stop signal, if any rank received one ([`interrupt::agreed`]).
    pub(super) stop: Option<i32>,
    /// Some rank's clock made a time checkpoint due: every rank saves after this step.
    pub(super) checkpoint: bool,
}

impl Agreed {
    /// From the `[VOTES]` sums.
    pub(super) fn from_sums(votes: &[f64]) -> Self {
        Agreed {
            stop: interrupt::agreed(&votes[..interrupt::VOTES]),
            checkpoint: votes[interrupt::VOTES] > 0.0,
        }
    }
}

/// One micro-batch's forward pass: its raw terms (detached) and the weighted total to back-propagate.
pub(super) struct MicroOut {
    pub(super) terms: Vec<(LossTerm, Tensor)>,
    pub(super) weighted: Tensor,
}

/// Values per micro-batch on the device: the raw terms (tag, align, dis; 0 where absent), then the
/// weighted total.
pub(super) const ROW: usize = 4;
/// The step's loss summary: the sums of a row over the micro-batches, how many micro-batches hold a
/// non-finite value, then the [`VOTES`] (each summed over every rank when distributed).
pub(super) const SUMMARY: usize = ROW + 1 + VOTES;
/// Where [`SUMMARY`] counts the non-finite micro-batches.
pub(super) const NON_FINITE: usize = ROW;
/// Where [`SUMMARY`]'s votes start.
pub(super) const VOTES_AT: usize = ROW + 1;
pub(super) const TERMS: [LossTerm; 3] = [LossTerm::Tag, LossTerm::Align, LossTerm::Dis];

/// The loss values of one step's micro-batches, kept on the device until the step's one read.
pub(super) struct DeviceLosses {
    /// f64 `[micro-batches, ROW]`.
    pub(super) rows: Tensor,
    /// The terms computed (the same for every micro-batch: they follow the inputs).
    pub(super) present: [bool; 3],
    /// Each micro-batch's index within the step's batch and its first record indices, to name it.
    pub(super) names: Vec<(usize, Vec<usize>)>,
    pub(super) data_wait_s: f64,
}

impl DeviceLosses {
    pub(super) fn new(micro_batches: usize, device: Device) -> Self {
        DeviceLosses {
            rows: Tensor::zeros([micro_batches as i64, ROW as i64], (Kind::Double, device)),
            present: [false; 3],
            names: Vec::with_capacity(micro_batches),
            data_wait_s: 0.0,
        }
    }

    /// Writes micro-batch `m`'s values into its row (device kernels only).
    pub(super) fn add(&mut self, m: usize, mb: &MicroBatch, out: &MicroOut) {
        let device = self.rows.device();
        let mut row: Vec<Tensor> = (0..ROW)
            .map(|_| Tensor::zeros([], (Kind::Double, device)))
            .collect();
        for (t, v) in &out.terms {
            self.present[*t as usize] = true;
            row[*t as usize] = v.to_kind(Kind::Double);
        }
        row[ROW - 1] = out.weighted.detach().to_kind(Kind::Double);
        tch::no_grad(|| self.rows.get(m as i64).copy_(&Tensor::stack(&row, 0)));
        self.names
            .push((mb.micro, mb.indices[..mb.indices.len().min(8)].to_vec()));
    }

    /// `[SUMMARY]`: the rows' sums, the count of rows with a non-finite value and `votes` (filled
    /// on the device: no copy from the host).
    pub(super) fn summary(&self, votes: [f64; VOTES]) -> Tensor {
        let sums = self.rows.sum_dim_intlist(0, false, Kind::Double);
        let bad = self
            .rows
            .isfinite()
            .logical_not()
            .any_dim(1, false)
            .sum(Kind::Double)
            .reshape([1]);
        // Filled on the device (a host-to-device copy each step would wait for the queue on CUDA).
        let device = self.rows.device();
        let mut parts = vec![sums, bad];
        parts.extend(votes.map(|v| Tensor::full([1], v, (Kind::Double, device))));
        Tensor::cat(&parts, 0)
    }

    /// The present terms with their summed values `sums`, in the order tag, align, dis.
    pub(super) fn raw_terms(&self, sums: &[f64]) -> RawTerms {
        TERMS
            .into_iter()
            .filter(|t| self.present[*t as usize])
            .map(|t| (t, sums[t as usize]))
            .collect()
    }

    /// Why the step stops, from this rank's rows as read (`rows`: ROW values per micro-batch): the
    /// first non-finite value, naming its micro-batch. `None` when this rank's values are finite.
    pub(super) fn non_finite(&self, rows: &[f64]) -> Option<String> {
        rows.chunks(ROW)
            .zip(&self.names)
            .find_map(|(row, (micro, records))| {
                let term = TERMS
                    .into_iter()
                    .find(|t| self.present[*t as usize] && !row[*t as usize].is_finite());
                let (what, v) = match term {
                    Some(t) => (format!("loss term `{t}`"), row[t as usize]),
                    None if !row[ROW - 1].is_finite() => ("the weighted loss".into(), row[ROW - 1]),
                    None => return None,
                };
                Some(non_finite_reason(&what, v, *micro, records))
            })
    }
}

/// Why a step stops on a non-finite value `v` of `what` in micro-batch `micro` (first records
/// `records`).
pub(super) fn non_finite_reason(what: &str, v: f64, micro: usize, records: &[usize]) -> String {
    format!("{what} is {v} (micro-batch {micro}, records {records:?})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulated_sums_each_term_in_first_seen_order() {
        let mut acc = Accumulated::default();
        acc.add(LossTerm::Tag, 1.0);
        acc.add(LossTerm::Dis, 0.5);
        acc.add(LossTerm::Tag, 2.0);
        assert_eq!(acc.raw, vec![(LossTerm::Tag, 3.0), (LossTerm::Dis, 0.5)]);
    }

    #[test]
    fn one_ranks_time_vote_makes_every_rank_checkpoint() {
        // Two ranks' votes summed as the step's all-reduce sums them.
        let vote = |signal: Option<i32>, due: bool| {
            let mut v = [0.0; VOTES];
            v[..interrupt::VOTES].copy_from_slice(&interrupt::vote(signal));
            v[interrupt::VOTES] = f64::from(u8::from(due));
            v
        };
        let sum = |a: [f64; VOTES], b: [f64; VOTES]| -> Vec<f64> {
            a.iter().zip(&b).map(|(x, y)| x + y).collect()
        };
        let quiet = vote(None, false);
        assert_eq!(Agreed::from_sums(&sum(quiet, quiet)), Agreed::default());
        let due = Agreed::from_sums(&sum(quiet, vote(None, true)));
        assert_eq!((due.stop, due.checkpoint), (None, true));
        let both = Agreed::from_sums(&sum(vote(None, true), vote(None, true)));
        assert!(both.checkpoint, "two votes are one decision");
        // A stop and a due checkpoint in one step: both are seen (the stop saves anyway).
        let term = interrupt::SIGTERM;
        let stop = Agreed::from_sums(&sum(vote(Some(term), false), vote(None, true)));
        assert_eq!((stop.stop, stop.checkpoint), (Some(term), true));
    }
}
