//! Subscriptions: create under the tenant's limit, read, list newest first, update, delete;
//! their secrets sealed on the way in and opened on the way out (`crate::secrets`), and the
//! walk over all of them that seals plaintext ones or re-seals under a new key.

use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use crate::model::{Subscription, SubscriptionId};
use crate::store::embedded::cache::TenantSubscriptions;
use crate::store::embedded::codec::{decode, encode};
use crate::store::embedded::deliveries::store_operational;
use crate::store::embedded::index::Indexes;
use crate::store::embedded::{abort_on, keys, QueueNotice, SledStore, StoreError, Trees, WriteClass};
use crate::store::secrets_at_rest::{self, SealedSecrets, SecretCensus};
use crate::store::Operational;

fn read_count(
    counts: &TransactionalTree,
    tenant_id: &str,
) -> Result<u32, ConflictableTransactionError<StoreError>> {
    Ok(counts
        .get(tenant_id.as_bytes())?
        .and_then(|bytes| <[u8; 4]>::try_from(bytes.as_ref()).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0))
}

impl Trees {
    /// The stored bytes of `subscription`: its record, with its secrets sealed under the
    /// store's master key (in plaintext without one). The one way a subscription is encoded.
    pub(crate) fn encode_subscription(&self, subscription: &Subscription) -> Vec<u8> {
        encode(&secrets_at_rest::seal_subscription(&self.secrets, subscription))
    }

    /// The subscription stored as `bytes`, its secrets opened. The one way a subscription is
    /// decoded (but for reads that need no secret).
    pub(crate) fn decode_subscription(&self, bytes: &[u8]) -> Result<Subscription, StoreError> {
        secrets_at_rest::open_subscription(&self.secrets, decode(bytes)?)
    }

    /// How the stored secrets are kept (read without opening them).
    fn secret_census(&self) -> Result<SecretCensus, StoreError> {
        let mut census = SecretCensus::default();
        for entry in self.subscriptions.iter() {
            let stored: Subscription = decode(&entry?.1)?;
            census.count(stored.secret.expose(), stored.retired_secret.as_ref().map(|r| r.secret.expose()));
        }
        Ok(census)
    }

    /// Rewrites each subscription whose stored secrets are not sealed as the store's keys
    /// would seal them now, one transaction each (see [`SealedSecrets::reseal_secrets`]).
    fn reseal_secrets(&self) -> Result<usize, StoreError> {
        let mut rewritten = 0;
        for entry in self.subscriptions.iter() {
            let (key, _) = entry?;
            self.admit(WriteClass::Internal)?;
            let _writes = self.subscription_cache.lock_writes();
            let changed = self.subscriptions.transaction(|subscriptions| {
                // Read again inside the transaction: a write since the scan is kept.
                let Some(bytes) = subscriptions.get(&key)? else { return Ok(false) };
                let stored: Subscription = abort_on(decode(&bytes))?;
                if secrets_at_rest::is_current(&self.secrets, &stored) {
                    return Ok(false);
                }
                let opened = abort_on(secrets_at_rest::open_subscription(&self.secrets, stored))?;
                subscriptions.insert(&key, self.encode_subscription(&opened))?;
                Ok(true)
            })?;
            rewritten += usize::from(changed);
        }
        Ok(rewritten)
    }

    /// Stores a new subscription unless the tenant already has `max_webhooks`. The count and
    /// the insert are one transaction, so concurrent creates can never exceed the limit. The
    /// tenant's cached list has it before this returns: every publish after it fans out to it.
    pub(crate) fn create_subscription(
        &self,
        subscription: &Subscription,
        max_webhooks: u32,
    ) -> Result<(), StoreError> {
        self.admit(WriteClass::Client)?;
        let tenant_id = subscription.tenant_id.as_str();
        let value = self.encode_subscription(subscription);
        let writes = self.subscription_cache.lock_writes();
        (&self.subscriptions, &self.tenant_subscriptions, &self.tenant_counts).transaction(
            |(subscriptions, index, counts)| {
                let count = read_count(counts, tenant_id)?;
                if count >= max_webhooks {
                    return Err(ConflictableTransactionError::Abort(StoreError::LimitExceeded));
                }
                subscriptions.insert(subscription.id.as_bytes(), value.as_slice())?;
                index.insert(keys::tenant_subscription(tenant_id, &subscription.id), &[])?;
                counts.insert(tenant_id.as_bytes(), &(count + 1).to_be_bytes())?;
                Ok(())
            },
        )?;
        self.subscription_cache.created(Arc::new(subscription.clone()));
        drop(writes);
        Ok(())
    }

    /// A subscription by id, whoever owns it (for the delivery engine).
    pub(crate) fn subscription_by_id(&self, id: &SubscriptionId) -> Result<Option<Subscription>, StoreError> {
        self.subscriptions.get(id.as_bytes())?.map(|bytes| self.decode_subscription(&bytes)).transpose()
    }

    /// [`Trees::subscription_by_id`] through the in-memory cache, for delivery attempts: a hit
    /// never waits on sled.
    pub(crate) fn cached_subscription(
        &self,
        id: &SubscriptionId,
    ) -> Result<Option<Arc<Subscription>>, StoreError> {
        if let Some(hit) = self.subscription_cache.get(id) {
            return Ok(Some(hit));
        }
        let _writes = self.subscription_cache.lock_writes();
        if let Some(hit) = self.subscription_cache.get(id) {
            return Ok(Some(hit));
        }
        let Some(stored) = self.subscription_by_id(id)? else { return Ok(None) };
        let stored = Arc::new(stored);
        self.subscription_cache.put(stored.clone());
        Ok(Some(stored))
    }

    /// A subscription of `tenant_id`; another tenant's id reads as absent.
    pub(crate) fn subscription(
        &self,
        tenant_id: &str,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>, StoreError> {
        Ok(self.subscription_by_id(id)?.filter(|found| found.tenant_id == tenant_id))
    }

    /// One page of a tenant's subscriptions, newest first, starting after `cursor` (the last id
    /// of the previous page). Returns the page and the cursor of the next one, if any.
    pub(crate) fn list_subscriptions(
        &self,
        tenant_id: &str,
        limit: usize,
        cursor: Option<&SubscriptionId>,
    ) -> Result<(Vec<Subscription>, Option<SubscriptionId>), StoreError> {
        let prefix = keys::tenant_prefix(tenant_id);
        let end = match cursor {
            Some(cursor) => keys::tenant_subscription(tenant_id, cursor),
            None => keys::prefix_end(&prefix),
        };
        let mut page = Vec::with_capacity(limit.min(100));
        let mut more = false;
        for entry in self.tenant_subscriptions.range(prefix.clone()..end).rev() {
            let (key, _) = entry?;
            if page.len() == limit {
                more = true;
                break;
            }
            let id = SubscriptionId::from_bytes(&key[prefix.len()..]).ok_or_else(|| {
                StoreError::Corrupt("tenant index key does not end in a subscription id".into())
            })?;
            if let Some(subscription) = self.subscription_by_id(&id)? {
                page.push(subscription);
            }
        }
        let next = if more { page.last().map(|last| last.id.clone()) } else { None };
        Ok((page, next))
    }

    /// All of a tenant's subscriptions, in id order, as the last write of the `subscriptions`
    /// tree that returned left them (for fan-out at publish and operational events): from
    /// memory, or read whole from sled under the cache's write lock when the tenant's list is
    /// not cached (first use since start-up, or after the cache was emptied).
    pub(crate) fn tenant_subscriptions(&self, tenant_id: &str) -> Result<TenantSubscriptions, StoreError> {
        if let Some(hit) = self.subscription_cache.tenant(tenant_id) {
            return Ok(hit);
        }
        let _writes = self.subscription_cache.lock_writes();
        if let Some(hit) = self.subscription_cache.tenant(tenant_id) {
            return Ok(hit);
        }
        let list: TenantSubscriptions = self.stored_tenant_subscriptions(tenant_id)?.into();
        self.subscription_cache.put_tenant(tenant_id, list.clone());
        Ok(list)
    }

    /// All of a tenant's subscriptions as sled holds them, in id order.
    pub(super) fn stored_tenant_subscriptions(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<Arc<Subscription>>, StoreError> {
        let prefix = keys::tenant_prefix(tenant_id);
        let mut all = Vec::new();
        for entry in self.tenant_subscriptions.scan_prefix(&prefix) {
            let (key, _) = entry?;
            if let Some(id) = SubscriptionId::from_bytes(&key[prefix.len()..]) {
                if let Some(subscription) = self.subscription_by_id(&id)? {
                    all.push(Arc::new(subscription));
                }
            }
        }
        Ok(all)
    }

    /// Applies `change` to a tenant's subscription atomically and returns the result. When the
    /// change makes the subscription deliverable again, its held deliveries are released.
    /// `change` may run more than once (transactions retry), so it must be a pure edit.
    pub(crate) fn update_subscription(
        &self,
        tenant_id: &str,
        id: &SubscriptionId,
        change: impl Fn(&mut Subscription),
    ) -> Result<Option<Subscription>, StoreError> {
        self.admit(WriteClass::Client)?;
        // Who would hear of a disable or re-enable (`webhook.disabled`, `webhook.enabled`).
        let audience = self.tenant_subscriptions(tenant_id)?;
        let writes = self.subscription_cache.lock_writes();
        let trees = (
            &self.subscriptions,
            &self.events,
            &self.deliveries,
            &self.queue,
            &self.held,
            &self.subscription_deliveries,
            &self.finished,
        );
        let outcome =
            trees.transaction(|(subscriptions, events, deliveries, queue, held, log, finished)| {
                let Some(bytes) = subscriptions.get(id.as_bytes())? else { return Ok(None) };
                let before = abort_on(self.decode_subscription(&bytes))?;
                if before.tenant_id != tenant_id {
                    return Ok(None);
                }
                let mut after = before.clone();
                change(&mut after);
                subscriptions.insert(id.as_bytes(), self.encode_subscription(&after))?;
                let mut created = None;
                if let Some(event) =
                    Operational::activity(before.is_active, &after, crate::model::now_millis())
                {
                    let indexes = Indexes { queue, held, log, finished };
                    created = store_operational(events, deliveries, &indexes, &event, &audience, &[&after])?;
                }
                Ok(Some((before.is_deliverable(), after, created)))
            })?;
        let Some((was_deliverable, after, created)) = outcome else { return Ok(None) };
        self.subscription_cache.refresh(&after);
        drop(writes);
        self.operational_stored(created.into_iter().collect())?;
        if !was_deliverable && after.is_deliverable() {
            self.release_held(&after.id)?;
        }
        Ok(Some(after))
    }

    /// Removes a tenant's subscription and then every delivery queued or logged for it.
    /// Returns false when there is no such subscription.
    pub(crate) fn delete_subscription(
        &self,
        tenant_id: &str,
        id: &SubscriptionId,
    ) -> Result<bool, StoreError> {
        // Deleting frees space: allowed until the last half of the reserve.
        self.admit(WriteClass::Internal)?;
        let writes = self.subscription_cache.lock_writes();
        let removed = (
            &self.subscriptions,
            &self.tenant_subscriptions,
            &self.tenant_counts,
            &self.deleted_subscriptions,
        )
            .transaction(|(subscriptions, index, counts, deleted)| {
                let Some(bytes) = subscriptions.get(id.as_bytes())? else { return Ok(false) };
                // Read without opening the secrets: a delete needs only the owner.
                let subscription: Subscription = abort_on(decode(&bytes))?;
                if subscription.tenant_id != tenant_id {
                    return Ok(false);
                }
                subscriptions.remove(id.as_bytes())?;
                index.remove(keys::tenant_subscription(tenant_id, id))?;
                let count = read_count(counts, tenant_id)?;
                counts.insert(tenant_id.as_bytes(), &count.saturating_sub(1).to_be_bytes())?;
                // The tombstone makes the cleanup below resumable after a crash.
                deleted.insert(id.as_bytes(), &[])?;
                Ok(true)
            })?;
        self.subscription_cache.forget(tenant_id, id);
        drop(writes);
        if removed {
            self.purge_subscription_data(id)?;
            self.announce(vec![QueueNotice::Rescan { subscription_id: id.clone() }]);
        }
        Ok(removed)
    }

    /// Finishes the cleanup of every deleted subscription (after a crash mid-cleanup).
    pub(crate) fn purge_deleted_subscriptions(&self) -> Result<usize, StoreError> {
        self.admit(WriteClass::Internal)?;
        let mut purged = 0;
        for entry in self.deleted_subscriptions.iter() {
            let (key, _) = entry?;
            match SubscriptionId::from_bytes(&key) {
                Some(id) => {
                    self.purge_subscription_data(&id)?;
                    purged += 1;
                }
                None => {
                    self.deleted_subscriptions.remove(&key)?;
                }
            }
        }
        Ok(purged)
    }

    /// Drops the queue, held and log entries and delivery records of a deleted subscription, in
    /// batches so a subscription with a huge backlog never makes one giant transaction.
    pub(super) fn purge_subscription_data(&self, id: &SubscriptionId) -> Result<(), StoreError> {
        loop {
            let batch: Vec<sled::IVec> = self
                .subscription_deliveries
                .scan_prefix(keys::subscription_prefix(id))
                .keys()
                .take(500)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            for key in &batch {
                if let Some(delivery_id) = keys::delivery_of(key) {
                    self.remove_delivery(&delivery_id)?;
                }
                // Index entries whose record was already gone (or that are not well-formed).
                self.subscription_deliveries.remove(key)?;
                self.held.remove(key)?;
            }
        }
        // Queue entries are removed with their delivery; sweep any stray ones too.
        for entry in self.queue.scan_prefix(keys::subscription_prefix(id)) {
            let (key, _) = entry?;
            self.queue.remove(key)?;
        }
        self.deleted_subscriptions.remove(id.as_bytes())?;
        Ok(())
    }
}

impl SealedSecrets for SledStore {
    fn secret_census(&self) -> Result<SecretCensus, StoreError> {
        self.run(Trees::secret_census)
    }

    fn reseal_secrets(&self) -> Result<usize, StoreError> {
        // What the plaintext reads as does not change: the subscription cache stays true.
        let rewritten = self.run(Trees::reseal_secrets)?;
        self.durable_blocking()?;
        Ok(rewritten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now_millis;
    use crate::store::embedded::SledStore;

    #[test]
    fn the_attempt_cache_follows_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let subscription = Subscription::new(
            "acme",
            "a",
            "https://a.example/",
            vec!["message.received".into()],
            now_millis(),
        );
        store.create_subscription(&subscription, 10).unwrap();
        assert!(store.cached_subscription(&subscription.id).unwrap().unwrap().is_deliverable());

        store.update_subscription("acme", &subscription.id, |s| s.is_paused = true).unwrap();
        assert!(!store.cached_subscription(&subscription.id).unwrap().unwrap().is_deliverable());
        // Another tenant's update changes nothing, in storage or in the cache.
        assert!(store
            .update_subscription("globex", &subscription.id, |s| s.is_paused = false)
            .unwrap()
            .is_none());
        assert!(store.cached_subscription(&subscription.id).unwrap().unwrap().is_paused);

        assert!(store.delete_subscription("acme", &subscription.id).unwrap());
        assert!(store.cached_subscription(&subscription.id).unwrap().is_none());
    }

    /// The tenant's cached list equals what sled holds, subscription for subscription.
    fn assert_exact(store: &Trees, tenant_id: &str) {
        let cached: Vec<Subscription> =
            store.tenant_subscriptions(tenant_id).unwrap().iter().map(|s| (**s).clone()).collect();
        let stored: Vec<Subscription> =
            store.stored_tenant_subscriptions(tenant_id).unwrap().iter().map(|s| (**s).clone()).collect();
        assert_eq!(cached, stored, "the cached list of {tenant_id} differs from storage");
    }

    fn subscription(tenant_id: &str, name: &str) -> Subscription {
        Subscription::new(
            tenant_id,
            name,
            "https://a.example/",
            vec!["message.received".into()],
            now_millis(),
        )
    }

    /// Every write of the `subscriptions` tree — create, update (pause, filters), a recorded
    /// attempt that disables, delete — is in the tenant's cached list when it returns, and a
    /// restarted store (an empty cache) reads the same list from sled.
    #[test]
    fn the_tenant_list_is_exact_through_every_subscription_write_and_a_restart() {
        use crate::lifecycle::AttemptDecision;
        use crate::model::Attempt;
        use crate::store::AttemptRecord;
        let dir = tempfile::tempdir().unwrap();
        let opened = SledStore::open(dir.path()).unwrap();
        let store = &opened.trees;
        assert!(store.tenant_subscriptions("acme").unwrap().is_empty(), "loaded, and cached, empty");
        let (a, b) = (subscription("acme", "a"), subscription("acme", "b"));
        store.create_subscription(&a, 10).unwrap();
        store.create_subscription(&b, 10).unwrap();
        store.create_subscription(&subscription("globex", "g"), 10).unwrap();
        assert_eq!(store.tenant_subscriptions("acme").unwrap().len(), 2);
        assert_exact(store, "acme");

        store.update_subscription("acme", &b.id, |s| s.is_paused = true).unwrap();
        store.update_subscription("acme", &a.id, |s| s.events = vec!["message.sent".into()]).unwrap();
        // Refused writes change nothing: another tenant's id, a create past the limit.
        assert!(store.update_subscription("globex", &a.id, |s| s.is_paused = true).unwrap().is_none());
        assert!(!store.delete_subscription("globex", &a.id).unwrap());
        let over = subscription("acme", "over");
        assert!(matches!(store.create_subscription(&over, 2), Err(StoreError::LimitExceeded)));
        assert_exact(store, "acme");
        let listed = store.tenant_subscriptions("acme").unwrap();
        assert!(listed[1].is_paused && listed[0].events == ["message.sent"]);

        // The recorder's write: a give-up disables `a`.
        store.update_subscription("acme", &a.id, |s| s.events = vec!["message.received".into()]).unwrap();
        let now = now_millis();
        store.publish("acme", true, &[crate::store::NewEvent::plain("message.received", now)], now).unwrap();
        let (due, delivery_id) = store.queued_after(&a.id, None, 1).unwrap().remove(0);
        let attempt = Attempt { at: now, duration_ms: 1, response_code: Some(500), error: None };
        let give_up = AttemptDecision::GiveUp { disable_reason: "gone".into() };
        let record =
            AttemptRecord { subscription_id: a.id.clone(), due, delivery_id, attempt, decision: give_up };
        assert_eq!(store.record_attempts(&[record]).unwrap(), 1);
        assert!(!store.tenant_subscriptions("acme").unwrap()[0].is_active);
        assert_exact(store, "acme");

        assert!(store.delete_subscription("acme", &a.id).unwrap());
        assert_eq!(store.tenant_subscriptions("acme").unwrap().len(), 1);
        assert_exact(store, "acme");
        assert_exact(store, "globex");

        let expected: Vec<Subscription> =
            store.tenant_subscriptions("acme").unwrap().iter().map(|s| (**s).clone()).collect();
        // A restart starts with an empty cache over the same trees.
        let restarted = Trees {
            subscription_cache: Arc::new(crate::store::embedded::cache::SubscriptionCache::new(10_000)),
            ..store.clone()
        };
        let again: Vec<Subscription> =
            restarted.tenant_subscriptions("acme").unwrap().iter().map(|s| (**s).clone()).collect();
        assert_eq!(again, expected);
    }

    /// The lists are bounded by `subscription_cache_entries` and emptied when full; a write to
    /// a tenant whose list was dropped is found when the list is read from sled again.
    #[test]
    fn tenant_lists_stay_exact_when_the_cache_empties() {
        let dir = tempfile::tempdir().unwrap();
        let opened = SledStore::open(dir.path()).unwrap();
        let store = Trees {
            subscription_cache: Arc::new(crate::store::embedded::cache::SubscriptionCache::new(3)),
            ..opened.trees.clone()
        };
        for (tenant_id, name) in [("acme", "a1"), ("acme", "a2"), ("globex", "g1"), ("globex", "g2")] {
            store.create_subscription(&subscription(tenant_id, name), 10).unwrap();
        }
        assert_eq!(store.tenant_subscriptions("acme").unwrap().len(), 2);
        // globex's two would make four: acme's list goes.
        assert_eq!(store.tenant_subscriptions("globex").unwrap().len(), 2);
        assert!(store.subscription_cache.tenant("acme").is_none());
        let late = subscription("acme", "a3");
        store.create_subscription(&late, 10).unwrap();
        let acme = store.tenant_subscriptions("acme").unwrap();
        assert_eq!(acme.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a1", "a2", "a3"]);
        // A tenant bigger than the bound is still cached, alone.
        assert!(store.subscription_cache.tenant("acme").is_some());
        assert!(store.subscription_cache.tenant("globex").is_none());
        assert_exact(&store, "acme");
        assert_exact(&store, "globex");
    }

    /// How many deliveries of `event_id` were made for `subscription_id`.
    fn made_for(store: &Trees, subscription_id: &SubscriptionId, event_id: &crate::model::EventId) -> usize {
        let log = store.subscription_deliveries.scan_prefix(keys::subscription_prefix(subscription_id));
        log.keys()
            .filter_map(|key| keys::delivery_of(&key.unwrap()))
            .filter_map(|delivery_id| store.delivery(&delivery_id).unwrap())
            .filter(|delivery| delivery.event_id == *event_id)
            .count()
    }

    /// Read-your-writes under contention: while other threads create, pause, rename and delete
    /// subscriptions of the same tenant and publish to it, every publish that starts after a
    /// create returned makes a delivery for it, and none after a delete returned; afterwards
    /// the cached list is exactly storage.
    #[test]
    fn a_publish_after_a_write_returned_sees_it_whatever_runs_beside() {
        use crate::store::NewEvent;
        let dir = tempfile::tempdir().unwrap();
        let opened = SledStore::open(dir.path()).unwrap();
        let store = &opened.trees;
        let steady = subscription("acme", "steady");
        store.create_subscription(&steady, 1000).unwrap();
        let publish = |store: &Trees| {
            let now = now_millis();
            store.publish("acme", true, &[NewEvent::plain("message.received", now)], now).unwrap()
        };
        std::thread::scope(|scope| {
            let churn = scope.spawn(|| {
                for round in 0..40 {
                    let other = subscription("acme", &format!("churn {round}"));
                    store.create_subscription(&other, 1000).unwrap();
                    store.update_subscription("acme", &steady.id, |s| s.is_paused = round % 2 == 0).unwrap();
                    store.update_subscription("acme", &other.id, |s| s.name = "renamed".into()).unwrap();
                    publish(store);
                    assert!(store.delete_subscription("acme", &other.id).unwrap());
                }
            });
            for round in 0..40 {
                let created = subscription("acme", &format!("checked {round}"));
                store.create_subscription(&created, 1000).unwrap();
                let answer = publish(store);
                assert_eq!(made_for(store, &created.id, &answer[0].event_id), 1, "after create {round}");
                assert!(store.delete_subscription("acme", &created.id).unwrap());
                let answer = publish(store);
                assert_eq!(made_for(store, &created.id, &answer[0].event_id), 0, "after delete {round}");
                assert!(answer[0].deliveries >= 1, "steady is always there");
            }
            churn.join().unwrap();
        });
        assert_exact(store, "acme");
    }

    /// Plaintext records (written before a key) are sealed by one re-seal, which a second run
    /// finds nothing left to do for; the tree then holds no plaintext, and reads open it.
    #[test]
    fn plaintext_secrets_are_sealed_once_and_then_read_only_with_the_key() {
        use crate::model::{RetiredSecret, SigningSecret};
        use crate::secrets::{MasterKey, SecretKeys};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let plain = &store.trees;
        let mut subscription = Subscription::new(
            "acme",
            "a",
            "https://a.example/",
            vec!["message.received".into()],
            now_millis(),
        );
        subscription.retired_secret =
            Some(RetiredSecret { secret: SigningSecret::from("whsec_retired".to_owned()), valid_until: 9 });
        plain.create_subscription(&subscription, 10).unwrap();
        let raw = || plain.subscriptions.get(subscription.id.as_bytes()).unwrap().unwrap().to_vec();
        let holds = |bytes: &[u8], needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(holds(&raw(), subscription.secret.expose()) && holds(&raw(), "whsec_retired"));

        let key = std::sync::Arc::new(MasterKey::from_bytes(&[5; 32]));
        let keyed = Trees { secrets: SecretKeys::sealing(key.clone()), ..plain.clone() };
        let census = keyed.secret_census().unwrap();
        assert_eq!((census.subscriptions, census.plaintext), (1, 2));
        assert_eq!(keyed.reseal_secrets().unwrap(), 1);
        assert_eq!(keyed.reseal_secrets().unwrap(), 0, "idempotent");
        let census = keyed.secret_census().unwrap();
        assert_eq!(census.plaintext, 0);
        assert_eq!(census.sealed.get(key.id()), Some(&2));
        assert!(!holds(&raw(), subscription.secret.expose()) && !holds(&raw(), "whsec_retired"));
        assert_eq!(keyed.subscription_by_id(&subscription.id).unwrap().unwrap(), subscription);
        // Without the key: an error naming it, never a sealed value handed out as a secret.
        let err = plain.subscription_by_id(&subscription.id).unwrap_err();
        assert!(matches!(&err, StoreError::MasterKey(message) if message.contains(key.id())), "{err}");

        // Updates keep the secrets sealed; what the API reads is the plaintext.
        keyed.update_subscription("acme", &subscription.id, |s| s.name = "b".into()).unwrap();
        assert!(!holds(&raw(), subscription.secret.expose()));
        assert_eq!(keyed.subscription_by_id(&subscription.id).unwrap().unwrap().secret, subscription.secret);
    }
}
