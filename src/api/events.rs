//! `/v1/events` and `/v1/events/batch`: the Atender application hands events in; each answer
//! (202) comes only after the event and its deliveries are on disk.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::api::error::ApiError;
use crate::api::request::{authorize, json_reply, require_json, Gate};
use crate::api::ApiState;
use crate::config::{Config, Scope};
use crate::model::{now_millis, rfc3339, EventId, Millis};
use crate::store::{NewEvent, PublishRequest, Published};

/// Most events in one batch.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    event: String,
    /// Absent means `{}`; an explicit `null` is kept (as JSON `null`) so it can be refused.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    /// Absent means none; `null` is refused (as every optional field of the API).
    #[serde(default, deserialize_with = "non_null")]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    events: Vec<EventBody>,
}

/// The body every receiver gets, byte for byte the same on every attempt.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryPayload<'a> {
    id: &'a str,
    event: &'a str,
    tenant_id: &'a str,
    timestamp: String,
    data: &'a RawValue,
}

#[derive(Serialize)]
struct PublishedView<'a> {
    id: &'a str,
    deliveries: u32,
}

/// `POST /v1/events`
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
    Ok(json_reply(StatusCode::ACCEPTED, &serde_json::json!({ "data": data })))
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
    if !config.is_known_event_type(&body.event) {
        return Err(ApiError::validation(format!(
            "{at}event: unknown event type {:?} (known: {})",
            body.event,
            config.event_types.join(", ")
        )));
    }
    if let Some(client_id) = &body.id {
        let printable = client_id.bytes().all(|b| b.is_ascii_graphic());
        if client_id.is_empty() || client_id.len() > 255 || !printable {
            return Err(ApiError::validation(format!(
                "{at}id must be 1-255 printable ASCII characters (it is your idempotency key)"
            )));
        }
    }
    let empty_object = RawValue::from_string("{}".to_owned()).expect("{} is JSON");
    let data = body.data.unwrap_or(empty_object);
    if !data.get().trim_start().starts_with('{') {
        let given = if data.get().trim() == "null" { ", not null (omit it for {})" } else { "" };
        return Err(ApiError::validation(format!("{at}data must be a JSON object{given}")));
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
