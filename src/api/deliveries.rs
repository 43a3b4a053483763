//! `/v1/webhooks/:id/deliveries`: the delivery log of a subscription, one delivery with its
//! payload, and redelivery.

use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::api::error::ApiError;
use crate::api::openapi::{
    fields, DeliveryListQuery, DeliveryPath, NotFound, SubscriptionPath, ValidationFailed,
};
use crate::api::request::{authorize, json_reply, page_limit, parse_cursor, parse_query, query_value, Gate};
use crate::api::webhooks::find;
use crate::api::ApiState;
use crate::config::Scope;
use crate::model::{rfc3339, Attempt, Delivery, DeliveryId, DeliveryState, SubscriptionId};

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

/// A delivery of the subscription, or 404 for unknown, malformed and other subscriptions' ids.
pub(crate) fn find_delivery(
    state: &ApiState,
    subscription_id: &SubscriptionId,
    delivery_id: &str,
) -> Result<Delivery, ApiError> {
    let delivery_id = DeliveryId::parse(delivery_id).ok_or_else(|| ApiError::not_found("delivery"))?;
    state.store.delivery(subscription_id, &delivery_id)?.ok_or_else(|| ApiError::not_found("delivery"))
}
