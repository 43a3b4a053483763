//! Operational endpoints: `/healthz` (alive), `/readyz` (storage open, workers running, not
//! shutting down), `/metrics` (Prometheus text) and `/v1/openapi.json`.

use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::request::json_reply;
use crate::api::ApiState;
use crate::metrics::Snapshot;

/// `GET /healthz`: 200 `{"status": "ok"}` while every internal thread (publish writer, group
/// commit, storage monitor, scheduler, recorder, workers, janitor) is alive and none has been
/// busy on one item past its limit, and storage has not failed for good; otherwise 503
/// `{"status": "failing", "problems": ["thread recorder has exited", …]}`.
pub fn healthz(state: ApiState) -> Response {
    let problems = state.health.problems();
    if problems.is_empty() {
        json_reply(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
    } else {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "failing", "problems": problems }),
        )
    }
}

/// `GET /readyz`: 200 when storage takes writes, the delivery workers run and the daemon is not
/// shutting down; 503 otherwise, with `storage` one of `ok`, `low_space`, `read_only`,
/// `stalled`, `failed` and `storageReason` saying why in words. Never touches the storage
/// engine itself, so it answers even when storage hangs.
pub fn readyz(state: ApiState) -> Response {
    let (storage, reason) = state.store.status();
    let running = state.health.delivery_running();
    let stopping = state.health.shutting_down();
    let ready = storage == "ok" && running && !stopping;
    // Running, but holding attempts back while storage cannot record their outcomes.
    let delivery = match (running, state.store.dispatch_paused()) {
        (false, _) => "stopped",
        (true, true) => "paused",
        (true, false) => "running",
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "storage": storage,
        "storageReason": reason,
        "delivery": delivery,
        "shuttingDown": stopping,
    });
    json_reply(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

/// `GET /metrics`
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
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        // prometheus-client writes the OpenMetrics text format (`# EOF`, `_total` series).
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `GET /v1/openapi.json`
pub fn openapi(state: ApiState) -> Response {
    json_reply(StatusCode::OK, &crate::api::openapi::document_for(&state.config.current().event_types))
}
