//! The embedded backend: sled trees in the data dir, the default. The only module that knows
//! sled: the trees, their key encodings (`keys`), the stored records (`records`) and their
//! versioned codec (`codec`), atomic multi-tree transactions, group commit (`commit`), the
//! publish writer (`writer`), the free-space guard and storage monitor (`space`).
//!
//! [`Trees`] holds the trees and every synchronous operation on them (the `impl Trees` blocks
//! of the submodules); [`SledStore`] adds the threads and implements the storage interface
//! (`crate::store`'s traits) on top, waiting for durability where the interface promises it
//! and counting every error it returns.

pub(super) mod backup;
mod cache;
mod codec;
mod commit;
mod deliveries;
mod events;
mod index;
mod keys;
mod rate;
mod records;
#[cfg(test)]
mod sizing;
mod space;
mod subscriptions;
mod writer;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sled::transaction::TransactionError;

use commit::GroupCommit;
use space::{SpaceState, StorageErrors, WriteClass};

use crate::health::Health;
use crate::model::{
    Delivery, DeliveryId, DeliveryState, Event, EventId, Millis, Subscription, SubscriptionId,
};
pub(crate) use crate::store::{
    AttemptContext, AttemptRecord, NewEvent, PublishRequest, Published, QueueNotice, QueueNotices,
    StoreError, StoreOptions, DURABLE_WAIT, PROBE_OVERDUE,
};
use crate::store::{
    BoxFuture, Claim, DeliveryLog, DueWork, Outcomes, Page, Publishing, Retention, SharedKeys,
    StorageFigures, SubscriptionChange, Subscriptions, Vitals,
};

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

/// zstd level of sled's compression (see [`compressed`]): the lowest sled accepts; level 3
/// stored `sizing`'s events in no fewer bytes.
const COMPRESSION_LEVEL: i32 = 1;

/// Whether sled compresses the data dir `dir` (zstd, each page and page fragment it writes to its
/// log), given `wanted` (`[storage] compression`). Compressed, a data dir takes about a third of
/// the space (`sizing`: 2.25 KB → 0.8 KB per 300-byte event) for about twice the store's CPU per
/// event. sled fixes the choice when it creates a data dir (its `conf` file) and refuses to open
/// one with the other, so only a new data dir follows `wanted`; an existing one keeps what it
/// was made with: `conf`'s `use_compression`, and no compression for a data dir without a
/// readable `conf` but with data (versions before the setting made every data dir so).
fn compressed(dir: &Path, wanted: bool) -> bool {
    if let Ok(conf) = std::fs::read(dir.join("conf")) {
        let text = String::from_utf8_lossy(&conf);
        for line in text.lines() {
            match line.trim() {
                "use_compression: true" => return true,
                "use_compression: false" => return false,
                _ => {}
            }
        }
    }
    std::fs::metadata(dir.join("db")).map_or(wanted, |db| db.len() == 0 && wanted)
}

/// The sled trees and every synchronous operation on them (the `impl Trees` blocks of the
/// submodules). [`SledStore`] adds the threads that combine writes.
#[derive(Clone)]
pub(crate) struct Trees {
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
    notices: crossbeam_channel::Sender<QueueNotices>,
    subscription_cache: Arc<cache::SubscriptionCache>,
    /// The keys subscription secrets are sealed and opened with (see
    /// [`Trees::encode_subscription`]).
    secrets: crate::secrets::SecretKeys,
    event_cache: Arc<cache::EventCache>,
    space: Arc<space::SpaceGuard>,
    errors: Arc<StorageErrors>,
    health: Arc<Health>,
}

/// The embedded store: a sled database in the data dir, with its group-commit, publish-writer
/// and storage-monitor threads. Cheap to clone; every clone shares the same trees and
/// threads, which stop when the last handle is dropped.
#[derive(Clone)]
pub struct SledStore {
    pub(crate) trees: Trees,
    /// The data dir.
    dir: std::path::PathBuf,
    commit: GroupCommit,
    writer: writer::PublishWriter,
    monitor: Arc<space::Monitor>,
    /// When a stalled write was last logged (Unix ms).
    stall_logged: Arc<std::sync::atomic::AtomicU64>,
    /// The last granted start of each rate-limited subscription (`rateLimitPerSecond`).
    rate: Arc<rate::RateLimits>,
}

impl SledStore {
    /// Opens (or creates) the database in `dir` with the default options (see
    /// [`SledStore::open_with`]).
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, &StoreOptions::default())
    }

    /// Opens (or creates) the database in `dir` and starts its group-commit, publish-writer and
    /// storage-monitor threads. [`StoreError::Corrupt`] when `dir` holds an interrupted restore
    /// (`backup::RESTORE_MARKER`): serving half a backup would look like lost data.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<SledStore, StoreError> {
        if dir.join(backup::RESTORE_MARKER).exists() {
            return Err(StoreError::Corrupt(format!(
                "{} holds an interrupted restore (the file {} is there): restore the backup again into an empty directory",
                dir.display(),
                backup::RESTORE_MARKER
            )));
        }
        SledStore::open_unchecked(dir, options)
    }

    /// [`SledStore::open_with`] without the restore check, for the restore itself.
    fn open_unchecked(dir: &Path, options: &StoreOptions) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| StoreError::Io(format!("cannot create {}: {err}", dir.display())))?;
        remove_unfinished_snapshots(dir)?;
        let compression = compressed(dir, options.compression);
        if compression != options.compression {
            tracing::warn!(
                data_dir = %dir.display(),
                compression,
                "storage.compression applies to new data dirs only; this one keeps what it was made with \
                 (to change it, back up, restore into a new data dir with the daemon's config, and start on that)"
            );
        }
        let db = sled::Config::new()
            .path(dir)
            // `[storage] page_cache_bytes`: sled's own default (1 GiB) would make resident
            // memory grow with the data.
            .cache_capacity(options.caches.page_cache_bytes)
            .flush_every_ms(Some(500))
            .use_compression(compression)
            .compression_factor(COMPRESSION_LEVEL)
            .open()
            .map_err(|err| match err {
                // sled's file lock (`flock` of `db`): another process has this data dir open.
                // sled gives it as an `Other` error with this text.
                sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                    StoreError::Io(format!(
                        "{} is in use by another process (sled holds a lock on its data file): is a daemon \
                     already running on it? Stop it, or give this one another data_dir",
                        dir.display()
                    ))
                }
                other => other.into(),
            })?;
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
            subscription_cache: Arc::new(cache::SubscriptionCache::new(
                options.caches.subscription_cache_entries,
            )),
            secrets: options.secrets.clone(),
            event_cache: Arc::new(cache::EventCache::new(
                usize::try_from(options.caches.event_cache_bytes).unwrap_or(usize::MAX),
            )),
            space: space.clone(),
            errors: errors.clone(),
            health: health.clone(),
        };
        let writer = writer::PublishWriter::start(trees.clone())
            .map_err(|err| StoreError::Io(format!("cannot start the publish-writer thread: {err}")))?;
        let monitor = space::Monitor::start(trees.db.clone(), space, health, errors)
            .map_err(|err| StoreError::Io(format!("cannot start the storage-monitor thread: {err}")))?;
        Ok(SledStore {
            trees,
            dir: dir.to_owned(),
            commit,
            writer,
            monitor: Arc::new(monitor),
            stall_logged: Arc::default(),
            rate: Arc::new(rate::RateLimits::new(crate::model::now_micros())),
        })
    }

    /// How storage stands, for `/readyz` and the `atender_storage_healthy` gauge: `ok`,
    /// `low_space`, `read_only`, `stalled` (the monitor's probe is more than [`PROBE_OVERDUE`]
    /// late: sled is stuck) or `failed` (a fatal fault), with the reason in words. Reads no
    /// sled state, so it answers while storage hangs.
    pub fn status(&self) -> (&'static str, Option<String>) {
        if let Some(reason) = self.trees.health.fatal_reason() {
            return ("failed", Some(reason));
        }
        let last_probe = self.monitor.last_probe_ok.load(Ordering::Relaxed);
        if crate::model::now_millis().saturating_sub(last_probe) > PROBE_OVERDUE.as_millis() as Millis {
            let reason = format!("a storage write has not returned for over {} s", PROBE_OVERDUE.as_secs());
            return ("stalled", Some(reason));
        }
        match self.trees.space.state() {
            SpaceState::Ok => ("ok", None),
            SpaceState::ReadOnly => ("read_only", self.trees.space.refusal()),
            SpaceState::Low | SpaceState::Critical => ("low_space", self.trees.space.refusal()),
        }
    }

    /// Stores a publish request together with whatever other requests are waiting (one
    /// transaction for the group). Not yet durable. Answers [`StoreError::Stalled`] when the
    /// writer does not answer within [`DURABLE_WAIT`].
    async fn publish_grouped(&self, request: PublishRequest) -> Result<Vec<Published>, StoreError> {
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

    /// Resolves once every write made before the call is on disk (shared with other callers),
    /// or [`StoreError::Stalled`] after [`DURABLE_WAIT`].
    async fn durable(&self) -> Result<(), StoreError> {
        match self.commit.durable().await {
            Err(StoreError::Stalled) => Err(self.stalled()),
            other => other,
        }
    }

    /// [`SledStore::durable`] for plain threads.
    pub fn durable_blocking(&self) -> Result<(), StoreError> {
        match self.commit.durable_blocking() {
            Err(StoreError::Stalled) => Err(self.stalled()),
            other => other,
        }
    }

    /// Runs an operation on the trees, counting its error (see [`Trees::note`]).
    fn run<T>(&self, operation: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        operation(&self.trees).map_err(|err| self.trees.note(err))
    }

    /// [`SledStore::run`] for a client write: returns once the write is durable. (A failed or
    /// stalled flush was counted by the group-commit thread.)
    fn client_write<T>(&self, write: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let value = self.run(write)?;
        self.durable_blocking()?;
        Ok(value)
    }

    /// Stores `events` of `tenant_id` at once, bypassing the publish writer, and waits until
    /// they are durable (for benchmark seeding and tests).
    pub fn publish_now(
        &self,
        tenant_id: &str,
        webhooks_enabled: bool,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<Published>, StoreError> {
        self.client_write(|trees| trees.publish(tenant_id, webhooks_enabled, events, now))
    }

    /// Every stored record, in the order an import needs (subscriptions, events, deliveries,
    /// idempotency ids), for `migrate-storage`. Stops at the first error `sink` returns.
    pub(crate) fn export(
        &self,
        sink: &mut dyn FnMut(crate::store::Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use crate::store::Exported;
        let trees = &self.trees;
        for entry in trees.subscriptions.iter() {
            sink(Exported::Subscription(trees.decode_subscription(&entry?.1)?))?;
        }
        for entry in trees.events.iter() {
            sink(Exported::Event(codec::decode(&entry?.1)?))?;
        }
        for entry in trees.deliveries.iter() {
            let delivery: Delivery = codec::decode(&entry?.1)?;
            let held_since = match delivery.state {
                DeliveryState::Held => trees
                    .held
                    .get(keys::subscription_delivery(&delivery.subscription_id, &delivery.id))?
                    .and_then(|value| keys::parse_held_since(&value))
                    .or(Some(crate::model::now_millis())),
                _ => None,
            };
            sink(Exported::Delivery(delivery, held_since))?;
        }
        for entry in trees.idempotency.iter() {
            let (key, value) = entry?;
            let Some(split) = key.iter().position(|&b| b == 0) else { continue };
            let tenant_id = String::from_utf8_lossy(&key[..split]).into_owned();
            let client_id = String::from_utf8_lossy(&key[split + 1..]).into_owned();
            let record: codec::IdempotencyRecord = codec::decode(&value)?;
            let event_id = EventId::parse(&record.event_id).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "idempotency record names {:?}, not an event id",
                    record.event_id
                ))
            })?;
            sink(Exported::Idempotency {
                tenant_id,
                client_id,
                created_at: record.created_at,
                event_id,
                deliveries: record.deliveries,
                fingerprint: record.fingerprint,
            })?;
        }
        Ok(())
    }

    /// A subscription by id, whoever owns it (for tests that look behind the API).
    pub fn subscription_by_id(&self, id: &SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        self.run(|trees| trees.subscription_by_id(id))
    }
}

impl Subscriptions for SledStore {
    fn create_subscription(&self, subscription: &Subscription, max_webhooks: u32) -> Result<(), StoreError> {
        self.client_write(|trees| trees.create_subscription(subscription, max_webhooks))
    }

    fn subscription(&self, tenant_id: &str, id: &SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        self.run(|trees| trees.subscription(tenant_id, id))
    }

    fn list_subscriptions(
        &self,
        tenant_id: &str,
        limit: usize,
        cursor: Option<&SubscriptionId>,
    ) -> Result<Page<Subscription, SubscriptionId>, StoreError> {
        self.run(|trees| trees.list_subscriptions(tenant_id, limit, cursor))
    }

    fn update_subscription(
        &self,
        tenant_id: &str,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        self.client_write(|trees| trees.update_subscription(tenant_id, id, &*change))
    }

    fn delete_subscription(&self, tenant_id: &str, id: &SubscriptionId) -> Result<bool, StoreError> {
        let deleted = self.client_write(|trees| trees.delete_subscription(tenant_id, id))?;
        if deleted {
            self.rate.forget(id);
        }
        Ok(deleted)
    }
}

impl Publishing for SledStore {
    fn publish(&self, request: PublishRequest) -> BoxFuture<'_, Result<Vec<Published>, StoreError>> {
        // The publish writer counts its own errors, the group-commit thread its flushes'.
        Box::pin(async move {
            let answers = self.publish_grouped(request).await?;
            self.durable().await?;
            Ok(answers)
        })
    }
}

impl DeliveryLog for SledStore {
    fn delivery(
        &self,
        subscription_id: &SubscriptionId,
        delivery_id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        let found = self.run(|trees| trees.delivery(delivery_id))?;
        Ok(found.filter(|delivery| delivery.subscription_id == *subscription_id))
    }

    fn event(&self, event_id: &EventId) -> Result<Option<Event>, StoreError> {
        self.run(|trees| trees.event(event_id))
    }

    fn list_deliveries(
        &self,
        subscription_id: &SubscriptionId,
        state: Option<DeliveryState>,
        limit: usize,
        cursor: Option<&DeliveryId>,
    ) -> Result<Page<Delivery, DeliveryId>, StoreError> {
        self.run(|trees| trees.list_deliveries(subscription_id, state, limit, cursor))
    }

    fn redeliver(
        &self,
        subscription: &Subscription,
        delivery_id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        self.client_write(|trees| trees.redeliver(subscription, delivery_id))
    }

    fn recover(
        &self,
        subscription: &Subscription,
        since: Millis,
        until: Millis,
    ) -> Result<usize, StoreError> {
        if since >= until {
            return Ok(0);
        }
        // The subscription's delivery log entries, by delivery id: by creation time.
        let id = &subscription.id;
        let end = keys::subscription_delivery(id, &DeliveryId::first_at(until));
        let mut start =
            std::ops::Bound::Included(keys::subscription_delivery(id, &DeliveryId::first_at(since)));
        let mut recovered = 0;
        loop {
            // Each batch durable before the next.
            let batch = self.client_write(|trees| trees.recover_batch(id, start.clone(), &end))?;
            recovered += batch.recovered;
            match batch.next {
                Some(last_examined) => start = std::ops::Bound::Excluded(last_examined),
                None => return Ok(recovered),
            }
        }
    }
}

impl DueWork for SledStore {
    fn subscriptions_with_queue(&self) -> Result<Vec<SubscriptionId>, StoreError> {
        self.run(Trees::subscriptions_with_queue)
    }

    fn queued_after(
        &self,
        subscription_id: &SubscriptionId,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, DeliveryId)>, StoreError> {
        self.run(|trees| trees.queued_after(subscription_id, after, limit))
    }

    /// One node: the scheduler keeps the cap, so a claim is a read, plus the rate limit's
    /// check and stamp in memory for a limited, deliverable subscription.
    fn claim(
        &self,
        subscription_id: &SubscriptionId,
        due: Millis,
        delivery_id: &DeliveryId,
        _cap: usize,
    ) -> Result<Claim, StoreError> {
        let context = self.run(|trees| trees.attempt_context(subscription_id, due, delivery_id))?;
        let Some(mut context) = context else { return Ok(Claim::Stale) };
        let subscription = &context.subscription;
        if let Some(per_second) = subscription.rate_limit_per_second.filter(|_| subscription.is_deliverable())
        {
            match self.rate.grant(subscription_id, per_second, crate::model::now_micros()) {
                Ok(granted) => context.rate_granted_at = Some(granted),
                Err(until) => return Ok(Claim::Limited { until }),
            }
        }
        Ok(Claim::Ready(Box::new(context)))
    }

    fn hold(
        &self,
        subscription_id: &SubscriptionId,
        due: Millis,
        delivery_id: &DeliveryId,
    ) -> Result<(), StoreError> {
        self.run(|trees| trees.hold(subscription_id, due, delivery_id))
    }

    fn dispatch_paused(&self) -> bool {
        self.trees.dispatch_paused()
    }

    fn poll_interval(&self) -> Option<std::time::Duration> {
        None
    }
}

impl Outcomes for SledStore {
    fn record_attempts(&self, records: &[AttemptRecord]) -> Result<usize, StoreError> {
        self.run(|trees| trees.record_attempts(records))
    }
}

impl Retention for SledStore {
    fn expire_held(&self, now: Millis, retention_ms: Millis) -> Result<usize, StoreError> {
        self.run(|trees| trees.expire_held(now, retention_ms))
    }

    fn purge_finished(&self, now: Millis, retention_ms: Millis) -> Result<usize, StoreError> {
        self.run(|trees| trees.purge_finished(now, retention_ms))
    }

    fn purge_idempotency(&self, now: Millis) -> Result<usize, StoreError> {
        self.run(|trees| trees.purge_idempotency(now))
    }

    fn purge_deleted_subscriptions(&self) -> Result<usize, StoreError> {
        self.run(Trees::purge_deleted_subscriptions)
    }

    fn release_all_deliverable(&self) -> Result<usize, StoreError> {
        self.run(Trees::release_all_deliverable)
    }
}

/// A key in the file `<data_dir>/<name>` (64 hex characters, mode 0600, fsync'd when made).
impl SharedKeys for SledStore {
    fn shared_key(&self, name: &str) -> Result<[u8; 32], StoreError> {
        use std::io::Write as _;
        let path = self.dir.join(name);
        let parse = |text: &str| {
            let mut key = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut key).map(|()| key).map_err(|_| {
                StoreError::Corrupt(format!(
                    "{} must hold 64 hex characters (delete it to make a new key)",
                    path.display()
                ))
            })
        };
        let io = |err: std::io::Error| StoreError::Io(format!("{}: {err}", path.display()));
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse(&text),
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(io(err)),
            Err(_) => {}
        }
        let key = crate::model::random_bytes::<32>();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut file) => {
                file.write_all(hex::encode(key).as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(key)
            }
            // Made meanwhile (a restart racing this one): use it.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                parse(&std::fs::read_to_string(&path).map_err(io)?)
            }
            Err(err) => Err(io(err)),
        }
    }
}

/// A backup of the running store (format and consistency: `backup.rs`). Reads only, so it
/// needs no admission by the space guard, and a failure is the backup's, never the store's:
/// nothing is counted as a storage error.
impl crate::store::Backups for SledStore {
    fn backup(
        &self,
        out: &mut dyn std::io::Write,
    ) -> Result<crate::store::BackupSummary, crate::store::BackupError> {
        backup::write(&self.trees, out)
    }
}

impl Vitals for SledStore {
    fn status(&self) -> (&'static str, Option<String>) {
        SledStore::status(self)
    }

    fn queue_depth(&self) -> (usize, usize) {
        (self.trees.queue.len(), self.trees.held.len())
    }

    fn figures(&self) -> StorageFigures {
        let stats = self.commit.stats();
        StorageFigures {
            errors: self.trees.errors.snapshot().to_vec(),
            free_bytes: Some(self.trees.space.free_bytes()),
            size_bytes: self.trees.db.size_on_disk().unwrap_or(0),
            flushes: stats.flushes.load(Ordering::Relaxed),
            flushed_writes: stats.requests.load(Ordering::Relaxed),
        }
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.durable())
    }
}

impl Trees {
    /// True while delivery should not start attempts whose outcome could not be stored.
    fn dispatch_paused(&self) -> bool {
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

    /// Sends the notices of one committed write in one message (none when it queued nothing).
    fn announce(&self, notices: QueueNotices) {
        if notices.is_empty() {
            return;
        }
        // Without a receiver (no engine, or the engine stopped) a notice has nobody to wake.
        let _ = self.notices.send(notices);
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
    fn a_shared_key_is_made_once_and_read_back_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledStore::open_with(dir.path(), &StoreOptions { min_free_bytes: 0, ..StoreOptions::default() })
                .unwrap();
        let first = store.shared_key("portal-signing-key").unwrap();
        assert_eq!(store.shared_key("portal-signing-key").unwrap(), first);
        assert_ne!(store.shared_key("another").unwrap(), first);
        std::fs::write(dir.path().join("portal-signing-key"), "short").unwrap();
        assert!(matches!(store.shared_key("portal-signing-key"), Err(StoreError::Corrupt(_))));
    }

    /// `[storage] compression` decides for a new data dir only: an existing one opens as it was
    /// made, with its data, whatever the setting (sled refuses a data dir opened with the other).
    #[test]
    fn compression_applies_to_new_data_dirs_and_older_ones_open_as_they_were_made() {
        let plain = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
        let zstd = StoreOptions { min_free_bytes: 0, compression: true, ..StoreOptions::default() };
        let conf_says =
            |dir: &Path| String::from_utf8_lossy(&std::fs::read(dir.join("conf")).unwrap()).into_owned();
        let open = |dir: &Path, options: &StoreOptions| {
            let mut tries = 0;
            loop {
                // sled's file lock goes with its threads, just after the last handle.
                match SledStore::open_with(dir, options) {
                    Ok(store) => break store,
                    Err(StoreError::Io(err)) if tries < 100 && err.contains("lock") => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(err) => panic!("{err}"),
                }
            }
        };

        let fresh = tempfile::tempdir().unwrap();
        assert!(!compressed(fresh.path(), false) && compressed(fresh.path(), true));
        let store = open(fresh.path(), &zstd);
        store.trees.subscriptions.insert(b"k", b"v").unwrap();
        store.trees.db.flush().unwrap();
        drop(store);
        assert!(conf_says(fresh.path()).contains("use_compression: true"));
        // Opened again with the setting off: still compressed, its data there.
        assert!(compressed(fresh.path(), false));
        let store = open(fresh.path(), &plain);
        assert_eq!(store.trees.subscriptions.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(store);

        let older = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(older.path()).use_compression(false).open().unwrap();
        db.open_tree("subscriptions").unwrap().insert(b"k", b"v").unwrap();
        db.flush().unwrap();
        drop(db);
        assert!(!compressed(older.path(), true));
        // Without its conf, a data dir holding data was made before the setting: uncompressed.
        let conf = std::fs::read(older.path().join("conf")).unwrap();
        std::fs::remove_file(older.path().join("conf")).unwrap();
        assert!(!compressed(older.path(), true));
        std::fs::write(older.path().join("conf"), conf).unwrap();
        let store = open(older.path(), &zstd);
        assert_eq!(store.trees.subscriptions.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn an_unfinished_snapshot_left_by_a_full_disk_does_not_stop_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
        let store = SledStore::open_with(dir.path(), &options).unwrap();
        let subscription =
            crate::model::Subscription::new("t", "s", "https://a.example/", vec!["a.b".into()], 1);
        store.create_subscription(&subscription, 10).unwrap();
        drop(store);
        // What sled leaves when it cannot write a snapshot at start-up: an empty file.
        std::fs::write(dir.path().join("snap.00000000FFFFFFFF.generating"), b"").unwrap();
        let mut tries = 0;
        let store = loop {
            // sled's file lock goes with the last handle of the first store.
            match SledStore::open_with(dir.path(), &options) {
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
