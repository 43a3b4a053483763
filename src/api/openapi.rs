//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`: every route of [`ROUTES`] with
//! its parameters, request and response shapes (mirroring the serde structs of `webhooks`,
//! `events` and `deliveries`), the error answers of `error`, and the bearer-key scheme with its
//! scopes. The tests at the bottom hold the document to the router: no route missing, none
//! invented, every `$ref` resolvable.
//!
//! [`ROUTES`]: crate::api::ROUTES

use serde_json::{json, Map, Value};

use crate::api::events::MAX_BATCH;
use crate::config::Scope;

/// The document served by a daemon whose catalogue is `event_types`: every event-type field
/// lists them as its `enum`, so a generated request (schemathesis) or a client generator knows
/// which values are accepted.
pub fn document_for(event_types: &[String]) -> Value {
    let mut document = document();
    add_event_type_enum(&mut document, event_types);
    document
}

fn add_event_type_enum(value: &mut Value, event_types: &[String]) {
    match value {
        Value::Object(object) => {
            if object.get("description").and_then(Value::as_str) == Some(EVENT_TYPE_DESCRIPTION) {
                object.insert("enum".into(), json!(event_types));
            }
            object.values_mut().for_each(|value| add_event_type_enum(value, event_types));
        }
        Value::Array(items) => items.iter_mut().for_each(|value| add_event_type_enum(value, event_types)),
        _ => {}
    }
}

/// The whole document, without the catalogue's `enum` (see [`document_for`]).
///
/// OpenAPI 3.1 (its schemas are JSON Schema 2020-12, so `propertyNames` can say what a header
/// name is); the schemas below are written with 3.0's `nullable`, turned into 3.1's
/// `"type": [T, "null"]` by [`to_openapi_3_1`].
pub fn document() -> Value {
    let mut document = document_3_0();
    to_openapi_3_1(&mut document);
    document
}

/// Rewrites every `{"type": T, "nullable": true}` as `{"type": [T, "null"]}` (and an `enum`
/// beside it gains `null`).
fn to_openapi_3_1(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(kind)) = object.get("type").cloned() {
                    object.insert("type".into(), json!([kind, "null"]));
                }
                if let Some(Value::Array(values)) = object.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            object.values_mut().for_each(to_openapi_3_1);
        }
        Value::Array(items) => items.iter_mut().for_each(to_openapi_3_1),
        _ => {}
    }
}

fn document_3_0() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "atender-webhooks",
            "version": env!("CARGO_PKG_VERSION"),
            "description": INFO_DESCRIPTION,
            "license": { "name": "Apache-2.0" },
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearerAuth": [] }],
        "tags": [
            { "name": "webhooks", "description": "Subscriptions of the calling key's tenant" },
            { "name": "deliveries", "description": "The delivery log of a subscription, and redelivery" },
            { "name": "events", "description": "Publishing events (called by the Atender application)" },
            {
                "name": "operations",
                "description": "Health, readiness, metrics and this document; no key needed",
            },
        ],
        "paths": paths(),
        "components": components(),
    })
}

const INFO_DESCRIPTION: &str = "Single-host webhook delivery daemon: tenants manage webhook \
subscriptions, the Atender application publishes events, and the daemon delivers each event to \
every matching subscription, signed, retried with exponential backoff and stored durably: every \
2xx from a write endpoint is answered only once the change is on disk.\n\n\
Every error is `{\"error\": {\"code\", \"message\"}}`. A path no route serves is answered 404 \
`not_found` (\"no such endpoint\"); a served path with another method is answered 405 \
`method_not_allowed`. The list endpoints refuse query parameters they do not know with 400.";

// ---------------------------------------------------------------------------------------------
// Small builders for the pieces every operation repeats.

/// `{"$ref": "#/components/<kind>/<name>"}`.
fn component_ref(kind: &str, name: &str) -> Value {
    json!({ "$ref": format!("#/components/{kind}/{name}") })
}

fn schema_ref(name: &str) -> Value {
    component_ref("schemas", name)
}

fn parameter_ref(name: &str) -> Value {
    component_ref("parameters", name)
}

fn response_ref(name: &str) -> Value {
    component_ref("responses", name)
}

/// A JSON response with a schema.
fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// A required JSON request body.
fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

/// An error response: the `Error` schema with an example of the code and message sent.
fn error_response(description: &str, code: &str, message: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": {
            "schema": schema_ref("Error"),
            "example": { "error": { "code": code, "message": message } },
        } },
    })
}

/// Adds `description` to a schema unless it is empty.
fn described(mut schema: Value, description: &str) -> Value {
    if !description.is_empty() {
        schema["description"] = Value::String(description.to_owned());
    }
    schema
}

/// An RFC 3339 UTC timestamp (seconds precision), null where `nullable`.
fn timestamp(description: &str, nullable: bool) -> Value {
    let mut schema = json!({ "type": "string", "format": "date-time", "example": "2026-05-11T09:00:00Z" });
    if nullable {
        schema["nullable"] = Value::Bool(true);
    }
    described(schema, description)
}

/// An identifier of one kind: prefix + ULID.
fn id_schema(prefix: &str, description: &str) -> Value {
    json!({
        "type": "string",
        "pattern": format!("^{prefix}[0-9A-HJKMNP-TV-Z]{{26}}$"),
        "description": description,
        "example": format!("{prefix}01JTZ4W8K9RZ3M5Q2X7V6B1N0C"),
    })
}

/// An object schema from `(name, schema)` pairs, all of them required.
fn object(description: &str, properties: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = properties.iter().map(|(name, _)| *name).collect();
    let properties: Map<String, Value> =
        properties.iter().map(|(name, schema)| ((*name).to_owned(), schema.clone())).collect();
    described(json!({ "type": "object", "required": required, "properties": properties }), description)
}

/// The error answers an operation can give beyond the ones every authenticated call has.
#[derive(Clone, Copy)]
enum Fails {
    /// 400: a body, query or field is invalid.
    Validation,
    /// 404: an unknown id (or another tenant's).
    NotFound,
    /// 413 and 415: the operation reads a JSON body.
    Body,
    /// 429: the tenant's `maxWebhooks` limit.
    Limit,
    /// 422: a client idempotency id reused for a different event.
    Conflict,
}

impl Fails {
    /// The (status, component response) pairs this failure adds.
    fn responses(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Fails::Validation => &[("400", "ValidationFailed")],
            Fails::NotFound => &[("404", "NotFound")],
            Fails::Body => &[("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType")],
            Fails::Limit => &[("429", "LimitExceeded")],
            Fails::Conflict => &[("422", "IdempotencyConflict")],
        }
    }
}

/// Which tenant gate an operation sits behind, as in `request::Gate`.
#[derive(Clone, Copy, PartialEq)]
enum Gated {
    /// `/v1/webhooks…`: 403 for a missing scope or a tenant with webhooks off.
    Webhooks,
    /// `/v1/events…`: 403 only for a missing scope.
    Events,
}

/// An operation behind a bearer key: adds the security requirement, the scope (in the
/// description and as `x-required-scopes`) and every error response it can give.
fn authenticated(scope: Scope, gate: Gated, fails: &[Fails], mut operation: Value) -> Value {
    let scope = scope.as_str();
    let object = operation.as_object_mut().expect("an operation is an object");
    object.insert("security".into(), json!([{ "bearerAuth": [] }]));
    object.insert("x-required-scopes".into(), json!([scope]));
    let description = object.get("description").and_then(Value::as_str).unwrap_or_default();
    let description = format!("{description}\n\nRequires an API key with the `{scope}` scope.");
    object.insert("description".into(), Value::String(description.trim_start().to_owned()));

    let forbidden = if gate == Gated::Webhooks { "Forbidden" } else { "InsufficientScope" };
    let always = [("401", "Unauthorized"), ("403", forbidden), ("503", "Unavailable")];
    let responses = object["responses"].as_object_mut().expect("an operation has responses");
    for (status, name) in fails.iter().flat_map(|fail| fail.responses()).chain(&always) {
        responses.insert((*status).to_owned(), response_ref(name));
    }
    sort_responses(responses);
    operation
}

/// Orders responses by status code so the document reads top to bottom.
fn sort_responses(responses: &mut Map<String, Value>) {
    let mut entries: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
    entries.sort_by(|(a, _), (b, _)| a.cmp(b));
    responses.extend(entries);
}

/// An operational endpoint: no key needed.
fn open(mut operation: Value) -> Value {
    operation["security"] = json!([]);
    operation
}

// ---------------------------------------------------------------------------------------------
// Paths, one entry per route of `ROUTES`.

fn paths() -> Value {
    use Fails::*;
    let read =
        |fails: &[Fails], operation| authenticated(Scope::WebhooksRead, Gated::Webhooks, fails, operation);
    let write =
        |fails: &[Fails], operation| authenticated(Scope::WebhooksWrite, Gated::Webhooks, fails, operation);
    let publish =
        |fails: &[Fails], operation| authenticated(Scope::EventsWrite, Gated::Events, fails, operation);
    let id = || parameter_ref("SubscriptionId");
    let delivery_id = || parameter_ref("DeliveryId");
    json!({
        "/v1/webhooks": {
            "post": write(&[Validation, Body, Limit], json!({
                "operationId": "createWebhook",
                "tags": ["webhooks"],
                "summary": "Create a subscription",
                "description": "Answers the full subscription plus its signing `secret`. The secret \
                    is never shown again; rotate it if it is lost.",
                "requestBody": json_body(schema_ref("CreateSubscription")),
                "responses": { "201": json_response("Created; the only answer that carries the secret",
                    schema_ref("SubscriptionWithSecret")) },
            })),
            "get": read(&[Validation], json!({
                "operationId": "listWebhooks",
                "tags": ["webhooks"],
                "summary": "List subscriptions, newest first",
                "parameters": [parameter_ref("Limit"), parameter_ref("WebhookCursor")],
                "responses": {
                    "200": json_response("One page of subscriptions", schema_ref("SubscriptionList")),
                },
            })),
        },
        "/v1/webhooks/{id}": {
            "parameters": [id()],
            "get": read(&[NotFound], json!({
                "operationId": "getWebhook",
                "tags": ["webhooks"],
                "summary": "Get one subscription",
                "description": "Full details, custom headers and retry settings included; never the secret.",
                "responses": { "200": json_response("The subscription", schema_ref("Subscription")) },
            })),
            "patch": write(&[Validation, NotFound, Body], json!({
                "operationId": "updateWebhook",
                "tags": ["webhooks"],
                "summary": "Update a subscription",
                "description": "Changes only the fields given; every field is validated before \
                    anything changes. `isActive: true` re-enables a disabled subscription (clears \
                    `disableReason` and `disabledAt`, resets `consecutiveFailures`, releases held \
                    deliveries); `isActive: false` disables it by hand.",
                "requestBody": json_body(schema_ref("UpdateSubscription")),
                "responses": { "200": json_response("The updated subscription", schema_ref("Subscription")) },
            })),
            "delete": write(&[NotFound], json!({
                "operationId": "deleteWebhook",
                "tags": ["webhooks"],
                "summary": "Delete a subscription",
                "description": "Permanent; its queued deliveries are dropped.",
                "responses": { "204": { "description": "Deleted" } },
            })),
        },
        "/v1/webhooks/{id}/rotate-secret": {
            "parameters": [id()],
            "post": write(&[Validation, NotFound, Body], json!({
                "operationId": "rotateWebhookSecret",
                "tags": ["webhooks"],
                "summary": "Rotate the signing secret",
                "description": "From now on every attempt, retries of older events included, is \
                    signed with the new secret. With `graceSeconds` the old secret stays valid that \
                    long: `webhook-signature` then carries both signatures, while \
                    `X-Atender-Signature` uses the new secret. The body is optional.",
                "requestBody": {
                    "required": false,
                    "content": { "application/json": { "schema": schema_ref("RotateSecret") } },
                },
                "responses": { "200": json_response("The new secret", schema_ref("RotateResult")) },
            })),
        },
        "/v1/webhooks/{id}/deliveries": {
            "parameters": [id()],
            "get": read(&[Validation, NotFound], json!({
                "operationId": "listDeliveries",
                "tags": ["deliveries"],
                "summary": "List a subscription's deliveries, newest first",
                "description": "Finished records are purged after the configured \
                    `delivery_retention` (default 7 days).",
                "parameters": [
                    parameter_ref("DeliveryStatus"),
                    parameter_ref("Limit"),
                    parameter_ref("DeliveryCursor"),
                ],
                "responses": { "200": json_response("One page of deliveries", schema_ref("DeliveryList")) },
            })),
        },
        "/v1/webhooks/{id}/deliveries/{deliveryId}": {
            "parameters": [id(), delivery_id()],
            "get": read(&[NotFound], json!({
                "operationId": "getDelivery",
                "tags": ["deliveries"],
                "summary": "Get one delivery with its payload",
                "responses": { "200": json_response("The delivery, with `payload`", schema_ref("Delivery")) },
            })),
        },
        "/v1/webhooks/{id}/deliveries/{deliveryId}/redeliver": {
            "parameters": [id(), delivery_id()],
            "post": write(&[NotFound], json!({
                "operationId": "redeliverDelivery",
                "tags": ["deliveries"],
                "summary": "Queue a delivery again",
                "description": "Starts a fresh round of attempts with the same delivery id and \
                    body; held again if the subscription is paused or disabled. Takes no body.",
                "responses": { "202": json_response("Queued again", schema_ref("Delivery")) },
            })),
        },
        "/v1/events": {
            "post": publish(&[Validation, Body, Conflict], json!({
                "operationId": "publishEvent",
                "tags": ["events"],
                "summary": "Publish an event",
                "description": "Answered once the event and one delivery per matching subscription \
                    of the tenant are on disk; a paused or disabled subscription gets its delivery \
                    as `held`. Repeating an `id` within 24 hours with the same event type and data \
                    answers the first result and creates nothing; with another type or data it is \
                    refused with 422 `idempotency_conflict`. A tenant with webhooks turned off gets `deliveries: 0`.",
                "requestBody": json_body(schema_ref("PublishEvent")),
                "responses": { "202": json_response("Accepted and stored", schema_ref("PublishResult")) },
            })),
        },
        "/v1/events/batch": {
            "post": publish(&[Validation, Body, Conflict], json!({
                "operationId": "publishEventBatch",
                "tags": ["events"],
                "summary": "Publish several events at once",
                "description": "All or nothing: one invalid event refuses the whole batch (the \
                    message names it, as in `events[3].event`). Answers one result per event, in \
                    the order given.",
                "requestBody": json_body(schema_ref("PublishBatch")),
                "responses": { "202": json_response("Accepted and stored", schema_ref("BatchResult")) },
            })),
        },
        "/v1/openapi.json": {
            "get": open(json!({
                "operationId": "getOpenApi",
                "tags": ["operations"],
                "summary": "This OpenAPI document",
                "responses": { "200": json_response("The OpenAPI 3.1 document",
                    json!({ "type": "object", "additionalProperties": true })) },
            })),
        },
        "/healthz": {
            "get": open(json!({
                "operationId": "getHealth",
                "tags": ["operations"],
                "summary": "Liveness: every internal thread alive and making progress",
                "responses": {
                    "200": json_response("Alive", schema_ref("Health")),
                    "503": json_response("A thread exited or is stuck, or storage failed for good; \
                        `problems` says which", schema_ref("Health")),
                },
            })),
        },
        "/readyz": {
            "get": open(json!({
                "operationId": "getReadiness",
                "tags": ["operations"],
                "summary": "Readiness: storage answers, delivery workers run, not shutting down",
                "responses": {
                    "200": json_response("Ready", schema_ref("Readiness")),
                    "503": json_response("Not ready; the body says which part is not",
                        schema_ref("Readiness")),
                },
            })),
        },
        "/metrics": {
            "get": open(json!({
                "operationId": "getMetrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "description": "Events published, attempts by result and in flight, attempt latency, \
                    queued deliveries by state, disabled subscriptions, storage flushes and \
                    durable writes.",
                "responses": { "200": {
                    "description": "OpenMetrics text format 1.0.0 (Prometheus scrapes it as is)",
                    "content": { "application/openmetrics-text; version=1.0.0; charset=utf-8": {
                        "schema": { "type": "string" } } },
                } },
            })),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Components: parameters, schemas, error responses and the security scheme.

fn components() -> Value {
    json!({
        "securitySchemes": { "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sa_live_ followed by at least 32 base62 characters",
            "description": "A tenant API key from the config file (`atender-webhooks keygen` \
                prints one). Each key carries scopes: `webhooks:read` for the GET endpoints under \
                /v1/webhooks, `webhooks:write` for every other /v1/webhooks endpoint, \
                `events:write` for /v1/events. Each operation names its scope in \
                `x-required-scopes`. A key only ever sees its own tenant's data.",
        } },
        "parameters": parameters(),
        "schemas": schemas(),
        "responses": error_responses(),
    })
}

fn parameters() -> Value {
    let path_id = |name: &str, prefix: &str, what: &str| {
        json!({
            "name": name,
            "in": "path",
            "required": true,
            "description": format!("The {what} id (`{prefix}…`). Unknown ids, malformed ids and \
                other tenants' ids are all answered 404."),
            "schema": { "type": "string", "example": format!("{prefix}01JTZ4W8K9RZ3M5Q2X7V6B1N0C") },
        })
    };
    let cursor = |prefix: &str| {
        json!({
            "name": "cursor",
            "in": "query",
            "required": false,
            "description": "The `nextCursor` of the previous page; anything else is refused with 400.",
            "schema": id_schema(prefix, "A cursor this API returned"),
        })
    };
    json!({
        "SubscriptionId": path_id("id", "wh_", "subscription"),
        "DeliveryId": path_id("deliveryId", "dlv_", "delivery"),
        "Limit": {
            "name": "limit",
            "in": "query",
            "required": false,
            "description": "Page size.",
            "schema": { "type": "integer", "minimum": 1, "maximum": 100, "default": 50 },
        },
        "WebhookCursor": cursor("wh_"),
        "DeliveryCursor": cursor("dlv_"),
        "DeliveryStatus": {
            "name": "status",
            "in": "query",
            "required": false,
            "description": "Only deliveries in this state.",
            "schema": schema_ref("DeliveryState"),
        },
    })
}

const EVENT_TYPE_DESCRIPTION: &str = "An event type from the configured catalogue (`[events] types`); \
the default catalogue is message.received, message.sent, conversation.created, \
conversation.resolved, sla.breached. Unknown types are refused with 400.";

fn event_type() -> Value {
    json!({ "type": "string", "description": EVENT_TYPE_DESCRIPTION, "example": "message.received" })
}

fn schemas() -> Value {
    json!({
        "Subscription": subscription(),
        "SubscriptionWithSecret": {
            "description": "A subscription as answered by create: with its signing secret, once.",
            "allOf": [
                schema_ref("Subscription"),
                object("", &[("secret", schema_ref("Secret"))]),
            ],
        },
        "SubscriptionList": object("One page of subscriptions, newest first", &[
            ("data", json!({ "type": "array", "items": schema_ref("Subscription") })),
            ("nextCursor", json!({
                "type": "string",
                "nullable": true,
                "description": "Pass as `cursor` for the next page; null on the last page.",
            })),
        ]),
        "CreateSubscription": subscription_input(true),
        "UpdateSubscription": subscription_input(false),
        "RotateSecret": {
            "type": "object",
            "additionalProperties": false,
            "properties": { "graceSeconds": {
                "type": "integer",
                "minimum": 0,
                "maximum": 86_400,
                "default": 0,
                "description": "How long the old secret keeps verifying (in `webhook-signature`).",
            } },
        },
        "RotateResult": object("The new signing secret", &[
            ("id", id_schema("wh_", "The subscription id")),
            ("secret", schema_ref("Secret")),
        ]),
        "Secret": {
            "type": "string",
            "pattern": "^whsec_[A-Za-z0-9+/]{43}=$",
            "description": "`whsec_` + standard base64 of 32 random bytes. Sign with the whole \
                string (prefix included) as the HMAC key for `X-Atender-Signature`; with the \
                base64-decoded part for the Standard Webhooks `webhook-signature`.",
        },
        "PublishEvent": {
            "type": "object",
            "additionalProperties": false,
            "required": ["event"],
            "properties": {
                "event": event_type(),
                "data": {
                    "type": "object",
                    "additionalProperties": true,
                    "description": "Delivered byte for byte as the payload's `data`; absent means \
                        {} (null is refused).",
                },
                "id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[\\x21-\\x7E]+$",
                    "description": "Your idempotency key: printable ASCII, no spaces. Repeating it \
                        within 24 hours (counted from its first acceptance) with the same event \
                        type and data answers the first result and creates nothing; with other \
                        ones it is a 422 `idempotency_conflict`.",
                },
            },
        },
        "PublishBatch": {
            "type": "object",
            "additionalProperties": false,
            "required": ["events"],
            "properties": { "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH,
                "items": schema_ref("PublishEvent"),
            } },
        },
        "PublishResult": object("An accepted event", &[
            ("id", id_schema("evt_", "The event id (the first one, for a repeated idempotency key)")),
            ("deliveries", json!({
                "type": "integer",
                "minimum": 0,
                "description": "Deliveries created: one per subscription whose events include the type.",
            })),
        ]),
        "BatchResult": object("One result per event, in the order given", &[
            ("data", json!({ "type": "array", "items": schema_ref("PublishResult") })),
        ]),
        "DeliveryState": {
            "type": "string",
            "enum": ["pending", "held", "succeeded", "failed", "expired"],
            "description": "pending: queued or being retried; held: kept while the subscription \
                is paused or disabled; succeeded; failed: retries exhausted; expired: held longer \
                than `hold_retention`.",
        },
        "Attempt": object("One HTTP attempt", &[
            ("at", timestamp("When the attempt started", false)),
            ("durationMs", json!({ "type": "integer", "minimum": 0 })),
            ("responseCode", json!({
                "type": "integer",
                "nullable": true,
                "description": "The receiver's status; null when no answer came.",
            })),
            ("error", json!({
                "type": "string",
                "nullable": true,
                "description": "Why the attempt failed; null on success.",
            })),
        ]),
        "Delivery": delivery(),
        "DeliveryList": object("One page of deliveries, newest first", &[
            ("data", json!({ "type": "array", "items": schema_ref("Delivery") })),
            ("nextCursor", json!({
                "type": "string",
                "nullable": true,
                "description": "Pass as `cursor` for the next page; null on the last page.",
            })),
        ]),
        "DeliveryPayload": object("The body POSTed to the receiver, the same bytes on every attempt", &[
            ("id", id_schema("evt_", "The event id")),
            ("event", event_type()),
            ("tenantId", json!({ "type": "string" })),
            ("timestamp", timestamp("When the event was published", false)),
            ("data", json!({ "type": "object", "additionalProperties": true })),
        ]),
        "Error": error_schema(),
        "Health": {
            "type": "object",
            "description": "Liveness",
            "required": ["status"],
            "properties": {
                "status": { "type": "string", "enum": ["ok", "failing"] },
                "problems": { "type": "array", "items": { "type": "string" } },
            },
        },
        "Readiness": object("Readiness and its parts", &[
            ("status", json!({ "type": "string", "enum": ["ready", "not_ready"] })),
            ("storage", json!({ "type": "string",
                "enum": ["ok", "low_space", "read_only", "stalled", "failed"] })),
            ("storageReason", json!({ "type": "string", "nullable": true,
                "description": "Why storage refuses writes, in words; null when it takes them" })),
            ("delivery", json!({ "type": "string", "enum": ["running", "paused", "stopped"],
                "description": "paused: attempts wait while storage cannot record their outcomes" })),
            ("shuttingDown", json!({ "type": "boolean" })),
        ]),
    })
}

/// The subscription as `webhooks::SubscriptionView` serializes it.
fn subscription() -> Value {
    let nullable_string =
        |description: &str| json!({ "type": "string", "nullable": true, "description": description });
    object(
        "A webhook subscription; the secret is never part of it",
        &[
            ("id", id_schema("wh_", "The subscription id")),
            ("name", json!({ "type": "string" })),
            ("url", json!({ "type": "string", "format": "uri" })),
            ("events", json!({ "type": "array", "items": event_type() })),
            (
                "headers",
                json!({
                    "type": "object",
                    "additionalProperties": { "type": "string" },
                    "description": "Custom headers added to every delivery, in the order given",
                }),
            ),
            ("maxRetries", json!({ "type": "integer", "minimum": 0, "maximum": 20 })),
            ("retryDelaySeconds", json!({ "type": "integer", "minimum": 1, "maximum": 86_400 })),
            (
                "isActive",
                json!({
                    "type": "boolean",
                    "description": "false once disabled, by hand or after failures",
                }),
            ),
            ("isPaused", json!({ "type": "boolean" })),
            (
                "disableReason",
                nullable_string(
                    "Why the subscription is disabled, e.g. \"too many consecutive failures: 6 attempts \
             failed, last: HTTP 503\"",
                ),
            ),
            ("disabledAt", timestamp("When it was disabled", true)),
            (
                "consecutiveFailures",
                json!({
                    "type": "integer",
                    "minimum": 0,
                    "description": "Failed attempts since the last success",
                }),
            ),
            ("lastDeliveryAt", timestamp("When the most recent attempt was made", true)),
            (
                "lastDeliveryStatus",
                json!({
                    "type": "string",
                    "nullable": true,
                    "enum": ["succeeded", "failed", null],
                }),
            ),
            ("lastDeliveryResponseCode", json!({ "type": "integer", "nullable": true })),
            ("lastDeliveryError", nullable_string("Why the most recent attempt failed")),
            ("createdAt", timestamp("", false)),
            ("updatedAt", timestamp("", false)),
        ],
    )
}

/// The body of create (`webhooks::CreateBody`, `required`) or update (`webhooks::PatchBody`).
fn subscription_input(create: bool) -> Value {
    let with_default = |mut schema: Value, default: Value| {
        if create {
            schema["default"] = default;
        }
        schema
    };
    let mut schema = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "name": { "type": "string", "minLength": 1, "maxLength": 100, "pattern": NAME_PATTERN,
                "description": "No control characters, and at least one visible character (not \
                    only spaces or invisible characters such as U+200B)" },
            "url": { "type": "string", "format": "uri",
                "description": "https (http only when the config allows it). Loopback, private, \
                    link-local, CGNAT, multicast and unspecified addresses are refused unless the \
                    config allows them; names are checked again at connect time." },
            "events": { "type": "array", "minItems": 1, "maxItems": 50, "uniqueItems": true,
                "items": event_type() },
            "headers": { "type": "object", "maxProperties": 20,
                "propertyNames": { "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$" },
                "additionalProperties": { "type": "string", "maxLength": 4096,
                    "pattern": "^([\\x21-\\x7E]([\\x20-\\x7E]*[\\x21-\\x7E])?)?$" },
                "description": "Custom headers for every delivery: valid header names, string \
                    values without control characters. Headers the daemon sets itself (Host, \
                    Content-Type, User-Agent, X-Atender-*, webhook-*, …) cannot be given." },
            "maxRetries": with_default(json!({ "type": "integer", "minimum": 0, "maximum": 20 }), json!(5)),
            "retryDelaySeconds": with_default(
                json!({ "type": "integer", "minimum": 1, "maximum": 86_400,
                    "description": "Retry k waits retryDelaySeconds × 2^(k−1), capped by the \
                        config's max_retry_delay, plus up to 10% jitter" }),
                json!(30)),
            "isActive": with_default(json!({ "type": "boolean" }), json!(true)),
            "isPaused": with_default(json!({ "type": "boolean" }), json!(false)),
        },
    });
    if create {
        schema["required"] = json!(["name", "url", "events"]);
        schema["example"] = json!({
            "name": "production-listener",
            "url": "https://your-server.example.com/atender-webhooks",
            "events": ["message.received", "message.sent", "conversation.resolved"],
        });
    } else {
        schema["description"] = json!("Only the fields given change");
        schema["example"] = json!({ "isPaused": true });
    }
    schema
}

/// The delivery as `deliveries::DeliveryView` serializes it.
fn delivery() -> Value {
    let mut schema = object(
        "One event on its way to one subscription",
        &[
            (
                "id",
                id_schema(
                    "dlv_",
                    "The delivery id; sent as X-Atender-Delivery and webhook-id, stable across retries",
                ),
            ),
            ("subscriptionId", id_schema("wh_", "The subscription id")),
            ("eventId", id_schema("evt_", "The event id")),
            ("event", event_type()),
            ("status", schema_ref("DeliveryState")),
            (
                "attempts",
                json!({
                    "type": "array",
                    "items": schema_ref("Attempt"),
                    "description": "Oldest first; at most the last 50 are kept",
                }),
            ),
            ("nextAttemptAt", timestamp("When the next attempt is due, while pending", true)),
            ("createdAt", timestamp("", false)),
        ],
    );
    schema["properties"]["payload"] = json!({
        "allOf": [schema_ref("DeliveryPayload")],
        "description": "Only in the answer of getDelivery: the body as delivered",
    });
    schema
}

/// Every code the API answers with.
/// A subscription name: no control character (Unicode Cc), and at least one character that is
/// neither whitespace nor invisible (the same sets as `webhooks::validate_name`).
const NAME_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*\
[^\\s\\u0000-\\u001f\\u007f-\\u009f\\u00a0\\u00ad\\u034f\\u061c\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\
\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u2800\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufffb]\
[^\\u0000-\\u001f\\u007f-\\u009f]*$";

const ERROR_CODES: [&str; 11] = [
    "validation_failed",
    "unauthorized",
    "insufficient_scope",
    "webhooks_disabled",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "limit_exceeded",
    "idempotency_conflict",
    "unavailable",
];

fn error_schema() -> Value {
    object(
        "Every error the API answers",
        &[(
            "error",
            object(
                "",
                &[
                    ("code", json!({ "type": "string", "enum": ERROR_CODES })),
                    (
                        "message",
                        json!({
                            "type": "string",
                            "description": "A human sentence naming the field or scope concerned; never \
                        internal detail",
                        }),
                    ),
                ],
            ),
        )],
    )
}

fn error_responses() -> Value {
    let mut unauthorized = error_response(
        "Missing, malformed or unknown bearer key (`unauthorized`)",
        "unauthorized",
        "unknown API key",
    );
    unauthorized["headers"] = json!({ "WWW-Authenticate": {
        "description": "Always `Bearer`",
        "schema": { "type": "string", "enum": ["Bearer"] },
    } });
    json!({
        "ValidationFailed": error_response(
            "Bad JSON, a wrong type, an unknown field or query parameter, or an invalid value; the \
             message names the field (`validation_failed`)",
            "validation_failed",
            "maxRetries must be between 0 and 20",
        ),
        "Unauthorized": unauthorized,
        "Forbidden": error_response(
            "The key lacks the scope (`insufficient_scope`), or the tenant has webhooks turned \
             off (`webhooks_disabled`); the code and message say which",
            "insufficient_scope",
            "this API key lacks the webhooks:write scope",
        ),
        "InsufficientScope": error_response(
            "The key lacks the scope (`insufficient_scope`)",
            "insufficient_scope",
            "this API key lacks the events:write scope",
        ),
        "NotFound": error_response(
            "No such id for this tenant; another tenant's id is answered the same (`not_found`)",
            "not_found",
            "subscription not found",
        ),
        "MethodNotAllowed": error_response(
            "The path exists but not with this method (`method_not_allowed`); any method not \
             listed for a path is answered this way",
            "method_not_allowed",
            "this endpoint does not accept that method",
        ),
        "PayloadTooLarge": error_response(
            "The body is larger than the configured limit: `api.max_subscription_body_bytes` \
             (default 64 KiB) for /v1/webhooks, `api.max_event_body_bytes` (default 1 MiB) for \
             /v1/events (`payload_too_large`)",
            "payload_too_large",
            "request body is larger than the limit of 65536 bytes",
        ),
        "UnsupportedMediaType": error_response(
            "A body not sent as `Content-Type: application/json` (`unsupported_media_type`)",
            "unsupported_media_type",
            "request body must be JSON sent with Content-Type: application/json",
        ),
        "LimitExceeded": error_response(
            "The tenant has reached its `maxWebhooks` limit (`limit_exceeded`)",
            "limit_exceeded",
            "the tenant has reached its maxWebhooks limit; delete a subscription or ask for a higher limit",
        ),
        "IdempotencyConflict": error_response(
            "The `id` was used within 24 h for another event type or data (`idempotency_conflict`); \
             nothing was stored",
            "idempotency_conflict",
            "id \"order-42\" was already used within the last 24 h for a different event (another event type or data); nothing was stored; send a new id for a new event",
        ),
        "Unavailable": error_response(
            "Storage is low on space, read-only, failing, or the daemon is shutting down; nothing \
             was stored; retry shortly (`unavailable`)",
            "unavailable",
            "storage is unavailable; retry shortly",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ROUTES;

    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    /// Every (method, path, operation) of the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths is an object") {
            for (key, operation) in item.as_object().expect("a path item is an object") {
                if METHODS.contains(&key.as_str()) {
                    found.push((key.clone(), path.clone(), operation.clone()));
                }
            }
        }
        found
    }

    fn collect_refs(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    refs.push(target.clone());
                }
                map.values().for_each(|child| collect_refs(child, refs));
            }
            Value::Array(items) => items.iter().for_each(|child| collect_refs(child, refs)),
            _ => {}
        }
    }

    #[test]
    fn is_openapi_3() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().is_some_and(|version| version.starts_with("3.")),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    }

    #[test]
    fn documents_every_route() {
        let doc = document();
        for (method, path) in ROUTES {
            let operation = &doc["paths"][path][method.to_ascii_lowercase()];
            assert!(operation.is_object(), "{method} {path} is in ROUTES but not in the document");
        }
    }

    #[test]
    fn documents_nothing_but_the_routes() {
        for (method, path, _) in operations(&document()) {
            let served = ROUTES.iter().any(|(m, p)| m.eq_ignore_ascii_case(&method) && *p == path);
            assert!(served, "{method} {path} is documented but not in ROUTES");
        }
    }

    #[test]
    fn every_operation_is_named_and_answers() {
        let mut ids = Vec::new();
        for (method, path, operation) in operations(&document()) {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(!ids.contains(&id.to_owned()), "operationId {id} is used twice");
            ids.push(id.to_owned());
            assert!(operation["summary"].is_string(), "{method} {path}: no summary");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}: no 2xx");
        }
    }

    #[test]
    fn every_path_parameter_is_declared() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let declared: Vec<String> = item["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|parameter| {
                    let pointer = parameter["$ref"].as_str().expect("path parameters are refs");
                    doc.pointer(&pointer[1..]).expect("resolves")["name"].as_str().unwrap().to_owned()
                })
                .collect();
            let templated: Vec<&str> =
                path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}')).collect();
            assert_eq!(declared, templated, "{path}: path parameters declared vs in the template");
        }
    }

    #[test]
    fn every_ref_resolves_within_components() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            assert!(target.starts_with("#/components/"), "{target} points outside components");
            assert!(doc.pointer(&target[1..]).is_some(), "{target} does not resolve");
        }
    }
}
