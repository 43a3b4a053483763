//! Publishing: an event, its fan-out deliveries, their queue (or held) entries and the client's
//! idempotency record, all written in one transaction — an outbox, so an acknowledged event can
//! never exist without its queued deliveries.

use std::collections::HashMap;
use std::sync::Arc;

use sled::transaction::TransactionalTree;
use sled::Transactional;

use crate::model::{Delivery, DeliveryState, Event, EventId, Millis, Subscription, SubscriptionId};
use crate::store::embedded::cache::TenantSubscriptions;
use crate::store::embedded::codec::{decode, encode, IdempotencyRecord};
use crate::store::embedded::index::{store_delivery, Indexes};
use crate::store::embedded::{
    abort_on, keys, NewEvent, PublishRequest, Published, QueueNotice, StoreError, Trees, WriteClass,
};
use crate::store::{fan_out, first_conflict, IDEMPOTENCY_WINDOW_MS};

/// What the transaction writes for one event, prepared outside it.
struct Planned {
    event: Event,
    deliveries: Vec<Delivery>,
    client_key: Option<Vec<u8>>,
    client_id: Option<String>,
    fingerprint: [u8; 32],
}

impl Trees {
    /// Stores `events` of `tenant_id` with one delivery per matching subscription (none when
    /// `webhooks_enabled` is false). Not yet durable (`SledStore` waits for group commit).
    pub(crate) fn publish(
        &self,
        tenant_id: &str,
        webhooks_enabled: bool,
        events: &[NewEvent],
        now: Millis,
    ) -> Result<Vec<Published>, StoreError> {
        let request = PublishRequest {
            tenant_id: tenant_id.to_owned(),
            webhooks_enabled,
            events: events.to_vec(),
            now,
        };
        self.publish_group(std::slice::from_ref(&request)).pop().unwrap_or(Err(StoreError::Unavailable))
    }

    /// Stores several requests in one transaction: the cost of a sled transaction (it holds
    /// sled's global write lock) is paid once for the group. Each request still succeeds or
    /// fails as a whole; when the group transaction aborts (a corrupt record), the requests are
    /// retried one by one so only the affected one fails.
    pub(crate) fn publish_group(
        &self,
        requests: &[PublishRequest],
    ) -> Vec<Result<Vec<Published>, StoreError>> {
        // sled writes a value about twice (its log, then a page rewrite or a blob file).
        let bytes: usize =
            requests.iter().flat_map(|request| &request.events).map(|event| event.body.len()).sum();
        if let Err(err) = self.admit_bytes(WriteClass::Client, 2 * bytes as u64) {
            // Counted once per refused request, not per group.
            requests.iter().skip(1).for_each(|_| self.errors.count(&err));
            return requests.iter().map(|_| Err(err.clone())).collect();
        }
        let planned = match self.plan_group(requests) {
            Ok(planned) => planned,
            Err(err) => return requests.iter().map(|_| Err(err.clone())).collect(),
        };
        match self.write_group(&planned) {
            Ok(answers) => answers,
            Err(StoreError::Corrupt(_)) if planned.len() > 1 => planned
                .chunks(1)
                .map(|one| match self.write_group(one) {
                    Ok(mut answers) => answers.pop().unwrap_or(Err(StoreError::Unavailable)),
                    Err(err) => Err(err),
                })
                .collect(),
            Err(err) => requests.iter().map(|_| Err(err.clone())).collect(),
        }
    }

    /// Plans every event of every request; each tenant's subscriptions are read once.
    fn plan_group(&self, requests: &[PublishRequest]) -> Result<Vec<Vec<Planned>>, StoreError> {
        let mut subscriptions: HashMap<&str, TenantSubscriptions> = HashMap::new();
        let mut planned = Vec::with_capacity(requests.len());
        for request in requests {
            let tenant_id = request.tenant_id.as_str();
            if request.webhooks_enabled && !subscriptions.contains_key(tenant_id) {
                subscriptions.insert(tenant_id, self.tenant_subscriptions(tenant_id)?);
            }
            let fan_out: &[Arc<Subscription>] = match request.webhooks_enabled {
                true => &subscriptions[tenant_id],
                false => &[],
            };
            planned.push(
                request.events.iter().map(|event| plan(tenant_id, event, fan_out, request.now)).collect(),
            );
        }
        Ok(planned)
    }

    /// One transaction for the planned requests, then the held-release check and the queue
    /// notices. Returns the answer of each request: its events, or why it was refused (an
    /// idempotency conflict refuses the whole request and writes none of its events).
    fn write_group(
        &self,
        planned: &[Vec<Planned>],
    ) -> Result<Vec<Result<Vec<Published>, StoreError>>, StoreError> {
        let trees = (
            &self.events,
            &self.deliveries,
            &self.queue,
            &self.held,
            &self.subscription_deliveries,
            &self.finished,
            &self.idempotency,
            &self.idempotency_expiry,
        );
        let answers =
            trees.transaction(|(events, deliveries, queue, held, log, finished, idempotency, expiry)| {
                let indexes = Indexes { queue, held, log, finished };
                let mut answers = Vec::with_capacity(planned.len());
                for request in planned {
                    if let Some(conflict) = conflict_in(idempotency, request)? {
                        answers.push(Err(conflict));
                        continue;
                    }
                    let mut request_answers = Vec::with_capacity(request.len());
                    for plan in request {
                        let now = plan.event.created_at;
                        if let Some(key) = &plan.client_key {
                            if let Some(previous) = remembered(idempotency, key, now)? {
                                let event_id =
                                    abort_on(EventId::parse(&previous.event_id).ok_or_else(|| {
                                        StoreError::Corrupt(format!(
                                            "idempotency record names event {:?}, not an event id",
                                            previous.event_id
                                        ))
                                    }))?;
                                request_answers.push(Published {
                                    event_id,
                                    deliveries: previous.deliveries,
                                    duplicate: true,
                                });
                                continue;
                            }
                            let record = IdempotencyRecord {
                                created_at: now,
                                event_id: plan.event.id.to_string(),
                                deliveries: plan.deliveries.len() as u32,
                                fingerprint: Some(plan.fingerprint),
                            };
                            idempotency.insert(key.as_slice(), encode(&record))?;
                            expiry.insert(keys::timed(now, key), &[])?;
                        }
                        // An event nobody subscribed to is answered but not kept: nothing references it.
                        if !plan.deliveries.is_empty() {
                            events.insert(plan.event.id.as_bytes(), encode(&plan.event))?;
                        }
                        for delivery in &plan.deliveries {
                            store_delivery(deliveries, &indexes, None, delivery, now)?;
                        }
                        request_answers.push(Published {
                            event_id: plan.event.id.clone(),
                            deliveries: plan.deliveries.len() as u32,
                            duplicate: false,
                        });
                    }
                    answers.push(Ok(request_answers));
                }
                Ok(answers)
            })?;

        // Deliveries this transaction created (duplicates and refused requests created nothing).
        let created = || {
            planned
                .iter()
                .zip(answers.iter())
                .filter_map(|(plans, answer)| answer.as_ref().ok().map(|answer| plans.iter().zip(answer)))
                .flatten()
                .filter(|(_, answer)| !answer.duplicate)
                .map(|(plan, _)| plan)
        };

        // The group is committed: what follows tidies up after it, and a failure there (logged)
        // must not turn the answers into errors — a client told 503 would publish again what is
        // stored, and the group's retry one request at a time would write it a second time.

        // A subscription deleted after this group planned: its delete's purge may have scanned
        // before these deliveries existed, and nothing else would ever remove them.
        let mut lists: HashMap<&str, TenantSubscriptions> = HashMap::new();
        let mut deleted: Vec<&SubscriptionId> = Vec::new();
        for plan in created().filter(|plan| !plan.deliveries.is_empty()) {
            let tenant_id = plan.event.tenant_id.as_str();
            if !lists.contains_key(tenant_id) {
                match self.tenant_subscriptions(tenant_id) {
                    Ok(list) => lists.insert(tenant_id, list),
                    Err(err) => {
                        tracing::warn!(tenant = tenant_id, error = %err, "cannot check a stored publish for subscriptions deleted meanwhile");
                        continue;
                    }
                };
            }
            let list = &lists[tenant_id];
            deleted.extend(
                plan.deliveries
                    .iter()
                    .map(|delivery| &delivery.subscription_id)
                    .filter(|id| list.binary_search_by(|subscription| subscription.id.cmp(id)).is_err()),
            );
        }
        deleted.sort_unstable();
        deleted.dedup();
        for subscription_id in &deleted {
            if let Err(err) = self.purge_subscription_data(subscription_id) {
                tracing::warn!(subscription = %subscription_id, error = %err, "cannot remove the deliveries a publish stored for a subscription deleted meanwhile");
            }
        }
        let live = |delivery: &&Delivery| deleted.binary_search(&&delivery.subscription_id).is_err();

        // A subscription un-paused while this transaction ran must not keep what it held.
        let mut held_for: Vec<&SubscriptionId> = created()
            .flat_map(|plan| plan.deliveries.iter())
            .filter(live)
            .filter(|delivery| delivery.state == DeliveryState::Held)
            .map(|delivery| &delivery.subscription_id)
            .collect();
        held_for.sort_unstable();
        held_for.dedup();
        for subscription_id in held_for {
            if let Err(err) = self.release_if_deliverable(subscription_id) {
                tracing::warn!(subscription = %subscription_id, error = %err, "cannot release what a publish held for a subscription un-paused meanwhile");
            }
        }

        // Attempts read the event from memory while it is fresh (events never change).
        for plan in created().filter(|plan| !plan.deliveries.is_empty()) {
            self.event_cache.put(Arc::new(plan.event.clone()));
        }

        // One message for the whole group (one send, one wake-up of the scheduler).
        let notices = created()
            .flat_map(|plan| plan.deliveries.iter())
            .filter(live)
            .filter(|delivery| delivery.state == DeliveryState::Pending)
            .map(|delivery| QueueNotice::Queued {
                subscription_id: delivery.subscription_id.clone(),
                due: delivery.created_at,
                delivery_id: delivery.id.clone(),
            });
        self.announce(notices.collect());
        Ok(answers)
    }

    /// Forgets idempotency ids older than the 24 h window. Returns how many.
    pub(crate) fn purge_idempotency(&self, now: Millis) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(IDEMPOTENCY_WINDOW_MS);
        let mut purged = 0;
        for entry in self.idempotency_expiry.range(..keys::timed(cutoff, b"")) {
            let (key, _) = entry?;
            if let Some((_, client_key)) = keys::parse_timed(&key) {
                // Only drop the record if it is this old one, not a newer reuse of the id.
                if let Some(bytes) = self.idempotency.get(client_key)? {
                    let record: IdempotencyRecord = decode(&bytes)?;
                    if record.created_at <= cutoff {
                        self.idempotency.remove(client_key)?;
                    }
                }
            }
            self.idempotency_expiry.remove(key)?;
            purged += 1;
        }
        Ok(purged)
    }
}

/// The idempotency conflict of a planned request, if any (the rule: `store::first_conflict`).
fn conflict_in(
    idempotency: &TransactionalTree,
    request: &[Planned],
) -> Result<Option<StoreError>, sled::transaction::ConflictableTransactionError<StoreError>> {
    let Some(first) = request.first() else { return Ok(None) };
    let (tenant_id, now) = (first.event.tenant_id.as_str(), first.event.created_at);
    let events: Vec<(Option<&str>, [u8; 32])> =
        request.iter().map(|plan| (plan.client_id.as_deref(), plan.fingerprint)).collect();
    first_conflict(&events, |client_id| {
        let key = keys::idempotency(tenant_id, client_id);
        Ok(remembered(idempotency, &key, now)?.and_then(|record| record.fingerprint))
    })
}

fn remembered(
    idempotency: &TransactionalTree,
    key: &[u8],
    now: Millis,
) -> Result<Option<IdempotencyRecord>, sled::transaction::ConflictableTransactionError<StoreError>> {
    let Some(bytes) = idempotency.get(key)? else { return Ok(None) };
    let record: IdempotencyRecord = abort_on(decode(&bytes))?;
    Ok((record.created_at + IDEMPOTENCY_WINDOW_MS > now).then_some(record))
}

fn plan(tenant_id: &str, event: &NewEvent, subscriptions: &[Arc<Subscription>], now: Millis) -> Planned {
    let (event_record, deliveries) = fan_out(tenant_id, event, subscriptions, now);
    Planned {
        event: event_record,
        client_key: event.client_id.as_deref().map(|client_id| keys::idempotency(tenant_id, client_id)),
        client_id: event.client_id.clone(),
        fingerprint: event.fingerprint,
        deliveries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now_millis;
    use crate::store::embedded::SledStore;

    fn event(client_id: Option<&str>) -> NewEvent {
        NewEvent {
            client_id: client_id.map(str::to_owned),
            ..NewEvent::plain("message.received", now_millis())
        }
    }

    fn request(tenant_id: &str, events: Vec<NewEvent>) -> PublishRequest {
        PublishRequest { tenant_id: tenant_id.into(), webhooks_enabled: true, events, now: now_millis() }
    }

    /// The rule for subscription writes racing a group: the group fans out to the tenant's
    /// subscriptions as they were when it planned — after every write that returned before
    /// the writer took its requests — and the next group sees every write since.
    #[test]
    fn a_group_fans_out_as_planned_and_the_next_one_sees_the_writes_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let now = now_millis();
        let a = Subscription::new("acme", "a", "https://a.example/", vec!["message.received".into()], now);
        let b = Subscription::new("acme", "b", "https://b.example/", vec!["message.received".into()], now);
        store.create_subscription(&a, 10).unwrap();

        let planned = store.plan_group(&[request("acme", vec![event(None)])]).unwrap();
        // Returned after the group planned: not in it.
        store.create_subscription(&b, 10).unwrap();
        store.update_subscription("acme", &a.id, |s| s.is_paused = true).unwrap();
        let answers = store.write_group(&planned).unwrap();
        assert_eq!(answers[0].as_ref().unwrap()[0].deliveries, 1);
        assert_eq!(store.queued_after(&a.id, None, 10).unwrap().len(), 1, "pending, as a was at planning");
        assert!(store.queued_after(&b.id, None, 10).unwrap().is_empty());

        // The next group: b, and a held.
        let answers = store.publish_group(&[request("acme", vec![event(None)])]);
        assert_eq!(answers[0].as_ref().unwrap()[0].deliveries, 2);
        assert_eq!(store.queued_after(&b.id, None, 10).unwrap().len(), 1);
        assert_eq!(store.held.scan_prefix(keys::subscription_prefix(&a.id)).count(), 1);

        // Deleted after the group planned, its purge done before the group commits: the group's
        // delivery for it is purged with it, never left behind.
        let c = Subscription::new("acme", "c", "https://c.example/", vec!["message.received".into()], now);
        store.create_subscription(&c, 10).unwrap();
        let planned = store.plan_group(&[request("acme", vec![event(None)])]).unwrap();
        assert!(store.delete_subscription("acme", &c.id).unwrap());
        let answers = store.write_group(&planned).unwrap();
        assert_eq!(answers[0].as_ref().unwrap()[0].deliveries, 3, "the answer as written: a (held), b, c");
        assert!(store.queued_after(&c.id, None, 10).unwrap().is_empty());
        assert_eq!(store.subscription_deliveries.scan_prefix(keys::subscription_prefix(&c.id)).count(), 0);
        assert!(!store.deleted_subscriptions.contains_key(c.id.as_bytes()).unwrap());
        assert_eq!(store.queued_after(&b.id, None, 10).unwrap().len(), 2, "b's delivery stays");

        // A filter change and a delete, both returned: the next group sends nothing to either.
        store.update_subscription("acme", &b.id, |s| s.events = vec!["message.sent".into()]).unwrap();
        assert!(store.delete_subscription("acme", &a.id).unwrap());
        let answers = store.publish_group(&[request("acme", vec![event(None)])]);
        assert_eq!(answers[0].as_ref().unwrap()[0].deliveries, 0);
    }

    #[test]
    fn a_group_answers_each_request_and_sees_its_own_idempotency_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let now = now_millis();
        let acme = Subscription::new("acme", "a", "https://a.example/", vec!["message.received".into()], now);
        let globex =
            Subscription::new("globex", "g", "https://g.example/", vec!["message.received".into()], now);
        store.create_subscription(&acme, 10).unwrap();
        store.create_subscription(&globex, 10).unwrap();

        let answers = store.publish_group(&[
            request("acme", vec![event(Some("same")), event(None)]),
            request("globex", vec![event(Some("same"))]),
            request("acme", vec![event(Some("same"))]),
            request("nobody", vec![event(None)]),
        ]);
        let answers: Vec<Vec<Published>> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 1, 1]);
        // The same client id of another tenant is another event; of the same tenant, a duplicate.
        assert!(!answers[1][0].duplicate);
        assert_eq!(answers[1][0].deliveries, 1);
        assert!(answers[2][0].duplicate);
        assert_eq!(answers[2][0].event_id, answers[0][0].event_id);
        assert_eq!(answers[3][0].deliveries, 0);
        // Three deliveries stored and queued: two for acme, one for globex.
        assert_eq!((store.queue.len(), store.held.len()), (3, 0));
        assert_eq!(store.queued_after(&acme.id, None, 10).unwrap().len(), 2);
        for answer in answers.iter().flatten().filter(|answer| answer.deliveries > 0) {
            assert!(store.event(&answer.event_id).unwrap().is_some());
        }
    }
}
