//! Request plumbing shared by every endpoint: bearer-key authentication and scopes, size-limited
//! JSON bodies parsed with field-naming errors, query strings and JSON answers.

use std::sync::Arc;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use warp::http::{header, HeaderMap, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::error::ApiError;
use crate::config::{Config, Scope, Tenant};

/// Who is calling: the tenant behind a valid key.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: Arc<Tenant>,
}

/// Which tenant gate an endpoint sits behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `/v1/webhooks…`: refused with `webhooks_disabled` when the tenant has webhooks off.
    Webhooks,
    /// `/v1/events…`: accepted, but nothing is delivered for a tenant with webhooks off.
    Events,
}

/// Authenticates the bearer key and checks its scope and the tenant's webhook switch.
pub fn authorize(
    config: &Config,
    headers: &HeaderMap,
    scope: Scope,
    gate: Gate,
) -> Result<Principal, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing Authorization header; send Authorization: Bearer <api key>")
    })?;
    let key = value
        .to_str()
        .ok()
        // The scheme is case-insensitive (RFC 9110 §11.1): "Bearer", "bearer", "BEARER".
        .and_then(|text| text.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, key)| key.trim())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header; expected Bearer <api key>"))?;
    let api_key = config.find_key(key).ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    let tenant = config
        .tenants
        .get(&api_key.tenant_id)
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    if !api_key.scopes.contains(&scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this API key lacks the {} scope", scope.as_str()),
        ));
    }
    if gate == Gate::Webhooks && !tenant.webhooks_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "webhooks_disabled",
            "webhooks are not enabled for this tenant; ask your account team to turn them on",
        ));
    }
    Ok(Principal { tenant })
}

/// How much of a refused body is still read past the limit and thrown away. Closing a
/// connection with unread request data makes the kernel answer with a reset, so a client that
/// writes its whole body before reading (most do) would see "broken pipe" instead of our 413.
/// Past this much the connection is dropped rather than drained.
const DRAIN_BYTES: u64 = 1024 * 1024;

/// Reads a request body of at most `limit` bytes, refusing early on a larger Content-Length and
/// while streaming on a chunked body that grows past it.
pub async fn read_body<S, B>(headers: &HeaderMap, body: S, limit: u64) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    let mut body = std::pin::pin!(body);
    if let Some(length) = declared.filter(|length| *length > limit) {
        if length <= limit + DRAIN_BYTES {
            drain(body.as_mut(), length).await;
        }
        return Err(ApiError::payload_too_large(limit));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| ApiError::validation("the request body could not be read"))?;
        let read = bytes.len() as u64 + chunk.remaining() as u64;
        if read > limit {
            drain(body.as_mut(), (limit + DRAIN_BYTES).saturating_sub(read)).await;
            return Err(ApiError::payload_too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let len = part.len();
            chunk.advance(len);
        }
    }
    Ok(bytes)
}

/// Reads and discards the rest of a refused body, giving up after `budget` bytes.
async fn drain<B: Buf>(mut body: impl Stream<Item = Result<B, warp::Error>> + Unpin, mut budget: u64) {
    while let Some(Ok(chunk)) = body.next().await {
        let Some(left) = budget.checked_sub(chunk.remaining() as u64) else { return };
        budget = left;
    }
}

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.split(';').next())
        .is_some_and(|media| {
            let media = media.trim().to_ascii_lowercase();
            media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
        })
}

/// Parses a JSON object body; an empty body is `None` (for endpoints whose body is optional).
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<Option<T>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if !is_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    // serde also reads a struct from a JSON array, field by field in declaration order, so
    // `["new name"]` would pass as a PATCH of `name`: every body must be an object.
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => ApiError::validation("request body must be a JSON object"),
            Err(err) => ApiError::validation(format!("request body is not valid JSON: {err}")),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let reason = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::validation(reason)
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::validation(format!("request body is not valid JSON: {err}")))?;
    Ok(Some(value))
}

/// Parses a required JSON body.
pub fn require_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() && !is_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    parse_json(headers, bytes)?.ok_or_else(|| ApiError::validation("request body must be a JSON object"))
}

/// The pairs of a query string, refusing parameters the endpoint does not know.
pub fn parse_query(raw: &str, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    for (name, _) in &pairs {
        if !known.contains(&name.as_str()) {
            return Err(ApiError::validation(format!(
                "unknown query parameter {name:?} (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(pairs)
}

/// The page sizes a list endpoint accepts as `?limit=`.
pub const PAGE_LIMIT: std::ops::RangeInclusive<usize> = 1..=100;

/// The page size without `?limit=`.
pub const DEFAULT_PAGE_LIMIT: usize = 50;

/// `limit` within [`PAGE_LIMIT`], default [`DEFAULT_PAGE_LIMIT`].
pub fn page_limit(pairs: &[(String, String)]) -> Result<usize, ApiError> {
    match pairs.iter().find(|(name, _)| name == "limit") {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some((_, value)) => {
            value.parse::<usize>().ok().filter(|limit| PAGE_LIMIT.contains(limit)).ok_or_else(|| {
                ApiError::validation(format!(
                    "limit must be an integer between {} and {}",
                    PAGE_LIMIT.start(),
                    PAGE_LIMIT.end()
                ))
            })
        }
    }
}

/// A page cursor (`cursor=`) as the id type `parse` reads (`SubscriptionId::parse`, …), or
/// 400 `validation_failed` naming the id prefix expected: a cursor is only ever one this API
/// returned as `nextCursor`.
pub fn parse_cursor<T>(
    cursor: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
    prefix: &str,
) -> Result<Option<T>, ApiError> {
    cursor
        .map(|cursor| {
            parse(cursor).ok_or_else(|| {
                ApiError::validation(format!(
                    "cursor is not a cursor this API returned (expected a {prefix} id)"
                ))
            })
        })
        .transpose()
}

pub fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// A JSON answer with a status.
pub fn json_reply<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// Folds a handler's result into a response: the error path is our JSON error shape.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}
