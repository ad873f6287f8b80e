//! Preparing the next batch while this one is used: `tag`, `eval --checkpoint`, `teacher` and the
//! training run's validation decode a batch of images on the CPU and then score or encode it. Done
//! one after the other, the decoder waits for the model and the model for the decoder; [`in_order`]
//! decodes batch k + 1 on a thread of its own while batch k is scored, so that, where the model leaves
//! cores to the decoder (it runs on a GPU, or on fewer threads than the process's cores), a batch
//! takes about the longer of the two rather than their sum ([`batches_ahead`]).

use std::sync::mpsc;

/// How many batches to decode ahead of a model that runs on `model_threads` CPU threads, or on an
/// accelerator (`None`): one where the model leaves some of this process's cores idle (its share
/// where a launcher runs several on the machine, [`crate::train::config::process_cores`]), for the
/// decoder to fill; none where the model alone keeps them all busy and the two would only take
/// turns. On 2 cores, a CPU model on both ran 0.95× as fast with a batch decoded ahead as in turn;
/// on one core 1.26× (decoder on both) and 1.56× (decoder on the other) (docs/PERFORMANCE.md,
/// "Decoding the next batch while this one is scored").
pub fn batches_ahead(model_threads: Option<usize>) -> usize {
    ahead_of(model_threads, crate::train::config::process_cores())
}

/// [`batches_ahead`] for a process with `cores`.
fn ahead_of(model_threads: Option<usize>, cores: usize) -> usize {
    match model_threads {
        Some(threads) if threads >= cores => 0,
        _ => 1,
    }
}

/// Runs `produce(0..count)` on a background thread, at most `depth` results ahead of `consume`,
/// which gets them in order on the calling thread. `depth` 0 runs both on the calling thread, one
/// after the other.
///
/// A `consume` error is returned at once: the producer stops after the result it is working on
/// (results it made ahead are dropped). An error of the producer's own is part of its `T`, which
/// `consume` sees in order, as it would have without the thread.
pub fn in_order<T, E>(
    count: usize,
    depth: usize,
    produce: impl Fn(usize) -> T + Sync,
    mut consume: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
{
    if depth == 0 {
        return (0..count).try_for_each(|k| consume(k, produce(k)));
    }
    std::thread::scope(|scope| {
        // `depth` results wait in the channel; the producer works on one more.
        let (tx, rx) = mpsc::sync_channel(depth - 1);
        let produce = &produce;
        scope.spawn(move || {
            for k in 0..count {
                // The consumer has hung up (it failed): nothing more is wanted.
                if tx.send(produce(k)).is_err() {
                    break;
                }
            }
        });
        // Dropping `rx` on an early return lets the producer's next send fail, so the scope's join
        // waits for one result at most.
        rx.into_iter()
            .enumerate()
            .try_for_each(|(k, item)| consume(k, item))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn results_reach_the_consumer_in_order_whatever_the_depth() {
        for depth in 0..4 {
            let mut seen = Vec::new();
            in_order(
                50,
                depth,
                |k| {
                    // Later items finish sooner, so an unordered pipeline would reorder them.
                    std::thread::sleep(std::time::Duration::from_micros(((50 - k) * 20) as u64));
                    k * k
                },
                |k, v| {
                    seen.push((k, v));
                    Ok::<_, ()>(())
                },
            )
            .unwrap();
            assert_eq!(
                seen,
                (0..50).map(|k| (k, k * k)).collect::<Vec<_>>(),
                "depth {depth}"
            );
        }
    }

    #[test]
    fn the_next_result_is_made_while_the_consumer_works() {
        // Item k + 1 is produced while item k is consumed: the producer records which items it
        // had started when each consume began.
        let started = AtomicUsize::new(0);
        let mut ahead = Vec::new();
        in_order(
            5,
            1,
            |k| {
                started.fetch_max(k + 1, Ordering::SeqCst);
                k
            },
            |k, _| {
                // Give the producer time to start the next item.
                std::thread::sleep(std::time::Duration::from_millis(30));
                ahead.push(started.load(Ordering::SeqCst).saturating_sub(k + 1));
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        assert_eq!(&ahead[..4], &[1, 1, 1, 1], "{ahead:?}");
        assert_eq!(ahead[4], 0, "nothing after the last item");
    }

    #[test]
    fn a_consumer_error_stops_the_producer_soon() {
        let produced = Mutex::new(Vec::new());
        let err = in_order(
            1000,
            2,
            |k| {
                produced.lock().unwrap().push(k);
                k
            },
            |k, _| {
                if k == 3 {
                    Err(format!("item {k}"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert_eq!(err, "item 3");
        let produced = produced.into_inner().unwrap();
        // Items 0..=3 consumed, at most `depth` waiting and one in the producer's hands.
        assert!(produced.len() <= 4 + 2 + 1, "{produced:?}");
    }

    #[test]
    fn producer_errors_arrive_in_their_place() {
        let mut seen = Vec::new();
        let err = in_order(
            10,
            1,
            |k| if k == 6 { Err(k) } else { Ok(k) },
            |_, v: Result<usize, usize>| {
                let v = v?;
                seen.push(v);
                Ok::<_, usize>(())
            },
        )
        .unwrap_err();
        assert_eq!(err, 6);
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn batches_are_decoded_ahead_unless_the_model_keeps_every_core_busy() {
        assert_eq!(ahead_of(None, 16), 1, "a model on a GPU");
        assert_eq!(ahead_of(Some(2), 2), 0, "the model on every core");
        assert_eq!(ahead_of(Some(1), 2), 1, "a core left for the decoder");
        assert_eq!(ahead_of(Some(32), 16), 0);
        // This process: the cores it may use.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(batches_ahead(None), 1);
        assert_eq!(batches_ahead(Some(cores)), 0);
        assert_eq!(batches_ahead(Some(1)), usize::from(cores > 1));
    }

    #[test]
    fn nothing_to_do_calls_nothing() {
        let mut called = false;
        in_order(
            0,
            1,
            |k| k,
            |_, _| {
                called = true;
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        assert!(!called);
    }
}
