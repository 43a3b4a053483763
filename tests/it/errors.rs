//! Every error row of SPEC.md's table for the subscriptions API: exact status, `error.code`, a
//! message naming the field or scope where the spec says so, the exact `{"error": {"code",
//! "message"}}` shape, and stored data left untouched by every refused request.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// A well-formed subscription id that exists nowhere.
const UNKNOWN_ID: &str = "wh_01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// Asserts `reply` is exactly `{"error": {"code": code, "message": "..."}}` with `status`, and
/// that the message contains each of `names`.
fn check(what: &str, reply: &Reply, status: u16, code: &str, names: &[&str]) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{what}: content-type {content_type:?}");
    let body: Value = serde_json::from_str(&reply.text)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", reply.text));
    let keys = |value: &Value| -> BTreeSet<String> {
        value.as_object().map(|object| object.keys().cloned().collect()).unwrap_or_default()
    };
    assert_eq!(keys(&body), BTreeSet::from(["error".to_owned()]), "{what}: {body}");
    assert_eq!(
        keys(&body["error"]),
        BTreeSet::from(["code".to_owned(), "message".to_owned()]),
        "{what}: {body}"
    );
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let message =
        body["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: message is not a string"));
    assert!(message.len() > 5, "{what}: the message is a sentence: {message:?}");
    for name in names {
        assert!(message.contains(name), "{what}: the message should name {name:?}: {message:?}");
    }
    if status == 401 {
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{what}");
    }
}

/// Sends `body` as JSON with acme's full key.
fn json_call(daemon: &TestDaemon, method: &str, path: &str, body: &[u8]) -> Reply {
    let auth = format!("Bearer {ACME_KEY}");
    send(
        method,
        &daemon.url(path),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(body),
    )
}

/// A valid create body with `changes` applied; a `null` change removes the field.
fn create_body(changes: Value) -> Value {
    let mut body =
        json!({ "name": "valid", "url": "https://example.com/hook", "events": ["message.received"] });
    for (field, value) in changes.as_object().unwrap() {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value.clone();
        }
    }
    body
}

/// What a tenant's data looks like from outside: the list and each stored secret.
fn snapshot(daemon: &TestDaemon) -> Vec<(Value, Vec<String>)> {
    [(ACME_KEY, "acme"), (GLOBEX_KEY, "globex"), (TINY_KEY, "tiny")]
        .iter()
        .map(|(key, tenant)| {
            let reply = daemon.call("GET", "/v1/webhooks", key, None);
            assert_eq!(reply.status, 200, "{}", reply.text);
            let list = reply.json();
            let secrets = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let id = s["id"].as_str().unwrap();
                    let stored = daemon.stored(tenant, id).unwrap();
                    let retired = stored
                        .retired_secret
                        .map(|retired| (retired.secret.expose().to_owned(), retired.valid_until));
                    format!("{} {retired:?}", stored.secret.expose())
                })
                .collect();
            (list, secrets)
        })
        .collect()
}

/// A daemon with a few subscriptions in place; returns it, acme's first id and the snapshot.
fn seeded(setup: Setup) -> (TestDaemon, String, Vec<(Value, Vec<String>)>) {
    let daemon = TestDaemon::with(setup);
    let body = json!({
        "name": "existing",
        "url": "https://example.com/hook",
        "events": ["message.received"],
        "headers": { "X-Existing": "1" }
    });
    let id = daemon.create_subscription(ACME_KEY, body.clone())["id"].as_str().unwrap().to_owned();
    daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "second", "url": "https://example.org/", "events": ["sla.breached"] }),
    );
    daemon.create_subscription(GLOBEX_KEY, body.clone());
    daemon.create_subscription(TINY_KEY, body);
    let before = snapshot(&daemon);
    (daemon, id, before)
}

fn assert_intact(daemon: &TestDaemon, before: &[(Value, Vec<String>)]) {
    assert_eq!(snapshot(daemon), before, "a refused request changed stored data");
}

#[test]
fn bad_create_and_patch_bodies_are_400_naming_the_field() {
    let (daemon, id, before) = seeded(Setup::default());
    let one = format!("/v1/webhooks/{id}");

    // Not JSON, or not one JSON object.
    let raw: [(&str, &[u8]); 9] = [
        ("truncated JSON", br#"{"name": "x""#),
        ("not JSON at all", b"name=x&url=y"),
        ("trailing garbage", br#"{"name": "x"} {"#),
        ("single quotes", b"{'name': 'x'}"),
        ("an empty array", b"[]"),
        ("an array of field values", br#"["renamed", "https://example.com/", ["sla.breached"]]"#),
        ("a string", br#""hello""#),
        ("null", b"null"),
        ("empty body", b""),
    ];
    for (what, body) in raw {
        check(what, &json_call(&daemon, "POST", "/v1/webhooks", body), 400, "validation_failed", &[]);
        check(what, &json_call(&daemon, "PATCH", &one, body), 400, "validation_failed", &[]);
    }
    let named: [(&str, &[u8], &str); 6] = [
        ("array body", b" [] ", "JSON object"),
        ("number body", b"42", "JSON object"),
        ("syntax error", br#"{"name": "#, "JSON"),
        (
            "field twice",
            br#"{"name": "a", "name": "b", "url": "https://example.com/", "events": ["sla.breached"]}"#,
            "name",
        ),
        ("integer beyond u64", br#"{"maxRetries": 99999999999999999999}"#, "maxRetries"),
        ("invalid UTF-8", b"{\"name\": \"\xff\"}", "JSON"),
    ];
    for (what, body, name) in named {
        check(what, &json_call(&daemon, "POST", "/v1/webhooks", body), 400, "validation_failed", &[name]);
    }

    let long_name = "n".repeat(101);
    let many_events: Vec<&str> = ["message.received"; 51].to_vec();
    let many_headers: serde_json::Map<String, Value> =
        (0..21).map(|n| (format!("X-H{n}"), json!("v"))).collect();
    let long_url = format!("https://example.com/{}", "a".repeat(2049));
    // (what, changes to a valid create body, words the message must contain)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        // Missing required fields.
        ("missing name", json!({ "name": null }), vec!["name"]),
        ("missing url", json!({ "url": null }), vec!["url"]),
        ("missing events", json!({ "events": null }), vec!["events"]),
        // Unknown fields, including ones that exist only in answers.
        ("unknown field", json!({ "colour": "red" }), vec!["colour"]),
        ("snake_case field", json!({ "max_retries": 3 }), vec!["max_retries"]),
        ("client-chosen secret", json!({ "secret": "whsec_AAAA" }), vec!["secret"]),
        ("client-chosen id", json!({ "id": UNKNOWN_ID }), vec!["id"]),
        ("read-only counter", json!({ "consecutiveFailures": 0 }), vec!["consecutiveFailures"]),
        // Wrong types.
        ("name number", json!({ "name": 5 }), vec!["name"]),
        ("url object", json!({ "url": { "href": "https://example.com" } }), vec!["url"]),
        ("events string", json!({ "events": "message.received" }), vec!["events"]),
        ("events of numbers", json!({ "events": [1] }), vec!["events"]),
        ("headers array", json!({ "headers": ["X-A: 1"] }), vec!["headers"]),
        ("header value number", json!({ "headers": { "X-A": 1 } }), vec!["headers", "X-A"]),
        ("maxRetries string", json!({ "maxRetries": "5" }), vec!["maxRetries"]),
        ("maxRetries float", json!({ "maxRetries": 2.5 }), vec!["maxRetries"]),
        ("retryDelaySeconds huge", json!({ "retryDelaySeconds": 1e30 }), vec!["retryDelaySeconds"]),
        ("isActive string", json!({ "isActive": "yes" }), vec!["isActive"]),
        ("isPaused number", json!({ "isPaused": 1 }), vec!["isPaused"]),
        // name: 1-100 characters, not blank.
        ("empty name", json!({ "name": "" }), vec!["name"]),
        ("blank name", json!({ "name": "   \t " }), vec!["name"]),
        ("101-character name", json!({ "name": long_name }), vec!["name"]),
        ("name with a newline", json!({ "name": "two\nlines" }), vec!["name"]),
        ("name of zero-width spaces", json!({ "name": "\u{200B}\u{200B}" }), vec!["name", "visible"]),
        ("name of a BOM and a space", json!({ "name": "\u{FEFF} " }), vec!["name", "visible"]),
        ("header value not ASCII", json!({ "headers": { "X-A": "café" } }), vec!["headers.X-A", "RFC 9110"]),
        ("header value with DEL", json!({ "headers": { "X-A": "a\u{7f}" } }), vec!["headers.X-A"]),
        ("header value with a tab", json!({ "headers": { "X-A": "a\tb" } }), vec!["headers.X-A"]),
        ("header value with a trailing space", json!({ "headers": { "X-A": "a " } }), vec!["headers.X-A"]),
        ("header value with a leading space", json!({ "headers": { "X-A": " a" } }), vec!["headers.X-A"]),
        // url: absolute, http(s), a host, no credentials, no fragment, not too long.
        ("relative url", json!({ "url": "/hook" }), vec!["url"]),
        ("not a url", json!({ "url": "not a url" }), vec!["url"]),
        ("empty url", json!({ "url": "" }), vec!["url"]),
        ("ftp url", json!({ "url": "ftp://example.com/hook" }), vec!["url", "ftp"]),
        ("file url", json!({ "url": "file:///etc/passwd" }), vec!["url"]),
        ("javascript url", json!({ "url": "javascript:alert(1)" }), vec!["url"]),
        (
            "url with user and password",
            json!({ "url": "https://user:pw@example.com/" }),
            vec!["url", "password"],
        ),
        ("url with user", json!({ "url": "https://user@example.com/" }), vec!["url"]),
        ("url with fragment", json!({ "url": "https://example.com/#x" }), vec!["url", "fragment"]),
        ("url without host", json!({ "url": "https://" }), vec!["url"]),
        ("overlong url", json!({ "url": long_url }), vec!["url"]),
        // events: 1-50 known types, no duplicates.
        ("no events", json!({ "events": [] }), vec!["events"]),
        ("51 events", json!({ "events": many_events }), vec!["events"]),
        ("unknown event", json!({ "events": ["message.deleted"] }), vec!["events", "message.deleted"]),
        ("event in wrong case", json!({ "events": ["Message.Received"] }), vec!["events"]),
        (
            "duplicate event",
            json!({ "events": ["sla.breached", "sla.breached"] }),
            vec!["events", "sla.breached"],
        ),
        // headers: at most 20, valid names, no CR/LF, none the daemon sets itself.
        ("21 headers", json!({ "headers": many_headers }), vec!["headers", "20"]),
        ("header name with space", json!({ "headers": { "X Bad": "1" } }), vec!["headers", "X Bad"]),
        ("header name with colon", json!({ "headers": { "X-Bad:": "1" } }), vec!["headers"]),
        ("empty header name", json!({ "headers": { "": "1" } }), vec!["headers"]),
        ("non-ASCII header name", json!({ "headers": { "X-Ünicode": "1" } }), vec!["headers"]),
        (
            "CRLF in header value",
            json!({ "headers": { "X-A": "1\r\nX-Injected: 1" } }),
            vec!["headers", "X-A"],
        ),
        ("LF in header value", json!({ "headers": { "X-A": "1\nX-Injected: 1" } }), vec!["headers", "X-A"]),
        ("CR in header value", json!({ "headers": { "X-A": "1\r" } }), vec!["headers", "X-A"]),
        ("NUL in header value", json!({ "headers": { "X-A": "1\u{0}" } }), vec!["headers", "X-A"]),
        ("header twice", json!({ "headers": { "X-A": "1", "x-a": "2" } }), vec!["headers"]),
        (
            "reserved X-Atender-Signature",
            json!({ "headers": { "X-Atender-Signature": "forged" } }),
            vec!["headers", "X-Atender-Signature"],
        ),
        (
            "reserved x-atender-event",
            json!({ "headers": { "x-atender-event": "x" } }),
            vec!["headers", "x-atender-event"],
        ),
        ("reserved X-Atender-Delivery", json!({ "headers": { "X-Atender-Delivery": "x" } }), vec!["headers"]),
        ("reserved webhook-id", json!({ "headers": { "webhook-id": "x" } }), vec!["headers", "webhook-id"]),
        (
            "reserved Webhook-Signature",
            json!({ "headers": { "Webhook-Signature": "v1,x" } }),
            vec!["headers"],
        ),
        ("reserved webhook-timestamp", json!({ "headers": { "webhook-timestamp": "1" } }), vec!["headers"]),
        (
            "reserved Content-Type",
            json!({ "headers": { "Content-Type": "text/plain" } }),
            vec!["headers", "Content-Type"],
        ),
        ("reserved content-length", json!({ "headers": { "content-length": "1" } }), vec!["headers"]),
        ("reserved Host", json!({ "headers": { "Host": "evil.example" } }), vec!["headers"]),
        ("reserved User-Agent", json!({ "headers": { "User-Agent": "me" } }), vec!["headers"]),
        (
            "reserved Transfer-Encoding",
            json!({ "headers": { "Transfer-Encoding": "chunked" } }),
            vec!["headers"],
        ),
        // maxRetries 0-20, retryDelaySeconds 1-86400.
        ("maxRetries -1", json!({ "maxRetries": -1 }), vec!["maxRetries"]),
        ("maxRetries 21", json!({ "maxRetries": 21 }), vec!["maxRetries"]),
        ("retryDelaySeconds 0", json!({ "retryDelaySeconds": 0 }), vec!["retryDelaySeconds"]),
        ("retryDelaySeconds 86401", json!({ "retryDelaySeconds": 86401 }), vec!["retryDelaySeconds"]),
    ];
    for (what, changes, names) in &cases {
        let body = create_body(changes.clone());
        let reply = daemon.call("POST", "/v1/webhooks", ACME_KEY, Some(body));
        check(&format!("create, {what}"), &reply, 400, "validation_failed", names);
        // PATCH takes the same fields under the same rules (all optional there).
        let missing = matches!(*what, "missing name" | "missing url" | "missing events");
        if !missing {
            let patch = changes.clone();
            let reply = daemon.call("PATCH", &one, ACME_KEY, Some(patch));
            check(&format!("patch, {what}"), &reply, 400, "validation_failed", names);
        }
    }

    // null is not a value of any field: it neither passes as "absent" nor clears anything.
    for field in
        ["name", "url", "events", "headers", "maxRetries", "retryDelaySeconds", "isActive", "isPaused"]
    {
        let reply = json_call(&daemon, "PATCH", &one, format!(r#"{{"{field}": null}}"#).as_bytes());
        check(&format!("patch, {field} null"), &reply, 400, "validation_failed", &[field]);
    }
    for field in ["headers", "maxRetries", "retryDelaySeconds", "isActive", "isPaused"] {
        let mut body = create_body(json!({}));
        body[field] = Value::Null;
        let reply = daemon.call("POST", "/v1/webhooks", ACME_KEY, Some(body));
        check(&format!("create, {field} null"), &reply, 400, "validation_failed", &[field]);
    }

    // One bad field in an otherwise good PATCH changes nothing.
    let mixed = json!({ "name": "renamed", "isPaused": true, "maxRetries": 99 });
    check(
        "mixed patch",
        &daemon.call("PATCH", &one, ACME_KEY, Some(mixed)),
        400,
        "validation_failed",
        &["maxRetries"],
    );

    // rotate-secret's optional body.
    let rotate = format!("{one}/rotate-secret");
    for (what, body, names) in [
        ("grace negative", &br#"{"graceSeconds": -1}"#[..], &["graceSeconds"][..]),
        ("grace over a day", br#"{"graceSeconds": 86401}"#, &["graceSeconds"]),
        ("grace string", br#"{"graceSeconds": "60"}"#, &["graceSeconds"]),
        ("grace null", br#"{"graceSeconds": null}"#, &["graceSeconds"]),
        ("rotate unknown field", br#"{"grace": 60}"#, &["grace"]),
        ("rotate bad JSON", br#"{"graceSeconds": "#, &["JSON"]),
        ("rotate array", b"[60]", &[]),
    ] {
        check(what, &json_call(&daemon, "POST", &rotate, body), 400, "validation_failed", names);
    }
    assert_intact(&daemon, &before);

    // The edges of every range are accepted.
    let twenty: serde_json::Map<String, Value> = (0..20).map(|n| (format!("X-H{n}"), json!("v"))).collect();
    for edge in [
        json!({ "name": "x" }),
        json!({ "name": "é".repeat(100) }),
        json!({ "headers": twenty }),
        json!({ "headers": { "X-Long": "v".repeat(4096), "Authorization": "Bearer t" } }),
        json!({ "events": ["message.received", "message.sent", "conversation.created", "conversation.resolved", "sla.breached"] }),
        json!({ "maxRetries": 0, "retryDelaySeconds": 1 }),
        json!({ "maxRetries": 20, "retryDelaySeconds": 86400 }),
    ] {
        let reply = daemon.call("PATCH", &one, ACME_KEY, Some(edge.clone()));
        assert_eq!(reply.status, 200, "{edge}: {}", reply.text);
    }
}

#[test]
fn private_and_localhost_targets_are_refused_when_the_server_forbids_them() {
    let (daemon, id, before) = seeded(Setup { allow_private_targets: false, ..Default::default() });
    let one = format!("/v1/webhooks/{id}");
    for url in [
        "https://127.0.0.1/hook",
        "https://127.0.0.1:8443/hook",
        "http://127.1/",
        "https://2130706433/",
        "https://0x7f.0.0.1/",
        "https://0.0.0.0/",
        "https://10.0.0.1/",
        "https://172.16.5.4/",
        "https://192.168.1.10/",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/",
        "https://224.0.0.1/",
        "https://[::1]/",
        "https://[::]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://[fe80::1]/",
        "https://[fd00::1]/",
        "https://localhost/",
        "https://LOCALHOST:8080/",
        "https://localhost./hook",
        "https://api.localhost/",
        "https://localhost.localdomain/",
    ] {
        let reply = daemon.call("POST", "/v1/webhooks", ACME_KEY, Some(create_body(json!({ "url": url }))));
        check(&format!("create {url}"), &reply, 400, "validation_failed", &["url"]);
        let reply = daemon.call("PATCH", &one, ACME_KEY, Some(json!({ "url": url })));
        check(&format!("patch {url}"), &reply, 400, "validation_failed", &["url"]);
    }
    assert_intact(&daemon, &before);

    // Public literal addresses and names (not resolved at creation) are accepted.
    for url in [
        "https://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]/",
        "https://no-such-host.invalid/",
        "https://localhost.example.com/",
    ] {
        let reply = daemon.call("POST", "/v1/webhooks", ACME_KEY, Some(create_body(json!({ "url": url }))));
        assert_eq!(reply.status, 201, "{url}: {}", reply.text);
    }
}

#[test]
fn bad_list_queries_are_400_naming_the_parameter() {
    let (daemon, _, before) = seeded(Setup::default());
    for (query, names) in [
        ("limit=0", &["limit"][..]),
        ("limit=101", &["limit"]),
        ("limit=-1", &["limit"]),
        ("limit=abc", &["limit"]),
        ("limit=", &["limit"]),
        ("limit=1.5", &["limit"]),
        ("limit=99999999999999999999999", &["limit"]),
        ("cursor=nope", &["cursor"]),
        ("cursor=", &["cursor"]),
        ("cursor=evt_01ARZ3NDEKTSV4RRFFQ69G5FAV", &["cursor"]),
        ("cursor=wh_01ARZ3NDEKTSV4RRFFQ69G5FA", &["cursor"]),
        ("page=2", &["page"]),
        ("Limit=5", &["Limit"]),
        ("limit=5&offset=10", &["offset"]),
    ] {
        let reply = daemon.call("GET", &format!("/v1/webhooks?{query}"), ACME_KEY, None);
        check(query, &reply, 400, "validation_failed", names);
    }
    assert_intact(&daemon, &before);
}

#[test]
fn missing_malformed_and_unknown_keys_are_401_with_www_authenticate() {
    let (daemon, id, before) = seeded(Setup::default());
    let endpoints = [
        ("POST", "/v1/webhooks".to_owned()),
        ("GET", "/v1/webhooks".to_owned()),
        ("GET", format!("/v1/webhooks/{id}")),
        ("PATCH", format!("/v1/webhooks/{id}")),
        ("DELETE", format!("/v1/webhooks/{id}")),
        ("POST", format!("/v1/webhooks/{id}/rotate-secret")),
    ];
    let body = serde_json::to_vec(&create_body(json!({}))).unwrap();
    let bad_authorizations = [
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {ACME_KEY}")),
        Some(format!("Token {ACME_KEY}")),
        Some(ACME_KEY.to_owned()),
        Some(format!("Bearer{ACME_KEY}")),
        Some("Bearer sa_live_unknownunknownunknownunknownunkn99".to_owned()),
        Some(format!("Bearer {}", ACME_KEY.to_ascii_uppercase())),
        Some(format!("Bearer {}", &ACME_KEY[..ACME_KEY.len() - 1])),
        Some(format!("Bearer {ACME_KEY}x")),
        Some(format!("Bearer {ACME_KEY} {ACME_KEY}")),
    ];
    for (method, path) in &endpoints {
        for authorization in &bad_authorizations {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(value) = authorization {
                headers.push(("Authorization", value));
            }
            let with_body = matches!(*method, "POST" | "PATCH");
            let reply = send(method, &daemon.url(path), &headers, with_body.then_some(body.as_slice()));
            check(&format!("{method} {path} with {authorization:?}"), &reply, 401, "unauthorized", &[]);
            assert!(!reply.text.contains(ACME_KEY), "the key is never echoed");
        }
    }
    // Authentication comes before reading the body: a bad body without a key is still 401.
    let reply =
        send("POST", &daemon.url("/v1/webhooks"), &[("Content-Type", "application/json")], Some(b"{oops"));
    check("no key, bad JSON", &reply, 401, "unauthorized", &[]);
    let reply = send("POST", &daemon.url("/v1/webhooks"), &[("Content-Type", "text/plain")], Some(b"hello"));
    check("no key, text body", &reply, 401, "unauthorized", &[]);
    assert_intact(&daemon, &before);

    // The scheme is case-insensitive (RFC 9110), so these are accepted.
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {ACME_KEY}");
        let reply = send("GET", &daemon.url("/v1/webhooks"), &[("Authorization", &auth)], None);
        assert_eq!(reply.status, 200, "{scheme}: {}", reply.text);
    }
}

#[test]
fn a_missing_scope_and_a_disabled_tenant_are_different_403s() {
    let (daemon, id, before) = seeded(Setup::default());
    // The frozen tenant cannot create, so its "own" id is simply a well-formed unknown one.
    let frozen_id = UNKNOWN_ID;
    let body = create_body(json!({}));
    let writes = |id: &str| {
        [
            ("POST", "/v1/webhooks".to_owned(), Some(body.clone())),
            ("PATCH", format!("/v1/webhooks/{id}"), Some(json!({ "name": "x" }))),
            ("DELETE", format!("/v1/webhooks/{id}"), None),
            ("POST", format!("/v1/webhooks/{id}/rotate-secret"), None),
        ]
    };
    let mut scope_message = String::new();
    for (method, path, body) in writes(&id) {
        let reply = daemon.call(method, &path, ACME_READ_KEY, body.clone());
        check(
            &format!("read-only key {method} {path}"),
            &reply,
            403,
            "insufficient_scope",
            &["webhooks:write"],
        );
        scope_message = reply.error_message();
        // A key with only events:write may not write subscriptions either.
        let reply = daemon.call(method, &path, ACME_EVENTS_KEY, body);
        check(&format!("events key {method} {path}"), &reply, 403, "insufficient_scope", &["webhooks:write"]);
    }
    for path in ["/v1/webhooks".to_owned(), format!("/v1/webhooks/{id}")] {
        let reply = daemon.call("GET", &path, ACME_EVENTS_KEY, None);
        check(&format!("events key GET {path}"), &reply, 403, "insufficient_scope", &["webhooks:read"]);
    }
    // The scope is checked before the body: a read-only key with a bad body is still 403.
    let reply = json_call_with(&daemon, ACME_READ_KEY, "POST", "/v1/webhooks", b"{oops");
    check("read-only key, bad JSON", &reply, 403, "insufficient_scope", &["webhooks:write"]);

    let mut disabled_message = String::new();
    let mut all = writes(frozen_id).to_vec();
    all.push(("GET", "/v1/webhooks".to_owned(), None));
    all.push(("GET", format!("/v1/webhooks/{frozen_id}"), None));
    for (method, path, body) in all {
        let reply = daemon.call(method, &path, FROZEN_KEY, body);
        check(
            &format!("frozen tenant {method} {path}"),
            &reply,
            403,
            "webhooks_disabled",
            &["webhooks", "enabled"],
        );
        disabled_message = reply.error_message();
        assert!(!disabled_message.contains("scope"), "{disabled_message}");
    }
    // The guide's troubleshooting: the body tells the two 403s apart.
    assert_ne!(scope_message, disabled_message);
    assert!(scope_message.contains("scope"), "{scope_message}");
    assert_intact(&daemon, &before);
}

fn json_call_with(daemon: &TestDaemon, key: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    let auth = format!("Bearer {key}");
    send(
        method,
        &daemon.url(path),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(body),
    )
}

#[test]
fn unknown_and_malformed_ids_and_unknown_routes_are_404() {
    let (daemon, id, before) = seeded(Setup::default());
    let ids = [
        UNKNOWN_ID.to_owned(),
        "nope".to_owned(),
        "wh_".to_owned(),
        "wh_0".to_owned(),
        format!("{id}0"),
        id[..id.len() - 1].to_owned(),
        id.replacen("wh_", "evt_", 1),
        id.replacen("wh_", "dlv_", 1),
        id.to_ascii_lowercase(),
        "wh_..%2F..%2Fetc".to_owned(),
        "%20".to_owned(),
    ];
    let mut messages = BTreeSet::new();
    for bad in &ids {
        let one = format!("/v1/webhooks/{bad}");
        for (method, path, body) in [
            ("GET", one.clone(), None),
            ("PATCH", one.clone(), Some(json!({ "name": "x" }))),
            ("DELETE", one.clone(), None),
            ("POST", format!("{one}/rotate-secret"), None),
            ("POST", format!("{one}/rotate-secret"), Some(json!({ "graceSeconds": 10 }))),
        ] {
            let reply = daemon.call(method, &path, ACME_KEY, body);
            check(&format!("{method} {path}"), &reply, 404, "not_found", &[]);
            messages.insert(reply.error_message());
        }
    }
    // Unknown, malformed and (in webhooks.rs) foreign ids answer alike.
    assert_eq!(messages.len(), 1, "{messages:?}");

    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v1/nothing-here",
        "/v2/webhooks",
        "/v1/webhook",
        "/v1/Webhooks",
        &format!("/v1/webhooks/{id}/unknown"),
        &format!("/v1/webhooks/{id}/rotate-secret/again"),
        &format!("/v1/webhooks/{id}/rotate_secret"),
    ] {
        for method in ["GET", "POST"] {
            let reply = daemon.call(method, path, ACME_KEY, None);
            check(&format!("{method} {path}"), &reply, 404, "not_found", &[]);
        }
    }
    assert_intact(&daemon, &before);
}

#[test]
fn wrong_methods_are_405() {
    let (daemon, id, before) = seeded(Setup::default());
    let one = format!("/v1/webhooks/{id}");
    let rotate = format!("{one}/rotate-secret");
    for (method, path) in [
        ("PUT", "/v1/webhooks"),
        ("PATCH", "/v1/webhooks"),
        ("DELETE", "/v1/webhooks"),
        ("PUT", one.as_str()),
        ("POST", one.as_str()),
        ("GET", rotate.as_str()),
        ("PUT", rotate.as_str()),
        ("DELETE", rotate.as_str()),
    ] {
        let body = create_body(json!({}));
        let reply = daemon.call(method, path, ACME_KEY, Some(body));
        check(&format!("{method} {path}"), &reply, 405, "method_not_allowed", &[]);
        // RFC 9110 §15.5.6: a 405 lists the methods the resource does accept.
        let allow = reply.header("allow").unwrap_or_default().to_owned();
        let expected = if path == "/v1/webhooks" {
            "POST, GET"
        } else if path == one {
            "GET, PATCH, DELETE"
        } else {
            "POST"
        };
        assert_eq!(allow, expected, "{method} {path}");
    }
    assert_intact(&daemon, &before);
}

/// A create body of exactly `size` bytes: valid JSON padded with trailing whitespace.
fn body_of_size(size: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(&create_body(json!({ "name": "padded" }))).unwrap();
    assert!(body.len() < size);
    body.resize(size, b' ');
    body
}

/// Sends a chunked POST over a raw connection and returns the status line and the body.
fn chunked_post(daemon: &TestDaemon, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ACME_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        daemon.addr
    );
    let mut writer = stream.try_clone().unwrap();
    let body = body.to_vec();
    // The daemon may answer and close before the whole body is sent; writing happens on its
    // own thread so the answer is read regardless, and write errors then are expected.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        for chunk in body.chunks(4096) {
            if writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                || writer.write_all(chunk).is_err()
                || writer.write_all(b"\r\n").is_err()
            {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n");
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // Read until the end of the answer (the connection closes) or a reset after it arrived.
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(err) if !answer.is_empty() => {
                let _ = err;
                break;
            }
            Err(err) => panic!("no answer to the chunked POST: {err}"),
        }
    }
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status =
        text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    let (_, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, body.to_owned())
}

#[test]
fn bodies_over_64_kib_are_413() {
    let (daemon, id, before) = seeded(Setup::default());
    let limit = 64 * 1024;
    let over = body_of_size(limit + 1);
    let big = body_of_size(4 * limit);
    let one = format!("/v1/webhooks/{id}");
    let rotate = format!("{one}/rotate-secret");
    for path in ["/v1/webhooks", one.as_str(), rotate.as_str()] {
        let method = if path == one { "PATCH" } else { "POST" };
        for body in [&over, &big] {
            let reply = json_call(&daemon, method, path, body);
            check(
                &format!("{method} {path} with {} bytes", body.len()),
                &reply,
                413,
                "payload_too_large",
                &[],
            );
        }
    }
    // Without a Content-Length (chunked), the limit holds while streaming.
    for body in [&over, &big] {
        let (status, text) = chunked_post(&daemon, "/v1/webhooks", body);
        assert_eq!(status, 413, "chunked {} bytes: {text}", body.len());
        let reply = Reply { status, headers: vec![("content-type".into(), "application/json".into())], text };
        check("chunked", &reply, 413, "payload_too_large", &[]);
    }
    assert_intact(&daemon, &before);

    // Exactly at the limit is accepted, with a Content-Length and chunked.
    let at = body_of_size(limit);
    let reply = json_call(&daemon, "POST", "/v1/webhooks", &at);
    assert_eq!(reply.status, 201, "{}", reply.text);
    let (status, text) = chunked_post(&daemon, "/v1/webhooks", &at);
    assert_eq!(status, 201, "{text}");
}

#[test]
fn non_json_bodies_are_415() {
    let (daemon, id, before) = seeded(Setup::default());
    let auth = format!("Bearer {ACME_KEY}");
    let one = format!("/v1/webhooks/{id}");
    let rotate = format!("{one}/rotate-secret");
    let body = serde_json::to_vec(&create_body(json!({}))).unwrap();
    let patch = br#"{"name": "renamed"}"#.to_vec();
    let grace = br#"{"graceSeconds": 60}"#.to_vec();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/xml"),
        Some("multipart/form-data; boundary=x"),
        Some("json"),
        None,
    ] {
        for (method, path, body) in [
            ("POST", "/v1/webhooks", &body),
            ("PATCH", one.as_str(), &patch),
            ("POST", rotate.as_str(), &grace),
        ] {
            let mut headers = vec![("Authorization", auth.as_str())];
            if let Some(content_type) = content_type {
                headers.push(("Content-Type", content_type));
            }
            let reply = send(method, &daemon.url(path), &headers, Some(body));
            check(
                &format!("{method} {path} as {content_type:?}"),
                &reply,
                415,
                "unsupported_media_type",
                &["application/json"],
            );
        }
    }
    assert_intact(&daemon, &before);

    // JSON media types with parameters or a +json suffix are JSON.
    for content_type in
        ["application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"]
    {
        let headers = [("Authorization", auth.as_str()), ("Content-Type", content_type)];
        let reply = send("PATCH", &daemon.url(&one), &headers, Some(br#"{"name": "typed"}"#));
        assert_eq!(reply.status, 200, "{content_type}: {}", reply.text);
    }
}

#[test]
fn publishing_null_data_is_400_naming_the_field() {
    let (daemon, _, before) = seeded(Setup::default());
    let single = br#"{"event": "message.received", "data": null}"#;
    check(
        "null data",
        &json_call(&daemon, "POST", "/v1/events", single),
        400,
        "validation_failed",
        &["data", "null"],
    );
    let batch =
        br#"{"events": [{"event": "message.received"}, {"event": "message.received", "data": null}]}"#;
    let reply = json_call(&daemon, "POST", "/v1/events/batch", batch);
    check("null data in a batch", &reply, 400, "validation_failed", &["events[1].data"]);
    assert_intact(&daemon, &before);
}
