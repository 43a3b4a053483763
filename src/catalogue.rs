//! The event types the daemon itself sends: operational events about a tenant's own webhooks
//! (`webhook.disabled`, `webhook.enabled`, `delivery.exhausted`) and the test send's
//! `webhook.test`. They complement the configured catalogue (`[events] types`): a subscription
//! may list them (opt-in: an operational event goes only to subscriptions that list its type),
//! clients may not publish them. Svix (`endpoint.disabled`, `message.attempt.exhausted`) and
//! GitHub (`ping`) send the same kinds of events.
//!
//! Pure data and rendering; no I/O.

use serde_json::{json, Value};

/// `webhook.disabled`: a subscription was disabled (its last attempt of a delivery failed, or
/// the receiver answered 410). `data`: [`disabled_data`].
pub const WEBHOOK_DISABLED: &str = "webhook.disabled";
/// `webhook.enabled`: a disabled subscription was enabled again. `data`: [`enabled_data`].
pub const WEBHOOK_ENABLED: &str = "webhook.enabled";
/// `delivery.exhausted`: a delivery failed its last attempt. `data`: [`exhausted_data`].
pub const DELIVERY_EXHAUSTED: &str = "delivery.exhausted";
/// `webhook.test`: sent by `POST /v1/webhooks/{id}/test` to that subscription only.
pub const WEBHOOK_TEST: &str = "webhook.test";

/// One event type the daemon sends: its name, what it means, and the JSON Schema of its `data`.
#[derive(Debug, Clone, Copy)]
pub struct OperationalType {
    pub name: &'static str,
    pub description: &'static str,
    /// The JSON Schema (2020-12) of the event's `data`.
    pub schema: fn() -> Value,
}

/// Every event type the daemon sends itself, in catalogue order.
pub const OPERATIONAL: [OperationalType; 4] = [
    OperationalType {
        name: WEBHOOK_DISABLED,
        description: "One of your webhooks was disabled: a delivery failed its last attempt or the \
                      endpoint answered 410 Gone. Its deliveries are held until it is enabled again.",
        schema: disabled_schema,
    },
    OperationalType {
        name: WEBHOOK_ENABLED,
        description: "One of your disabled webhooks was enabled again; its held deliveries are queued.",
        schema: enabled_schema,
    },
    OperationalType {
        name: DELIVERY_EXHAUSTED,
        description: "A delivery to one of your webhooks failed its last attempt and will not be \
                      retried (redeliver or recover it to try again).",
        schema: exhausted_schema,
    },
    OperationalType {
        name: WEBHOOK_TEST,
        description: "A test event, sent only to the webhook it was requested for \
                      (POST /v1/webhooks/{id}/test).",
        schema: test_schema,
    },
];

/// True when `event_type` is one the daemon sends itself (clients cannot publish it).
pub fn is_operational(event_type: &str) -> bool {
    OPERATIONAL.iter().any(|known| known.name == event_type)
}

/// `data` of [`WEBHOOK_DISABLED`]: the subscription, its URL, why and when (RFC 3339) it was
/// disabled.
pub fn disabled_data(webhook_id: &str, url: &str, reason: &str, at: &str) -> Value {
    json!({"webhookId": webhook_id, "url": url, "disableReason": reason, "disabledAt": at})
}

/// `data` of [`WEBHOOK_ENABLED`]: the subscription, its URL and when (RFC 3339) it was enabled.
pub fn enabled_data(webhook_id: &str, url: &str, at: &str) -> Value {
    json!({"webhookId": webhook_id, "url": url, "enabledAt": at})
}

/// What [`exhausted_data`] reports about the delivery that gave up.
#[derive(Debug, Clone)]
pub struct Exhausted<'a> {
    pub webhook_id: &'a str,
    pub delivery_id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// Attempts made in the round that gave up.
    pub attempts: u32,
    /// The last attempt's HTTP status, `None` when no answer came.
    pub response_code: Option<u16>,
    /// The last attempt's error in words, `None` when the endpoint answered.
    pub error: Option<&'a str>,
}

/// `data` of [`DELIVERY_EXHAUSTED`].
pub fn exhausted_data(exhausted: &Exhausted<'_>) -> Value {
    json!({
        "webhookId": exhausted.webhook_id,
        "deliveryId": exhausted.delivery_id,
        "eventId": exhausted.event_id,
        "eventType": exhausted.event_type,
        "attempts": exhausted.attempts,
        "lastResponseCode": exhausted.response_code,
        "lastError": exhausted.error,
    })
}

/// `data` of [`WEBHOOK_TEST`].
pub fn test_data(webhook_id: &str) -> Value {
    json!({"webhookId": webhook_id, "message": "This is a test event from atender-webhooks."})
}

/// The delivery body of an event the daemon sends, in the layout of every delivery body
/// (`{"id","event","tenantId","timestamp","data"}`, as `api::events` renders a published one).
pub fn body(event_id: &str, event_type: &str, tenant_id: &str, timestamp: &str, data: &Value) -> Vec<u8> {
    let body = json!({
        "id": event_id,
        "event": event_type,
        "tenantId": tenant_id,
        "timestamp": timestamp,
        "data": data,
    });
    serde_json::to_vec(&body).expect("a JSON value serialises")
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
    })
}

fn disabled_schema() -> Value {
    object(
        json!({
            "webhookId": {"type": "string"},
            "url": {"type": "string"},
            "disableReason": {"type": "string"},
            "disabledAt": {"type": "string", "format": "date-time"},
        }),
        &["webhookId", "url", "disableReason", "disabledAt"],
    )
}

fn enabled_schema() -> Value {
    object(
        json!({
            "webhookId": {"type": "string"},
            "url": {"type": "string"},
            "enabledAt": {"type": "string", "format": "date-time"},
        }),
        &["webhookId", "url", "enabledAt"],
    )
}

fn exhausted_schema() -> Value {
    object(
        json!({
            "webhookId": {"type": "string"},
            "deliveryId": {"type": "string"},
            "eventId": {"type": "string"},
            "eventType": {"type": "string"},
            "attempts": {"type": "integer", "minimum": 1},
            "lastResponseCode": {"type": ["integer", "null"]},
            "lastError": {"type": ["string", "null"]},
        }),
        &["webhookId", "deliveryId", "eventId", "eventType", "attempts", "lastResponseCode", "lastError"],
    )
}

fn test_schema() -> Value {
    object(
        json!({
            "webhookId": {"type": "string"},
            "message": {"type": "string"},
        }),
        &["webhookId", "message"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operational_type_is_a_valid_name_with_an_object_schema() {
        for known in OPERATIONAL {
            assert!(crate::config::is_valid_event_type_name(known.name), "{}", known.name);
            assert_eq!((known.schema)()["type"], "object", "{}", known.name);
            assert!(is_operational(known.name));
        }
        assert!(!is_operational("message.received"));
    }

    #[test]
    fn a_body_has_the_delivery_layout() {
        let body = body("evt_1", WEBHOOK_TEST, "acme", "2026-05-11T09:00:00Z", &test_data("wh_1"));
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(r#"{"id":"evt_1","event":"webhook.test","tenantId":"acme","timestamp":"2026-05-11T09:00:00Z","data":{"webhookId":"wh_1""#), "{text}");
    }
}
