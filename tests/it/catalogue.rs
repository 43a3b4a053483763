//! The event catalogue: `GET /v1/event-types` (configured types with their descriptions and
//! schemas, then the operational types; pages; authentication, scope and tenant gate), publishing
//! checked against a type's JSON Schema (single and batch, the 400 naming the JSON Pointer, and
//! nothing stored on a refusal), operational types refused on publish but accepted on
//! subscriptions, and schema files through `check-config` and a SIGHUP reload.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{run_binary, Served};
use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

/// The schema of `message.received` in these tests.
fn message_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["conversationId", "text"],
        "properties": {
            "conversationId": {"type": "string", "minLength": 1},
            "text": {"type": "string"},
            "attachments": {"type": "array", "items": {"type": "object", "required": ["url"]}}
        }
    })
}

/// `[events]` with two types, `message.received` checked against `schema_path`, and a
/// description for `invoice.paid` (which has no schema).
fn events_section(schema_path: &Path) -> String {
    format!(
        "[events]\ntypes = [\"message.received\", \"invoice.paid\"]\n\
         [events.descriptions]\n\"invoice.paid\" = \"An invoice was paid in full.\"\n\
         [events.schemas]\n\"message.received\" = \"{}\"\n",
        schema_path.display()
    )
}

/// A daemon whose catalogue is [`events_section`], with the schema file in its own directory
/// (returned to keep it alive).
fn daemon_with_schema() -> (TestDaemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let schema_path = dir.path().join("message.received.json");
    std::fs::write(&schema_path, serde_json::to_vec_pretty(&message_schema()).unwrap()).unwrap();
    let daemon = TestDaemon::with(Setup { extra: events_section(&schema_path), ..Setup::default() });
    (daemon, dir)
}

fn catalogue(daemon: &TestDaemon, key: &str, query: &str) -> Value {
    let reply = daemon.call("GET", &format!("/v1/event-types{query}"), key, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.header("content-type").unwrap_or_default().starts_with("application/json"));
    reply.json()
}

fn names(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(|item| item["name"].as_str().unwrap().to_owned()).collect()
}

const OPERATIONAL: [&str; 4] = ["webhook.disabled", "webhook.enabled", "delivery.exhausted", "webhook.test"];

#[test]
fn the_catalogue_lists_configured_types_with_descriptions_and_schemas_then_operational_ones() {
    let (daemon, _dir) = daemon_with_schema();
    let page = catalogue(&daemon, ACME_READ_KEY, "");
    assert_eq!(page["nextCursor"], Value::Null);
    let mut expected = vec!["message.received".to_owned(), "invoice.paid".to_owned()];
    expected.extend(OPERATIONAL.map(String::from));
    assert_eq!(names(&page), expected);

    let items = page["data"].as_array().unwrap();
    for item in items {
        let keys: Vec<&str> = item.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "description", "schema", "operational"], "{item}");
    }
    // A default type keeps its built-in description; its schema is the file, as written.
    assert_eq!(items[0]["operational"], false);
    assert!(items[0]["description"].as_str().is_some_and(|text| !text.is_empty()), "{}", items[0]);
    assert_eq!(items[0]["schema"], message_schema());
    // A configured description; no schema.
    assert_eq!(items[1]["description"], "An invoice was paid in full.");
    assert_eq!(items[1]["schema"], Value::Null);
    assert_eq!(items[1]["operational"], false);
    // The operational types, marked, each with its description and data schema.
    for item in &items[2..] {
        assert_eq!(item["operational"], true, "{item}");
        assert!(item["description"].is_string(), "{item}");
        assert_eq!(item["schema"]["type"], "object", "{item}");
    }
}

#[test]
fn the_default_catalogue_describes_every_type_and_has_no_schemas() {
    let daemon = TestDaemon::start();
    let page = catalogue(&daemon, ACME_KEY, "");
    let items = page["data"].as_array().unwrap();
    assert_eq!(items.len(), 5 + OPERATIONAL.len(), "{page}");
    for item in &items[..5] {
        assert!(item["description"].as_str().is_some_and(|text| !text.is_empty()), "{item}");
        assert_eq!(item["schema"], Value::Null, "{item}");
        assert_eq!(item["operational"], false, "{item}");
    }
    assert_eq!(
        names(&page)[..5],
        ["message.received", "message.sent", "conversation.created", "conversation.resolved", "sla.breached"]
    );
}

#[test]
fn pages_follow_limit_and_cursor_and_bad_queries_are_refused() {
    let daemon = TestDaemon::start();
    let everything = names(&catalogue(&daemon, ACME_KEY, ""));
    let mut walked = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = catalogue(&daemon, ACME_KEY, &query);
        let got = names(&page);
        assert!(got.len() <= 2, "{page}");
        walked.extend(got);
        match page["nextCursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(walked, everything);

    for (query, names_in_message) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?cursor=no.such.type", "cursor"),
        ("?cursor=", "cursor"),
        ("?colour=blue", "colour"),
    ] {
        let reply = daemon.call("GET", &format!("/v1/event-types{query}"), ACME_KEY, None);
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, "validation_failed"),
            "{query}: {}",
            reply.text
        );
        assert!(reply.error_message().contains(names_in_message), "{query}: {}", reply.text);
    }
}

#[test]
fn the_catalogue_needs_a_read_key_of_a_tenant_with_webhooks_on() {
    let daemon = TestDaemon::start();
    let url = daemon.url("/v1/event-types");
    let missing = send("GET", &url, &[], None);
    assert_eq!((missing.status, missing.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let unknown = daemon.call("GET", "/v1/event-types", "sa_live_nobodynobodynobodynobodynobodynobo", None);
    assert_eq!((unknown.status, unknown.error_code().as_str()), (401, "unauthorized"));
    let scope = daemon.call("GET", "/v1/event-types", ACME_EVENTS_KEY, None);
    assert_eq!((scope.status, scope.error_code().as_str()), (403, "insufficient_scope"), "{}", scope.text);
    assert!(scope.error_message().contains("webhooks:read"), "{}", scope.text);
    let frozen = daemon.call("GET", "/v1/event-types", FROZEN_KEY, None);
    assert_eq!((frozen.status, frozen.error_code().as_str()), (403, "webhooks_disabled"), "{}", frozen.text);
    let wrong_method = daemon.call("POST", "/v1/event-types", ACME_KEY, Some(json!({})));
    assert_eq!((wrong_method.status, wrong_method.error_code().as_str()), (405, "method_not_allowed"));
    assert_eq!(wrong_method.header("allow"), Some("GET"));
    assert_eq!(catalogue(&daemon, GLOBEX_KEY, "")["data"].as_array().unwrap().len(), 9);
}

/// Creates a subscription of acme to `events` and returns its id.
fn subscribe(daemon: &TestDaemon, receiver: &Receiver, events: Value) -> String {
    let body = json!({"name": "catalogue", "url": receiver.url("/hook"), "events": events});
    daemon.create_subscription(ACME_KEY, body)["id"].as_str().unwrap().to_owned()
}

/// How many deliveries the subscription's log holds.
fn logged(daemon: &TestDaemon, id: &str) -> usize {
    let reply = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["data"].as_array().unwrap().len()
}

fn refused(reply: &Reply) -> String {
    assert_eq!((reply.status, reply.error_code().as_str()), (400, "validation_failed"), "{}", reply.text);
    reply.error_message()
}

#[test]
fn a_published_event_must_satisfy_its_types_schema_and_the_refusal_names_the_path() {
    let (daemon, _dir) = daemon_with_schema();
    let receiver = Receiver::start();
    let id = subscribe(&daemon, &receiver, json!(["message.received", "invoice.paid"]));

    daemon.publish(ACME_EVENTS_KEY, "message.received", json!({"conversationId": "c_1", "text": "Hello!"}));
    // A type without a schema takes any object.
    daemon.publish(ACME_EVENTS_KEY, "invoice.paid", json!({"anything": [1, 2, 3]}));
    receiver.wait_for(2, LONG);

    let cases = [
        (json!({"conversationId": "c_1", "text": 42}), "data/text: want string, but got number"),
        (json!({"text": "hi"}), "data: missing properties 'conversationId'"),
        (json!({"conversationId": "", "text": "hi"}), "data/conversationId: length must be >=1"),
        (
            json!({"conversationId": "c", "text": "hi", "attachments": [{"url": "u"}, {"name": "x"}]}),
            "data/attachments/1: missing properties 'url'",
        ),
        (json!({"text": 1}), "1 more problem"),
    ];
    for (data, expected) in cases {
        let reply = daemon.call(
            "POST",
            "/v1/events",
            ACME_EVENTS_KEY,
            Some(json!({"event": "message.received", "data": data})),
        );
        let message = refused(&reply);
        assert!(message.contains(expected), "{data}: {message}");
        assert!(message.contains("message.received") && message.contains("/v1/event-types"), "{message}");
    }
    // Absent data is {}: checked like any other.
    let absent =
        daemon.call("POST", "/v1/events", ACME_EVENTS_KEY, Some(json!({"event": "message.received"})));
    assert!(refused(&absent).starts_with("data: missing properties"), "{}", absent.text);
    // A refused event with an idempotency id leaves nothing behind: the id is still free.
    let with_id = json!({"event": "message.received", "id": "order-1", "data": {"text": 1}});
    refused(&daemon.call("POST", "/v1/events", ACME_EVENTS_KEY, Some(with_id)));
    let retried =
        json!({"event": "message.received", "id": "order-1", "data": {"conversationId": "c", "text": "ok"}});
    assert_eq!(daemon.call("POST", "/v1/events", ACME_EVENTS_KEY, Some(retried)).status, 202);

    // Only the accepted events were stored and delivered.
    assert_eq!(logged(&daemon, &id), 3);
    receiver.wait_for(3, LONG);
}

#[test]
fn a_batch_with_one_event_failing_its_schema_is_refused_whole() {
    let (daemon, _dir) = daemon_with_schema();
    let receiver = Receiver::start();
    let id = subscribe(&daemon, &receiver, json!(["message.received", "invoice.paid"]));
    let good = json!({"event": "message.received", "data": {"conversationId": "c", "text": "hi"}});
    let bad = json!({"event": "message.received", "data": {"conversationId": "c", "text": ["not", "text"]}});
    let other = json!({"event": "invoice.paid", "data": {}});

    let reply =
        daemon.call("POST", "/v1/events/batch", ACME_EVENTS_KEY, Some(json!({"events": [good, other, bad]})));
    let message = refused(&reply);
    assert!(message.starts_with("events[2].data/text: want string, but got array"), "{message}");
    assert_eq!(logged(&daemon, &id), 0, "nothing of a refused batch is stored");

    let reply =
        daemon.call("POST", "/v1/events/batch", ACME_EVENTS_KEY, Some(json!({"events": [good, other]})));
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(logged(&daemon, &id), 2);
    receiver.wait_for(2, LONG);
}

#[test]
fn operational_types_are_refused_on_publish_and_accepted_on_subscriptions() {
    let daemon = TestDaemon::start();
    for name in OPERATIONAL {
        let reply =
            daemon.call("POST", "/v1/events", ACME_EVENTS_KEY, Some(json!({"event": name, "data": {}})));
        let message = refused(&reply);
        assert!(
            message.starts_with(&format!("event: \"{name}\" is an event type the daemon sends itself")),
            "{message}"
        );
    }
    let batch = json!({"events": [{"event": "message.sent"}, {"event": "delivery.exhausted"}]});
    let message = refused(&daemon.call("POST", "/v1/events/batch", ACME_EVENTS_KEY, Some(batch)));
    assert!(message.starts_with("events[1].event: \"delivery.exhausted\""), "{message}");

    // Subscriptions may list them, alone or with configured types, on create and on update.
    let receiver = Receiver::start();
    let id = subscribe(&daemon, &receiver, json!(["webhook.disabled", "message.received"]));
    assert_eq!(daemon.subscription(ACME_KEY, &id)["events"], json!(["webhook.disabled", "message.received"]));
    let reply = daemon.call(
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        ACME_KEY,
        Some(json!({"events": ["delivery.exhausted", "webhook.enabled", "webhook.test"]})),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["events"], json!(["delivery.exhausted", "webhook.enabled", "webhook.test"]));

    // An unknown type is still refused, and the message lists both kinds.
    let reply = daemon.call(
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        ACME_KEY,
        Some(json!({"events": ["webhook.exploded"]})),
    );
    let message = refused(&reply);
    assert!(message.contains("events[0]: unknown event type \"webhook.exploded\""), "{message}");
    assert!(message.contains("message.received") && message.contains("webhook.disabled"), "{message}");
}

/// Runs `check-config` on `text` written beside `dir`'s files.
fn check_config(dir: &Path, text: &str) -> crate::process::Finished {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    run_binary(&["check-config", "--config", path.to_str().unwrap()])
}

#[test]
fn check_config_reads_schema_files_relative_to_the_config_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(dir.path().join("schemas/message.json"), message_schema().to_string()).unwrap();
    let with = |file: &str| format!("[events.schemas]\n\"message.received\" = \"schemas/{file}\"\n");
    let out = check_config(dir.path(), &with("message.json"));
    out.assert_success();

    std::fs::write(dir.path().join("schemas/broken.json"), "{\"type\": ").unwrap();
    std::fs::write(dir.path().join("schemas/invalid.json"), "{\"type\": \"text\"}").unwrap();
    for (file, reason) in [
        ("missing.json", "cannot read it"),
        ("broken.json", "is not JSON"),
        ("invalid.json", "is not a valid JSON Schema"),
    ] {
        let out = check_config(dir.path(), &with(file));
        out.assert_code(1);
        assert!(out.stderr.contains("events.schemas.\"message.received\""), "{file}: {out:#?}");
        assert!(out.stderr.contains(file) && out.stderr.contains(reason), "{file}: {out:#?}");
    }
    let out = check_config(dir.path(), "[events.descriptions]\n\"invoice.paid\" = \"x\"\n");
    out.assert_code(1);
    assert!(out.stderr.contains("events.descriptions.\"invoice.paid\""), "{out:#?}");
}

#[test]
fn a_reload_applies_a_changed_schema_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let schema_path = dir.path().join("message.received.json");
    std::fs::write(&schema_path, message_schema().to_string()).unwrap();
    let setup = Setup { extra: events_section(&schema_path), ..Setup::default() };
    let mut served = Served::start(&setup, &[]);
    let publish = |served: &Served, data: Value| {
        served.call(
            "POST",
            "/v1/events",
            ACME_EVENTS_KEY,
            Some(json!({"event": "message.received", "data": data})),
        )
    };
    let old_shape = json!({"conversationId": "c", "text": "hi"});
    let new_shape = json!({"body": "hi"});
    assert_eq!(publish(&served, old_shape.clone()).status, 202);
    assert_eq!(publish(&served, new_shape.clone()).status, 400);

    // A new schema in the same file takes effect on SIGHUP.
    let new_schema =
        json!({"type": "object", "required": ["body"], "properties": {"body": {"type": "string"}}});
    std::fs::write(&schema_path, new_schema.to_string()).unwrap();
    served.process.signal("HUP");
    served.process.wait_for_stderr_count("configuration reloaded", 1, LONG);
    assert_eq!(publish(&served, new_shape.clone()).status, 202);
    let refusal = publish(&served, old_shape.clone());
    assert!(refused(&refusal).starts_with("data: missing properties 'body'"), "{}", refusal.text);
    let listed = served.call("GET", "/v1/event-types", ACME_KEY, None).json();
    assert_eq!(listed["data"][0]["schema"], new_schema);

    // A broken schema file is refused with a log line naming the type and the file; the
    // schema in force stays.
    std::fs::write(&schema_path, "{\"type\": \"objekt\"}").unwrap();
    served.process.signal("HUP");
    let line = served.process.wait_for_stderr("reload refused", LONG);
    assert!(
        line.contains("events.schemas.\\\"message.received\\\"")
            || line.contains("events.schemas.\"message.received\""),
        "{line}"
    );
    assert!(line.contains("message.received.json"), "{line}");
    assert_eq!(publish(&served, new_shape).status, 202);
    assert_eq!(publish(&served, old_shape).status, 400);
    served.stop("TERM");
    assert_eq!(served.process.stderr_count("configuration reloaded"), 1, "{}", served.process.transcript());
}
