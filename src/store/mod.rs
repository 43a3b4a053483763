//! Storage: the interface the API and the delivery engine use, and its backends.
//!
//! The interface is a set of traits split by caller, so each caller sees only what it needs:
//!
//! | trait | caller | what |
//! | --- | --- | --- |
//! | [`Subscriptions`] | `api::webhooks` | create under the tenant's limit, read, list, update, delete |
//! | [`Publishing`] | `api::events` | store events with their fan-out deliveries (an outbox) |
//! | [`DeliveryLog`] | `api::deliveries` | a subscription's deliveries, their events, redeliver, recover |
//! | [`DueWork`] | `delivery::scheduler`, `delivery::worker` | what is due, what an attempt needs, hold |
//! | [`Outcomes`] | `delivery::recorder` | record attempt outcomes |
//! | [`Retention`] | `delivery::janitor` | expiry, purges, recovery after a crash |
//! | [`Vitals`] | `api::ops`, `daemon` | storage status, counters, the last flush |
//! | [`SharedKeys`] | `portal` | a key every node shares (the portal's signing key) |
//! | [`Backups`] | `control` | a consistent backup of a running store, as a byte stream |
//!
//! [`Storage`] is all of them, the handle [`open`] returns. Its rules, for every backend:
//! - **Durable on `Ok`.** A client write ([`Subscriptions`] changes, [`Publishing::publish`],
//!   [`DeliveryLog::redeliver`], each batch of [`DeliveryLog::recover`]) returns `Ok` only
//!   once it is durable, so the API may answer 2xx (the guide's "acknowledged means stored"). Engine writes need not wait: losing one means an
//!   attempt is repeated (at least once), never lost.
//! - **An outbox.** An event, its deliveries and their queue entries are stored together or not
//!   at all, and every state change of a delivery moves its queue entries in the same write.
//! - **Announced.** A write that queues work sends its [`QueueNotice`]s after it committed, all
//!   in one message ([`QueueNotices`]) on the channel in [`StoreOptions::notices`], so the engine
//!   learns of it without the API knowing the engine exists. Notices are hints: the engine also
//!   rescans.
//! - **Host faults are errors, never hangs.** A write waits at most [`DURABLE_WAIT`]; faults
//!   answer the `StoreError` variants for which [`StoreError::is_host_fault`] holds. A backend
//!   counts its errors and reports a fatal one to [`StoreOptions::health`] itself.
//! - **Tenant-scoped reads.** Every API read is by tenant (or by a subscription already read by
//!   tenant): another tenant's id reads as absent.
//!
//! Backends: `embedded` (sled in the data dir, the default, one daemon) and `postgres` (one
//! database shared by several daemons). A backend is a module of this directory that implements
//! the traits; nothing outside `store/` chooses one except through [`open`].

mod embedded;
mod postgres;
mod secrets_at_rest;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crate::health::Health;
pub use crate::lifecycle::AttemptDecision;
use crate::model::{
    Attempt, Delivery, DeliveryId, DeliveryState, Event, EventId, Micros, Millis, Subscription,
    SubscriptionId,
};

pub use embedded::SledStore;
pub use postgres::PgStore;
pub use secrets_at_rest::{rotate_master_key, RotationReport, SecretCensus};

/// A boxed future, for the interface's asynchronous methods (trait objects cannot have `async fn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    /// The database server cannot be reached (connection refused or lost, a failover under
    /// way). Clears by itself when the server is back; the daemon reconnects.
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    /// A client idempotency id (`events[index].id`, or `id` when `index` is `None`) was used
    /// within the window for a different event.
    #[error("idempotency id {client_id:?} was already used for a different event")]
    IdempotencyConflict { index: Option<usize>, client_id: String },
    /// A stored subscription secret is sealed under a master key that is not configured (or
    /// `rotate-master-key` was given no key). The message names the key id needed.
    #[error("{0}")]
    MasterKey(String),
}

impl StoreError {
    /// True for the faults of the host (space, read-only, I/O, stall), as opposed to answers
    /// about the request or the data.
    pub fn is_host_fault(&self) -> bool {
        matches!(
            self,
            StoreError::NoSpace { .. }
                | StoreError::ReadOnly
                | StoreError::Io(_)
                | StoreError::Stalled
                | StoreError::Unreachable(_)
        )
    }
}

/// The notices of one committed write, sent together on the channel: one send, and at most one
/// wake-up of the scheduler, per write however many deliveries it queued (a publish group at
/// fan-out 10 queues ~260; sent one by one, the publish writer was switched out in the send
/// 6,736 times in 4.5 s and the scheduler woke ~5,000 times a second). Never empty.
pub type QueueNotices = Vec<QueueNotice>;

/// New work in the queue, announced after the write committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueNotice {
    /// One delivery became due at `due`.
    Queued { subscription_id: SubscriptionId, due: Millis, delivery_id: DeliveryId },
    /// Many deliveries of one subscription were queued (held ones released) or removed (it was
    /// deleted): rescan it.
    Rescan { subscription_id: SubscriptionId },
}

/// Longest a caller waits for its write to become durable before it is answered
/// [`StoreError::Stalled`] (a 503): a flush that does not return is a host fault, never a hang.
pub const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How late the storage monitor's probe may be before storage counts as stalled.
pub const PROBE_OVERDUE: std::time::Duration = std::time::Duration::from_secs(10);

/// Default free-space reserve of the data dir's file system (`storage.min_free_bytes`).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 * 1024 * 1024;

/// How much the sled backend keeps in memory (`[storage] page_cache_bytes`, `event_cache_bytes`,
/// `subscription_cache_entries`; PostgreSQL keeps no such caches). Together with the allocator's
/// own overhead these are most of the daemon's resident memory (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// sled's page cache, in bytes: the tree nodes it keeps decoded in memory.
    pub page_cache_bytes: u64,
    /// Recently stored events kept for their first attempts, in bytes (bodies, ids, type and a
    /// fixed overhead per event); 0 keeps none (attempts read them from sled).
    pub event_cache_bytes: u64,
    /// Subscriptions kept in memory for attempts, at most (the cache empties when full and
    /// refills with the busy ones); at least 1.
    pub subscription_cache_entries: usize,
}

impl Default for CacheSizes {
    fn default() -> Self {
        CacheSizes {
            page_cache_bytes: 32 * 1024 * 1024,
            event_cache_bytes: 2 * 1024 * 1024,
            subscription_cache_entries: 10_000,
        }
    }
}

/// How long a client idempotency id is remembered (24 h, as Stripe and Svix do).
pub const IDEMPOTENCY_WINDOW_MS: Millis = 24 * 60 * 60 * 1000;

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
    pub notices: crossbeam_channel::Sender<QueueNotices>,
    /// The keys subscription secrets are sealed and opened with (`[secrets] key_file`); the
    /// default has none: secrets are written in plaintext (see `crate::secrets`).
    pub secrets: crate::secrets::SecretKeys,
    /// The sled backend's cache sizes (`[storage]`).
    pub caches: CacheSizes,
    /// Whether sled compresses a data dir it creates (`[storage] compression`; an existing data
    /// dir keeps what it was made with): about a third of the disk space per event for about
    /// twice the store's CPU per event (`store/embedded/sizing.rs`).
    pub compression: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            health: Arc::default(),
            notices: crossbeam_channel::unbounded().0,
            secrets: crate::secrets::SecretKeys::default(),
            caches: CacheSizes::default(),
            compression: false,
        }
    }
}

/// Opens the configured backend: the embedded sled store in `data_dir`, or the PostgreSQL
/// database of `[storage]` (applying its schema migrations). Then the secrets at rest are
/// brought in line with `options.secrets`: [`StoreError::MasterKey`] when a stored secret is
/// sealed under a key it lacks; with a key, plaintext secrets are sealed (see
/// `secrets_at_rest::prepare`).
pub fn open(
    backend: &crate::config::StorageBackend,
    data_dir: &Path,
    options: &StoreOptions,
) -> Result<Arc<dyn Storage>, StoreError> {
    match backend {
        crate::config::StorageBackend::Sled => {
            let store = SledStore::open_with(data_dir, options)?;
            secrets_at_rest::prepare(&store, &options.secrets)?;
            Ok(Arc::new(store))
        }
        crate::config::StorageBackend::Postgres(config) => {
            let store = PgStore::open(config, options)?;
            secrets_at_rest::prepare(&store, &options.secrets)?;
            Ok(Arc::new(store))
        }
    }
}

/// Checks a PostgreSQL URL as the backend will read it (the driver's settings and libpq's
/// `sslmode` and `sslrootcert`, whose file must hold a CA certificate), without connecting: for
/// config validation. The error names what is wrong and never shows the password.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    postgres::check_url(url).map_err(|err| match err {
        StoreError::Io(message) => message,
        other => other.to_string(),
    })
}

/// One record moving between backends (`migrate-storage`).
#[derive(Debug, Clone)]
pub enum Exported {
    Subscription(Subscription),
    Event(Event),
    /// A delivery, and since when it is held (a held one's `hold_retention` counts from there).
    Delivery(Delivery, Option<Millis>),
    /// A client idempotency id of a tenant and its remembered answer: when it was first
    /// accepted (Unix ms), the event and its delivery count, the request's fingerprint (`None`
    /// for ids stored before fingerprints were kept).
    Idempotency {
        tenant_id: String,
        client_id: String,
        created_at: Millis,
        event_id: EventId,
        deliveries: u32,
        fingerprint: Option<[u8; 32]>,
    },
}

/// Records of each kind that a migration copied into the target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub subscriptions: usize,
    pub events: usize,
    pub deliveries: usize,
    pub idempotency_ids: usize,
}

impl MigrationReport {
    fn total(&self) -> usize {
        self.subscriptions + self.events + self.deliveries + self.idempotency_ids
    }

    fn add(&mut self, other: &MigrationReport) {
        self.subscriptions += other.subscriptions;
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.idempotency_ids += other.idempotency_ids;
    }
}

/// What `migrate-storage` did: the records it copied and how many of those it read were in the
/// target already (an earlier, interrupted run's) and were kept as they are.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub copied: MigrationReport,
    pub already_there: usize,
}

/// Copies everything in the sled store of `data_dir` into the PostgreSQL database of `target`
/// (`atender-webhooks migrate-storage --from sled --to postgres`): subscriptions with their
/// secrets and counters, events, deliveries with their state, attempts and due times, and the
/// client idempotency ids. The daemon must be stopped (sled's lock makes sure). Records already
/// in the target are kept as they are, so an interrupted migration can be run again. Secrets
/// are opened with `secrets` as they are read and sealed with it as they are written (the
/// `[secrets] key_file` of the config both sides run on).
pub fn migrate_sled_to_postgres(
    data_dir: &Path,
    target: &crate::config::PostgresConfig,
    secrets: crate::secrets::SecretKeys,
) -> Result<Migrated, StoreError> {
    if !data_dir.join("db").exists() {
        return Err(StoreError::Io(format!("{} holds no sled database", data_dir.display())));
    }
    let options = StoreOptions { min_free_bytes: 0, secrets, ..StoreOptions::default() };
    let source = SledStore::open_with(data_dir, &options)?;
    secrets_at_rest::prepare(&source, &options.secrets)?;
    let target = PgStore::open(target, &options)?;
    secrets_at_rest::prepare(&target, &options.secrets)?;
    let (mut read, mut copied) = (0usize, MigrationReport::default());
    let mut batch = Vec::with_capacity(500);
    source.export(&mut |record| {
        read += 1;
        batch.push(record);
        if batch.len() == 500 {
            copied.add(&target.import(std::mem::take(&mut batch))?);
        }
        Ok(())
    })?;
    copied.add(&target.import(batch)?);
    target.finish_import()?;
    Ok(Migrated { already_there: read.saturating_sub(copied.total()), copied })
}

/// An event ready to store: its id and exact delivery body were made by the caller.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: String,
    /// The JSON body sent to every receiver, byte for byte.
    pub body: Vec<u8>,
    /// The client's idempotency id, if it sent one.
    pub client_id: Option<String>,
    /// SHA-256 of what makes the request this event (type and canonical data), compared when
    /// the client id was seen before: a different fingerprint is an idempotency conflict.
    pub fingerprint: [u8; 32],
}

impl NewEvent {
    /// An event of `event_type` with body `{}` made at `at` (Unix ms), no client id: for tests
    /// and benchmark seeding.
    pub fn plain(event_type: &str, at: Millis) -> NewEvent {
        NewEvent {
            id: EventId::new(at),
            event_type: event_type.into(),
            body: b"{}".to_vec(),
            client_id: None,
            fingerprint: [0; 32],
        }
    }
}

/// One client request to publish: its events are stored all or nothing.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub tenant_id: String,
    /// False when the tenant's webhooks are switched off: events are answered, nothing fans out.
    pub webhooks_enabled: bool,
    pub events: Vec<NewEvent>,
    /// When the request was accepted (Unix ms): the events' and deliveries' creation time.
    pub now: Millis,
}

/// The answer for one published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: EventId,
    /// Deliveries created (0 for a duplicate: those of the first request stand).
    pub deliveries: u32,
    /// True when the client id was seen within [`IDEMPOTENCY_WINDOW_MS`] and nothing new was
    /// created.
    pub duplicate: bool,
}

/// The answer to [`DueWork::claim`].
#[derive(Debug, Clone)]
pub enum Claim {
    /// The delivery is this node's to attempt now, with what the attempt needs.
    Ready(Box<AttemptContext>),
    /// Not now: the subscription has its in-flight cap of attempts under way (across every
    /// node). The queue entry stays; ask again shortly.
    Busy,
    /// Not this delivery now: a claim (another node's, or one this node left behind) holds it
    /// until `until` (Unix ms, the end of its lease). The queue entry stays; the subscription's
    /// other deliveries may go meanwhile, and this one is asked for again at `until` (a node
    /// killed mid-attempt must not stop its subscriptions on every node for the lease).
    Taken { until: Millis },
    /// Nothing to attempt: the delivery, its subscription or its event is gone, or the entry is
    /// stale (the delivery is no longer due at that time). The stray entry was removed.
    Stale,
    /// Not yet: the subscription's `rateLimitPerSecond` lets its next attempt start at `until`
    /// (Unix µs, on the clock of the node that granted the previous one). The queue entry stays;
    /// ask again then.
    Limited { until: Micros },
}

/// Everything a worker needs for one attempt, read together.
#[derive(Debug, Clone)]
pub struct AttemptContext {
    pub delivery: Delivery,
    pub subscription: Arc<Subscription>,
    pub event: Arc<Event>,
    /// For a rate-limited subscription: the instant (Unix µs) the claim granted this attempt its
    /// start, the one the limit counts. The worker records it as the attempt's `at`, so the
    /// delivery log shows the spacing the limit keeps. `None` without a limit.
    pub rate_granted_at: Option<Micros>,
}

/// One attempt's outcome, to record: the queue entry it was made for (subscription, due,
/// delivery), what happened, and what happens next.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub subscription_id: SubscriptionId,
    pub due: Millis,
    pub delivery_id: DeliveryId,
    pub attempt: Attempt,
    pub decision: AttemptDecision,
}

/// The fan-out of one event, the rule every backend stores: the event as stored and one delivery
/// per subscription of the tenant that lists its type — `pending` and due at `now` when the
/// subscription is deliverable, `held` otherwise (`Delivery::new`). An event nobody wants has no
/// deliveries (backends then keep only its answer).
pub(crate) fn fan_out<S: std::borrow::Borrow<Subscription>>(
    tenant_id: &str,
    event: &NewEvent,
    subscriptions: &[S],
    now: Millis,
) -> (Event, Vec<Delivery>) {
    let deliveries: Vec<Delivery> = subscriptions
        .iter()
        .map(<S as std::borrow::Borrow<Subscription>>::borrow)
        .filter(|subscription| subscription.wants(&event.event_type))
        .map(|subscription| {
            Delivery::new(DeliveryId::new(now), subscription, &event.id, &event.event_type, now)
        })
        .collect();
    let stored = Event {
        id: event.id.clone(),
        tenant_id: tenant_id.to_owned(),
        event_type: event.event_type.clone(),
        created_at: now,
        body: event.body.clone(),
        live_deliveries: deliveries.len() as u32,
    };
    (stored, deliveries)
}

/// An operational event (`crate::catalogue`) a write caused: a subscription was disabled or
/// enabled again, or a delivery failed its last attempt. The backend stores it, fanned out, in
/// the transaction of the write that caused it (an outbox, as for published events), so it is
/// lost or kept together with its cause. Svix (`endpoint.disabled`,
/// `message.attempt.exhausted`) sends the same kinds of events.
#[derive(Debug, Clone)]
pub(crate) struct Operational {
    pub tenant_id: String,
    /// The subscription the event is about.
    pub about: SubscriptionId,
    /// Whether the event also goes to `about` when it lists the type: not when `about` is the
    /// one failing (its own failures must not feed it more work).
    pub to_itself: bool,
    pub event: NewEvent,
}

impl Operational {
    /// `delivery.exhausted` when this attempt's outcome (`before` → `after`, the attempt that
    /// ended at `now`) made a delivery fail for good. `None` for a delivery of an operational
    /// event: two dead endpoints listing `delivery.exhausted` would otherwise feed each other
    /// forever.
    pub(crate) fn exhausted(
        before: &Delivery,
        after: &Delivery,
        attempt: &Attempt,
        now: Millis,
    ) -> Option<Self> {
        let gave_up = !before.state.is_finished() && after.state == DeliveryState::Failed;
        if !gave_up || crate::catalogue::is_operational(&after.event_type) {
            return None;
        }
        let data = crate::catalogue::exhausted_data(&crate::catalogue::Exhausted {
            webhook_id: after.subscription_id.as_str(),
            delivery_id: after.id.as_str(),
            event_id: after.event_id.as_str(),
            event_type: &after.event_type,
            attempts: after.attempts_in_round,
            response_code: attempt.response_code,
            error: attempt.error.as_deref(),
        });
        Some(Self::new(
            &after.tenant_id,
            &after.subscription_id,
            false,
            crate::catalogue::DELIVERY_EXHAUSTED,
            &data,
            now,
        ))
    }

    /// `webhook.disabled` (not sent to the subscription itself) or `webhook.enabled` (sent to it
    /// too, when it lists the type) when a write turned a subscription off or on: `was_active`
    /// before the write, `after` it.
    pub(crate) fn activity(was_active: bool, after: &Subscription, now: Millis) -> Option<Self> {
        use crate::catalogue::{disabled_data, enabled_data, WEBHOOK_DISABLED, WEBHOOK_ENABLED};
        let at = crate::model::rfc3339(now);
        match (was_active, after.is_active) {
            (true, false) => {
                let reason = after.disable_reason.as_deref().unwrap_or("disabled");
                let at = after.disabled_at.map(crate::model::rfc3339).unwrap_or(at);
                let data = disabled_data(after.id.as_str(), &after.url, reason, &at);
                Some(Self::new(&after.tenant_id, &after.id, false, WEBHOOK_DISABLED, &data, now))
            }
            (false, true) => {
                let data = enabled_data(after.id.as_str(), &after.url, &at);
                Some(Self::new(&after.tenant_id, &after.id, true, WEBHOOK_ENABLED, &data, now))
            }
            _ => None,
        }
    }

    fn new(
        tenant_id: &str,
        about: &SubscriptionId,
        to_itself: bool,
        event_type: &str,
        data: &serde_json::Value,
        now: Millis,
    ) -> Self {
        let id = EventId::new(now);
        let body =
            crate::catalogue::body(id.as_str(), event_type, tenant_id, &crate::model::rfc3339(now), data);
        Operational {
            tenant_id: tenant_id.to_owned(),
            about: about.clone(),
            to_itself,
            event: NewEvent {
                id,
                event_type: event_type.to_owned(),
                body,
                client_id: None,
                fingerprint: [0; 32],
            },
        }
    }

    /// The event as stored and its deliveries: one per subscription of the tenant that lists
    /// the type ([`fan_out`]), but `about` only when [`Operational::to_itself`]. `fresh` are
    /// subscriptions the same write changed, read in their new state (the rest of
    /// `subscriptions` may be a little older, as at publish).
    pub(crate) fn fan_out<S: std::borrow::Borrow<Subscription>>(
        &self,
        subscriptions: &[S],
        fresh: &[&Subscription],
        now: Millis,
    ) -> (Event, Vec<Delivery>) {
        let targets: Vec<Subscription> = subscriptions
            .iter()
            .map(<S as std::borrow::Borrow<Subscription>>::borrow)
            .filter(|subscription| self.to_itself || subscription.id != self.about)
            .map(|subscription| {
                let newer = fresh.iter().find(|changed| changed.id == subscription.id);
                newer.map_or_else(|| subscription.clone(), |changed| (*changed).clone())
            })
            .collect();
        fan_out(&self.tenant_id, &self.event, &targets, now)
    }
}

/// The idempotency rule every backend applies before storing a request (after the IETF
/// "Idempotency-Key" draft: the same key with a different payload is a 422): the first event of
/// request's events — given as (client id, fingerprint) — whose client id was used within
/// [`IDEMPOTENCY_WINDOW_MS`] (before, or by an earlier event of the same request) for a
/// different event type or data. `remembered(client_id)` answers the fingerprint stored for a
/// live id (`Ok(None)` when there is none, or the record predates fingerprints). A batch names
/// the event's index; a single publish does not.
pub(crate) fn first_conflict<E>(
    events: &[(Option<&str>, [u8; 32])],
    mut remembered: impl FnMut(&str) -> Result<Option<[u8; 32]>, E>,
) -> Result<Option<StoreError>, E> {
    let batch = events.len() > 1;
    let mut seen: std::collections::HashMap<&str, [u8; 32]> = std::collections::HashMap::new();
    for (index, &(client_id, fingerprint)) in events.iter().enumerate() {
        let Some(client_id) = client_id else { continue };
        let earlier = match seen.get(client_id) {
            Some(fingerprint) => Some(*fingerprint),
            None => remembered(client_id)?,
        };
        if earlier.is_some_and(|earlier| earlier != fingerprint) {
            return Ok(Some(StoreError::IdempotencyConflict {
                index: batch.then_some(index),
                client_id: client_id.to_owned(),
            }));
        }
        seen.entry(client_id).or_insert(fingerprint);
    }
    Ok(None)
}

/// A pure edit of a subscription, applied inside the storage transaction (which may run it more
/// than once). Owned and `Send`, so a backend may run it on its own threads.
pub type SubscriptionChange = Box<dyn Fn(&mut Subscription) + Send + Sync>;

/// One page of a listing, newest first, and the cursor of the next page (`None`: the last).
pub type Page<T, Cursor> = (Vec<T>, Option<Cursor>);

/// Subscriptions, for the API (`api::webhooks`). Every change is durable on `Ok`.
pub trait Subscriptions: Send + Sync {
    /// Stores a new subscription unless its tenant already has `max_webhooks`
    /// ([`StoreError::LimitExceeded`]); count and insert are atomic, so concurrent creates never
    /// exceed the limit.
    fn create_subscription(&self, subscription: &Subscription, max_webhooks: u32) -> Result<(), StoreError>;

    /// A subscription of `tenant_id`; another tenant's id reads as absent.
    fn subscription(&self, tenant_id: &str, id: &SubscriptionId) -> Result<Option<Subscription>, StoreError>;

    /// One page of a tenant's subscriptions, newest first, of at most `limit`, starting after
    /// `cursor` (the last id of the previous page).
    fn list_subscriptions(
        &self,
        tenant_id: &str,
        limit: usize,
        cursor: Option<&SubscriptionId>,
    ) -> Result<Page<Subscription, SubscriptionId>, StoreError>;

    /// Applies `change` to a tenant's subscription atomically and returns the result (`None`:
    /// no such subscription of this tenant). When the change makes the subscription
    /// deliverable again, its held deliveries are released. `change` may run more than once
    /// (transactions retry), so it must be a pure edit.
    fn update_subscription(
        &self,
        tenant_id: &str,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError>;

    /// Removes a tenant's subscription and every delivery queued or logged for it. False when
    /// there is no such subscription of this tenant.
    fn delete_subscription(&self, tenant_id: &str, id: &SubscriptionId) -> Result<bool, StoreError>;
}

/// Publishing, for the API (`api::events`).
pub trait Publishing: Send + Sync {
    /// Stores a request's events with one delivery per matching deliverable subscription (held
    /// for a paused or disabled one; none when the tenant's webhooks are off) and its client
    /// idempotency ids, all or nothing; durable when it resolves `Ok`. A client id seen within
    /// [`IDEMPOTENCY_WINDOW_MS`] answers the first event (`duplicate`), or
    /// [`StoreError::IdempotencyConflict`] when the event differs.
    fn publish(&self, request: PublishRequest) -> BoxFuture<'_, Result<Vec<Published>, StoreError>>;
}

/// The delivery log, for the API (`api::deliveries`).
pub trait DeliveryLog: Send + Sync {
    /// A delivery of `subscription_id`; one of another subscription reads as absent.
    fn delivery(
        &self,
        subscription_id: &SubscriptionId,
        delivery_id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError>;

    /// An event (its body is the payload of its deliveries). Events live while a delivery
    /// references them.
    fn event(&self, event_id: &EventId) -> Result<Option<Event>, StoreError>;

    /// One page of a subscription's deliveries, newest first, optionally only one `state`. A
    /// page may end early (with a cursor) when a filter skipped many entries.
    fn list_deliveries(
        &self,
        subscription_id: &SubscriptionId,
        state: Option<DeliveryState>,
        limit: usize,
        cursor: Option<&DeliveryId>,
    ) -> Result<Page<Delivery, DeliveryId>, StoreError>;

    /// Queues a finished delivery of `subscription` again with a fresh round of retries (held
    /// instead while the subscription is not deliverable); one still pending or held is left
    /// as it is. Returns the delivery as it now stands, `None` when there is no such delivery
    /// of this subscription. Durable on `Ok`.
    fn redeliver(
        &self,
        subscription: &Subscription,
        delivery_id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError>;

    /// Queues again every `failed` or `expired` delivery of `subscription` created in
    /// `since <= created < until` (Unix ms; the creation time in the delivery's id,
    /// `DeliveryId::first_at` bounds), each as [`DeliveryLog::redeliver`] does: a fresh round
    /// of retries, held instead while the subscription (as stored when the batch runs) is paused
    /// or disabled. Deliveries pending, held or succeeded are left as they are, so calling it
    /// again for the same range queues nothing twice (Svix's "recover failed messages").
    /// Returns how many deliveries were queued or held again.
    ///
    /// Works in batches of at most [`RECOVER_BATCH`] deliveries, each one transaction, durable
    /// before the next begins, so a large recovery never holds one giant transaction; the
    /// engine is told after each batch ([`QueueNotice::Rescan`]). An error part-way leaves the
    /// batches before it done; calling again finishes the rest. A subscription deleted
    /// meanwhile recovers nothing more.
    fn recover(&self, subscription: &Subscription, since: Millis, until: Millis)
        -> Result<usize, StoreError>;
}

/// Most deliveries one transaction of [`DeliveryLog::recover`] queues again.
pub const RECOVER_BATCH: usize = 500;

/// Due work, for the scheduler and the workers (`delivery`).
pub trait DueWork: Send + Sync {
    /// Subscriptions with at least one queued delivery.
    fn subscriptions_with_queue(&self) -> Result<Vec<SubscriptionId>, StoreError>;

    /// Up to `limit` queued deliveries of one subscription in due order (due, id), after
    /// `after`.
    fn queued_after(
        &self,
        subscription_id: &SubscriptionId,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, DeliveryId)>, StoreError>;

    /// Claims a queued delivery for one attempt and reads what the attempt needs. `cap` is the
    /// most attempts of this subscription that may be under way at once (`1` for a suspect
    /// one); a backend shared by several nodes counts the claims of all of them and answers
    /// [`Claim::Busy`] at the cap or while another node holds the delivery; a single-node
    /// backend leaves the cap to the scheduler. A claim lasts until the outcome is recorded
    /// ([`Outcomes::record_attempts`]) or its lease runs out. Nothing is attempted twice for one
    /// due time: a stale entry answers [`Claim::Stale`].
    ///
    /// Every backend keeps a deliverable subscription's `rateLimitPerSecond` here, for every
    /// node: a claim is granted only once [`crate::model::rate_interval`] has passed since the
    /// previous granted claim of that subscription ([`Claim::Limited`] with the instant
    /// otherwise), and the grant is stamped atomically with the check, so no 1-second window
    /// holds more grants than the limit (GCRA without burst: `model::rate_next_start`).
    fn claim(
        &self,
        subscription_id: &SubscriptionId,
        due: Millis,
        delivery_id: &DeliveryId,
        cap: usize,
    ) -> Result<Claim, StoreError>;

    /// Moves a queued delivery to held (its subscription is paused or disabled); released at
    /// once if the subscription became deliverable meanwhile.
    fn hold(
        &self,
        subscription_id: &SubscriptionId,
        due: Millis,
        delivery_id: &DeliveryId,
    ) -> Result<(), StoreError>;

    /// True while no attempt should start because its outcome could not be stored (storage
    /// nearly full, read-only, unreachable, or failed).
    fn dispatch_paused(&self) -> bool;

    /// How often the scheduler must look for queued work by itself (`None`: every change is
    /// announced as a [`QueueNotice`], as in a single-node backend). A backend shared by several
    /// nodes sees other nodes' writes only as hints, so it asks to be polled.
    fn poll_interval(&self) -> Option<std::time::Duration>;
}

/// Attempt outcomes, for the recorder (`delivery::recorder`).
pub trait Outcomes: Send + Sync {
    /// Records outcomes atomically: each delivery's state, log and queue entry, and its
    /// subscription's last-delivery fields, failure counter and disable state, in order.
    /// Returns how many subscriptions these outcomes disabled (each counted once, by the write
    /// that turned it off).
    fn record_attempts(&self, records: &[AttemptRecord]) -> Result<usize, StoreError>;
}

/// Time rules and clean-up, for the janitor (`delivery::janitor`). Times are Unix ms.
pub trait Retention: Send + Sync {
    /// Held deliveries held since before `now - retention_ms` become expired. Returns how many.
    fn expire_held(&self, now: Millis, retention_ms: Millis) -> Result<usize, StoreError>;

    /// Removes deliveries finished before `now - retention_ms`, and events no delivery
    /// references any more. Returns how many deliveries.
    fn purge_finished(&self, now: Millis, retention_ms: Millis) -> Result<usize, StoreError>;

    /// Forgets client idempotency ids older than [`IDEMPOTENCY_WINDOW_MS`]. Returns how many.
    fn purge_idempotency(&self, now: Millis) -> Result<usize, StoreError>;

    /// Finishes the clean-up of subscriptions deleted before a crash. Returns how many.
    fn purge_deleted_subscriptions(&self) -> Result<usize, StoreError>;

    /// Releases the held deliveries of every deliverable subscription (after a crash between a
    /// re-enable and its release). Returns how many.
    fn release_all_deliverable(&self) -> Result<usize, StoreError>;
}

/// Every word [`Vitals::status`] answers: `ok`; `low_space` and `read_only` (the data dir's
/// file system); `stalled` (storage has not answered a check for a while); `unavailable` (the
/// database server cannot be reached); `failed` (a fatal fault: the daemon exits to restart).
pub const STORAGE_STATES: [&str; 6] = ["ok", "low_space", "read_only", "stalled", "unavailable", "failed"];

/// How storage stands, for `/readyz`, `/metrics` and the daemon.
pub trait Vitals: Send + Sync {
    /// One of [`STORAGE_STATES`], with the reason in words. Never waits on the storage engine,
    /// so it answers while storage hangs.
    fn status(&self) -> (&'static str, Option<String>);

    /// Deliveries per queue state: (pending, held).
    fn queue_depth(&self) -> (usize, usize);

    /// Figures for `/metrics`.
    fn figures(&self) -> StorageFigures;

    /// Makes every write so far durable (the last flush at shutdown), within [`DURABLE_WAIT`].
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Storage counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StorageFigures {
    /// Storage errors by kind (`no_space`, `read_only`, `io`, `corrupt`, `stalled`) since start.
    pub errors: Vec<(&'static str, u64)>,
    /// Bytes free on the data's file system (`None`: not on a local file system).
    pub free_bytes: Option<u64>,
    /// Bytes the data occupies.
    pub size_bytes: u64,
    /// Durability flushes made, and the writes they covered (group commit).
    pub flushes: u64,
    pub flushed_writes: u64,
}

/// Keys every node sharing this storage knows, for the tenant portal (`portal`).
pub trait SharedKeys: Send + Sync {
    /// The 32-byte key called `name` (`portal-signing-key`), made from the OS CSPRNG on first
    /// use and the same for every node sharing this storage, across restarts. Deleting it (the
    /// sled backend's file of that name in the data dir; the PostgreSQL backend's `shared_keys`
    /// row) makes a new one at the next start.
    fn shared_key(&self, name: &str) -> Result<[u8; 32], StoreError>;
}

/// Every part of the interface: what [`open`] returns.
pub trait Storage:
    Subscriptions + Publishing + DeliveryLog + DueWork + Outcomes + Retention + Vitals + SharedKeys + Backups
{
}

impl<T> Storage for T where
    T: Subscriptions
        + Publishing
        + DeliveryLog
        + DueWork
        + Outcomes
        + Retention
        + Vitals
        + SharedKeys
        + Backups
{
}

/// Backups of a running store, for the control socket (`control`). The file format, what a
/// backup holds and why it is consistent: `store/embedded/backup.rs` and ARCHITECTURE.md
/// ("Backups").
pub trait Backups: Send + Sync {
    /// Writes a backup of everything stored to `out` while the store keeps serving: every
    /// event acknowledged before the call is in it with all its deliveries. Reads only; `out`
    /// sees the whole file or an error (then what was written is no backup: the trailer is
    /// missing). [`BackupError::Unsupported`] on a backend whose own tools make backups
    /// (PostgreSQL: `pg_dump`, `pg_basebackup`).
    fn backup(&self, out: &mut dyn std::io::Write) -> Result<BackupSummary, BackupError>;
}

/// What a backup holds (from its trailer), or what a restore wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// When the backup began (Unix ms): every event acknowledged before it is in the backup.
    pub began_at: Millis,
    pub subscriptions: u64,
    pub events: u64,
    pub deliveries: u64,
    pub idempotency_ids: u64,
    /// Bytes of the backup file.
    pub bytes: u64,
}

/// What a restore wrote, and what it left out of the backup because the backup caught it
/// half made (records of events acknowledged after the backup began; see ARCHITECTURE.md).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The backup's own figures (its trailer).
    pub backup: BackupSummary,
    pub subscriptions: u64,
    pub events: u64,
    pub deliveries: u64,
    pub idempotency_ids: u64,
    /// Deliveries left out: their event or subscription is not in the backup.
    pub skipped_deliveries: u64,
    /// Events left out: no delivery in the backup references them.
    pub skipped_events: u64,
}

/// Why a backup or a restore did not complete. A restore refuses a bad file before it writes
/// anything.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading the store failed, or a stored record does not decode. Transparent: printed as the
    /// store error itself, once (a `{0}` message with a `#[from]` source said it twice in `{:#}`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backup's destination refused bytes (disk full, the client went away).
    #[error("cannot write the backup: {0}")]
    Write(std::io::Error),
    /// The backup file could not be read.
    #[error("cannot read the backup: {0}")]
    Read(std::io::Error),
    /// The file is not a complete, intact backup of a format this version reads: truncated,
    /// a byte changed, another kind of file.
    #[error("not a valid backup: {0}")]
    Invalid(String),
    /// The restore target is not an empty directory, or cannot be made.
    #[error("{0}")]
    Target(String),
    /// This backend is backed up with its own tools.
    #[error("{0}")]
    Unsupported(String),
}

/// What `backup` answers for a PostgreSQL store (the CLI refuses with it before connecting).
pub const POSTGRES_BACKUP_ADVICE: &str = "this daemon stores its data in PostgreSQL ([storage] backend = \"postgres\"): back up the database with PostgreSQL's own tools (pg_dump for a logical copy, pg_basebackup with WAL archiving for point-in-time recovery); `atender-webhooks backup` copies the embedded sled store only";

/// Writes a backup of the sled data dir `data_dir` while no daemon runs on it (sled's file
/// lock makes sure: a dir in use answers [`BackupError::Store`] naming the lock). The same
/// file as [`Backups::backup`] of a running daemon.
pub fn backup_data_dir(data_dir: &Path, out: &mut dyn std::io::Write) -> Result<BackupSummary, BackupError> {
    if !data_dir.join("db").exists() {
        return Err(BackupError::Store(StoreError::Io(format!(
            "{} holds no sled database",
            data_dir.display()
        ))));
    }
    let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
    SledStore::open_with(data_dir, &options)?.backup(out)
}

/// Reads a whole backup and checks it (format, every record decodes, counts and SHA-256 of
/// the trailer) without writing anything: its summary, or why it is no backup.
pub fn verify_backup(file: &mut dyn std::io::Read) -> Result<BackupSummary, BackupError> {
    embedded::backup::verify(file)
}

/// Restores the backup `file` into `data_dir`, which must not exist or be empty, as a sled
/// data dir a daemon can start on; every secondary index is rebuilt from the records. The file
/// is checked whole first (a truncated or damaged file writes nothing); a failure while
/// writing leaves `data_dir` as empty as it was found.
/// `compression` is `[storage] compression` for the new data dir (sled fixes it when it
/// creates the dir).
pub fn restore_backup(
    file: &Path,
    data_dir: &Path,
    compression: bool,
) -> Result<RestoreSummary, BackupError> {
    embedded::backup::restore(file, data_dir, compression)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{DELIVERY_EXHAUSTED, WEBHOOK_DISABLED, WEBHOOK_ENABLED};

    fn subscription(name: &str, events: &[&str]) -> Subscription {
        let events = events.iter().map(|event| event.to_string()).collect();
        Subscription::new("acme", name, "https://a.example/", events, 1)
    }

    fn failed_attempt() -> Attempt {
        Attempt { at: 100, duration_ms: 5, response_code: Some(503), error: Some("HTTP 503".into()) }
    }

    #[test]
    fn only_a_delivery_that_gives_up_now_is_exhausted_and_never_an_operational_one() {
        let owner = subscription("owner", &["a.b", WEBHOOK_DISABLED]);
        let giving_up = AttemptDecision::GiveUp { disable_reason: "gone".into() };
        for (event_type, before_state, decision, expected) in [
            ("a.b", DeliveryState::Pending, &giving_up, true),
            ("a.b", DeliveryState::Held, &giving_up, true),
            ("a.b", DeliveryState::Pending, &AttemptDecision::Retry { due: 200 }, false),
            ("a.b", DeliveryState::Pending, &AttemptDecision::Succeeded, false),
            // Already finished (a duplicate outcome): it gave up before.
            ("a.b", DeliveryState::Failed, &giving_up, false),
            (DELIVERY_EXHAUSTED, DeliveryState::Pending, &giving_up, false),
            (WEBHOOK_DISABLED, DeliveryState::Pending, &giving_up, false),
        ] {
            let mut before = Delivery::new(DeliveryId::new(1), &owner, &EventId::new(1), event_type, 10);
            before.state = before_state;
            let mut after = before.clone();
            after.record_attempt(failed_attempt(), decision, 105);
            let found = Operational::exhausted(&before, &after, &failed_attempt(), 105);
            assert_eq!(found.is_some(), expected, "{event_type} {before_state:?} {decision:?}");
            if let Some(found) = found {
                assert_eq!(found.event.event_type, DELIVERY_EXHAUSTED);
                assert!(!found.to_itself);
                let body: serde_json::Value = serde_json::from_slice(&found.event.body).unwrap();
                assert_eq!(body["data"]["deliveryId"], before.id.as_str());
                assert_eq!(body["data"]["lastResponseCode"], 503);
            }
        }
    }

    #[test]
    fn an_activity_change_is_announced_once_each_way() {
        let mut on = subscription("s", &[]);
        assert!(Operational::activity(true, &on, 5).is_none());
        on.disable("gone", 5);
        let disabled = Operational::activity(true, &on, 6).unwrap();
        assert_eq!((disabled.event.event_type.as_str(), disabled.to_itself), (WEBHOOK_DISABLED, false));
        assert!(Operational::activity(false, &on, 6).is_none());
        on.enable();
        let enabled = Operational::activity(false, &on, 7).unwrap();
        assert_eq!((enabled.event.event_type.as_str(), enabled.to_itself), (WEBHOOK_ENABLED, true));
    }

    #[test]
    fn the_fan_out_skips_the_failing_one_and_uses_what_the_write_changed() {
        let mut failing = subscription("failing", &[WEBHOOK_DISABLED, WEBHOOK_ENABLED]);
        let listener = subscription("listener", &[WEBHOOK_DISABLED, WEBHOOK_ENABLED]);
        let other = subscription("other", &["a.b"]);
        let audience = vec![failing.clone(), listener.clone(), other];
        failing.disable("gone", 5);
        let disabled = Operational::activity(true, &failing, 5).unwrap();
        let (event, deliveries) = disabled.fan_out(&audience, &[&failing], 5);
        assert_eq!(event.live_deliveries, 1);
        assert_eq!(deliveries.iter().map(|d| &d.subscription_id).collect::<Vec<_>>(), [&listener.id]);

        // Enabled again: it hears it too, as the write left it (deliverable, so pending).
        let stale = vec![failing.clone(), listener.clone()];
        failing.enable();
        let enabled = Operational::activity(false, &failing, 6).unwrap();
        let (_, deliveries) = enabled.fan_out(&stale, &[&failing], 6);
        assert_eq!(deliveries.len(), 2);
        assert!(deliveries.iter().all(|delivery| delivery.state == DeliveryState::Pending));
    }
}
