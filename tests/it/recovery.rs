//! Recovery (`POST /v1/webhooks/:id/recover`) against a real receiver: failed deliveries go out
//! again once the receiver is fixed, only those created in the range, each once however often
//! it is asked; expired ones too, hundreds at a time (more than one batch); held, not sent,
//! while the subscription is paused; and bad bodies refused without touching anything.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use atender_webhooks::model::DeliveryId;

use crate::support::*;

const LONG: Duration = Duration::from_secs(60);

/// A subscription of `acme` to `message.received` at the receiver, with no retries: each
/// failed attempt finishes its delivery as `failed` (and disables the subscription).
fn subscribe(daemon: &TestDaemon, receiver: &Receiver, extra: Value) -> String {
    let mut body = json!({
        "name": "listener",
        "url": receiver.url("/hook"),
        "events": ["message.received"],
        "maxRetries": 0,
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    daemon.create_subscription(ACME_KEY, body)["id"].as_str().unwrap().to_owned()
}

fn log(daemon: &TestDaemon, id: &str, query: &str) -> Vec<Value> {
    let reply = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries{query}"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["data"].as_array().unwrap().clone()
}

fn status_of(daemon: &TestDaemon, id: &str, delivery_id: &str) -> String {
    let reply = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries/{delivery_id}"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["status"].as_str().unwrap().to_owned()
}

fn set(daemon: &TestDaemon, id: &str, patch: Value) {
    let reply = daemon.call("PATCH", &format!("/v1/webhooks/{id}"), ACME_KEY, Some(patch));
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// Publishes one event the receiver (answering 500) fails, waits until its delivery is
/// `failed`, and enables the subscription again (the failure disabled it). Returns the
/// delivery's id.
fn one_failed_delivery(daemon: &TestDaemon, id: &str, n: u32) -> String {
    let event_id = daemon.publish(ACME_KEY, "message.received", json!({ "n": n }))["id"].clone();
    let mut delivery_id = String::new();
    wait_until("the delivery failed", LONG, || {
        let found = log(daemon, id, "?status=failed").into_iter().find(|d| d["eventId"] == event_id);
        delivery_id = found.map(|d| d["id"].as_str().unwrap().to_owned()).unwrap_or_default();
        !delivery_id.is_empty()
    });
    set(daemon, id, json!({ "isActive": true }));
    delivery_id
}

/// The creation time of a delivery (from its id) as RFC 3339 with milliseconds.
fn created(delivery_id: &str) -> String {
    let at = DeliveryId::parse(delivery_id).unwrap().created_at();
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at)).to_string()
}

fn recover(daemon: &TestDaemon, id: &str, body: Value) -> u64 {
    let reply = daemon.call("POST", &format!("/v1/webhooks/{id}/recover"), ACME_KEY, Some(body));
    assert_eq!(reply.status, 202, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
    answer["queued"].as_u64().unwrap()
}

/// The delivery ids the receiver got, in order of arrival.
fn arrived(receiver: &Receiver) -> Vec<String> {
    receiver.received().iter().map(|r| r.header("x-atender-delivery").unwrap().to_owned()).collect()
}

#[test]
fn failed_deliveries_of_the_range_go_out_again_once_each() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(500));
    let id = subscribe(&daemon, &receiver, json!({}));
    let failed: Vec<String> = (1..=3).map(|n| one_failed_delivery(&daemon, &id, n)).collect();
    let (first, second, third) = (&failed[0], &failed[1], &failed[2]);
    let bodies: Vec<Vec<u8>> = receiver.received().into_iter().map(|r| r.body).collect();
    receiver.set_default(Answer::status(200));

    // [second, third): the second alone (the end is excluded).
    assert_eq!(recover(&daemon, &id, json!({ "since": created(second), "until": created(third) })), 1);
    wait_until("the second delivery succeeded", LONG, || status_of(&daemon, &id, second) == "succeeded");
    assert_eq!(arrived(&receiver)[3..], [second.as_str()], "the same delivery id, sent once");
    assert_eq!(receiver.received()[3].body, bodies[1], "the same body");
    assert_eq!(status_of(&daemon, &id, first), "failed");
    assert_eq!(status_of(&daemon, &id, third), "failed");

    // From the first on (until now): the two still failed; asked again at once, none.
    let everything = json!({ "since": created(first) });
    assert_eq!(recover(&daemon, &id, everything.clone()), 2);
    assert_eq!(recover(&daemon, &id, everything.clone()), 0, "already queued (or delivered): not again");
    wait_until("every delivery succeeded", LONG, || {
        failed.iter().all(|delivery_id| status_of(&daemon, &id, delivery_id) == "succeeded")
    });
    assert_eq!(recover(&daemon, &id, everything), 0, "succeeded deliveries are not recovered");

    let mut again = arrived(&receiver)[3..].to_vec();
    again.sort();
    assert_eq!(again, failed, "each failed delivery arrived once more, and only once");
    // The log keeps the failed attempt before the recovered one.
    let delivery = log(&daemon, &id, "").into_iter().find(|d| d["id"] == *first).unwrap();
    let codes: Vec<Value> =
        delivery["attempts"].as_array().unwrap().iter().map(|a| a["responseCode"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(200)]);
}

#[test]
fn expired_deliveries_are_recovered_in_batches() {
    let daemon = TestDaemon::with(Setup { hold_retention: "2s", ..Setup::default() });
    let receiver = Receiver::start();
    let id = subscribe(&daemon, &receiver, json!({ "isPaused": true }));
    // More than one recovery batch (500).
    let events: Vec<Value> =
        (0..501).map(|n| json!({ "event": "message.received", "data": { "n": n } })).collect();
    let reply = daemon.call("POST", "/v1/events/batch", ACME_KEY, Some(json!({ "events": events })));
    assert_eq!(reply.status, 202, "{}", reply.text);
    wait_until("every held delivery expired", LONG, || log(&daemon, &id, "?status=held").is_empty());
    assert_eq!(log(&daemon, &id, "?status=expired&limit=1").len(), 1);
    // Resumed: nothing is released, they expired.
    set(&daemon, &id, json!({ "isPaused": false }));
    assert_eq!(receiver.count(), 0);

    assert_eq!(recover(&daemon, &id, json!({ "since": "2000-01-01T00:00:00Z" })), 501);
    let received = receiver.wait_for(501, LONG);
    let mut ids: Vec<String> =
        received.iter().map(|r| r.header("x-atender-delivery").unwrap().to_owned()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 501, "each expired delivery once");
    wait_until("every delivery recorded", LONG, || log(&daemon, &id, "?status=pending").is_empty());
    assert_eq!(recover(&daemon, &id, json!({ "since": "2000-01-01T00:00:00Z" })), 0);
}

#[test]
fn a_recovery_while_paused_holds_until_resumed() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(500));
    let id = subscribe(&daemon, &receiver, json!({}));
    let failed: Vec<String> = (1..=2).map(|n| one_failed_delivery(&daemon, &id, n)).collect();
    receiver.set_default(Answer::status(200));
    set(&daemon, &id, json!({ "isPaused": true }));

    let since = json!({ "since": created(&failed[0]) });
    assert_eq!(recover(&daemon, &id, since.clone()), 2);
    for delivery_id in &failed {
        assert_eq!(status_of(&daemon, &id, delivery_id), "held");
    }
    assert_eq!(recover(&daemon, &id, since), 0, "held deliveries are left as they are");
    assert_eq!(receiver.count(), 2, "nothing sent while paused");

    set(&daemon, &id, json!({ "isPaused": false }));
    receiver.wait_for(4, LONG);
    wait_until("both delivered", LONG, || {
        failed.iter().all(|delivery_id| status_of(&daemon, &id, delivery_id) == "succeeded")
    });
}

#[test]
fn a_recovery_on_a_disabled_subscription_holds_until_it_is_enabled() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(500));
    let id = subscribe(&daemon, &receiver, json!({}));
    daemon.publish(ACME_KEY, "message.received", json!({}));
    wait_until("the delivery failed and disabled the subscription", LONG, || {
        daemon.subscription(ACME_KEY, &id)["isActive"] == false
    });
    receiver.set_default(Answer::status(200));
    assert_eq!(recover(&daemon, &id, json!({ "since": "2000-01-01T00:00:00Z" })), 1);
    assert_eq!(log(&daemon, &id, "")[0]["status"], "held");
    set(&daemon, &id, json!({ "isActive": true }));
    receiver.wait_for(2, LONG);
    wait_until("delivered", LONG, || log(&daemon, &id, "")[0]["status"] == "succeeded");
}

#[test]
fn bad_recovery_requests_are_refused_and_change_nothing() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(500));
    let id = subscribe(&daemon, &receiver, json!({}));
    let delivery_id = one_failed_delivery(&daemon, &id, 1);
    receiver.set_default(Answer::status(200));
    let path = format!("/v1/webhooks/{id}/recover");
    let since = "2026-05-11T09:00:00Z";

    for (body, expected) in [
        (json!({}), "since is required"),
        (json!({ "since": null }), "since: invalid type: null"),
        (json!({ "since": 1_778_490_000 }), "since: invalid type: integer"),
        (json!({ "since": "yesterday" }), "since must be an RFC 3339 time"),
        (json!({ "since": "2026-05-11T09:00:00" }), "since must be an RFC 3339 time"),
        (json!({ "since": "2026-02-30T09:00:00Z" }), "since must be an RFC 3339 time"),
        (json!({ "since": since, "until": "soon" }), "until must be an RFC 3339 time"),
        (json!({ "since": since, "until": null }), "until: invalid type: null"),
        (json!({ "since": since, "until": since }), "until must be after since"),
        (json!({ "since": since, "until": "2026-05-11T08:00:00Z" }), "until must be after since"),
        (json!({ "since": since, "status": "failed" }), "unknown field `status`"),
        (json!([since]), "request body must be a JSON object"),
    ] {
        let reply = daemon.call("POST", &path, ACME_KEY, Some(body.clone()));
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, "validation_failed"),
            "{body}: {}",
            reply.text
        );
        assert!(reply.error_message().contains(expected), "{body}: {}", reply.text);
    }

    let auth = format!("Bearer {ACME_KEY}");
    let url = daemon.url(&path);
    let not_json = send(
        "POST",
        &url,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some(b"{since"),
    );
    assert_eq!(
        (not_json.status, not_json.error_code().as_str()),
        (400, "validation_failed"),
        "{}",
        not_json.text
    );
    let no_body = send("POST", &daemon.url(&path), &[("Authorization", &auth)], None);
    assert_eq!(
        (no_body.status, no_body.error_code().as_str()),
        (415, "unsupported_media_type"),
        "{}",
        no_body.text
    );
    let plain = send(
        "POST",
        &daemon.url(&path),
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        Some(br#"{"since": "2026-05-11T09:00:00Z"}"#),
    );
    assert_eq!(
        (plain.status, plain.error_code().as_str()),
        (415, "unsupported_media_type"),
        "{}",
        plain.text
    );
    let get = daemon.call("GET", &path, ACME_KEY, None);
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")), "{}", get.text);

    let whole = json!({ "since": "2000-01-01T00:00:00Z" });
    for (path, key, status, code) in [
        ("/v1/webhooks/wh_01ARZ3NDEKTSV4RRFFQ69G5FAV/recover", ACME_KEY, 404, "not_found"),
        ("/v1/webhooks/not-an-id/recover", ACME_KEY, 404, "not_found"),
        (path.as_str(), GLOBEX_KEY, 404, "not_found"),
        (path.as_str(), ACME_READ_KEY, 403, "insufficient_scope"),
        (path.as_str(), FROZEN_KEY, 403, "webhooks_disabled"),
    ] {
        let reply = daemon.call("POST", path, key, Some(whole.clone()));
        assert_eq!((reply.status, reply.error_code().as_str()), (status, code), "{path}: {}", reply.text);
    }

    // Nothing was queued by any of them.
    assert_eq!(status_of(&daemon, &id, &delivery_id), "failed");
    assert_eq!(receiver.count(), 1);
    // A range in the future is no error: nothing in it.
    assert_eq!(recover(&daemon, &id, json!({ "since": "2999-01-01T00:00:00Z" })), 0);
    assert_eq!(
        recover(
            &daemon,
            &id,
            json!({ "since": "2998-01-01T00:00:00+02:00", "until": "2999-01-01T00:00:00Z" })
        ),
        0
    );
    assert_eq!(status_of(&daemon, &id, &delivery_id), "failed");
}
