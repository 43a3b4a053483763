//! The only module that knows sled: the trees, their key encodings (`keys`), the versioned
//! value codec (`codec`), atomic multi-tree transactions and group commit (`commit`).
//!
//! Everything above this module sees domain types (`crate::model`) and [`StoreError`]. Writes
//! that put work into the delivery queue announce it on the [`QueueNotice`] channel after they
//! commit, so the delivery engine learns of new work without the API knowing the engine exists.

mod cache;
mod codec;
mod commit;
mod deliveries;
mod events;
mod index;
mod keys;
mod space;
mod subscriptions;
mod writer;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sled::transaction::TransactionError;

pub use crate::lifecycle::AttemptDecision;
pub use codec::IdempotencyRecord;
pub use commit::{CommitStats, GroupCommit};
pub use deliveries::AttemptContext;
pub use deliveries::AttemptRecord;
pub use events::{NewEvent, PublishRequest, Published};
pub use space::{SpaceState, StorageErrors, WriteClass};

use crate::health::Health;
use crate::model::Millis;

/// What can go wrong in storage. Clients only ever learn "internal" or "unavailable".
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage is shutting down")]
    Unavailable,
    #[error("the tenant's subscription limit is reached")]
    LimitExceeded,
    /// Free space is below the reserve (`storage.min_free_bytes`): the write was refused before
    /// it reached the storage engine. Clears by itself when space is freed.
    #[error("storage is low on space: {free} bytes free, reserve {reserve} bytes")]
    NoSpace { free: u64, reserve: u64 },
    /// The data dir's file system is mounted read-only.
    #[error("the data dir's file system is read-only")]
    ReadOnly,
    /// A flush did not return within [`DURABLE_WAIT`]: the write may or may not become durable.
    #[error("storage did not confirm the write in time")]
    Stalled,
    /// A client idempotency id (`events[index].id`, or `id` when `index` is `None`) was used
    /// within the window for a different event.
    #[error("idempotency id {client_id:?} was already used for a different event")]
    IdempotencyConflict { index: Option<usize>, client_id: String },
}

impl StoreError {
    /// True for the faults of the host (space, read-only, I/O, stall), as opposed to answers
    /// about the request or the data.
    pub fn is_host_fault(&self) -> bool {
        matches!(
            self,
            StoreError::NoSpace { .. } | StoreError::ReadOnly | StoreError::Io(_) | StoreError::Stalled
        )
    }
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Corruption { .. } => StoreError::Corrupt(err.to_string()),
            _ => StoreError::Io(err.to_string()),
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(err: TransactionError<StoreError>) -> Self {
        match err {
            TransactionError::Abort(err) => err,
            TransactionError::Storage(err) => err.into(),
        }
    }
}

/// New work in the `queue` tree, announced after the write committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueNotice {
    /// One delivery became due at `due`.
    Queued { subscription_id: String, due: Millis, delivery_id: String },
    /// Many deliveries of one subscription were queued (held ones released): rescan it.
    Rescan { subscription_id: String },
}

/// Bytes of sled's page cache; sled's own default (1 GiB) is far more than a webhook daemon
/// needs and would make resident memory grow with the data.
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// Longest a caller waits for its write to become durable before it is answered
/// [`StoreError::Stalled`] (a 503): a flush that does not return is a host fault, never a hang.
pub const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How late the storage monitor's probe may be before storage counts as stalled.
pub const PROBE_OVERDUE: std::time::Duration = std::time::Duration::from_secs(10);

/// Default free-space reserve of the data dir's file system (`storage.min_free_bytes`).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 * 1024 * 1024;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bytes that must stay free on the data dir's file system for client writes (0: no guard).
    pub min_free_bytes: u64,
    /// Where the store's threads report their heartbeats and fatal faults.
    pub health: Arc<Health>,
    /// Where committed queue writes are announced. The daemon creates the channel and hands the
    /// receiving end to the delivery engine; the store never reads it. The default is a channel
    /// nobody receives from (notices are dropped), for tools and tests without an engine.
    pub notices: crossbeam_channel::Sender<QueueNotice>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            health: Arc::default(),
            notices: crossbeam_channel::unbounded().0,
        }
    }
}

/// The sled trees and every synchronous operation on them (the `impl Trees` blocks of the
/// submodules). [`Store`] adds the threads that combine writes and derefs to this.
#[derive(Clone)]
pub struct Trees {
    db: sled::Db,
    subscriptions: sled::Tree,
    tenant_subscriptions: sled::Tree,
    tenant_counts: sled::Tree,
    deleted_subscriptions: sled::Tree,
    events: sled::Tree,
    deliveries: sled::Tree,
    queue: sled::Tree,
    held: sled::Tree,
    subscription_deliveries: sled::Tree,
    finished: sled::Tree,
    idempotency: sled::Tree,
    idempotency_expiry: sled::Tree,
    notices: crossbeam_channel::Sender<QueueNotice>,
    subscription_cache: Arc<cache::SubscriptionCache>,
    event_cache: Arc<cache::EventCache>,
    space: Arc<space::SpaceGuard>,
    errors: Arc<StorageErrors>,
    health: Arc<Health>,
}

/// Handle to the database. Cheap to clone; every clone shares the same trees and threads. The
/// threads (group commit, publish writer) stop when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    trees: Trees,
    commit: GroupCommit,
    writer: writer::PublishWriter,
    monitor: Arc<space::Monitor>,
    /// When a stalled write was last logged (Unix ms).
    stall_logged: Arc<std::sync::atomic::AtomicU64>,
}

impl std::ops::Deref for Store {
    type Target = Trees;

    fn deref(&self) -> &Trees {
        &self.trees
    }
}

impl Store {
    /// Opens (or creates) the database in `dir` with the default options (see
    /// [`Store::open_with`]).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, &StoreOptions::default())
    }

    /// Opens (or creates) the database in `dir` and starts its group-commit, publish-writer and
    /// storage-monitor threads.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| StoreError::Io(format!("cannot create {}: {err}", dir.display())))?;
        remove_unfinished_snapshots(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .flush_every_ms(Some(500))
            .open()?;
        let data_file = std::fs::File::open(dir.join("db"))
            .map_err(|err| StoreError::Io(format!("cannot open the data file: {err}")))?;
        let health = options.health.clone();
        let errors = Arc::new(StorageErrors::default());
        let space = Arc::new(space::SpaceGuard::new(dir, options.min_free_bytes, errors.clone()));
        let commit = GroupCommit::start(db.clone(), data_file, health.clone(), errors.clone())
            .map_err(|err| StoreError::Io(format!("cannot start the group-commit thread: {err}")))?;
        let tree = |name: &str| db.open_tree(name);
        let trees = Trees {
            subscriptions: tree("subscriptions")?,
            tenant_subscriptions: tree("tenant_subscriptions")?,
            tenant_counts: tree("tenant_counts")?,
            deleted_subscriptions: tree("deleted_subscriptions")?,
            events: tree("events")?,
            deliveries: tree("deliveries")?,
            queue: tree("queue")?,
            held: tree("held")?,
            subscription_deliveries: tree("subscription_deliveries")?,
            finished: tree("finished")?,
            idempotency: tree("idempotency")?,
            idempotency_expiry: tree("idempotency_expiry")?,
            db,
            notices: options.notices.clone(),
            subscription_cache: Arc::default(),
            event_cache: Arc::default(),
            space: space.clone(),
            errors: errors.clone(),
            health: health.clone(),
        };
        let writer = writer::PublishWriter::start(trees.clone())
            .map_err(|err| StoreError::Io(format!("cannot start the publish-writer thread: {err}")))?;
        let monitor = space::Monitor::start(trees.db.clone(), space, health, errors)
            .map_err(|err| StoreError::Io(format!("cannot start the storage-monitor thread: {err}")))?;
        Ok(Store { trees, commit, writer, monitor: Arc::new(monitor), stall_logged: Arc::default() })
    }

    /// How storage stands, for `/readyz` and the `atender_storage_healthy` gauge: `ok`,
    /// `low_space`, `read_only`, `stalled` (the monitor's probe is more than [`PROBE_OVERDUE`]
    /// late: sled is stuck) or `failed` (a fatal fault), with the reason in words. Reads no
    /// sled state, so it answers while storage hangs.
    pub fn status(&self) -> (&'static str, Option<String>) {
        if let Some(reason) = self.health.fatal_reason() {
            return ("failed", Some(reason));
        }
        let last_probe = self.monitor.last_probe_ok.load(Ordering::Relaxed);
        if crate::model::now_millis().saturating_sub(last_probe) > PROBE_OVERDUE.as_millis() as Millis {
            let reason = format!("a storage write has not returned for over {} s", PROBE_OVERDUE.as_secs());
            return ("stalled", Some(reason));
        }
        match self.space.state() {
            SpaceState::Ok => ("ok", None),
            SpaceState::ReadOnly => ("read_only", self.space.refusal()),
            SpaceState::Low | SpaceState::Critical => ("low_space", self.space.refusal()),
        }
    }

    /// Stores a publish request together with whatever other requests are waiting (one
    /// transaction for the group). Not yet durable: the caller awaits [`Store::durable`].
    /// Answers [`StoreError::Stalled`] when the writer does not answer within [`DURABLE_WAIT`].
    pub async fn publish_grouped(&self, request: PublishRequest) -> Result<Vec<Published>, StoreError> {
        match tokio::time::timeout(DURABLE_WAIT, self.writer.publish(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(self.stalled()),
        }
    }

    /// [`StoreError::Stalled`], logged at most once per [`DURABLE_WAIT`] however many
    /// requests are waiting, so a hung disk shows in the log as well as in `/readyz`.
    fn stalled(&self) -> StoreError {
        let now = crate::model::now_millis();
        let last = self.stall_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DURABLE_WAIT.as_millis() as Millis
            && self.stall_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                wait_seconds = DURABLE_WAIT.as_secs(),
                "storage did not confirm writes in time (a hung or overloaded disk?); answering 503"
            );
        }
        StoreError::Stalled
    }

    /// Resolves once every write made before the call is on disk (shared with other callers).
    pub async fn durable(&self) -> Result<(), StoreError> {
        match self.commit.durable().await {
            Err(StoreError::Stalled) => Err(self.stalled()),
            other => other,
        }
    }

    /// [`Store::durable`] for plain threads.
    pub fn durable_blocking(&self) -> Result<(), StoreError> {
        self.commit.durable_blocking()
    }

    pub fn commit_stats(&self) -> &CommitStats {
        self.commit.stats()
    }
}

impl Trees {
    /// Bytes free on the data dir's file system at the last reading.
    pub fn free_bytes(&self) -> u64 {
        self.space.free_bytes()
    }

    /// Storage errors by kind since start-up.
    pub fn errors(&self) -> &StorageErrors {
        &self.errors
    }

    /// True while delivery should not start attempts whose outcome could not be stored.
    pub fn dispatch_paused(&self) -> bool {
        matches!(self.space.state(), SpaceState::Critical | SpaceState::ReadOnly) || self.health.has_failed()
    }

    /// Admits a write of `class` (see [`WriteClass`]) or refuses it with the reason.
    pub(crate) fn admit(&self, class: WriteClass) -> Result<(), StoreError> {
        self.admit_bytes(class, 0)
    }

    /// [`Trees::admit`] for a write of about `bytes`, taken off the free-space reading at once.
    pub(crate) fn admit_bytes(&self, class: WriteClass, bytes: u64) -> Result<(), StoreError> {
        if self.health.has_failed() {
            return Err(StoreError::Unavailable);
        }
        self.space.admit_bytes(class, bytes)
    }

    /// Counts an error by kind and, for an I/O error of the storage engine, records the fatal
    /// fault (sled cannot go on after one). Returns the error for `?`.
    pub(crate) fn note(&self, err: StoreError) -> StoreError {
        // Refusals were counted when they were made.
        if !matches!(err, StoreError::NoSpace { .. } | StoreError::ReadOnly) {
            self.errors.count(&err);
        }
        if let StoreError::Io(detail) = &err {
            self.health.fatal(format!("the storage engine failed and cannot go on: {detail}"));
        }
        err
    }

    /// Deliveries per queue state: (pending, held), counted from the index trees.
    pub fn queue_depth(&self) -> (usize, usize) {
        (self.queue.len(), self.held.len())
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn announce(&self, notice: QueueNotice) {
        // Without a receiver (no engine, or the engine stopped) a notice has nobody to wake.
        let _ = self.notices.send(notice);
    }
}

/// Removes snapshot files sled did not finish writing. sled writes a snapshot as
/// `snap.<lsn>.generating` and renames it when complete, but its start-up also reads a
/// leftover `.generating` file as a snapshot: one left empty by a full disk (a start-up while
/// the disk was full) made every later start fail with "stored data is corrupt". Such a file
/// is incomplete by construction; sled recovers from its log and writes a new one.
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|err| StoreError::Io(format!("cannot read {}: {err}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "removing a snapshot file sled did not finish writing");
            std::fs::remove_file(entry.path())
                .map_err(|err| StoreError::Io(format!("cannot remove {}: {err}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// Turns a failed decode inside a transaction into an abort carrying the error.
fn abort_on<T>(
    result: Result<T, StoreError>,
) -> Result<T, sled::transaction::ConflictableTransactionError<StoreError>> {
    result.map_err(sled::transaction::ConflictableTransactionError::Abort)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_snapshot_left_by_a_full_disk_does_not_stop_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
        let store = Store::open_with(dir.path(), &options).unwrap();
        let subscription =
            crate::model::Subscription::new("t", "s", "https://a.example/", vec!["a.b".into()], 1);
        store.create_subscription(&subscription, 10).unwrap();
        store.durable_blocking().unwrap();
        drop(store);
        // What sled leaves when it cannot write a snapshot at start-up: an empty file.
        std::fs::write(dir.path().join("snap.00000000FFFFFFFF.generating"), b"").unwrap();
        let mut tries = 0;
        let store = loop {
            // sled's file lock goes with the last handle of the first store.
            match Store::open_with(dir.path(), &options) {
                Ok(store) => break store,
                Err(StoreError::Io(err)) if tries < 100 && err.contains("lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(err) => panic!("{err}"),
            }
        };
        assert!(store.subscription_by_id(&subscription.id).unwrap().is_some());
    }
}
