//! Key encodings of the sled trees. Ids are fixed-length ASCII (prefix + ULID), times are
//! big-endian u64 milliseconds, so byte order is the order we scan in.

use crate::model::{DeliveryState, Millis};

/// Length of a subscription id: `wh_` + 26.
pub const SUBSCRIPTION_ID_LEN: usize = 29;
/// Length of a delivery id: `dlv_` + 26.
pub const DELIVERY_ID_LEN: usize = 30;

/// `tenant_subscriptions`: tenant id, 0x00, subscription id.
pub fn tenant_subscription(tenant_id: &str, subscription_id: &str) -> Vec<u8> {
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
pub fn queue(subscription_id: &str, due: Millis, delivery_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(SUBSCRIPTION_ID_LEN + 8 + DELIVERY_ID_LEN);
    key.extend_from_slice(subscription_id.as_bytes());
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(delivery_id.as_bytes());
    key
}

/// Splits a `queue` key into (subscription id, due, delivery id).
pub fn parse_queue(key: &[u8]) -> Option<(&str, Millis, &str)> {
    if key.len() != SUBSCRIPTION_ID_LEN + 8 + DELIVERY_ID_LEN {
        return None;
    }
    let (subscription, rest) = key.split_at(SUBSCRIPTION_ID_LEN);
    let (due, delivery) = rest.split_at(8);
    Some((
        std::str::from_utf8(subscription).ok()?,
        Millis::from_be_bytes(due.try_into().ok()?),
        std::str::from_utf8(delivery).ok()?,
    ))
}

/// `held` and `subscription_deliveries`: subscription id, delivery id.
pub fn subscription_delivery(subscription_id: &str, delivery_id: &str) -> Vec<u8> {
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
pub fn delivery_of(key: &[u8]) -> Option<&str> {
    key.get(SUBSCRIPTION_ID_LEN..).and_then(|rest| std::str::from_utf8(rest).ok())
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
        let subscription = "wh_01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let delivery = "dlv_01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let early = queue(subscription, 5, delivery);
        let late = queue(subscription, 256, delivery);
        assert!(early < late);
        assert_eq!(parse_queue(&late), Some((subscription, 256, delivery)));
        assert_eq!(parse_queue(b"short"), None);
    }

    #[test]
    fn timed_keys_sort_by_time() {
        assert!(timed(1, b"z") < timed(2, b"a"));
        assert_eq!(parse_timed(&timed(7, b"x")), Some((7, &b"x"[..])));
    }
}
