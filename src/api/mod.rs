//! The HTTP API: the only module that knows warp and the JSON shapes. One file per resource
//! (`webhooks`, `deliveries`, `events`, `ops`), shared request plumbing in `request`, the error
//! shape in `error`, the OpenAPI document in `openapi`.
//!
//! Every route matches its path before its method, so an unknown path is a 404 and a known path
//! with the wrong method a 405. Once a route matches, its handler always produces a response
//! (errors included), so warp's rejection machinery only ever sees unmatched requests.

pub mod deliveries;
pub mod error;
pub mod events;
pub mod openapi;
pub mod ops;
pub mod request;
pub mod webhooks;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::Filter;

use crate::config::SharedConfig;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::Storage;

use request::{read_body, respond};

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<SharedConfig>,
    /// Storage (the API uses its `Subscriptions`, `Publishing`, `DeliveryLog` and `Vitals`
    /// parts).
    pub store: Arc<dyn Storage>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Every (method, path) the router serves, in OpenAPI path syntax. The OpenAPI document and
/// the tests are checked against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/{id}"),
    ("PATCH", "/v1/webhooks/{id}"),
    ("DELETE", "/v1/webhooks/{id}"),
    ("POST", "/v1/webhooks/{id}/rotate-secret"),
    ("GET", "/v1/webhooks/{id}/deliveries"),
    ("GET", "/v1/webhooks/{id}/deliveries/{deliveryId}"),
    ("POST", "/v1/webhooks/{id}/deliveries/{deliveryId}/redeliver"),
    ("POST", "/v1/events"),
    ("POST", "/v1/events/batch"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// Routes served but not yet in the OpenAPI document (`openapi.rs` is being replaced by a
/// generated one; they move into [`ROUTES`] with their documentation). `allowed_methods` reads
/// both lists, so their 405s are right already.
pub const ROUTES_PENDING_DOCUMENTATION: &[(&str, &str)] = &[("POST", "/v1/portal-sessions")];

/// Which configured body limit an endpoint uses.
#[derive(Clone, Copy)]
enum BodyKind {
    Subscription,
    Event,
}

/// The request body, size-limited by the limit in force, or the error response to send.
fn body(state: ApiState, kind: BodyKind) -> BoxedFilter<(Result<Vec<u8>, Response>,)> {
    warp::any()
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |headers: HeaderMap, stream| {
            let config = state.config.current();
            let limit = match kind {
                BodyKind::Subscription => config.max_subscription_body_bytes,
                BodyKind::Event => config.max_event_body_bytes,
            };
            async move { read_body(&headers, stream, limit).await.map_err(|err| err.into_response()) }
        })
        .boxed()
}

/// Runs `handler` on a body that was read within its limit, or answers the body's error.
async fn with_body<F>(body: Result<Vec<u8>, Response>, handler: impl FnOnce(Vec<u8>) -> F) -> Response
where
    F: std::future::Future<Output = Result<Response, error::ApiError>>,
{
    match body {
        Ok(body) => respond(handler(body).await),
        Err(response) => response,
    }
}

/// Longest a handler that reads or writes storage may take before it is answered 503: the
/// durability wait (10 s) plus room to answer.
const HANDLER_WAIT: std::time::Duration = std::time::Duration::from_secs(12);

/// Runs a handler that makes synchronous storage calls on tokio's blocking pool and bounds it by
/// [`HANDLER_WAIT`]. A storage engine stuck on a hung disk then holds a blocking thread, never
/// an async worker: `/healthz`, `/readyz`, signals and every other request keep being served,
/// and the stuck request gets 503 `unavailable` in time. (Publishing talks to storage only
/// through the publish writer's channel and stays on the async workers.)
async fn off_workers<F>(handler: F) -> Response
where
    F: std::future::Future<Output = Result<Response, error::ApiError>> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || runtime.block_on(handler));
    respond(match tokio::time::timeout(HANDLER_WAIT, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(crate::store::StoreError::Unavailable.into()),
        Err(_) => Err(crate::store::StoreError::Stalled.into()),
    })
}

/// [`with_body`] for handlers that make synchronous storage calls ([`off_workers`]).
async fn with_body_off<F>(body: Result<Vec<u8>, Response>, handler: impl FnOnce(Vec<u8>) -> F) -> Response
where
    F: std::future::Future<Output = Result<Response, error::ApiError>> + Send + 'static,
{
    match body {
        Ok(body) => off_workers(handler(body)).await,
        Err(response) => response,
    }
}

/// The raw query string, empty when there is none.
fn query() -> BoxedFilter<(String,)> {
    warp::query::raw().or(warp::any().map(String::new)).unify().boxed()
}

/// The methods `ROUTES` serves at `path` (a request path; `{…}` segments of a route match any
/// one non-empty segment), in `ROUTES` order; empty for a path that is not ours.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut methods = Vec::new();
    for (method, template) in ROUTES.iter().chain(ROUTES_PENDING_DOCUMENTATION) {
        let pattern: Vec<&str> = template.split('/').collect();
        let matches = pattern.len() == segments.len()
            && pattern.iter().zip(&segments).all(|(want, got)| {
                if want.starts_with('{') {
                    !got.is_empty()
                } else {
                    want == got
                }
            });
        if matches && !methods.contains(method) {
            methods.push(*method);
        }
    }
    methods
}

/// Every request no route took: 405 with the `Allow` header RFC 9110 §15.5.6 requires when the
/// path is one of ours (another method is served there), 404 otherwise; both in our JSON shape.
fn unrouted() -> BoxedFilter<(Response,)> {
    warp::path::full()
        .map(|path: warp::path::FullPath| {
            let allowed = allowed_methods(path.as_str());
            if allowed.is_empty() {
                return error::ApiError::new(
                    warp::http::StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint",
                )
                .into_response();
            }
            let mut response = error::ApiError::new(
                warp::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this endpoint does not accept that method (it accepts {})", allowed.join(", ")),
            )
            .into_response();
            if let Ok(value) = warp::http::HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(warp::http::header::ALLOW, value);
            }
            response
        })
        .boxed()
}

/// The whole API with its JSON rejection handler.
pub fn routes(state: ApiState) -> BoxedFilter<(Response,)> {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let headers = warp::header::headers_cloned;
    let sub_body = || body(state.clone(), BodyKind::Subscription);
    let event_body = || body(state.clone(), BodyKind::Event);

    let webhooks_root = warp::path!("v1" / "webhooks");
    let webhook = warp::path!("v1" / "webhooks" / String);

    let create = webhooks_root
        .and(warp::post())
        .and(with_state.clone())
        .and(headers())
        .and(sub_body())
        .then(|state, headers, body| with_body_off(body, move |body| webhooks::create(state, headers, body)))
        .boxed();
    let list = webhooks_root
        .and(warp::get())
        .and(with_state.clone())
        .and(headers())
        .and(query())
        .then(|state, headers, query| off_workers(webhooks::list(state, headers, query)))
        .boxed();
    let get = webhook
        .and(warp::get())
        .and(with_state.clone())
        .and(headers())
        .then(|id, state, headers| off_workers(webhooks::get(state, headers, id)))
        .boxed();
    let update = webhook
        .and(warp::patch())
        .and(with_state.clone())
        .and(headers())
        .and(sub_body())
        .then(|id, state, headers, body| {
            with_body_off(body, move |body| webhooks::update(state, headers, id, body))
        })
        .boxed();
    let delete = webhook
        .and(warp::delete())
        .and(with_state.clone())
        .and(headers())
        .then(|id, state, headers| off_workers(webhooks::delete(state, headers, id)))
        .boxed();
    let rotate = warp::path!("v1" / "webhooks" / String / "rotate-secret")
        .and(warp::post())
        .and(with_state.clone())
        .and(headers())
        .and(sub_body())
        .then(|id, state, headers, body| {
            with_body_off(body, move |body| webhooks::rotate_secret(state, headers, id, body))
        })
        .boxed();
    let delivery_list = warp::path!("v1" / "webhooks" / String / "deliveries")
        .and(warp::get())
        .and(with_state.clone())
        .and(headers())
        .and(query())
        .then(|id, state, headers, query| off_workers(deliveries::list(state, headers, id, query)))
        .boxed();
    let delivery_get = warp::path!("v1" / "webhooks" / String / "deliveries" / String)
        .and(warp::get())
        .and(with_state.clone())
        .and(headers())
        .then(|id, delivery_id, state, headers| off_workers(deliveries::get(state, headers, id, delivery_id)))
        .boxed();
    let redeliver = warp::path!("v1" / "webhooks" / String / "deliveries" / String / "redeliver")
        .and(warp::post())
        .and(with_state.clone())
        .and(headers())
        .then(|id, delivery_id, state, headers| {
            off_workers(deliveries::redeliver(state, headers, id, delivery_id))
        })
        .boxed();
    let publish = warp::path!("v1" / "events")
        .and(warp::post())
        .and(with_state.clone())
        .and(headers())
        .and(event_body())
        .then(|state, headers, body| with_body(body, move |body| events::publish(state, headers, body)))
        .boxed();
    let publish_batch = warp::path!("v1" / "events" / "batch")
        .and(warp::post())
        .and(with_state.clone())
        .and(headers())
        .and(event_body())
        .then(|state, headers, body| with_body(body, move |body| events::publish_batch(state, headers, body)))
        .boxed();
    let openapi =
        warp::path!("v1" / "openapi.json").and(warp::get()).and(with_state.clone()).map(ops::openapi).boxed();
    let healthz = warp::path!("healthz").and(warp::get()).and(with_state.clone()).map(ops::healthz).boxed();
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state.clone()).map(ops::readyz).boxed();
    // The tenant portal: its link endpoint and its pages (crate::portal).
    let portal = crate::portal::Portal::new(state.clone());
    let portal_sessions = portal.session_route();
    let portal_pages = portal.routes();
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state)
        .then(|state| off_workers(async move { Ok(ops::metrics(state)) }))
        .boxed();

    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(rotate)
        .unify()
        .or(delivery_list)
        .unify()
        .or(delivery_get)
        .unify()
        .or(redeliver)
        .unify()
        .or(publish)
        .unify()
        .or(publish_batch)
        .unify()
        .or(openapi)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(portal_sessions)
        .unify()
        .or(portal_pages)
        .unify()
        .or(unrouted())
        .unify()
        .recover(|rejection| async move { error::handle_rejection(rejection).await })
        .unify()
        .boxed()
}
