//! `/v1/events` and `/v1/events/batch`: the Atender application hands events in; each answer
//! (202) comes only after the event and its deliveries are on disk.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::api::error::ApiError;
use crate::api::openapi::{
    self, fields, IdempotencyConflict, PayloadTooLarge, UnsupportedMediaType, ValidationFailed,
};
use crate::api::request::{authorize, json_reply, require_json, Gate};
use crate::api::ApiState;
use crate::config::{Config, Scope};
use crate::event_schema::DataMismatch;
use crate::model::{now_millis, rfc3339, EventId, Millis};
use crate::store::{NewEvent, PublishRequest, Published};

/// Most events in one batch.
pub const MAX_BATCH: usize = 1000;

/// The length in bytes of a client's event `id` (its idempotency key).
pub const CLIENT_ID_BYTES: std::ops::RangeInclusive<usize> = 1..=255;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PublishEvent)]
struct EventBody {
    #[schema(value_type = openapi::PublishableEventType)]
    event: String,
    // Absent means `{}`; an explicit `null` is kept (as JSON `null`) so it can be refused.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::event_data)]
    data: Option<Box<RawValue>>,
    // Absent means none; `null` is refused (as every optional field of the API).
    #[serde(default, deserialize_with = "non_null")]
    #[schema(schema_with = fields::client_id)]
    id: Option<String>,
}

/// Deserializes an optional string field that, when present, must be a string (not `null`).
fn non_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    String::deserialize(deserializer).map(Some)
}

/// Deserializes a field that is present, whatever its value (`null` included), as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PublishBatch)]
struct BatchBody {
    #[schema(schema_with = fields::batch_events)]
    events: Vec<EventBody>,
}

/// The body every receiver gets, byte for byte the same on every attempt.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "The body POSTed to the receiver, the same bytes on every attempt")]
pub(crate) struct DeliveryPayload<'a> {
    #[schema(schema_with = fields::event_id)]
    id: &'a str,
    #[schema(value_type = openapi::EventType)]
    event: &'a str,
    tenant_id: &'a str,
    /// When the event was published
    #[schema(format = DateTime, examples("2026-05-11T09:00:00Z"))]
    timestamp: String,
    #[schema(schema_with = fields::any_object)]
    data: &'a RawValue,
}

#[derive(Serialize, ToSchema)]
#[schema(as = PublishResult, description = "An accepted event")]
struct PublishedView<'a> {
    #[schema(schema_with = fields::published_event_id)]
    id: &'a str,
    /// Deliveries created: one per subscription whose events include the type.
    deliveries: u32,
}

/// The answer of a batch publish.
#[derive(Serialize, ToSchema)]
#[schema(as = BatchResult, description = "One result per event, in the order given")]
struct BatchView<'a> {
    data: Vec<PublishedView<'a>>,
}

/// `POST /v1/events`
#[utoipa::path(
    post,
    path = "/v1/events",
    operation_id = "publishEvent",
    tag = "events",
    summary = "Publish an event",
    description = "Answered once the event and one delivery per matching subscription of the tenant are \
        on disk; a paused or disabled subscription gets its delivery as `held`. The event type must be a \
        configured one (not one the daemon sends itself), and `data` must satisfy the type's JSON Schema \
        when the catalogue gives one (GET /v1/event-types): otherwise 400, naming the failing JSON \
        Pointer (`data/text: want string, but got number`). Repeating an `id` within 24 \
        hours with the same event type and data answers the first result and creates nothing; with another \
        type or data it is refused with 422 `idempotency_conflict`. A tenant with webhooks turned off gets \
        `deliveries: 0`.",
    request_body = EventBody,
    responses(
        (status = 202, description = "Accepted and stored", body = PublishedView),
        (status = 400, response = ValidationFailed),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = IdempotencyConflict),
    ),
)]
pub async fn publish(state: ApiState, headers: HeaderMap, body: Vec<u8>) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::EventsWrite, Gate::Events)?;
    let body: EventBody = require_json(&headers, &body)?;
    let now = now_millis();
    let event = prepare(&config, &principal.tenant.id, body, now, "")?;
    let answers =
        store_events(&state, &principal.tenant.id, principal.tenant.webhooks_enabled, vec![event], now)
            .await?;
    let answer = &answers[0];
    Ok(json_reply(
        StatusCode::ACCEPTED,
        &PublishedView { id: answer.event_id.as_str(), deliveries: answer.deliveries },
    ))
}

/// `POST /v1/events/batch` with `{"events": [...]}`; answers `{"data": [{"id", "deliveries"}]}`
/// in the order given. The batch is stored atomically: all or nothing.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    operation_id = "publishEventBatch",
    tag = "events",
    summary = "Publish several events at once",
    description = "All or nothing: one invalid event refuses the whole batch (the message names it, as in \
        `events[3].event` or `events[3].data/text`). Answers one result per event, in the order given.",
    request_body = BatchBody,
    responses(
        (status = 202, description = "Accepted and stored", body = BatchView),
        (status = 400, response = ValidationFailed),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = IdempotencyConflict),
    ),
)]
pub async fn publish_batch(state: ApiState, headers: HeaderMap, body: Vec<u8>) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::EventsWrite, Gate::Events)?;
    let body: BatchBody = require_json(&headers, &body)?;
    if body.events.is_empty() || body.events.len() > MAX_BATCH {
        return Err(ApiError::validation(format!("events must hold between 1 and {MAX_BATCH} events")));
    }
    let now = now_millis();
    let events = body
        .events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            prepare(&config, &principal.tenant.id, event, now, &format!("events[{index}]."))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let answers =
        store_events(&state, &principal.tenant.id, principal.tenant.webhooks_enabled, events, now).await?;
    let data: Vec<PublishedView> = answers
        .iter()
        .map(|answer| PublishedView { id: answer.event_id.as_str(), deliveries: answer.deliveries })
        .collect();
    Ok(json_reply(StatusCode::ACCEPTED, &BatchView { data }))
}

async fn store_events(
    state: &ApiState,
    tenant_id: &str,
    webhooks_enabled: bool,
    events: Vec<NewEvent>,
    now: Millis,
) -> Result<Vec<Published>, ApiError> {
    let request = PublishRequest { tenant_id: tenant_id.to_owned(), webhooks_enabled, events, now };
    // Stored by the publish writer together with whatever else is being published meanwhile.
    let answers = state.store.publish(request).await?;
    state.metrics.events_published(answers.iter().filter(|answer| !answer.duplicate).count() as u64);
    Ok(answers)
}

/// Validates one event and renders its delivery body. `at` prefixes field names in batches.
fn prepare(
    config: &Config,
    tenant_id: &str,
    body: EventBody,
    now: Millis,
    at: &str,
) -> Result<NewEvent, ApiError> {
    if crate::catalogue::is_operational(&body.event) {
        return Err(ApiError::validation(format!(
            "{at}event: {:?} is an event type the daemon sends itself (an operational event); it cannot \
             be published (publishable: {})",
            body.event,
            config.event_types.join(", ")
        )));
    }
    if !config.is_known_event_type(&body.event) {
        return Err(ApiError::validation(format!(
            "{at}event: unknown event type {:?} (known: {})",
            body.event,
            config.event_types.join(", ")
        )));
    }
    if let Some(client_id) = &body.id {
        let printable = client_id.bytes().all(|b| b.is_ascii_graphic());
        if !CLIENT_ID_BYTES.contains(&client_id.len()) || !printable {
            return Err(ApiError::validation(format!(
                "{at}id must be {}-{} printable ASCII characters (it is your idempotency key)",
                CLIENT_ID_BYTES.start(),
                CLIENT_ID_BYTES.end()
            )));
        }
    }
    let empty_object = RawValue::from_string("{}".to_owned()).expect("{} is JSON");
    let data = body.data.unwrap_or(empty_object);
    if !data.get().trim_start().starts_with('{') {
        let given = if data.get().trim() == "null" { ", not null (omit it for {})" } else { "" };
        return Err(ApiError::validation(format!("{at}data must be a JSON object{given}")));
    }
    // Only a type with a schema pays for parsing `data`; the others keep its raw bytes as sent.
    if let Some(schema) = config.event_details.get(&body.event).and_then(|details| details.schema.as_ref()) {
        schema.check(&data).map_err(|mismatch| schema_mismatch(at, &body.event, &mismatch))?;
    }
    let fingerprint = match &body.id {
        Some(_) => fingerprint(&body.event, &data),
        None => [0; 32],
    };
    let id = EventId::new(now);
    let payload = DeliveryPayload {
        id: id.as_str(),
        event: &body.event,
        tenant_id,
        timestamp: rfc3339(now),
        data: &data,
    };
    let rendered = serde_json::to_vec(&payload)
        .map_err(|_| ApiError::validation(format!("{at}data is not valid JSON")))?;
    Ok(NewEvent { id, event_type: body.event, body: rendered, client_id: body.id, fingerprint })
}

/// The 400 for `data` that fails its type's schema: `data/text: want string, but got number`
/// (`events[3].data/text: …` in a batch), with the JSON Pointer (RFC 6901) of the value at fault.
fn schema_mismatch(at: &str, event_type: &str, mismatch: &DataMismatch) -> ApiError {
    let others = match mismatch.others {
        0 => String::new(),
        1 => "; 1 more problem".to_owned(),
        n => format!("; {n} more problems"),
    };
    ApiError::validation(format!(
        "{at}data{}: {}{others} (data must satisfy the JSON Schema of {event_type:?}; see GET /v1/event-types)",
        mismatch.pointer, mismatch.reason
    ))
}

/// SHA-256 over the event type, a zero byte and the canonical form of `data` (object keys
/// sorted at every level, no insignificant whitespace, strings with their escapes resolved,
/// numbers exactly as written), so the same event sent again with its keys in another order or
/// spaced differently is recognised as the same request, and `1e400` is never mistaken for
/// `2e400`. Data the canonical form cannot read (a lone surrogate escape, very deep nesting)
/// is hashed as written.
fn fingerprint(event_type: &str, data: &RawValue) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut canonical_data = Vec::with_capacity(data.get().len());
    if write_canonical(data, &mut canonical_data, 0).is_none() {
        canonical_data = data.get().trim().as_bytes().to_vec();
    }
    let mut hasher = Sha256::new();
    hasher.update(event_type.as_bytes());
    hasher.update([0]);
    hasher.update(&canonical_data);
    hasher.finalize().into()
}

/// Writes `value` in canonical form (see [`fingerprint`]); `None` when it cannot.
fn write_canonical(value: &RawValue, out: &mut Vec<u8>, depth: usize) -> Option<()> {
    const MAX_DEPTH: usize = 100;
    let text = value.get().trim();
    match text.as_bytes().first()? {
        b'{' if depth < MAX_DEPTH => {
            // A key given twice keeps its last value, as every JSON reader here does.
            let object: std::collections::BTreeMap<String, Box<RawValue>> =
                serde_json::from_str(text).ok()?;
            out.push(b'{');
            for (index, (key, value)) in object.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(key).ok()?);
                out.push(b':');
                write_canonical(value, out, depth + 1)?;
            }
            out.push(b'}');
        }
        b'[' if depth < MAX_DEPTH => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(text).ok()?;
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        b'{' | b'[' => return None,
        b'"' => out.extend(serde_json::to_vec(&serde_json::from_str::<String>(text).ok()?).ok()?),
        // Numbers, true, false and null exactly as written.
        _ => out.extend(text.as_bytes()),
    }
    Some(())
}
