//! `/v1/webhooks`: create, list, read, update, delete subscriptions and rotate their secrets.
//! Owns the JSON shape of a subscription and the validation of every field.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::error::ApiError;
use crate::api::request::{
    authorize, json_reply, page_limit, parse_json, parse_query, query_value, require_json, Gate,
};
use crate::api::ApiState;
use crate::config::{Config, Scope};
use crate::model::{
    new_secret as generate_secret, now_millis, rfc3339, Millis, RetiredSecret, SigningSecret, Subscription,
    SubscriptionId,
};

/// The subscription as the API shows it. The secret is deliberately absent.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub id: String,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub headers: Map<String, Value>,
    pub max_retries: u32,
    pub retry_delay_seconds: u32,
    pub is_active: bool,
    pub is_paused: bool,
    pub disable_reason: Option<String>,
    pub disabled_at: Option<String>,
    pub consecutive_failures: u32,
    pub last_delivery_at: Option<String>,
    pub last_delivery_status: Option<&'static str>,
    pub last_delivery_response_code: Option<u16>,
    pub last_delivery_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Subscription> for SubscriptionView {
    fn from(s: &Subscription) -> Self {
        SubscriptionView {
            id: s.id.to_string(),
            name: s.name.clone(),
            url: s.url.clone(),
            events: s.events.clone(),
            headers: s
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                .collect(),
            max_retries: s.max_retries,
            retry_delay_seconds: s.retry_delay_seconds,
            is_active: s.is_active,
            is_paused: s.is_paused,
            disable_reason: s.disable_reason.clone(),
            disabled_at: s.disabled_at.map(rfc3339),
            consecutive_failures: s.consecutive_failures,
            last_delivery_at: s.last_delivery_at.map(rfc3339),
            last_delivery_status: s.last_delivery_status.map(|status| status.as_str()),
            last_delivery_response_code: s.last_delivery_response_code,
            last_delivery_error: s.last_delivery_error.clone(),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

/// Create answers the full subscription plus its secret, once.
#[derive(Serialize)]
struct CreatedView<'a> {
    #[serde(flatten)]
    subscription: SubscriptionView,
    secret: &'a str,
}

/// An optional field that, when sent, must hold a value: `null` is refused as a wrong type.
/// Read as "absent", `{"headers": null}` would answer 200 and silently change nothing.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A JSON integer field: `15`, or `15.0` (JSON has one number type, and JSON Schema counts a
/// number with a zero fraction as an integer); `2.5` or a number beyond i64 is refused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Integer(pub(crate) i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Integer, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Integer;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Integer, E> {
                Ok(Integer(value))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Integer, E> {
                i64::try_from(value)
                    .map(Integer)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Integer, E> {
                // Exactly representable integers only (|value| < 2^53).
                if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
                    Ok(Integer(value as i64))
                } else {
                    Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CreateBody {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) events: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) headers: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) max_retries: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) retry_delay_seconds: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) is_active: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) is_paused: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) headers: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) max_retries: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) retry_delay_seconds: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) is_active: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub(crate) is_paused: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RotateBody {
    #[serde(default, deserialize_with = "present")]
    grace_seconds: Option<Integer>,
}

/// Why a subscription is disabled when a person turns it off through the API.
pub const DISABLED_BY_API: &str = "disabled by API request (isActive set to false)";

/// `POST /v1/webhooks`
pub async fn create(state: ApiState, headers: HeaderMap, body: Vec<u8>) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let body: CreateBody = require_json(&headers, &body)?;
    let subscription = validate_create(&config, &principal.tenant.id, body, now_millis())?;
    state.store.create_subscription(&subscription, principal.tenant.max_webhooks)?;
    tracing::info!(tenant = %subscription.tenant_id, id = %subscription.id, "subscription created");
    let view = CreatedView {
        subscription: SubscriptionView::from(&subscription),
        secret: subscription.secret.expose(),
    };
    Ok(json_reply(StatusCode::CREATED, &view))
}

/// `GET /v1/webhooks?limit=50&cursor=wh_…`
pub async fn list(state: ApiState, headers: HeaderMap, query: String) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksRead, Gate::Webhooks)?;
    let pairs = parse_query(&query, &["limit", "cursor"])?;
    let limit = page_limit(&pairs)?;
    let cursor = query_value(&pairs, "cursor")
        .map(|cursor| {
            SubscriptionId::parse(cursor).ok_or_else(|| {
                ApiError::validation("cursor is not a cursor this API returned (expected a wh_ id)")
            })
        })
        .transpose()?;
    let (page, next) = state.store.list_subscriptions(&principal.tenant.id, limit, cursor.as_ref())?;
    let data: Vec<SubscriptionView> = page.iter().map(SubscriptionView::from).collect();
    Ok(json_reply(StatusCode::OK, &serde_json::json!({ "data": data, "nextCursor": next })))
}

/// `GET /v1/webhooks/:id`
pub async fn get(state: ApiState, headers: HeaderMap, id: String) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksRead, Gate::Webhooks)?;
    let subscription = find(&state, &principal.tenant.id, &id)?;
    Ok(json_reply(StatusCode::OK, &SubscriptionView::from(&subscription)))
}

/// `PATCH /v1/webhooks/:id`
pub async fn update(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let patch: PatchBody = require_json(&headers, &body)?;
    // Validate everything before touching storage, so a bad field changes nothing.
    let patch = validate_patch(&config, patch)?;
    let now = now_millis();
    let apply = |subscription: &mut Subscription| patch.apply(subscription, now);
    let id = SubscriptionId::parse(&id).ok_or_else(|| ApiError::not_found("subscription"))?;
    let updated = state
        .store
        .update_subscription(&principal.tenant.id, &id, &apply)?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    Ok(json_reply(StatusCode::OK, &SubscriptionView::from(&updated)))
}

/// `DELETE /v1/webhooks/:id`
pub async fn delete(state: ApiState, headers: HeaderMap, id: String) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let id = SubscriptionId::parse(&id).ok_or_else(|| ApiError::not_found("subscription"))?;
    if !state.store.delete_subscription(&principal.tenant.id, &id)? {
        return Err(ApiError::not_found("subscription"));
    }
    tracing::info!(tenant = %principal.tenant.id, %id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/webhooks/:id/rotate-secret` with an optional `{"graceSeconds": N}`.
pub async fn rotate_secret(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let body: Option<RotateBody> = parse_json(&headers, &body)?;
    let grace = body.and_then(|body| body.grace_seconds).unwrap_or(Integer(0));
    let grace = validate_range("graceSeconds", grace, 0, 86_400)?;
    let id = find(&state, &principal.tenant.id, &id)?.id;
    let secret = generate_secret();
    let now = now_millis();
    state
        .store
        .update_subscription(&principal.tenant.id, &id, &|subscription| {
            rotate(subscription, &secret, grace, now)
        })?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    tracing::info!(tenant = %principal.tenant.id, %id, grace_seconds = grace, "subscription secret rotated");
    Ok(json_reply(StatusCode::OK, &serde_json::json!({ "id": id, "secret": secret.expose() })))
}

/// Validates a create request, in body order (the first bad field named is the first one in the
/// body), and builds the subscription to store for `tenant_id`, created at `now`.
pub(crate) fn validate_create(
    config: &Config,
    tenant_id: &str,
    body: CreateBody,
    now: Millis,
) -> Result<Subscription, ApiError> {
    let is_active = body.is_active.unwrap_or(true);
    let name = validate_name(&body.name)?;
    let url = validate_url(config, &body.url)?;
    let events = validate_events(config, &body.events)?;
    let mut subscription = Subscription {
        headers: validate_headers(body.headers.as_ref())?,
        max_retries: validate_range("maxRetries", body.max_retries.unwrap_or(Integer(5)), 0, 20)?,
        retry_delay_seconds: validate_range(
            "retryDelaySeconds",
            body.retry_delay_seconds.unwrap_or(Integer(30)),
            1,
            86_400,
        )?,
        is_paused: body.is_paused.unwrap_or(false),
        ..Subscription::new(tenant_id, name, url, events, now)
    };
    if !is_active {
        subscription.disable(DISABLED_BY_API, now);
    }
    Ok(subscription)
}

/// A PATCH whose every field was validated: applying it cannot fail.
pub(crate) struct ValidPatch {
    name: Option<String>,
    url: Option<String>,
    events: Option<Vec<String>>,
    headers: Option<Vec<(String, String)>>,
    max_retries: Option<u32>,
    retry_delay_seconds: Option<u32>,
    is_active: Option<bool>,
    is_paused: Option<bool>,
}

/// Validates every field of a PATCH before anything is stored, so a bad field changes nothing.
pub(crate) fn validate_patch(config: &Config, patch: PatchBody) -> Result<ValidPatch, ApiError> {
    Ok(ValidPatch {
        name: patch.name.as_deref().map(validate_name).transpose()?,
        url: patch.url.as_deref().map(|url| validate_url(config, url)).transpose()?,
        events: patch.events.as_deref().map(|events| validate_events(config, events)).transpose()?,
        headers: patch.headers.as_ref().map(|headers| validate_headers(Some(headers))).transpose()?,
        max_retries: patch.max_retries.map(|value| validate_range("maxRetries", value, 0, 20)).transpose()?,
        retry_delay_seconds: patch
            .retry_delay_seconds
            .map(|value| validate_range("retryDelaySeconds", value, 1, 86_400))
            .transpose()?,
        is_active: patch.is_active,
        is_paused: patch.is_paused,
    })
}

impl ValidPatch {
    /// Applies the patch to a subscription at `now` (run inside the storage transaction).
    pub(crate) fn apply(&self, subscription: &mut Subscription, now: Millis) {
        if let Some(name) = &self.name {
            subscription.name = name.clone();
        }
        if let Some(url) = &self.url {
            subscription.url = url.clone();
        }
        if let Some(events) = &self.events {
            subscription.events = events.clone();
        }
        if let Some(headers) = &self.headers {
            subscription.headers = headers.clone();
        }
        if let Some(max_retries) = self.max_retries {
            subscription.max_retries = max_retries;
        }
        if let Some(retry_delay) = self.retry_delay_seconds {
            subscription.retry_delay_seconds = retry_delay;
        }
        if let Some(is_paused) = self.is_paused {
            subscription.is_paused = is_paused;
        }
        // Re-enabling clears the reason and gives the endpoint a clean slate (crate::lifecycle).
        match self.is_active {
            Some(true) => _ = subscription.enable(),
            Some(false) => _ = subscription.disable(DISABLED_BY_API, now),
            None => {}
        }
        subscription.updated_at = now;
    }
}

/// Replaces the signing secret at `now`; with `grace_seconds` > 0 the old one stays valid that
/// long (Standard Webhooks rotation), otherwise it stops working at once.
pub(crate) fn rotate(
    subscription: &mut Subscription,
    secret: &SigningSecret,
    grace_seconds: u32,
    now: Millis,
) {
    subscription.retired_secret = (grace_seconds > 0).then(|| RetiredSecret {
        secret: subscription.secret.clone(),
        valid_until: now + u64::from(grace_seconds) * 1000,
    });
    subscription.secret = secret.clone();
    subscription.updated_at = now;
}

/// A tenant's subscription, or 404 for unknown, malformed and other tenants' ids alike.
pub fn find(state: &ApiState, tenant_id: &str, id: &str) -> Result<Subscription, ApiError> {
    let id = SubscriptionId::parse(id).ok_or_else(|| ApiError::not_found("subscription"))?;
    state.store.subscription(tenant_id, &id)?.ok_or_else(|| ApiError::not_found("subscription"))
}

fn validate_name(name: &str) -> Result<String, ApiError> {
    let length = name.chars().count();
    if name.trim().is_empty() || length > 100 {
        return Err(ApiError::validation("name must be 1-100 characters and not blank"));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::validation("name must not contain control characters"));
    }
    if name.chars().all(is_invisible) {
        return Err(ApiError::validation(
            "name must contain at least one visible character (it has only spaces or invisible characters such as U+200B)",
        ));
    }
    Ok(name.to_owned())
}

/// Characters that draw nothing: whitespace, and the Unicode format and filler characters
/// (general category Cf, variation selectors, Hangul fillers, the Braille blank) a name made
/// only of would look empty.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

fn validate_url(config: &Config, url: &str) -> Result<String, ApiError> {
    crate::net_policy::validate_target_url(
        url,
        config.delivery.allow_http,
        config.delivery.allow_private_targets,
    )
    .map(|parsed| parsed.to_string())
    .map_err(ApiError::validation)
}

fn validate_events(config: &Config, events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() || events.len() > 50 {
        return Err(ApiError::validation("events must list between 1 and 50 event types"));
    }
    for (index, event) in events.iter().enumerate() {
        if !config.is_known_event_type(event) {
            return Err(ApiError::validation(format!(
                "events[{index}]: unknown event type {event:?} (known: {})",
                config.event_types.join(", ")
            )));
        }
        if events[..index].contains(event) {
            return Err(ApiError::validation(format!("events[{index}]: {event:?} is listed twice")));
        }
    }
    Ok(events.to_vec())
}

/// Header names the daemon sets itself or that would break the request framing.
fn is_reserved_header(lowercase_name: &str) -> bool {
    const RESERVED: [&str; 11] = [
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "user-agent",
    ];
    RESERVED.contains(&lowercase_name)
        || lowercase_name.starts_with("x-atender-")
        || lowercase_name.starts_with("webhook-")
        || lowercase_name.starts_with("proxy-")
}

fn validate_headers(headers: Option<&Map<String, Value>>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(headers) = headers else { return Ok(Vec::new()) };
    if headers.len() > 20 {
        return Err(ApiError::validation("headers may hold at most 20 custom headers"));
    }
    let mut seen = Vec::new();
    let mut valid = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let is_token = !name.is_empty()
            && name.len() <= 256
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !is_token {
            return Err(ApiError::validation(format!(
                "headers: {name:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            )));
        }
        let lowercase = name.to_ascii_lowercase();
        if is_reserved_header(&lowercase) {
            return Err(ApiError::validation(format!(
                "headers: {name:?} is set by the daemon itself and cannot be overridden"
            )));
        }
        if seen.contains(&lowercase) {
            return Err(ApiError::validation(format!("headers: {name:?} is given twice")));
        }
        let Value::String(value) = value else {
            return Err(ApiError::validation(format!("headers.{name} must be a string")));
        };
        // RFC 9110 §5.5: a field value has no leading or trailing whitespace (receivers strip
        // it, so it would not arrive as shown); bytes above ASCII are obsolete (obs-text) and
        // read inconsistently. Tabs are refused too: visible ASCII and inner spaces only.
        let visible = value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if value.len() > 4096 || !visible || value.starts_with(' ') || value.ends_with(' ') {
            return Err(ApiError::validation(format!(
                "headers.{name} must be at most 4096 characters of visible ASCII with spaces only \
                 between them (RFC 9110 field value: no leading or trailing space, no tab, CR, LF, \
                 other control or non-ASCII characters)"
            )));
        }
        seen.push(lowercase);
        valid.push((name.clone(), value.clone()));
    }
    Ok(valid)
}

pub(crate) fn validate_range(
    field: &str,
    Integer(value): Integer,
    min: u32,
    max: u32,
) -> Result<u32, ApiError> {
    if value < i64::from(min) || value > i64::from(max) {
        return Err(ApiError::validation(format!("{field} must be between {min} and {max}")));
    }
    Ok(value as u32)
}
