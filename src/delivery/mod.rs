//! The delivery engine, the only module that makes outbound HTTP: the scheduler thread (lanes
//! and timing wheel over sled's queue), a pool of blocking worker threads sharing one ureq agent,
//! and the janitor (hold expiry, retention purge). Pure parts: `backoff`, `signer`, `wheel`.

pub mod backoff;
pub mod concurrency;
pub mod http;
mod janitor;
mod recorder;
mod scheduler;
pub mod signer;
pub mod test_send;
pub mod wheel;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::SharedConfig;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::{DeliveryId, Micros, Millis, SubscriptionId};
use crate::store::Storage;

pub use worker::decide;

/// How long a lane waits after a refused claim (`Progress::Busy`) before it dispatches again.
pub const BUSY_RETRY: Duration = Duration::from_millis(50);

/// How long a lane waits after storage failed one of its jobs (`Progress::Requeue`: a lost
/// database, low space) before it dispatches again. Until the health monitor (1 s period) pauses
/// dispatch, this is what keeps a fault from turning into a tight loop of failing claims.
pub const FAULT_RETRY: Duration = Duration::from_millis(250);

/// Lets one log line through per `period_ms` and counts the ones it held back.
pub(crate) struct LogThrottle {
    period_ms: u64,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub(crate) const fn new(period_ms: u64) -> LogThrottle {
        LogThrottle { period_ms, last_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines held back since the last one let through)` when a line may be logged at
    /// `now_ms` (Unix ms), `None` when it is held back (and counted).
    pub(crate) fn take_turn(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = now_ms >= last.saturating_add(self.period_ms) || last == 0;
        if due && self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// One attempt to make: the queue key of a due delivery.
#[derive(Debug, Clone)]
pub struct Job {
    pub subscription_id: SubscriptionId,
    pub due: Millis,
    pub delivery_id: DeliveryId,
    /// Dispatched from a suspect lane (counted against the suspect budget).
    pub suspect: bool,
    /// Dispatched from a lane the scheduler knows to be rate limited: the worker reports the
    /// claim's answer at once ([`Progress::Claimed`]) even when the limit is gone.
    pub limited: bool,
    /// When the scheduler handed it to the workers (Unix µs): an attempt dispatched before the
    /// subscription's adaptive limit was last cut does not cut it again
    /// ([`concurrency::AdaptiveLimit`]).
    pub dispatched_at: Micros,
}

/// What the workers and the recorder tell the scheduler about a job.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The attempt's HTTP exchange is over: the subscription's concurrency slot (and a suspect
    /// budget slot) is free, `endpoint_ok` says whether it answered 2xx and `latency` how long
    /// the exchange took (what the adaptive limit learns from). The key stays in flight until
    /// [`Progress::Recorded`].
    Attempted { job: Job, endpoint_ok: bool, latency: Duration },
    /// The outcome is stored (or storing it failed and the key is still queued): the key is no
    /// longer in flight.
    Recorded { job: Job },
    /// No attempt was made (stale key, deleted subscription, now held): slot and key are free.
    Skipped { job: Job },
    /// Storage failed a read or write this job needed (a host fault: low space, read-only, a lost
    /// database): the key is still queued in storage and goes back into its lane, which waits
    /// [`FAULT_RETRY`] and then tries again once dispatch resumes. The slot is freed too when
    /// `slot_free` (no [`Progress::Attempted`] was sent for it).
    Requeue { job: Job, slot_free: bool },
    /// The claim was refused for now (the subscription's cap is reached across nodes): slot and
    /// key are free, the key goes back into its lane and the lane waits [`BUSY_RETRY`] before it
    /// dispatches again.
    Busy { job: Job },
    /// Another claim holds this delivery until `until` (Unix ms, `store::Claim::Taken`): the
    /// slot is free and the lane goes on with its other keys at once; this key stays out of the
    /// lane (refills skip it) until `until`, then goes back in.
    Taken { job: Job, until: Millis },
    /// The claim was granted and the attempt is starting (sent before the HTTP exchange, for a
    /// rate-limited subscription or a job of a lane believed limited): the subscription's next
    /// attempt may start at `next_start` (Unix µs), or at any time when `None` (no limit now).
    /// Slot and key stay taken.
    Claimed { job: Job, next_start: Option<Micros> },
    /// The claim was refused by the subscription's rate limit: slot and key are free, the key
    /// goes back into its lane, and the lane dispatches nothing before `until` (Unix µs).
    Limited { job: Job, until: Micros },
}

impl Progress {
    /// The job this report is about.
    pub fn job(&self) -> &Job {
        match self {
            Progress::Attempted { job, .. }
            | Progress::Recorded { job }
            | Progress::Skipped { job }
            | Progress::Requeue { job, .. }
            | Progress::Busy { job }
            | Progress::Taken { job, .. }
            | Progress::Claimed { job, .. }
            | Progress::Limited { job, .. } => job,
        }
    }
}

/// The running engine. It stops on the daemon's shutdown signal (`Health::begin_shutdown`,
/// carried by every thread's `BeatGuard`); [`Engine::shutdown`] raises it and drains.
pub struct Engine {
    scheduler: Option<JoinHandle<()>>,
    janitor: Option<JoinHandle<()>>,
    recorder: Option<JoinHandle<()>>,
    workers_exited: crossbeam_channel::Receiver<()>,
    worker_count: usize,
    health: Arc<Health>,
    test_sender: Arc<test_send::TestSender>,
}

impl Engine {
    /// Starts the scheduler, `delivery.workers` worker threads and the janitor.
    /// `notices` receives what the store announces after each queue write (the daemon made the
    /// channel and gave the sending end to the store).
    pub fn start(
        store: Arc<dyn Storage>,
        notices: crossbeam_channel::Receiver<crate::store::QueueNotices>,
        config: Arc<SharedConfig>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> std::io::Result<Engine> {
        let current = config.current();
        let agent = http::build_agent(&http::HttpClientConfig {
            timeout: current.delivery.timeout,
            allow_private_targets: current.delivery.allow_private_targets,
            user_agent: format!("atender-webhooks/{}", env!("CARGO_PKG_VERSION")),
            max_idle_connections: current.delivery.workers.max(16),
        });
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let (outcomes_tx, outcomes_rx) = crossbeam_channel::unbounded();
        let (exited_tx, workers_exited) = crossbeam_channel::unbounded();
        let test_sender = Arc::new(test_send::TestSender::new(agent.clone(), current.delivery.timeout));
        let context = Arc::new(worker::WorkerContext {
            store: store.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            agent,
        });
        // An attempt is bounded by the HTTP timeout; preparing and signing take microseconds.
        let attempt_limit = current.delivery.timeout + Duration::from_secs(30);
        for index in 0..current.delivery.workers {
            let (context, jobs, outcomes, done, exited) =
                (context.clone(), jobs_rx.clone(), outcomes_tx.clone(), done_tx.clone(), exited_tx.clone());
            let beat = health.register(format!("delivery-{index}"), attempt_limit);
            std::thread::Builder::new().name(format!("delivery-{index}")).spawn(move || {
                worker::run(context, jobs, outcomes, done, beat);
                let _ = exited.send(());
            })?;
        }
        // The recorder exits once every worker dropped its sender and the last outcome is stored.
        drop(outcomes_tx);
        let recorder_store = store.clone();
        let recorder_beat = health.register("recorder", Duration::from_secs(30));
        let recorder = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || recorder::run(recorder_store, metrics, outcomes_rx, done_tx, recorder_beat))?;
        let scheduler =
            scheduler::Scheduler::new(store.clone(), config.clone(), jobs_tx, current.delivery.workers);
        let scheduler_beat = health.register("scheduler", Duration::from_secs(30));
        let scheduler = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || scheduler.run(notices, done_rx, scheduler_beat))?;
        let janitor_beat = health.register("janitor", janitor::SWEEP_LIMIT);
        let janitor = std::thread::Builder::new()
            .name("janitor".into())
            .spawn(move || janitor::run(store, config, janitor_beat))?;
        health.set_delivery_running(true);
        Ok(Engine {
            scheduler: Some(scheduler),
            janitor: Some(janitor),
            recorder: Some(recorder),
            workers_exited,
            worker_count: current.delivery.workers,
            health,
            test_sender,
        })
    }

    /// Test sends through the engine's agent (`POST /v1/webhooks/{id}/test`), for the API.
    pub fn test_sender(&self) -> Arc<dyn crate::probe::TestSend> {
        self.test_sender.clone()
    }

    /// Stops dispatching, lets attempts in flight finish within `grace`, and returns whether
    /// every worker finished in time. Deliveries not attempted stay queued in storage.
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.health.set_delivery_running(false);
        // The signal wakes the scheduler and the janitor; the scheduler drops the job sender,
        // so idle workers wake and exit, and busy ones take no further job.
        self.health.begin_shutdown();
        let deadline = Instant::now() + grace;
        // The janitor may be in the middle of a long sweep: it is not waited for past the grace
        // (its writes are idempotent and the next start sweeps again).
        for handle in [self.scheduler.take(), self.janitor.take()].into_iter().flatten() {
            join_until(handle, deadline);
        }
        let mut exited = 0;
        while exited < self.worker_count {
            match self.workers_exited.recv_deadline(deadline) {
                Ok(()) => exited += 1,
                Err(_) => break,
            }
        }
        let all_exited = exited == self.worker_count;
        // With every worker gone the recorder has the last outcomes and then stops.
        if all_exited {
            if let Some(recorder) = self.recorder.take() {
                return join_until(recorder, deadline + Duration::from_secs(5));
            }
        }
        all_exited
    }
}

/// Joins `handle` if it finishes by `deadline`; otherwise leaves the thread running (the
/// process is about to exit) and returns false.
fn join_until(handle: JoinHandle<()>, deadline: Instant) -> bool {
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.join().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_throttle_lets_one_line_a_period_through_and_counts_the_rest() {
        let throttle = LogThrottle::new(1_000);
        assert_eq!(throttle.take_turn(5_000), Some(0));
        assert_eq!(throttle.take_turn(5_001), None);
        assert_eq!(throttle.take_turn(5_999), None);
        assert_eq!(throttle.take_turn(6_000), Some(2), "the two held back are counted");
        assert_eq!(throttle.take_turn(6_500), None);
        assert_eq!(throttle.take_turn(9_000), Some(1));
    }
}
