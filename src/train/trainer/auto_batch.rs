//! `--micro-batch-size auto`: the probe that measures which micro-batch fits.

use super::super::autocast::with_autocast;
use super::super::config::{Precision, TrainConfig};
use super::super::dist::ProcessGroup;
use super::super::failure;
use super::super::micro_auto;
use super::super::model::{RamPlus, RamPlusConfig};
use super::super::objective::{micro_losses, AbsentSlots, MicroInputs};
use super::open::shares;
use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// What `--micro-batch-size auto` measures with: a training forward and backward pass of the model
/// on placeholder inputs of the run's shapes (teacher signals included when the run has them).
pub(super) struct AutoProbe<'a> {
    pub(super) model: &'a RamPlus,
    pub(super) model_config: &'a RamPlusConfig,
    pub(super) absent: &'a AbsentSlots,
    pub(super) config: &'a TrainConfig,
    pub(super) device: Device,
    pub(super) teacher: bool,
}

impl AutoProbe<'_> {
    /// The micro-batch this rank's share of the batch is split into ([`micro_auto::resolve`]), on
    /// CUDA tried once and made smaller while its pass fails ([`micro_auto::confirm`]); in a
    /// distributed run the smallest any rank settled on, so that all run the same configuration.
    pub(super) fn choose(
        &self,
        world: usize,
        group: Option<&mut ProcessGroup>,
        main: bool,
    ) -> Result<usize> {
        let batch = self.config.batch_size;
        // Not even micro-batches of one image share evenly.
        let (_, per_rank) = shares(batch, 1, world)?;
        let choice = micro_auto::resolve(per_rank, self.device, |m| self.pass(m))?;
        let confirmed = match choice.predicted {
            // Measured on CUDA: try the prediction. On the CPU (the whole batch, no device limit) a
            // failed pass leaves oneDNN unable to create primitives for the rest of the process
            // (seen under an address-space limit), so a smaller trial would fail too.
            Some(_) => micro_auto::confirm(per_rank, choice.micro, |m| self.trial(m))?,
            None => micro_auto::Confirmed {
                micro: choice.micro,
                too_large: Vec::new(),
                failure: None,
            },
        };
        if main {
            tracing::info!("{}", choice.describe(per_rank));
        }
        if let Some(line) = confirmed.describe() {
            tracing::warn!("{line}");
        }
        let micro = match group {
            None => confirmed.micro,
            Some(g) => {
                let mut mine = vec![0.0; world];
                mine[g.rank()] = confirmed.micro as f64;
                let all = g.all_reduce_scalars(&mine)?;
                all.into_iter().fold(confirmed.micro as f64, f64::min) as usize
            }
        };
        if main && micro != confirmed.micro {
            tracing::info!("micro_batch_size auto → {micro}: the smallest any rank chose");
        }
        Ok(micro)
    }

    /// [`AutoProbe::pass`] with libtorch's failures caught ([`micro_auto::Trial::Failed`]).
    fn trial(&self, m: usize) -> Result<micro_auto::Trial> {
        match failure::catch(|| self.pass(m)) {
            Ok(passed) => passed.map(|()| micro_auto::Trial::Fits),
            Err(failure) => Ok(micro_auto::Trial::Failed(failure.message)),
        }
    }

    /// One forward and backward pass of `m` images, as [`Trainer::micro_batch`] runs it.
    pub(super) fn pass(&self, m: usize) -> Result<()> {
        let (n, side) = (m as i64, self.model_config.swin.img_size as i64);
        let opts = (Kind::Float, self.device);
        let joint = self.model_config.joint_dim as i64;
        let images = Tensor::zeros([n, 3, side, side], opts);
        let targets = Tensor::zeros([n, self.model_config.num_class as i64], opts);
        let feature = || self.teacher.then(|| Tensor::full([n, joint], 0.05, opts));
        let (clip, text) = (feature(), feature());
        let inputs = MicroInputs {
            images: &images,
            targets: &targets,
            clip_feature: clip.as_ref(),
            text_embed: text.as_ref(),
            mean_share: m as f64 / self.config.batch_size as f64,
        };
        let forward = || micro_losses(self.model, &inputs, self.absent, true);
        let losses = match self.config.precision {
            Precision::F32 => forward(),
            Precision::Bf16 => with_autocast(self.device, Kind::BFloat16, forward)?,
        }?;
        losses.weighted_sum(&self.config.loss_weights).backward();
        Ok(())
    }
}
