//! Versioned encoding of stored values: one version byte, then bincode (fixed-width, the
//! `bincode::serialize` flavour, chosen once and forever) of that version's frozen shape.
//!
//! To change a stored struct: copy its current shape here as `...V1`, bump `VERSION` on the
//! live type, and teach `decode` to read the old version and convert it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{Delivery, Event, Subscription};
use crate::store::StoreError;

/// A value stored in sled, with the version byte written before it.
pub trait Versioned: Serialize + DeserializeOwned {
    /// Version of the shape this type has today.
    const VERSION: u8;
    /// Name used in corruption errors.
    const NAME: &'static str;
}

impl Versioned for Subscription {
    const VERSION: u8 = 1;
    const NAME: &'static str = "subscription";
}

impl Versioned for Event {
    const VERSION: u8 = 1;
    const NAME: &'static str = "event";
}

impl Versioned for Delivery {
    const VERSION: u8 = 1;
    const NAME: &'static str = "delivery";
}

/// The remembered answer to a publish with a client idempotency id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    pub created_at: crate::model::Millis,
    pub event_id: String,
    pub deliveries: u32,
}

impl Versioned for IdempotencyRecord {
    const VERSION: u8 = 1;
    const NAME: &'static str = "idempotency record";
}

pub fn encode<T: Versioned>(value: &T) -> Vec<u8> {
    let mut bytes = vec![T::VERSION];
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize_into(&mut bytes, value).expect("bincode serialization of a plain struct");
    bytes
}

pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&version, rest)) if version == T::VERSION => bincode::deserialize(rest)
            .map_err(|err| StoreError::Corrupt(format!("{} record does not decode: {err}", T::NAME))),
        Some((&version, _)) => {
            Err(StoreError::Corrupt(format!("{} record has unknown format version {version}", T::NAME)))
        }
        None => Err(StoreError::Corrupt(format!("{} record is empty", T::NAME))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attempt, DeliveryState};

    /// Pins the on-disk bytes: if this fails, a stored format changed without a new version.
    #[test]
    fn golden_bytes_of_a_delivery() {
        let delivery = Delivery {
            id: "dlv_1".into(),
            tenant_id: "t".into(),
            subscription_id: "wh_1".into(),
            event_id: "evt_1".into(),
            event_type: "a.b".into(),
            state: DeliveryState::Held,
            attempts: vec![Attempt { at: 5, duration_ms: 6, response_code: Some(503), error: None }],
            attempts_in_round: 1,
            next_attempt_at: None,
            created_at: 7,
            finished_at: Some(8),
        };
        let bytes = encode(&delivery);
        assert_eq!(
            hex::encode(&bytes),
            "010500000000000000646c765f310100000000000000740400000000000000\
             77685f3105000000000000006576745f31030000000000000061\
             2e62010000000100000000000000050000000000000006000000\
             01f70100010000000007000000000000000108000000000000\
             00"
        );
        assert_eq!(decode::<Delivery>(&bytes).unwrap(), delivery);
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        assert!(decode::<Delivery>(&[]).is_err());
        assert!(decode::<Delivery>(&[9, 1, 2]).is_err());
        assert!(decode::<Delivery>(&[1, 255, 255]).is_err());
    }
}
