//! Key encodings of the sled trees. Ids are their typed-id text, fixed-length ASCII
//! ([`SubscriptionId::LEN`], [`DeliveryId::LEN`]: prefix + ULID), times are big-endian u64
//! milliseconds, so byte order is the order we scan in. Splitting a key back into its parts
//! uses those lengths and validates each id.

use crate::model::{DeliveryId, DeliveryState, Millis, SubscriptionId};

const SUBSCRIPTION_ID_LEN: usize = SubscriptionId::LEN;
const DELIVERY_ID_LEN: usize = DeliveryId::LEN;

/// `tenant_subscriptions`: tenant id, 0x00, subscription id.
pub fn tenant_subscription(tenant_id: &str, subscription_id: &SubscriptionId) -> Vec<u8> {
    let mut key = tenant_prefix(tenant_id);
    key.extend_from_slice(subscription_id.as_bytes());
    key
}

/// The prefix of one tenant's keys: tenant id, 0x00 (tenant ids never contain 0x00).
pub fn tenant_prefix(tenant_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant_id.len() + 1 + SUBSCRIPTION_ID_LEN);
    key.extend_from_slice(tenant_id.as_bytes());
    key.push(0);
    key
}

/// `queue`: subscription id, due time, delivery id. One subscription's pending deliveries are
/// contiguous and in due order.
pub fn queue(subscription_id: &SubscriptionId, due: Millis, delivery_id: &DeliveryId) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUBSCRIPTION_ID_LEN + 8 + DELIVERY_ID_LEN);
    key.extend_from_slice(subscription_id.as_bytes());
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(delivery_id.as_bytes());
    key
}

/// The first bytes of every key of one subscription in `queue`, `held` and
/// `subscription_deliveries`.
pub fn subscription_prefix(subscription_id: &SubscriptionId) -> &[u8] {
    subscription_id.as_bytes()
}

/// The subscription id a `queue`, `held` or `subscription_deliveries` key starts with.
pub fn subscription_of(key: &[u8]) -> Option<SubscriptionId> {
    SubscriptionId::from_bytes(key.get(..SUBSCRIPTION_ID_LEN)?)
}

/// Splits a `queue` key into (subscription id, due, delivery id); `None` for a key that is
/// not one.
pub fn parse_queue(key: &[u8]) -> Option<(SubscriptionId, Millis, DeliveryId)> {
    if key.len() != SUBSCRIPTION_ID_LEN + 8 + DELIVERY_ID_LEN {
        return None;
    }
    let (subscription, rest) = key.split_at(SUBSCRIPTION_ID_LEN);
    let (due, delivery) = rest.split_at(8);
    Some((
        SubscriptionId::from_bytes(subscription)?,
        Millis::from_be_bytes(due.try_into().ok()?),
        DeliveryId::from_bytes(delivery)?,
    ))
}

/// `held` and `subscription_deliveries`: subscription id, delivery id.
pub fn subscription_delivery(subscription_id: &SubscriptionId, delivery_id: &DeliveryId) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUBSCRIPTION_ID_LEN + DELIVERY_ID_LEN);
    key.extend_from_slice(subscription_id.as_bytes());
    key.extend_from_slice(delivery_id.as_bytes());
    key
}

/// The byte stored as the value of a `subscription_deliveries` entry, so the log can filter by
/// state without decoding records. Append only: these numbers are on disk.
pub fn state_byte(state: DeliveryState) -> u8 {
    match state {
        DeliveryState::Pending => 0,
        DeliveryState::Held => 1,
        DeliveryState::Succeeded => 2,
        DeliveryState::Failed => 3,
        DeliveryState::Expired => 4,
    }
}

/// The value of a `held` entry: when the delivery became held (u64 BE ms), the instant
/// `hold_retention` counts from. Entries written before this value existed are empty.
pub fn held_since(at: Millis) -> [u8; 8] {
    at.to_be_bytes()
}

/// Reads a `held` value; `None` for an empty (older) one.
pub fn parse_held_since(value: &[u8]) -> Option<Millis> {
    Some(Millis::from_be_bytes(value.try_into().ok()?))
}

/// The delivery id at the end of a `held` / `subscription_deliveries` key.
pub fn delivery_of(key: &[u8]) -> Option<DeliveryId> {
    DeliveryId::from_bytes(key.get(SUBSCRIPTION_ID_LEN..)?)
}

/// The delivery id of a `finished` key (a timed key).
pub fn finished_delivery(key: &[u8]) -> Option<DeliveryId> {
    parse_timed(key).and_then(|(_, id)| DeliveryId::from_bytes(id))
}

/// `finished` and `idempotency_expiry`: a time, then an identifying suffix.
pub fn timed(at: Millis, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + suffix.len());
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(suffix);
    key
}

/// Splits a timed key into (time, suffix).
pub fn parse_timed(key: &[u8]) -> Option<(Millis, &[u8])> {
    let (at, suffix) = key.split_at_checked(8)?;
    Some((Millis::from_be_bytes(at.try_into().ok()?), suffix))
}

/// `idempotency`: tenant id, 0x00, the client's id.
pub fn idempotency(tenant_id: &str, client_id: &str) -> Vec<u8> {
    let mut key = tenant_prefix(tenant_id);
    key.extend_from_slice(client_id.as_bytes());
    key
}

/// The smallest key greater than every key starting with `prefix`, for range ends.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_round_trip_and_sort_by_due() {
        let subscription = SubscriptionId::parse("wh_01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        let delivery = DeliveryId::parse("dlv_01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        let early = queue(&subscription, 5, &delivery);
        let late = queue(&subscription, 256, &delivery);
        assert!(early < late);
        assert_eq!(parse_queue(&late), Some((subscription.clone(), 256, delivery.clone())));
        assert_eq!(parse_queue(b"short"), None);
        let index = subscription_delivery(&subscription, &delivery);
        assert_eq!((subscription_of(&index), delivery_of(&index)), (Some(subscription), Some(delivery)));
        // A key of the right length whose parts are not ids is not a queue key.
        assert_eq!(parse_queue(&[b'x'; SUBSCRIPTION_ID_LEN + 8 + DELIVERY_ID_LEN]), None);
    }

    #[test]
    fn timed_keys_sort_by_time() {
        assert!(timed(1, b"z") < timed(2, b"a"));
        assert_eq!(parse_timed(&timed(7, b"x")), Some((7, &b"x"[..])));
    }
}
