//! The recorder thread: stores attempt outcomes in groups, then tells the scheduler.
//!
//! Workers hand each outcome here and go on to their next attempt. The recorder takes every
//! outcome waiting (up to [`MAX_GROUP`]) and records them in one transaction, so the cost of a
//! sled transaction — and of the subscription record every outcome updates — is paid once per
//! group instead of once per attempt, and workers of one busy subscription never conflict on
//! that record. The worker already freed the subscription's concurrency slot when the HTTP
//! exchange ended; only after the group committed does the scheduler learn the keys are no
//! longer in flight, so a refill can never dispatch them a second time.

use crossbeam_channel::{Receiver, Sender};

use crate::delivery::{Job, Progress};
use std::sync::Arc;

use crate::health::BeatGuard;
use crate::metrics::Metrics;
use crate::store::{AttemptRecord, Store, StoreError};

/// Most outcomes recorded by one transaction. sled's global write lock is held for its duration
/// and every worker's reads wait on it: 256 made attempts stall for milliseconds (BENCHMARKS.md).
const MAX_GROUP: usize = 32;

/// An attempt's outcome on its way to storage.
pub struct Attempted {
    pub job: Job,
    pub record: AttemptRecord,
}

/// Records outcomes until every worker has gone (the channel closed) and the queue is empty.
pub fn run(
    store: Store,
    metrics: Arc<Metrics>,
    outcomes: Receiver<Attempted>,
    done: Sender<Progress>,
    beat: BeatGuard,
) {
    while let Ok(first) = outcomes.recv() {
        beat.busy();
        let (jobs, records): (Vec<Job>, Vec<AttemptRecord>) = std::iter::once(first)
            .chain(outcomes.try_iter().take(MAX_GROUP - 1))
            .map(|outcome| (outcome.job, outcome.record))
            .unzip();
        let recorded = store.record_attempts(&records).map_err(|err| store.note(err));
        if let Ok(disabled) = recorded {
            // Counted from what was stored: a subscription two outcomes disable counts once.
            (0..disabled).for_each(|_| metrics.subscription_disabled());
        }
        if let Err(err) = &recorded {
            // The queue keys are still in storage: the deliveries are attempted again later.
            tracing::error!(error = %err, outcomes = records.len(), "cannot record delivery attempts");
        }
        let requeue = recorded.as_ref().is_err_and(StoreError::is_host_fault);
        for job in jobs {
            // The scheduler is gone only when the engine is stopping.
            let _ = done.send(match requeue {
                // Dispatch waits until storage takes writes again, then repeats the attempt.
                true => Progress::Requeue { job, slot_free: false },
                false => Progress::Recorded { job },
            });
        }
        beat.idle();
    }
}
