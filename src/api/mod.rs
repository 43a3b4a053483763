//! The HTTP API: the only module that knows warp and the JSON shapes. One file per resource
//! (`webhooks`, `deliveries`, `events`, `event_types`, `ops`, `test_send`), shared request plumbing in `request`, the error
//! shape in `error`, the OpenAPI document in `openapi`, and the one list of routes, which the
//! router, the document and the 405 `Allow` header all read, in `routes`.
//!
//! Every route matches its path before its method, so an unknown path is a 404 and a known path
//! with the wrong method a 405. Once a route matches, its handler always produces a response
//! (errors included), so warp's rejection machinery only ever sees unmatched requests.

pub mod deliveries;
pub mod error;
pub mod event_types;
pub mod events;
pub mod openapi;
pub mod ops;
pub mod request;
pub mod routes;
pub mod test_send;
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
pub use routes::{allowed_methods, Route, ROUTES};

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<SharedConfig>,
    /// Storage (the API uses its `Subscriptions`, `Publishing`, `DeliveryLog` and `Vitals`
    /// parts).
    pub store: Arc<dyn Storage>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Test sends (`POST /v1/webhooks/{id}/test`), made by the delivery engine, which the API
    /// knows only through this trait.
    pub test_send: Arc<dyn crate::probe::TestSend>,
}

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

/// Every request no route took: 405 with the `Allow` header RFC 9110 §15.5.6 requires when the
/// path is one of ours (another method is served there), 404 otherwise; both in our JSON shape.
fn unrouted() -> BoxedFilter<(Response,)> {
    warp::path::full()
        .map(|path: warp::path::FullPath| {
            let allowed: Vec<String> =
                allowed_methods(path.as_str()).iter().map(ToString::to_string).collect();
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

/// The whole API, every route of [`ROUTES`] and the unrouted fallback, with its JSON rejection
/// handler.
pub fn routes(state: ApiState) -> BoxedFilter<(Response,)> {
    let served = routes::router(&state).expect("ROUTES is not empty");
    // The tenant portal's pages (crate::portal): HTML under /portal/, outside the API document.
    let portal_pages = crate::portal::Portal::new(state).routes();
    served
        .or(portal_pages)
        .unify()
        .or(unrouted())
        .unify()
        .recover(|rejection| async move { error::handle_rejection(rejection).await })
        .unify()
        .boxed()
}
