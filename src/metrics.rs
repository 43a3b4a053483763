//! Prometheus metrics, in a registry owned by the daemon (no global recorder), rendered in the
//! text exposition format by `GET /metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// How an attempt ended, as counted by `atender_delivery_attempts_total{result=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptLabel {
    Success,
    HttpError,
    Timeout,
    ConnectError,
    Refused,
}

impl AttemptLabel {
    fn as_str(self) -> &'static str {
        match self {
            AttemptLabel::Success => "success",
            AttemptLabel::HttpError => "http_error",
            AttemptLabel::Timeout => "timeout",
            AttemptLabel::ConnectError => "connect_error",
            AttemptLabel::Refused => "refused",
        }
    }
}

/// Values read from storage and health just before rendering.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Deliveries queued (`pending`) and waiting for a paused or disabled subscription (`held`).
    pub pending: usize,
    pub held: usize,
    /// Group-commit flushes and the writes they made durable, since start-up.
    pub flushes: u64,
    pub durable_writes: u64,
    /// Storage errors by kind (`no_space`, `read_only`, `io`, `corrupt`, `stalled`).
    pub storage_errors: Vec<(&'static str, u64)>,
    /// Storage takes writes (no fault, space above the reserve, probe on time).
    pub storage_healthy: bool,
    /// Bytes free on the data dir's file system (`None`: storage is not on a local one).
    pub free_bytes: Option<u64>,
    /// Internal threads registered, and how many are exited or stalled.
    pub threads: usize,
    pub unhealthy_threads: usize,
    /// Errors each kind of thread met and went on after.
    pub thread_errors: Vec<(String, u64)>,
}

/// The daemon's metrics. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    /// Metrics of a data dir's file system (sled), rendered only when the backend reports a
    /// reading: on PostgreSQL a constant 0 of free space would trip free-space alerts.
    file_system: Registry,
    events_published: Counter,
    attempts: Family<Labels, Counter>,
    attempt_duration: Histogram,
    in_flight: Gauge,
    queue_depth: Family<Labels, Gauge>,
    subscriptions_disabled_total: Counter,
    group_commit_flushes: Counter<u64, AtomicU64>,
    group_commit_requests: Counter<u64, AtomicU64>,
    storage_errors: Family<Labels, Counter<u64, AtomicU64>>,
    storage_healthy: Gauge,
    storage_free_bytes: Gauge,
    threads: Family<Labels, Gauge>,
    thread_errors: Family<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("atender");
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Events accepted (answered 202), duplicates excluded",
            events_published.clone(),
        );
        let attempts = Family::<Labels, Counter>::default();
        registry.register("delivery_attempts", "Delivery attempts by result", attempts.clone());
        let attempt_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "delivery_attempt_duration_seconds",
            "Duration of delivery attempts",
            attempt_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("delivery_in_flight", "Attempts in flight now", in_flight.clone());
        let queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "deliveries_queued",
            "Deliveries waiting, by state (pending, held)",
            queue_depth.clone(),
        );
        let subscriptions_disabled_total = Counter::default();
        registry.register(
            "subscriptions_disabled",
            "Subscriptions disabled automatically after failures or 410 Gone",
            subscriptions_disabled_total.clone(),
        );
        let group_commit_flushes = Counter::default();
        registry.register(
            "storage_flushes",
            "Group-commit flushes (fsyncs) of the data dir",
            group_commit_flushes.clone(),
        );
        let group_commit_requests = Counter::default();
        registry.register(
            "storage_durable_writes",
            "Writes made durable by group commit (divide by flushes for the mean group size)",
            group_commit_requests.clone(),
        );
        let storage_errors = Family::<Labels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "storage_errors",
            "Storage errors by kind: no_space and read_only (writes refused, 503), io (fatal: the daemon exits for a restart), corrupt, stalled (a flush did not return in time)",
            storage_errors.clone(),
        );
        let storage_healthy = Gauge::default();
        registry.register(
            "storage_healthy",
            "1 while storage takes writes (free space above the reserve, no fault), else 0",
            storage_healthy.clone(),
        );
        let storage_free_bytes = Gauge::default();
        let mut file_system = Registry::with_prefix("atender");
        file_system.register(
            "storage_free_bytes",
            "Bytes free on the data dir's file system at the last reading",
            storage_free_bytes.clone(),
        );
        let threads = Family::<Labels, Gauge>::default();
        registry.register(
            "threads",
            "Internal threads by state: healthy, or unhealthy (exited, or busy on one item past its limit)",
            threads.clone(),
        );
        let thread_errors = Family::<Vec<(&'static str, String)>, Counter<u64, AtomicU64>>::default();
        registry.register(
            "thread_errors",
            "Errors each kind of internal thread met and went on after (a refused or failed write, a failed sweep)",
            thread_errors.clone(),
        );
        // Every result exists from the start at 0, so alert rules have a series to evaluate.
        for label in [
            AttemptLabel::Success,
            AttemptLabel::HttpError,
            AttemptLabel::Timeout,
            AttemptLabel::ConnectError,
            AttemptLabel::Refused,
        ] {
            drop(attempts.get_or_create(&vec![("result", label.as_str())]));
        }
        Metrics {
            registry,
            events_published,
            attempts,
            attempt_duration,
            in_flight,
            queue_depth,
            subscriptions_disabled_total,
            group_commit_flushes,
            group_commit_requests,
            storage_errors,
            storage_healthy,
            storage_free_bytes,
            threads,
            thread_errors,
            file_system,
        }
    }

    pub fn events_published(&self, count: u64) {
        self.events_published.inc_by(count);
    }

    pub fn attempt_finished(&self, label: AttemptLabel, seconds: f64) {
        self.attempts.get_or_create(&vec![("result", label.as_str())]).inc();
        self.attempt_duration.observe(seconds);
    }

    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    pub fn subscription_disabled(&self) {
        self.subscriptions_disabled_total.inc();
    }

    /// Renders the text format; the values read from storage and health are set just before.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.queue_depth.get_or_create(&vec![("state", "pending")]).set(snapshot.pending as i64);
        self.queue_depth.get_or_create(&vec![("state", "held")]).set(snapshot.held as i64);
        catch_up(&self.group_commit_flushes, snapshot.flushes);
        catch_up(&self.group_commit_requests, snapshot.durable_writes);
        for &(kind, count) in &snapshot.storage_errors {
            catch_up(&self.storage_errors.get_or_create(&vec![("kind", kind)]), count);
        }
        self.storage_healthy.set(i64::from(snapshot.storage_healthy));
        if let Some(free) = snapshot.free_bytes {
            self.storage_free_bytes.set(free.min(i64::MAX as u64) as i64);
        }
        let healthy = snapshot.threads.saturating_sub(snapshot.unhealthy_threads);
        self.threads.get_or_create(&vec![("state", "healthy")]).set(healthy as i64);
        self.threads.get_or_create(&vec![("state", "unhealthy")]).set(snapshot.unhealthy_threads as i64);
        for (kind, errors) in &snapshot.thread_errors {
            catch_up(&self.thread_errors.get_or_create(&vec![("thread", kind.clone())]), *errors);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        if snapshot.free_bytes.is_some() {
            let _ = encode_registry(&mut text, &self.file_system);
        }
        let _ = encode_eof(&mut text);
        text
    }
}

/// Moves a counter mirrored from elsewhere up to `total`.
fn catch_up(counter: &Counter<u64, AtomicU64>, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}
