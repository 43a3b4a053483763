//! Host faults and time rules: a full file system (a tmpfs the test mounts, filled under load,
//! then grown), a file system the kernel turns read-only under the running daemon, a daemon
//! refusing writes that still stops cleanly, the systemd watchdog, `hold_retention` counted from
//! the hold, `disabledAt` from the end of the attempt, idempotency conflicts, and receivers that
//! answer and then reset the connection.
//!
//! The mount tests need root (CI runs as root) and, for the read-only case, a loop device.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::process::{binary, listening_addr, logged_event_ids, Running, Served};
use crate::support::*;

const LONG: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

fn sh(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|err| panic!("{program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed (these tests need root and loop devices): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A file system mounted for one test, unmounted when dropped.
struct Mounted {
    path: PathBuf,
}

impl Mounted {
    fn tmpfs(path: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(path).unwrap();
        sh("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path.to_str().unwrap()]);
        Mounted { path: path.to_owned() }
    }

    /// An ext4 image on a loop device that the kernel remounts read-only on its first error.
    fn ext4(image: &Path, path: &Path) -> Mounted {
        std::fs::create_dir_all(path).unwrap();
        sh("truncate", &["-s", "64M", image.to_str().unwrap()]);
        sh("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        sh("mount", &["-o", "loop,errors=remount-ro", image.to_str().unwrap(), path.to_str().unwrap()]);
        Mounted { path: path.to_owned() }
    }

    fn resize(&self, size: &str) {
        sh("mount", &["-o", &format!("remount,size={size}"), self.path.to_str().unwrap()]);
    }

    /// The block device under the mount, e.g. `loop3`.
    fn device(&self) -> String {
        let output = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(&self.path).output().unwrap();
        let source = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        source.rsplit('/').next().unwrap().to_owned()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A config file for `setup` with its data in `data_dir`, in its own temporary directory.
fn config_in(setup: &Setup, data_dir: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, setup.config_text(data_dir, "127.0.0.1:0")).unwrap();
    (dir, path)
}

fn publish_big(served: &Served, bytes: usize) -> Reply {
    let data = json!({ "blob": "x".repeat(bytes) });
    served.call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received", "data": data })))
}

fn received_event_ids(receiver: &Receiver) -> HashSet<String> {
    receiver.received().iter().map(|r| r.json()["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_full_disk_costs_only_503s_and_recovers_without_a_restart() {
    let fs_dir = tempfile::tempdir().unwrap();
    let mount = Mounted::tmpfs(&fs_dir.path().join("fs"), "24m");
    let setup = Setup { min_free_bytes: 4 * MIB, storage: Storage::Sled, ..Setup::default() };
    let (dir, config_path) = config_in(&setup, &mount.path.join("data"));
    let mut served = Served::start_with_file(dir, config_path, &[]);

    // One subscription at a dead port (its deliveries stay queued), one at a live receiver.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let body = |url: String| json!({ "name": "n", "url": url, "events": ["message.received"], "retryDelaySeconds": 3600, "maxRetries": 20 });
    let stuck = served.call("POST", "/v1/webhooks", ACME_KEY, Some(body(format!("http://{dead}/hook"))));
    assert_eq!(stuck.status, 201, "{}", stuck.text);
    let stuck_id = stuck.json()["id"].as_str().unwrap().to_owned();
    let receiver = Receiver::start();
    let live = served.call("POST", "/v1/webhooks", ACME_KEY, Some(body(receiver.url("/hook"))));
    assert_eq!(live.status, 201, "{}", live.text);

    // Fill the disk: every request is answered (the client would fail after 30 s), 202 or 503,
    // until the file system itself is below the reserve. The guard refuses on an estimate (each
    // admitted event counts twice its body until the next `statvfs`, up to 100 ms later), so a
    // burst of refusals can come while the file system still has the reserve free: after a
    // refusal, a reading of more than 100 ms later says whether it really is low; if not,
    // publishing goes on.
    let mut accepted = HashSet::new();
    let mut refused = 0;
    let mut low = false;
    for _ in 0..2000 {
        let reply = publish_big(&served, 50_000);
        match reply.status {
            202 => {
                accepted.insert(reply.json()["id"].as_str().unwrap().to_owned());
            }
            503 => {
                assert_eq!(reply.error_code(), "unavailable");
                assert!(reply.error_message().contains("low on space"), "{}", reply.text);
                refused += 1;
                std::thread::sleep(Duration::from_millis(150));
                if served.call("GET", "/readyz", ACME_KEY, None).json()["storage"] == "low_space" {
                    low = true;
                    break;
                }
            }
            other => panic!("publish answered {other}: {}", reply.text),
        }
    }
    assert!(
        low,
        "the 24 MiB disk never filled: {} accepted, {refused} refused\n{}",
        accepted.len(),
        served.process.transcript()
    );
    assert!(accepted.len() > 50, "only {} events fit before the reserve", accepted.len());

    // Reads answer, liveness stays true, and readiness and the health gauge say why writes are
    // refused. Both read the file system again every 100 ms, and sled may free a little space
    // as it cleans its segments, so a reading near the reserve may flip: wait for one where
    // both say it is low rather than race them.
    assert_eq!(served.call("GET", "/v1/webhooks", ACME_KEY, None).status, 200);
    assert_eq!(served.call("GET", "/healthz", ACME_KEY, None).status, 200);
    let mut metrics = String::new();
    wait_until("readiness and the health gauge report low space", Duration::from_secs(10), || {
        let ready = served.call("GET", "/readyz", ACME_KEY, None);
        metrics = served.call("GET", "/metrics", ACME_KEY, None).text;
        ready.status == 503
            && ready.json()["storage"] == "low_space"
            && ready.json()["storageReason"].as_str().unwrap_or("").contains("min_free_bytes")
            && metrics.contains("atender_storage_healthy 0")
    });
    assert!(!metrics.contains("atender_storage_errors_total{kind=\"no_space\"} 0\n"), "{metrics}");
    assert!(metrics.contains("atender_thread_errors_total{thread=\"publish-writer\"}"), "{metrics}");
    assert!(!metrics.contains("atender_thread_errors_total{thread=\"publish-writer\"} 0\n"), "{metrics}");

    // Deliveries of what is stored go on meanwhile.
    wait_until("the live receiver got every accepted event", LONG, || {
        received_event_ids(&receiver).is_superset(&accepted)
    });

    // Grow the file system: writes succeed again by themselves, without a restart.
    mount.resize("96m");
    let mut recovered = None;
    wait_until("publishing succeeds again", Duration::from_secs(15), || {
        let reply = publish_big(&served, 1000);
        if reply.status == 202 {
            recovered = Some(reply.json()["id"].as_str().unwrap().to_owned());
        }
        reply.status == 202
    });
    accepted.insert(recovered.unwrap());
    wait_until("ready again", Duration::from_secs(10), || {
        served.call("GET", "/readyz", ACME_KEY, None).status == 200
    });

    // SIGTERM exits 0; after a restart every acknowledged event is stored.
    served.stop("TERM");
    let served = served.restart(&[]);
    let logged = logged_event_ids(&served, &stuck_id);
    let missing: Vec<_> = accepted.difference(&logged).collect();
    assert!(missing.is_empty(), "{} acknowledged events lost: {missing:?}", missing.len());
    drop(served);
    drop(mount);
}

#[test]
fn a_daemon_refusing_writes_for_space_serves_reads_and_stops_cleanly() {
    // A reserve no disk can meet: every write is refused from the start.
    let setup = Setup { min_free_bytes: 1 << 50, storage: Storage::Sled, ..Setup::default() };
    let mut served = Served::start(&setup, &[]);
    let create = json!({ "name": "n", "url": "http://127.0.0.1:9/hook", "events": ["message.received"] });
    let started = Instant::now();
    let refused = served.call("POST", "/v1/webhooks", ACME_KEY, Some(create));
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.error_code(), "unavailable");
    let event = json!({ "event": "message.received", "data": {} });
    assert_eq!(served.call("POST", "/v1/events", ACME_KEY, Some(event)).status, 503);
    assert!(started.elapsed() < Duration::from_secs(5), "refusals must be prompt");
    assert_eq!(served.call("GET", "/v1/webhooks", ACME_KEY, None).status, 200);
    let ready = served.call("GET", "/readyz", ACME_KEY, None);
    assert_eq!((ready.status, ready.json()["storage"].clone()), (503, json!("low_space")));
    served.stop("TERM");
}

#[test]
fn a_file_system_turned_read_only_exits_for_a_restart_and_loses_nothing() {
    let fs_dir = tempfile::tempdir().unwrap();
    let mount = Mounted::ext4(&fs_dir.path().join("image"), &fs_dir.path().join("fs"));
    let data = mount.path.join("data");
    let (dir, config_path) = config_in(&Setup::default(), &data);
    let mut served = Served::start_with_file(dir, config_path, &[]);
    let receiver = Receiver::start();
    let created = served.call(
        "POST",
        "/v1/webhooks",
        ACME_KEY,
        Some(json!({ "name": "n", "url": receiver.url("/hook"), "events": ["message.received"] })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let mut accepted = HashSet::new();
    let mut publish = |served: &Served| {
        let reply = publish_big(served, 100);
        if reply.status == 202 {
            accepted.insert(reply.json()["id"].as_str().unwrap().to_owned());
        }
        reply.status
    };
    for _ in 0..20 {
        assert_eq!(publish(&served), 202);
    }

    // The kernel turns the file system read-only (as ext4 does on an I/O error).
    let trigger = format!("/sys/fs/ext4/{}/trigger_fs_error", mount.device());
    std::fs::write(&trigger, "test").unwrap_or_else(|err| panic!("{trigger}: {err}"));
    let faulted = Instant::now();
    // Requests meanwhile are answered (202 before sled notices, then 503) until the daemon exits.
    while !served.process.has_exited() && faulted.elapsed() < Duration::from_secs(20) {
        let Ok(status) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| publish(&served))) else {
            break; // the connection was refused: the process is gone
        };
        assert!(status == 202 || status == 503, "publish answered {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = served.process.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(75), "{}", served.process.transcript());
    assert_eq!(
        served.process.stderr_count("cannot recover in this process"),
        1,
        "{}",
        served.process.transcript()
    );

    // The operator repairs the file system; the restarted daemon delivers everything acknowledged.
    sh("umount", &[mount.path.to_str().unwrap()]);
    let _ = Command::new("e2fsck").args(["-fy"]).arg(fs_dir.path().join("image")).output();
    let image = fs_dir.path().join("image");
    sh("mount", &["-o", "loop", image.to_str().unwrap(), mount.path.to_str().unwrap()]);
    let served = served.restart(&[]);
    wait_until("every acknowledged event is delivered", LONG, || {
        received_event_ids(&receiver).is_superset(&accepted)
    });
    drop(served);
    drop(mount);
}

#[test]
fn the_systemd_watchdog_is_fed_while_every_thread_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, Setup::default().config_text(&dir.path().join("data"), "127.0.0.1:0"))
        .unwrap();
    let mut command = binary();
    command
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID");
    let mut process = Running::start(command);
    let addr = listening_addr(&process.wait_for_stderr("listening", LONG));
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while messages.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3
        && Instant::now() < deadline
    {
        let mut buffer = [0u8; 512];
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    assert!(messages.iter().any(|m| m.contains("READY=1")), "{messages:?}");
    assert!(messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3, "{messages:?}");
    let health = call_json("GET", &format!("http://{addr}/healthz"), ACME_KEY, None);
    assert_eq!((health.status, health.json()), (200, json!({ "status": "ok" })));
    process.signal("TERM");
    assert_eq!(process.wait_exit(LONG).code(), Some(0));
}

fn subscribe(daemon: &TestDaemon, url: &str, extra: Value) -> String {
    let mut body = json!({ "name": "n", "url": url, "events": ["message.received"] });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    daemon.create_subscription(ACME_KEY, body)["id"].as_str().unwrap().to_owned()
}

fn delivery_status(daemon: &TestDaemon, subscription: &str, delivery: &str) -> String {
    let reply =
        daemon.call("GET", &format!("/v1/webhooks/{subscription}/deliveries/{delivery}"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["status"].as_str().unwrap().to_owned()
}

fn only_delivery(daemon: &TestDaemon, subscription: &str) -> String {
    let reply = daemon.call("GET", &format!("/v1/webhooks/{subscription}/deliveries"), ACME_KEY, None);
    reply.json()["data"][0]["id"].as_str().unwrap().to_owned()
}

fn patch(daemon: &TestDaemon, subscription: &str, body: Value) {
    let reply = daemon.call("PATCH", &format!("/v1/webhooks/{subscription}"), ACME_KEY, Some(body));
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[test]
fn hold_retention_counts_from_the_moment_a_delivery_became_held() {
    let daemon = TestDaemon::with(Setup { hold_retention: "3s", ..Setup::default() });
    let receiver = Receiver::start();
    let id = subscribe(&daemon, &receiver.url("/hook"), json!({}));
    daemon.publish(ACME_KEY, "message.received", json!({ "n": 1 }));
    receiver.wait_for(1, LONG);
    let delivery = only_delivery(&daemon, &id);
    wait_until("the delivery succeeded", LONG, || delivery_status(&daemon, &id, &delivery) == "succeeded");

    // Older than hold_retention since its creation, then redelivered into a paused subscription.
    std::thread::sleep(Duration::from_millis(3500));
    patch(&daemon, &id, json!({ "isPaused": true }));
    let redeliver =
        daemon.call("POST", &format!("/v1/webhooks/{id}/deliveries/{delivery}/redeliver"), ACME_KEY, None);
    assert_eq!(redeliver.status, 202, "{}", redeliver.text);
    assert_eq!(redeliver.json()["status"], "held");
    // Several janitor sweeps (every second at this retention) leave it held.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        delivery_status(&daemon, &id, &delivery),
        "held",
        "expired before hold_retention since the hold"
    );
    patch(&daemon, &id, json!({ "isPaused": false }));
    // Released and sent, not expired.
    receiver.wait_for(2, LONG);
    wait_until("the redelivery succeeded", LONG, || delivery_status(&daemon, &id, &delivery) == "succeeded");

    // Held anew: expires once hold_retention has passed since this hold, not before.
    patch(&daemon, &id, json!({ "isPaused": true }));
    daemon.publish(ACME_KEY, "message.received", json!({ "n": 2 }));
    let held_at = Instant::now();
    let second = only_delivery(&daemon, &id);
    assert_ne!(second, delivery);
    wait_until("the held delivery expires", LONG, || delivery_status(&daemon, &id, &second) == "expired");
    assert!(
        held_at.elapsed() >= Duration::from_millis(2900),
        "expired {:?} after the hold",
        held_at.elapsed()
    );
    patch(&daemon, &id, json!({ "isPaused": false }));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.count(), 2, "an expired delivery is never sent");
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp like `2026-11-29T06:05:50Z`.
fn epoch_seconds(text: &str) -> i64 {
    let number = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
    let (mut year, month, day) = (number(0..4), number(5..7), number(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    if month <= 2 {
        year -= 1;
    }
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    days * 86_400 + number(11..13) * 3600 + number(14..16) * 60 + number(17..19)
}

#[test]
fn disabled_at_is_when_the_giving_up_attempt_ended() {
    let daemon = TestDaemon::with(Setup { timeout: "10s", ..Setup::default() });
    let receiver = Receiver::answering(Answer::status(410).after(Duration::from_millis(2500)));
    let id = subscribe(&daemon, &receiver.url("/hook"), json!({}));
    daemon.publish(ACME_KEY, "message.received", json!({}));
    wait_until("the subscription is disabled", LONG, || {
        daemon.subscription(ACME_KEY, &id)["isActive"] == false
    });
    let subscription = daemon.subscription(ACME_KEY, &id);
    let started = epoch_seconds(subscription["lastDeliveryAt"].as_str().unwrap());
    let disabled = epoch_seconds(subscription["disabledAt"].as_str().unwrap());
    assert!(
        disabled - started >= 2,
        "disabledAt {disabled} is not after the 2.5 s attempt that began at {started}"
    );
}

#[test]
fn an_idempotency_id_reused_for_another_event_is_a_conflict() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::start();
    subscribe(&daemon, &receiver.url("/hook"), json!({}));
    let publish = |body: Value| daemon.call("POST", "/v1/events", ACME_KEY, Some(body));

    let first =
        publish(json!({ "event": "message.received", "id": "order-42", "data": { "a": 1, "b": [1, 2] } }));
    assert_eq!(first.status, 202, "{}", first.text);
    let event_id = first.json()["id"].clone();
    // The same request (keys in another order) is the same event: the first answer.
    let again =
        publish(json!({ "event": "message.received", "id": "order-42", "data": { "b": [1, 2], "a": 1 } }));
    assert_eq!((again.status, again.json()["id"].clone()), (202, event_id.clone()));
    // Other data, or another type, under the same id: 422 naming the id; nothing stored.
    for other in [
        json!({ "event": "message.received", "id": "order-42", "data": { "a": 2, "b": [1, 2] } }),
        json!({ "event": "message.sent", "id": "order-42", "data": { "a": 1, "b": [1, 2] } }),
        json!({ "event": "message.received", "id": "order-42" }),
    ] {
        let conflict = publish(other.clone());
        assert_eq!(conflict.status, 422, "{other}: {}", conflict.text);
        assert_eq!(conflict.error_code(), "idempotency_conflict");
        assert!(conflict.error_message().contains("\"order-42\""), "{}", conflict.text);
    }

    // Numbers compare as written: two integers beyond 2^64 that a float would merge differ.
    let raw = |n: &str| {
        let body = format!(r#"{{"event": "message.received", "id": "big-number", "data": {{"n": {n}}}}}"#);
        send(
            "POST",
            &daemon.url("/v1/events"),
            &[("Authorization", &format!("Bearer {ACME_KEY}")), ("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(raw("18446744073709551616").status, 202);
    assert_eq!(raw("18446744073709551616").status, 202);
    assert_eq!(raw("18446744073709551617").status, 422);

    // In a batch the conflict names the event, and the whole batch is refused.
    let batch = daemon.call(
        "POST",
        "/v1/events/batch",
        ACME_KEY,
        Some(json!({ "events": [
            { "event": "message.received", "id": "fresh-1", "data": {} },
            { "event": "message.received", "id": "order-42", "data": { "a": 3 } },
        ] })),
    );
    assert_eq!(batch.status, 422, "{}", batch.text);
    assert!(batch.error_message().starts_with("events[1].id \"order-42\""), "{}", batch.text);
    // Two events of one batch with one id and different data conflict with each other.
    let inner = daemon.call(
        "POST",
        "/v1/events/batch",
        ACME_KEY,
        Some(json!({ "events": [
            { "event": "message.received", "id": "twin", "data": { "n": 1 } },
            { "event": "message.received", "id": "twin", "data": { "n": 2 } },
        ] })),
    );
    assert_eq!(inner.status, 422, "{}", inner.text);
    // fresh-1 was not stored by the refused batch: publishing it now creates it.
    let fresh = publish(json!({ "event": "message.received", "id": "fresh-1", "data": {} }));
    assert_eq!(fresh.status, 202);
    assert_eq!(fresh.json()["deliveries"], 1);

    // Concurrent identical requests with one id store one event.
    let url = daemon.url("/v1/events");
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    let body = json!({ "event": "message.received", "id": "burst", "data": { "k": "v" } });
                    let reply = call_json("POST", &url, ACME_KEY, Some(body));
                    assert_eq!(reply.status, 202, "{}", reply.text);
                    reply.json()["id"].clone()
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|id| *id == answers[0]), "{answers:?}");
    wait_until("four events delivered", LONG, || receiver.count() >= 4);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 4, "order-42, big-number, fresh-1 and burst, each once");
}

/// A receiver that reads each request's head, answers with `status` at once and closes without
/// reading the body, so the sender's next write is refused by a reset.
fn answer_then_reset(status: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut writer = stream;
            let _ = writer.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            // Dropping the socket with the body unread makes the kernel answer with a reset.
        }
    });
    format!("http://{addr}/hook")
}

#[test]
fn a_status_sent_before_the_connection_reset_is_recorded() {
    let daemon = TestDaemon::start();
    let gone = subscribe(&daemon, &answer_then_reset("410 Gone"), json!({}));
    let too_large =
        subscribe(&daemon, &answer_then_reset("413 Content Too Large"), json!({ "retryDelaySeconds": 3600 }));
    // A body far larger than the socket buffers take before the receiver closes.
    daemon.publish(ACME_KEY, "message.received", json!({ "blob": "y".repeat(900_000) }));

    wait_until("the 410 disables its subscription", LONG, || {
        daemon.subscription(ACME_KEY, &gone)["isActive"] == false
    });
    let subscription = daemon.subscription(ACME_KEY, &gone);
    assert_eq!(subscription["lastDeliveryResponseCode"], 410, "{subscription}");
    assert!(subscription["disableReason"].as_str().unwrap().contains("410 Gone"), "{subscription}");

    wait_until("the 413 attempt is recorded", LONG, || {
        daemon.subscription(ACME_KEY, &too_large)["lastDeliveryAt"].is_string()
    });
    let subscription = daemon.subscription(ACME_KEY, &too_large);
    assert_eq!(subscription["lastDeliveryResponseCode"], 413, "{subscription}");
    assert_eq!(subscription["lastDeliveryStatus"], "failed");
    assert_eq!(subscription["isActive"], true, "a 413 is a failed attempt, retried later");
}

#[test]
fn a_hung_disk_gets_503s_in_time_while_health_and_signals_are_answered() {
    let fs_dir = tempfile::tempdir().unwrap();
    let mount = Mounted::ext4(&fs_dir.path().join("image"), &fs_dir.path().join("fs"));
    let (dir, config_path) = config_in(&Setup::default(), &mount.path.join("data"));
    let mut served = Served::start_with_file(dir, config_path, &[]);
    let created = served.call(
        "POST",
        "/v1/webhooks",
        ACME_KEY,
        Some(json!({ "name": "n", "url": "http://127.0.0.1:9/hook", "events": ["message.received"] })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(publish_big(&served, 100).status, 202);

    // The disk stops answering writes (as a hung device does): fsfreeze blocks every write.
    sh("fsfreeze", &["-f", mount.path.to_str().unwrap()]);
    let thaw = Thaw(mount.path.clone());
    let started = Instant::now();
    let (publishes, lists) = std::thread::scope(|scope| {
        // Large events: sled writes them as blob files, so its writer blocks in the file system
        // inside a transaction, holding sled's lock that every read waits for.
        let publishes: Vec<_> =
            (0..4).map(|_| scope.spawn(|| publish_big(&served, 900_000).status)).collect();
        std::thread::sleep(Duration::from_millis(500));
        // More storage reads than the daemon has async workers (one per core).
        let lists: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| served.call("GET", "/v1/webhooks", ACME_KEY, None).status))
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        // Meanwhile the health endpoints answer at once (never stuck behind storage).
        for path in ["/healthz", "/readyz"] {
            let asked = Instant::now();
            let reply = served.call("GET", path, ACME_KEY, None);
            assert!(asked.elapsed() < Duration::from_secs(3), "{path} took {:?}", asked.elapsed());
            assert!(reply.status == 200 || reply.status == 503, "{path}: {}", reply.text);
        }
        let lists: Vec<u16> = lists.into_iter().map(|list| list.join().unwrap()).collect();
        let publishes: Vec<u16> = publishes.into_iter().map(|publish| publish.join().unwrap()).collect();
        (publishes, lists)
    });
    // Every request is answered within the durability wait (10 s) plus room: 503, or the read.
    assert!(started.elapsed() < Duration::from_secs(20), "answers took {:?}", started.elapsed());
    assert!(
        publishes.iter().all(|&status| status == 503),
        "writes that cannot be made durable: {publishes:?}"
    );
    assert!(lists.iter().all(|&list| list == 200 || list == 503), "lists answered {lists:?}");
    let ready = served.call("GET", "/readyz", ACME_KEY, None);
    assert_eq!((ready.status, ready.json()["storage"].clone()), (503, json!("stalled")), "{}", ready.text);
    // The log says so too, once, not once per waiting request.
    served.process.wait_for_stderr("storage did not confirm writes in time", Duration::from_secs(5));
    assert_eq!(served.process.stderr_count("storage did not confirm writes in time"), 1);

    // SIGTERM is taken while the disk hangs; the process ends once the kernel lets its threads
    // out of the frozen file system.
    served.process.signal("TERM");
    served.process.wait_for_stderr("shutting down", Duration::from_secs(10));
    drop(thaw);
    let status = served.process.wait_exit(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{}", served.process.transcript());
    drop(mount);
}

/// Thaws a frozen file system when dropped (also when the test fails).
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).status();
    }
}
