//! The one JSON error shape, `{"error": {"code", "message"}}`, for our own errors and for every
//! rejection warp produces on its own (unknown route, wrong method, and so on).

use std::convert::Infallible;

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::store::StoreError;

/// Every code the API answers with.
pub const ERROR_CODES: [&str; 12] = [
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
    "test_in_progress",
];

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error, description = "Every error the API answers")]
pub struct ErrorBody<'a> {
    #[schema(inline)]
    pub error: ErrorDetail<'a>,
}

/// What went wrong: a code to act on and a sentence to read.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    #[schema(schema_with = crate::api::openapi::error_code)]
    pub code: &'a str,
    /// A human sentence naming the field or scope concerned; never internal detail
    pub message: &'a str,
}

/// An error answered to the client. `message` is a human sentence; never internal detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn payload_too_large(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be JSON sent with Content-Type: application/json",
        )
    }

    pub fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        let mut response = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::LimitExceeded => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "limit_exceeded",
                "the tenant has reached its maxWebhooks limit; delete a subscription or ask for a higher limit",
            ),
            StoreError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage is unavailable; retry shortly",
            ),
            StoreError::NoSpace { free, reserve } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "storage is low on space ({free} bytes free, below the reserve of {reserve} bytes); \
                     nothing was stored; writes resume by themselves once space is freed, retry shortly"
                ),
            ),
            StoreError::ReadOnly => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage is on a read-only file system; nothing was stored; retry shortly",
            ),
            StoreError::Unreachable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unreachable (a restart or failover?); nothing was stored; retry shortly",
            ),
            StoreError::Stalled => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage did not confirm the write in time; retry shortly (with the same id, a retry is never stored twice)",
            ),
            StoreError::IdempotencyConflict { index, client_id } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                format!(
                    "{}id {client_id:?} was already used within the last 24 h for a different event \
                     (another event type or data); nothing was stored; send a new id for a new event",
                    index.map(|index| format!("events[{index}].")).unwrap_or_default()
                ),
            ),
            StoreError::Io(_) | StoreError::Corrupt(_) | StoreError::MasterKey(_) => {
                // The detail goes to the log, never to the client.
                tracing::error!(error = %err, "storage error while answering a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage is failing; retry shortly",
                )
            }
        }
    }
}

/// Every request that did not match a route ends here; the answer is always our JSON shape.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::unsupported_media_type()
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", "the request could not be understood")
    };
    Ok(error.into_response())
}
