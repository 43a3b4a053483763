//! Group commit: many writers share one flush of the sled log plus one `fdatasync` of its data
//! file, so "acknowledged means on disk" costs one fsync per group, not per request.
//!
//! A dedicated thread waits for the first request, takes every request that queued up meanwhile,
//! makes them all durable with one flush, and answers them all. While it flushes, the next group
//! gathers. `Db::flush` alone uses `sync_file_range`, which does not reach the device cache, hence
//! the explicit `sync_data` of the data file afterwards.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::oneshot;

use crate::health::Health;
use crate::store::embedded::space::StorageErrors;
use crate::store::embedded::{StoreError, DURABLE_WAIT};

/// A flush running longer than this marks the group-commit thread stalled (`/healthz` fails).
const FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// Someone waiting for the next flush: a task or a plain thread.
enum Waiter {
    Task(oneshot::Sender<Result<(), StoreError>>),
    Thread(std::sync::mpsc::SyncSender<Result<(), StoreError>>),
}

impl Waiter {
    fn answer(self, result: Result<(), StoreError>) {
        // A waiter that gave up (its request was cancelled or timed out) is fine to ignore.
        let _ = match self {
            Waiter::Task(sender) => sender.send(result).map_err(drop),
            Waiter::Thread(sender) => sender.send(result).map_err(drop),
        };
    }
}

/// Counters of the group-commit thread, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Flushes performed.
    pub flushes: AtomicU64,
    /// Requests made durable (the sum of all group sizes).
    pub requests: AtomicU64,
}

/// Handle to the group-commit thread. Dropping every handle stops the thread.
#[derive(Clone)]
pub struct GroupCommit {
    requests: crossbeam_channel::Sender<Waiter>,
    stats: Arc<CommitStats>,
}

impl GroupCommit {
    /// Starts the flusher thread for `db`, whose data file is `data_file`. A failed flush is a
    /// fatal fault (recorded in `health`): sled cannot go on after a failed write.
    pub fn start(
        db: sled::Db,
        data_file: File,
        health: Arc<Health>,
        errors: Arc<StorageErrors>,
    ) -> std::io::Result<GroupCommit> {
        let (requests, incoming) = crossbeam_channel::unbounded::<Waiter>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new().name("group-commit".into()).spawn(move || {
            let beat = health.register("group-commit", FLUSH_LIMIT);
            while let Ok(first) = incoming.recv() {
                beat.busy();
                let mut group = vec![first];
                group.extend(incoming.try_iter());
                let result = make_durable(&db, &data_file);
                if let Err(err) = &result {
                    beat.error();
                    errors.count(err);
                    health.fatal(format!("flushing storage failed: {err}"));
                }
                thread_stats.flushes.fetch_add(1, Ordering::Relaxed);
                thread_stats.requests.fetch_add(group.len() as u64, Ordering::Relaxed);
                for waiter in group {
                    waiter.answer(result.clone());
                }
                beat.idle();
            }
        })?;
        Ok(GroupCommit { requests, stats })
    }

    /// Resolves once everything written before the call is on disk, or with
    /// [`StoreError::Stalled`] after [`DURABLE_WAIT`] (the flush did not return: a host fault).
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (waiter, done) = oneshot::channel();
        self.requests.send(Waiter::Task(waiter)).map_err(|_| StoreError::Unavailable)?;
        match tokio::time::timeout(DURABLE_WAIT, done).await {
            Ok(answer) => answer.map_err(|_| StoreError::Unavailable)?,
            Err(_) => Err(StoreError::Stalled),
        }
    }

    /// The same, for callers on a plain thread (or tokio's blocking pool).
    pub fn durable_blocking(&self) -> Result<(), StoreError> {
        let (waiter, done) = std::sync::mpsc::sync_channel(1);
        self.requests.send(Waiter::Thread(waiter)).map_err(|_| StoreError::Unavailable)?;
        match done.recv_timeout(DURABLE_WAIT) {
            Ok(answer) => answer,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(StoreError::Stalled),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Unavailable),
        }
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

fn make_durable(db: &sled::Db, data_file: &File) -> Result<(), StoreError> {
    db.flush().map_err(StoreError::from)?;
    data_file.sync_data().map_err(|err| StoreError::Io(err.to_string()))
}
