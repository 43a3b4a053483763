//! `rateLimitPerSecond`: validation, the create/patch/get round trip (null included), and the
//! limit on a real daemon with a backlog: every delivery arrives, no 1-second window holds more
//! attempt starts than the limit (measured in the delivery log and at the receiver), retries
//! count, removing the limit lets the rest flow, and a waiting limited subscription holds no
//! worker. Under `ATENDER_TEST_STORAGE=postgres ATENDER_TEST_NODES=2` two daemons share the
//! work: the limit holds across them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// How much earlier than its start an attempt may reach the receiver, relative to the previous
/// ones: the limit spaces the attempt *starts* (exact, checked in the delivery log); between a
/// start and the receiver's clock lie the worker, the loopback and the receiver's runtime,
/// whose delays differ from one request to the next on a loaded machine.
const TRANSIT_JITTER: Duration = Duration::from_millis(100);

fn subscribe(daemon: &TestDaemon, receiver: &Receiver, event: &str, extra: Value) -> String {
    let mut body = json!({ "name": "limited", "url": receiver.url("/hook"), "events": [event] });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    daemon.create_subscription(ACME_KEY, body)["id"].as_str().unwrap().to_owned()
}

/// Publishes `count` events of one type in one batch (a backlog queued at once).
fn publish_batch(daemon: &TestDaemon, event: &str, count: usize) {
    let events: Vec<Value> = (0..count).map(|n| json!({ "event": event, "data": { "n": n } })).collect();
    let reply = daemon.call("POST", "/v1/events/batch", ACME_KEY, Some(json!({ "events": events })));
    assert_eq!(reply.status, 202, "{}", reply.text);
}

/// Every attempt start (Unix ms) of a subscription's deliveries, sorted, read behind the API
/// (the API shows whole seconds).
fn attempt_starts(daemon: &TestDaemon, id: &str) -> Vec<u64> {
    let id = atender_webhooks::model::SubscriptionId::parse(id).unwrap();
    let (deliveries, _) =
        daemon.daemon().store().list_deliveries(&id, None, 100, None).expect("storage reads");
    let mut starts: Vec<u64> =
        deliveries.iter().flat_map(|delivery| delivery.attempts.iter().map(|attempt| attempt.at)).collect();
    starts.sort_unstable();
    starts
}

/// Asserts that no window of `window` holds more than `limit` of the sorted `instants`: any
/// `limit + 1` consecutive ones span at least `window`.
fn assert_at_most_per_window(what: &str, instants: &[Duration], limit: usize, window: Duration) {
    for (index, pair) in instants.windows(limit + 1).enumerate() {
        let span = pair[limit] - pair[0];
        assert!(
            span >= window,
            "{what}: {} within {span:?} (from #{index}), more than {limit} per {window:?}: {instants:?}",
            limit + 1
        );
    }
}

/// Waits until the subscription's `count` deliveries have all succeeded (none has an attempt
/// left to make), then checks that the receiver got each exactly once.
fn assert_all_delivered_once(daemon: &TestDaemon, receiver: &Receiver, id: &str, count: usize) {
    wait_until("every delivery succeeded", Duration::from_secs(10), || {
        let log =
            daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries?limit=100"), ACME_KEY, None).json();
        let deliveries = log["data"].as_array().unwrap().clone();
        deliveries.len() == count && deliveries.iter().all(|delivery| delivery["status"] == "succeeded")
    });
    assert_eq!(receiver.count(), count, "each delivered once");
}

fn receiver_instants(received: &[Received]) -> Vec<Duration> {
    let first = received.iter().map(|r| r.at).min().unwrap();
    let mut instants: Vec<Duration> = received.iter().map(|r| r.at - first).collect();
    instants.sort_unstable();
    instants
}

fn millis(starts: &[u64]) -> Vec<Duration> {
    starts.iter().map(|at| Duration::from_millis(at - starts[0])).collect()
}

#[test]
fn bad_rate_limits_are_refused_naming_the_field_and_change_nothing() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let base = json!({ "name": "n", "url": receiver.url("/hook"), "events": ["message.received"] });
    let id = subscribe(&daemon, &receiver, "message.received", json!({ "rateLimitPerSecond": 5 }));
    for bad in
        [json!(0), json!(-1), json!(10_001), json!(2.5), json!("5"), json!(true), json!([5]), json!({})]
    {
        let mut body = base.clone();
        body["rateLimitPerSecond"] = bad.clone();
        let created = daemon.call("POST", "/v1/webhooks", ACME_KEY, Some(body));
        let patched = daemon.call(
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            ACME_KEY,
            Some(json!({ "rateLimitPerSecond": bad })),
        );
        for reply in [created, patched] {
            assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
            assert_eq!(reply.error_code(), "validation_failed");
            assert!(reply.error_message().contains("rateLimitPerSecond"), "{bad}: {}", reply.error_message());
        }
    }
    let out_of_range = daemon.call(
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        ACME_KEY,
        Some(json!({ "rateLimitPerSecond": 0 })),
    );
    assert_eq!(out_of_range.error_message(), "rateLimitPerSecond must be between 1 and 10000");
    // A bad field refuses the whole PATCH: the name given beside it is not applied either.
    let mixed = daemon.call(
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        ACME_KEY,
        Some(json!({ "name": "renamed", "rateLimitPerSecond": 10_001 })),
    );
    assert_eq!(mixed.status, 400);
    let stored = daemon.subscription(ACME_KEY, &id);
    assert_eq!((stored["name"].clone(), stored["rateLimitPerSecond"].clone()), (json!("limited"), json!(5)));
    assert_eq!(
        daemon.call("GET", "/v1/webhooks", ACME_KEY, None).json()["data"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn the_rate_limit_round_trips_through_create_patch_and_get() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let body = json!({ "name": "n", "url": receiver.url("/hook"), "events": ["message.received"] });
    let unlimited = daemon.create_subscription(ACME_KEY, body.clone());
    assert_eq!(unlimited["rateLimitPerSecond"], Value::Null, "absent: no limit, shown as null");
    let explicit_null =
        daemon.create_subscription(ACME_KEY, with(&body, json!({ "rateLimitPerSecond": null })));
    assert_eq!(explicit_null["rateLimitPerSecond"], Value::Null);
    for (given, shown) in [(json!(1), 1), (json!(10_000), 10_000), (json!(5.0), 5)] {
        let created =
            daemon.create_subscription(ACME_KEY, with(&body, json!({ "rateLimitPerSecond": given })));
        assert_eq!(created["rateLimitPerSecond"], shown);
        assert_eq!(
            daemon.subscription(ACME_KEY, created["id"].as_str().unwrap())["rateLimitPerSecond"],
            shown
        );
    }

    let id = unlimited["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}");
    let patch = |body: Value| {
        let reply = daemon.call("PATCH", &path, ACME_KEY, Some(body));
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()
    };
    assert_eq!(patch(json!({ "rateLimitPerSecond": 7 }))["rateLimitPerSecond"], 7);
    assert_eq!(daemon.subscription(ACME_KEY, id)["rateLimitPerSecond"], 7);
    // Absent leaves it as it is.
    let renamed = patch(json!({ "name": "renamed" }));
    assert_eq!(
        (renamed["name"].clone(), renamed["rateLimitPerSecond"].clone()),
        (json!("renamed"), json!(7))
    );
    // The list shows it too.
    let listed = daemon.call("GET", "/v1/webhooks", ACME_KEY, None).json();
    let row = listed["data"].as_array().unwrap().iter().find(|row| row["id"] == id).unwrap().clone();
    assert_eq!(row["rateLimitPerSecond"], 7);
    // null removes it.
    assert_eq!(patch(json!({ "rateLimitPerSecond": null }))["rateLimitPerSecond"], Value::Null);
    assert_eq!(daemon.subscription(ACME_KEY, id)["rateLimitPerSecond"], Value::Null);
    // Stored as the API shows it (what the engine reads).
    assert_eq!(daemon.stored("acme", id).unwrap().rate_limit_per_second, None);
}

/// `base` with `fields` set.
fn with(base: &Value, fields: Value) -> Value {
    let mut merged = base.clone();
    for (key, value) in fields.as_object().unwrap() {
        merged[key] = value.clone();
    }
    merged
}

#[test]
fn a_backlog_arrives_whole_and_never_faster_than_the_limit() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let id = subscribe(&daemon, &receiver, "message.received", json!({ "rateLimitPerSecond": 5 }));
    publish_batch(&daemon, "message.received", 30);
    // 30 at 5/s: at least 5.8 s from the first to the last.
    let received = receiver.wait_for(30, Duration::from_secs(60));
    wait_until("every attempt recorded", Duration::from_secs(10), || {
        attempt_starts(&daemon, &id).len() == 30
    });
    assert_all_delivered_once(&daemon, &receiver, &id, 30);

    let starts = attempt_starts(&daemon, &id);
    assert_at_most_per_window("attempt starts", &millis(&starts), 5, Duration::from_secs(1));
    assert_at_most_per_window(
        "arrivals",
        &receiver_instants(&received),
        5,
        Duration::from_secs(1) - TRANSIT_JITTER,
    );
    let span = Duration::from_millis(starts[29] - starts[0]);
    assert!(span >= Duration::from_millis(5_800), "30 starts 200 ms apart span 5.8 s at least: {span:?}");
}

#[test]
fn retries_count_against_the_limit() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    // The first six answers fail: their retries, due one second later, meet the first tries of
    // the later events, and every one of them counts.
    receiver.script((0..6).map(|_| Answer::status(503)));
    let id = subscribe(
        &daemon,
        &receiver,
        "message.received",
        json!({ "rateLimitPerSecond": 2, "retryDelaySeconds": 1, "maxRetries": 3 }),
    );
    publish_batch(&daemon, "message.received", 6);
    let received = receiver.wait_for(12, Duration::from_secs(60));
    wait_until("every attempt recorded", Duration::from_secs(10), || {
        attempt_starts(&daemon, &id).len() == 12
    });

    let starts = attempt_starts(&daemon, &id);
    assert_at_most_per_window(
        "attempt starts, retries included",
        &millis(&starts),
        2,
        Duration::from_secs(1),
    );
    assert_at_most_per_window(
        "arrivals",
        &receiver_instants(&received),
        2,
        Duration::from_secs(1) - TRANSIT_JITTER,
    );
    let deliveries = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None).json();
    assert!(deliveries["data"].as_array().unwrap().iter().all(|delivery| delivery["status"] == "succeeded"));
}

#[test]
fn removing_the_limit_lets_the_rest_of_the_backlog_flow() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let id = subscribe(&daemon, &receiver, "message.received", json!({ "rateLimitPerSecond": 1 }));
    publish_batch(&daemon, "message.received", 20);
    receiver.wait_for(2, Duration::from_secs(30));
    let reply = daemon.call(
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        ACME_KEY,
        Some(json!({ "rateLimitPerSecond": null })),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    // At 1/s the 18 or so left would take 17 s more; without the limit they follow at once.
    receiver.wait_for(20, Duration::from_secs(10));
    assert_all_delivered_once(&daemon, &receiver, &id, 20);
}

#[test]
fn a_limited_subscription_waiting_holds_no_worker() {
    // Two workers: if a limited lane's waits held them, the other subscription would stall.
    let daemon = TestDaemon::with(Setup { workers: 2, ..Setup::default() });
    let limited_receiver = Receiver::start();
    let other_receiver = Receiver::start();
    subscribe(&daemon, &limited_receiver, "message.received", json!({ "rateLimitPerSecond": 1 }));
    subscribe(&daemon, &other_receiver, "message.sent", json!({}));
    publish_batch(&daemon, "message.received", 30);
    publish_batch(&daemon, "message.sent", 40);
    // The limited one needs 29 s for its backlog; the other one is not held up behind it.
    other_receiver.wait_for(40, Duration::from_secs(15));
    assert!(limited_receiver.count() < 30, "the limited one is still at 1/s");
}
