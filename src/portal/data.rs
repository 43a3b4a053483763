//! Every storage call the portal makes, and nothing else: one file to move when storage
//! changes shape. Each function does what the JSON endpoint of the same name does — the same
//! lookups (another tenant's id is "not found"), the same validation helpers of
//! `api::webhooks`, the same storage calls, whose writes are durable when they return — and
//! returns domain values or the API's own [`ApiError`].
//!
//! Synchronous calls block: the portal runs these on tokio's blocking pool (`portal::off_workers`).

use crate::api::deliveries::find_delivery;
use crate::api::error::ApiError;
use crate::api::request::parse_cursor;
use crate::api::webhooks::{
    find, rotate as rotate_secret_of, validate_create, validate_patch, CreateBody, PatchBody,
};
use crate::api::ApiState;
use crate::config::{Config, Tenant};
use crate::model::{
    new_secret, now_millis, Delivery, DeliveryId, DeliveryState, Millis, SigningSecret, Subscription,
    SubscriptionId,
};

/// Subscriptions shown on one page of the list.
pub const LIST_PAGE: usize = 100;

/// Deliveries shown on one page of the log.
pub const LOG_PAGE: usize = 50;

/// Most deliveries read to draw a subscription's charts (the newest of the last 24 h).
pub const CHART_DELIVERIES: usize = 2_000;

/// `GET /v1/webhooks`: one page of the tenant's subscriptions, newest first, and the cursor of
/// the next page.
pub fn list_subscriptions(
    state: &ApiState,
    tenant_id: &str,
    cursor: Option<&str>,
) -> Result<(Vec<Subscription>, Option<String>), ApiError> {
    let cursor = parse_cursor(cursor, SubscriptionId::parse, SubscriptionId::PREFIX)?;
    let (page, next) = state.store.list_subscriptions(tenant_id, LIST_PAGE, cursor.as_ref())?;
    Ok((page, next.map(|next| next.to_string())))
}

/// `GET /v1/webhooks/:id`: the tenant's subscription, 404 for any other id.
pub fn subscription(state: &ApiState, tenant_id: &str, id: &str) -> Result<Subscription, ApiError> {
    find(state, tenant_id, id)
}

/// `POST /v1/webhooks`: validates, stores durably, and returns the subscription (with its
/// secret, to be shown once).
pub(crate) async fn create(
    state: &ApiState,
    config: &Config,
    tenant: &Tenant,
    body: CreateBody,
) -> Result<Subscription, ApiError> {
    let subscription = validate_create(config, &tenant.id, body, now_millis())?;
    state.store.create_subscription(&subscription, tenant.max_webhooks)?;
    tracing::info!(tenant = %subscription.tenant_id, id = %subscription.id, "subscription created in the portal");
    Ok(subscription)
}

/// `PATCH /v1/webhooks/:id`: validates every field first, then applies the patch durably.
pub(crate) async fn update(
    state: &ApiState,
    config: &Config,
    tenant_id: &str,
    id: &str,
    patch: PatchBody,
) -> Result<Subscription, ApiError> {
    let patch = validate_patch(config, patch)?;
    let now = now_millis();
    let id = SubscriptionId::parse(id).ok_or_else(|| ApiError::not_found("subscription"))?;
    let updated = state
        .store
        .update_subscription(tenant_id, &id, Box::new(move |subscription| patch.apply(subscription, now)))?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    Ok(updated)
}

/// `DELETE /v1/webhooks/:id`.
pub async fn delete(state: &ApiState, tenant_id: &str, id: &str) -> Result<(), ApiError> {
    let id = SubscriptionId::parse(id).ok_or_else(|| ApiError::not_found("subscription"))?;
    if !state.store.delete_subscription(tenant_id, &id)? {
        return Err(ApiError::not_found("subscription"));
    }
    tracing::info!(tenant = %tenant_id, %id, "subscription deleted in the portal");
    Ok(())
}

/// `POST /v1/webhooks/:id/rotate-secret` without grace: the old secret stops working at once,
/// as the guide says. Returns the new secret, to be shown once.
pub async fn rotate_secret(state: &ApiState, tenant_id: &str, id: &str) -> Result<SigningSecret, ApiError> {
    let id = find(state, tenant_id, id)?.id;
    let secret = new_secret();
    let now = now_millis();
    state
        .store
        .update_subscription(tenant_id, &id, {
            let secret = secret.clone();
            Box::new(move |subscription| rotate_secret_of(subscription, &secret, 0, now))
        })?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    tracing::info!(tenant = %tenant_id, %id, "subscription secret rotated in the portal");
    Ok(secret)
}

/// `GET /v1/webhooks/:id/deliveries`: one page of the log, newest first, optionally one state.
pub fn deliveries(
    state: &ApiState,
    subscription: &Subscription,
    status: Option<DeliveryState>,
    cursor: Option<&str>,
) -> Result<(Vec<Delivery>, Option<String>), ApiError> {
    let cursor = parse_cursor(cursor, DeliveryId::parse, DeliveryId::PREFIX)?;
    let (page, next) = state.store.list_deliveries(&subscription.id, status, LOG_PAGE, cursor.as_ref())?;
    Ok((page, next.map(|next| next.to_string())))
}

/// `GET /v1/webhooks/:id/deliveries/:deliveryId`: the delivery and the exact body it sends
/// (`None` once the event was purged).
pub fn delivery(
    state: &ApiState,
    subscription: &Subscription,
    delivery_id: &str,
) -> Result<(Delivery, Option<Vec<u8>>), ApiError> {
    let delivery = find_delivery(state, &subscription.id, delivery_id)?;
    let body = state.store.event(&delivery.event_id)?.map(|event| event.body);
    Ok((delivery, body))
}

/// `POST /v1/webhooks/:id/deliveries/:deliveryId/redeliver`.
pub async fn redeliver(
    state: &ApiState,
    subscription: &Subscription,
    delivery_id: &str,
) -> Result<Delivery, ApiError> {
    let delivery_id = find_delivery(state, &subscription.id, delivery_id)?.id;
    let delivery =
        state.store.redeliver(subscription, &delivery_id)?.ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok(delivery)
}

/// The subscription's deliveries created since `since` (unix ms), newest first, at most
/// [`CHART_DELIVERIES`]: what the charts are drawn from.
pub fn recent_deliveries(
    state: &ApiState,
    subscription: &Subscription,
    since: Millis,
) -> Result<Vec<Delivery>, ApiError> {
    let mut recent = Vec::new();
    let mut cursor: Option<DeliveryId> = None;
    loop {
        let (page, next) = state.store.list_deliveries(&subscription.id, None, 100, cursor.as_ref())?;
        let reached_older = page.iter().any(|delivery| delivery.created_at < since);
        recent.extend(page.into_iter().filter(|delivery| delivery.created_at >= since));
        if reached_older || recent.len() >= CHART_DELIVERIES || next.is_none() {
            recent.truncate(CHART_DELIVERIES);
            return Ok(recent);
        }
        cursor = next;
    }
}

/// `POST /v1/webhooks/:id/test`: one test send to the subscription now and how it went; 429
/// `test_in_progress` while another is under way. Blocks for the exchange (at most 10 s).
pub fn test_send(
    state: &ApiState,
    subscription: &Subscription,
) -> Result<crate::probe::TestOutcome, ApiError> {
    crate::api::test_send::send_test(state, subscription)
}

/// The windows the portal offers to recover, in hours back from now (an hour to a week; older
/// deliveries are usually purged by `delivery_retention`, 7 days by default).
pub const RECOVER_HOURS: [u64; 4] = [1, 24, 72, 168];

/// `POST /v1/webhooks/:id/recover` for the last `hours` (text from the form, one of
/// [`RECOVER_HOURS`], else 400): queues again the failed and expired deliveries created since
/// then; returns how many. Durable when it returns.
pub fn recover(state: &ApiState, subscription: &Subscription, hours: &str) -> Result<usize, ApiError> {
    let hours = hours.parse::<u64>().ok().filter(|hours| RECOVER_HOURS.contains(hours)).ok_or_else(|| {
        let choices: Vec<String> = RECOVER_HOURS.iter().map(u64::to_string).collect();
        ApiError::validation(format!("hours must be one of {} (got {hours:?})", choices.join(", ")))
    })?;
    let now = now_millis();
    let recovered = state.store.recover(subscription, now.saturating_sub(hours * 3_600_000), now)?;
    tracing::info!(tenant = %subscription.tenant_id, id = %subscription.id, hours, recovered, "deliveries recovered in the portal");
    Ok(recovered)
}
