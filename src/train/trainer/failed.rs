//! What a libtorch failure in the middle of a run (out of memory, most often) saves before the
//! run ends: the state after the steps taken, where the parameters and moments still hold it. In a
//! data-parallel run the ranks fail together or one alone while the others wait in a collective;
//! the failing ranks agree through the rendezvous store which one of them writes the checkpoint
//! (every rank of an unsharded run holds the same parameters and moments), the others wait for it
//! and quote where it is.

use crate::train::dist::ProcessGroup;
use crate::train::error::TrainError;
use crate::train::failure::{self, LibtorchFailure};
use crate::train::run::checkpoint_dir;
use std::time::Duration;

use super::{Doing, Trainer};

impl Trainer {
    /// The error for a libtorch failure caught in the middle of the run
    /// ([`crate::train::failure::catch`]). Where the parameters and moments still hold the state
    /// after the steps taken (not during the optimizer update or a checkpoint, nor in a run whose
    /// ranks each keep a share of the optimizer state), that state is saved first, so that
    /// `--resume` loses nothing; the error says where it is and, for an exhausted memory, which
    /// batch to make smaller.
    pub fn failed(&mut self, failure: LibtorchFailure) -> crate::Error {
        let doing = std::mem::take(&mut self.doing);
        self.bar.abandon();
        let during = match doing {
            Doing::Step | Doing::Update => format!("step {}", self.step + 1),
            Doing::Validation => format!("validation at step {}", self.step),
            Doing::Checkpoint => format!("checkpoint at step {}", self.step),
            Doing::Between => format!("after step {}", self.step),
        };
        let mut then = self.save_after_failure(doing);
        if failure.out_of_memory {
            then.push_str(&self.smaller_batch_hint(doing));
        }
        TrainError::LibtorchFailed {
            during,
            failure,
            then,
        }
        .into()
    }

    /// What [`Trainer::failed`] could save, as a sentence.
    fn save_after_failure(&mut self, doing: Doing) -> String {
        let newest = match crate::train::run::latest_checkpoint(&self.run)
            .ok()
            .flatten()
        {
            Some(dir) => format!("the newest checkpoint is {}", dir.display()),
            None => "no checkpoint of this run is written yet".into(),
        };
        let sharded = self.group.is_some() && self.opt.partition().is_some();
        let why_not = match doing {
            _ if sharded => Some(
                "each rank holds only its share of the optimizer state (shard_optimizer), and the \
                 other ranks cannot join in gathering it now",
            ),
            Doing::Update => {
                Some("the optimizer update was under way, so the parameters may be half-updated")
            }
            Doing::Checkpoint => Some("it was the checkpoint that failed"),
            _ => None,
        };
        if self.step == 0 && doing != Doing::Checkpoint {
            return format!(
                "Nothing was saved (no step was taken); `--auto-resume` starts the run again in {}.",
                self.out.display()
            );
        }
        if let Some(why) = why_not {
            return format!("Nothing was saved ({why}); {newest}.");
        }
        // Ranks failing in the same step agree on one writer (two would write the same folder).
        let saving = format!("state after step {}", self.step);
        if let Some(g) = self.group.as_mut() {
            match g.first_to(&saving) {
                Some(true) => {}
                Some(false) => {
                    let timeout = g.timeout();
                    return saved_by_another_rank(
                        g.hear(&saving, timeout),
                        &saving,
                        timeout,
                        &newest,
                    );
                }
                None => {
                    return format!(
                        "Nothing was saved (the rendezvous store is gone, so the failing ranks \
                         cannot agree which of them writes the checkpoint); {newest}."
                    )
                }
            }
        }
        let sentence = self.save_state_taken(doing, &newest);
        if let Some(g) = self.group.as_mut() {
            let rank = g.rank();
            g.tell(&saving, &format!("{rank}\n{sentence}"));
        }
        sentence
    }

    /// Saves the state after the steps taken (unless a checkpoint of it is written or, by rank 0,
    /// being written) and says where it is.
    fn save_state_taken(&mut self, doing: Doing, newest: &str) -> String {
        // A checkpoint of this step written before the failure (the one a resume began from, or
        // the periodic one just taken; in a data-parallel run rank 0 may still be writing it, and
        // finishes it before it exits) already holds it.
        let dir = checkpoint_dir(&self.run, self.step);
        let written = self.writer.wait().is_ok_and(|_| dir.is_dir())
            || (self.group.is_some() && self.last_saved.as_ref() == Some(&dir));
        let state = self.state_at(self.step, self.last_wall_s);
        let saved = match written {
            true => Ok(Ok(dir)),
            // Not `save`: the other ranks cannot join its collectives now.
            false => failure::catch(|| self.write_here(self.opt.state_tensors(), &state, true)),
        };
        match saved {
            // After the last step only the validation that failed is left for a resume to do.
            Ok(Ok(dir)) if self.is_done() => {
                let mut sentence = format!(
                    "Every step is taken: the trained state after step {} is saved in {}",
                    self.step,
                    dir.display()
                );
                if doing == Doing::Validation {
                    sentence.push_str(&format!(
                        "; `tagfix train --resume {}` runs the validation that failed",
                        self.out.display()
                    ));
                }
                sentence + "."
            }
            Ok(Ok(dir)) => format!(
                "The state after step {} is saved in {}; continue with `tagfix train --resume {}`.",
                self.step,
                dir.display(),
                self.out.display()
            ),
            Ok(Err(e)) => format!(
                "Saving the state after step {} failed too ({}); {newest}.",
                self.step,
                crate::error::report(&e)
            ),
            Err(again) => format!(
                "Saving the state after step {} failed too ({again}); {newest}.",
                self.step
            ),
        }
    }

    /// For an exhausted memory: the smaller batch that needs less of it.
    fn smaller_batch_hint(&self, doing: Doing) -> String {
        match doing {
            Doing::Step | Doing::Update => {
                let batch = self.config.batch_size;
                let world = self.group.as_ref().map_or(1, ProcessGroup::world_size);
                // A size the run accepts: it divides the batch, into micro-batches every rank has
                // as many of.
                let smaller = (1..self.micro)
                    .rev()
                    .find(|&m| batch % m == 0 && super::open::shares(batch, m, world).is_ok());
                let mut hint = format!(
                    " Each micro-batch of {} images ran out of memory: a smaller --micro-batch-size needs \
                     less (the batch size, {batch}, stays: its micro-batches accumulate to it)",
                    self.micro
                );
                if let Some(m) = smaller {
                    hint.push_str(&format!(", e.g. --micro-batch-size {m}"));
                }
                hint + "."
            }
            Doing::Validation => {
                // Each rank validates its share of the images.
                let world = self.group.as_ref().map_or(1, ProcessGroup::world_size);
                let batch = self
                    .validator
                    .as_ref()
                    .map_or(0, |v| v.batch.min(v.set.image_paths.len().div_ceil(world)));
                format!(
                    " Validating {batch} images at a time ran out of memory: `--set val_batch_size=N` \
                     with a smaller N needs less."
                )
            }
            Doing::Checkpoint | Doing::Between => String::new(),
        }
    }
}

/// What another failing rank, the one that writes the checkpoint `saving`
/// ([`ProcessGroup::first_to`]), said about it (`told`, waited for up to `timeout`, as long as a
/// collective would wait).
fn saved_by_another_rank(
    told: Option<String>,
    saving: &str,
    timeout: Duration,
    newest: &str,
) -> String {
    match told {
        Some(told) => match told.split_once('\n') {
            Some((rank, sentence)) => format!("Rank {rank} saves for every rank. {sentence}"),
            None => told,
        },
        None => format!(
            "Another failing rank was to save the {saving}, and did not say within {} whether it \
             could; {newest}.",
            humantime::format_duration(timeout)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saving_ranks_word_is_quoted_or_its_silence_named() {
        let (saving, minute) = ("state after step 6", Duration::from_secs(60));
        let told = Some("0\nThe state after step 6 is saved in c/step-00000006.".to_string());
        assert_eq!(
            saved_by_another_rank(
                told,
                saving,
                minute,
                "the newest checkpoint is c/step-00000004"
            ),
            "Rank 0 saves for every rank. The state after step 6 is saved in c/step-00000006."
        );
        assert_eq!(
            saved_by_another_rank(
                None,
                saving,
                minute,
                "the newest checkpoint is c/step-00000004"
            ),
            "Another failing rank was to save the state after step 6, and did not say within 1m \
             whether it could; the newest checkpoint is c/step-00000004."
        );
    }
}
