//! `POST /v1/portal-sessions`: the Atender application asks for a portal link for the tenant of
//! its API key and sends its user there. The JSON shape of this one endpoint lives here, beside
//! the session it mints, rather than in `api/` (the portal is one module to review).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::{header, HeaderMap, StatusCode};
use warp::reply::Response;

use crate::api::error::ApiError;
use crate::api::openapi::fields;
use crate::api::openapi::{PayloadTooLarge, UnsupportedMediaType, ValidationFailed};
use crate::api::request::{authorize, json_reply, parse_json, Gate};
use crate::api::webhooks::{present, validate_range, Integer};
use crate::config::{Config, Scope};
use crate::model::{now_millis, rfc3339};
use crate::portal::session::{Session, SigningKey, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = PortalSessionRequest)]
struct SessionBody {
    /// A read-only session shows everything and changes nothing.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, default = false)]
    read_only: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = fields::ttl_seconds)]
    ttl_seconds: Option<Integer>,
}

/// The link to send the tenant's user to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = PortalSession)]
struct PortalLink {
    /// `<origin>/portal/enter/<token>`: opening it starts the session (a cookie) and moves to the
    /// portal's first page; it works until `expiresAt`.
    #[schema(format = "uri")]
    url: String,
    /// When the link and the session expire (RFC 3339, UTC).
    #[schema(format = DateTime)]
    expires_at: String,
}

/// `POST /v1/portal-sessions` with an optional `{"readOnly": bool, "ttlSeconds": 1..=86400}`
/// (default read-write, 3600 s) → 201 `{"url": "<origin>/portal/enter/<token>", "expiresAt":
/// RFC 3339}`. Scope `webhooks:write` (a link can change subscriptions), tenant gate as
/// `/v1/webhooks`. Errors: the API's 400/401/403/415.
#[utoipa::path(
    post,
    path = "/v1/portal-sessions",
    operation_id = "createPortalSession",
    tag = "portal",
    summary = "Get a link to the tenant portal",
    description = "A link to the web page where the tenant's user sees and fixes the tenant's webhooks \
        without an API key. Send the user to `url` (or embed it in an iframe allowed by \
        `[portal] frame_ancestors`). The link works for this tenant only, until `expiresAt`; \
        opening it starts a session in an HttpOnly cookie. The body is optional.",
    request_body = Option<SessionBody>,
    responses(
        (status = 201, description = "The link", body = PortalLink),
        (status = 400, response = ValidationFailed),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
    ),
)]
pub fn create(
    key: Option<&SigningKey>,
    config: &Config,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let principal = authorize(config, headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let body: Option<SessionBody> = parse_json(headers, body)?;
    let (read_only, ttl) = match body {
        Some(body) => (body.read_only.unwrap_or(false), body.ttl_seconds),
        None => (false, None),
    };
    let ttl = validate_range(
        "ttlSeconds",
        ttl.unwrap_or(Integer(DEFAULT_TTL_SECONDS.into())),
        1..=MAX_TTL_SECONDS,
    )?;
    let key = key.ok_or_else(super::key_unavailable)?;
    let origin = match &config.portal.public_url {
        Some(url) => url.clone(),
        None => format!("http://{}", request_host(headers)?),
    };
    // Whole seconds in the token, rounded up: a link lives at least `ttlSeconds` (less than one
    // second more), never a truncated fraction of it.
    let expires_at = now_millis().div_ceil(1000) + u64::from(ttl);
    let session =
        Session::issue(key, &principal.tenant.id, read_only, expires_at, crate::model::random_bytes());
    tracing::info!(tenant = %principal.tenant.id, read_only, ttl_seconds = ttl, "portal link issued");
    Ok(json_reply(
        StatusCode::CREATED,
        &PortalLink {
            url: format!("{origin}/portal/enter/{}", session.token),
            expires_at: rfc3339(expires_at * 1000),
        },
    ))
}

/// The `Host` the request was sent to, when it is a plain host[:port] (nothing that could turn
/// the link into another URL).
fn request_host(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| {
            !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .ok_or_else(|| {
            ApiError::validation(
                "the request has no usable Host header to build the portal link from; set portal.public_url in the config",
            )
        })
}
