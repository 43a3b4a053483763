//! Liveness and readiness shared by the parts of the daemon: read by `/healthz`, `/readyz`, the
//! systemd watchdog and `/metrics`.
//!
//! Every long-lived thread registers a [`Beat`] and marks itself busy while it works on an item
//! and idle while it waits for the next one. A thread is *unhealthy* when it has exited while
//! the daemon is not shutting down (a panic included: the [`BeatGuard`] it holds marks the exit
//! as it unwinds) or has been busy on one item for longer than its limit. Waiting for work is
//! never unhealthy, however long it lasts.
//!
//! The same guard carries the daemon's one [`Shutdown`] signal to every thread: a thread that
//! finds its own work (scheduler, workers, janitor, storage monitor) stops when it is raised
//! ([`BeatGuard::stopping`], [`BeatGuard::stop_signal`], [`BeatGuard::rest`]); a thread that
//! serves requests others wait on (publish writer, group commit, recorder) keeps serving until
//! its last client is gone, so the work accepted before the signal still completes.
//!
//! A *fatal* storage fault (an error after which the storage engine cannot go on in this
//! process, see ARCHITECTURE.md "Host faults") is recorded here once; the serving loop waits for
//! it and exits non-zero so the service manager restarts the daemon.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::model::{now_millis, Millis};

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const EXITED: u8 = 2;

/// One thread's heartbeat: idle, busy since an instant, or exited.
#[derive(Debug)]
pub struct Beat {
    name: String,
    /// Longest time one item may keep the thread busy before it counts as stalled.
    limit: Duration,
    state: AtomicU8,
    /// When the current state began (Unix ms).
    since: AtomicU64,
    /// Errors the thread met and went on after (a failed write, a failed sweep).
    errors: AtomicU64,
}

impl Beat {
    /// The thread took an item of work.
    pub fn busy(&self) {
        self.since.store(now_millis(), Ordering::Relaxed);
        self.state.store(BUSY, Ordering::Release);
    }

    /// The thread waits for its next item.
    pub fn idle(&self) {
        self.state.store(IDLE, Ordering::Release);
        self.since.store(now_millis(), Ordering::Relaxed);
    }

    /// Name given at registration (`publish-writer`, `delivery-3`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind of thread: the name without a trailing `-<number>` (`delivery-3` → `delivery`).
    pub fn kind(&self) -> &str {
        match self.name.rsplit_once('-') {
            Some((kind, number)) if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => kind,
            _ => &self.name,
        }
    }

    /// What is wrong with this thread at `now`, if anything.
    fn problem(&self, now: Millis, shutting_down: bool) -> Option<String> {
        let since = self.since.load(Ordering::Relaxed);
        match self.state.load(Ordering::Acquire) {
            EXITED if !shutting_down => Some(format!("thread {} has exited", self.name)),
            BUSY if now.saturating_sub(since) > self.limit.as_millis() as Millis => Some(format!(
                "thread {} has been busy on one item for {} s (limit {} s)",
                self.name,
                now.saturating_sub(since) / 1000,
                self.limit.as_secs()
            )),
            _ => None,
        }
    }
}

/// The daemon's shutdown signal: raised once, seen by every thread and task holding a clone.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<ShutdownInner>);

#[derive(Debug)]
struct ShutdownInner {
    raised: AtomicBool,
    /// Dropped when raised: a closed channel is ready at once in every `select!` that waits on
    /// the receiver, however many threads wait.
    sender: Mutex<Option<crossbeam_channel::Sender<()>>>,
    receiver: crossbeam_channel::Receiver<()>,
    /// The same for async tasks.
    watch: tokio::sync::watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Shutdown(Arc::new(ShutdownInner {
            raised: AtomicBool::new(false),
            sender: Mutex::new(Some(sender)),
            receiver,
            watch: tokio::sync::watch::Sender::new(false),
        }))
    }
}

impl Shutdown {
    /// Raises the signal (again: no effect).
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::SeqCst);
        self.0.sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        self.0.watch.send_replace(true);
    }

    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::SeqCst)
    }

    /// A channel that becomes ready (disconnected) when the signal is raised, for
    /// `crossbeam_channel::select!`. Never carries a message.
    pub fn channel(&self) -> &crossbeam_channel::Receiver<()> {
        &self.0.receiver
    }

    /// Waits up to `period`; returns false as soon as the signal is raised (at once if it is).
    pub fn rest(&self, period: Duration) -> bool {
        !self.is_raised() && self.0.receiver.recv_timeout(period).is_err_and(|err| err.is_timeout())
    }

    /// Resolves once the signal is raised.
    pub async fn raised(&self) {
        let mut watch = self.0.watch.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = watch.wait_for(|raised| *raised).await;
    }
}

/// Held by a thread for its whole life: dropping it (return or panic) marks the thread exited.
/// Carries the daemon's [`Shutdown`] signal.
#[derive(Debug)]
pub struct BeatGuard(Arc<Beat>, Shutdown);

impl BeatGuard {
    /// True once the daemon is shutting down.
    pub fn stopping(&self) -> bool {
        self.1.is_raised()
    }

    /// Ready (disconnected) once the daemon is shutting down, for `select!`.
    pub fn stop_signal(&self) -> &crossbeam_channel::Receiver<()> {
        self.1.channel()
    }

    /// Waits idle up to `period`; false as soon as the daemon is shutting down.
    pub fn rest(&self, period: Duration) -> bool {
        self.1.rest(period)
    }

    pub fn busy(&self) {
        self.0.busy();
    }

    pub fn idle(&self) {
        self.0.idle();
    }

    /// The thread met an error and goes on (counted in `atender_thread_errors_total`).
    pub fn error(&self) {
        self.0.errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for BeatGuard {
    fn drop(&mut self) {
        self.0.since.store(now_millis(), Ordering::Relaxed);
        self.0.state.store(EXITED, Ordering::Release);
    }
}

/// Set by the parts that make the daemon ready and alive; read by the API and the watchdog.
#[derive(Debug, Default)]
pub struct Health {
    delivery_running: AtomicBool,
    shutdown: Shutdown,
    beats: Mutex<Vec<Arc<Beat>>>,
    fatal: OnceLock<String>,
    fatal_notify: tokio::sync::Notify,
}

impl Health {
    pub fn set_delivery_running(&self, running: bool) {
        self.delivery_running.store(running, Ordering::SeqCst);
    }

    pub fn delivery_running(&self) -> bool {
        self.delivery_running.load(Ordering::SeqCst)
    }

    /// Raises the shutdown signal every registered thread carries.
    pub fn begin_shutdown(&self) {
        self.shutdown.raise();
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_raised()
    }

    /// The shutdown signal, for tasks that are not registered threads (the HTTP server).
    pub fn shutdown_signal(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Registers the calling thread under `name`; it starts idle. Keep the guard for the
    /// thread's whole life.
    pub fn register(&self, name: impl Into<String>, limit: Duration) -> BeatGuard {
        let beat = Arc::new(Beat {
            name: name.into(),
            limit,
            state: AtomicU8::new(IDLE),
            since: AtomicU64::new(now_millis()),
            errors: AtomicU64::new(0),
        });
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).push(beat.clone());
        BeatGuard(beat, self.shutdown.clone())
    }

    /// Every thread problem now (empty: all alive and making progress).
    pub fn problems(&self) -> Vec<String> {
        let now = now_millis();
        let stopping = self.shutting_down();
        let mut problems: Vec<String> = self
            .beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|beat| beat.problem(now, stopping))
            .collect();
        if let Some(reason) = self.fatal_reason() {
            problems.insert(0, format!("storage failed: {reason}"));
        }
        problems
    }

    /// Threads registered and how many of them are unhealthy now, for `/metrics`.
    pub fn thread_counts(&self) -> (usize, usize) {
        let now = now_millis();
        let stopping = self.shutting_down();
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        let unhealthy = beats.iter().filter(|beat| beat.problem(now, stopping).is_some()).count();
        (beats.len(), unhealthy)
    }

    /// Errors met by each kind of thread since start-up, in registration order of the kinds.
    pub fn thread_errors(&self) -> Vec<(String, u64)> {
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        let mut kinds: Vec<(String, u64)> = Vec::new();
        for beat in beats.iter() {
            let errors = beat.errors.load(Ordering::Relaxed);
            match kinds.iter_mut().find(|(kind, _)| kind == beat.kind()) {
                Some((_, total)) => *total += errors,
                None => kinds.push((beat.kind().to_owned(), errors)),
            }
        }
        kinds
    }

    /// Records a fault storage cannot recover from in this process. The first reason wins.
    pub fn fatal(&self, reason: impl Into<String>) {
        if self.fatal.set(reason.into()).is_ok() {
            self.fatal_notify.notify_waiters();
            self.fatal_notify.notify_one();
        }
    }

    /// Whether a fatal fault is recorded (cheap: no copy of the reason).
    pub fn has_failed(&self) -> bool {
        self.fatal.get().is_some()
    }

    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal.get().cloned()
    }

    /// Resolves with the reason once a fatal fault is recorded.
    pub async fn wait_fatal(&self) -> String {
        loop {
            let notified = self.fatal_notify.notified();
            if let Some(reason) = self.fatal_reason() {
                return reason;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_threads_are_healthy_however_long_they_wait() {
        let health = Health::default();
        let guard = health.register("a", Duration::from_millis(0));
        guard.0.since.store(0, Ordering::Relaxed);
        assert!(health.problems().is_empty());
    }

    #[test]
    fn a_thread_busy_past_its_limit_or_gone_is_a_problem() {
        let health = Health::default();
        let busy = health.register("busy", Duration::from_secs(5));
        busy.busy();
        assert!(health.problems().is_empty());
        busy.0.since.store(now_millis() - 6_000, Ordering::Relaxed);
        assert_eq!(health.problems(), ["thread busy has been busy on one item for 6 s (limit 5 s)"]);
        busy.idle();
        let gone = health.register("gone", Duration::from_secs(5));
        drop(gone);
        assert_eq!(health.problems(), ["thread gone has exited"]);
        assert_eq!(health.thread_counts(), (2, 1));
        busy.error();
        busy.error();
        assert_eq!(health.thread_errors(), [("busy".to_owned(), 2), ("gone".to_owned(), 0)]);
        // Exits are expected once shutdown began.
        health.begin_shutdown();
        assert!(health.problems().is_empty());
    }

    #[test]
    fn one_shutdown_signal_reaches_every_thread_and_task() {
        let health = Health::default();
        let beats: Vec<BeatGuard> =
            (0..3).map(|n| health.register(format!("t-{n}"), Duration::from_secs(1))).collect();
        assert!(beats.iter().all(|beat| !beat.stopping()));
        assert!(beats[0].rest(Duration::from_millis(1)), "a rest without the signal runs its course");
        let waiters: Vec<_> = beats
            .into_iter()
            .map(|beat| {
                std::thread::spawn(move || {
                    crossbeam_channel::select! {
                        recv(beat.stop_signal()) -> _ => {}
                        default(Duration::from_secs(30)) => panic!("the signal never came"),
                    }
                    assert!(beat.stopping());
                    assert!(!beat.rest(Duration::from_secs(30)), "no rest once stopping");
                })
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let signal = health.shutdown_signal().clone();
        let task = runtime.spawn(async move { signal.raised().await });
        health.begin_shutdown();
        health.begin_shutdown();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap() });
        assert!(health.shutting_down());
    }

    #[test]
    fn a_panicking_thread_marks_itself_exited() {
        let health = Arc::new(Health::default());
        let inner = health.clone();
        let _ = std::thread::spawn(move || {
            let _beat = inner.register("worker", Duration::from_secs(5));
            panic!("boom");
        })
        .join();
        assert_eq!(health.problems(), ["thread worker has exited"]);
    }

    #[test]
    fn the_first_fatal_reason_wins() {
        let health = Health::default();
        health.fatal("disk on fire");
        health.fatal("second");
        assert_eq!(health.fatal_reason().as_deref(), Some("disk on fire"));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(runtime.block_on(health.wait_fatal()), "disk on fire");
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn numbered_threads_share_a_kind() {
        let health = Health::default();
        for name in ["delivery-0", "delivery-11", "publish-writer", "group-commit"] {
            let beat = health.register(name, Duration::from_secs(1));
            beat.error();
            std::mem::forget(beat);
        }
        assert_eq!(
            health.thread_errors(),
            [("delivery".to_owned(), 2), ("publish-writer".to_owned(), 1), ("group-commit".to_owned(), 1)]
        );
    }
}
