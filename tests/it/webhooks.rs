//! The subscriptions API on its success paths, as the spec and the user guide promise it: create
//! (every field and default, the secret once), list (newest first, limit/cursor pages), get,
//! partial updates of each field, delete, rotate-secret; the secret never shown again; tenant
//! isolation; persistence across a restart; and the tenant limit under concurrent creates.

use std::collections::BTreeSet;
use std::sync::Barrier;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use atender_webhooks::model::SubscriptionId;

use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

/// Every field of the subscription object, as SPEC.md lists it (and `rateLimitPerSecond`, from
/// issue 11).
const FIELDS: [&str; 20] = [
    "id",
    "name",
    "url",
    "events",
    "headers",
    "maxRetries",
    "retryDelaySeconds",
    "isActive",
    "isPaused",
    "disableReason",
    "disabledAt",
    "consecutiveFailures",
    "lastDeliveryAt",
    "lastDeliveryStatus",
    "lastDeliveryResponseCode",
    "lastDeliveryError",
    "createdAt",
    "updatedAt",
    "rateLimitPerSecond",
    // Listed last: only create answers it.
    "secret",
];

/// The guide's create request, word for word.
fn guide_body() -> Value {
    json!({
        "name": "production-listener",
        "url": "https://your-server.example.com/atender-webhooks",
        "events": ["message.received", "message.sent", "conversation.resolved"]
    })
}

fn keys_of(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap_or_else(|| panic!("not an object: {value}")).keys().cloned().collect()
}

fn field_set(with_secret: bool) -> BTreeSet<String> {
    let count = if with_secret { FIELDS.len() } else { FIELDS.len() - 1 };
    FIELDS[..count].iter().map(|field| field.to_string()).collect()
}

/// Asserts `text` is an RFC 3339 UTC time with seconds precision, like `2026-05-11T09:00:00Z`.
fn assert_time(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("not a time string: {value}"));
    assert_eq!(text.len(), 20, "{text}");
    assert!(text.ends_with('Z'), "{text}");
    humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("{text}: {err}"));
}

/// Asserts `secret` is `whsec_` + standard base64 of 32 bytes.
fn assert_secret(secret: &Value) -> String {
    let secret = secret.as_str().unwrap_or_else(|| panic!("secret is not a string: {secret}"));
    let encoded = secret.strip_prefix("whsec_").unwrap_or_else(|| panic!("{secret} lacks whsec_"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("standard base64");
    assert_eq!(bytes.len(), 32, "{secret}");
    secret.to_owned()
}

/// The object without its `secret`, to compare a create answer with later reads.
fn without_secret(value: &Value) -> Value {
    let mut value = value.clone();
    value.as_object_mut().unwrap().remove("secret");
    value
}

fn list(daemon: &TestDaemon, key: &str, query: &str) -> Value {
    let reply = daemon.call("GET", &format!("/v1/webhooks{query}"), key, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(keys_of(&body), ["data", "nextCursor"].map(String::from).into(), "{body}");
    body
}

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

fn patch(daemon: &TestDaemon, id: &str, body: Value) -> Value {
    patch_with(daemon, ACME_KEY, id, body)
}

fn patch_with(daemon: &TestDaemon, key: &str, id: &str, body: Value) -> Value {
    let reply = daemon.call("PATCH", &format!("/v1/webhooks/{id}"), key, Some(body.clone()));
    assert_eq!(reply.status, 200, "PATCH {body}: {}", reply.text);
    reply.json()
}

#[test]
fn create_answers_every_field_with_its_default_and_the_secret() {
    let daemon = TestDaemon::start();
    let reply = daemon.call("POST", "/v1/webhooks", ACME_KEY, Some(guide_body()));
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(reply.header("content-type").unwrap_or_default().starts_with("application/json"));
    let created = reply.json();
    assert_eq!(keys_of(&created), field_set(true), "{created}");

    let id = created["id"].as_str().unwrap();
    assert!(SubscriptionId::parse(id).is_some(), "{id}");
    assert_eq!(created["name"], "production-listener");
    assert_eq!(created["url"], "https://your-server.example.com/atender-webhooks");
    assert_eq!(created["events"], json!(["message.received", "message.sent", "conversation.resolved"]));
    assert_eq!(created["headers"], json!({}));
    assert_eq!(created["maxRetries"], 5);
    assert_eq!(created["retryDelaySeconds"], 30);
    assert_eq!(created["isActive"], true);
    assert_eq!(created["isPaused"], false);
    for never_yet in
        ["disableReason", "disabledAt", "lastDeliveryAt", "lastDeliveryStatus", "lastDeliveryResponseCode"]
    {
        assert!(created[never_yet].is_null(), "{never_yet}: {created}");
    }
    assert!(created["lastDeliveryError"].is_null());
    assert_eq!(created["consecutiveFailures"], 0);
    assert_time(&created["createdAt"]);
    assert_eq!(created["updatedAt"], created["createdAt"]);
    let secret = assert_secret(&created["secret"]);

    // The stored subscription signs with exactly the secret handed out.
    let stored = daemon.stored("acme", id).unwrap();
    assert_eq!(stored.secret.expose(), secret);
    assert_eq!(stored.tenant_id, "acme");

    // GET answers the same object, minus the secret.
    assert_eq!(daemon.subscription(ACME_KEY, id), without_secret(&created));
    // Two subscriptions never share an id or a secret.
    let second = daemon.create_subscription(ACME_KEY, guide_body());
    assert_ne!(second["id"], created["id"]);
    assert_ne!(second["secret"], created["secret"]);
}

#[test]
fn create_takes_every_optional_field() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({
            "name": "all fields",
            "url": "https://hooks.example.com/in?tenant=acme",
            "events": ["sla.breached"],
            "headers": { "Authorization": "Bearer receiver-token", "X-Team": "support", "X-Empty": "" },
            "maxRetries": 0,
            "retryDelaySeconds": 86400,
            "isActive": false,
            "isPaused": true
        }),
    );
    assert_eq!(keys_of(&created), field_set(true));
    assert_eq!(
        created["headers"],
        json!({ "Authorization": "Bearer receiver-token", "X-Team": "support", "X-Empty": "" })
    );
    // Custom headers keep the order given.
    let names: Vec<&String> = created["headers"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["Authorization", "X-Team", "X-Empty"]);
    assert_eq!(created["url"], "https://hooks.example.com/in?tenant=acme");
    assert_eq!(created["maxRetries"], 0);
    assert_eq!(created["retryDelaySeconds"], 86400);
    assert_eq!(created["isActive"], false);
    assert_eq!(created["isPaused"], true);
    // Created disabled: the reason says it was done by hand.
    assert!(created["disableReason"].as_str().unwrap().contains("isActive"), "{created}");
    assert_time(&created["disabledAt"]);

    let id = created["id"].as_str().unwrap();
    let fetched = daemon.subscription(ACME_KEY, id);
    assert_eq!(fetched, without_secret(&created));

    // The other ends of the ranges.
    let other = daemon.create_subscription(
        ACME_KEY,
        json!({
            "name": "x",
            "url": "http://127.0.0.1:9/hook",
            "events": ["message.received", "message.sent", "conversation.created", "conversation.resolved", "sla.breached"],
            "headers": {},
            "maxRetries": 20,
            "retryDelaySeconds": 1,
            "isActive": true,
            "isPaused": false
        }),
    );
    assert_eq!(other["maxRetries"], 20);
    assert_eq!(other["retryDelaySeconds"], 1);
    assert_eq!(other["events"].as_array().unwrap().len(), 5);
    assert!(other["disableReason"].is_null() && other["disabledAt"].is_null());
}

#[test]
fn get_shows_custom_headers_and_retry_config() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({
            "name": "details",
            "url": "https://example.com/hook",
            "events": ["message.received"],
            "headers": { "X-Api-Key": "k-123" },
            "maxRetries": 7,
            "retryDelaySeconds": 45
        }),
    );
    let id = created["id"].as_str().unwrap();
    // The read-only key may read.
    let reply = daemon.call("GET", &format!("/v1/webhooks/{id}"), ACME_READ_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let fetched = reply.json();
    assert_eq!(keys_of(&fetched), field_set(false));
    assert_eq!(fetched["headers"], json!({ "X-Api-Key": "k-123" }));
    assert_eq!(fetched["maxRetries"], 7);
    assert_eq!(fetched["retryDelaySeconds"], 45);
    assert_eq!(fetched, without_secret(&created));
}

#[test]
fn list_is_newest_first_and_pages_with_limit_and_cursor() {
    let daemon = TestDaemon::start();
    assert_eq!(list(&daemon, ACME_KEY, ""), json!({ "data": [], "nextCursor": null }));

    let mut created = Vec::new();
    for n in 0..7 {
        let body = json!({ "name": format!("sub-{n}"), "url": "https://example.com/hook", "events": ["message.sent"] });
        created.push(without_secret(&daemon.create_subscription(ACME_KEY, body)));
    }
    let newest_first: Vec<Value> = created.iter().rev().cloned().collect();
    let newest_ids: Vec<String> = newest_first.iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();

    // Default limit (50): everything, newest first, full objects, no next page.
    let all = list(&daemon, ACME_KEY, "");
    assert_eq!(all["data"], Value::Array(newest_first.clone()));
    assert!(all["nextCursor"].is_null());
    for item in all["data"].as_array().unwrap() {
        assert_eq!(keys_of(item), field_set(false), "list items include delivery status and counters");
    }
    // The read-only key lists too.
    assert_eq!(list(&daemon, ACME_READ_KEY, ""), all);

    // Pages of 3: 3 + 3 + 1, chained by nextCursor, the last without one.
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_owned();
    let mut sizes = Vec::new();
    loop {
        let page = list(&daemon, ACME_KEY, &query);
        sizes.push(page["data"].as_array().unwrap().len());
        seen.extend(ids(&page));
        match page["nextCursor"].as_str() {
            Some(cursor) => {
                assert_eq!(Some(cursor), seen.last().map(String::as_str), "the cursor is the last id");
                query = format!("?limit=3&cursor={cursor}");
            }
            None => break,
        }
        assert!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(seen, newest_ids);

    // A page that ends exactly at the last subscription has no next cursor (no empty page).
    let exact = list(&daemon, ACME_KEY, "?limit=7");
    assert_eq!(ids(&exact), newest_ids);
    assert!(exact["nextCursor"].is_null());
    let one = list(&daemon, ACME_KEY, "?limit=1");
    assert_eq!(ids(&one), newest_ids[..1]);
    assert_eq!(one["nextCursor"], newest_ids[0].as_str());
    assert_eq!(ids(&list(&daemon, ACME_KEY, "?limit=100")), newest_ids);
    // Query parameters in any order; the cursor of the oldest gives an empty last page.
    let after = list(&daemon, ACME_KEY, &format!("?cursor={}&limit=2", newest_ids[4]));
    assert_eq!(ids(&after), newest_ids[5..7]);
    assert!(after["nextCursor"].is_null());
    let empty = list(&daemon, ACME_KEY, &format!("?cursor={}", newest_ids[6]));
    assert_eq!(empty, json!({ "data": [], "nextCursor": null }));

    // A cursor whose subscription was deleted still continues from where it was.
    let reply = daemon.call("DELETE", &format!("/v1/webhooks/{}", newest_ids[2]), ACME_KEY, None);
    assert_eq!(reply.status, 204);
    let resumed = list(&daemon, ACME_KEY, &format!("?limit=3&cursor={}", newest_ids[2]));
    assert_eq!(ids(&resumed), newest_ids[3..6]);
}

#[test]
fn pages_hold_50_by_default_and_at_most_100() {
    let daemon = TestDaemon::with(Setup { tiny_max_webhooks: 120, ..Default::default() });
    let mut created = Vec::new();
    for n in 0..120 {
        let body = json!({ "name": format!("many-{n}"), "url": "https://example.com/hook", "events": ["message.sent"] });
        created.push(daemon.create_subscription(TINY_KEY, body)["id"].as_str().unwrap().to_owned());
    }
    created.reverse();
    let first = list(&daemon, TINY_KEY, "");
    assert_eq!(ids(&first), created[..50]);
    assert_eq!(first["nextCursor"], created[49].as_str());
    let largest = list(&daemon, TINY_KEY, "?limit=100");
    assert_eq!(ids(&largest), created[..100]);
    let rest = list(&daemon, TINY_KEY, &format!("?limit=100&cursor={}", created[99]));
    assert_eq!(ids(&rest), created[100..]);
    assert!(rest["nextCursor"].is_null());

    // Updating a subscription does not move it in the list.
    patch_with(&daemon, TINY_KEY, &created[119], json!({ "name": "renamed", "isPaused": true }));
    let after = list(&daemon, TINY_KEY, &format!("?limit=100&cursor={}", created[99]));
    assert_eq!(ids(&after), created[100..]);
}

#[test]
fn list_order_follows_creation_even_for_quick_successive_creates() {
    // Ids sort by creation time; subscriptions created within the same millisecond must still
    // list newest first.
    let daemon = TestDaemon::start();
    let mut created = Vec::new();
    for n in 0..25 {
        let body = json!({ "name": format!("quick-{n}"), "url": "https://example.com/hook", "events": ["message.sent"] });
        created.push(daemon.create_subscription(ACME_KEY, body)["id"].as_str().unwrap().to_owned());
    }
    created.reverse();
    assert_eq!(ids(&list(&daemon, ACME_KEY, "")), created);
}

#[test]
fn patch_updates_each_field_alone() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({
            "name": "before",
            "url": "https://before.example.com/hook",
            "events": ["message.received"],
            "headers": { "X-Before": "1" }
        }),
    );
    let id = created["id"].as_str().unwrap();
    let mut expected = without_secret(&created);

    let changes = [
        json!({ "name": "after" }),
        json!({ "url": "https://after.example.com/other?x=1" }),
        json!({ "events": ["conversation.created", "sla.breached"] }),
        json!({ "headers": { "X-After": "2", "X-Also": "3" } }),
        json!({ "headers": {} }),
        json!({ "maxRetries": 0 }),
        json!({ "maxRetries": 20 }),
        json!({ "retryDelaySeconds": 1 }),
        json!({ "retryDelaySeconds": 86400 }),
        json!({ "isPaused": true }),
        json!({ "isPaused": false }),
        json!({}),
    ];
    for change in changes {
        let updated = patch(&daemon, id, change.clone());
        for (field, value) in change.as_object().unwrap() {
            expected[field] = value.clone();
        }
        assert_time(&updated["updatedAt"]);
        assert!(updated["updatedAt"].as_str() >= expected["updatedAt"].as_str());
        expected["updatedAt"] = updated["updatedAt"].clone();
        assert_eq!(updated, expected, "after PATCH {change}");
        assert_eq!(daemon.subscription(ACME_KEY, id), expected, "GET after PATCH {change}");
    }

    // Several fields at once.
    let updated = patch(&daemon, id, json!({ "name": "both", "maxRetries": 3, "isPaused": true }));
    assert_eq!(
        (&updated["name"], &updated["maxRetries"], &updated["isPaused"]),
        (&json!("both"), &json!(3), &json!(true))
    );
    assert_eq!(updated["createdAt"], created["createdAt"]);
    assert_eq!(updated["id"], created["id"]);
}

#[test]
fn patch_is_active_disables_by_hand_and_re_enables() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(ACME_KEY, guide_body());
    let id = created["id"].as_str().unwrap();

    let disabled = patch(&daemon, id, json!({ "isActive": false }));
    assert_eq!(disabled["isActive"], false);
    let reason = disabled["disableReason"].as_str().expect("disableReason is set").to_owned();
    assert!(
        reason.contains("isActive") || reason.contains("API"),
        "the reason says it was by hand: {reason}"
    );
    assert_time(&disabled["disabledAt"]);
    assert_eq!(daemon.subscription(ACME_KEY, id), disabled);

    // Disabling again keeps the first reason and time.
    let again = patch(&daemon, id, json!({ "isActive": false, "name": "renamed" }));
    assert_eq!(again["disableReason"], disabled["disableReason"]);
    assert_eq!(again["disabledAt"], disabled["disabledAt"]);

    let enabled = patch(&daemon, id, json!({ "isActive": true }));
    assert_eq!(enabled["isActive"], true);
    assert!(enabled["disableReason"].is_null(), "{enabled}");
    assert!(enabled["disabledAt"].is_null(), "{enabled}");
    assert_eq!(enabled["consecutiveFailures"], 0);
    assert_eq!(daemon.subscription(ACME_KEY, id), enabled);
}

#[test]
fn re_enabling_a_subscription_disabled_by_failures_resets_the_counter() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(500));
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "failing", "url": receiver.url("/hook"), "events": ["message.received"], "maxRetries": 0 }),
    );
    let id = created["id"].as_str().unwrap();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    wait_until("the subscription is disabled by its failure", LONG, || {
        daemon.subscription(ACME_KEY, id)["isActive"] == false
    });
    let disabled = daemon.subscription(ACME_KEY, id);
    assert_eq!(disabled["consecutiveFailures"], 1, "{disabled}");
    assert!(disabled["disableReason"].as_str().unwrap().contains("consecutive failures"), "{disabled}");
    assert_eq!(disabled["lastDeliveryStatus"], "failed");
    assert_eq!(disabled["lastDeliveryResponseCode"], 500);
    assert_time(&disabled["lastDeliveryAt"]);
    // The list shows the same delivery status and counter.
    assert_eq!(list(&daemon, ACME_KEY, "")["data"][0], disabled);

    let enabled = patch(&daemon, id, json!({ "isActive": true }));
    assert_eq!(enabled["isActive"], true);
    assert_eq!(enabled["consecutiveFailures"], 0);
    assert!(enabled["disableReason"].is_null() && enabled["disabledAt"].is_null(), "{enabled}");
    // The history of the last attempt stays visible.
    assert_eq!(enabled["lastDeliveryStatus"], "failed");
}

#[test]
fn delete_answers_204_and_then_the_subscription_is_gone() {
    let daemon = TestDaemon::start();
    let keep = daemon.create_subscription(ACME_KEY, guide_body());
    let gone = daemon.create_subscription(ACME_KEY, guide_body());
    let id = gone["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}");

    let reply = daemon.call("DELETE", &path, ACME_KEY, None);
    assert_eq!(reply.status, 204);
    assert_eq!(reply.text, "", "204 has no body");
    assert!(daemon.stored("acme", id).is_none());

    for (method, path, body) in [
        ("GET", path.clone(), None),
        ("DELETE", path.clone(), None),
        ("PATCH", path.clone(), Some(json!({ "name": "zombie" }))),
        ("POST", format!("{path}/rotate-secret"), None),
    ] {
        let reply = daemon.call(method, &path, ACME_KEY, body);
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text);
        assert_eq!(reply.error_code(), "not_found");
    }
    assert_eq!(ids(&list(&daemon, ACME_KEY, "")), [keep["id"].as_str().unwrap()]);
}

#[test]
fn rotate_secret_hands_out_a_new_secret_and_validates_grace() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(ACME_KEY, guide_body());
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}/rotate-secret");
    let mut previous = created["secret"].as_str().unwrap().to_owned();

    // Without a body, with an empty object, and with each end of the grace range.
    let bodies =
        [None, Some(json!({})), Some(json!({ "graceSeconds": 0 })), Some(json!({ "graceSeconds": 86400 }))];
    for body in bodies {
        let reply = daemon.call("POST", &path, ACME_KEY, body.clone());
        assert_eq!(reply.status, 200, "{body:?}: {}", reply.text);
        let rotated = reply.json();
        assert_eq!(keys_of(&rotated), ["id", "secret"].map(String::from).into(), "{rotated}");
        assert_eq!(rotated["id"], id);
        let secret = assert_secret(&rotated["secret"]);
        assert_ne!(secret, previous, "rotation makes a new secret");
        let stored = daemon.stored("acme", id).unwrap();
        assert_eq!(stored.secret.expose(), secret, "the new secret is in force at once");
        let grace = body.as_ref().and_then(|b| b["graceSeconds"].as_u64()).unwrap_or(0);
        match &stored.retired_secret {
            Some(retired) => {
                assert!(grace > 0, "{body:?} kept the old secret");
                assert_eq!(retired.secret.expose(), previous);
            }
            None => assert_eq!(grace, 0, "{body:?} dropped the old secret"),
        }
        previous = secret;
    }

    // Out of range or of the wrong type: 400 naming graceSeconds, and nothing rotates.
    for bad in [
        json!({ "graceSeconds": -1 }),
        json!({ "graceSeconds": 86401 }),
        json!({ "graceSeconds": "60" }),
        json!({ "graceSeconds": 1.5 }),
    ] {
        let reply = daemon.call("POST", &path, ACME_KEY, Some(bad.clone()));
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert_eq!(reply.error_code(), "validation_failed");
        assert!(reply.error_message().contains("graceSeconds"), "{bad}: {}", reply.text);
    }
    assert_eq!(daemon.stored("acme", id).unwrap().secret.expose(), previous);

    // Rotation changes nothing else the API shows but updatedAt.
    let mut before = without_secret(&created);
    let after = daemon.subscription(ACME_KEY, id);
    before["updatedAt"] = after["updatedAt"].clone();
    assert_eq!(after, before);
}

#[test]
fn the_secret_is_only_ever_in_create_and_rotate_answers() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(ACME_KEY, guide_body());
    let id = created["id"].as_str().unwrap().to_owned();
    let first = created["secret"].as_str().unwrap().to_owned();
    let rotated = daemon.call(
        "POST",
        &format!("/v1/webhooks/{id}/rotate-secret"),
        ACME_KEY,
        Some(json!({ "graceSeconds": 60 })),
    );
    assert_eq!(rotated.status, 200);
    let second = rotated.json()["secret"].as_str().unwrap().to_owned();

    let one = format!("/v1/webhooks/{id}");
    let replies = [
        daemon.call("GET", "/v1/webhooks", ACME_KEY, None),
        daemon.call("GET", "/v1/webhooks?limit=1", ACME_READ_KEY, None),
        daemon.call("GET", &one, ACME_KEY, None),
        daemon.call("PATCH", &one, ACME_KEY, Some(json!({ "name": "renamed" }))),
        daemon.call("PATCH", &one, ACME_KEY, Some(json!({ "isActive": false }))),
        daemon.call("PATCH", &one, ACME_KEY, Some(json!({ "isActive": true, "isPaused": true }))),
        daemon.call("PATCH", &one, ACME_KEY, Some(json!({ "maxRetries": 99 }))),
        daemon.call("PATCH", &one, ACME_KEY, Some(json!({ "secret": first }))),
    ];
    for reply in replies {
        assert!(reply.status < 500, "{}", reply.text);
        for secret in [&first, &second] {
            let encoded = secret.strip_prefix("whsec_").unwrap();
            assert!(!reply.text.contains(encoded), "a secret leaked: {}", reply.text);
        }
        if reply.status == 200 {
            assert!(!reply.text.contains("\"secret\""), "a secret field leaked: {}", reply.text);
            assert!(!reply.text.to_ascii_lowercase().contains("secret"), "{}", reply.text);
        }
    }
}

#[test]
fn a_tenant_never_sees_or_touches_another_tenants_subscriptions() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(ACME_KEY, guide_body());
    let id = created["id"].as_str().unwrap();
    let theirs = daemon.create_subscription(GLOBEX_KEY, guide_body());
    let unknown = "wh_01ARZ3NDEKTSV4RRFFQ69G5FAV";

    for (method, suffix, body) in [
        ("GET", "", None),
        ("PATCH", "", Some(json!({ "name": "hijacked", "isPaused": true }))),
        ("DELETE", "", None),
        ("POST", "/rotate-secret", None),
        ("POST", "/rotate-secret", Some(json!({ "graceSeconds": 60 }))),
    ] {
        let foreign = daemon.call(method, &format!("/v1/webhooks/{id}{suffix}"), GLOBEX_KEY, body.clone());
        let missing = daemon.call(method, &format!("/v1/webhooks/{unknown}{suffix}"), GLOBEX_KEY, body);
        assert_eq!(foreign.status, 404, "{method} {suffix}: {}", foreign.text);
        assert_eq!(foreign.error_code(), "not_found");
        // Indistinguishable from an id that does not exist.
        assert_eq!((foreign.status, &foreign.text), (missing.status, &missing.text), "{method} {suffix}");
    }

    // Globex lists only its own, also when handed acme's id as a cursor.
    assert_eq!(ids(&list(&daemon, GLOBEX_KEY, "")), [theirs["id"].as_str().unwrap()]);
    let with_cursor = list(&daemon, GLOBEX_KEY, &format!("?cursor={id}"));
    assert!(!with_cursor.to_string().contains(id), "{with_cursor}");
    assert_eq!(ids(&list(&daemon, ACME_KEY, "")), [id]);

    // Acme's subscription and secret are untouched.
    assert_eq!(daemon.subscription(ACME_KEY, id), without_secret(&created));
    let stored = daemon.stored("acme", id).unwrap();
    assert_eq!(stored.secret.expose(), created["secret"].as_str().unwrap());
    assert!(stored.retired_secret.is_none());
}

#[test]
fn subscriptions_their_order_and_secrets_survive_a_restart() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let mut secrets = Vec::new();
    for n in 0..4 {
        let created = daemon.create_subscription(
            ACME_KEY,
            json!({
                "name": format!("persist-{n}"),
                "url": receiver.url(&format!("/hook/{n}")),
                "events": ["message.received"],
                "headers": { "X-N": n.to_string() },
                "maxRetries": n,
                "isPaused": n == 3
            }),
        );
        secrets.push((
            created["id"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        ));
    }
    // One rotated (its new secret must be the one that survives), one deleted, one disabled.
    let (rotated_id, _) = &secrets[1];
    let reply = daemon.call("POST", &format!("/v1/webhooks/{rotated_id}/rotate-secret"), ACME_KEY, None);
    secrets[1].1 = reply.json()["secret"].as_str().unwrap().to_owned();
    assert_eq!(daemon.call("DELETE", &format!("/v1/webhooks/{}", secrets[2].0), ACME_KEY, None).status, 204);
    secrets.remove(2);
    patch(&daemon, &secrets[0].0, json!({ "isActive": false }));
    // Tiny reaches its limit; the count must survive too.
    for n in 0..3 {
        daemon.create_subscription(
            TINY_KEY,
            json!({ "name": format!("t{n}"), "url": "https://example.com/", "events": ["message.sent"] }),
        );
    }
    let before = list(&daemon, ACME_KEY, "");
    let before_tiny = list(&daemon, TINY_KEY, "");

    let daemon = daemon.restart();
    assert_eq!(list(&daemon, ACME_KEY, ""), before, "subscriptions and their order survive");
    assert_eq!(list(&daemon, TINY_KEY, ""), before_tiny);
    let full = daemon.call("POST", "/v1/webhooks", TINY_KEY, Some(guide_body()));
    assert_eq!(full.status, 429, "the limit still counts the stored subscriptions: {}", full.text);
    for (id, secret) in &secrets {
        let stored = daemon.stored("acme", id).unwrap();
        assert_eq!(stored.secret.expose(), secret, "{id}");
    }

    // Only the active, unpaused survivor receives; its delivery is signed with its secret.
    daemon.publish(ACME_KEY, "message.received", json!({ "after": "restart" }));
    let delivery = receiver.wait_for(1, LONG).remove(0);
    assert_eq!(delivery.path, "/hook/1");
    assert_eq!(delivery.header("x-n"), Some("1"));
    assert_eq!(
        delivery.header("x-atender-signature"),
        Some(guide_signature(&secrets[1].1, &delivery.body).as_str())
    );
}

#[test]
fn concurrent_creates_never_exceed_the_tenant_limit() {
    let daemon = TestDaemon::start();
    let threads = 40;
    let barrier = Barrier::new(threads);
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|n| {
                let (daemon, barrier) = (&daemon, &barrier);
                scope.spawn(move || {
                    let body = json!({ "name": format!("racer-{n}"), "url": "https://example.com/hook", "events": ["message.received"] });
                    barrier.wait();
                    daemon.call("POST", "/v1/webhooks", TINY_KEY, Some(body))
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });

    let mut winners = Vec::new();
    for reply in &replies {
        match reply.status {
            201 => winners.push(reply.json()["id"].as_str().unwrap().to_owned()),
            429 => {
                assert_eq!(reply.error_code(), "limit_exceeded", "{}", reply.text);
                assert!(reply.error_message().contains("maxWebhooks"), "{}", reply.text);
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert_eq!(winners.len(), 3, "exactly max_webhooks creates succeed");
    let mut listed = ids(&list(&daemon, TINY_KEY, ""));
    listed.sort();
    winners.sort();
    assert_eq!(listed, winners, "the list holds exactly the created ones");

    // Deleting one frees exactly one place.
    assert_eq!(daemon.call("DELETE", &format!("/v1/webhooks/{}", winners[0]), TINY_KEY, None).status, 204);
    let again = daemon.call("POST", "/v1/webhooks", TINY_KEY, Some(guide_body()));
    assert_eq!(again.status, 201, "{}", again.text);
    let over = daemon.call("POST", "/v1/webhooks", TINY_KEY, Some(guide_body()));
    assert_eq!(over.status, 429, "{}", over.text);
    assert_eq!(list(&daemon, TINY_KEY, "")["data"].as_array().unwrap().len(), 3);

    // Concurrent deletes and creates together still never exceed the limit.
    let current = ids(&list(&daemon, TINY_KEY, ""));
    let barrier = Barrier::new(current.len() + 20);
    std::thread::scope(|scope| {
        let (daemon, barrier) = (&daemon, &barrier);
        for id in &current {
            scope.spawn(move || {
                barrier.wait();
                assert_eq!(daemon.call("DELETE", &format!("/v1/webhooks/{id}"), TINY_KEY, None).status, 204);
            });
        }
        for _ in 0..20 {
            scope.spawn(move || {
                barrier.wait();
                let status = daemon.call("POST", "/v1/webhooks", TINY_KEY, Some(guide_body())).status;
                assert!(status == 201 || status == 429, "{status}");
            });
        }
    });
    let after = list(&daemon, TINY_KEY, "")["data"].as_array().unwrap().len();
    assert!(after <= 3, "{after} subscriptions over a limit of 3");
    // The counter agrees with what is stored: fill up to exactly the limit.
    for _ in after..3 {
        assert_eq!(daemon.call("POST", "/v1/webhooks", TINY_KEY, Some(guide_body())).status, 201);
    }
    assert_eq!(daemon.call("POST", "/v1/webhooks", TINY_KEY, Some(guide_body())).status, 429);
    assert_eq!(list(&daemon, TINY_KEY, "")["data"].as_array().unwrap().len(), 3);
}
