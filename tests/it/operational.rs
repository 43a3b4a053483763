//! Operational events: a tenant's subscriptions that list `webhook.disabled`, `webhook.enabled`
//! or `delivery.exhausted` hear of the tenant's own webhooks failing and coming back — signed
//! and delivered like any event, opt-in, never to the failing subscription itself, and never in
//! a loop between failing subscriptions.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const LONG: Duration = Duration::from_secs(30);
const OPERATIONAL: [&str; 3] = ["webhook.disabled", "webhook.enabled", "delivery.exhausted"];

fn subscribe(daemon: &TestDaemon, receiver: &Receiver, name: &str, events: &[&str], extra: Value) -> Value {
    let mut body = json!({ "name": name, "url": receiver.url("/hook"), "events": events });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    daemon.create_subscription(ACME_KEY, body)
}

fn log(daemon: &TestDaemon, subscription_id: &str) -> Vec<Value> {
    let reply = daemon.call("GET", &format!("/v1/webhooks/{subscription_id}/deliveries"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["data"].as_array().unwrap().clone()
}

fn event_types(log: &[Value]) -> Vec<String> {
    let mut types: Vec<String> =
        log.iter().map(|delivery| delivery["event"].as_str().unwrap().to_owned()).collect();
    types.sort();
    types
}

fn by_type(received: &[Received], event_type: &str) -> Value {
    received.iter().map(Received::json).find(|body| body["event"] == event_type).unwrap_or_else(|| {
        panic!("no {event_type} among {:?}", received.iter().map(Received::json).collect::<Vec<_>>())
    })
}

#[test]
fn a_tenant_hears_of_its_webhook_failing_and_coming_back() {
    let daemon = TestDaemon::start();
    let watcher = Receiver::start();
    let failing = Receiver::answering(Answer::status(503));
    let ops = subscribe(&daemon, &watcher, "operations", &OPERATIONAL, json!({}));
    let ops_secret = ops["secret"].as_str().unwrap();
    // The failing one lists the operational types too: it must not hear of its own failure.
    let mut listens = vec!["message.received"];
    listens.extend(OPERATIONAL);
    let bad =
        subscribe(&daemon, &failing, "flaky", &listens, json!({ "maxRetries": 1, "retryDelaySeconds": 1 }));
    let bad_id = bad["id"].as_str().unwrap();
    let published = daemon.publish(ACME_KEY, "message.received", json!({ "n": 1 }));

    let received = watcher.wait_for(2, LONG);
    assert!(
        received.iter().all(|delivery| standard_webhooks_verifies(ops_secret, delivery)),
        "signed like any event"
    );
    let exhausted = by_type(&received, "delivery.exhausted");
    assert_eq!(exhausted["tenantId"], "acme");
    assert!(exhausted["id"].as_str().unwrap().starts_with("evt_"));
    let data = &exhausted["data"];
    assert_eq!(data["webhookId"], bad_id);
    assert_eq!(data["eventId"], published["id"]);
    assert_eq!(data["eventType"], "message.received");
    assert_eq!(data["attempts"], 2);
    assert_eq!(data["lastResponseCode"], 503);
    assert_eq!(data["lastError"], "HTTP 503");
    let failed = log(&daemon, bad_id);
    assert_eq!(data["deliveryId"], failed[0]["id"]);

    let disabled = by_type(&received, "webhook.disabled");
    let subscription = daemon.subscription(ACME_KEY, bad_id);
    assert_eq!(disabled["data"]["webhookId"], bad_id);
    assert_eq!(disabled["data"]["url"], subscription["url"]);
    assert_eq!(disabled["data"]["disableReason"], subscription["disableReason"]);
    assert_eq!(disabled["data"]["disabledAt"], subscription["disabledAt"]);
    // Stored with the disable in one transaction: nothing of its own failure went to `flaky`.
    assert_eq!(event_types(&failed), ["message.received"]);
    assert_eq!(failing.count(), 2);

    // Fixed and enabled again: both hear it (`flaky` lists webhook.enabled and is active now).
    failing.set_default(Answer::status(200));
    let reply =
        daemon.call("PATCH", &format!("/v1/webhooks/{bad_id}"), ACME_KEY, Some(json!({ "isActive": true })));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let enabled = by_type(&watcher.wait_for(3, LONG), "webhook.enabled");
    assert_eq!(enabled["data"]["webhookId"], bad_id);
    assert!(enabled["data"]["enabledAt"].is_string());
    let to_itself = failing.wait_for(3, LONG);
    assert_eq!(to_itself[2].json()["event"], "webhook.enabled");

    // Disabled by hand: the reason says so.
    let reply =
        daemon.call("PATCH", &format!("/v1/webhooks/{bad_id}"), ACME_KEY, Some(json!({ "isActive": false })));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = watcher.wait_for(4, LONG);
    let by_hand = received[3].json();
    assert_eq!(by_hand["event"], "webhook.disabled");
    assert!(by_hand["data"]["disableReason"].as_str().unwrap().contains("API"), "{by_hand}");
    // A PATCH that changes nothing about activity sends nothing.
    let reply =
        daemon.call("PATCH", &format!("/v1/webhooks/{bad_id}"), ACME_KEY, Some(json!({ "name": "renamed" })));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(event_types(&log(&daemon, ops["id"].as_str().unwrap())).len(), 4);
}

#[test]
fn operational_events_go_only_to_subscriptions_that_list_them() {
    let daemon = TestDaemon::start();
    let listener = Receiver::start();
    let failing = Receiver::answering(Answer::status(410));
    let plain = subscribe(&daemon, &listener, "plain", &["message.received"], json!({}));
    let only_enabled = subscribe(&daemon, &listener, "enabled only", &["webhook.enabled"], json!({}));
    let bad = subscribe(&daemon, &failing, "gone", &["message.received"], json!({}));
    let bad_id = bad["id"].as_str().unwrap();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    wait_until("410 disables it", LONG, || daemon.subscription(ACME_KEY, bad_id)["isActive"] == false);
    // The disable and its operational events are one transaction: what exists now is all.
    assert_eq!(event_types(&log(&daemon, plain["id"].as_str().unwrap())), ["message.received"]);
    assert!(log(&daemon, only_enabled["id"].as_str().unwrap()).is_empty());
}

#[test]
fn two_failing_subscriptions_never_feed_each_other() {
    let daemon = TestDaemon::start();
    let dead = Receiver::answering(Answer::status(500));
    let listens = ["message.received", "delivery.exhausted"];
    let first = subscribe(&daemon, &dead, "one", &listens, json!({ "maxRetries": 0 }));
    let second = subscribe(&daemon, &dead, "two", &listens, json!({ "maxRetries": 0 }));
    let ids = [first["id"].as_str().unwrap(), second["id"].as_str().unwrap()];
    daemon.publish(ACME_KEY, "message.received", json!({}));
    // Each fails its message (and is disabled); each one's delivery.exhausted goes to the other,
    // where it fails or is held, and a failed operational event causes no further one.
    wait_until("both are disabled and nothing is pending", LONG, || {
        ids.iter().all(|id| {
            daemon.subscription(ACME_KEY, id)["isActive"] == false
                && log(&daemon, id).iter().all(|delivery| delivery["status"] != "pending")
        })
    });
    for id in ids {
        assert_eq!(event_types(&log(&daemon, id)), ["delivery.exhausted", "message.received"], "{id}");
    }
}
