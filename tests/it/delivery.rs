//! The delivery engine through the API: payloads and headers, both signature schemes checked
//! by independent verifiers, filtering, retries and their schedule, Retry-After, 410, exhaustion
//! and disable, hold and release, rotation, isolation from a hanging endpoint, idempotent
//! publishing, the delivery log and redelivery, and the connect-time address guard.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

fn subscribe(daemon: &TestDaemon, receiver: &Receiver, extra: Value) -> Value {
    let mut body =
        json!({ "name": "listener", "url": receiver.url("/hook"), "events": ["message.received"] });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    daemon.create_subscription(ACME_KEY, body)
}

fn deliveries(daemon: &TestDaemon, subscription_id: &str, query: &str) -> Vec<Value> {
    let reply =
        daemon.call("GET", &format!("/v1/webhooks/{subscription_id}/deliveries{query}"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["data"].as_array().unwrap().clone()
}

fn gaps(received: &[Received]) -> Vec<Duration> {
    received.windows(2).map(|pair| pair[1].at - pair[0].at).collect()
}

#[test]
fn payload_headers_and_both_signatures_follow_the_contract() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created =
        subscribe(&daemon, &receiver, json!({ "headers": { "Authorization": "Bearer receiver-token" } }));
    let secret = created["secret"].as_str().unwrap();
    let published =
        daemon.publish(ACME_KEY, "message.received", json!({ "conversationId": "c1", "n": [1, 2] }));

    let delivery = receiver.wait_for(1, LONG).remove(0);
    let body = delivery.json();
    assert_eq!(body["id"], published["id"]);
    assert_eq!(body["event"], "message.received");
    assert_eq!(body["tenantId"], "acme");
    assert_eq!(body["data"], json!({ "conversationId": "c1", "n": [1, 2] }));
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(timestamp.ends_with('Z') && timestamp.len() == 20, "RFC 3339 UTC seconds: {timestamp}");
    assert_eq!(body.as_object().unwrap().len(), 5, "exactly id, event, tenantId, timestamp, data");

    assert_eq!(delivery.header("content-type"), Some("application/json"));
    assert!(delivery.header("user-agent").unwrap().starts_with("atender-webhooks/"));
    assert_eq!(delivery.header("x-atender-event"), Some("message.received"));
    assert_eq!(delivery.header("authorization"), Some("Bearer receiver-token"));
    let delivery_id = delivery.header("x-atender-delivery").unwrap();
    assert!(delivery_id.starts_with("dlv_"));
    assert_eq!(delivery.header("webhook-id"), Some(delivery_id));
    assert_eq!(
        delivery.header("x-atender-signature"),
        Some(guide_signature(secret, &delivery.body).as_str())
    );
    assert!(standard_webhooks_verifies(secret, &delivery));

    let log = deliveries(&daemon, created["id"].as_str().unwrap(), "");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["id"], delivery_id);
    wait_until("the delivery is recorded as succeeded", LONG, || {
        deliveries(&daemon, created["id"].as_str().unwrap(), "")[0]["status"] == "succeeded"
    });
    let subscription = daemon.subscription(ACME_KEY, created["id"].as_str().unwrap());
    assert_eq!(subscription["lastDeliveryStatus"], "succeeded");
    assert_eq!(subscription["lastDeliveryResponseCode"], 200);
    assert!(subscription["lastDeliveryAt"].is_string());
}

#[test]
fn only_subscribed_event_types_are_delivered_and_batches_fan_out() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(&daemon, &receiver, json!({ "events": ["message.received", "sla.breached"] }));
    let other = daemon.publish(ACME_KEY, "conversation.resolved", json!({}));
    assert_eq!(other["deliveries"], 0);

    let reply = daemon.call(
        "POST",
        "/v1/events/batch",
        ACME_KEY,
        Some(json!({ "events": [
            { "event": "message.received", "data": { "i": 1 } },
            { "event": "message.sent", "data": { "i": 2 } },
            { "event": "sla.breached", "data": { "i": 3 } },
        ] })),
    );
    assert_eq!(reply.status, 202, "{}", reply.text);
    let answers = reply.json()["data"].as_array().unwrap().clone();
    let counts: Vec<u64> = answers.iter().map(|answer| answer["deliveries"].as_u64().unwrap()).collect();
    assert_eq!(counts, vec![1, 0, 1]);

    let received = receiver.wait_for(2, LONG);
    let mut events: Vec<String> =
        received.iter().map(|r| r.json()["event"].as_str().unwrap().to_owned()).collect();
    events.sort();
    assert_eq!(events, vec!["message.received", "sla.breached"]);
    assert_eq!(deliveries(&daemon, created["id"].as_str().unwrap(), "").len(), 2);
}

#[test]
fn a_tenant_with_webhooks_off_publishes_with_no_deliveries() {
    let daemon = TestDaemon::start();
    let reply = daemon.call("POST", "/v1/events", FROZEN_KEY, Some(json!({ "event": "message.received" })));
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.json()["deliveries"], 0);
}

#[test]
fn failed_attempts_are_retried_on_the_exponential_schedule() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    receiver.script([Answer::status(503), Answer::status(500), Answer::status(502)]);
    let created = subscribe(&daemon, &receiver, json!({ "retryDelaySeconds": 1, "maxRetries": 5 }));
    daemon.publish(ACME_KEY, "message.received", json!({}));

    let received = receiver.wait_for(4, LONG);
    let bodies: Vec<&Vec<u8>> = received.iter().map(|r| &r.body).collect();
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]), "the body is identical on every attempt");
    let ids: Vec<_> = received.iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] == pair[1]), "the delivery id is stable across retries");
    // Nominal gaps 1 s, 2 s, 4 s, plus at most 10 % jitter; honoured within 1 s (generous
    // upper bounds: this is a shared machine).
    for (gap, nominal) in gaps(&received).into_iter().zip([1.0, 2.0, 4.0]) {
        let seconds = gap.as_secs_f64();
        assert!(seconds >= nominal - 0.05, "retry came early: {seconds:.3}s < {nominal}s");
        assert!(seconds <= nominal * 1.1 + 1.5, "retry came late: {seconds:.3}s for {nominal}s");
    }

    let id = created["id"].as_str().unwrap();
    wait_until("success is recorded", LONG, || deliveries(&daemon, id, "")[0]["status"] == "succeeded");
    let log = deliveries(&daemon, id, "");
    let attempts = log[0]["attempts"].as_array().unwrap();
    let codes: Vec<u64> = attempts.iter().map(|a| a["responseCode"].as_u64().unwrap()).collect();
    assert_eq!(codes, vec![503, 500, 502, 200]);
    assert_eq!(attempts[0]["error"], "HTTP 503");
    let subscription = daemon.subscription(ACME_KEY, id);
    assert_eq!(subscription["consecutiveFailures"], 0, "a success resets the counter");
    assert_eq!(subscription["isActive"], true);
}

#[test]
fn retry_after_longer_than_the_backoff_is_waited_for() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    receiver.script([Answer::status(503).with_header("retry-after", "3")]);
    subscribe(&daemon, &receiver, json!({ "retryDelaySeconds": 1 }));
    daemon.publish(ACME_KEY, "message.received", json!({}));
    let received = receiver.wait_for(2, LONG);
    let gap = gaps(&received)[0].as_secs_f64();
    assert!(gap >= 2.95, "Retry-After: 3 gave a {gap:.3}s gap (backoff alone would be 1s)");
}

#[test]
fn retry_after_shorter_than_the_backoff_never_shortens_it() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    receiver.script([
        Answer::status(503).with_header("retry-after", "1"),
        Answer::status(429).with_header("retry-after", "0"),
    ]);
    subscribe(&daemon, &receiver, json!({ "retryDelaySeconds": 2 }));
    daemon.publish(ACME_KEY, "message.received", json!({}));
    let received = receiver.wait_for(3, LONG);
    let gaps = gaps(&received);
    // Backoff 2 s, then 4 s: a receiver may ask for more time, never for less.
    assert!(gaps[0].as_secs_f64() >= 1.95, "Retry-After: 1 shortened the 2 s backoff: {gaps:?}");
    assert!(gaps[1].as_secs_f64() >= 3.95, "Retry-After: 0 shortened the 4 s backoff: {gaps:?}");
}

#[test]
fn gone_disables_the_subscription_at_once() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(410));
    let created = subscribe(&daemon, &receiver, json!({ "maxRetries": 5, "retryDelaySeconds": 1 }));
    let id = created["id"].as_str().unwrap();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    wait_until("the subscription is disabled", LONG, || {
        daemon.subscription(ACME_KEY, id)["isActive"] == false
    });
    let subscription = daemon.subscription(ACME_KEY, id);
    assert!(subscription["disableReason"].as_str().unwrap().contains("410 Gone"), "{subscription}");
    assert!(subscription["disabledAt"].is_string());
    assert_eq!(receiver.count(), 1, "no retry after 410");
    assert_eq!(deliveries(&daemon, id, "")[0]["status"], "failed");
}

#[test]
fn exhausted_retries_fail_the_delivery_and_disable_with_a_reason() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(503));
    let created = subscribe(&daemon, &receiver, json!({ "maxRetries": 2, "retryDelaySeconds": 1 }));
    let id = created["id"].as_str().unwrap();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    wait_until("the subscription is disabled", LONG, || {
        daemon.subscription(ACME_KEY, id)["isActive"] == false
    });
    let subscription = daemon.subscription(ACME_KEY, id);
    assert_eq!(
        subscription["disableReason"],
        "too many consecutive failures: 3 attempts failed, last: HTTP 503"
    );
    assert_eq!(subscription["consecutiveFailures"], 3);
    assert_eq!(subscription["lastDeliveryStatus"], "failed");
    assert_eq!(subscription["lastDeliveryResponseCode"], 503);
    assert_eq!(subscription["lastDeliveryError"], "HTTP 503");
    assert_eq!(receiver.count(), 3);
    let log = deliveries(&daemon, id, "?status=failed");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["attempts"].as_array().unwrap().len(), 3);
    assert!(log[0]["nextAttemptAt"].is_null());

    // Events published while disabled are held, then delivered once re-enabled.
    receiver.set_default(Answer::status(200));
    let held = daemon.publish(ACME_KEY, "message.received", json!({ "after": "disable" }));
    assert_eq!(held["deliveries"], 1);
    wait_until("the new delivery is held", LONG, || deliveries(&daemon, id, "?status=held").len() == 1);
    let reply =
        daemon.call("PATCH", &format!("/v1/webhooks/{id}"), ACME_KEY, Some(json!({ "isActive": true })));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let enabled = reply.json();
    assert_eq!(enabled["isActive"], true);
    assert!(enabled["disableReason"].is_null());
    assert_eq!(enabled["consecutiveFailures"], 0);
    let received = receiver.wait_for(4, LONG);
    assert_eq!(received[3].json()["data"]["after"], "disable");
}

#[test]
fn paused_subscriptions_hold_deliveries_until_unpaused() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(&daemon, &receiver, json!({ "isPaused": true, "retryDelaySeconds": 1 }));
    let id = created["id"].as_str().unwrap();
    for n in 0..3 {
        assert_eq!(daemon.publish(ACME_KEY, "message.received", json!({ "n": n }))["deliveries"], 1);
    }
    let held = deliveries(&daemon, id, "?status=held");
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|d| d["nextAttemptAt"].is_null()));
    assert_eq!(receiver.count(), 0, "nothing is sent while paused");

    let reply =
        daemon.call("PATCH", &format!("/v1/webhooks/{id}"), ACME_KEY, Some(json!({ "isPaused": false })));
    assert_eq!(reply.status, 200);
    let received = receiver.wait_for(3, LONG);
    let mut numbers: Vec<u64> = received.iter().map(|r| r.json()["data"]["n"].as_u64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, vec![0, 1, 2]);

    // Pausing again holds what is already queued for a failing endpoint's retries too.
    receiver.set_default(Answer::status(500));
    daemon.publish(ACME_KEY, "message.received", json!({ "n": 3 }));
    receiver.wait_for(4, LONG);
    daemon.call("PATCH", &format!("/v1/webhooks/{id}"), ACME_KEY, Some(json!({ "isPaused": true })));
    wait_until("the retry is held when due", LONG, || deliveries(&daemon, id, "?status=held").len() == 1);
}

#[test]
fn rotation_signs_later_attempts_with_the_new_secret_and_grace_keeps_the_old_one_valid() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(&daemon, &receiver, json!({}));
    let id = created["id"].as_str().unwrap();
    let old_secret = created["secret"].as_str().unwrap().to_owned();

    let rotated = daemon.call("POST", &format!("/v1/webhooks/{id}/rotate-secret"), ACME_KEY, None);
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let new_secret = rotated.json()["secret"].as_str().unwrap().to_owned();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    let first = receiver.wait_for(1, LONG).remove(0);
    assert_eq!(first.header("x-atender-signature"), Some(guide_signature(&new_secret, &first.body).as_str()));
    assert!(standard_webhooks_verifies(&new_secret, &first));
    assert!(!standard_webhooks_verifies(&old_secret, &first), "the old secret stops working at once");

    let graced = daemon.call(
        "POST",
        &format!("/v1/webhooks/{id}/rotate-secret"),
        ACME_KEY,
        Some(json!({ "graceSeconds": 3600 })),
    );
    let newest = graced.json()["secret"].as_str().unwrap().to_owned();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    let second = receiver.wait_for(2, LONG).remove(1);
    assert_eq!(second.header("x-atender-signature"), Some(guide_signature(&newest, &second.body).as_str()));
    assert_eq!(second.header("webhook-signature").unwrap().split(' ').count(), 2);
    assert!(standard_webhooks_verifies(&newest, &second));
    assert!(standard_webhooks_verifies(&new_secret, &second), "the previous secret verifies during grace");
}

#[test]
fn a_hanging_endpoint_never_delays_a_healthy_one() {
    let setup = Setup { workers: 6, timeout: "3s", max_in_flight_per_subscription: 2, ..Setup::default() };
    let daemon = TestDaemon::with(setup);
    // Answers only after the 3 s timeout (the client has given up), but not much later: the
    // receiver counts a request open until its answer is dropped, which it does not notice when
    // the client leaves, so a 30 s delay would count every attempt a timeout ended for 30 s and
    // a loaded run (past 6 s) would see the next attempts on top of them. With 3.5 s, an
    // abandoned request overlaps the next attempt (suspect: one at a time) by 0.5 s at most, so
    // the receiver counts at most one more than the daemon holds, never more than the cap.
    let hanging = Receiver::answering(Answer::status(200).after(Duration::from_millis(3500)));
    let healthy = Receiver::start();
    subscribe(&daemon, &hanging, json!({ "retryDelaySeconds": 1 }));
    subscribe(&daemon, &healthy, json!({}));
    for n in 0..30 {
        assert_eq!(daemon.publish(ACME_KEY, "message.received", json!({ "n": n }))["deliveries"], 2);
    }
    // Each hanging attempt holds a worker for the full 3 s timeout; were the hanging
    // subscription allowed every worker, 30 events would take 15 s to reach the healthy one.
    healthy.wait_for(30, LONG);
    assert!(hanging.count() >= 1);
    assert!(hanging.max_concurrent() <= 2, "per-subscription cap exceeded: {}", hanging.max_concurrent());
}

#[test]
fn a_quick_endpoint_earns_more_attempts_at_once_but_never_more_than_the_cap() {
    let setup = Setup {
        workers: 32,
        max_in_flight_per_subscription: 12,
        initial_in_flight_per_subscription: 2,
        ..Setup::default()
    };
    let daemon = TestDaemon::with(setup);
    let receiver = Receiver::answering(Answer::status(200).after(Duration::from_millis(20)));
    subscribe(&daemon, &receiver, json!({}));
    daemon.publish(ACME_KEY, "message.received", json!({ "warm": "up" }));
    receiver.wait_for(1, LONG);
    for batch in 0..6 {
        let events: Vec<Value> = (0..100)
            .map(|n| json!({ "event": "message.received", "data": { "batch": batch, "n": n } }))
            .collect();
        let reply = daemon.call("POST", "/v1/events/batch", ACME_KEY, Some(json!({ "events": events })));
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    receiver.wait_for(601, LONG);
    // Started at 2 at once; every 2xx came quickly, so the limit grew (on all nodes together,
    // never past the hard cap).
    let most = receiver.max_concurrent();
    assert!(most > 2 && most <= 12, "{most} requests at once: want more than 2, at most 12");
}

#[test]
fn an_endpoint_that_earned_the_cap_and_then_hangs_holds_no_more_than_the_cap() {
    let setup = Setup {
        workers: 8,
        timeout: "3s",
        max_in_flight_per_subscription: 4,
        initial_in_flight_per_subscription: 1,
        ..Setup::default()
    };
    let daemon = TestDaemon::with(setup);
    let turning = Receiver::start();
    let healthy = Receiver::start();
    subscribe(&daemon, &turning, json!({ "retryDelaySeconds": 1 }));
    for n in 0..100 {
        daemon.publish(ACME_KEY, "message.received", json!({ "n": n }));
    }
    turning.wait_for(100, LONG);
    // Trusted, with a limit earned: now it hangs past the timeout.
    turning.set_default(Answer::status(200).after(Duration::from_secs(30)));
    turning.reset_max_concurrent();
    subscribe(&daemon, &healthy, json!({}));
    for n in 0..20 {
        daemon.publish(ACME_KEY, "message.received", json!({ "after": n }));
    }
    // Were the hanging endpoint's limit unbounded, 20 hanging attempts would hold all 8
    // workers for 3 s each and the healthy one would wait its turn behind them.
    healthy.wait_for(20, LONG);
    let nodes = daemon.nodes();
    assert!(
        turning.max_concurrent() <= 4,
        "{} hanging requests at once on {nodes} node(s): the cap is 4",
        turning.max_concurrent()
    );
}

#[test]
fn many_dead_endpoints_share_half_of_the_workers() {
    // 4 workers: suspects (last attempt failed) get one attempt each and two in all.
    let setup = Setup { workers: 4, timeout: "1s", max_in_flight_per_subscription: 4, ..Setup::default() };
    let daemon = TestDaemon::with(setup);
    // Slow and failing, answering just inside the 1 s timeout: the receiver then counts exactly
    // the requests a worker is waiting on. (One that hangs past the timeout stays "in progress"
    // at the receiver after the worker gave up, until it notices the closed connection, and
    // would be counted beside the attempts that followed it.)
    let dead = Receiver::answering(Answer::status(503).after(Duration::from_millis(900)));
    let healthy = Receiver::start();
    let mut dead_ids = Vec::new();
    for n in 0..6 {
        let created = daemon.create_subscription(
            ACME_KEY,
            json!({ "name": format!("dead {n}"), "url": dead.url(&format!("/{n}")), "events": ["message.received"], "retryDelaySeconds": 1, "maxRetries": 20 }),
        );
        dead_ids.push(created["id"].as_str().unwrap().to_owned());
    }
    daemon.publish(ACME_KEY, "message.received", json!({ "warm": "up" }));
    for id in &dead_ids {
        wait_until("every dead endpoint has failed once", LONG, || {
            daemon.subscription(ACME_KEY, id)["lastDeliveryStatus"] == "failed"
        });
    }
    dead.reset_max_concurrent();
    subscribe(&daemon, &healthy, json!({}));
    for n in 0..20 {
        daemon.publish(ACME_KEY, "message.received", json!({ "n": n }));
    }
    healthy.wait_for(20, LONG);
    let started = dead.count();
    wait_until("the dead endpoints are retried meanwhile", LONG, || dead.count() >= started + 4);
    // Each node gives suspects half of its own workers (two nodes: twice as many in all).
    let budget = 2 * daemon.nodes();
    assert!(dead.max_concurrent() <= budget, "suspects held {} workers at once", dead.max_concurrent());
}

#[test]
fn a_repeated_client_id_within_a_day_creates_nothing_new() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(&daemon, &receiver, json!({}));
    let body = json!({ "event": "message.received", "id": "order-42", "data": { "x": 1 } });
    let first = daemon.call("POST", "/v1/events", ACME_KEY, Some(body.clone()));
    let second = daemon.call("POST", "/v1/events", ACME_KEY, Some(body));
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.json(), second.json());
    // Another tenant's identical id is its own.
    let other = daemon.call(
        "POST",
        "/v1/events",
        GLOBEX_KEY,
        Some(json!({ "event": "message.received", "id": "order-42" })),
    );
    assert_ne!(other.json()["id"], first.json()["id"]);

    receiver.wait_for(1, LONG);
    daemon.publish(ACME_KEY, "message.received", json!({ "x": 2 }));
    receiver.wait_for(2, LONG);
    assert_eq!(deliveries(&daemon, created["id"].as_str().unwrap(), "").len(), 2);
}

#[test]
fn the_delivery_log_pages_shows_payloads_and_redelivers() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = subscribe(&daemon, &receiver, json!({}));
    let id = created["id"].as_str().unwrap();
    for n in 0..5 {
        daemon.publish(ACME_KEY, "message.received", json!({ "n": n }));
    }
    receiver.wait_for(5, LONG);
    wait_until("all succeeded", LONG, || deliveries(&daemon, id, "?status=succeeded").len() == 5);

    let page = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries?limit=2"), ACME_KEY, None).json();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let cursor = page["nextCursor"].as_str().unwrap();
    let rest = daemon
        .call("GET", &format!("/v1/webhooks/{id}/deliveries?limit=10&cursor={cursor}"), ACME_KEY, None)
        .json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 3);
    assert!(rest["nextCursor"].is_null());
    let newest = &page["data"][0];
    assert!(newest["createdAt"].as_str().unwrap() >= rest["data"][0]["createdAt"].as_str().unwrap());

    let delivery_id = newest["id"].as_str().unwrap();
    let one =
        daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries/{delivery_id}"), ACME_KEY, None).json();
    assert_eq!(one["payload"]["event"], "message.received");
    assert_eq!(one["status"], "succeeded");

    let original =
        receiver.received().into_iter().find(|r| r.header("webhook-id") == Some(delivery_id)).unwrap();
    let reply =
        daemon.call("POST", &format!("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver"), ACME_KEY, None);
    assert_eq!(reply.status, 202, "{}", reply.text);
    let again = receiver.wait_for(6, LONG).remove(5);
    assert_eq!(again.header("webhook-id"), Some(delivery_id));
    assert_eq!(again.body, original.body, "a redelivery sends the identical body");

    let other_tenant =
        daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries/{delivery_id}"), GLOBEX_KEY, None);
    assert_eq!(other_tenant.status, 404);
    let bad_status = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries?status=lost"), ACME_KEY, None);
    assert_eq!(bad_status.status, 400);
    assert_eq!(bad_status.error_code(), "validation_failed");
}

#[test]
fn deleting_a_subscription_drops_its_queue() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(500));
    let created = subscribe(&daemon, &receiver, json!({ "retryDelaySeconds": 1, "maxRetries": 20 }));
    let id = created["id"].as_str().unwrap();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    receiver.wait_for(1, LONG);
    assert_eq!(daemon.call("DELETE", &format!("/v1/webhooks/{id}"), ACME_KEY, None).status, 204);
    wait_until("the queue is empty", LONG, || daemon.daemon().store().queue_depth() == (0, 0));
}

#[test]
fn the_connect_time_guard_refuses_names_and_addresses_that_reach_loopback() {
    let receiver = Receiver::start();
    let daemon = TestDaemon::start();
    let by_address = subscribe(&daemon, &receiver, json!({ "maxRetries": 0 }));
    let by_name = daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "by name", "url": format!("http://localhost:{}/hook", receiver.addr.port()), "events": ["message.received"], "maxRetries": 0 }),
    );
    // The same data dir, now with private targets forbidden: the stored URLs resolve to
    // loopback at connect time and must be refused there, as a rebinding name would be.
    let mut guarded = daemon.restart();
    guarded.setup.allow_private_targets = false;
    let guarded = guarded.restart();
    guarded.publish(ACME_KEY, "message.received", json!({}));
    for created in [&by_address, &by_name] {
        let id = created["id"].as_str().unwrap();
        wait_until("the attempt is refused", LONG, || {
            guarded.subscription(ACME_KEY, id)["isActive"] == false
        });
        let subscription = guarded.subscription(ACME_KEY, id);
        let error = subscription["lastDeliveryError"].as_str().unwrap();
        assert!(error.contains("refused") && error.contains("loopback"), "{error}");
    }
    assert_eq!(receiver.count(), 0, "nothing reached the loopback receiver");
}

#[test]
fn deliveries_survive_a_restart() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(503));
    let created = subscribe(&daemon, &receiver, json!({ "retryDelaySeconds": 2, "maxRetries": 5 }));
    daemon.publish(ACME_KEY, "message.received", json!({ "keep": true }));
    receiver.wait_for(1, LONG);
    let daemon = daemon.restart();
    receiver.set_default(Answer::status(200));
    let received = receiver.wait_for(2, LONG);
    assert_eq!(received[1].json()["data"]["keep"], true);
    let id = created["id"].as_str().unwrap();
    wait_until("recorded as succeeded", LONG, || deliveries(&daemon, id, "")[0]["status"] == "succeeded");
}
