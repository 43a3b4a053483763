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

use tokio::sync::oneshot;

use crate::store::StoreError;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

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
    /// Starts the flusher thread for `db`, whose data file is `data_file`.
    pub fn start(db: sled::Db, data_file: File) -> std::io::Result<GroupCommit> {
        let (requests, incoming) = crossbeam_channel::unbounded::<Waiter>();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new().name("group-commit".into()).spawn(move || {
            while let Ok(first) = incoming.recv() {
                let mut group = vec![first];
                group.extend(incoming.try_iter());
                let result = make_durable(&db, &data_file);
                thread_stats.flushes.fetch_add(1, Ordering::Relaxed);
                thread_stats.requests.fetch_add(group.len() as u64, Ordering::Relaxed);
                for waiter in group {
                    // A waiter that gave up (its request was cancelled) is fine to ignore.
                    let _ = waiter.send(result.clone());
                }
            }
        })?;
        Ok(GroupCommit { requests, stats })
    }

    /// Resolves once everything written before the call is on disk.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (waiter, done) = oneshot::channel();
        self.requests.send(waiter).map_err(|_| StoreError::Unavailable)?;
        done.await.map_err(|_| StoreError::Unavailable)?
    }

    /// The same, for callers on a plain thread.
    pub fn durable_blocking(&self) -> Result<(), StoreError> {
        let (waiter, done) = oneshot::channel();
        self.requests.send(waiter).map_err(|_| StoreError::Unavailable)?;
        done.blocking_recv().map_err(|_| StoreError::Unavailable)?
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }
}

fn make_durable(db: &sled::Db, data_file: &File) -> Result<(), StoreError> {
    db.flush().map_err(StoreError::from)?;
    data_file.sync_data().map_err(|err| StoreError::Io(err.to_string()))
}
