//! `tagfix train`'s flags that set a configuration key (one clap definition, shared by the CLI and
//! the messages that name a key's flag).

use super::*;

/// The `tagfix train` flags that set a configuration key. Each field is named after the key it sets
/// (the flag may be shorter: `init_lr` is `--lr`), which is how [`setting`] names a key's flag in
/// messages; a flag given replaces the value of the file and of `--set`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrainFlags {
    /// Model: swin_l_224, swin_l_384, swin_b_224, swin_b_384, tiny, or a reference config.json.
    #[arg(long, value_name = "SPEC")]
    pub model: Option<String>,
    /// Absent slots: smooth=EPS (target EPS: logits settle at logit(EPS)), mask (no tag loss), negative (target 0:
    /// probabilities collapse to 0), asl (RAM's ASL negatives).
    #[arg(long, value_name = "POLICY")]
    pub absent: Option<AbsentPolicy>,
    /// Loss weights, e.g. tag=1,align=10,dis=100.
    #[arg(long, value_name = "WEIGHTS")]
    pub loss_weights: Option<LossWeights>,
    /// `initial`: measure the terms over the first --balance-steps steps, then weight them to equal magnitude.
    #[arg(long, value_name = "MODE", value_enum)]
    pub loss_balance: Option<LossBalance>,
    /// Steps measured by --loss-balance initial.
    #[arg(long, value_name = "N")]
    pub balance_steps: Option<u64>,
    /// Images per optimizer step.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Images per forward/backward (gradients are accumulated up to --batch-size), or `auto`: the
    /// largest divisor of the per-rank batch that fits the device's memory, chosen at the start.
    #[arg(long, value_name = "N|auto")]
    pub micro_batch_size: Option<MicroBatchSize>,
    /// Stop after N optimizer steps (default: max_epoch epochs).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Peak learning rate (init_lr).
    #[arg(long = "lr", value_name = "LR")]
    pub init_lr: Option<f64>,
    /// LR schedule after warm-up: ram-step (per-epoch decay) or cosine.
    #[arg(long, value_name = "KIND", value_enum)]
    pub schedule: Option<Schedule>,
    /// Scale the learning rates linearly with --batch-size / base_batch_size.
    #[arg(long)]
    pub lr_scale_linear: bool,
    /// Clip the global gradient norm.
    #[arg(long, value_name = "NORM")]
    pub grad_clip: Option<f64>,
    /// Parameter-name prefix to freeze (repeatable; `none` freezes nothing). Default: label_embed when fine-tuning.
    #[arg(long, value_name = "PREFIX")]
    pub freeze: Vec<String>,
    /// pretrain or finetune.
    #[arg(long, value_name = "STAGE", value_enum)]
    pub stage: Option<Stage>,
    /// cpu or cuda (cuda needs the GPU build: scripts/setup-gpu.sh).
    #[arg(long, value_name = "DEVICE", value_enum)]
    pub device: Option<DeviceKind>,
    /// f32, or bf16 autocast (matrix products in bf16; parameters, gradients and optimizer state in f32).
    #[arg(long, value_name = "PRECISION", value_enum)]
    pub precision: Option<Precision>,
    /// TF32 for f32 matrix products and convolutions on CUDA (faster, 10-bit mantissa inputs; no
    /// effect on the CPU). Default: IEEE f32.
    #[arg(long)]
    pub tf32: bool,
    /// Gradients between the ranks of a distributed run: f32, or bf16 (half the network bytes,
    /// rounded to bf16 as DDP's bf16_compress_hook; no effect with a single rank).
    #[arg(long, value_name = "DTYPE", value_enum)]
    pub grad_comm: Option<GradComm>,
    /// When a distributed run exchanges gradients: overlap (during the backward pass, each bucket
    /// as it completes, as DDP) or after-backward. Same sums; no effect with a single rank.
    #[arg(long, value_name = "WHEN", value_enum)]
    pub grad_sync: Option<GradSync>,
    /// Shard the AdamW state over the ranks of a distributed run (ZeRO stage 1, as PyTorch's
    /// ZeroRedundancyOptimizer): each rank keeps the moments of its share of the parameters (8 bytes
    /// a value, divided by the ranks), updates that share and broadcasts it. Same weights and
    /// checkpoints; no effect with a single rank.
    #[arg(long)]
    pub shard_optimizer: bool,
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Image-decoding threads (0: one per core, or this rank's share of them where several ranks start
    /// on one machine; more than one per core is capped to that).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// libtorch threads (0: one per core, or this rank's share of them where several ranks start on one
    /// machine and OMP_NUM_THREADS is unset; more than one per core is capped to that).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Images read before the first step: `full` decodes every image (truncated or corrupt files
    /// are found before training), `header` reads only headers, `none` nothing
    /// [default: full up to 1 000 000 images, else header].
    #[arg(long, value_name = "MODE", value_enum)]
    pub check_images: Option<ImageCheck>,
    /// An image found unreadable during training: `stop` the run, or `skip` it (its place in the
    /// micro-batch taken by the next readable image of that micro-batch; each skip logged, the
    /// count in summary.json; the check before the first step then warns instead of refusing).
    #[arg(long, value_name = "POLICY", value_enum)]
    pub unreadable_images: Option<UnreadableImages>,
    /// Checkpoint every N >= 1 steps, every interval of wall-clock time (`30m`, `2h`, `1h 30m`;
    /// all ranks save after the same step), or `off` (only the final checkpoint).
    #[arg(long, value_name = "N|DURATION|off")]
    pub checkpoint_every: Option<CheckpointEvery>,
    /// Checkpoints kept.
    #[arg(long, value_name = "N")]
    pub keep_checkpoints: Option<usize>,
    /// Validate every N optimizer steps (0: only before the first and after the last step).
    #[arg(long, value_name = "N")]
    pub val_every: Option<u64>,
    /// Validate on the first N images of the validation data.
    #[arg(long, value_name = "N")]
    pub val_max_images: Option<usize>,
    /// Turn off RAM's RandomAugment(2, 5) in the training transform (on by default; the
    /// `[random_augment]` config table sets N, M, probability and operations).
    #[arg(long)]
    pub no_random_augment: bool,
}

impl TrainFlags {
    /// Puts every flag given into `config`. The pattern names every field, so a flag added to
    /// [`TrainFlags`] without being applied here does not compile (a field left unused is denied too).
    #[deny(unused_variables)]
    pub fn apply(self, config: &mut TrainConfig) {
        let TrainFlags {
            model,
            absent,
            loss_weights,
            loss_balance,
            balance_steps,
            batch_size,
            micro_batch_size,
            max_steps,
            init_lr,
            schedule,
            lr_scale_linear,
            grad_clip,
            freeze,
            stage,
            device,
            precision,
            tf32,
            grad_comm,
            grad_sync,
            shard_optimizer,
            seed,
            workers,
            threads,
            check_images,
            unreadable_images,
            checkpoint_every,
            keep_checkpoints,
            val_every,
            val_max_images,
            no_random_augment,
        } = self;
        /// `flag`, when given, replaces `value`.
        fn set<T>(value: &mut T, flag: Option<T>) {
            if let Some(v) = flag {
                *value = v;
            }
        }
        let c = config;
        set(&mut c.model, model.map(Some));
        set(&mut c.absent, absent);
        set(&mut c.loss_weights, loss_weights);
        set(&mut c.loss_balance, loss_balance);
        set(&mut c.balance_steps, balance_steps);
        set(&mut c.batch_size, batch_size);
        set(&mut c.micro_batch_size, micro_batch_size.map(Some));
        set(&mut c.max_steps, max_steps.map(Some));
        set(&mut c.init_lr, init_lr);
        set(&mut c.schedule, schedule);
        set(&mut c.lr_scale_linear, lr_scale_linear.then_some(true));
        set(&mut c.grad_clip, grad_clip.map(Some));
        let freeze =
            (!freeze.is_empty()).then(|| freeze.into_iter().filter(|f| f != "none").collect());
        set(&mut c.freeze, freeze.map(Some));
        set(&mut c.stage, stage);
        set(&mut c.device, device);
        set(&mut c.precision, precision);
        set(&mut c.tf32, tf32.then_some(true));
        set(&mut c.grad_comm, grad_comm);
        set(&mut c.grad_sync, grad_sync);
        set(&mut c.shard_optimizer, shard_optimizer.then_some(true));
        set(&mut c.seed, seed);
        set(&mut c.workers, workers);
        set(&mut c.threads, threads);
        set(&mut c.check_images, check_images.map(Some));
        set(&mut c.unreadable_images, unreadable_images);
        set(&mut c.checkpoint_every, checkpoint_every);
        set(&mut c.keep_checkpoints, keep_checkpoints);
        set(&mut c.val_every, val_every);
        set(&mut c.val_max_images, val_max_images.map(Some));
        set(
            &mut c.random_augment.enabled,
            no_random_augment.then_some(false),
        );
    }
}
