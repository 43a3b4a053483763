//! The shortest path through the product: create a subscription, publish, receive it signed.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[test]
fn a_published_event_arrives_signed() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "smoke", "url": receiver.url("/hook"), "events": ["message.received"] }),
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    let published = daemon.publish(ACME_KEY, "message.received", json!({ "text": "hi" }));
    assert_eq!(published["deliveries"], 1);
    let received = receiver.wait_for(1, Duration::from_secs(10));
    let delivery = &received[0];
    assert_eq!(delivery.json()["data"]["text"], "hi");
    let expected = atender_webhooks::delivery::signer::atender_signature(&secret, &delivery.body);
    assert_eq!(delivery.header("x-atender-signature"), Some(expected.as_str()));
}
