//! The delivery guarantee under `kill -9`: publishers run on several threads, the real binary
//! is killed with SIGKILL mid-stream, restarted on the same data dir, and every event that was
//! answered 202 must reach every subscription it matched.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::process::Served;
use crate::support::*;

#[test]
fn every_acknowledged_event_survives_sigkill() {
    // A receiver a little slower than the publishers, so a backlog is queued at the kill.
    let receiver = Receiver::answering(Answer::status(200).after(Duration::from_millis(20)));

    let mut daemon = Served::start(&Setup::default(), &[]);
    let paths = ["/a", "/b"];
    for path in paths {
        let body = json!({ "name": path, "url": receiver.url(path), "events": ["message.received"] });
        let reply = send(
            "POST",
            &daemon.url("/v1/webhooks"),
            &[("Authorization", &format!("Bearer {ACME_KEY}")), ("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(reply.status, 201, "{}", reply.text);
    }

    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (acknowledged, stop, sent) = (acknowledged.clone(), stop.clone(), sent.clone());
            let url = daemon.url("/v1/events");
            std::thread::spawn(move || {
                let agent = client();
                // Bounded: stops on the first failure (the kill) or after 2,000 events.
                for _ in 0..2_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let result = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {ACME_KEY}"))
                        .header("Content-Type", "application/json")
                        .send(json!({ "event": "message.received", "data": {} }).to_string());
                    sent.fetch_add(1, Ordering::SeqCst);
                    match result {
                        Ok(mut response) if response.status() == 202 => {
                            let body: serde_json::Value =
                                serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
                            acknowledged.lock().unwrap().insert(body["id"].as_str().unwrap().to_owned());
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();

    // Kill while publishes and deliveries are in full flow.
    wait_until("publishing in flow", Duration::from_secs(60), || acknowledged.lock().unwrap().len() >= 300);
    daemon.process.signal("KILL");
    daemon.process.wait_exit(Duration::from_secs(20));
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let delivered_before_kill = receiver.count();
    eprintln!(
        "killed after {} publishes ({} acknowledged, {} deliveries arrived)",
        sent.load(Ordering::SeqCst),
        acknowledged.len(),
        delivered_before_kill
    );

    let _restarted = daemon.restart(&[]);
    let arrived = |path: &str| -> HashSet<String> {
        receiver
            .received()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.json()["id"].as_str().unwrap().to_owned())
            .collect()
    };
    for path in paths {
        wait_until(&format!("every acknowledged event at {path}"), Duration::from_secs(120), || {
            acknowledged.is_subset(&arrived(path))
        });
    }
}
