//! Stored records: the frozen on-disk shapes of the domain types, apart from the types
//! themselves, so a domain type can change without changing what is on disk, and what is on
//! disk changes only by adding a version here.
//!
//! Each record is encoded by [`super::codec`] as one version byte plus bincode of its shape.
//! A record type is frozen once written: to change one, copy it as `…V<n>`, give the new
//! shape the next [`Versioned::VERSION`] and read the old one in [`Versioned::migrate`] (as
//! [`IdempotencyRecord`](super::codec::IdempotencyRecord) does). Golden bytes in the tests below
//! pin every version. After garage's `Migrate` (a version marker and a `migrate` from the older
//! shape), with the older shapes dispatched by version number rather than chained by type.
//!
//! Ids are stored as their text and checked when read: a record whose id is not well-formed
//! reads as [`StoreError::Corrupt`].

use serde::{Deserialize, Serialize};

use crate::model::{
    Attempt, Delivery, DeliveryId, DeliveryState, Event, EventId, LastDeliveryStatus, Millis, RetiredSecret,
    SigningSecret, Subscription, SubscriptionId,
};
use crate::store::embedded::codec::Versioned;
use crate::store::embedded::StoreError;

/// A domain type kept in storage as the record [`Stored::Record`].
pub trait Stored: Sized {
    /// The current record shape.
    type Record: Versioned;
    fn to_record(&self) -> Self::Record;
    /// The domain value of a record; [`StoreError::Corrupt`] when a field does not hold.
    fn from_record(record: Self::Record) -> Result<Self, StoreError>;
}

fn id<T>(parse: impl Fn(&str) -> Option<T>, text: &str, what: &str) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| StoreError::Corrupt(format!("stored {what} id {text:?} is not well-formed")))
}

/// Subscription record, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionV1 {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub max_retries: u32,
    pub retry_delay_seconds: u32,
    pub is_active: bool,
    pub is_paused: bool,
    pub disable_reason: Option<String>,
    pub disabled_at: Option<Millis>,
    pub consecutive_failures: u32,
    pub last_delivery_at: Option<Millis>,
    pub last_delivery_status: Option<LastDeliveryStatusV1>,
    pub last_delivery_response_code: Option<u16>,
    pub last_delivery_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub secret: String,
    pub retired_secret: Option<RetiredSecretV1>,
}

/// The outcome of a subscription's last attempt, as stored (variant order is on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LastDeliveryStatusV1 {
    Succeeded,
    Failed,
}

/// A retired signing secret, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredSecretV1 {
    pub secret: String,
    pub valid_until: Millis,
}

impl Versioned for SubscriptionV1 {
    const VERSION: u8 = 1;
    const NAME: &'static str = "subscription";
}

/// Subscription record, version 2: every field of version 1, then the rate limit. bincode
/// writes a nested struct's fields in place, so a version 2 record is the bytes of a version 1
/// record followed by the new field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionV2 {
    pub v1: SubscriptionV1,
    /// `rateLimitPerSecond`; `None`: no limit.
    pub rate_limit_per_second: Option<u32>,
}

impl Versioned for SubscriptionV2 {
    const VERSION: u8 = 2;
    const NAME: &'static str = "subscription";

    /// Version 1 had no rate limit: it reads as none.
    fn migrate(version: u8, bytes: &[u8]) -> Result<Self, StoreError> {
        match version {
            SubscriptionV1::VERSION => {
                let v1: SubscriptionV1 = bincode::deserialize(bytes).map_err(|err| {
                    StoreError::Corrupt(format!("{} record does not decode: {err}", Self::NAME))
                })?;
                Ok(SubscriptionV2 { v1, rate_limit_per_second: None })
            }
            _ => Err(StoreError::Corrupt(format!(
                "{} record has unknown format version {version}",
                Self::NAME
            ))),
        }
    }
}

impl Stored for Subscription {
    type Record = SubscriptionV2;

    fn to_record(&self) -> SubscriptionV2 {
        let v1 = SubscriptionV1 {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.clone(),
            name: self.name.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            headers: self.headers.clone(),
            max_retries: self.max_retries,
            retry_delay_seconds: self.retry_delay_seconds,
            is_active: self.is_active,
            is_paused: self.is_paused,
            disable_reason: self.disable_reason.clone(),
            disabled_at: self.disabled_at,
            consecutive_failures: self.consecutive_failures,
            last_delivery_at: self.last_delivery_at,
            last_delivery_status: self.last_delivery_status.map(|status| match status {
                LastDeliveryStatus::Succeeded => LastDeliveryStatusV1::Succeeded,
                LastDeliveryStatus::Failed => LastDeliveryStatusV1::Failed,
            }),
            last_delivery_response_code: self.last_delivery_response_code,
            last_delivery_error: self.last_delivery_error.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            secret: self.secret.expose().to_owned(),
            retired_secret: self.retired_secret.as_ref().map(|retired| RetiredSecretV1 {
                secret: retired.secret.expose().to_owned(),
                valid_until: retired.valid_until,
            }),
        };
        SubscriptionV2 { v1, rate_limit_per_second: self.rate_limit_per_second }
    }

    fn from_record(record: SubscriptionV2) -> Result<Subscription, StoreError> {
        let SubscriptionV2 { v1: record, rate_limit_per_second } = record;
        Ok(Subscription {
            id: id(SubscriptionId::parse, &record.id, "subscription")?,
            tenant_id: record.tenant_id,
            name: record.name,
            url: record.url,
            events: record.events,
            headers: record.headers,
            max_retries: record.max_retries,
            retry_delay_seconds: record.retry_delay_seconds,
            is_active: record.is_active,
            is_paused: record.is_paused,
            disable_reason: record.disable_reason,
            disabled_at: record.disabled_at,
            consecutive_failures: record.consecutive_failures,
            last_delivery_at: record.last_delivery_at,
            last_delivery_status: record.last_delivery_status.map(|status| match status {
                LastDeliveryStatusV1::Succeeded => LastDeliveryStatus::Succeeded,
                LastDeliveryStatusV1::Failed => LastDeliveryStatus::Failed,
            }),
            last_delivery_response_code: record.last_delivery_response_code,
            last_delivery_error: record.last_delivery_error,
            created_at: record.created_at,
            updated_at: record.updated_at,
            secret: SigningSecret::from(record.secret),
            retired_secret: record.retired_secret.map(|retired| RetiredSecret {
                secret: SigningSecret::from(retired.secret),
                valid_until: retired.valid_until,
            }),
            rate_limit_per_second,
        })
    }
}

/// Event record, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventV1 {
    pub id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub created_at: Millis,
    pub body: Vec<u8>,
    pub live_deliveries: u32,
}

impl Versioned for EventV1 {
    const VERSION: u8 = 1;
    const NAME: &'static str = "event";
}

impl Stored for Event {
    type Record = EventV1;

    fn to_record(&self) -> EventV1 {
        EventV1 {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.clone(),
            event_type: self.event_type.clone(),
            created_at: self.created_at,
            body: self.body.clone(),
            live_deliveries: self.live_deliveries,
        }
    }

    fn from_record(record: EventV1) -> Result<Event, StoreError> {
        Ok(Event {
            id: id(EventId::parse, &record.id, "event")?,
            tenant_id: record.tenant_id,
            event_type: record.event_type,
            created_at: record.created_at,
            body: record.body,
            live_deliveries: record.live_deliveries,
        })
    }
}

/// Delivery record, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryV1 {
    pub id: String,
    pub tenant_id: String,
    pub subscription_id: String,
    pub event_id: String,
    pub event_type: String,
    pub state: DeliveryStateV1,
    pub attempts: Vec<AttemptV1>,
    pub attempts_in_round: u32,
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

/// A delivery's state, as stored (variant order is on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStateV1 {
    Pending,
    Held,
    Succeeded,
    Failed,
    Expired,
}

/// One attempt, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptV1 {
    pub at: Millis,
    pub duration_ms: u32,
    pub response_code: Option<u16>,
    pub error: Option<String>,
}

impl Versioned for DeliveryV1 {
    const VERSION: u8 = 1;
    const NAME: &'static str = "delivery";
}

impl From<DeliveryState> for DeliveryStateV1 {
    fn from(state: DeliveryState) -> Self {
        match state {
            DeliveryState::Pending => DeliveryStateV1::Pending,
            DeliveryState::Held => DeliveryStateV1::Held,
            DeliveryState::Succeeded => DeliveryStateV1::Succeeded,
            DeliveryState::Failed => DeliveryStateV1::Failed,
            DeliveryState::Expired => DeliveryStateV1::Expired,
        }
    }
}

impl From<DeliveryStateV1> for DeliveryState {
    fn from(state: DeliveryStateV1) -> Self {
        match state {
            DeliveryStateV1::Pending => DeliveryState::Pending,
            DeliveryStateV1::Held => DeliveryState::Held,
            DeliveryStateV1::Succeeded => DeliveryState::Succeeded,
            DeliveryStateV1::Failed => DeliveryState::Failed,
            DeliveryStateV1::Expired => DeliveryState::Expired,
        }
    }
}

impl Stored for Delivery {
    type Record = DeliveryV1;

    fn to_record(&self) -> DeliveryV1 {
        DeliveryV1 {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.clone(),
            subscription_id: self.subscription_id.to_string(),
            event_id: self.event_id.to_string(),
            event_type: self.event_type.clone(),
            state: self.state.into(),
            attempts: self
                .attempts
                .iter()
                .map(|attempt| AttemptV1 {
                    at: attempt.at,
                    duration_ms: attempt.duration_ms,
                    response_code: attempt.response_code,
                    error: attempt.error.clone(),
                })
                .collect(),
            attempts_in_round: self.attempts_in_round,
            next_attempt_at: self.next_attempt_at,
            created_at: self.created_at,
            finished_at: self.finished_at,
        }
    }

    fn from_record(record: DeliveryV1) -> Result<Delivery, StoreError> {
        Ok(Delivery {
            id: id(DeliveryId::parse, &record.id, "delivery")?,
            tenant_id: record.tenant_id,
            subscription_id: id(SubscriptionId::parse, &record.subscription_id, "subscription")?,
            event_id: id(EventId::parse, &record.event_id, "event")?,
            event_type: record.event_type,
            state: record.state.into(),
            attempts: record
                .attempts
                .into_iter()
                .map(|attempt| Attempt {
                    at: attempt.at,
                    duration_ms: attempt.duration_ms,
                    response_code: attempt.response_code,
                    error: attempt.error,
                })
                .collect(),
            attempts_in_round: record.attempts_in_round,
            next_attempt_at: record.next_attempt_at,
            created_at: record.created_at,
            finished_at: record.finished_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::codec::{decode, encode};

    const SUBSCRIPTION: &str = "wh_01KB0000000000000000000001";
    const EVENT: &str = "evt_01KB0000000000000000000002";
    const DELIVERY: &str = "dlv_01KB0000000000000000000003";

    /// Pins the on-disk bytes of delivery version 1 — the bytes the model type itself was
    /// stored as before records were split from it: if this fails, a stored format changed
    /// without a new version.
    #[test]
    fn golden_bytes_of_a_delivery_v1() {
        let record = DeliveryV1 {
            id: "dlv_1".into(),
            tenant_id: "t".into(),
            subscription_id: "wh_1".into(),
            event_id: "evt_1".into(),
            event_type: "a.b".into(),
            state: DeliveryStateV1::Held,
            attempts: vec![AttemptV1 { at: 5, duration_ms: 6, response_code: Some(503), error: None }],
            attempts_in_round: 1,
            next_attempt_at: None,
            created_at: 7,
            finished_at: Some(8),
        };
        let mut bytes = vec![DeliveryV1::VERSION];
        bincode::serialize_into(&mut bytes, &record).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            "010500000000000000646c765f310100000000000000740400000000000000\
             77685f3105000000000000006576745f31030000000000000061\
             2e62010000000100000000000000050000000000000006000000\
             01f70100010000000007000000000000000108000000000000\
             00"
        );

        // A domain delivery goes through the same record.
        let delivery = Delivery {
            id: DeliveryId::parse(DELIVERY).unwrap(),
            subscription_id: SubscriptionId::parse(SUBSCRIPTION).unwrap(),
            event_id: EventId::parse(EVENT).unwrap(),
            ..Delivery::from_record(DeliveryV1 {
                id: DELIVERY.into(),
                subscription_id: SUBSCRIPTION.into(),
                event_id: EVENT.into(),
                ..record
            })
            .unwrap()
        };
        assert_eq!(delivery.state, DeliveryState::Held);
        assert_eq!(decode::<Delivery>(&encode(&delivery)).unwrap(), delivery);
    }

    /// Pins subscription version 1, every optional field present, and reads it as today's
    /// subscription (no rate limit): records written before version 2 still read.
    #[test]
    fn golden_bytes_of_a_subscription_v1() {
        let subscription = every_field_subscription();
        let mut bytes = vec![SubscriptionV1::VERSION];
        bincode::serialize_into(&mut bytes, &subscription.to_record().v1).unwrap();
        assert_eq!(hex::encode(&bytes), SUBSCRIPTION_V1_GOLDEN);
        let migrated = decode::<Subscription>(&hex::decode(SUBSCRIPTION_V1_GOLDEN).unwrap()).unwrap();
        assert_eq!(migrated, subscription);
        assert_eq!(migrated.rate_limit_per_second, None);
    }

    /// Pins subscription version 2: version 1's bytes, then the rate limit (`Option<u32>`).
    #[test]
    fn golden_bytes_of_a_subscription_v2() {
        let subscription = Subscription { rate_limit_per_second: Some(50), ..every_field_subscription() };
        let bytes = encode(&subscription);
        assert_eq!(hex::encode(&bytes), format!("02{}0132000000", &SUBSCRIPTION_V1_GOLDEN[2..]));
        assert_eq!(decode::<Subscription>(&bytes).unwrap(), subscription);
        let unlimited = Subscription { rate_limit_per_second: None, ..subscription };
        let bytes = encode(&unlimited);
        assert_eq!(hex::encode(&bytes), format!("02{}00", &SUBSCRIPTION_V1_GOLDEN[2..]));
        assert_eq!(decode::<Subscription>(&bytes).unwrap(), unlimited);
        assert!(matches!(decode::<Subscription>(&[3, 0]), Err(StoreError::Corrupt(_))));
    }

    /// A subscription with every optional field present (rate limit aside).
    fn every_field_subscription() -> Subscription {
        let mut subscription = Subscription::new("t", "n", "https://a.example/", vec!["a.b".into()], 9);
        subscription.id = SubscriptionId::parse(SUBSCRIPTION).unwrap();
        subscription.secret = SigningSecret::from("whsec_x".to_owned());
        subscription.headers = vec![("X-A".into(), "b".into())];
        subscription.disable_reason = Some("r".into());
        subscription.disabled_at = Some(1);
        subscription.last_delivery_at = Some(2);
        subscription.last_delivery_status = Some(LastDeliveryStatus::Failed);
        subscription.last_delivery_response_code = Some(500);
        subscription.last_delivery_error = Some("e".into());
        subscription.retired_secret =
            Some(RetiredSecret { secret: SigningSecret::from("whsec_y".to_owned()), valid_until: 3 });
        subscription
    }

    const SUBSCRIPTION_V1_GOLDEN: &str = "011d0000000000000077685f30314b423030303030303030303030303030303030303030303101000000000000007401000000000000006e120000000000000068747470733a2f2f612e6578616d706c652f01000000000000000300000000000000612e6201000000000000000300000000000000582d41010000000000000062050000001e00000001000101000000000000007201010000000000000000000000010200000000000000010100000001f4010101000000000000006509000000000000000900000000000000070000000000000077687365635f7801070000000000000077687365635f790300000000000000";

    /// Pins event version 1.
    #[test]
    fn golden_bytes_of_an_event_v1() {
        let event = Event {
            id: EventId::parse(EVENT).unwrap(),
            tenant_id: "t".into(),
            event_type: "a.b".into(),
            created_at: 4,
            body: b"{}".to_vec(),
            live_deliveries: 2,
        };
        let bytes = encode(&event);
        assert_eq!(hex::encode(&bytes), EVENT_V1_GOLDEN);
        assert_eq!(decode::<Event>(&bytes).unwrap(), event);
    }

    const EVENT_V1_GOLDEN: &str = "011e000000000000006576745f30314b42303030303030303030303030303030303030303030320100000000000000740300000000000000612e62040000000000000002000000000000007b7d02000000";

    #[test]
    fn a_record_with_a_malformed_id_reads_as_corrupt() {
        let mut record = Event {
            id: EventId::parse(EVENT).unwrap(),
            tenant_id: "t".into(),
            event_type: "a.b".into(),
            created_at: 4,
            body: Vec::new(),
            live_deliveries: 1,
        }
        .to_record();
        record.id = "evt_1".into();
        let mut bytes = vec![EventV1::VERSION];
        bincode::serialize_into(&mut bytes, &record).unwrap();
        assert!(matches!(decode::<Event>(&bytes), Err(StoreError::Corrupt(_))));
    }
}
