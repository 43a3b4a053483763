//! The one place that knows which index entries a delivery's state needs. Every transaction
//! that changes a delivery calls [`move_indexes`] with the record before and after the change
//! (from `crate::lifecycle`); none restates the key moves itself.
//!
//! | state | `queue` | `held` | `finished` | `subscription_deliveries` |
//! | --- | --- | --- | --- | --- |
//! | pending | (subscription, next attempt, id) | | | state byte |
//! | held | | (subscription, id) → held since | | state byte |
//! | succeeded, failed, expired | | | (finished at, id) | state byte |

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use crate::model::{Delivery, DeliveryState, Millis};
use crate::store::keys;

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

fn entries(delivery: Option<&Delivery>) -> Entries {
    let Some(delivery) = delivery else { return Entries::default() };
    let (subscription, id) = (delivery.subscription_id.as_str(), delivery.id.as_str());
    let index_key = keys::subscription_delivery(subscription, id);
    Entries {
        queue: match (delivery.state, delivery.next_attempt_at) {
            (DeliveryState::Pending, Some(due)) => Some(keys::queue(subscription, due, id)),
            _ => None,
        },
        held: (delivery.state == DeliveryState::Held).then(|| index_key.clone()),
        finished: match (delivery.state.is_finished(), delivery.finished_at) {
            (true, Some(at)) => Some(keys::timed(at, id.as_bytes())),
            _ => None,
        },
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
    deliveries.insert(after.id.as_bytes(), crate::store::codec::encode(after))?;
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
    let (old, new) = (entries(before), entries(after));
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
