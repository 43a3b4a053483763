//! The tenant portal: web pages under `/portal/` where a tenant, given only a link, sees and fixes
//! its subscriptions. Server-rendered HTML (maud) with every asset compiled into the binary.
//!
//! - [`link`]: `POST /v1/portal-sessions`, which mints the link.
//! - [`session`]: the signing key, the stateless session token, the CSRF token.
//! - [`data`]: every storage call (the API's own lookups and validation).
//! - [`forms`]: form posts into the API's request bodies.
//! - [`pages`], [`charts`]: the HTML and the SVG.
//!
//! This file routes: one filter takes every `/portal/…` request and a `match` on (method, path)
//! picks the page, so warp sees one route, not twenty. Every answer carries the security headers
//! ([`secure`]): a CSP without inline script, `frame-ancestors` from `[portal]`, no referrer, no
//! caching. Every request but the assets and the link itself needs the session cookie; every
//! POST also needs a writable session and the session's CSRF token.

pub mod charts;
pub mod data;
pub mod forms;
pub mod link;
pub mod pages;
pub mod session;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::api::error::ApiError;
use crate::api::request::read_body;
use crate::api::webhooks::PatchBody;
use crate::api::ApiState;
use crate::config::{Config, SameSite, Tenant};
use crate::model::{now_millis, DeliveryState};
use forms::{Form, SubscriptionFields};
use pages::Context;
use session::{Session, SessionError, SigningKey};

/// Name of the session cookie.
pub const COOKIE: &str = "atender_portal";

/// The portal's state: the API's, plus the session signing key (`None` when it could not be
/// read or created; the portal then answers 503 and the reason is in the log).
#[derive(Clone)]
pub struct Portal {
    state: ApiState,
    key: Option<Arc<SigningKey>>,
}

fn key_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the portal is unavailable: its signing key could not be read (see the daemon's log)",
    )
}

impl Portal {
    /// Reads (or makes) the signing key storage shares between every node
    /// (`store::SharedKeys`, [`session::KEY_NAME`]); logs an error if that fails.
    pub fn new(state: ApiState) -> Portal {
        let key = match state.store.shared_key(session::KEY_NAME) {
            Ok(key) => Some(Arc::new(SigningKey::from_bytes(key))),
            Err(err) => {
                tracing::error!(error = %err, "portal signing key unavailable; the portal answers 503");
                None
            }
        };
        Portal { state, key }
    }

    /// `POST /v1/portal-sessions` (see [`link::create`]), once `matched` matched its method and
    /// path (an entry of `api::ROUTES`).
    pub fn session_route<T: Send + 'static>(&self, matched: BoxedFilter<(T,)>) -> BoxedFilter<(Response,)> {
        let portal = self.clone();
        matched
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(move |_, headers: HeaderMap, stream| {
                let portal = portal.clone();
                async move {
                    let config = portal.state.config.current();
                    let result = match read_body(&headers, stream, config.max_subscription_body_bytes).await {
                        Ok(body) => link::create(portal.key.as_deref(), &config, &headers, &body),
                        Err(err) => Err(err),
                    };
                    result.unwrap_or_else(ApiError::into_response)
                }
            })
            .boxed()
    }

    /// Every `/portal/…` request.
    pub fn routes(&self) -> BoxedFilter<(Response,)> {
        let portal = self.clone();
        warp::path("portal")
            .and(warp::path::tail())
            .and(warp::method())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(move |tail: warp::path::Tail, method: Method, query: String, headers: HeaderMap, stream| {
                let portal = portal.clone();
                async move {
                    let config = portal.state.config.current();
                    let wants_json = wants_json(&headers);
                    let response = match read_body(&headers, stream, config.max_subscription_body_bytes).await
                    {
                        Ok(body) => {
                            portal.handle(config.clone(), method, tail.as_str(), &query, &headers, body).await
                        }
                        Err(err) => error_response(err, wants_json),
                    };
                    secure(response, &config)
                }
            })
            .boxed()
    }

    async fn handle(
        &self,
        config: Arc<Config>,
        method: Method,
        tail: &str,
        query: &str,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Response {
        let wants_json = wants_json(headers);
        let segments: Vec<String> = tail.split('/').map(str::to_owned).collect();
        let route = match Route::parse(&method, &segments) {
            Ok(route) => route,
            Err(status) if status == StatusCode::METHOD_NOT_ALLOWED => {
                let error =
                    ApiError::new(status, "method_not_allowed", "this page does not accept that method");
                let mut response = error_response(error, wants_json);
                // RFC 9110 §15.5.6: a 405 lists the methods the page takes.
                let allowed: Vec<&str> =
                    [("GET", Method::GET), ("HEAD", Method::HEAD), ("POST", Method::POST)]
                        .into_iter()
                        .filter(|(_, method)| Route::parse(method, &segments).is_ok())
                        .map(|(name, _)| name)
                        .collect();
                if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                return response;
            }
            Err(status) => {
                return error_response(ApiError::new(status, "not_found", "no such page"), wants_json)
            }
        };
        match route {
            Route::Stylesheet => return asset("text/css; charset=utf-8", include_str!("assets/portal.css")),
            Route::Script => {
                return asset("text/javascript; charset=utf-8", include_str!("assets/portal.js"))
            }
            _ => {}
        }
        let Some(key) = self.key.clone() else { return error_response(key_unavailable(), wants_json) };
        let now = now_millis() / 1000;
        if let Route::Enter(token) = &route {
            return match Session::verify(&key, token, now) {
                Ok(session) => enter(&session, &config, now),
                Err(err) => session_refused(err, wants_json),
            };
        }
        let session = match session_from_cookie(&key, headers, now) {
            Ok(session) => session,
            Err(err) => return session_refused(err, wants_json),
        };
        let tenant = match config.tenants.get(&session.tenant_id) {
            Some(tenant) if tenant.webhooks_enabled => tenant.clone(),
            Some(_) => {
                return error_response(
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "webhooks_disabled",
                        "webhooks are not enabled for this tenant; ask your account team to turn them on",
                    ),
                    wants_json,
                )
            }
            None => return session_refused(SessionError::Invalid, wants_json),
        };
        let form = Form::parse(&body);
        if method == Method::POST || route.changes() {
            if session.read_only {
                return error_response(
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "read_only_session",
                        "this portal session is read-only: it shows everything and changes nothing",
                    ),
                    wants_json,
                );
            }
            if method == Method::POST && !session.csrf_matches(&key, form.get("csrf")) {
                return error_response(
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf_failed",
                        "this form was not sent from the portal page of your session (CSRF check failed); reload the page and try again",
                    ),
                    wants_json,
                );
            }
        }
        let csrf = session.csrf_token(&key);
        let request = Request {
            state: self.state.clone(),
            config,
            tenant,
            read_only: session.read_only,
            csrf,
            query: url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            form,
        };
        off_workers(async move { request.serve(route).await }, wants_json).await
    }
}

/// Whether the client asked for JSON rather than a page (a script calling the portal).
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json") && !accept.contains("text/html"))
}

/// The session in the request's cookie, verified at `now` (unix seconds).
fn session_from_cookie(key: &SigningKey, headers: &HeaderMap, now: u64) -> Result<Session, SessionError> {
    let mut refusal = SessionError::Invalid;
    let values = headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok());
    for pair in values.flat_map(|value| value.split(';')) {
        let Some((name, value)) = pair.trim().split_once('=') else { continue };
        if name != COOKIE {
            continue;
        }
        match Session::verify(key, value, now) {
            Ok(session) => return Ok(session),
            Err(err) => refusal = err,
        }
    }
    Err(refusal)
}

/// The link was opened: the session goes into the cookie (for as long as it lives), and the
/// page moves on to `/portal/` without the token in the address.
fn enter(session: &Session, config: &Config, now: u64) -> Response {
    let portal = &config.portal;
    let secure = portal.cookie_same_site == SameSite::None
        || portal.public_url.as_deref().is_some_and(|url| url.starts_with("https://"));
    let cookie = format!(
        "{COOKIE}={}; Path=/portal; Max-Age={}; HttpOnly; SameSite={}{}",
        session.token,
        session.expires_at.saturating_sub(now),
        portal.cookie_same_site.as_str(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = html(StatusCode::OK, pages::enter());
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn session_refused(err: SessionError, wants_json: bool) -> Response {
    let message = match err {
        SessionError::Expired => "This portal link has expired. Open the portal again from the Atender app to get a new link.",
        SessionError::Invalid => "No valid portal session. Open the portal from the Atender app: it gives you a link that signs you in.",
    };
    if wants_json {
        return ApiError::unauthorized(message).into_response();
    }
    let title = if err == SessionError::Expired { "Link expired" } else { "Not signed in" };
    html(StatusCode::UNAUTHORIZED, pages::message(None, title, message))
}

/// An error as a page (or as the API's JSON error for a client that asked for JSON).
fn error_response(error: ApiError, wants_json: bool) -> Response {
    if wants_json {
        return error.into_response();
    }
    let title = match error.status {
        StatusCode::BAD_REQUEST => "Not accepted",
        StatusCode::UNAUTHORIZED => "Not signed in",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::PAYLOAD_TOO_LARGE => "Too large",
        StatusCode::TOO_MANY_REQUESTS => "Limit reached",
        StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
        _ => "Something went wrong",
    };
    html(error.status, pages::message(None, title, &error.message))
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut response = warp::reply::with_status(markup.into_string(), status).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The security headers of every portal answer.
///
/// CSP: nothing loads but our own stylesheet and script (`'self'`), no inline script or style,
/// no plugins, forms post only to us, no `<base>` tricks, and only the configured ancestors may
/// frame the page. Pages are never cached (they show secrets once) and send no referrer (the
/// link carries the session token).
pub fn secure(mut response: Response, config: &Config) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors {}",
        config.portal.frame_ancestors
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Longest a page that reads or writes storage may take: as the API's handlers.
const HANDLER_WAIT: std::time::Duration = std::time::Duration::from_secs(12);

/// Runs a page that makes synchronous storage calls on tokio's blocking pool, bounded by
/// [`HANDLER_WAIT`] (as `api::off_workers`), and turns its error into an error page.
async fn off_workers<F>(page: F, wants_json: bool) -> Response
where
    F: std::future::Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || runtime.block_on(page));
    let result = match tokio::time::timeout(HANDLER_WAIT, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(crate::store::StoreError::Unavailable.into()),
        Err(_) => Err(crate::store::StoreError::Stalled.into()),
    };
    result.unwrap_or_else(|error| error_response(error, wants_json))
}

/// The pages, by (method, path under `/portal/`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Stylesheet,
    Script,
    Enter(String),
    List,
    New,
    Create,
    Subscription(String),
    Update(String),
    Pause(String),
    Resume(String),
    Enable(String),
    Rotate(String),
    ConfirmDelete(String),
    Delete(String),
    Deliveries(String),
    Delivery(String, String),
    Redeliver(String, String),
    Test(String),
    Recover(String),
}

impl Route {
    /// The route, or 404 (no such page) / 405 (the page exists for another method).
    fn parse(method: &Method, segments: &[String]) -> Result<Route, StatusCode> {
        let path: Vec<&str> = segments.iter().map(String::as_str).collect();
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        let (route, allowed) = match path.as_slice() {
            ["assets", "portal.css"] => (Route::Stylesheet, get),
            ["assets", "portal.js"] => (Route::Script, get),
            ["enter", token] => (Route::Enter((*token).to_owned()), get),
            [""] => (Route::List, get),
            ["new"] => (Route::New, get),
            ["webhooks"] => (Route::Create, post),
            ["webhooks", id] if get => (Route::Subscription((*id).to_owned()), true),
            ["webhooks", id] => (Route::Update((*id).to_owned()), post),
            ["webhooks", id, "pause"] => (Route::Pause((*id).to_owned()), post),
            ["webhooks", id, "resume"] => (Route::Resume((*id).to_owned()), post),
            ["webhooks", id, "enable"] => (Route::Enable((*id).to_owned()), post),
            ["webhooks", id, "rotate"] => (Route::Rotate((*id).to_owned()), post),
            ["webhooks", id, "delete"] if get => (Route::ConfirmDelete((*id).to_owned()), true),
            ["webhooks", id, "delete"] => (Route::Delete((*id).to_owned()), post),
            ["webhooks", id, "test"] => (Route::Test((*id).to_owned()), post),
            ["webhooks", id, "recover"] => (Route::Recover((*id).to_owned()), post),
            ["webhooks", id, "deliveries"] => (Route::Deliveries((*id).to_owned()), get),
            ["webhooks", id, "deliveries", delivery] => {
                (Route::Delivery((*id).to_owned(), (*delivery).to_owned()), get)
            }
            ["webhooks", id, "deliveries", delivery, "redeliver"] => {
                (Route::Redeliver((*id).to_owned(), (*delivery).to_owned()), post)
            }
            _ => return Err(StatusCode::NOT_FOUND),
        };
        if allowed {
            Ok(route)
        } else {
            Err(StatusCode::METHOD_NOT_ALLOWED)
        }
    }

    /// Pages that exist only to change something (refused to read-only sessions even by GET).
    fn changes(&self) -> bool {
        matches!(self, Route::New | Route::ConfirmDelete(_))
    }
}

/// One authenticated portal request.
struct Request {
    state: ApiState,
    config: Arc<Config>,
    tenant: Arc<Tenant>,
    read_only: bool,
    csrf: String,
    query: Vec<(String, String)>,
    form: Form,
}

impl Request {
    fn context(&self) -> Context<'_> {
        Context { tenant_id: &self.tenant.id, read_only: self.read_only, csrf: &self.csrf }
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .filter(|v| !v.is_empty())
    }

    fn notice(&self) -> Option<&'static str> {
        self.query("done").and_then(pages::done_message)
    }

    async fn serve(self, route: Route) -> Result<Response, ApiError> {
        let state = &self.state;
        let tenant_id = self.tenant.id.as_str();
        match route {
            Route::Stylesheet | Route::Script | Route::Enter(_) => Err(ApiError::not_found("page")),
            Route::List => {
                let (page, next) = data::list_subscriptions(state, tenant_id, self.query("cursor"))?;
                Ok(html(StatusCode::OK, pages::list(&self.context(), &page, next.as_deref(), self.notice())))
            }
            Route::New => {
                let fields = SubscriptionFields {
                    max_retries: "5".into(),
                    retry_delay_seconds: "30".into(),
                    ..SubscriptionFields::default()
                };
                Ok(html(
                    StatusCode::OK,
                    pages::new_subscription(&self.context(), &self.config, &fields, None),
                ))
            }
            Route::Create => {
                let fields = SubscriptionFields::from_form(&self.form);
                let created = match fields.create_body() {
                    Ok(body) => data::create(state, &self.config, &self.tenant, body).await,
                    Err(error) => Err(error),
                };
                match created {
                    Ok(subscription) => {
                        Ok(html(StatusCode::CREATED, pages::created(&self.context(), &subscription)))
                    }
                    Err(error) if is_form_error(&error) => Ok(html(
                        error.status,
                        pages::new_subscription(&self.context(), &self.config, &fields, Some(&error.message)),
                    )),
                    Err(error) => Err(error),
                }
            }
            Route::Subscription(id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                let fields = pages::fields_of(&subscription);
                self.subscription_page(StatusCode::OK, &subscription, &fields, None)
            }
            Route::Update(id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                let fields = SubscriptionFields::from_form(&self.form);
                let updated = match fields.patch_body() {
                    Ok(patch) => data::update(state, &self.config, tenant_id, &id, patch).await,
                    Err(error) => Err(error),
                };
                match updated {
                    Ok(updated) => Ok(redirect(&format!("/portal/webhooks/{}?done=saved", updated.id))),
                    Err(error) if is_form_error(&error) => {
                        self.subscription_page(error.status, &subscription, &fields, Some(&error.message))
                    }
                    Err(error) => Err(error),
                }
            }
            Route::Pause(id) => {
                self.patch(&id, PatchBody { is_paused: Some(true), ..Default::default() }, "paused").await
            }
            Route::Resume(id) => {
                self.patch(&id, PatchBody { is_paused: Some(false), ..Default::default() }, "resumed").await
            }
            Route::Enable(id) => {
                self.patch(&id, PatchBody { is_active: Some(true), ..Default::default() }, "enabled").await
            }
            Route::Rotate(id) => {
                let secret = data::rotate_secret(state, tenant_id, &id).await?;
                let subscription = data::subscription(state, tenant_id, &id)?;
                Ok(html(StatusCode::OK, pages::rotated(&self.context(), &subscription, secret.expose())))
            }
            Route::ConfirmDelete(id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                Ok(html(StatusCode::OK, pages::confirm_delete(&self.context(), &subscription)))
            }
            Route::Delete(id) => {
                data::delete(state, tenant_id, &id).await?;
                Ok(redirect("/portal/?done=deleted"))
            }
            Route::Deliveries(id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                let status = self
                    .query("status")
                    .map(|text| {
                        DeliveryState::parse(text).ok_or_else(|| {
                            ApiError::validation(format!(
                                "status must be one of pending, held, succeeded, failed, expired (got {text:?})"
                            ))
                        })
                    })
                    .transpose()?;
                let (page, next) = data::deliveries(state, &subscription, status, self.query("cursor"))?;
                Ok(html(
                    StatusCode::OK,
                    pages::deliveries(
                        &self.context(),
                        &subscription,
                        status,
                        &page,
                        next.as_deref(),
                        self.notice(),
                    ),
                ))
            }
            Route::Delivery(id, delivery_id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                let (delivery, body) = data::delivery(state, &subscription, &delivery_id)?;
                let payload = body.map(|body| pretty_json(&body));
                Ok(html(
                    StatusCode::OK,
                    pages::delivery(
                        &self.context(),
                        &subscription,
                        &delivery,
                        payload.as_deref(),
                        self.notice(),
                    ),
                ))
            }
            Route::Redeliver(id, delivery_id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                let delivery = data::redeliver(state, &subscription, &delivery_id).await?;
                let done = match delivery.state {
                    DeliveryState::Held => "redelivered-held",
                    _ => "redelivered",
                };
                Ok(redirect(&format!(
                    "/portal/webhooks/{}/deliveries/{}?done={done}",
                    subscription.id, delivery.id
                )))
            }
            Route::Test(id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                let outcome = data::test_send(state, &subscription)?;
                Ok(html(StatusCode::OK, pages::tested(&self.context(), &subscription, &outcome)))
            }
            Route::Recover(id) => {
                let subscription = data::subscription(state, tenant_id, &id)?;
                let hours = self.form.get("hours");
                let recovered = data::recover(state, &subscription, hours)?;
                Ok(html(StatusCode::OK, pages::recovered(&self.context(), &subscription, hours, recovered)))
            }
        }
    }

    /// A one-field change (pause, resume, re-enable) through the API's PATCH, then back to the
    /// subscription with a notice.
    async fn patch(&self, id: &str, patch: PatchBody, done: &str) -> Result<Response, ApiError> {
        let updated = data::update(&self.state, &self.config, &self.tenant.id, id, patch).await?;
        Ok(redirect(&format!("/portal/webhooks/{}?done={done}", updated.id)))
    }

    fn subscription_page(
        &self,
        status: StatusCode,
        subscription: &crate::model::Subscription,
        fields: &SubscriptionFields,
        error: Option<&str>,
    ) -> Result<Response, ApiError> {
        let now = now_millis();
        let recent = data::recent_deliveries(&self.state, subscription, now.saturating_sub(24 * 3_600_000))?;
        let charts = (
            charts::outcomes_chart(&charts::hourly_outcomes(&recent, now)),
            charts::latency_chart(&charts::hourly_latency(&recent, now)),
        );
        let page = pages::subscription(
            &self.context(),
            &self.config,
            subscription,
            fields,
            charts,
            self.notice(),
            error,
        );
        Ok(html(status, page))
    }
}

/// Errors shown on the form itself (so nothing typed is lost): invalid values and the limit.
fn is_form_error(error: &ApiError) -> bool {
    matches!(error.status, StatusCode::BAD_REQUEST | StatusCode::TOO_MANY_REQUESTS)
}

/// The delivery body pretty-printed (key order kept); bytes that are not JSON shown as text.
fn pretty_json(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}
