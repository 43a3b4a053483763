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
mod keys;
mod subscriptions;
mod writer;

use std::path::Path;
use std::sync::Arc;

use sled::transaction::TransactionError;

pub use codec::IdempotencyRecord;
pub use commit::{CommitStats, GroupCommit};
pub use deliveries::AttemptRecord;
pub use deliveries::{AttemptContext, AttemptDecision};
pub use events::{NewEvent, PublishRequest, Published};

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
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        StoreError::Io(err.to_string())
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
    notices_rx: crossbeam_channel::Receiver<QueueNotice>,
    subscription_cache: Arc<cache::SubscriptionCache>,
    event_cache: Arc<cache::EventCache>,
}

/// Handle to the database. Cheap to clone; every clone shares the same trees and threads. The
/// threads (group commit, publish writer) stop when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    trees: Trees,
    commit: GroupCommit,
    writer: writer::PublishWriter,
}

impl std::ops::Deref for Store {
    type Target = Trees;

    fn deref(&self) -> &Trees {
        &self.trees
    }
}

impl Store {
    /// Opens (or creates) the database in `dir` and starts its group-commit and publish-writer
    /// threads.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| StoreError::Io(format!("cannot create {}: {err}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .flush_every_ms(Some(500))
            .open()?;
        let data_file = std::fs::File::open(dir.join("db"))
            .map_err(|err| StoreError::Io(format!("cannot open the data file: {err}")))?;
        let commit = GroupCommit::start(db.clone(), data_file)
            .map_err(|err| StoreError::Io(format!("cannot start the group-commit thread: {err}")))?;
        let (notices, notices_rx) = crossbeam_channel::unbounded();
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
            notices,
            notices_rx,
            subscription_cache: Arc::default(),
            event_cache: Arc::default(),
        };
        let writer = writer::PublishWriter::start(trees.clone())
            .map_err(|err| StoreError::Io(format!("cannot start the publish-writer thread: {err}")))?;
        Ok(Store { trees, commit, writer })
    }

    /// Stores a publish request together with whatever other requests are waiting (one
    /// transaction for the group). Not yet durable: the caller awaits [`Store::durable`].
    pub async fn publish_grouped(&self, request: PublishRequest) -> Result<Vec<Published>, StoreError> {
        self.writer.publish(request).await
    }

    /// Resolves once every write made before the call is on disk (shared with other callers).
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await
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
    /// The channel on which queue writes are announced (for the delivery engine).
    pub fn notices(&self) -> crossbeam_channel::Receiver<QueueNotice> {
        self.notices_rx.clone()
    }

    /// Whether the database answers reads.
    pub fn is_healthy(&self) -> bool {
        self.subscriptions.first().is_ok()
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
        // The receiver lives as long as the store itself, so this cannot fail.
        let _ = self.notices.send(notice);
    }
}

/// Turns a failed decode inside a transaction into an abort carrying the error.
fn abort_on<T>(
    result: Result<T, StoreError>,
) -> Result<T, sled::transaction::ConflictableTransactionError<StoreError>> {
    result.map_err(sled::transaction::ConflictableTransactionError::Abort)
}
