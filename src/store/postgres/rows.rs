//! Rows ↔ domain types: the column lists the queries select, and the conversions. Ids are the
//! typed ids' text and validated when read; times are Unix ms as BIGINT.

use serde_json::{json, Value};
use tokio_postgres::Row;

use crate::model::{
    Attempt, Delivery, DeliveryId, DeliveryState, Event, EventId, LastDeliveryStatus, Millis, RetiredSecret,
    SigningSecret, Subscription, SubscriptionId,
};
use crate::store::StoreError;

/// The columns [`subscription`] reads, in a `SELECT`.
pub const SUBSCRIPTION_COLUMNS: &str = "id, tenant_id, name, url, events, headers, max_retries, \
     retry_delay_seconds, is_active, is_paused, disable_reason, disabled_at, consecutive_failures, \
     last_delivery_at, last_delivery_status, last_delivery_response_code, last_delivery_error, \
     created_at, updated_at, secret, retired_secret, retired_secret_valid_until, rate_limit_per_second";

/// The columns [`delivery`] reads, in a `SELECT`.
pub const DELIVERY_COLUMNS: &str = "id, tenant_id, subscription_id, event_id, event_type, state, attempts, \
     attempts_in_round, next_attempt_at, created_at, finished_at, held_since, claimed_by, claimed_until";

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("stored {what} does not read: {detail}"))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, column: &str) -> Result<T, StoreError> {
    row.try_get(column).map_err(|err| corrupt(column, err))
}

fn millis(value: Option<i64>) -> Option<Millis> {
    value.map(|value| value.max(0) as Millis)
}

/// Unix ms as a BIGINT parameter.
pub fn sql_millis(value: Millis) -> i64 {
    value.min(i64::MAX as u64) as i64
}

pub fn sql_millis_opt(value: Option<Millis>) -> Option<i64> {
    value.map(sql_millis)
}

pub fn subscription_id(text: &str) -> Result<SubscriptionId, StoreError> {
    SubscriptionId::parse(text).ok_or_else(|| corrupt("subscription id", text))
}

pub fn delivery_id(text: &str) -> Result<DeliveryId, StoreError> {
    DeliveryId::parse(text).ok_or_else(|| corrupt("delivery id", text))
}

pub fn event_id(text: &str) -> Result<EventId, StoreError> {
    EventId::parse(text).ok_or_else(|| corrupt("event id", text))
}

/// A subscription from a row of [`SUBSCRIPTION_COLUMNS`], its secrets opened with `keys`.
pub fn subscription(row: &Row, keys: &crate::secrets::SecretKeys) -> Result<Subscription, StoreError> {
    crate::store::secrets_at_rest::open_subscription(keys, stored_subscription(row)?)
}

/// A subscription from a row of [`SUBSCRIPTION_COLUMNS`] as stored: its secrets as the columns
/// hold them (sealed, or plaintext from before a key was configured).
pub fn stored_subscription(row: &Row) -> Result<Subscription, StoreError> {
    let headers: Value = get(row, "headers")?;
    let headers = headers
        .as_array()
        .ok_or_else(|| corrupt("headers", "not an array"))?
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(name), Value::String(value)]) => Ok((name.clone(), value.clone())),
            _ => Err(corrupt("headers", pair)),
        })
        .collect::<Result<_, _>>()?;
    let last_delivery_status = match get::<Option<String>>(row, "last_delivery_status")?.as_deref() {
        None => None,
        Some("succeeded") => Some(LastDeliveryStatus::Succeeded),
        Some("failed") => Some(LastDeliveryStatus::Failed),
        Some(other) => return Err(corrupt("last_delivery_status", other)),
    };
    let retired_secret = match (
        get::<Option<String>>(row, "retired_secret")?,
        get::<Option<i64>>(row, "retired_secret_valid_until")?,
    ) {
        (Some(secret), Some(until)) => {
            Some(RetiredSecret { secret: SigningSecret::from(secret), valid_until: until.max(0) as Millis })
        }
        _ => None,
    };
    Ok(Subscription {
        id: subscription_id(&get::<String>(row, "id")?)?,
        tenant_id: get(row, "tenant_id")?,
        name: get(row, "name")?,
        url: get(row, "url")?,
        events: get(row, "events")?,
        headers,
        max_retries: get::<i32>(row, "max_retries")?.max(0) as u32,
        retry_delay_seconds: get::<i32>(row, "retry_delay_seconds")?.max(0) as u32,
        is_active: get(row, "is_active")?,
        is_paused: get(row, "is_paused")?,
        disable_reason: get(row, "disable_reason")?,
        disabled_at: millis(get(row, "disabled_at")?),
        consecutive_failures: get::<i32>(row, "consecutive_failures")?.max(0) as u32,
        last_delivery_at: millis(get(row, "last_delivery_at")?),
        last_delivery_status,
        last_delivery_response_code: get::<Option<i32>>(row, "last_delivery_response_code")?
            .map(|code| code.clamp(0, u16::MAX as i32) as u16),
        last_delivery_error: get(row, "last_delivery_error")?,
        created_at: get::<i64>(row, "created_at")?.max(0) as Millis,
        updated_at: get::<i64>(row, "updated_at")?.max(0) as Millis,
        secret: SigningSecret::from(get::<String>(row, "secret")?),
        retired_secret,
        rate_limit_per_second: get::<Option<i32>>(row, "rate_limit_per_second")?
            .map(|limit| limit.max(1) as u32),
    })
}

/// The JSONB of a subscription's custom headers: `[[name, value], ...]`.
pub fn headers_json(subscription: &Subscription) -> Value {
    Value::Array(subscription.headers.iter().map(|(name, value)| json!([name, value])).collect())
}

pub fn last_delivery_status(subscription: &Subscription) -> Option<&'static str> {
    subscription.last_delivery_status.map(LastDeliveryStatus::as_str)
}

/// A delivery row: the delivery, when it became held (`held_since`), and until when a node's
/// claim on it holds (`claimed_until`).
pub struct DeliveryRow {
    pub delivery: Delivery,
    pub held_since: Option<Millis>,
    pub claimed_until: Option<Millis>,
}

/// A delivery from a row of [`DELIVERY_COLUMNS`].
pub fn delivery(row: &Row) -> Result<DeliveryRow, StoreError> {
    let state: String = get(row, "state")?;
    let attempts: Value = get(row, "attempts")?;
    let attempts = attempts
        .as_array()
        .ok_or_else(|| corrupt("attempts", "not an array"))?
        .iter()
        .map(|attempt| {
            Ok(Attempt {
                at: attempt["at"].as_u64().ok_or_else(|| corrupt("attempt", attempt))?,
                duration_ms: attempt["durationMs"].as_u64().unwrap_or(0).min(u32::MAX as u64) as u32,
                response_code: attempt["responseCode"].as_u64().map(|code| code.min(u16::MAX as u64) as u16),
                error: attempt["error"].as_str().map(str::to_owned),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let delivery = Delivery {
        id: delivery_id(&get::<String>(row, "id")?)?,
        tenant_id: get(row, "tenant_id")?,
        subscription_id: subscription_id(&get::<String>(row, "subscription_id")?)?,
        event_id: event_id(&get::<String>(row, "event_id")?)?,
        event_type: get(row, "event_type")?,
        state: DeliveryState::parse(&state).ok_or_else(|| corrupt("delivery state", &state))?,
        attempts,
        attempts_in_round: get::<i32>(row, "attempts_in_round")?.max(0) as u32,
        next_attempt_at: millis(get(row, "next_attempt_at")?),
        created_at: get::<i64>(row, "created_at")?.max(0) as Millis,
        finished_at: millis(get(row, "finished_at")?),
    };
    Ok(DeliveryRow {
        delivery,
        held_since: millis(get(row, "held_since")?),
        claimed_until: millis(get(row, "claimed_until")?),
    })
}

/// The JSONB of a delivery's attempt log.
pub fn attempts_json(delivery: &Delivery) -> Value {
    Value::Array(
        delivery
            .attempts
            .iter()
            .map(|attempt| {
                json!({
                    "at": attempt.at,
                    "durationMs": attempt.duration_ms,
                    "responseCode": attempt.response_code,
                    "error": attempt.error,
                })
            })
            .collect(),
    )
}

/// The event a claim's joined read found (its columns prefixed `event_`, `event_id_found` for the
/// id), or `None` when the event is gone.
pub fn joined_event(row: &Row) -> Result<Option<Event>, StoreError> {
    let Some(id) = get::<Option<String>>(row, "event_id_found")? else { return Ok(None) };
    Ok(Some(Event {
        id: event_id(&id)?,
        tenant_id: get(row, "event_tenant_id")?,
        event_type: get(row, "event_event_type")?,
        created_at: get::<i64>(row, "event_created_at")?.max(0) as Millis,
        body: get(row, "event_body")?,
        live_deliveries: get::<i32>(row, "event_live_deliveries")?.max(0) as u32,
    }))
}

/// An event from a row of `id, tenant_id, event_type, created_at, body, live_deliveries`.
pub fn event(row: &Row) -> Result<Event, StoreError> {
    Ok(Event {
        id: event_id(&get::<String>(row, "id")?)?,
        tenant_id: get(row, "tenant_id")?,
        event_type: get(row, "event_type")?,
        created_at: get::<i64>(row, "created_at")?.max(0) as Millis,
        body: get(row, "body")?,
        live_deliveries: get::<i32>(row, "live_deliveries")?.max(0) as u32,
    })
}
