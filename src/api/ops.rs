//! Operational endpoints: `/healthz` (alive), `/readyz` (storage open, workers running, not
//! shutting down), `/metrics` (Prometheus text) and `/v1/openapi.json`.

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::openapi::OpenApiDocument;
use crate::api::request::json_reply;
use crate::api::ApiState;
use crate::metrics::Snapshot;

/// The content type of `/metrics`: prometheus-client writes the OpenMetrics text format
/// (`# EOF`, `_total` series).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The body of `/healthz`.
#[derive(Serialize, ToSchema)]
#[schema(as = Health, description = "Liveness")]
struct HealthView {
    #[schema(inline)]
    status: HealthStatus,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum HealthStatus {
    Ok,
    Failing,
}

/// The body of `/readyz`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Readiness, description = "Readiness and its parts")]
struct ReadinessView {
    #[schema(inline)]
    status: ReadyStatus,
    #[schema(schema_with = storage_status)]
    storage: &'static str,
    /// Why storage refuses writes, in words; null when it takes them
    #[schema(required = true)]
    storage_reason: Option<String>,
    /// paused: attempts wait while storage cannot record their outcomes
    #[schema(inline)]
    delivery: DeliveryRunning,
    shutting_down: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum ReadyStatus {
    Ready,
    NotReady,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum DeliveryRunning {
    Running,
    Paused,
    Stopped,
}

/// What `store::Vitals::status` can say about storage (`store::STORAGE_STATES`).
fn storage_status() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(crate::store::STORAGE_STATES))
        .build()
}

/// `GET /healthz`: 200 `{"status": "ok"}` while every internal thread (publish writer, group
/// commit, storage monitor, scheduler, recorder, workers, janitor) is alive and none has been
/// busy on one item past its limit, and storage has not failed for good; otherwise 503
/// `{"status": "failing", "problems": ["thread recorder has exited", …]}`.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = "operations",
    summary = "Liveness: every internal thread alive and making progress",
    responses(
        (status = 200, description = "Alive", body = HealthView),
        (status = 503, description = "A thread exited or is stuck, or storage failed for good; `problems` says which",
            body = HealthView),
    ),
)]
pub fn healthz(state: ApiState) -> Response {
    let problems = state.health.problems();
    if problems.is_empty() {
        json_reply(StatusCode::OK, &HealthView { status: HealthStatus::Ok, problems })
    } else {
        json_reply(StatusCode::SERVICE_UNAVAILABLE, &HealthView { status: HealthStatus::Failing, problems })
    }
}

/// `GET /readyz`: 200 when storage takes writes, the delivery workers run and the daemon is not
/// shutting down; 503 otherwise, with `storage` one of `store::STORAGE_STATES` (`ok`,
/// `low_space`, `read_only`, `stalled`, `unavailable`, `failed`) and `storageReason` saying why
/// in words. Never touches the storage
/// engine itself, so it answers even when storage hangs.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "getReadiness",
    tag = "operations",
    summary = "Readiness: storage answers, delivery workers run, not shutting down",
    responses(
        (status = 200, description = "Ready", body = ReadinessView),
        (status = 503, description = "Not ready; the body says which part is not", body = ReadinessView),
    ),
)]
pub fn readyz(state: ApiState) -> Response {
    let (storage, reason) = state.store.status();
    let running = state.health.delivery_running();
    let stopping = state.health.shutting_down();
    let ready = storage == "ok" && running && !stopping;
    // Running, but holding attempts back while storage cannot record their outcomes.
    let delivery = match (running, state.store.dispatch_paused()) {
        (false, _) => DeliveryRunning::Stopped,
        (true, true) => DeliveryRunning::Paused,
        (true, false) => DeliveryRunning::Running,
    };
    let body = ReadinessView {
        status: if ready { ReadyStatus::Ready } else { ReadyStatus::NotReady },
        storage,
        storage_reason: reason,
        delivery,
        shutting_down: stopping,
    };
    json_reply(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

/// `GET /metrics`
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Events published, attempts by result and in flight, attempt latency, queued deliveries by \
        state, disabled subscriptions, storage flushes and durable writes.",
    responses(
        (status = 200, description = "OpenMetrics text format 1.0.0 (Prometheus scrapes it as is)",
            content_type = OPENMETRICS, body = String),
    ),
)]
pub fn metrics(state: ApiState) -> Response {
    let (pending, held) = state.store.queue_depth();
    let figures = state.store.figures();
    let storage_healthy = state.store.status().0 == "ok";
    let (threads, unhealthy_threads) = state.health.thread_counts();
    let text = state.metrics.render(&Snapshot {
        pending,
        held,
        flushes: figures.flushes,
        durable_writes: figures.flushed_writes,
        storage_errors: figures.errors,
        storage_healthy,
        free_bytes: figures.free_bytes,
        threads,
        unhealthy_threads,
        thread_errors: state.health.thread_errors(),
    });
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(OPENMETRICS));
    response
}

/// `GET /v1/openapi.json`
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "getOpenApi",
    tag = "operations",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = inline(OpenApiDocument))),
)]
pub fn openapi(state: ApiState) -> Response {
    json_reply(StatusCode::OK, &crate::api::openapi::document_for(&state.config.current().event_types))
}
