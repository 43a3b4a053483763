//! `/v1/webhooks/:id/deliveries`: the delivery log of a subscription, one delivery with its
//! payload, and redelivery; `/v1/webhooks/:id/recover`: redelivery of the failed and expired
//! ones of a time range.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::api::error::ApiError;
use crate::api::openapi::{
    fields, DeliveryListQuery, DeliveryPath, NotFound, PayloadTooLarge, SubscriptionPath,
    UnsupportedMediaType, ValidationFailed,
};
use crate::api::request::{
    authorize, json_reply, page_limit, parse_cursor, parse_query, query_value, require_json, Gate,
};
use crate::api::webhooks::{find, present};
use crate::api::ApiState;
use crate::config::Scope;
use crate::model::{
    now_millis, parse_rfc3339, rfc3339, Attempt, Delivery, DeliveryId, DeliveryState, Millis, SubscriptionId,
};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Attempt, description = "One HTTP attempt")]
struct AttemptView {
    /// When the attempt started
    #[schema(format = DateTime, examples("2026-05-11T09:00:00Z"))]
    at: String,
    duration_ms: u32,
    /// The receiver's status; null when no answer came.
    #[schema(required = true)]
    response_code: Option<u16>,
    /// Why the attempt failed; null on success.
    #[schema(required = true)]
    error: Option<String>,
}

impl From<&Attempt> for AttemptView {
    fn from(attempt: &Attempt) -> Self {
        AttemptView {
            at: rfc3339(attempt.at),
            duration_ms: attempt.duration_ms,
            response_code: attempt.response_code,
            error: attempt.error.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Delivery, description = "One event on its way to one subscription")]
struct DeliveryView {
    #[schema(schema_with = fields::delivery_id)]
    id: String,
    #[schema(schema_with = fields::subscription_id)]
    subscription_id: String,
    #[schema(schema_with = fields::event_id)]
    event_id: String,
    #[schema(value_type = crate::api::openapi::EventType)]
    event: String,
    #[schema(value_type = crate::api::openapi::DeliveryStateSchema)]
    status: &'static str,
    /// Oldest first; at most the last 50 are kept
    attempts: Vec<AttemptView>,
    /// When the next attempt is due, while pending
    #[schema(required = true, format = DateTime, examples("2026-05-11T09:00:00Z"))]
    next_attempt_at: Option<String>,
    #[schema(format = DateTime, examples("2026-05-11T09:00:00Z"))]
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = fields::payload)]
    payload: Option<Box<RawValue>>,
}

/// One page of the delivery log.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = DeliveryList, description = "One page of deliveries, newest first")]
struct DeliveryPage {
    data: Vec<DeliveryView>,
    #[schema(required = true, schema_with = fields::next_cursor)]
    next_cursor: Option<String>,
}

impl DeliveryView {
    fn new(delivery: &Delivery, payload: Option<Box<RawValue>>) -> DeliveryView {
        DeliveryView {
            id: delivery.id.to_string(),
            subscription_id: delivery.subscription_id.to_string(),
            event_id: delivery.event_id.to_string(),
            event: delivery.event_type.clone(),
            status: delivery.state.as_str(),
            attempts: delivery.attempts.iter().map(AttemptView::from).collect(),
            next_attempt_at: delivery.next_attempt_at.map(rfc3339),
            created_at: rfc3339(delivery.created_at),
            payload,
        }
    }
}

/// `GET /v1/webhooks/:id/deliveries?status=failed&limit=50&cursor=dlv_…`
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    operation_id = "listDeliveries",
    tag = "deliveries",
    summary = "List a subscription's deliveries, newest first",
    description = "Finished records are purged after the configured `delivery_retention` (default 7 days).",
    params(SubscriptionPath, DeliveryListQuery),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveryPage),
        (status = 400, response = ValidationFailed),
        (status = 404, response = NotFound),
    ),
)]
pub async fn list(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    query: String,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksRead, Gate::Webhooks)?;
    let subscription = find(&state, &principal.tenant.id, &id)?;
    let pairs = parse_query(&query, &["status", "limit", "cursor"])?;
    let limit = page_limit(&pairs)?;
    let status = query_value(&pairs, "status")
        .map(|text| {
            DeliveryState::parse(text).ok_or_else(|| {
                ApiError::validation(format!(
                    "status must be one of pending, held, succeeded, failed, expired (got {text:?})"
                ))
            })
        })
        .transpose()?;
    let cursor = parse_cursor(query_value(&pairs, "cursor"), DeliveryId::parse, DeliveryId::PREFIX)?;
    let (page, next) = state.store.list_deliveries(&subscription.id, status, limit, cursor.as_ref())?;
    let data: Vec<DeliveryView> = page.iter().map(|delivery| DeliveryView::new(delivery, None)).collect();
    Ok(json_reply(StatusCode::OK, &DeliveryPage { data, next_cursor: next.map(|next| next.to_string()) }))
}

/// `GET /v1/webhooks/:id/deliveries/:deliveryId`, with the payload as delivered.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries/{deliveryId}",
    operation_id = "getDelivery",
    tag = "deliveries",
    summary = "Get one delivery with its payload",
    params(DeliveryPath),
    responses(
        (status = 200, description = "The delivery, with `payload`", body = DeliveryView),
        (status = 404, response = NotFound),
    ),
)]
pub async fn get(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    delivery_id: String,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksRead, Gate::Webhooks)?;
    let subscription = find(&state, &principal.tenant.id, &id)?;
    let delivery = find_delivery(&state, &subscription.id, &delivery_id)?;
    let payload = state
        .store
        .event(&delivery.event_id)?
        .and_then(|event| String::from_utf8(event.body).ok())
        .and_then(|body| RawValue::from_string(body).ok());
    Ok(json_reply(StatusCode::OK, &DeliveryView::new(&delivery, payload)))
}

/// `POST /v1/webhooks/:id/deliveries/:deliveryId/redeliver`: queue it again (202).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{deliveryId}/redeliver",
    operation_id = "redeliverDelivery",
    tag = "deliveries",
    summary = "Queue a delivery again",
    description = "Starts a fresh round of attempts with the same delivery id and body; held again if the \
        subscription is paused or disabled. Takes no body.",
    params(DeliveryPath),
    responses(
        (status = 202, description = "Queued again", body = DeliveryView),
        (status = 404, response = NotFound),
    ),
)]
pub async fn redeliver(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    delivery_id: String,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let subscription = find(&state, &principal.tenant.id, &id)?;
    let delivery_id = find_delivery(&state, &subscription.id, &delivery_id)?.id;
    let delivery =
        state.store.redeliver(&subscription, &delivery_id)?.ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok(json_reply(StatusCode::ACCEPTED, &DeliveryView::new(&delivery, None)))
}

/// `POST /v1/webhooks/:id/recover`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = RecoverDeliveries)]
struct RecoverBody {
    /// The start of the range (included): deliveries created at or after it. RFC 3339 with an
    /// offset (`Z` or `±HH:MM`), fractions of a second read to the millisecond.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = String, format = DateTime, examples("2026-05-11T09:00:00Z"))]
    since: Option<String>,
    /// The end of the range (excluded): deliveries created before it; default now. Must be
    /// after `since`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, format = DateTime, examples("2026-05-11T10:00:00Z"))]
    until: Option<String>,
}

/// What a recovery queued.
#[derive(Serialize, ToSchema)]
#[schema(as = Recovered, description = "How many deliveries were queued again")]
struct Recovered {
    /// Failed and expired deliveries queued again (held again, for a paused or disabled
    /// subscription); those pending, held or succeeded are not counted
    queued: u64,
}

/// `POST /v1/webhooks/:id/recover` with `{"since": "<RFC 3339>", "until": "<RFC 3339>"}`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/recover",
    operation_id = "recoverDeliveries",
    tag = "deliveries",
    summary = "Queue again the failed and expired deliveries of a time range",
    description = "Every `failed` or `expired` delivery of the subscription created at or after `since` \
        and before `until` (default: now) starts a fresh round of attempts with its own id and body, as \
        redeliver does: `pending`, or `held` while the subscription is paused or disabled. Deliveries \
        pending, held or succeeded are left alone, so repeating a recovery queues nothing twice. Answers \
        once every queued delivery is stored (in batches of 500, each durable); after a 503 part-way, \
        call again to finish.",
    params(SubscriptionPath),
    request_body = RecoverBody,
    responses(
        (status = 202, description = "Queued; `queued` counts the deliveries queued or held again", body = Recovered),
        (status = 400, response = ValidationFailed),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    ),
)]
pub async fn recover(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    // The subscription first: an unknown id is 404 whatever the body, as schemathesis expects
    // of a schema-valid body whose range the schema cannot check.
    let subscription = find(&state, &principal.tenant.id, &id)?;
    let body: RecoverBody = require_json(&headers, &body)?;
    let (since, until) = recovery_range(body.since.as_deref(), body.until.as_deref(), now_millis())?;
    let queued = state.store.recover(&subscription, since, until)?;
    tracing::info!(
        tenant = %principal.tenant.id,
        subscription = %subscription.id,
        since = %rfc3339(since),
        until = %rfc3339(until),
        queued,
        "deliveries recovered"
    );
    Ok(json_reply(StatusCode::ACCEPTED, &Recovered { queued: queued as u64 }))
}

/// The range `[since, until)` of a recovery in Unix ms, from the body's RFC 3339 times; `until`
/// defaults to `now` (or to `since`, an empty range, when `since` is later). Times before 1970
/// count as 1970 (no delivery is older). 400 naming the field when `since` is missing, a time
/// does not parse, or `until` is not after `since`.
fn recovery_range(
    since: Option<&str>,
    until: Option<&str>,
    now: Millis,
) -> Result<(Millis, Millis), ApiError> {
    let time = |field: &str, text: &str| -> Result<Millis, ApiError> {
        let at = parse_rfc3339(text).ok_or_else(|| {
            ApiError::validation(format!(
                "{field} must be an RFC 3339 time with an offset, such as 2026-05-11T09:00:00Z or \
                 2026-05-11T11:00:00+02:00 (got {text:?})"
            ))
        })?;
        Ok(at.max(0) as Millis)
    };
    let since = since.ok_or_else(|| {
        ApiError::validation(
            "since is required: the start of the range to recover, an RFC 3339 time such as 2026-05-11T09:00:00Z",
        )
    })?;
    let since = time("since", since)?;
    let until = match until {
        Some(text) => {
            let until = time("until", text)?;
            if until <= since {
                return Err(ApiError::validation(format!(
                    "until must be after since (since is {}, until {})",
                    rfc3339(since),
                    rfc3339(until)
                )));
            }
            until
        }
        None => now.max(since),
    };
    Ok((since, until))
}

/// A delivery of the subscription, or 404 for unknown, malformed and other subscriptions' ids.
pub(crate) fn find_delivery(
    state: &ApiState,
    subscription_id: &SubscriptionId,
    delivery_id: &str,
) -> Result<Delivery, ApiError> {
    let delivery_id = DeliveryId::parse(delivery_id).ok_or_else(|| ApiError::not_found("delivery"))?;
    state.store.delivery(subscription_id, &delivery_id)?.ok_or_else(|| ApiError::not_found("delivery"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_778_490_000_000; // 2026-05-11T09:00:00Z

    #[test]
    fn a_recovery_range_is_half_open_and_until_defaults_to_now() {
        let range = |since, until| recovery_range(since, until, NOW);
        assert_eq!(range(Some("2026-05-11T08:00:00Z"), None).unwrap(), (NOW - 3_600_000, NOW));
        assert_eq!(
            range(Some("2026-05-11T08:00:00Z"), Some("2026-05-11T10:30:00+02:00")).unwrap(),
            (NOW - 3_600_000, NOW - 1_800_000)
        );
        // In the future: an empty range when until is left out, not an error.
        assert_eq!(range(Some("2026-05-12T09:00:00Z"), None).unwrap(), (NOW + 86_400_000, NOW + 86_400_000));
        // Before 1970 counts as 1970.
        assert_eq!(range(Some("1960-01-01T00:00:00Z"), Some("1970-01-01T00:00:01Z")).unwrap(), (0, 1000));
    }

    #[test]
    fn a_bad_recovery_range_names_its_field() {
        for (since, until, expected) in [
            (None, None, "since is required"),
            (Some("yesterday"), None, "since must be an RFC 3339 time"),
            (Some("2026-05-11T08:00:00"), None, "since must be an RFC 3339 time"),
            (Some("2026-05-11T08:00:00Z"), Some("2026-05-11"), "until must be an RFC 3339 time"),
            (Some("2026-05-11T08:00:00Z"), Some("2026-05-11T08:00:00Z"), "until must be after since"),
            (Some("2026-05-11T08:00:00Z"), Some("2026-05-11T07:00:00Z"), "until must be after since"),
        ] {
            let err = recovery_range(since, until, NOW).unwrap_err();
            assert_eq!(err.code, "validation_failed");
            assert!(err.message.starts_with(expected), "{since:?} {until:?}: {}", err.message);
        }
    }
}
