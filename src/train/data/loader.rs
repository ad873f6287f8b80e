//! The loader: micro-batches decoded ahead of the training step on worker threads, delivered in
//! order through a bounded channel.

use super::batch::{decode_micro_batch, Decoded};
use super::{epoch_order, LoaderConfig, MicroBatch, TrainData};
use crate::error::Result;
use crate::train::error::TrainError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Background loader: a producer thread hands out micro-batches `[start_step, end_step)` in order
/// through a bounded channel of `prefetch` micro-batches. Up to `prefetch` micro-batches are decoded
/// at once on the worker pool, their images in parallel, so a worker done with its share of one
/// micro-batch starts on the next instead of waiting for the slowest image of the first (with one
/// at a time, 26 images on 16 workers kept 6 of them idle for the second half of every micro-batch).
/// Each image's augmentation depends only on its position in the epoch, so the batches are the
/// same whatever order the workers finish in.
pub struct Loader {
    rx: Option<Receiver<Result<MicroBatch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Loader {
    /// Starts the producer. `accumulation` micro-batches make one step.
    pub fn start(
        data: Arc<TrainData>,
        cfg: LoaderConfig,
        start_step: u64,
        end_step: u64,
    ) -> Result<Self> {
        let all = 0..cfg.batch / cfg.micro_batch.max(1);
        Self::start_micro_range(data, cfg, start_step, end_step, all)
    }

    /// Starts a producer of only the micro-batches `micros` of each step (a rank's share of the
    /// global batch in distributed training). A micro-batch's samples, their augmentation and its
    /// [`MicroBatch::micro`] index are those of the one-rank run.
    pub fn start_micro_range(
        data: Arc<TrainData>,
        cfg: LoaderConfig,
        start_step: u64,
        end_step: u64,
        micros: std::ops::Range<usize>,
    ) -> Result<Self> {
        let schedule = Schedule {
            steps_per_epoch: cfg.steps_per_epoch(data.len())?,
            data,
            cfg,
            next: (start_step..end_step)
                .flat_map(move |step| micros.clone().map(move |micro| (step, micro))),
            order: None,
            decode: decode_micro_batch,
        };
        Self::spawn(schedule)
    }

    /// Starts the producer thread and its worker pool on `schedule`.
    pub(super) fn spawn<I>(schedule: Schedule<I>) -> Result<Self>
    where
        I: Iterator<Item = (u64, usize)> + Send + 'static,
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(schedule.cfg.workers)
            .thread_name(|i| format!("tagfix-data-{i}"))
            .build()
            .map_err(|e| TrainError::Threads {
                what: "data threads",
                source: Box::new(e),
            })?;
        let prefetch = schedule.cfg.prefetch.max(1);
        let (tx, rx) = sync_channel(prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tagfix-loader".into())
            .spawn(move || produce(schedule, &pool, prefetch, &tx, &stop2))
            .map_err(|e| TrainError::Threads {
                what: "the loader thread",
                source: Box::new(e),
            })?;
        Ok(Loader {
            rx: Some(rx),
            stop,
            handle: Some(handle),
        })
    }

    /// The next micro-batch; `None` when the range is exhausted.
    pub fn next_batch(&mut self) -> Option<Result<MicroBatch>> {
        self.rx.as_ref()?.recv().ok()
    }
}

/// How the loader's workers decode a micro-batch: [`decode_micro_batch`] (a test swaps it).
pub(super) type DecodeJob = fn(&TrainData, &LoaderConfig, u64, usize, &[u32]) -> Result<Decoded>;

/// The micro-batches a loader produces, in order, with the current epoch's sample order.
pub(super) struct Schedule<I> {
    pub(super) data: Arc<TrainData>,
    pub(super) cfg: LoaderConfig,
    pub(super) steps_per_epoch: u64,
    pub(super) next: I,
    pub(super) order: Option<(u64, Arc<Vec<u32>>)>,
    pub(super) decode: DecodeJob,
}

impl<I: Iterator<Item = (u64, usize)>> Schedule<I> {
    /// The next micro-batch's job: step, micro-batch index and its epoch's order.
    fn next_job(&mut self) -> Option<(u64, usize, Arc<Vec<u32>>)> {
        let (step, micro) = self.next.next()?;
        let epoch = step / self.steps_per_epoch;
        let order = match &self.order {
            Some((e, order)) if *e == epoch => order.clone(),
            _ => {
                let order = Arc::new(epoch_order(self.data.len(), self.cfg.seed, epoch));
                self.order = Some((epoch, order.clone()));
                order
            }
        };
        Some((step, micro, order))
    }
}

/// The producer thread: keeps up to `in_flight` micro-batches decoding on `pool`, adds the online
/// teacher's features to each in schedule order and sends it to `tx`; stops after the last, at the
/// first error, or when the loader is dropped.
fn produce<I: Iterator<Item = (u64, usize)>>(
    mut schedule: Schedule<I>,
    pool: &rayon::ThreadPool,
    in_flight: usize,
    tx: &SyncSender<Result<MicroBatch>>,
    stop: &AtomicBool,
) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut finished: BTreeMap<u64, Result<Decoded>> = BTreeMap::new();
    let (mut issued, mut sent) = (0u64, 0u64);
    loop {
        while issued - sent < in_flight as u64 && !stop.load(Ordering::Relaxed) {
            let Some((step, micro, order)) = schedule.next_job() else {
                break;
            };
            let (data, cfg, done_tx, seq) =
                (schedule.data.clone(), schedule.cfg, done_tx.clone(), issued);
            let decode = schedule.decode;
            pool.spawn(move || {
                let item = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    decode(&data, &cfg, step, micro, &order)
                }))
                .unwrap_or_else(|panic| {
                    Err(TrainError::LoaderPanicked {
                        step: step + 1,
                        micro,
                        reason: crate::train::error::panic_text(panic.as_ref()),
                    }
                    .into())
                });
                // The producer may have stopped; then nobody waits for this result.
                let _ = done_tx.send((seq, item));
            });
            issued += 1;
        }
        if sent == issued {
            return;
        }
        let item = loop {
            if let Some(item) = finished.remove(&sent) {
                break item;
            }
            // Every job sends once, and this thread holds a sender, so this waits for a job.
            let Ok((seq, item)) = done_rx.recv() else {
                return;
            };
            finished.insert(seq, item);
        };
        sent += 1;
        // The online teacher's part, in order on this thread (see `Decoded`).
        let item = item.and_then(|d| d.with_teacher(&schedule.data, &schedule.cfg));
        // After an error nothing more is sent; jobs still running finish into a closed channel.
        let failed = item.is_err();
        if tx.send(item).is_err() || failed || stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full channel.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
