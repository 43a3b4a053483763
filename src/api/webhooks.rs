//! `/v1/webhooks`: create, list, read, update, delete subscriptions and rotate their secrets.
//! Owns the JSON shape of a subscription and the validation of every field.

use std::ops::RangeInclusive;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::error::ApiError;
use crate::api::openapi::{
    self, fields, LimitExceeded, NotFound, PayloadTooLarge, SubscriptionListQuery, SubscriptionPath,
    UnsupportedMediaType, ValidationFailed,
};
use crate::api::request::{
    authorize, json_reply, page_limit, parse_cursor, parse_json, parse_query, query_value, require_json, Gate,
};
use crate::api::ApiState;
use crate::config::{Config, Scope};
use crate::model::{
    new_secret as generate_secret, now_millis, rfc3339, Millis, RetiredSecret, SigningSecret, Subscription,
    SubscriptionId,
};

// Limits of a subscription's fields, enforced below and stated in the OpenAPI document.

/// A name's length in characters.
pub const NAME_CHARS: RangeInclusive<usize> = 1..=100;
/// How many event types one subscription lists.
pub const EVENTS_PER_SUBSCRIPTION: RangeInclusive<usize> = 1..=50;
/// Most custom headers of one subscription.
pub const MAX_HEADERS: usize = 20;
/// Longest custom header name, in bytes.
pub const HEADER_NAME_BYTES: usize = 256;
/// The characters besides ASCII letters and digits a header name may hold (RFC 9110 `tchar`).
pub const HEADER_NAME_SYMBOLS: &str = "!#$%&'*+-.^_`|~";
/// Longest custom header value, in bytes.
pub const HEADER_VALUE_BYTES: usize = 4096;
/// `maxRetries`.
pub const MAX_RETRIES: RangeInclusive<u32> = 0..=20;
/// `maxRetries` when create does not give it.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// `retryDelaySeconds`.
pub const RETRY_DELAY_SECONDS: RangeInclusive<u32> = 1..=86_400;
/// `retryDelaySeconds` when create does not give it.
pub const DEFAULT_RETRY_DELAY_SECONDS: u32 = 30;
/// `rateLimitPerSecond`: most attempt starts per second (absent or `null`: no limit). The top is
/// Svix's per-endpoint ceiling order of magnitude and beyond what one endpoint's cap of
/// in-flight attempts delivers anyway.
pub const RATE_LIMIT_PER_SECOND: RangeInclusive<u32> = 1..=10_000;
/// rotate-secret's `graceSeconds` (default: the start, no grace).
pub const GRACE_SECONDS: RangeInclusive<u32> = 0..=86_400;

/// The subscription as the API shows it. The secret is deliberately absent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Subscription, description = "A webhook subscription; the secret is never part of it")]
pub struct SubscriptionView {
    #[schema(schema_with = fields::subscription_id)]
    pub id: String,
    pub name: String,
    #[schema(format = "uri")]
    pub url: String,
    #[schema(value_type = Vec<openapi::EventType>)]
    pub events: Vec<String>,
    #[schema(schema_with = fields::header_values)]
    pub headers: Map<String, Value>,
    #[schema(schema_with = fields::max_retries)]
    pub max_retries: u32,
    #[schema(schema_with = fields::retry_delay_seconds)]
    pub retry_delay_seconds: u32,
    /// false once disabled, by hand or after failures
    pub is_active: bool,
    pub is_paused: bool,
    /// Why the subscription is disabled, e.g. "too many consecutive failures: 6 attempts failed, last: HTTP 503"
    #[schema(required = true)]
    pub disable_reason: Option<String>,
    /// When it was disabled
    #[schema(required = true, format = DateTime, examples("2026-05-11T09:00:00Z"))]
    pub disabled_at: Option<String>,
    /// Failed attempts since the last success
    pub consecutive_failures: u32,
    /// When the most recent attempt was made
    #[schema(required = true, format = DateTime, examples("2026-05-11T09:00:00Z"))]
    pub last_delivery_at: Option<String>,
    #[schema(required = true, schema_with = fields::last_delivery_status)]
    pub last_delivery_status: Option<&'static str>,
    #[schema(required = true)]
    pub last_delivery_response_code: Option<u16>,
    /// Why the most recent attempt failed
    #[schema(required = true)]
    pub last_delivery_error: Option<String>,
    #[schema(format = DateTime, examples("2026-05-11T09:00:00Z"))]
    pub created_at: String,
    #[schema(format = DateTime, examples("2026-05-11T09:00:00Z"))]
    pub updated_at: String,
    #[schema(required = true, schema_with = fields::rate_limit_per_second)]
    pub rate_limit_per_second: Option<u32>,
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
            rate_limit_per_second: s.rate_limit_per_second,
        }
    }
}

/// Create answers the full subscription plus its secret, once.
#[derive(Serialize, ToSchema)]
#[schema(
    as = SubscriptionWithSecret,
    description = "A subscription as answered by create: with its signing secret, once."
)]
struct CreatedView<'a> {
    #[serde(flatten)]
    subscription: SubscriptionView,
    #[schema(value_type = openapi::Secret)]
    secret: &'a str,
}

/// One page of the subscription list.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SubscriptionList, description = "One page of subscriptions, newest first")]
struct SubscriptionPage {
    data: Vec<SubscriptionView>,
    #[schema(required = true, schema_with = fields::next_cursor)]
    next_cursor: Option<String>,
}

/// rotate-secret's answer.
#[derive(Serialize, ToSchema)]
#[schema(as = RotateResult, description = "The new signing secret")]
struct Rotated<'a> {
    #[schema(schema_with = fields::subscription_id)]
    id: &'a str,
    #[schema(value_type = openapi::Secret)]
    secret: &'a str,
}

/// An optional field that, when sent, must hold a value: `null` is refused as a wrong type.
/// Read as "absent", `{"headers": null}` would answer 200 and silently change nothing.
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// An optional field that may be `null` on purpose (PATCH: absent leaves it, `null` clears it,
/// a value sets it): `None` when absent (with `#[serde(default)]`), `Some(None)` for `null`.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(
    as = CreateSubscription,
    examples(json!({
        "name": "production-listener",
        "url": "https://your-server.example.com/atender-webhooks",
        "events": ["message.received", "message.sent", "conversation.resolved"],
    }))
)]
pub(crate) struct CreateBody {
    #[schema(schema_with = fields::name)]
    pub(crate) name: String,
    #[schema(schema_with = fields::url)]
    pub(crate) url: String,
    #[schema(schema_with = fields::events)]
    pub(crate) events: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::headers)]
    pub(crate) headers: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::max_retries_with_default)]
    pub(crate) max_retries: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::retry_delay_seconds_with_default)]
    pub(crate) retry_delay_seconds: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, default = true)]
    pub(crate) is_active: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, default = false)]
    pub(crate) is_paused: Option<bool>,
    /// Absent or `null`: no limit.
    #[serde(default)]
    #[schema(schema_with = fields::rate_limit_per_second)]
    pub(crate) rate_limit_per_second: Option<Integer>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = UpdateSubscription, description = "Only the fields given change", examples(json!({ "isPaused": true })))]
pub(crate) struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::name)]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::url)]
    pub(crate) url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::events)]
    pub(crate) events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::headers)]
    pub(crate) headers: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::max_retries)]
    pub(crate) max_retries: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::retry_delay_seconds_input)]
    pub(crate) retry_delay_seconds: Option<Integer>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub(crate) is_active: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub(crate) is_paused: Option<bool>,
    /// Absent: unchanged; `null`: the limit is removed.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = fields::rate_limit_per_second_input)]
    pub(crate) rate_limit_per_second: Option<Option<Integer>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = RotateSecret)]
struct RotateBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::grace_seconds)]
    grace_seconds: Option<Integer>,
}

/// Why a subscription is disabled when a person turns it off through the API.
pub const DISABLED_BY_API: &str = "disabled by API request (isActive set to false)";

/// `POST /v1/webhooks`
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "createWebhook",
    tag = "webhooks",
    summary = "Create a subscription",
    description = "Answers the full subscription plus its signing `secret`. The secret is never shown again; \
        rotate it if it is lost.",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created; the only answer that carries the secret", body = CreatedView),
        (status = 400, response = ValidationFailed),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = LimitExceeded),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "listWebhooks",
    tag = "webhooks",
    summary = "List subscriptions, newest first",
    params(SubscriptionListQuery),
    responses(
        (status = 200, description = "One page of subscriptions", body = SubscriptionPage),
        (status = 400, response = ValidationFailed),
    ),
)]
pub async fn list(state: ApiState, headers: HeaderMap, query: String) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksRead, Gate::Webhooks)?;
    let pairs = parse_query(&query, &["limit", "cursor"])?;
    let limit = page_limit(&pairs)?;
    let cursor = parse_cursor(query_value(&pairs, "cursor"), SubscriptionId::parse, SubscriptionId::PREFIX)?;
    let (page, next) = state.store.list_subscriptions(&principal.tenant.id, limit, cursor.as_ref())?;
    let data: Vec<SubscriptionView> = page.iter().map(SubscriptionView::from).collect();
    Ok(json_reply(StatusCode::OK, &SubscriptionPage { data, next_cursor: next.map(|next| next.to_string()) }))
}

/// `GET /v1/webhooks/:id`
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    operation_id = "getWebhook",
    tag = "webhooks",
    summary = "Get one subscription",
    description = "Full details, custom headers and retry settings included; never the secret.",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        (status = 404, response = NotFound),
    ),
)]
pub async fn get(state: ApiState, headers: HeaderMap, id: String) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksRead, Gate::Webhooks)?;
    let subscription = find(&state, &principal.tenant.id, &id)?;
    Ok(json_reply(StatusCode::OK, &SubscriptionView::from(&subscription)))
}

/// `PATCH /v1/webhooks/:id`
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    operation_id = "updateWebhook",
    tag = "webhooks",
    summary = "Update a subscription",
    description = "Changes only the fields given; every field is validated before anything changes. \
        `isActive: true` re-enables a disabled subscription (clears `disableReason` and `disabledAt`, \
        resets `consecutiveFailures`, releases held deliveries); `isActive: false` disables it by hand. \
        `rateLimitPerSecond: null` removes the rate limit; a lower limit applies from the next attempt on.",
    params(SubscriptionPath),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The updated subscription", body = SubscriptionView),
        (status = 400, response = ValidationFailed),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    ),
)]
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
    let apply = move |subscription: &mut Subscription| patch.apply(subscription, now);
    let id = SubscriptionId::parse(&id).ok_or_else(|| ApiError::not_found("subscription"))?;
    let updated = state
        .store
        .update_subscription(&principal.tenant.id, &id, Box::new(apply))?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    Ok(json_reply(StatusCode::OK, &SubscriptionView::from(&updated)))
}

/// `DELETE /v1/webhooks/:id`
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "deleteWebhook",
    tag = "webhooks",
    summary = "Delete a subscription",
    description = "Permanent; its queued deliveries are dropped.",
    params(SubscriptionPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, response = NotFound),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    operation_id = "rotateWebhookSecret",
    tag = "webhooks",
    summary = "Rotate the signing secret",
    description = "From now on every attempt, retries of older events included, is signed with the new \
        secret. With `graceSeconds` the old secret stays valid that long: `webhook-signature` then carries \
        both signatures, while `X-Atender-Signature` uses the new secret. The body is optional.",
    params(SubscriptionPath),
    request_body = Option<RotateBody>,
    responses(
        (status = 200, description = "The new secret", body = Rotated),
        (status = 400, response = ValidationFailed),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    ),
)]
pub async fn rotate_secret(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let body: Option<RotateBody> = parse_json(&headers, &body)?;
    let grace = body.and_then(|body| body.grace_seconds).unwrap_or(Integer((*GRACE_SECONDS.start()).into()));
    let grace = validate_range("graceSeconds", grace, GRACE_SECONDS)?;
    let id = find(&state, &principal.tenant.id, &id)?.id;
    let secret = generate_secret();
    let now = now_millis();
    state
        .store
        .update_subscription(&principal.tenant.id, &id, {
            let secret = secret.clone();
            Box::new(move |subscription| rotate(subscription, &secret, grace, now))
        })?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    tracing::info!(tenant = %principal.tenant.id, %id, grace_seconds = grace, "subscription secret rotated");
    Ok(json_reply(StatusCode::OK, &Rotated { id: id.as_str(), secret: secret.expose() }))
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
        max_retries: validate_range(
            "maxRetries",
            body.max_retries.unwrap_or(Integer(DEFAULT_MAX_RETRIES.into())),
            MAX_RETRIES,
        )?,
        retry_delay_seconds: validate_range(
            "retryDelaySeconds",
            body.retry_delay_seconds.unwrap_or(Integer(DEFAULT_RETRY_DELAY_SECONDS.into())),
            RETRY_DELAY_SECONDS,
        )?,
        is_paused: body.is_paused.unwrap_or(false),
        rate_limit_per_second: body
            .rate_limit_per_second
            .map(|value| validate_range("rateLimitPerSecond", value, RATE_LIMIT_PER_SECOND))
            .transpose()?,
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
    /// `Some(None)`: remove the limit.
    rate_limit_per_second: Option<Option<u32>>,
}

/// Validates every field of a PATCH before anything is stored, so a bad field changes nothing.
pub(crate) fn validate_patch(config: &Config, patch: PatchBody) -> Result<ValidPatch, ApiError> {
    Ok(ValidPatch {
        name: patch.name.as_deref().map(validate_name).transpose()?,
        url: patch.url.as_deref().map(|url| validate_url(config, url)).transpose()?,
        events: patch.events.as_deref().map(|events| validate_events(config, events)).transpose()?,
        headers: patch.headers.as_ref().map(|headers| validate_headers(Some(headers))).transpose()?,
        max_retries: patch
            .max_retries
            .map(|value| validate_range("maxRetries", value, MAX_RETRIES))
            .transpose()?,
        retry_delay_seconds: patch
            .retry_delay_seconds
            .map(|value| validate_range("retryDelaySeconds", value, RETRY_DELAY_SECONDS))
            .transpose()?,
        is_active: patch.is_active,
        is_paused: patch.is_paused,
        rate_limit_per_second: patch
            .rate_limit_per_second
            .map(|value| {
                value
                    .map(|value| validate_range("rateLimitPerSecond", value, RATE_LIMIT_PER_SECOND))
                    .transpose()
            })
            .transpose()?,
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
            subscription.set_paused(is_paused);
        }
        if let Some(rate_limit) = self.rate_limit_per_second {
            subscription.rate_limit_per_second = rate_limit;
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
    if name.trim().is_empty() || !NAME_CHARS.contains(&length) {
        return Err(ApiError::validation(format!(
            "name must be {}-{} characters and not blank",
            NAME_CHARS.start(),
            NAME_CHARS.end()
        )));
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
    if !EVENTS_PER_SUBSCRIPTION.contains(&events.len()) {
        return Err(ApiError::validation(format!(
            "events must list between {} and {} event types",
            EVENTS_PER_SUBSCRIPTION.start(),
            EVENTS_PER_SUBSCRIPTION.end()
        )));
    }
    for (index, event) in events.iter().enumerate() {
        // The configured types and the operational ones the daemon sends itself.
        if !config.is_subscribable_event_type(event) {
            return Err(ApiError::validation(format!(
                "events[{index}]: unknown event type {event:?} (known: {})",
                config.subscribable_event_types().collect::<Vec<_>>().join(", ")
            )));
        }
        if events[..index].contains(event) {
            return Err(ApiError::validation(format!("events[{index}]: {event:?} is listed twice")));
        }
    }
    Ok(events.to_vec())
}

/// Header names (lowercase) a subscription cannot set: the daemon sets them itself, or they
/// would break the request framing.
pub const RESERVED_HEADERS: [&str; 11] = [
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

/// Prefixes (lowercase) of header names a subscription cannot set.
pub const RESERVED_HEADER_PREFIXES: [&str; 3] = ["x-atender-", "webhook-", "proxy-"];

/// Header names the daemon sets itself or that would break the request framing.
fn is_reserved_header(lowercase_name: &str) -> bool {
    RESERVED_HEADERS.contains(&lowercase_name)
        || RESERVED_HEADER_PREFIXES.iter().any(|prefix| lowercase_name.starts_with(prefix))
}

fn validate_headers(headers: Option<&Map<String, Value>>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(headers) = headers else { return Ok(Vec::new()) };
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::validation(format!("headers may hold at most {MAX_HEADERS} custom headers")));
    }
    let mut seen = Vec::new();
    let mut valid = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let is_token = !name.is_empty()
            && name.len() <= HEADER_NAME_BYTES
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || HEADER_NAME_SYMBOLS.as_bytes().contains(&b));
        if !is_token {
            return Err(ApiError::validation(format!(
                "headers: {name:?} is not a valid HTTP header name (letters, digits and {HEADER_NAME_SYMBOLS} only)"
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
        if value.len() > HEADER_VALUE_BYTES || !visible || value.starts_with(' ') || value.ends_with(' ') {
            return Err(ApiError::validation(format!(
                "headers.{name} must be at most {HEADER_VALUE_BYTES} characters of visible ASCII with spaces only \
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
    range: RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    let (min, max) = (*range.start(), *range.end());
    if value < i64::from(min) || value > i64::from(max) {
        return Err(ApiError::validation(format!("{field} must be between {min} and {max}")));
    }
    Ok(value as u32)
}
