//! `/v1/event-types`: the event catalogue a tenant may subscribe to, as Svix publishes its
//! event types: each type's name, what it means, and the JSON Schema of its `data` when the
//! config gives one. The configured types (`[events]`) come first, in the file's order, then
//! the operational types the daemon sends itself (`catalogue::OPERATIONAL`, `operational:
//! true`: subscribable, never publishable). Read from the config in force; no storage.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::api::error::ApiError;
use crate::api::openapi::{self, fields, EventTypeListQuery, ValidationFailed};
use crate::api::request::{authorize, json_reply, page_limit, parse_query, query_value, Gate};
use crate::api::ApiState;
use crate::catalogue::OPERATIONAL;
use crate::config::{Config, Scope};

/// One entry of the catalogue.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EventTypeInfo, description = "One event type of the catalogue")]
pub struct EventTypeView {
    /// The type, as subscriptions list it and deliveries carry it in `event`
    #[schema(value_type = openapi::EventType)]
    pub name: String,
    /// What the event means; null when the config gives no description
    #[schema(required = true)]
    pub description: Option<String>,
    #[schema(required = true, schema_with = fields::data_schema)]
    pub schema: Option<Value>,
    /// true for the types the daemon sends itself (webhook.disabled, …): subscriptions may
    /// list them, publishing them is refused
    pub operational: bool,
}

/// One page of the catalogue.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = EventTypeList, description = "One page of the event catalogue, in catalogue order")]
struct EventTypePage {
    data: Vec<EventTypeView>,
    #[schema(required = true, schema_with = fields::next_cursor)]
    next_cursor: Option<String>,
}

/// The whole catalogue of `config`, in order: configured types, then operational ones.
pub fn catalogue(config: &Config) -> Vec<EventTypeView> {
    let configured = config.event_types.iter().map(|name| {
        let details = config.event_details.get(name);
        EventTypeView {
            name: name.clone(),
            description: details.and_then(|details| details.description.clone()),
            schema: details
                .and_then(|details| details.schema.as_ref())
                .map(|schema| schema.document().clone()),
            operational: false,
        }
    });
    let operational = OPERATIONAL.iter().map(|known| EventTypeView {
        name: known.name.to_owned(),
        description: Some(known.description.to_owned()),
        schema: Some((known.schema)()),
        operational: true,
    });
    configured.chain(operational).collect()
}

/// `GET /v1/event-types?limit=50&cursor=message.sent`
#[utoipa::path(
    get,
    path = "/v1/event-types",
    operation_id = "listEventTypes",
    tag = "event-types",
    summary = "List the event catalogue",
    description = "Every event type a subscription may list: first the configured types (`[events] types`, \
        in the config file's order), each with its description and, when the config gives one, the JSON \
        Schema its `data` must satisfy (a publish whose `data` does not is refused with 400); then the \
        operational types the daemon sends itself (`operational: true`), which subscriptions may list \
        but clients cannot publish. `cursor` is the `nextCursor` of the previous page (an event type \
        name).",
    params(EventTypeListQuery),
    responses(
        (status = 200, description = "One page of the catalogue", body = EventTypePage),
        (status = 400, response = ValidationFailed),
    ),
)]
pub fn list(state: ApiState, headers: HeaderMap, query: String) -> Result<Response, ApiError> {
    let config = state.config.current();
    authorize(&config, &headers, Scope::WebhooksRead, Gate::Webhooks)?;
    let pairs = parse_query(&query, &["limit", "cursor"])?;
    let limit = page_limit(&pairs)?;
    let mut all = catalogue(&config);
    let start = match query_value(&pairs, "cursor") {
        None => 0,
        Some(cursor) => {
            let at = all.iter().position(|item| item.name == cursor).ok_or_else(|| {
                ApiError::validation(format!(
                    "cursor {cursor:?} is not an event type of the catalogue (a cursor is the nextCursor \
                     of the previous page; the catalogue may have changed with a configuration reload: \
                     start again without cursor)"
                ))
            })?;
            at + 1
        }
    };
    let rest = all.split_off(start.min(all.len()));
    let more = rest.len() > limit;
    let data: Vec<EventTypeView> = rest.into_iter().take(limit).collect();
    let next_cursor = more.then(|| data.last().map(|item| item.name.clone())).flatten();
    Ok(json_reply(StatusCode::OK, &EventTypePage { data, next_cursor }))
}
