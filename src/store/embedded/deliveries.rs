//! Deliveries: the due-ordered queue the engine drains, attempt outcomes, hold and release,
//! redelivery, expiry and retention purge, and the per-subscription delivery log.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use sled::Transactional;

use crate::lifecycle::AttemptDecision;
use crate::model::{
    Delivery, DeliveryId, DeliveryState, Event, EventId, Millis, Subscription, SubscriptionId,
};
use crate::store::embedded::cache::TenantSubscriptions;
use crate::store::embedded::codec::{decode, encode};
use crate::store::embedded::index::{move_indexes, store_delivery, Indexes, ON_TIME_MS};
use crate::store::embedded::{
    abort_on, keys, AttemptContext, AttemptRecord, QueueNotice, QueueNotices, StoreError, Trees, WriteClass,
};
use crate::store::{Operational, RECOVER_BATCH};

/// Deliveries examined (and purged) in one transaction of the retention purge.
const PURGE_BATCH: usize = 256;

/// The key, in the default tree, of the last delivery id the on-time retention purge examined
/// ([`Trees::purge_finished`]).
const PURGE_CURSOR: &[u8] = b"purge-cursor";

/// Whether `delivery` finished before `cutoff` (Unix ms): the retention purge's rule.
fn finished_before(delivery: &Delivery, cutoff: Millis) -> bool {
    delivery.state.is_finished() && delivery.finished_at.is_some_and(|at| at < cutoff)
}

/// Most log index entries examined for one page of a filtered listing, so a rare status on a
/// busy subscription costs a bounded scan; the page then ends early with a cursor.
const MAX_SCANNED_PER_PAGE: usize = 10_000;

/// What one batch of a recovery did ([`Trees::recover_batch`]).
#[derive(Debug)]
pub(crate) struct RecoveredBatch {
    /// Deliveries queued or held again.
    pub(crate) recovered: usize,
    /// The last log key examined, when the range goes on after it: the next batch starts there.
    pub(crate) next: Option<Vec<u8>>,
}

impl Trees {
    /// Subscriptions that have at least one queued delivery (one seek per subscription).
    pub(crate) fn subscriptions_with_queue(&self) -> Result<Vec<SubscriptionId>, StoreError> {
        let mut found = Vec::new();
        let mut from = Vec::new();
        while let Some(entry) = self.queue.range(from.clone()..).next() {
            let (key, _) = entry?;
            let Some((subscription_id, _, _)) = keys::parse_queue(&key) else {
                self.queue.remove(&key)?;
                continue;
            };
            from = keys::prefix_end(keys::subscription_prefix(&subscription_id));
            found.push(subscription_id);
        }
        Ok(found)
    }

    /// Up to `limit` queued deliveries of one subscription in due order, after `after`.
    pub(crate) fn queued_after(
        &self,
        subscription_id: &SubscriptionId,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, DeliveryId)>, StoreError> {
        let prefix = keys::subscription_prefix(subscription_id);
        let start = match after {
            Some((due, delivery_id)) => Bound::Excluded(keys::queue(subscription_id, due, delivery_id)),
            None => Bound::Included(prefix.to_vec()),
        };
        let end = Bound::Excluded(keys::prefix_end(prefix));
        let mut found = Vec::new();
        for entry in self.queue.range::<Vec<u8>, _>((start, end)).take(limit) {
            let (key, _) = entry?;
            if let Some((_, due, delivery_id)) = keys::parse_queue(&key) {
                found.push((due, delivery_id));
            }
        }
        Ok(found)
    }

    /// Reads a queued delivery with its subscription and event. `None` when any of them is
    /// gone (the subscription was deleted) or the key is stale; the stray queue entry is then
    /// removed.
    pub(crate) fn attempt_context(
        &self,
        subscription_id: &SubscriptionId,
        due: Millis,
        delivery_id: &DeliveryId,
    ) -> Result<Option<AttemptContext>, StoreError> {
        let delivery: Option<Delivery> =
            self.deliveries.get(delivery_id.as_bytes())?.map(|bytes| decode(&bytes)).transpose()?;
        let subscription = self.cached_subscription(subscription_id)?;
        let context = match (delivery, subscription) {
            // A key whose due time is not the delivery's current one is stale (it was
            // rescheduled meanwhile): never attempt twice for one due time.
            (Some(delivery), Some(subscription))
                if delivery.state == DeliveryState::Pending && delivery.next_attempt_at == Some(due) =>
            {
                let event = match self.event_cache.get(&delivery.event_id) {
                    Some(event) => Some(event),
                    None => self.event(&delivery.event_id)?.map(Arc::new),
                };
                event.map(|event| AttemptContext { delivery, subscription, event, rate_granted_at: None })
            }
            _ => None,
        };
        if context.is_none() {
            self.queue.remove(keys::queue(subscription_id, due, delivery_id))?;
        }
        Ok(context)
    }

    /// Records attempt outcomes in one transaction: each delivery's state, log and queue entry,
    /// and its subscription's last-delivery fields, failure counter and disable state. A
    /// subscription with several outcomes in the group is read and written once, the outcomes
    /// applied in order, so the workers of one busy subscription do not contend on its record.
    /// Returns how many subscriptions these outcomes disabled (each counted once, by the
    /// transaction that turned it off: two 410s racing for one subscription disable it once).
    pub(crate) fn record_attempts(&self, records: &[AttemptRecord]) -> Result<usize, StoreError> {
        self.admit(WriteClass::Internal)?;
        let audiences = self.operational_audiences(records)?;
        let writes = self.subscription_cache.lock_writes();
        let updated = (
            &self.deliveries,
            &self.queue,
            &self.held,
            &self.subscription_deliveries,
            &self.finished,
            &self.subscriptions,
            &self.events,
        )
            .transaction(|(deliveries, queue, held, log, finished, subscriptions, events)| {
                let indexes = Indexes { queue, held, log, finished };
                let mut touched: HashMap<&SubscriptionId, Option<Subscription>> = HashMap::new();
                let mut disabled = 0;
                let mut operational = Vec::new();
                for record in records {
                    let AttemptRecord { subscription_id, due, delivery_id, attempt, decision } = record;
                    // The attempt ended here: a finished delivery finished then.
                    let ended = attempt.at + Millis::from(attempt.duration_ms);
                    let job_key = keys::queue(subscription_id, *due, delivery_id);
                    let Some(bytes) = deliveries.get(delivery_id.as_bytes())? else {
                        queue.remove(job_key)?;
                        continue;
                    };
                    let before: Delivery = abort_on(decode(&bytes))?;
                    let mut after = before.clone();
                    after.record_attempt(attempt.clone(), decision, ended);
                    store_delivery(deliveries, &indexes, Some(&before), &after, ended)?;
                    operational.extend(Operational::exhausted(&before, &after, attempt, ended));
                    // The key the job was made for, if the record had moved on meanwhile.
                    if after.state != DeliveryState::Pending || after.next_attempt_at != Some(*due) {
                        queue.remove(job_key)?;
                    }

                    let subscription = match touched.entry(subscription_id) {
                        Entry::Occupied(entry) => entry.into_mut(),
                        Entry::Vacant(entry) => {
                            let stored = subscriptions.get(subscription_id.as_bytes())?;
                            let opened = stored.map(|bytes| self.decode_subscription(&bytes)).transpose();
                            entry.insert(abort_on(opened)?)
                        }
                    };
                    if let Some(subscription) = subscription {
                        if subscription.apply_outcome(attempt, decision) {
                            disabled += 1;
                            operational.extend(Operational::activity(true, subscription, ended));
                        }
                    }
                }
                let fresh: Vec<&Subscription> = touched.values().flatten().collect();
                let mut created = Vec::with_capacity(operational.len());
                for event in &operational {
                    let Some(audience) = audiences.get(&event.tenant_id) else { continue };
                    created.extend(store_operational(events, deliveries, &indexes, event, audience, &fresh)?);
                }
                let mut updated = Vec::with_capacity(touched.len());
                for (subscription_id, subscription) in touched {
                    if let Some(subscription) = subscription {
                        subscriptions
                            .insert(subscription_id.as_bytes(), self.encode_subscription(&subscription))?;
                        updated.push(subscription);
                    }
                }
                Ok((updated, disabled, created))
            })?;
        let (updated, disabled, created) = updated;
        // Still under the write lock: the cache changes in commit order.
        self.subscription_cache.refresh_all(&updated);
        drop(writes);
        self.operational_stored(created)?;
        let retries = records.iter().filter_map(|record| match record.decision {
            AttemptDecision::Retry { due } => Some(QueueNotice::Queued {
                subscription_id: record.subscription_id.clone(),
                due,
                delivery_id: record.delivery_id.clone(),
            }),
            _ => None,
        });
        self.announce(retries.collect());
        Ok(disabled)
    }

    /// The subscriptions of every tenant an outcome of `records` may send an operational event
    /// to (only an attempt that gives up can: `delivery.exhausted`, `webhook.disabled`), read
    /// before the transaction as publish reads them.
    fn operational_audiences(
        &self,
        records: &[AttemptRecord],
    ) -> Result<HashMap<String, TenantSubscriptions>, StoreError> {
        let mut audiences = HashMap::new();
        for record in records {
            if !matches!(record.decision, AttemptDecision::GiveUp { .. }) {
                continue;
            }
            let Some(subscription) = self.cached_subscription(&record.subscription_id)? else { continue };
            if !audiences.contains_key(&subscription.tenant_id) {
                let audience = self.tenant_subscriptions(&subscription.tenant_id)?;
                audiences.insert(subscription.tenant_id.clone(), audience);
            }
        }
        Ok(audiences)
    }

    /// After a transaction stored operational events: what publish does after its commit (the
    /// event cache, the release check of what was held, the queue notices).
    pub(super) fn operational_stored(&self, created: Vec<(Event, Vec<Delivery>)>) -> Result<(), StoreError> {
        let mut notices = QueueNotices::new();
        for (event, deliveries) in created {
            for delivery in &deliveries {
                match delivery.state {
                    DeliveryState::Pending => notices.push(QueueNotice::Queued {
                        subscription_id: delivery.subscription_id.clone(),
                        due: delivery.created_at,
                        delivery_id: delivery.id.clone(),
                    }),
                    _ => self.release_if_deliverable(&delivery.subscription_id)?,
                }
            }
            self.event_cache.put(Arc::new(event));
        }
        self.announce(notices);
        Ok(())
    }

    /// Moves a queued delivery to `held` (its subscription is paused or disabled).
    pub(crate) fn hold(
        &self,
        subscription_id: &SubscriptionId,
        due: Millis,
        delivery_id: &DeliveryId,
    ) -> Result<(), StoreError> {
        self.admit(WriteClass::Internal)?;
        let now = crate::model::now_millis();
        let queue_key = keys::queue(subscription_id, due, delivery_id);
        (&self.deliveries, &self.queue, &self.held, &self.subscription_deliveries, &self.finished)
            .transaction(|(deliveries, queue, held, log, finished)| {
                let indexes = Indexes { queue, held, log, finished };
                queue.remove(queue_key.as_slice())?;
                let Some(bytes) = deliveries.get(delivery_id.as_bytes())? else { return Ok(()) };
                let before: Delivery = abort_on(decode(&bytes))?;
                let mut after = before.clone();
                if after.hold() {
                    store_delivery(deliveries, &indexes, Some(&before), &after, now)?;
                }
                Ok(())
            })?;
        self.release_if_deliverable(subscription_id)
    }

    /// Closes the race between holding a delivery and un-pausing its subscription: whoever
    /// commits a `held` key re-reads the subscription afterwards and releases if it became
    /// deliverable. An un-pause either commits before this read (seen here) or its own release
    /// scan starts after the held key committed (found there).
    pub(super) fn release_if_deliverable(&self, subscription_id: &SubscriptionId) -> Result<(), StoreError> {
        if self.subscription_by_id(subscription_id)?.is_some_and(|subscription| subscription.is_deliverable())
        {
            self.release_held(subscription_id)?;
        }
        Ok(())
    }

    /// Releases held deliveries of every subscription that is deliverable: after a crash
    /// between a re-enable and its release, they would otherwise wait for `hold_retention`.
    pub(crate) fn release_all_deliverable(&self) -> Result<usize, StoreError> {
        let mut released = 0;
        let mut from = Vec::new();
        while let Some(entry) = self.held.range(from.clone()..).next() {
            let (key, _) = entry?;
            let Some(subscription_id) = keys::subscription_of(&key) else {
                // Not a key this store writes: drop it rather than stop recovery on it.
                self.held.remove(&key)?;
                continue;
            };
            from = keys::prefix_end(keys::subscription_prefix(&subscription_id));
            if self
                .subscription_by_id(&subscription_id)?
                .is_some_and(|subscription| subscription.is_deliverable())
            {
                released += self.release_held(&subscription_id)?;
            }
        }
        Ok(released)
    }

    /// Queues every held delivery of a subscription for now, in batches, with a fresh round of
    /// retries. Returns how many were released.
    pub(crate) fn release_held(&self, subscription_id: &SubscriptionId) -> Result<usize, StoreError> {
        let mut released = 0;
        loop {
            let batch: Vec<sled::IVec> = self
                .held
                .scan_prefix(keys::subscription_prefix(subscription_id))
                .keys()
                .take(500)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            let now = crate::model::now_millis();
            (&self.deliveries, &self.queue, &self.held, &self.subscription_deliveries, &self.finished)
                .transaction(|(deliveries, queue, held, log, finished)| {
                    let indexes = Indexes { queue, held, log, finished };
                    for key in &batch {
                        // A stray entry (its record gone or no longer held) goes too.
                        held.remove(key)?;
                        let Some(delivery_id) = keys::delivery_of(key) else { continue };
                        let Some(bytes) = deliveries.get(delivery_id.as_bytes())? else { continue };
                        let before: Delivery = abort_on(decode(&bytes))?;
                        let mut after = before.clone();
                        if after.release(now) {
                            store_delivery(deliveries, &indexes, Some(&before), &after, now)?;
                        }
                    }
                    Ok(())
                })?;
            released += batch.len();
        }
        if released > 0 {
            self.announce(vec![QueueNotice::Rescan { subscription_id: subscription_id.clone() }]);
        }
        Ok(released)
    }

    /// Held deliveries that have been held since before `now - retention` become `expired`.
    /// `hold_retention` counts from the moment a delivery became held (the `held` entry's
    /// value), so a redelivery or a retry held late gets the whole retention, and one held
    /// again after a release counts anew. An entry without that instant (stored before it
    /// was kept) is stamped `now` and waits a whole retention from here. Returns how many
    /// expired.
    pub(crate) fn expire_held(&self, now: Millis, retention_ms: Millis) -> Result<usize, StoreError> {
        self.admit(WriteClass::Internal)?;
        let cutoff = now.saturating_sub(retention_ms);
        let mut expired = 0;
        for entry in self.held.iter() {
            let (key, value) = entry?;
            let Some(delivery_id) = keys::delivery_of(&key) else { continue };
            let Some(held_since) = keys::parse_held_since(&value) else {
                // Only stamp the entry if it is still the unstamped one.
                let _ = self.held.compare_and_swap(&key, Some(value), Some(&keys::held_since(now)))?;
                continue;
            };
            if held_since >= cutoff {
                continue;
            }
            let done =
                (&self.deliveries, &self.queue, &self.held, &self.subscription_deliveries, &self.finished)
                    .transaction(|(deliveries, queue, held, log, finished)| {
                        let indexes = Indexes { queue, held, log, finished };
                        // Held again meanwhile (released and held anew): not this entry any more.
                        if held.get(&key)?.is_none_or(|current| current != value) {
                            return Ok(false);
                        }
                        let Some(bytes) = deliveries.get(delivery_id.as_bytes())? else {
                            held.remove(&key)?;
                            return Ok(false);
                        };
                        let before: Delivery = abort_on(decode(&bytes))?;
                        let mut after = before.clone();
                        if !after.expire(now) {
                            held.remove(&key)?;
                            return Ok(false);
                        }
                        store_delivery(deliveries, &indexes, Some(&before), &after, now)?;
                        Ok(true)
                    })?;
            expired += usize::from(done);
        }
        Ok(expired)
    }

    /// Removes finished deliveries (and events nobody references any more) that finished
    /// before `now - retention`, in transactions of [`PURGE_BATCH`]. Late finishers are found
    /// by their `finished` key; on-time ones (see [`ON_TIME_MS`]) in id order, which is
    /// creation order, up to the deliveries created before `now - retention - ON_TIME_MS`
    /// (every on-time one among them finished before `now - retention`), continuing after
    /// the last id an earlier purge examined (`purge-cursor` in the default tree). What that
    /// scan passes without purging is pending, held or a late finisher, and so has, or will
    /// have when it finishes (late, by then), a `finished` key. Returns how many deliveries
    /// were purged.
    pub(crate) fn purge_finished(&self, now: Millis, retention_ms: Millis) -> Result<usize, StoreError> {
        self.admit(WriteClass::Internal)?;
        let cutoff = now.saturating_sub(retention_ms);
        let mut purged = 0;
        // Late finishers: every key before the cutoff goes, with its record when that finished
        // before the cutoff (otherwise the key is stray: a record gone, redelivered, or
        // finished again later under another key).
        loop {
            let batch: Vec<sled::IVec> = self
                .finished
                .range(..keys::timed(cutoff, b""))
                .keys()
                .take(PURGE_BATCH)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            let ids: Vec<DeliveryId> = batch.iter().filter_map(|key| keys::finished_delivery(key)).collect();
            purged +=
                self.remove_deliveries(&ids, |delivery| finished_before(delivery, cutoff), &batch, None)?;
        }
        // On-time finishers, in id order from the cursor.
        let end = DeliveryId::first_at(cutoff.saturating_sub(ON_TIME_MS));
        let mut cursor = self.db.get(PURGE_CURSOR)?;
        loop {
            let start = match &cursor {
                Some(cursor) => Bound::Excluded(cursor.to_vec()),
                None => Bound::Unbounded,
            };
            let mut ids = Vec::with_capacity(PURGE_BATCH);
            let mut last = None;
            for entry in self
                .deliveries
                .range::<Vec<u8>, _>((start, Bound::Excluded(end.as_bytes().to_vec())))
                .take(PURGE_BATCH)
            {
                let (key, bytes) = entry?;
                let delivery: Delivery = decode(&bytes)?;
                if finished_before(&delivery, cutoff) {
                    ids.push(delivery.id);
                }
                last = Some(key);
            }
            let Some(last) = last else { break };
            purged +=
                self.remove_deliveries(&ids, |delivery| finished_before(delivery, cutoff), &[], Some(&last))?;
            cursor = Some(last);
        }
        Ok(purged)
    }

    /// Removes a delivery record with every index entry pointing at it, and its event when it
    /// was the last delivery referencing it.
    pub(super) fn remove_delivery(&self, delivery_id: &DeliveryId) -> Result<(), StoreError> {
        self.remove_deliveries(std::slice::from_ref(delivery_id), |_| true, &[], None).map(drop)
    }

    /// Removes, in one transaction, each delivery of `ids` whose record (read in the
    /// transaction) `purge` accepts, with every index entry pointing at it, and each event no
    /// delivery references any more (an event is read and written once for the batch, however
    /// many of its deliveries go). Also removes the `finished` keys `stray` and stores `cursor`
    /// as the on-time purge's `purge-cursor`. Returns how many deliveries were removed.
    fn remove_deliveries(
        &self,
        ids: &[DeliveryId],
        purge: impl Fn(&Delivery) -> bool,
        stray: &[sled::IVec],
        cursor: Option<&[u8]>,
    ) -> Result<usize, StoreError> {
        let trees = (
            &self.deliveries,
            &self.events,
            &self.queue,
            &self.held,
            &self.subscription_deliveries,
            &self.finished,
            &*self.db,
        );
        let removed = trees.transaction(|(deliveries, events, queue, held, log, finished, default)| {
            let indexes = Indexes { queue, held, log, finished };
            for key in stray {
                finished.remove(key)?;
            }
            let mut released: HashMap<&EventId, u32> = HashMap::new();
            let mut removed = 0;
            let mut gone = Vec::with_capacity(ids.len());
            for delivery_id in ids {
                let Some(bytes) = deliveries.get(delivery_id.as_bytes())? else { continue };
                let delivery: Delivery = abort_on(decode(&bytes))?;
                if !purge(&delivery) {
                    continue;
                }
                deliveries.remove(delivery_id.as_bytes())?;
                move_indexes(&indexes, Some(&delivery), None, 0)?;
                gone.push(delivery);
                removed += 1;
            }
            for delivery in &gone {
                *released.entry(&delivery.event_id).or_default() += 1;
            }
            for (event_id, count) in released {
                let Some(bytes) = events.get(event_id.as_bytes())? else { continue };
                let mut event: Event = abort_on(decode(&bytes))?;
                event.live_deliveries = event.live_deliveries.saturating_sub(count);
                if event.live_deliveries == 0 {
                    events.remove(event_id.as_bytes())?;
                } else {
                    events.insert(event_id.as_bytes(), encode(&event))?;
                }
            }
            if let Some(cursor) = cursor {
                default.insert(PURGE_CURSOR, cursor)?;
            }
            Ok(removed)
        })?;
        Ok(removed)
    }

    /// Queues a delivery again with a fresh round of retries (held instead while the
    /// subscription is paused or disabled). A delivery still pending or held is left as it is.
    pub(crate) fn redeliver(
        &self,
        subscription: &Subscription,
        delivery_id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        self.admit(WriteClass::Client)?;
        let now = crate::model::now_millis();
        let subscription_id = &subscription.id;
        let result =
            (&self.deliveries, &self.queue, &self.held, &self.subscription_deliveries, &self.finished)
                .transaction(|(deliveries, queue, held, log, finished)| {
                    let indexes = Indexes { queue, held, log, finished };
                    let Some(bytes) = deliveries.get(delivery_id.as_bytes())? else { return Ok(None) };
                    let before: Delivery = abort_on(decode(&bytes))?;
                    if before.subscription_id != *subscription_id {
                        return Ok(None);
                    }
                    let mut after = before.clone();
                    if after.redeliver(subscription.is_deliverable(), now) {
                        store_delivery(deliveries, &indexes, Some(&before), &after, now)?;
                    }
                    Ok(Some(after))
                })?;
        if let Some(delivery) = &result {
            if delivery.state == DeliveryState::Pending && delivery.next_attempt_at == Some(now) {
                self.announce(vec![QueueNotice::Queued {
                    subscription_id: subscription_id.clone(),
                    due: now,
                    delivery_id: delivery_id.clone(),
                }]);
            }
        }
        Ok(result)
    }

    /// One batch of `DeliveryLog::recover`: the subscription's delivery log entries in
    /// `(start, end)` (`end` excluded), up to [`RECOVER_BATCH`] of them `failed` or `expired`
    /// (examining at most [`MAX_SCANNED_PER_PAGE`] entries), are redelivered in one
    /// transaction — pending, or held while the subscription as stored now is not deliverable.
    /// Returns how many were queued or held again, and the last log key examined when the
    /// range goes on past it. Not yet durable: the caller waits for that.
    pub(crate) fn recover_batch(
        &self,
        subscription_id: &SubscriptionId,
        start: Bound<Vec<u8>>,
        end: &[u8],
    ) -> Result<RecoveredBatch, StoreError> {
        self.admit(WriteClass::Client)?;
        let Some(subscription) = self.subscription_by_id(subscription_id)? else {
            return Ok(RecoveredBatch { recovered: 0, next: None });
        };
        let deliverable = subscription.is_deliverable();
        let recoverable = [keys::state_byte(DeliveryState::Failed), keys::state_byte(DeliveryState::Expired)];
        let mut candidates = Vec::new();
        let mut last_examined = None;
        let mut more = false;
        let range = self.subscription_deliveries.range::<Vec<u8>, _>((start, Bound::Excluded(end.to_vec())));
        for (scanned, entry) in range.enumerate() {
            if candidates.len() == RECOVER_BATCH || scanned == MAX_SCANNED_PER_PAGE {
                more = true;
                break;
            }
            let (key, state) = entry?;
            if state.first().is_some_and(|state| recoverable.contains(state)) {
                candidates.extend(keys::delivery_of(&key));
            }
            last_examined = Some(key.to_vec());
        }
        let now = crate::model::now_millis();
        let (queued, held) = if candidates.is_empty() {
            (0, 0)
        } else {
            (&self.deliveries, &self.queue, &self.held, &self.subscription_deliveries, &self.finished)
                .transaction(|(deliveries, queue, held, log, finished)| {
                    let indexes = Indexes { queue, held, log, finished };
                    let (mut queued, mut kept) = (0usize, 0usize);
                    for delivery_id in &candidates {
                        let Some(bytes) = deliveries.get(delivery_id.as_bytes())? else { continue };
                        let before: Delivery = abort_on(decode(&bytes))?;
                        // Re-read in the transaction: only what is failed or expired now.
                        if before.subscription_id != *subscription_id
                            || !matches!(before.state, DeliveryState::Failed | DeliveryState::Expired)
                        {
                            continue;
                        }
                        let mut after = before.clone();
                        if after.redeliver(deliverable, now) {
                            store_delivery(deliveries, &indexes, Some(&before), &after, now)?;
                            match after.state {
                                DeliveryState::Pending => queued += 1,
                                _ => kept += 1,
                            }
                        }
                    }
                    Ok((queued, kept))
                })?
        };
        if queued > 0 {
            self.announce(vec![QueueNotice::Rescan { subscription_id: subscription_id.clone() }]);
        }
        if held > 0 {
            // The subscription may have been resumed since it was read: as `hold` does.
            self.release_if_deliverable(subscription_id)?;
        }
        Ok(RecoveredBatch { recovered: queued + held, next: if more { last_examined } else { None } })
    }

    pub(crate) fn delivery(&self, delivery_id: &DeliveryId) -> Result<Option<Delivery>, StoreError> {
        self.deliveries.get(delivery_id.as_bytes())?.map(|bytes| decode(&bytes)).transpose()
    }

    pub(crate) fn event(&self, event_id: &EventId) -> Result<Option<Event>, StoreError> {
        self.events.get(event_id.as_bytes())?.map(|bytes| decode(&bytes)).transpose()
    }

    /// One page of a subscription's delivery log, newest first, optionally only one state.
    pub(crate) fn list_deliveries(
        &self,
        subscription_id: &SubscriptionId,
        state: Option<DeliveryState>,
        limit: usize,
        cursor: Option<&DeliveryId>,
    ) -> Result<(Vec<Delivery>, Option<DeliveryId>), StoreError> {
        let start = keys::subscription_prefix(subscription_id).to_vec();
        let end = match cursor {
            Some(cursor) => keys::subscription_delivery(subscription_id, cursor),
            None => keys::prefix_end(keys::subscription_prefix(subscription_id)),
        };
        let wanted = state.map(keys::state_byte);
        let mut page = Vec::new();
        let mut last_scanned = None;
        let mut more = false;
        for (scanned, entry) in self.subscription_deliveries.range(start..end).rev().enumerate() {
            let (key, value) = entry?;
            if page.len() == limit || scanned == MAX_SCANNED_PER_PAGE {
                more = true;
                break;
            }
            let Some(delivery_id) = keys::delivery_of(&key) else { continue };
            last_scanned = Some(delivery_id.clone());
            if wanted.is_some_and(|wanted| value.first() != Some(&wanted)) {
                continue;
            }
            if let Some(delivery) = self.delivery(&delivery_id)? {
                page.push(delivery);
            }
        }
        Ok((page, if more { last_scanned } else { None }))
    }
}

/// Stores an operational event in the caller's transaction, fanned out to `audience` (the
/// tenant's subscriptions; `fresh` are those the same transaction changed): the event and its
/// deliveries with their index keys, as publish stores them. Returns what it stored, for
/// [`Trees::operational_stored`] after the commit; `None` when no subscription lists the type.
pub(super) fn store_operational(
    events: &sled::transaction::TransactionalTree,
    deliveries: &sled::transaction::TransactionalTree,
    indexes: &Indexes<'_>,
    event: &Operational,
    audience: &[Arc<Subscription>],
    fresh: &[&Subscription],
) -> Result<Option<(Event, Vec<Delivery>)>, sled::transaction::ConflictableTransactionError<StoreError>> {
    let at = event.event.id.created_at();
    let (stored, fanned) = event.fan_out(audience, fresh, at);
    if fanned.is_empty() {
        return Ok(None);
    }
    events.insert(stored.id.as_bytes(), encode(&stored))?;
    for delivery in &fanned {
        store_delivery(deliveries, indexes, None, delivery, at)?;
    }
    Ok(Some((stored, fanned)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now_millis;
    use crate::model::Attempt;
    use crate::store::embedded::{NewEvent, SledStore};

    fn failed(at: Millis, status: u16) -> Attempt {
        Attempt { at, duration_ms: 1, response_code: Some(status), error: Some(format!("HTTP {status}")) }
    }

    #[test]
    fn a_group_of_outcomes_applies_each_in_order_and_writes_the_subscription_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let now = now_millis();
        let subscription =
            Subscription::new("acme", "a", "https://a.example/", vec!["message.received".into()], now);
        store.create_subscription(&subscription, 10).unwrap();
        let events: Vec<NewEvent> = (0..3).map(|_| NewEvent::plain("message.received", now)).collect();
        store.publish("acme", true, &events, now).unwrap();
        let queued = store.queued_after(&subscription.id, None, 10).unwrap();
        assert_eq!(queued.len(), 3);

        let record = |(due, delivery_id): &(Millis, DeliveryId), attempt, decision| AttemptRecord {
            subscription_id: subscription.id.clone(),
            due: *due,
            delivery_id: delivery_id.clone(),
            attempt,
            decision,
        };
        let retry_at = now + 60_000;
        let disabled = store
            .record_attempts(&[
                record(&queued[0], failed(now + 1, 503), AttemptDecision::Retry { due: retry_at }),
                record(&queued[1], failed(now + 2, 500), AttemptDecision::Retry { due: retry_at }),
                record(
                    &queued[2],
                    failed(now + 3, 502),
                    AttemptDecision::GiveUp { disable_reason: "too many consecutive failures".into() },
                ),
            ])
            .unwrap();
        assert_eq!(disabled, 1, "the giving-up outcome disabled it, once");

        let stored = store.subscription_by_id(&subscription.id).unwrap().unwrap();
        assert_eq!(stored.consecutive_failures, 3);
        assert_eq!(stored.last_delivery_response_code, Some(502));
        assert_eq!(stored.last_delivery_at, Some(now + 3));
        assert!(!stored.is_active);
        assert_eq!(stored.disable_reason.as_deref(), Some("too many consecutive failures"));

        // Two retries moved to their new due time; the third finished as failed.
        let requeued = store.queued_after(&subscription.id, None, 10).unwrap();
        assert_eq!(requeued.iter().map(|(due, _)| *due).collect::<Vec<_>>(), [retry_at, retry_at]);
        let last = store.delivery(&queued[2].1).unwrap().unwrap();
        assert_eq!(last.state, DeliveryState::Failed);
        assert_eq!(last.attempts.len(), 1);

        // A success afterwards resets the counter.
        store
            .record_attempts(&[AttemptRecord {
                attempt: Attempt { at: now + 4, duration_ms: 1, response_code: Some(200), error: None },
                ..record(&requeued[0], failed(0, 0), AttemptDecision::Succeeded)
            }])
            .unwrap();
        let stored = store.subscription_by_id(&subscription.id).unwrap().unwrap();
        assert_eq!(stored.consecutive_failures, 0);
        assert_eq!(stored.last_delivery_status, Some(crate::model::LastDeliveryStatus::Succeeded));
    }

    /// The retention purge takes each finished delivery once it finished `retention` ago (an
    /// on-time one at most ON_TIME_MS later), through its `finished` key or in id order, never
    /// one that finished since, nor a pending one; a key an older version wrote for an on-time
    /// delivery goes with its record; an event goes with its last delivery.
    #[test]
    fn the_retention_purge_finds_on_time_and_late_finishers_and_never_purges_early() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let day = 24 * 3_600_000;
        let retention = 7 * day;
        // Ids are made greater than every id the process made before (another test makes some
        // in the year 8308): past them, so that these deliveries' ids are from t0, as the
        // purge's id-order scan expects of ids made at the real time.
        let t0 = 250_000_000_000_000;
        let subscription =
            Subscription::new("acme", "a", "https://a.example/", vec!["message.received".into()], t0);
        store.create_subscription(&subscription, 10).unwrap();
        let events: Vec<NewEvent> = (0..4).map(|_| NewEvent::plain("message.received", t0)).collect();
        store.publish("acme", true, &events, t0).unwrap();
        let queued = store.queued_after(&subscription.id, None, 10).unwrap();
        let record = |(due, delivery_id): &(Millis, DeliveryId), at: Millis, decision| AttemptRecord {
            subscription_id: subscription.id.clone(),
            due: *due,
            delivery_id: delivery_id.clone(),
            attempt: Attempt { at, duration_ms: 1, response_code: Some(200), error: None },
            decision,
        };
        let (on_time, late, pending, legacy) = (&queued[0], &queued[1], &queued[2], &queued[3]);
        let two_hours = 2 * 3_600_000;
        store
            .record_attempts(&[
                record(on_time, t0 + 1_000, AttemptDecision::Succeeded),
                record(late, t0 + 1_000, AttemptDecision::Retry { due: t0 + two_hours }),
                record(legacy, t0 + 2_000, AttemptDecision::Succeeded),
            ])
            .unwrap();
        store
            .record_attempts(&[record(
                &(t0 + two_hours, late.1.clone()),
                t0 + two_hours,
                AttemptDecision::Succeeded,
            )])
            .unwrap();
        assert_eq!(store.finished.len(), 1, "only the late finisher has a `finished` key");
        // What a version before ON_TIME_MS stored for an on-time delivery: a key as well.
        let legacy_record = store.delivery(&legacy.1).unwrap().unwrap();
        store
            .finished
            .insert(crate::store::embedded::index::finished_key(&legacy_record).unwrap(), &[])
            .unwrap();

        assert_eq!(
            store.purge_finished(t0 + 1_001 + retention, retention).unwrap(),
            0,
            "not a retention yet"
        );
        // Past the retention of both on-time ones (and ON_TIME_MS), before the late one's.
        assert_eq!(store.purge_finished(t0 + retention + ON_TIME_MS + 3_000, retention).unwrap(), 2);
        assert!(
            store.delivery(&on_time.1).unwrap().is_none() && store.delivery(&legacy.1).unwrap().is_none()
        );
        assert_eq!(store.finished.len(), 1, "the old key went with its record");
        assert!(store.delivery(&late.1).unwrap().is_some());
        assert_eq!(
            store.purge_finished(t0 + retention + two_hours, retention).unwrap(),
            0,
            "finished less than a retention ago"
        );
        assert_eq!(store.purge_finished(t0 + retention + two_hours + 2, retention).unwrap(), 1);
        assert_eq!(
            (store.finished.len(), store.deliveries.len(), store.events.len()),
            (0, 1, 1),
            "the pending one and its event stay"
        );
        assert!(store.delivery(&pending.1).unwrap().is_some());
        // The on-time scan goes on after the last id it examined: the pending one.
        assert_eq!(store.db.get(PURGE_CURSOR).unwrap().as_deref(), Some(pending.1.as_bytes()));
        assert_eq!(store.purge_finished(t0 + 30 * day, retention).unwrap(), 0);
    }

    #[test]
    fn hold_retention_counts_from_the_hold_and_unstamped_entries_wait_a_whole_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let created = now_millis() - 10 * 60_000;
        let mut subscription =
            Subscription::new("acme", "a", "https://a.example/", vec!["message.received".into()], created);
        subscription.is_paused = true;
        store.create_subscription(&subscription, 10).unwrap();
        let event = |at| NewEvent::plain("message.received", at);
        // Created ten minutes ago and held since then; a second one held one minute ago.
        store.publish("acme", true, &[event(created)], created).unwrap();
        store.publish("acme", true, &[event(created + 9 * 60_000)], created + 9 * 60_000).unwrap();
        let retention = 5 * 60_000;
        assert_eq!(store.expire_held(now_millis(), retention).unwrap(), 1, "only the one held 10 min");

        // An entry written before the held instant was kept: stamped now, expires a retention later.
        let (key, _) = store.held.iter().next().unwrap().unwrap();
        store.held.insert(&key, &[]).unwrap();
        let now = now_millis();
        assert_eq!(store.expire_held(now, retention).unwrap(), 0, "stamped now, not expired");
        assert_eq!(store.expire_held(now + retention - 1, retention).unwrap(), 0);
        assert_eq!(store.expire_held(now + retention + 1, retention).unwrap(), 1);
        assert_eq!((store.queue.len(), store.held.len()), (0, 0));
    }
}
