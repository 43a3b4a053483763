//! The served OpenAPI document against the served router: every route in `api::ROUTES` is in the
//! document, and a real request to each one reaches a handler (no "no such endpoint", no 405)
//! and is answered with a status the document declares for that operation; and schemathesis,
//! with every check, finds nothing against a live daemon; and each route asks for the scope its
//! entry in `ROUTES` names.

use atender_webhooks::api::ROUTES;
use serde_json::Value;

use crate::support::*;

/// Well-formed ids that exist nowhere.
const UNKNOWN_SUBSCRIPTION: &str = "wh_01ARZ3NDEKTSV4RRFFQ69G5FAV";
const UNKNOWN_DELIVERY: &str = "dlv_01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// Whether the router had no route for the request at all.
fn is_unrouted(reply: &Reply) -> bool {
    reply.status == 405 || (reply.status == 404 && reply.error_message() == "no such endpoint")
}

#[test]
fn every_documented_route_is_served() {
    let daemon = TestDaemon::start();
    let reply = daemon.call("GET", "/v1/openapi.json", ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let document = reply.json();
    let catalogue =
        atender_webhooks::Config::parse(atender_webhooks::config::DEVELOPMENT_DEFAULT).unwrap().event_types;
    assert_eq!(document, atender_webhooks::api::openapi::document_for(&catalogue));

    for route in ROUTES {
        let (method, template) = (route.method(), route.path());
        let operation = &document["paths"][&template][method.as_str().to_ascii_lowercase()];
        assert!(operation.is_object(), "{method} {template} is not in the served document");
        let path = template.replace("{id}", UNKNOWN_SUBSCRIPTION).replace("{deliveryId}", UNKNOWN_DELIVERY);
        // A JSON object where the operation takes a body; its fields are missing, so the
        // request ends in a documented 400 or 404 rather than creating anything.
        let body = operation.get("requestBody").map(|_| Value::Object(Default::default()));
        let reply = daemon.call(method.as_str(), &path, ACME_KEY, body);
        assert!(
            !is_unrouted(&reply),
            "{method} {path} is documented but not served: {} {}",
            reply.status,
            reply.text
        );
        let status = reply.status.to_string();
        assert!(
            operation["responses"].get(&status).is_some(),
            "{method} {path} answered {status}, which the document does not declare: {}",
            reply.text
        );
    }
}

#[test]
fn unrouted_requests_are_recognised() {
    // The check above must be able to fail: an unknown path and a wrong method are caught.
    let daemon = TestDaemon::start();
    assert!(is_unrouted(&daemon.call("GET", "/v1/nothing-here", ACME_KEY, None)));
    assert!(is_unrouted(&daemon.call("PUT", "/v1/webhooks", ACME_KEY, None)));
    assert!(!is_unrouted(&daemon.call(
        "GET",
        &format!("/v1/webhooks/{UNKNOWN_SUBSCRIPTION}"),
        ACME_KEY,
        None
    )));
}

#[test]
fn the_served_document_passes_schemathesis_with_every_check() {
    // Several seeds, so the generator's choices vary beyond one run's.
    for seed in ["1", "11", "23"] {
        schemathesis(seed);
    }
}

fn schemathesis(seed: &str) {
    let daemon = TestDaemon::start();
    let work = tempfile::tempdir().unwrap();
    let auth = format!("Authorization: Bearer {ACME_KEY}");
    let config = crate::process::repo_path("tests/schemathesis.toml");
    let output = std::process::Command::new("st")
        .arg("--config-file")
        .arg(&config)
        .args(["run", &daemon.url("/v1/openapi.json"), "--checks", "all", "-H", &auth])
        .args(["--max-examples", "30", "--seed", seed, "--no-color"])
        .current_dir(work.path())
        .output()
        .unwrap_or_else(|err| {
            panic!("schemathesis is needed (`pip install schemathesis`; .ci/run installs it): {err}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis (seed {seed}) found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_route_asks_for_the_scope_the_table_names() {
    // A route's scope is written in its `Access` (which the document states) and in its
    // handler's `authorize` call: a key holding every scope but that one must be refused.
    use atender_webhooks::api::routes::Access;
    use atender_webhooks::config::Scope;
    let daemon = TestDaemon::start();
    for route in ROUTES {
        let (method, template) = (route.method(), route.path());
        let path = template.replace("{id}", UNKNOWN_SUBSCRIPTION).replace("{deliveryId}", UNKNOWN_DELIVERY);
        let Access::Key(scope, _) = route.access else {
            let reply = daemon.call(method.as_str(), &path, "", None);
            assert_ne!(reply.status, 401, "{method} {template} is open but asked for a key");
            continue;
        };
        let key = match scope {
            Scope::WebhooksRead => ACME_EVENTS_KEY,
            Scope::WebhooksWrite | Scope::EventsWrite => ACME_READ_KEY,
        };
        let reply = daemon.call(method.as_str(), &path, key, Some(Value::Object(Default::default())));
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (403, "insufficient_scope"),
            "{method} {template}: {}",
            reply.text
        );
        assert!(reply.error_message().contains(scope.as_str()), "{method} {template}: {}", reply.text);
    }
}
