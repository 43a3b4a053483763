//! Test sends (`POST /v1/webhooks/:id/test`) against a real receiver: the `webhook.test` body
//! and headers signed like a delivery (both schemes, every valid secret), the outcome for a 2xx,
//! a 500, a dead port and a hanging receiver (capped wait), sent to paused and disabled
//! subscriptions too, nothing stored or counted or retried, one at a time per subscription
//! (429), and the errors of bad ids and keys.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

fn subscribe(daemon: &TestDaemon, url: &str, extra: Value) -> Value {
    let mut body = json!({ "name": "listener", "url": url, "events": ["message.received"] });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    daemon.create_subscription(ACME_KEY, body)
}

/// The next connection to `listener`, within `LONG` (the daemon connects on a test send).
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    wait_until("the daemon to connect to the receiver", LONG, || {
        accepted = listener.accept().ok();
        accepted.is_some()
    });
    let (connection, _) = accepted.unwrap();
    connection.set_nonblocking(false).unwrap();
    connection
}

fn test_send(daemon: &TestDaemon, id: &str) -> Reply {
    daemon.call("POST", &format!("/v1/webhooks/{id}/test"), ACME_KEY, None)
}

fn delivery_log(daemon: &TestDaemon, id: &str) -> Vec<Value> {
    let reply = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["data"].as_array().unwrap().clone()
}

/// The subscription's delivery state is as if no test send had happened.
fn assert_untouched(daemon: &TestDaemon, id: &str) {
    let subscription = daemon.subscription(ACME_KEY, id);
    assert_eq!(subscription["consecutiveFailures"], 0, "{subscription}");
    for field in ["lastDeliveryAt", "lastDeliveryStatus", "lastDeliveryResponseCode", "lastDeliveryError"] {
        assert!(subscription[field].is_null(), "{field}: {subscription}");
    }
    assert!(delivery_log(daemon, id).is_empty(), "a test send is not in the delivery log");
}

#[test]
fn a_test_send_is_a_signed_webhook_test_event_and_stores_nothing() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(
        &daemon,
        &receiver.url("/hook"),
        json!({ "headers": { "Authorization": "Bearer receiver-token" } }),
    );
    let (id, secret) = (created["id"].as_str().unwrap(), created["secret"].as_str().unwrap());

    let reply = test_send(&daemon, id);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let outcome = reply.json();
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["responseCode"], 200);
    assert!(outcome["durationMs"].is_u64(), "{outcome}");
    assert!(outcome["error"].is_null(), "{outcome}");
    assert_eq!(outcome.as_object().unwrap().len(), 4, "exactly status, responseCode, durationMs, error");

    // The answer came after the exchange: the receiver has it already.
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let delivery = &received[0];
    assert_eq!(delivery.path, "/hook");
    let body = delivery.json();
    assert_eq!(body["event"], "webhook.test", "sent whatever the subscription's event filter");
    assert_eq!(body["tenantId"], "acme");
    assert!(body["id"].as_str().unwrap().starts_with("evt_"), "{body}");
    assert_eq!(body["data"]["webhookId"], id);
    assert!(body["data"]["message"].is_string(), "{body}");
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(timestamp.ends_with('Z') && timestamp.len() == 20, "RFC 3339 UTC seconds: {timestamp}");
    assert_eq!(body.as_object().unwrap().len(), 5, "exactly id, event, tenantId, timestamp, data");

    assert_eq!(delivery.header("content-type"), Some("application/json"));
    assert!(delivery.header("user-agent").unwrap().starts_with("atender-webhooks/"));
    assert_eq!(delivery.header("x-atender-event"), Some("webhook.test"));
    assert_eq!(delivery.header("authorization"), Some("Bearer receiver-token"), "custom headers go too");
    let delivery_id = delivery.header("x-atender-delivery").unwrap();
    assert!(delivery_id.starts_with("dlv_"), "{delivery_id}");
    assert_eq!(delivery.header("webhook-id"), Some(delivery_id));
    assert_eq!(
        delivery.header("x-atender-signature"),
        Some(guide_signature(secret, &delivery.body).as_str())
    );
    assert!(standard_webhooks_verifies(secret, delivery));
    assert_untouched(&daemon, id);

    // A second test is a new event with a new delivery id.
    assert_eq!(test_send(&daemon, id).status, 200);
    let second = receiver.received().remove(1);
    assert_ne!(second.header("webhook-id"), Some(delivery_id));
    assert_ne!(second.json()["id"], body["id"]);
}

#[test]
fn a_test_send_during_a_rotation_grace_is_signed_with_both_secrets() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(&daemon, &receiver.url("/hook"), json!({}));
    let (id, old) = (created["id"].as_str().unwrap(), created["secret"].as_str().unwrap());
    let new = daemon.rotate_with_grace(id);

    assert_eq!(test_send(&daemon, id).json()["status"], "succeeded");
    let delivery = receiver.received().remove(0);
    assert_eq!(delivery.header("x-atender-signature"), Some(guide_signature(&new, &delivery.body).as_str()));
    assert!(standard_webhooks_verifies(&new, &delivery));
    assert!(standard_webhooks_verifies(old, &delivery), "the old secret is valid during the grace");
}

#[test]
fn a_failing_receiver_is_reported_and_neither_counted_nor_retried() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    // The test send and the first attempt of a real delivery fail; everything after succeeds.
    receiver.script([Answer::status(500), Answer::status(500)]);
    let created = subscribe(&daemon, &receiver.url("/hook"), json!({ "retryDelaySeconds": 1 }));
    let id = created["id"].as_str().unwrap();

    let reply = test_send(&daemon, id);
    assert_eq!(reply.status, 200, "the request worked; the outcome is in the body: {}", reply.text);
    let outcome = reply.json();
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["responseCode"], 500);
    assert_eq!(outcome["error"], "HTTP 500");
    assert_untouched(&daemon, id);
    let subscription = daemon.subscription(ACME_KEY, id);
    assert_eq!(
        (subscription["isActive"].clone(), subscription["isPaused"].clone()),
        (json!(true), json!(false))
    );

    // A real delivery published after the test fails once and is retried 1 s later. A retry of
    // the test, had there been one, would have been due before that retry: when the delivery
    // has succeeded, the receiver has seen exactly the test and the delivery's two attempts.
    daemon.publish(ACME_KEY, "message.received", json!({ "n": 1 }));
    wait_until("the real delivery succeeded on its retry", LONG, || {
        delivery_log(&daemon, id).first().is_some_and(|delivery| delivery["status"] == "succeeded")
    });
    let events: Vec<String> =
        receiver.received().iter().map(|r| r.json()["event"].as_str().unwrap().to_owned()).collect();
    assert_eq!(events, ["webhook.test", "message.received", "message.received"]);
    assert_eq!(delivery_log(&daemon, id).len(), 1, "only the real delivery is logged");
}

#[test]
fn a_dead_port_has_no_response_code_and_says_why() {
    let daemon = TestDaemon::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let created = subscribe(&daemon, &format!("http://127.0.0.1:{port}/hook"), json!({}));
    let id = created["id"].as_str().unwrap();

    let reply = test_send(&daemon, id);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let outcome = reply.json();
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert!(outcome["responseCode"].is_null(), "{outcome}");
    assert!(outcome["error"].as_str().unwrap().starts_with("connection failed"), "{outcome}");
    assert_untouched(&daemon, id);
}

#[test]
fn paused_and_disabled_subscriptions_still_get_their_test() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let paused = subscribe(&daemon, &receiver.url("/paused"), json!({ "isPaused": true }));
    let disabled = subscribe(&daemon, &receiver.url("/disabled"), json!({ "isActive": false }));
    for (subscription, path) in [(&paused, "/paused"), (&disabled, "/disabled")] {
        let id = subscription["id"].as_str().unwrap();
        let reply = test_send(&daemon, id);
        assert_eq!(
            (reply.status, reply.json()["status"].clone()),
            (200, json!("succeeded")),
            "{}",
            reply.text
        );
        assert!(receiver.received().iter().any(|received| received.path == path), "{path}");
        assert_untouched(&daemon, id);
    }
    let paused = daemon.subscription(ACME_KEY, paused["id"].as_str().unwrap());
    assert_eq!(paused["isPaused"], true, "a test send does not resume it");
    let disabled = daemon.subscription(ACME_KEY, disabled["id"].as_str().unwrap());
    assert_eq!(disabled["isActive"], false, "nor re-enable it");
}

#[test]
fn one_test_send_per_subscription_at_a_time() {
    // delivery.timeout 10 s: the held connection below is released by the test, not the timeout.
    let daemon = TestDaemon::with(Setup { timeout: "10s", ..Setup::default() });
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let held = subscribe(&daemon, &hanging_url, json!({}));
    let receiver = Receiver::start();
    let other = subscribe(&daemon, &receiver.url("/other"), json!({}));
    let (held_id, other_id) = (held["id"].as_str().unwrap().to_owned(), other["id"].as_str().unwrap());

    // Both requests go to the same daemon: the limit is per daemon.
    let url = format!("http://{}/v1/webhooks/{held_id}/test", daemon.addr);
    let first = std::thread::spawn({
        let url = url.clone();
        move || call_json("POST", &url, ACME_KEY, None)
    });
    // The first test send is under way once its request reaches the receiver, which holds it.
    let mut connection = accept(&hanging);
    let mut request_start = [0u8; 4];
    connection.read_exact(&mut request_start).unwrap();
    assert_eq!(&request_start, b"POST");

    let second = call_json("POST", &url, ACME_KEY, None);
    assert_eq!((second.status, second.error_code().as_str()), (429, "test_in_progress"), "{}", second.text);
    assert!(second.error_message().contains("already under way"), "{}", second.text);
    let unrelated =
        call_json("POST", &format!("http://{}/v1/webhooks/{other_id}/test", daemon.addr), ACME_KEY, None);
    assert_eq!(unrelated.status, 200, "another subscription is not held up: {}", unrelated.text);

    // Closing the connection without an answer ends the first test send, as a failure.
    drop(connection);
    let first = first.join().unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json()["status"], "failed", "{}", first.text);
    assert!(first.json()["responseCode"].is_null(), "{}", first.text);

    // The slot is free again: the next test send is made (and held again, then released).
    let again = std::thread::spawn(move || call_json("POST", &url, ACME_KEY, None));
    drop(accept(&hanging));
    assert_eq!(again.join().unwrap().status, 200);
}

#[test]
fn a_long_delivery_timeout_is_capped_for_a_test_send() {
    // delivery.timeout is 60 s; the test send waits at most 10 s, within the API's deadline.
    // (On PostgreSQL a claim's lease must outlast delivery.timeout.)
    let daemon = TestDaemon::with(Setup { timeout: "60s", lease: Some("90s"), ..Setup::default() });
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let created = subscribe(&daemon, &format!("http://{}/hook", hanging.local_addr().unwrap()), json!({}));
    let id = created["id"].as_str().unwrap();
    // Accept and hold the connection without ever answering.
    let holder = std::thread::spawn(move || accept(&hanging));

    let reply = test_send(&daemon, id);
    assert_eq!(reply.status, 200, "an answer, not the API's 503 deadline: {}", reply.text);
    let outcome = reply.json();
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert!(outcome["error"].as_str().unwrap().starts_with("timed out"), "{outcome}");
    let waited = outcome["durationMs"].as_u64().unwrap();
    assert!((10_000..12_000).contains(&waited), "waited {waited} ms, the cap is 10 s");
    drop(holder.join().unwrap());
}

#[test]
fn bad_ids_keys_and_tenants_get_the_usual_errors() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(&daemon, &receiver.url("/hook"), json!({}));
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}/test");

    for (path, key, status, code) in [
        ("/v1/webhooks/wh_01ARZ3NDEKTSV4RRFFQ69G5FAV/test", ACME_KEY, 404, "not_found"),
        ("/v1/webhooks/not-an-id/test", ACME_KEY, 404, "not_found"),
        (path.as_str(), GLOBEX_KEY, 404, "not_found"),
        (path.as_str(), ACME_READ_KEY, 403, "insufficient_scope"),
        (path.as_str(), ACME_EVENTS_KEY, 403, "insufficient_scope"),
        (path.as_str(), FROZEN_KEY, 403, "webhooks_disabled"),
        (path.as_str(), "sa_live_nobodynobodynobodynobodynobodyno99", 401, "unauthorized"),
    ] {
        let reply = daemon.call("POST", path, key, None);
        assert_eq!((reply.status, reply.error_code().as_str()), (status, code), "{path}: {}", reply.text);
    }
    let reply = daemon.call("GET", &path, ACME_KEY, None);
    assert_eq!((reply.status, reply.header("allow")), (405, Some("POST")), "{}", reply.text);
    assert_eq!(receiver.count(), 0, "nothing was sent for a refused request");
}
