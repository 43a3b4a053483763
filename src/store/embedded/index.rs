//! The one place that knows which index entries a delivery's state needs. Every transaction
//! that changes a delivery calls [`move_indexes`] with the record before and after the change
//! (from `crate::lifecycle`); none restates the key moves itself.
//!
//! | state | `queue` | `held` | `finished` | `subscription_deliveries` |
//! | --- | --- | --- | --- | --- |
//! | pending | (subscription, next attempt, id) | | | state byte |
//! | held | | (subscription, id) → held since | | state byte |
//! | succeeded, failed, expired | | | (finished at, id), only when it finished more than [`ON_TIME_MS`] after it was created | state byte |
//!
//! A delivery that finished within [`ON_TIME_MS`] of its creation (nearly every one: delivered
//! at its first attempt) has no `finished` key: the retention purge finds it in id order, which
//! is creation order (`Trees::purge_finished`). Every key costs sled far more than its bytes
//! (a fragment logged per insert, its leaf rewritten every ten), and this one was written once
//! per delivery only to be read once, a week later.

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use crate::model::{Delivery, DeliveryState, Millis};
use crate::store::embedded::keys;

/// A delivery that finished at most this long (ms) after it was created finished "on time" and
/// has no `finished` key; one that took longer (retries, holds, a redelivery, a long backlog)
/// has one. The retention purge reaches on-time deliveries in id order up to `cutoff − ON_TIME_MS`,
/// so they are purged at most this much later than `delivery_retention` after they finished.
pub(super) const ON_TIME_MS: Millis = 60_000;

/// The index trees of a delivery transaction, as seen inside it.
pub(super) struct Indexes<'a> {
    pub queue: &'a TransactionalTree,
    pub held: &'a TransactionalTree,
    pub log: &'a TransactionalTree,
    pub finished: &'a TransactionalTree,
}

/// The entries one delivery has in each index tree.
#[derive(Debug, Default, PartialEq, Eq)]
struct Entries {
    queue: Option<Vec<u8>>,
    held: Option<Vec<u8>>,
    finished: Option<Vec<u8>>,
    log: Option<(Vec<u8>, u8)>,
}

/// The `finished` key a finished delivery has if it finished late, whether or not it did (stores
/// before [`ON_TIME_MS`] gave every finished delivery one: a move away from a finished state
/// removes this key, which is nothing for sled when it is not there).
pub(super) fn finished_key(delivery: &Delivery) -> Option<Vec<u8>> {
    match (delivery.state.is_finished(), delivery.finished_at) {
        (true, Some(at)) => Some(keys::timed(at, delivery.id.as_bytes())),
        _ => None,
    }
}

fn entries(delivery: Option<&Delivery>) -> Entries {
    let Some(delivery) = delivery else { return Entries::default() };
    let (subscription, id) = (&delivery.subscription_id, &delivery.id);
    let index_key = keys::subscription_delivery(subscription, id);
    Entries {
        queue: match (delivery.state, delivery.next_attempt_at) {
            (DeliveryState::Pending, Some(due)) => Some(keys::queue(subscription, due, id)),
            _ => None,
        },
        held: (delivery.state == DeliveryState::Held).then(|| index_key.clone()),
        finished: finished_key(delivery)
            .filter(|_| delivery.finished_at.is_some_and(|at| at > delivery.created_at + ON_TIME_MS)),
        log: Some((index_key, keys::state_byte(delivery.state))),
    }
}

/// Stores `after` as the delivery's record and moves its index entries from `before` (see
/// [`move_indexes`]): the one write every delivery state change makes.
pub(super) fn store_delivery(
    deliveries: &TransactionalTree,
    indexes: &Indexes,
    before: Option<&Delivery>,
    after: &Delivery,
    now: Millis,
) -> Result<(), UnabortableTransactionError> {
    deliveries.insert(after.id.as_bytes(), crate::store::embedded::codec::encode(after))?;
    move_indexes(indexes, before, Some(after), now)
}

/// Moves the index entries of one delivery from what `before` needs to what `after` needs
/// (`None`: the record does not exist). A delivery that becomes held is stamped `now` as the
/// instant `hold_retention` counts from; one that stays held keeps its stamp.
pub(super) fn move_indexes(
    indexes: &Indexes,
    before: Option<&Delivery>,
    after: Option<&Delivery>,
    now: Millis,
) -> Result<(), UnabortableTransactionError> {
    let (mut old, new) = (entries(before), entries(after));
    // Whatever `finished` key the record may have (an on-time one written before ON_TIME_MS).
    old.finished = before.and_then(finished_key);
    for (tree, old, new) in
        [(indexes.queue, &old.queue, &new.queue), (indexes.finished, &old.finished, &new.finished)]
    {
        if old != new {
            if let Some(key) = old {
                tree.remove(key.as_slice())?;
            }
            if let Some(key) = new {
                tree.insert(key.as_slice(), &[])?;
            }
        }
    }
    if old.held != new.held {
        if let Some(key) = &old.held {
            indexes.held.remove(key.as_slice())?;
        }
        if let Some(key) = &new.held {
            indexes.held.insert(key.as_slice(), &keys::held_since(now))?;
        }
    }
    if old.log != new.log {
        match (&old.log, &new.log) {
            (_, Some((key, state))) => {
                indexes.log.insert(key.as_slice(), &[*state])?;
            }
            (Some((key, _)), None) => {
                indexes.log.remove(key.as_slice())?;
            }
            (None, None) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::AttemptDecision;
    use crate::model::{Attempt, Subscription};
    use crate::model::{DeliveryId, EventId};
    use crate::store::embedded::{SledStore, Trees};
    use sled::Transactional;

    /// The index entries a delivery has in storage now: (queue, held, finished, log byte).
    fn stored(store: &Trees, delivery: &Delivery) -> (bool, Option<Millis>, bool, Option<u8>) {
        let index_key = keys::subscription_delivery(&delivery.subscription_id, &delivery.id);
        let queued =
            store.queue.scan_prefix(keys::subscription_prefix(&delivery.subscription_id)).count() == 1;
        let held = store.held.get(&index_key).unwrap().and_then(|value| keys::parse_held_since(&value));
        let finished = store.finished.iter().count() == 1;
        let log = store.subscription_deliveries.get(&index_key).unwrap().map(|value| value[0]);
        (queued, held, finished, log)
    }

    fn apply(store: &Trees, before: Option<&Delivery>, after: Option<&Delivery>, now: Millis) {
        let trees = (&store.queue, &store.held, &store.subscription_deliveries, &store.finished);
        trees
            .transaction(|(queue, held, log, finished)| {
                move_indexes(&Indexes { queue, held, log, finished }, before, after, now)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
    }

    #[test]
    fn every_state_has_exactly_its_entries_through_a_whole_life() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let subscription = Subscription::new("t", "s", "https://a.example/", vec!["a.b".into()], 0);
        let new = Delivery::new(DeliveryId::new(10), &subscription, &EventId::new(10), "a.b", 10);
        apply(store, None, Some(&new), 10);
        assert_eq!(stored(store, &new), (true, None, false, Some(0)), "pending");

        let mut retried = new.clone();
        let attempt = Attempt { at: 20, duration_ms: 1, response_code: Some(503), error: None };
        retried.record_attempt(attempt.clone(), &AttemptDecision::Retry { due: 99 }, 21);
        apply(store, Some(&new), Some(&retried), 21);
        let due: Vec<_> =
            store.queue.iter().keys().map(|key| keys::parse_queue(&key.unwrap()).unwrap().1).collect();
        assert_eq!(due, [99], "the queue key moved to the new due time");

        let mut held = retried.clone();
        assert!(held.hold());
        apply(store, Some(&retried), Some(&held), 30);
        assert_eq!(stored(store, &held), (false, Some(30), false, Some(1)), "held since 30");
        apply(store, Some(&held), Some(&held), 40);
        assert_eq!(stored(store, &held).1, Some(30), "staying held keeps the stamp");

        // Expired after more than ON_TIME_MS: a late finisher, with its `finished` key.
        let late = 10 + ON_TIME_MS + 1;
        let mut expired = held.clone();
        assert!(expired.expire(late));
        apply(store, Some(&held), Some(&expired), late);
        assert_eq!(stored(store, &expired), (false, None, true, Some(4)), "expired");

        let mut again = expired.clone();
        assert!(again.redeliver(false, late + 10));
        apply(store, Some(&expired), Some(&again), late + 10);
        assert_eq!(
            stored(store, &again),
            (false, Some(late + 10), false, Some(1)),
            "redelivered while paused"
        );

        apply(store, Some(&again), None, late + 20);
        assert_eq!(stored(store, &again), (false, None, false, None), "removed: no entry left");
    }

    /// A delivery finished within ON_TIME_MS of its creation has no `finished` key (the purge
    /// finds it in id order); the key a version before gave every finished delivery goes with
    /// the record's next move, whatever it is.
    #[test]
    fn an_on_time_finish_has_no_finished_key_and_an_older_one_goes_with_the_next_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let store = &store.trees;
        let subscription = Subscription::new("t", "s", "https://a.example/", vec!["a.b".into()], 0);
        let new = Delivery::new(DeliveryId::new(10), &subscription, &EventId::new(10), "a.b", 10);
        apply(store, None, Some(&new), 10);
        let mut done = new.clone();
        let attempt = Attempt { at: 20, duration_ms: 1, response_code: Some(200), error: None };
        done.record_attempt(attempt, &AttemptDecision::Succeeded, 10 + ON_TIME_MS);
        apply(store, Some(&new), Some(&done), 10 + ON_TIME_MS);
        assert_eq!(stored(store, &done), (false, None, false, Some(2)), "succeeded on time: no key");

        // As stored before: the same record with a `finished` key.
        store.finished.insert(finished_key(&done).unwrap(), &[]).unwrap();
        let mut again = done.clone();
        assert!(again.redeliver(true, 10 + ON_TIME_MS + 5));
        apply(store, Some(&done), Some(&again), 10 + ON_TIME_MS + 5);
        assert_eq!(stored(store, &again), (true, None, false, Some(0)), "queued again, the old key gone");
    }
}
