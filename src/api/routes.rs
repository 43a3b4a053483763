//! The one list of what the API serves: [`ROUTES`]. Each entry joins a handler's
//! `#[utoipa::path]` (method, path template and OpenAPI operation, written once, on the handler)
//! with who may call it and the warp filter that serves it. The router (`api::routes`), the
//! OpenAPI document (`api::openapi`), the 405 `Allow` header ([`allowed_methods`]) and the tests
//! all read this table; nothing else lists routes.

use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method};
use warp::reply::Response;
use warp::Filter;

use crate::api::request::{respond, Gate};
use crate::api::{
    body, deliveries, event_types, events, off_workers, ops, query, test_send, webhooks, with_body,
    with_body_off, ApiState, BodyKind,
};
use crate::config::Scope;

/// One operation the API serves.
pub struct Route {
    /// The handler's `#[utoipa::path]`: method, path template, operation and the schemas it uses.
    spec: fn() -> RouteSpec,
    /// Its method and path alone (cheap: `allowed_methods` reads them for every unrouted request).
    methods: fn() -> Vec<HttpMethod>,
    template: fn() -> String,
    /// Who may call it; the document's security, scope and 401/403/503 answers follow from it.
    pub access: Access,
    /// The filter that answers once method and path matched, given that match.
    serve: fn(ApiState, BoxedFilter<(PathParams,)>) -> BoxedFilter<(Response,)>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, readiness, metrics and the OpenAPI document.
    Open,
    /// A bearer key with this scope, behind this tenant gate (as the handler's `authorize`).
    Key(Scope, Gate),
}

/// What a handler's `#[utoipa::path]` says about it.
pub struct RouteSpec {
    /// The HTTP method (every route has exactly one).
    pub method: HttpMethod,
    /// The path template in OpenAPI syntax, `{name}` for a parameter segment.
    pub path: String,
    /// The OpenAPI operation, as generated (before [`Access`] is applied).
    pub operation: Operation,
    /// Every schema the operation's bodies refer to, by component name.
    pub schemas: Vec<(String, RefOr<Schema>)>,
}

/// The `{…}` segments of a matched request path, by name.
#[derive(Debug, Default, Clone)]
pub struct PathParams(Vec<(String, String)>);

impl PathParams {
    /// The segment matched by `{name}`. Every route asks only for names its template has
    /// (the integration test calls every route); an absent name reads as an empty segment,
    /// which no id is, so it would answer 404 rather than panic.
    pub fn get(&self, name: &str) -> String {
        debug_assert!(self.0.iter().any(|(key, _)| key == name), "no {{{name}}} in this route's path");
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone()).unwrap_or_default()
    }
}

impl Route {
    /// A route whose handler carries `#[utoipa::path]` (its generated `__path_<handler>` type).
    const fn of<P: Describe>(
        access: Access,
        serve: fn(ApiState, BoxedFilter<(PathParams,)>) -> BoxedFilter<(Response,)>,
    ) -> Route {
        Route { spec: spec::<P>, methods: P::methods, template: P::path, access, serve }
    }

    /// What the handler's `#[utoipa::path]` says (builds the whole operation: for the document).
    pub fn spec(&self) -> RouteSpec {
        (self.spec)()
    }

    /// The HTTP method.
    pub fn method(&self) -> Method {
        match (self.methods)().first().cloned().unwrap_or(HttpMethod::Get) {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Delete => Method::DELETE,
            HttpMethod::Options => Method::OPTIONS,
            HttpMethod::Head => Method::HEAD,
            HttpMethod::Patch => Method::PATCH,
            HttpMethod::Trace => Method::TRACE,
        }
    }

    /// The path template in OpenAPI syntax (`/v1/webhooks/{id}`).
    pub fn path(&self) -> String {
        (self.template)()
    }

    /// The filter serving this route: its method and path, then its handler.
    fn filter(&self, state: ApiState) -> BoxedFilter<(Response,)> {
        let matched = path_filter(&self.path()).and(method_filter(self.method())).boxed();
        (self.serve)(state, matched)
    }
}

/// The parts of a handler's `#[utoipa::path]`. Like utoipa's own router crates, this reads
/// the tags and the schemas through `utoipa::__dev` (the `OpenApi` derive does the same).
fn spec<P: Describe>() -> RouteSpec {
    let methods = P::methods();
    assert_eq!(methods.len(), 1, "{}: one method per route", P::path());
    let mut operation = P::operation();
    operation.tags = Some(P::tags().into_iter().map(str::to_owned).collect());
    let mut schemas = Vec::new();
    P::schemas(&mut schemas);
    RouteSpec { method: methods[0].clone(), path: P::path(), operation, schemas }
}

/// What `#[utoipa::path]` implements on a handler's `__path_<handler>` type.
trait Describe: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t> {}

impl<P: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t>> Describe for P {}

/// Matches a path template as `warp::path!` would: each literal segment exactly, each `{name}`
/// one non-empty segment (kept undecoded, as `warp::path::param`), then the end of the path.
fn path_filter(template: &str) -> BoxedFilter<(PathParams,)> {
    let mut filter = warp::any().map(PathParams::default).boxed();
    for segment in template.trim_start_matches('/').split('/') {
        filter = match segment.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')) {
            Some(name) => {
                let name = name.to_owned();
                filter
                    .and(warp::path::param::<String>())
                    .map(move |mut params: PathParams, value: String| {
                        params.0.push((name.clone(), value));
                        params
                    })
                    .boxed()
            }
            None => filter.and(warp::path(segment.to_owned())).boxed(),
        };
    }
    filter.and(warp::path::end()).boxed()
}

fn method_filter(method: Method) -> BoxedFilter<()> {
    match method {
        Method::GET => warp::get().boxed(),
        Method::POST => warp::post().boxed(),
        Method::PUT => warp::put().boxed(),
        Method::DELETE => warp::delete().boxed(),
        Method::PATCH => warp::patch().boxed(),
        Method::HEAD => warp::head().boxed(),
        Method::OPTIONS => warp::options().boxed(),
        other => warp::method()
            .and_then(move |got: Method| {
                let matches = got == other;
                async move {
                    if matches {
                        Ok(())
                    } else {
                        Err(warp::reject::not_found())
                    }
                }
            })
            .untuple_one()
            .boxed(),
    }
}

/// Every route, joined into one filter (each one boxed: see ARCHITECTURE.md, "Build time").
pub(super) fn router(state: &ApiState) -> Option<BoxedFilter<(Response,)>> {
    ROUTES.iter().map(|route| route.filter(state.clone())).reduce(|all, next| all.or(next).unify().boxed())
}

/// The methods [`ROUTES`] serves at `path` (a request path; a `{…}` segment of a template
/// matches any one non-empty segment), in table order; empty for a path that is not ours.
pub fn allowed_methods(path: &str) -> Vec<Method> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut methods = Vec::new();
    for route in ROUTES {
        let template = route.path();
        let pattern: Vec<&str> = template.split('/').collect();
        let matches = pattern.len() == segments.len()
            && pattern.iter().zip(&segments).all(|(want, got)| {
                if want.starts_with('{') {
                    !got.is_empty()
                } else {
                    want == got
                }
            });
        let method = route.method();
        if matches && !methods.contains(&method) {
            methods.push(method);
        }
    }
    methods
}

fn with_state(state: &ApiState) -> BoxedFilter<(ApiState,)> {
    let state = state.clone();
    warp::any().map(move || state.clone()).boxed()
}

fn headers() -> BoxedFilter<(HeaderMap,)> {
    warp::header::headers_cloned().boxed()
}

use Access::{Key, Open};
use Gate::{Events, Webhooks};
use Scope::{EventsWrite, WebhooksRead, WebhooksWrite};

/// Every route the API serves, in the order the router tries them and the document lists them.
pub const ROUTES: &[Route] = &[
    Route::of::<webhooks::__path_create>(Key(WebhooksWrite, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(body(state, BodyKind::Subscription))
            .then(|_, state, headers, body| {
                with_body_off(body, move |body| webhooks::create(state, headers, body))
            })
            .boxed()
    }),
    Route::of::<webhooks::__path_list>(Key(WebhooksRead, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(query())
            .then(|_, state, headers, query| off_workers(webhooks::list(state, headers, query)))
            .boxed()
    }),
    Route::of::<webhooks::__path_get>(Key(WebhooksRead, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .then(|path: PathParams, state, headers| {
                off_workers(webhooks::get(state, headers, path.get("id")))
            })
            .boxed()
    }),
    Route::of::<webhooks::__path_update>(Key(WebhooksWrite, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(body(state, BodyKind::Subscription))
            .then(|path: PathParams, state, headers, body| {
                with_body_off(body, move |body| webhooks::update(state, headers, path.get("id"), body))
            })
            .boxed()
    }),
    Route::of::<webhooks::__path_delete>(Key(WebhooksWrite, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .then(|path: PathParams, state, headers| {
                off_workers(webhooks::delete(state, headers, path.get("id")))
            })
            .boxed()
    }),
    Route::of::<webhooks::__path_rotate_secret>(Key(WebhooksWrite, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(body(state, BodyKind::Subscription))
            .then(|path: PathParams, state, headers, body| {
                with_body_off(body, move |body| webhooks::rotate_secret(state, headers, path.get("id"), body))
            })
            .boxed()
    }),
    Route::of::<test_send::__path_test>(Key(WebhooksWrite, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .then(|path: PathParams, state, headers| {
                off_workers(test_send::test(state, headers, path.get("id")))
            })
            .boxed()
    }),
    Route::of::<deliveries::__path_list>(Key(WebhooksRead, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(query())
            .then(|path: PathParams, state, headers, query| {
                off_workers(deliveries::list(state, headers, path.get("id"), query))
            })
            .boxed()
    }),
    Route::of::<deliveries::__path_get>(Key(WebhooksRead, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .then(|path: PathParams, state, headers| {
                off_workers(deliveries::get(state, headers, path.get("id"), path.get("deliveryId")))
            })
            .boxed()
    }),
    Route::of::<deliveries::__path_redeliver>(Key(WebhooksWrite, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .then(|path: PathParams, state, headers| {
                off_workers(deliveries::redeliver(state, headers, path.get("id"), path.get("deliveryId")))
            })
            .boxed()
    }),
    Route::of::<deliveries::__path_recover>(Key(WebhooksWrite, Webhooks), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(body(state, BodyKind::Subscription))
            .then(|path: PathParams, state, headers, body| {
                with_body_off(body, move |body| deliveries::recover(state, headers, path.get("id"), body))
            })
            .boxed()
    }),
    Route::of::<crate::portal::link::__path_create>(Key(WebhooksWrite, Webhooks), |state, matched| {
        crate::portal::Portal::new(state).session_route(matched)
    }),
    Route::of::<events::__path_publish>(Key(EventsWrite, Events), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(body(state, BodyKind::Event))
            .then(|_, state, headers, body| {
                with_body(body, move |body| events::publish(state, headers, body))
            })
            .boxed()
    }),
    Route::of::<events::__path_publish_batch>(Key(EventsWrite, Events), |state, matched| {
        matched
            .and(with_state(&state))
            .and(headers())
            .and(body(state, BodyKind::Event))
            .then(|_, state, headers, body| {
                with_body(body, move |body| events::publish_batch(state, headers, body))
            })
            .boxed()
    }),
    Route::of::<event_types::__path_list>(Key(WebhooksRead, Webhooks), |state, matched| {
        // Read from the config in force: no storage call, so no blocking pool.
        matched
            .and(with_state(&state))
            .and(headers())
            .and(query())
            .map(|_, state, headers, query| respond(event_types::list(state, headers, query)))
            .boxed()
    }),
    Route::of::<ops::__path_openapi>(Open, |state, matched| {
        matched.and(with_state(&state)).map(|_, state| ops::openapi(state)).boxed()
    }),
    Route::of::<ops::__path_healthz>(Open, |state, matched| {
        matched.and(with_state(&state)).map(|_, state| ops::healthz(state)).boxed()
    }),
    Route::of::<ops::__path_readyz>(Open, |state, matched| {
        matched.and(with_state(&state)).map(|_, state| ops::readyz(state)).boxed()
    }),
    Route::of::<ops::__path_metrics>(Open, |state, matched| {
        matched
            .and(with_state(&state))
            .then(|_, state| off_workers(async move { Ok(ops::metrics(state)) }))
            .boxed()
    }),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_method() {
        for route in ROUTES {
            assert_eq!((route.methods)().len(), 1, "{}", route.path());
        }
    }

    #[test]
    fn every_route_is_listed_once() {
        let mut seen = Vec::new();
        for route in ROUTES {
            let key = (route.method(), route.path());
            assert!(!seen.contains(&key), "{key:?} is listed twice");
            seen.push(key);
        }
    }

    #[test]
    fn allowed_methods_follow_the_table() {
        assert_eq!(allowed_methods("/v1/webhooks"), [Method::POST, Method::GET]);
        assert_eq!(allowed_methods("/v1/webhooks/wh_x"), [Method::GET, Method::PATCH, Method::DELETE]);
        assert_eq!(allowed_methods("/v1/webhooks/wh_x/deliveries/dlv_y/redeliver"), [Method::POST]);
        assert_eq!(allowed_methods("/v1/webhooks/wh_x/test"), [Method::POST]);
        assert_eq!(allowed_methods("/v1/webhooks/wh_x/recover"), [Method::POST]);
        assert!(allowed_methods("/v1/webhooks//deliveries").is_empty());
        assert!(allowed_methods("/v1/nothing").is_empty());
    }
}
