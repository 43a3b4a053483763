//! The recorder thread: stores attempt outcomes in groups, then tells the scheduler.
//!
//! Workers hand each outcome here and go on to their next attempt. The recorder takes every
//! outcome waiting (up to [`MAX_GROUP`]) and records them in one transaction, so the cost of a
//! sled transaction — and of the subscription record every outcome updates — is paid once per
//! group instead of once per attempt, and workers of one busy subscription never conflict on
//! that record. The worker already freed the subscription's concurrency slot when the HTTP
//! exchange ended; only after the group committed does the scheduler learn the keys are no
//! longer in flight, so a refill can never dispatch them a second time.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::delivery::{Job, LogThrottle, Progress};
use crate::health::BeatGuard;
use crate::metrics::Metrics;
use crate::model::now_millis;
use crate::store::{AttemptRecord, Outcomes};

/// One line a second at most for outcome groups a host fault failed (a lost database, a full
/// disk); see the workers' `FAULT_LOG`.
static FAULT_LOG: LogThrottle = LogThrottle::new(1_000);

/// Most outcomes recorded by one transaction. sled's global write lock is held for its duration
/// and every worker's reads wait on it: 256 made attempts stall for milliseconds (BENCHMARKS.md).
const MAX_GROUP: usize = 32;

/// An attempt's outcome on its way to storage.
pub struct Attempted {
    pub job: Job,
    pub record: AttemptRecord,
}

/// Records outcomes until every worker has gone (the channel closed) and the queue is empty:
/// the recorder serves the workers, so it outlives the shutdown signal until the last outcome
/// accepted is stored.
pub fn run(
    store: Arc<dyn Outcomes>,
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
        // Whether the keys go back into their lanes: the outcomes were not stored because of a
        // host fault (the queue keys are still in storage; the attempts are made again).
        let requeue = match store.record_attempts(&records) {
            Ok(disabled) => {
                // Counted from what was stored: a subscription two outcomes disable counts once.
                (0..disabled).for_each(|_| metrics.subscription_disabled());
                false
            }
            // A host fault fails every group until delivery pauses: one line a second says so.
            Err(err) if err.is_host_fault() => {
                beat.error();
                if let Some(suppressed) = FAULT_LOG.take_turn(now_millis()) {
                    tracing::error!(
                        error = %err,
                        outcomes = records.len(),
                        suppressed,
                        "cannot record delivery attempts (`suppressed`: groups a host fault also failed since the last such line)"
                    );
                }
                true
            }
            Err(err) => {
                beat.error();
                tracing::error!(error = %err, outcomes = records.len(), "cannot record delivery attempts");
                false
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::model::{now_millis, Attempt, Subscription};
    use crate::store::{AttemptDecision, DueWork, NewEvent, SledStore, Subscriptions, Vitals};
    use std::time::Duration;

    #[test]
    fn outcomes_are_stored_then_reported_and_a_disable_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let now = now_millis();
        let subscription = Subscription::new("t", "s", "https://a.example/", vec!["a.b".into()], now);
        store.create_subscription(&subscription, 10).unwrap();
        let events: Vec<NewEvent> = (0..2).map(|_| NewEvent::plain("a.b", now)).collect();
        store.publish_now("t", true, &events, now).unwrap();
        let queued = store.queued_after(&subscription.id, None, 10).unwrap();

        let (outcomes_tx, outcomes) = crossbeam_channel::unbounded();
        let (done, progress) = crossbeam_channel::unbounded();
        let metrics = Arc::new(Metrics::new());
        // Two 410s for one subscription, as two workers would report them.
        for (due, delivery_id) in &queued {
            let job = Job {
                subscription_id: subscription.id.clone(),
                due: *due,
                delivery_id: delivery_id.clone(),
                suspect: true,
                limited: false,
                dispatched_at: 0,
            };
            let record = AttemptRecord {
                subscription_id: subscription.id.clone(),
                due: *due,
                delivery_id: delivery_id.clone(),
                attempt: Attempt {
                    at: now,
                    duration_ms: 3,
                    response_code: Some(410),
                    error: Some("HTTP 410".into()),
                },
                decision: AttemptDecision::GiveUp { disable_reason: "gone".into() },
            };
            outcomes_tx.send(Attempted { job, record }).unwrap();
        }
        drop(outcomes_tx);
        let health = Health::default();
        run(
            store.clone(),
            metrics.clone(),
            outcomes,
            done,
            health.register("recorder", Duration::from_secs(5)),
        );

        let reported: Vec<Progress> = progress.try_iter().collect();
        assert_eq!(reported.len(), 2);
        assert!(reported.iter().all(|p| matches!(p, Progress::Recorded { .. })));
        let stored = store.subscription_by_id(&subscription.id).unwrap().unwrap();
        assert!(!stored.is_active);
        assert_eq!(stored.disabled_at, Some(now + 3), "disabled when the attempt ended");
        let text = metrics.render(&crate::metrics::Snapshot {
            pending: 0,
            held: 0,
            flushes: 0,
            durable_writes: 0,
            storage_errors: store.figures().errors,
            storage_healthy: true,
            free_bytes: None,
            threads: 0,
            unhealthy_threads: 0,
            thread_errors: Vec::new(),
        });
        assert!(text.contains("atender_subscriptions_disabled_total 1\n"), "{text}");
    }
}
