//! Operational endpoints: `/healthz` (alive), `/readyz` (storage open, workers running, not
//! shutting down), `/metrics` (Prometheus text) and `/v1/openapi.json`.

use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::request::json_reply;
use crate::api::ApiState;

/// `GET /healthz`: the process answers.
pub fn healthz() -> Response {
    json_reply(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once storage answers and the delivery workers run; 503 otherwise.
pub fn readyz(state: ApiState) -> Response {
    let storage = state.store.is_healthy();
    let delivery = state.health.delivery_running();
    let stopping = state.health.shutting_down();
    let ready = storage && delivery && !stopping;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "storage": if storage { "ok" } else { "failing" },
        "delivery": if delivery { "running" } else { "stopped" },
        "shuttingDown": stopping,
    });
    json_reply(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

/// `GET /metrics`
pub fn metrics(state: ApiState) -> Response {
    let (pending, held) = state.store.queue_depth();
    let stats = state.store.commit_stats();
    let text = state.metrics.render(
        pending,
        held,
        stats.flushes.load(std::sync::atomic::Ordering::Relaxed),
        stats.requests.load(std::sync::atomic::Ordering::Relaxed),
    );
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        // prometheus-client writes the OpenMetrics text format (`# EOF`, `_total` series).
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `GET /v1/openapi.json`
pub fn openapi() -> Response {
    json_reply(StatusCode::OK, &crate::api::openapi::document())
}
