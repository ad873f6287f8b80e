//! One optimizer step ([`Trainer::step`]): the micro-batches' forward and backward passes, the
//! gradient exchange, the update, and the step's record.

use crate::error::Result;
use crate::monitor::{GroupNorms, LossTerm, StepRecord};
use crate::train::autocast::{with_autocast, CastCacheScope};
use crate::train::config::Precision;
use crate::train::data::MicroBatch;
use crate::train::dist::zero;
use crate::train::error::TrainError;
use crate::train::interrupt;
use crate::train::objective::{micro_losses, step_losses, MicroInputs};
use crate::train::optim::OptimizerImpl;
use crate::train::sync::{read_f64, read_f64s};
use crate::train::upload::upload;
use std::time::Instant;
use tch::{Kind, Tensor};

use super::losses::{
    non_finite_reason, Agreed, DeviceLosses, MicroOut, StepValues, NON_FINITE, ROW, SUMMARY, VOTES,
    VOTES_AT,
};
use super::losses::{Accumulated, RawTerms};
use super::pace::progress_line;
use super::ranks::{all_reduce_grads, share_sharded_update, sum_over_ranks};
use super::{torch_seed, Doing, Interrupt, StepSync, Trainer};

impl Trainer {
    /// Takes one optimizer step: the micro-batches' forward and backward passes, the gradient
    /// norm, clipping, the AdamW update, and the step's record in `metrics.jsonl` (with the health
    /// detectors and the loss balancing seeing it). A non-finite loss term or gradient norm saves
    /// the state before this step and ends with [`TrainError::Stopped`].
    pub fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        self.doing = Doing::Step;
        self.checkpoint_clock.get_or_insert(t0);
        self.pace.begin(t0, self.step);
        let step = self.step;
        let lr = self.sched.lr(step);
        let done = if self.sync == StepSync::Once && self.opt.imp == OptimizerImpl::Fused {
            self.step_once(step, lr)?
        } else {
            self.step_synced(step, lr)?
        };
        let secs = t0.elapsed().as_secs_f64();
        let wall_s = self.clock.wall_s();
        let record = StepRecord {
            step: step + 1,
            epoch: step / self.steps_per_epoch,
            lr,
            loss: step_losses(&done.acc.raw, &self.weighting.weights),
            total: done.acc.total,
            grad_norm: done.grad_norm,
            update_norm: done.update_norm,
            images_per_s: self.config.batch_size as f64 / secs.max(1e-9),
            data_wait_s: done.acc.data_wait_s,
            wall_s,
        };
        self.pace.end(record.data_wait_s);
        self.observe(&record, done.acc.raw)?;
        self.step = step + 1;
        self.doing = Doing::Between;
        self.last_wall_s = wall_s;
        self.bar.set_position(self.step);
        self.time_checkpoint = done.agreed.checkpoint;
        if let Some(agreed) = done.agreed.stop.filter(|_| !self.is_done()) {
            self.interrupt = Some(match self.stop.signal() {
                Some(signal) => Interrupt::Here(signal),
                None => Interrupt::OtherRank(agreed),
            });
        }
        Ok(record)
    }

    /// This rank's [`VOTES`] for the step: its stop signal ([`interrupt::vote`]) and whether its
    /// clock makes a time checkpoint due.
    pub(super) fn votes(&self) -> [f64; VOTES] {
        let mut votes = [0.0; VOTES];
        votes[..interrupt::VOTES].copy_from_slice(&interrupt::vote(self.stop.signal()));
        let interval = self.config.checkpoint_every.interval();
        let due = matches!((interval, self.checkpoint_clock), (Some(every), Some(since)) if since.elapsed() >= every);
        votes[interrupt::VOTES] = f64::from(u8::from(due));
        votes
    }

    /// Whether update norms are measured at `step` (0-based): on logging steps only, since they
    /// cost a parameter copy.
    pub(super) fn logging_step(&self, step: u64) -> bool {
        let log_every = self.config.log_every;
        log_every > 0 && (step + 1) % log_every == 0
    }

    /// Before micro-batch `m`'s backward pass: the last one of the step starts the gradient buckets
    /// as they complete (distributed, `grad_sync = "overlap"`); the earlier ones accumulate locally.
    pub(super) fn arm_grad_overlap(&mut self, m: usize) {
        if m + 1 == self.accumulation {
            if let Some(group) = self.group.as_mut() {
                group.arm_grad_overlap();
            }
        }
    }

    /// The next micro-batch (`m` of `step`) and the seconds spent waiting for it.
    pub(super) fn next_micro_batch(&mut self, step: u64, m: usize) -> Result<(MicroBatch, f64)> {
        let w0 = Instant::now();
        let mb = self
            .loader
            .next_batch()
            .ok_or(TrainError::LoaderStopped(step + 1))??;
        debug_assert_eq!((mb.step, mb.micro % self.accumulation), (step, m));
        for s in &mb.skipped {
            tracing::warn!(
                "step {}: skipped an unreadable image: {}; record {} took its place in micro-batch {}",
                step + 1,
                s.reason,
                s.replaced_by,
                mb.micro
            );
        }
        self.skipped_images += mb.skipped.len() as u64;
        Ok((mb, w0.elapsed().as_secs_f64()))
    }

    /// [`StepSync::Once`]: the micro-batches' loss values accumulate on the device, the fused update
    /// checks finiteness, clips and skips there, and one read brings back everything the step
    /// reports (see [`StepValues`]).
    pub(super) fn step_once(&mut self, step: u64, lr: f64) -> Result<StepValues> {
        self.opt.zero_grad();
        let mut losses = DeviceLosses::new(self.accumulation, self.device);
        let casts = self.cast_cache();
        for m in 0..self.accumulation {
            let (mb, wait) = self.next_micro_batch(step, m)?;
            losses.data_wait_s += wait;
            let out = self.micro_batch(&mb)?;
            losses.add(m, &mb, &out);
            self.arm_grad_overlap(m);
            out.weighted.backward();
        }
        drop(casts);
        let summary = losses.summary(self.votes());
        if let Some(group) = self.group.as_mut() {
            // DDP's bucketed all-reduce of the gradients, once per step (started during the last
            // micro-batch's backward pass when overlapped), then the loss summary: every rank holds
            // the one-rank run's values.
            group.set_step(step + 1);
            all_reduce_grads(group, &self.opt, self.config.grad_comm)?;
            group.all_reduce_sum_(std::slice::from_ref(&summary))?;
        }
        let bad = summary.narrow(0, NON_FINITE as i64, 1);
        let clip = self.config.grad_clip.filter(|c| *c > 0.0);
        let measure = self.logging_step(step);
        self.doing = Doing::Update;
        let update = self.opt.update_on_device(lr, clip, &bad, measure)?;
        if let Some(group) = self.group.as_mut() {
            share_sharded_update(group, &self.opt, update.update_norms())?;
        }
        let packed = Tensor::cat(&[&summary, &losses.rows.reshape([-1]), update.packed()], 0);
        let values = read_f64s(&packed, "the step's losses and norms")?;
        let (head, rest) = values.split_at(SUMMARY + ROW * self.accumulation);
        let settled = self.opt.settle(&update, rest)?;
        let (sums, rows) = head.split_at(SUMMARY);
        if sums[NON_FINITE] > 0.0 {
            let reason = losses.non_finite(rows).unwrap_or_else(|| {
                format!(
                    "a loss term is non-finite on another rank ({} micro-batch(es))",
                    sums[NON_FINITE]
                )
            });
            return Err(self.stop(step, reason));
        }
        if settled.skipped {
            let reason = format!(
                "the gradient norm is {} although every loss term is finite",
                settled.grad_norm.total
            );
            return Err(self.stop(step, reason));
        }
        Ok(StepValues {
            acc: Accumulated {
                raw: losses.raw_terms(sums),
                total: sums[ROW - 1],
                data_wait_s: losses.data_wait_s,
            },
            grad_norm: settled.grad_norm,
            update_norm: settled.update_norm,
            agreed: Agreed::from_sums(&sums[VOTES_AT..SUMMARY]),
        })
    }

    /// [`StepSync::PerMicroBatch`]: each micro-batch's terms are read and checked as they are
    /// computed, then the gradient norms, clipping and the update read on the host.
    pub(super) fn step_synced(&mut self, step: u64, lr: f64) -> Result<StepValues> {
        let (acc, agreed) = self.accumulate(step)?;
        self.doing = Doing::Update;
        let (grad_norm, update_norm) = self.update(step, lr)?;
        Ok(StepValues {
            acc,
            grad_norm,
            update_norm,
            agreed,
        })
    }

    /// Zeroes the gradients and runs every micro-batch of `step`, accumulating their gradients and
    /// reading their loss terms as they come; also returns what the step's votes agreed on (over the
    /// ranks).
    pub(super) fn accumulate(&mut self, step: u64) -> Result<(Accumulated, Agreed)> {
        self.opt.zero_grad();
        let mut acc = Accumulated::default();
        let mut non_finite = None;
        let casts = self.cast_cache();
        for m in 0..self.accumulation {
            let (mb, wait) = self.next_micro_batch(step, m)?;
            acc.data_wait_s += wait;
            let out = self.micro_batch(&mb)?;
            let mut terms = Vec::new();
            for (t, v) in &out.terms {
                terms.push((*t, read_f64(v, "a loss term")?));
            }
            if let Some((t, v)) = terms.iter().find(|(_, v)| !v.is_finite()) {
                let records = &mb.indices[..mb.indices.len().min(8)];
                let reason = non_finite_reason(&format!("loss term `{t}`"), *v, mb.micro, records);
                if self.group.is_none() {
                    return Err(self.stop(step, reason));
                }
                // The other ranks are waiting for this step's sums: stop together after them.
                non_finite.get_or_insert(reason);
                continue;
            }
            for (t, v) in terms {
                acc.add(t, v);
            }
            acc.total += read_f64(&out.weighted, "the weighted loss")?;
            self.arm_grad_overlap(m);
            out.weighted.backward();
        }
        drop(casts);
        let agreed = match self.group {
            Some(_) => self.all_reduce(step, &mut acc, non_finite)?,
            None => Agreed::from_sums(&self.votes()),
        };
        Ok((acc, agreed))
    }

    /// Distributed, [`StepSync::PerMicroBatch`]: sums the gradients (DDP's bucketed all-reduce,
    /// once per step after the last micro-batch) and the loss terms over the ranks, so every rank
    /// holds the one-rank run's values. A non-finite term on any rank stops every rank. Returns what
    /// the ranks' votes agreed on.
    pub(super) fn all_reduce(
        &mut self,
        step: u64,
        acc: &mut Accumulated,
        non_finite: Option<String>,
    ) -> Result<Agreed> {
        let votes = self.votes();
        let group = self.group.as_mut().expect("distributed");
        group.set_step(step + 1);
        all_reduce_grads(group, &self.opt, self.config.grad_comm)?;
        let mut values = [0f64; 8 + VOTES];
        for &(t, v) in &acc.raw {
            values[t as usize] = v;
            values[3 + t as usize] = 1.0;
        }
        values[6] = acc.total;
        values[7] = f64::from(u8::from(non_finite.is_some()));
        values[8..].copy_from_slice(&votes);
        let sums = group.all_reduce_scalars(&values)?;
        if sums[7] > 0.0 {
            let reason = non_finite.unwrap_or_else(|| {
                format!("a loss term is non-finite on {} other rank(s)", sums[7])
            });
            return Err(self.stop(step, reason));
        }
        acc.raw = [LossTerm::Tag, LossTerm::Align, LossTerm::Dis]
            .into_iter()
            .filter(|t| sums[3 + *t as usize] > 0.0)
            .map(|t| (t, sums[t as usize]))
            .collect();
        acc.total = sums[6];
        Ok(Agreed::from_sums(&sums[8..]))
    }

    /// A bf16 step's cast cache: each weight is cast to bf16 once for all the step's micro-batches
    /// (dropped before the update, which changes the weights).
    pub(super) fn cast_cache(&self) -> Option<CastCacheScope> {
        (self.config.precision == Precision::Bf16).then(CastCacheScope::open)
    }

    /// Forward pass of one micro-batch, libtorch's generator seeded from `(seed, step, micro)`: its
    /// raw terms (detached) and the weighted total to back-propagate. Reads nothing from the device.
    pub(super) fn micro_batch(&mut self, mb: &MicroBatch) -> Result<MicroOut> {
        let device = self.device;
        let n = mb.len() as i64;
        let side = self.model_config.swin.img_size as i64;
        let joint = self.model_config.joint_dim as i64;
        let images = self.pixels.upload(&mb.images, n, side, device)?;
        let targets = upload(
            &mb.targets,
            &[n, self.model_config.num_class as i64],
            device,
        )?;
        let features = |v: &Option<Vec<f32>>| {
            v.as_ref()
                .map(|c| upload(c, &[n, joint], device))
                .transpose()
        };
        let (clip, text) = (features(&mb.clip_feature)?, features(&mb.text_embed)?);
        tch::manual_seed(torch_seed(self.config.seed, mb.step, mb.micro));
        let inputs = MicroInputs {
            images: &images,
            targets: &targets,
            clip_feature: clip.as_ref(),
            text_embed: text.as_ref(),
            mean_share: self.micro as f64 / self.config.batch_size as f64,
        };
        let forward = || micro_losses(&self.model, &inputs, &self.absent, true);
        // The backward pass runs outside the autocast region, as torch.autocast recommends.
        let losses = match self.config.precision {
            Precision::F32 => forward(),
            Precision::Bf16 => with_autocast(device, Kind::BFloat16, forward)?,
        }?;
        Ok(MicroOut {
            terms: losses
                .terms()
                .into_iter()
                .map(|(t, v)| (t, v.detach()))
                .collect(),
            weighted: losses.weighted_sum(&self.weighting.weights),
        })
    }

    /// [`StepSync::PerMicroBatch`]: gradient norms (read), clipping and the AdamW update of `step`
    /// at `lr`: returns the gradient norms and (on logging steps) the update norms.
    pub(super) fn update(
        &mut self,
        step: u64,
        lr: f64,
    ) -> Result<(GroupNorms, Option<GroupNorms>)> {
        let grad_norm = self.opt.grad_norms()?;
        if !grad_norm.total.is_finite() {
            let reason = format!(
                "the gradient norm is {} although every loss term is finite",
                grad_norm.total
            );
            return Err(self.stop(step, reason));
        }
        if let Some(max) = self.config.grad_clip.filter(|c| *c > 0.0) {
            self.opt.clip_grad_norm(grad_norm.total, max);
        }
        let measure = self.logging_step(step);
        let update_norm = match self.group.as_mut() {
            Some(group) if self.opt.partition().is_some() => {
                // Each rank measured its own slices' updates: sum them over the ranks before reading.
                let norms = self.opt.step_with(lr, measure, sum_over_ranks(group))?;
                zero::broadcast_params(group, &self.opt)?;
                norms
            }
            _ => self.opt.step(lr, measure)?,
        };
        Ok((grad_norm, update_norm))
    }

    /// Appends a finished step to the metrics (detectors included), lets the loss balancing see its
    /// raw terms, and shows them on logging steps.
    pub(super) fn observe(&mut self, record: &StepRecord, raw: RawTerms) -> Result<()> {
        if let Some(monitor) = self.monitor.as_mut() {
            monitor.record(record)?;
        }
        if let Some(msg) = self.weighting.observe(record.step - 1, &raw) {
            tracing::info!("{msg}");
        }
        let done = record.step;
        if self.config.log_every > 0 && done % self.config.log_every == 0 {
            let terms: Vec<String> = raw.iter().map(|(t, v)| format!("{t} {v:.4}")).collect();
            let terms = terms.join(" ");
            self.bar.set_message(terms.clone());
            if self.is_main() && self.bar.is_hidden() {
                // No bar is drawn (stderr is a file or a pipe: a cluster's job log): a line instead.
                let pace = self.pace.since_last_line(done, self.config.batch_size);
                let line = progress_line(done, self.total_steps, &terms, record.lr, pace);
                tracing::info!("{line}");
            } else {
                tracing::debug!("step {done}: lr {:.3e} {terms}", record.lr);
            }
        }
        self.history.push(raw);
        Ok(())
    }
}
