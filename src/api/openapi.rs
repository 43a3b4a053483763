//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`, generated, never written by hand:
//! the paths from the `#[utoipa::path]` of every handler in [`ROUTES`], the schemas from
//! `#[derive(ToSchema)]` on the serde types the handlers read and answer. This file adds what a
//! generator cannot know: the limits the validation code enforces (from its own constants),
//! the event-type catalogue of the running config ([`document_for`]), the bearer-key scheme
//! with each operation's scope, and the error answers with their codes.
//!
//! [`ROUTES`]: crate::api::ROUTES

use std::borrow::Cow;

use serde_json::{json, Value};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, Array, ArrayBuilder, ComponentsBuilder, Object, ObjectBuilder,
    Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
    ResponseBuilder, ServerBuilder,
};
use utoipa::{IntoParams, PartialSchema, ToResponse, ToSchema};

use crate::api::error::{ErrorBody, ERROR_CODES};
use crate::api::events::{DeliveryPayload, CLIENT_ID_BYTES, MAX_BATCH};
use crate::api::request::Gate;
use crate::api::request::{DEFAULT_PAGE_LIMIT, PAGE_LIMIT};
use crate::api::routes::{Access, ROUTES};
use crate::api::webhooks::{
    DEFAULT_MAX_RETRIES, DEFAULT_RETRY_DELAY_SECONDS, EVENTS_PER_SUBSCRIPTION, GRACE_SECONDS,
    HEADER_NAME_BYTES, HEADER_NAME_SYMBOLS, HEADER_VALUE_BYTES, MAX_HEADERS, MAX_RETRIES, NAME_CHARS,
    RATE_LIMIT_PER_SECOND, RETRY_DELAY_SECONDS,
};
use crate::model::{DeliveryId, DeliveryState, EventId, LastDeliveryStatus, SubscriptionId};

/// The document served by a daemon whose configured catalogue is `event_types`: the
/// `EventType` schema, which every event-type field refers to, lists them and the operational
/// types the daemon sends itself (`catalogue::OPERATIONAL`) as its `enum`; the
/// `PublishableEventType` schema of a publish body's `event` lists only the configured ones. So
/// a generated request (schemathesis) or a client generator knows which values are accepted.
pub fn document_for(event_types: &[String]) -> Value {
    let mut document = serde_json::to_value(document()).expect("an OpenAPI document serializes");
    let operational = crate::catalogue::OPERATIONAL.iter().map(|known| known.name.to_owned());
    let subscribable: Vec<String> = event_types.iter().cloned().chain(operational).collect();
    document["components"]["schemas"][EventType::name().as_ref()]["enum"] = json!(subscribable);
    document["components"]["schemas"][PublishableEventType::name().as_ref()]["enum"] = json!(event_types);
    refuse_reserved_header_names(&mut document);
    document
}

/// Adds `not` (which utoipa 5 cannot express) to every custom-header `propertyNames`: the names
/// the daemon sets itself (`webhooks::RESERVED_HEADERS`, `RESERVED_HEADER_PREFIXES`), in any
/// case, are refused by validation, so the document says so.
fn refuse_reserved_header_names(value: &mut Value) {
    use crate::api::webhooks::{RESERVED_HEADERS, RESERVED_HEADER_PREFIXES};
    let any_case = |name: &str| -> String {
        name.chars()
            .map(|c| match c.is_ascii_alphabetic() {
                true => format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()),
                false => regex_escape(c),
            })
            .collect()
    };
    let names: Vec<String> = RESERVED_HEADERS.iter().map(|name| any_case(name)).collect();
    let prefixes: Vec<String> = RESERVED_HEADER_PREFIXES.iter().map(|prefix| any_case(prefix)).collect();
    let reserved = format!("^(({})$|({}))", names.join("|"), prefixes.join("|"));
    match value {
        Value::Object(object) => {
            // The custom-header maps are the objects with both a name rule and a size limit.
            let headers = object.contains_key("maxProperties");
            if let Some(Value::Object(names)) = object.get_mut("propertyNames").filter(|_| headers) {
                names.insert("not".into(), json!({ "pattern": reserved }));
            }
            object.values_mut().for_each(refuse_reserved_header_names);
        }
        Value::Array(items) => items.iter_mut().for_each(refuse_reserved_header_names),
        _ => {}
    }
}

fn regex_escape(c: char) -> String {
    match c {
        '.' | '-' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | '\\' => {
            format!("\\{c}")
        }
        _ => c.to_string(),
    }
}

/// The whole document, without the catalogue's `enum` (see [`document_for`]).
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut components = ComponentsBuilder::new()
        .security_scheme(BEARER_AUTH, bearer_auth())
        .schema_from::<EventType>()
        .schema_from::<PublishableEventType>()
        .schema_from::<DeliveryStateSchema>()
        .schema_from::<Secret>()
        .schema_from::<DeliveryPayload>()
        .schema_from::<ErrorBody>();
    let mut schemas = Vec::new();
    DeliveryPayload::schemas(&mut schemas);
    ErrorBody::schemas(&mut schemas);
    for (name, response) in ErrorAnswer::ALL.map(ErrorAnswer::component) {
        components = components.response(name, response);
    }
    for route in ROUTES {
        let mut spec = route.spec();
        apply_access(&mut spec.operation, route.access);
        absent_not_null(&mut spec.operation);
        schemas.extend(spec.schemas);
        let item = utoipa::openapi::path::PathItem::new(spec.method, spec.operation);
        paths = paths.path(spec.path, item);
    }
    let components = components.schemas_from_iter(schemas).build();

    let mut document = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("atender-webhooks")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(INFO_DESCRIPTION))
                .license(Some(LicenseBuilder::new().name("Apache-2.0").build())),
        )
        .servers(Some([ServerBuilder::new().url("/").build()]))
        .security(Some([SecurityRequirement::new(BEARER_AUTH, Vec::<String>::new())]))
        .tags(Some([
            tag("webhooks", "Subscriptions of the calling key's tenant"),
            tag("deliveries", "The delivery log of a subscription, and redelivery"),
            tag("events", "Publishing events (called by the Atender application)"),
            tag(
                "event-types",
                "The event catalogue: the types subscriptions may list, their meaning and data schemas",
            ),
            tag("portal", "Links to the tenant portal, the web page served under /portal/"),
            tag("operations", "Health, readiness, metrics and this document; no key needed"),
        ]))
        .paths(paths)
        .components(Some(components))
        .build();
    document.openapi = utoipa::openapi::OpenApiVersion::Version31;
    document
}

const INFO_DESCRIPTION: &str = "Single-host webhook delivery daemon: tenants manage webhook \
subscriptions, the Atender application publishes events, and the daemon delivers each event to \
every matching subscription, signed, retried with exponential backoff and stored durably: every \
2xx from a write endpoint is answered only once the change is on disk.\n\n\
Every error is `{\"error\": {\"code\", \"message\"}}`. A path no route serves is answered 404 \
`not_found` (\"no such endpoint\"); a served path with another method is answered 405 \
`method_not_allowed`. The list endpoints refuse query parameters they do not know with 400.";

fn tag(name: &str, description: &str) -> utoipa::openapi::tag::Tag {
    TagBuilder::new().name(name).description(Some(description)).build()
}

// ---------------------------------------------------------------------------------------------
// Security: the bearer key, and what each route's `Access` adds to its operation.

const BEARER_AUTH: &str = "bearerAuth";

fn bearer_auth() -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("sa_live_ followed by at least 32 base62 characters")
            .description(Some(
                "A tenant API key from the config file (`atender-webhooks keygen` prints one). Each \
                 key carries scopes: `webhooks:read` for the GET endpoints under /v1/webhooks, \
                 `webhooks:write` for every other /v1/webhooks endpoint, `events:write` for \
                 /v1/events. Each operation names its scope in `x-required-scopes`. A key only \
                 ever sees its own tenant's data.",
            ))
            .build(),
    )
}

/// An operation behind a bearer key gets the security requirement, its scope (in the
/// description and as `x-required-scopes`) and the answers every authenticated call can give
/// (401, 403, 503); an open one an empty security requirement.
fn apply_access(operation: &mut utoipa::openapi::path::Operation, access: Access) {
    let Access::Key(scope, gate) = access else {
        operation.security = Some(Vec::new());
        return;
    };
    let scope = scope.as_str();
    operation.security = Some(vec![SecurityRequirement::new(BEARER_AUTH, Vec::<String>::new())]);
    operation.extensions = Some(ExtensionsBuilder::new().add("x-required-scopes", json!([scope])).build());
    let description = operation.description.take().unwrap_or_default();
    let description = format!("{description}\n\nRequires an API key with the `{scope}` scope.");
    operation.description = Some(description.trim_start().to_owned());
    let forbidden =
        if gate == Gate::Webhooks { ErrorAnswer::Forbidden } else { ErrorAnswer::InsufficientScope };
    for answer in [ErrorAnswer::Unauthorized, forbidden, ErrorAnswer::Unavailable] {
        let (status, reference) = answer.reference();
        operation.responses.responses.insert(status.to_owned(), reference);
    }
}

/// utoipa writes an optional request body (`request_body = Option<T>`) as `oneOf: [null, T]`,
/// not required. Ours is optional by being absent: an empty body. A JSON `null` is refused like
/// any other non-object, so the document states `T`, not required.
fn absent_not_null(operation: &mut utoipa::openapi::path::Operation) {
    let Some(body) = operation.request_body.as_mut() else { return };
    if body.required == Some(Required::True) {
        return;
    }
    body.required = Some(Required::False);
    for content in body.content.values_mut() {
        if let RefOr::T(Schema::OneOf(one_of)) = &content.schema.clone().unwrap_or_default() {
            let is_null = |item: &RefOr<Schema>| matches!(item, RefOr::T(Schema::Object(object)) if object.schema_type == SchemaType::Type(Type::Null));
            if let [only] = &one_of.items.iter().filter(|item| !is_null(item)).collect::<Vec<_>>()[..] {
                content.schema = Some((*only).clone());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Error answers: every one is the `Error` schema with an example of the code and message sent.

/// An error answer the document names as a reusable response (`#/components/responses/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAnswer {
    /// 400 `validation_failed`.
    ValidationFailed,
    /// 401 `unauthorized`, with `WWW-Authenticate: Bearer`.
    Unauthorized,
    /// 403 `insufficient_scope` or `webhooks_disabled` (`/v1/webhooks…`).
    Forbidden,
    /// 403 `insufficient_scope` (`/v1/events…`, which has no tenant gate).
    InsufficientScope,
    /// 404 `not_found`.
    NotFound,
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 413 `payload_too_large`.
    PayloadTooLarge,
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType,
    /// 429 `limit_exceeded`.
    LimitExceeded,
    /// 422 `idempotency_conflict`.
    IdempotencyConflict,
    /// 503 `unavailable`.
    Unavailable,
    /// 429 `test_in_progress` (`POST /v1/webhooks/{id}/test`).
    TestInProgress,
}

impl ErrorAnswer {
    const ALL: [ErrorAnswer; 12] = [
        ErrorAnswer::ValidationFailed,
        ErrorAnswer::Unauthorized,
        ErrorAnswer::Forbidden,
        ErrorAnswer::InsufficientScope,
        ErrorAnswer::NotFound,
        ErrorAnswer::MethodNotAllowed,
        ErrorAnswer::PayloadTooLarge,
        ErrorAnswer::UnsupportedMediaType,
        ErrorAnswer::LimitExceeded,
        ErrorAnswer::IdempotencyConflict,
        ErrorAnswer::Unavailable,
        ErrorAnswer::TestInProgress,
    ];

    /// (component name, status, description, example code, example message).
    fn facts(self) -> (&'static str, &'static str, &'static str, &'static str, &'static str) {
        match self {
            ErrorAnswer::ValidationFailed => (
                "ValidationFailed",
                "400",
                "Bad JSON, a wrong type, an unknown field or query parameter, or an invalid value; the \
                 message names the field (`validation_failed`)",
                "validation_failed",
                "maxRetries must be between 0 and 20",
            ),
            ErrorAnswer::Unauthorized => (
                "Unauthorized",
                "401",
                "Missing, malformed or unknown bearer key (`unauthorized`)",
                "unauthorized",
                "unknown API key",
            ),
            ErrorAnswer::Forbidden => (
                "Forbidden",
                "403",
                "The key lacks the scope (`insufficient_scope`), or the tenant has webhooks turned \
                 off (`webhooks_disabled`); the code and message say which",
                "insufficient_scope",
                "this API key lacks the webhooks:write scope",
            ),
            ErrorAnswer::InsufficientScope => (
                "InsufficientScope",
                "403",
                "The key lacks the scope (`insufficient_scope`)",
                "insufficient_scope",
                "this API key lacks the events:write scope",
            ),
            ErrorAnswer::NotFound => (
                "NotFound",
                "404",
                "No such id for this tenant; another tenant's id is answered the same (`not_found`)",
                "not_found",
                "subscription not found",
            ),
            ErrorAnswer::MethodNotAllowed => (
                "MethodNotAllowed",
                "405",
                "The path exists but not with this method (`method_not_allowed`); any method not \
                 listed for a path is answered this way",
                "method_not_allowed",
                "this endpoint does not accept that method",
            ),
            ErrorAnswer::PayloadTooLarge => (
                "PayloadTooLarge",
                "413",
                "The body is larger than the configured limit: `api.max_subscription_body_bytes` \
                 (default 64 KiB) for /v1/webhooks, `api.max_event_body_bytes` (default 1 MiB) for \
                 /v1/events (`payload_too_large`)",
                "payload_too_large",
                "request body is larger than the limit of 65536 bytes",
            ),
            ErrorAnswer::UnsupportedMediaType => (
                "UnsupportedMediaType",
                "415",
                "A body not sent as `Content-Type: application/json` (`unsupported_media_type`)",
                "unsupported_media_type",
                "request body must be JSON sent with Content-Type: application/json",
            ),
            ErrorAnswer::LimitExceeded => (
                "LimitExceeded",
                "429",
                "The tenant has reached its `maxWebhooks` limit (`limit_exceeded`)",
                "limit_exceeded",
                "the tenant has reached its maxWebhooks limit; delete a subscription or ask for a higher limit",
            ),
            ErrorAnswer::IdempotencyConflict => (
                "IdempotencyConflict",
                "422",
                "The `id` was used within 24 h for another event type or data (`idempotency_conflict`); \
                 nothing was stored",
                "idempotency_conflict",
                "id \"order-42\" was already used within the last 24 h for a different event (another event type or data); nothing was stored; send a new id for a new event",
            ),
            ErrorAnswer::Unavailable => (
                "Unavailable",
                "503",
                "Storage is low on space, read-only, failing, or the daemon is shutting down; nothing \
                 was stored; retry shortly (`unavailable`)",
                "unavailable",
                "storage is unavailable; retry shortly",
            ),
            ErrorAnswer::TestInProgress => (
                "TestInProgress",
                "429",
                "A test send to this subscription is still under way (at most one at a time per \
                 subscription); wait for its answer (`test_in_progress`)",
                "test_in_progress",
                crate::api::test_send::BUSY_MESSAGE,
            ),
        }
    }

    /// The response component: `Error` with an example (and `WWW-Authenticate` for 401).
    fn component(self) -> (&'static str, utoipa::openapi::Response) {
        let (name, _, description, code, message) = self.facts();
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ErrorBody::name())))
            .example(Some(json!({ "error": { "code": code, "message": message } })))
            .build();
        let mut response =
            ResponseBuilder::new().description(description).content("application/json", content);
        if self == ErrorAnswer::Unauthorized {
            let header = utoipa::openapi::HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["Bearer"])))
                .description(Some("Always `Bearer`"))
                .build();
            response = response.header("WWW-Authenticate", header);
        }
        (name, response.build())
    }

    /// (status, `$ref` to the component) for an operation's `responses`.
    fn reference(self) -> (&'static str, RefOr<utoipa::openapi::Response>) {
        let (name, status, ..) = self.facts();
        (status, RefOr::Ref(Ref::from_response_name(name)))
    }
}

/// One unit type per error answer, so `#[utoipa::path(responses((status = 404, response =
/// NotFound)))]` can name it.
macro_rules! error_answers {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("The `", stringify!($name), "` error answer, for `#[utoipa::path]` responses.")]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                let (name, response) = ErrorAnswer::$name.component();
                (name, RefOr::T(response))
            }
        }
    )*};
}

error_answers!(
    ValidationFailed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    LimitExceeded,
    IdempotencyConflict,
    TestInProgress
);

/// The `enum` of the `Error` schema's `code`.
pub(crate) fn error_code() -> Object {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(ERROR_CODES)).build()
}

// ---------------------------------------------------------------------------------------------
// Schemas of values the serde types hold as plain strings.

/// Implements `ToSchema` for a unit type naming a schema component.
macro_rules! component {
    ($(#[$doc:meta])* $type:ident as $name:literal => $schema:expr) => {
        $(#[$doc])*
        pub struct $type;

        impl PartialSchema for $type {
            fn schema() -> RefOr<Schema> {
                RefOr::T(Schema::Object($schema))
            }
        }

        impl ToSchema for $type {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

const EVENT_TYPE_DESCRIPTION: &str = "An event type of the catalogue (GET /v1/event-types): one \
of the configured types (`[events] types`; the default catalogue is message.received, message.sent, \
conversation.created, conversation.resolved, sla.breached) or one the daemon sends itself \
(webhook.disabled, webhook.enabled, delivery.exhausted, webhook.test), which subscriptions may \
list but clients cannot publish. Unknown types are refused with 400.";

const PUBLISHABLE_EVENT_TYPE_DESCRIPTION: &str = "A configured event type (`[events] types`; GET \
/v1/event-types lists them with `operational: false`). The types the daemon sends itself \
(webhook.disabled, webhook.enabled, delivery.exhausted, webhook.test) and unknown types are \
refused with 400.";

component!(
    /// An event type; [`document_for`] adds the running catalogue, operational types included,
    /// as its `enum`.
    EventType as "EventType" => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(EVENT_TYPE_DESCRIPTION))
        .examples(["message.received"])
        .build()
);

component!(
    /// An event type a client may publish; [`document_for`] adds the configured catalogue as
    /// its `enum`.
    PublishableEventType as "PublishableEventType" => ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(PUBLISHABLE_EVENT_TYPE_DESCRIPTION))
        .examples(["message.received"])
        .build()
);

component!(
    /// A delivery's state, as `model::DeliveryState::as_str` writes it.
    DeliveryStateSchema as "DeliveryState" => ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(DeliveryState::ALL.map(DeliveryState::as_str)))
        .description(Some(
            "pending: queued or being retried; held: kept while the subscription is paused or \
             disabled; succeeded; failed: retries exhausted; expired: held longer than `hold_retention`.",
        ))
        .build()
);

component!(
    /// A signing secret, as `model::new_secret` makes it.
    Secret as "Secret" => ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^whsec_[A-Za-z0-9+/]{43}=$"))
        .description(Some(
            "`whsec_` + standard base64 of 32 random bytes. Sign with the whole string (prefix \
             included) as the HMAC key for `X-Atender-Signature`; with the base64-decoded part for \
             the Standard Webhooks `webhook-signature`.",
        ))
        .build()
);

/// The OpenAPI document itself, as `getOpenApi` answers it.
pub struct OpenApiDocument;

impl PartialSchema for OpenApiDocument {
    fn schema() -> RefOr<Schema> {
        json_object("").into()
    }
}

impl ToSchema for OpenApiDocument {}

/// An identifier of one kind: prefix + ULID.
/// `prefix` is the kind's `PREFIX` (`SubscriptionId::PREFIX`, …).
fn id(prefix: &str, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^{prefix}[0-9A-HJKMNP-TV-Z]{{26}}$")))
        .description(Some(description))
        .examples([format!("{prefix}01JTZ4W8K9RZ3M5Q2X7V6B1N0C")])
        .build()
}

/// Any JSON object.
fn json_object(description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .description((!description.is_empty()).then_some(description))
        .build()
}

fn bounded_integer(range: &std::ops::RangeInclusive<u32>, default: Option<u32>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(*range.start()))
        .maximum(Some(*range.end()))
        .default(default.map(Value::from))
}

/// `schema_with` functions for the fields of the API's serde types (`#[schema(schema_with = …)]`),
/// built from the constants their validation uses.
pub mod fields {
    use super::*;

    /// `wh_…`
    pub fn subscription_id() -> Object {
        id(SubscriptionId::PREFIX, "The subscription id")
    }

    /// `evt_…`, as publish answers it.
    pub fn published_event_id() -> Object {
        id(EventId::PREFIX, "The event id (the first one, for a repeated idempotency key)")
    }

    /// `evt_…`
    pub fn event_id() -> Object {
        id(EventId::PREFIX, "The event id")
    }

    /// `dlv_…`
    pub fn delivery_id() -> Object {
        id(
            DeliveryId::PREFIX,
            "The delivery id; sent as X-Atender-Delivery and webhook-id, stable across retries",
        )
    }

    /// A subscription's `name` in a create or update body.
    pub fn name() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(*NAME_CHARS.start()))
            .max_length(Some(*NAME_CHARS.end()))
            .pattern(Some(NAME_PATTERN))
            .description(Some(
                "No control characters, and at least one visible character (not only spaces or \
                 invisible characters such as U+200B)",
            ))
            .build()
    }

    /// A subscription's `url` in a create or update body.
    pub fn url() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("uri".to_owned())))
            .description(Some(
                "https (http only when the config allows it). Loopback, private, link-local, CGNAT, \
                 multicast and unspecified addresses are refused unless the config allows them; names \
                 are checked again at connect time.",
            ))
            .build()
    }

    /// A subscription's `events` in a create or update body.
    pub fn events() -> Array {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(EventType::name()))
            .min_items(Some(*EVENTS_PER_SUBSCRIPTION.start()))
            .max_items(Some(*EVENTS_PER_SUBSCRIPTION.end()))
            .unique_items(true)
            .build()
    }

    /// A subscription's custom `headers` in a create or update body.
    pub fn headers() -> Object {
        let name = format!("^[{}0-9A-Za-z-]{{1,{HEADER_NAME_BYTES}}}$", HEADER_NAME_SYMBOLS.replace('-', ""));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .max_properties(Some(MAX_HEADERS))
            .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(name))))
            .additional_properties(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(HEADER_VALUE_BYTES))
                    .pattern(Some("^([\\x21-\\x7E]([\\x20-\\x7E]*[\\x21-\\x7E])?)?$")),
            ))
            .description(Some(
                "Custom headers for every delivery: valid header names, string values without \
                 control characters. Headers the daemon sets itself (Host, Content-Type, \
                 User-Agent, X-Atender-*, webhook-*, …) cannot be given.",
            ))
            .build()
    }

    /// A subscription's custom headers as answered.
    pub fn header_values() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some("Custom headers added to every delivery, in the order given"))
            .build()
    }

    /// `maxRetries` as answered.
    pub fn max_retries() -> Object {
        bounded_integer(&MAX_RETRIES, None).build()
    }

    /// `maxRetries` in a create body.
    pub fn max_retries_with_default() -> Object {
        bounded_integer(&MAX_RETRIES, Some(DEFAULT_MAX_RETRIES)).build()
    }

    const RETRY_DELAY: &str = "Retry k waits retryDelaySeconds × 2^(k−1), capped by the config's \
        max_retry_delay, plus up to 10% jitter";

    /// `retryDelaySeconds` as answered.
    pub fn retry_delay_seconds() -> Object {
        bounded_integer(&RETRY_DELAY_SECONDS, None).build()
    }

    /// `retryDelaySeconds` in an update body.
    pub fn retry_delay_seconds_input() -> Object {
        bounded_integer(&RETRY_DELAY_SECONDS, None).description(Some(RETRY_DELAY)).build()
    }

    /// `retryDelaySeconds` in a create body.
    pub fn retry_delay_seconds_with_default() -> Object {
        bounded_integer(&RETRY_DELAY_SECONDS, Some(DEFAULT_RETRY_DELAY_SECONDS))
            .description(Some(RETRY_DELAY))
            .build()
    }

    const RATE_LIMIT: &str = "At most this many delivery attempts start per second (first tries, \
        retries and redeliveries alike), evenly spaced 1.01 s / N apart (1 % headroom for network jitter), so no 1-second window holds \
        more than N; queued deliveries wait, none is dropped. Holds across every daemon sharing a \
        database. null: no limit.";

    /// `rateLimitPerSecond` as answered, and in a create body (absent or null: no limit).
    pub fn rate_limit_per_second() -> Object {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
            .minimum(Some(*RATE_LIMIT_PER_SECOND.start()))
            .maximum(Some(*RATE_LIMIT_PER_SECOND.end()))
            .description(Some(RATE_LIMIT))
            .build()
    }

    /// `rateLimitPerSecond` in an update body.
    pub fn rate_limit_per_second_input() -> Object {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
            .minimum(Some(*RATE_LIMIT_PER_SECOND.start()))
            .maximum(Some(*RATE_LIMIT_PER_SECOND.end()))
            .description(Some(format!(
                "{RATE_LIMIT} Absent leaves it as it is; null removes it. A lower limit applies from \
                 the next attempt on."
            )))
            .build()
    }

    /// `graceSeconds` of rotate-secret.
    pub fn grace_seconds() -> Object {
        bounded_integer(&GRACE_SECONDS, Some(*GRACE_SECONDS.start()))
            .description(Some("How long the old secret keeps verifying (in `webhook-signature`)."))
            .build()
    }

    /// `lastDeliveryStatus`.
    pub fn last_delivery_status() -> Object {
        let statuses =
            [LastDeliveryStatus::Succeeded, LastDeliveryStatus::Failed].map(|status| json!(status.as_str()));
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .enum_values(Some(statuses.into_iter().chain([Value::Null])))
            .build()
    }

    /// Any JSON object.
    pub fn any_object() -> Object {
        json_object("")
    }

    /// An event's `data` in a publish body.
    pub fn event_data() -> Object {
        json_object(
            "Delivered byte for byte as the payload's `data`; absent means {} (null is refused). When the \
             catalogue gives the event type a JSON Schema (`schema` in GET /v1/event-types), `data` must \
             satisfy it, or the event is refused with 400 naming the failing JSON Pointer (`data/text`).",
        )
    }

    /// An event type's `schema` in the catalogue: a JSON Schema (an object or a boolean), or null.
    pub fn data_schema() -> Object {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Boolean, Type::Null]))
            .description(Some(
                "The JSON Schema (2020-12 unless its `$schema` says otherwise) a published event's `data` \
                 must satisfy, as the config's schema file holds it; null when there is none",
            ))
            .build()
    }

    /// An event's client `id` (idempotency key) in a publish body.
    pub fn client_id() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(*CLIENT_ID_BYTES.start()))
            .max_length(Some(*CLIENT_ID_BYTES.end()))
            .pattern(Some("^[\\x21-\\x7E]+$"))
            .description(Some(
                "Your idempotency key: printable ASCII, no spaces. Repeating it within 24 hours \
                 (counted from its first acceptance) with the same event type and data answers the \
                 first result and creates nothing; with other ones it is a 422 `idempotency_conflict`.",
            ))
            .build()
    }

    /// The `events` of a batch publish.
    pub fn batch_events() -> Array {
        ArrayBuilder::new()
            .items(Ref::from_schema_name("PublishEvent"))
            .min_items(Some(1))
            .max_items(Some(MAX_BATCH))
            .build()
    }

    /// A delivery's `payload` (only in getDelivery).
    pub fn payload() -> Schema {
        Schema::AllOf(
            AllOfBuilder::new()
                .item(Ref::from_schema_name(DeliveryPayload::name()))
                .description(Some("Only in the answer of getDelivery: the body as delivered"))
                .build(),
        )
    }

    /// `ttlSeconds` of a portal session.
    pub fn ttl_seconds() -> Object {
        use crate::portal::session::{DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS};
        bounded_integer(&(1..=MAX_TTL_SECONDS), Some(DEFAULT_TTL_SECONDS))
            .description(Some("How long the link and the session it starts last, in seconds."))
            .build()
    }

    /// `nextCursor` of a page.
    pub fn next_cursor() -> Object {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .description(Some("Pass as `cursor` for the next page; null on the last page."))
            .build()
    }
}

/// A subscription name: no control character (Unicode Cc), and at least one character that is
/// neither whitespace nor invisible (the same sets as `webhooks::validate_name`).
const NAME_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*\
[^\\s\\u0000-\\u001f\\u007f-\\u009f\\u00a0\\u00ad\\u034f\\u061c\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\
\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u2800\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufffb]\
[^\\u0000-\\u001f\\u007f-\\u009f]*$";

// ---------------------------------------------------------------------------------------------
// Parameters.

fn path_id(name: &str, prefix: &str, what: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(format!(
            "The {what} id (`{prefix}…`). Unknown ids, malformed ids and other tenants' ids are all \
             answered 404."
        )))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .examples([format!("{prefix}01JTZ4W8K9RZ3M5Q2X7V6B1N0C")]),
        ))
        .build()
}

fn query(name: &str, description: &str, schema: impl Into<RefOr<Schema>>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn limit() -> Parameter {
    let schema = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(*PAGE_LIMIT.start()))
        .maximum(Some(*PAGE_LIMIT.end()))
        .default(Some(DEFAULT_PAGE_LIMIT.into()));
    query("limit", "Page size.", schema)
}

fn cursor(prefix: &str) -> Parameter {
    let description = "The `nextCursor` of the previous page; anything else is refused with 400.";
    query("cursor", description, id(prefix, "A cursor this API returned"))
}

/// `{id}`: a subscription.
pub struct SubscriptionPath;

impl IntoParams for SubscriptionPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![path_id("id", SubscriptionId::PREFIX, "subscription")]
    }
}

/// `{id}` and `{deliveryId}`: a subscription's delivery.
pub struct DeliveryPath;

impl IntoParams for DeliveryPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            path_id("id", SubscriptionId::PREFIX, "subscription"),
            path_id("deliveryId", DeliveryId::PREFIX, "delivery"),
        ]
    }
}

/// `?limit=&cursor=` of the subscription list.
pub struct SubscriptionListQuery;

impl IntoParams for SubscriptionListQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![limit(), cursor(SubscriptionId::PREFIX)]
    }
}

/// `?limit=&cursor=` of the event catalogue.
pub struct EventTypeListQuery;

impl IntoParams for EventTypeListQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let description = "The `nextCursor` of the previous page (an event type); anything else is refused \
            with 400.";
        vec![limit(), query("cursor", description, Ref::from_schema_name(EventType::name()))]
    }
}

/// `?status=&limit=&cursor=` of the delivery log.
pub struct DeliveryListQuery;

impl IntoParams for DeliveryListQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            query(
                "status",
                "Only deliveries in this state.",
                Ref::from_schema_name(DeliveryStateSchema::name()),
            ),
            limit(),
            cursor(DeliveryId::PREFIX),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    fn json_document() -> Value {
        document_for(&["message.received".to_owned()])
    }

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
    fn is_openapi_3_1() {
        let doc = json_document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    }

    #[test]
    fn documents_exactly_the_routes() {
        let doc = json_document();
        let documented: Vec<(String, String)> =
            operations(&doc).into_iter().map(|(method, path, _)| (method, path)).collect();
        let routes: Vec<(String, String)> =
            ROUTES.iter().map(|route| (route.method().as_str().to_ascii_lowercase(), route.path())).collect();
        assert_eq!(documented.len(), routes.len(), "{documented:?}");
        for route in &routes {
            assert!(documented.contains(route), "{route:?} is in ROUTES but not in the document");
        }
    }

    #[test]
    fn every_operation_is_named_and_answers() {
        let mut ids = Vec::new();
        for (method, path, operation) in operations(&json_document()) {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(!ids.contains(&id.to_owned()), "operationId {id} is used twice");
            ids.push(id.to_owned());
            assert!(operation["summary"].is_string(), "{method} {path}: no summary");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}: no 2xx");
            assert!(operation["security"].is_array(), "{method} {path}: no security requirement");
        }
    }

    #[test]
    fn every_path_parameter_is_declared() {
        for (method, path, operation) in operations(&json_document()) {
            let declared: Vec<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|parameter| parameter["in"] == "path")
                .map(|parameter| parameter["name"].as_str().unwrap())
                .collect();
            let templated: Vec<&str> =
                path.split('/').filter_map(|part| part.strip_prefix('{')?.strip_suffix('}')).collect();
            assert_eq!(declared, templated, "{method} {path}: path parameters declared vs in the template");
        }
    }

    #[test]
    fn every_ref_resolves_within_components() {
        let doc = json_document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            assert!(target.starts_with("#/components/"), "{target} points outside components");
            assert!(doc.pointer(&target[1..]).is_some(), "{target} does not resolve");
        }
    }

    #[test]
    fn authenticated_operations_name_their_scope_and_errors() {
        for route in ROUTES {
            let doc = json_document();
            let operation = &doc["paths"][route.path()][route.method().as_str().to_ascii_lowercase()];
            match route.access {
                Access::Open => assert_eq!(operation["security"], json!([]), "{}", route.path()),
                Access::Key(scope, _) => {
                    assert_eq!(operation["x-required-scopes"], json!([scope.as_str()]));
                    for status in ["401", "403", "503"] {
                        assert!(operation["responses"][status].is_object(), "{} {status}", route.path());
                    }
                }
            }
        }
    }

    #[test]
    fn the_catalogue_is_the_event_type_enum() {
        let doc = document_for(&["a.b".to_owned(), "c.d".to_owned()]);
        assert_eq!(
            doc["components"]["schemas"]["EventType"]["enum"],
            json!([
                "a.b",
                "c.d",
                "webhook.disabled",
                "webhook.enabled",
                "delivery.exhausted",
                "webhook.test"
            ])
        );
        // A publish body names only what may be published: the configured types.
        assert_eq!(doc["components"]["schemas"]["PublishableEventType"]["enum"], json!(["a.b", "c.d"]));
        let event = &doc["components"]["schemas"]["PublishEvent"]["properties"]["event"];
        assert_eq!(event["$ref"], "#/components/schemas/PublishableEventType");
    }

    #[test]
    fn limits_come_from_the_validation_constants() {
        let doc = json_document();
        let create = &doc["components"]["schemas"]["CreateSubscription"]["properties"];
        assert_eq!(create["maxRetries"]["maximum"], json!(MAX_RETRIES.end()));
        assert_eq!(create["maxRetries"]["default"], json!(DEFAULT_MAX_RETRIES));
        assert_eq!(create["headers"]["propertyNames"]["pattern"], "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$");
        let batch = &doc["components"]["schemas"]["PublishBatch"]["properties"]["events"];
        assert_eq!(batch["maxItems"], json!(MAX_BATCH));
    }
}
