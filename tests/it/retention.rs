//! Time-based housekeeping on real storage: held deliveries expire after `hold_retention`,
//! finished records are purged after `delivery_retention`, idempotency ids are forgotten after
//! 24 h. The janitor runs these with the clock; here they are called with a future `now`.

use std::time::Duration;

use atender_webhooks::model::EventId;
use serde_json::json;

use crate::support::*;

const HOUR_MS: u64 = 3_600_000;

fn log(daemon: &TestDaemon, id: &str) -> Vec<serde_json::Value> {
    daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None).json()["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn held_deliveries_expire_after_the_hold_retention() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "paused", "url": receiver.url("/"), "events": ["message.received"], "isPaused": true }),
    );
    let id = created["id"].as_str().unwrap();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    let store = daemon.daemon().store();
    let now = atender_webhooks::model::now_millis();
    assert_eq!(store.expire_held(now + 71 * HOUR_MS, 72 * HOUR_MS).unwrap(), 0, "not yet 72 h old");
    assert_eq!(store.expire_held(now + 73 * HOUR_MS, 72 * HOUR_MS).unwrap(), 1);
    assert_eq!(log(&daemon, id)[0]["status"], "expired");
    assert_eq!(store.queue_depth(), (0, 0));

    // Unpausing later does not resurrect it: nothing was silently dropped, it is visibly expired.
    daemon.call("PATCH", &format!("/v1/webhooks/{id}"), ACME_KEY, Some(json!({ "isPaused": false })));
    daemon.publish(ACME_KEY, "message.received", json!({ "fresh": true }));
    let received = receiver.wait_for(1, Duration::from_secs(20));
    assert_eq!(received[0].json()["data"]["fresh"], true);
}

#[test]
fn finished_records_are_purged_after_the_delivery_retention() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "done", "url": receiver.url("/"), "events": ["message.received"] }),
    );
    let id = created["id"].as_str().unwrap();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    receiver.wait_for(1, Duration::from_secs(20));
    wait_until("the delivery is finished", Duration::from_secs(20), || {
        log(&daemon, id)[0]["status"] == "succeeded"
    });
    let delivery = log(&daemon, id)[0].clone();
    let store = daemon.daemon().store();
    let now = atender_webhooks::model::now_millis();
    assert_eq!(store.purge_finished(now + 24 * HOUR_MS, 7 * 24 * HOUR_MS).unwrap(), 0);
    assert_eq!(store.purge_finished(now + 8 * 24 * HOUR_MS, 7 * 24 * HOUR_MS).unwrap(), 1);
    assert!(log(&daemon, id).is_empty());
    let event_id = delivery["eventId"].as_str().unwrap();
    assert!(
        store.event(&EventId::parse(event_id).unwrap()).unwrap().is_none(),
        "the event goes with its last delivery"
    );
}

#[test]
fn idempotency_ids_are_forgotten_after_a_day() {
    let daemon = TestDaemon::start();
    let body = json!({ "event": "message.received", "id": "once" });
    let first = daemon.call("POST", "/v1/events", ACME_KEY, Some(body.clone())).json();
    let store = daemon.daemon().store();
    let now = atender_webhooks::model::now_millis();
    assert_eq!(store.purge_idempotency(now + HOUR_MS).unwrap(), 0);
    assert_eq!(store.purge_idempotency(now + 25 * HOUR_MS).unwrap(), 1);
    let again = daemon.call("POST", "/v1/events", ACME_KEY, Some(body)).json();
    assert_ne!(first["id"], again["id"], "a forgotten id publishes anew");
}
