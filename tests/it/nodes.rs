//! Several daemons on one PostgreSQL database (issue "Past one host"): each test starts its own
//! cluster and real daemon processes on it, whatever backend the rest of the suite runs on.
//! - a node killed with SIGKILL mid-stream loses nothing acknowledged: the other node attempts
//!   what the dead one had claimed once its lease ran out;
//! - the per-subscription in-flight cap holds across nodes;
//! - a database restart under load costs 503s, never an acknowledged event, and the daemons
//!   reconnect by themselves.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pg::PgCluster;
use crate::process::Served;
use crate::support::*;

/// Requests each publishing thread sends at most (the deliveries must finish in the test's time).
const EVENTS_PER_THREAD: usize = 300;

/// Longest wait for a condition in these tests.
const LONG: Duration = Duration::from_secs(60);

/// A node of the test: the real binary on the shared database.
fn node(cluster: &PgCluster, setup: &Setup) -> Served {
    Served::start(&Setup { storage: Storage::Postgres(cluster.url()), ..setup.clone() }, &[])
}

/// A short lease, so a dead node's claims run out quickly (it must exceed the 2 s timeout).
fn lease_setup(setup: Setup) -> Setup {
    Setup { lease: Some("3s"), ..setup }
}

fn event_ids(receiver: &Receiver, path: &str) -> Vec<String> {
    receiver
        .received()
        .iter()
        .filter(|received| received.path == path)
        .map(|received| received.json()["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Publishes from `threads` threads, spreading requests over `nodes` in turn, until `stop` or
/// [`EVENTS_PER_THREAD`] requests; returns the ids of the events answered 202. A node that does
/// not answer (killed, or the database down) just costs that request.
fn publish_until(
    nodes: Vec<String>,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..threads)
        .map(|thread| {
            let (nodes, stop) = (nodes.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent = client();
                let mut acknowledged = Vec::new();
                let mut turn = thread;
                for _ in 0..EVENTS_PER_THREAD {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // About 200 events a second from four threads: the stream outlasts the kill.
                    std::thread::sleep(Duration::from_millis(20));
                    turn += 1;
                    let url = format!("{}/v1/events", nodes[turn % nodes.len()]);
                    let result = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {ACME_KEY}"))
                        .header("Content-Type", "application/json")
                        .send(
                            json!({ "event": "message.received", "data": { "thread": thread } }).to_string(),
                        );
                    match result {
                        Ok(mut response) if response.status() == 202 => {
                            let body: Value =
                                serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
                            acknowledged.push(body["id"].as_str().unwrap().to_owned());
                        }
                        Ok(mut response) => {
                            let status = response.status();
                            let text = response.body_mut().read_to_string().unwrap_or_default();
                            assert_eq!(status, 503, "only 202 or 503 while nodes fail: {text}");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                acknowledged
            })
        })
        .collect()
}

fn subscribe(served: &Served, url: &str) -> String {
    let body = json!({ "name": "n", "url": url, "events": ["message.received"], "retryDelaySeconds": 1 });
    let reply = served.call("POST", "/v1/webhooks", ACME_KEY, Some(body));
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_node_killed_mid_stream_loses_nothing_acknowledged() {
    let cluster = PgCluster::start();
    // A receiver a little slower than the publishers, so both nodes hold claims at the kill.
    let receiver = Receiver::answering(Answer::status(200).after(Duration::from_millis(20)));
    let setup = lease_setup(Setup::default());
    let mut first = node(&cluster, &setup);
    let second = node(&cluster, &setup);
    for path in ["/a", "/b"] {
        subscribe(&first, &receiver.url(path));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let publishers = publish_until(vec![first.url(""), second.url("")], 4, stop.clone());
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("deliveries under way on both nodes", LONG, || receiver.count() >= 100)
    }));
    if waited.is_err() {
        panic!(
            "received {}\n{}\n{}\n{}",
            receiver.count(),
            cluster.psql("SELECT state, claimed_by IS NOT NULL, count(*), min(next_attempt_at), extract(epoch from now())*1000 FROM deliveries GROUP BY 1, 2"),
            first.process.transcript(),
            second.process.transcript()
        );
    }
    first.process.signal("KILL");
    first.process.wait_exit(Duration::from_secs(10));
    // The publishers go on with the survivor until they are done.
    let acknowledged: HashSet<String> =
        publishers.into_iter().flat_map(|publisher| publisher.join().unwrap()).collect();
    assert!(acknowledged.len() >= 100, "too few events published: {}", acknowledged.len());

    // Every acknowledged event reaches both subscriptions (the dead node's claims run out
    // after the 3 s lease and the survivor attempts them).
    for path in ["/a", "/b"] {
        wait_until(&format!("every acknowledged event at {path}"), Duration::from_secs(90), || {
            let arrived: HashSet<String> = event_ids(&receiver, path).into_iter().collect();
            acknowledged.is_subset(&arrived)
        });
    }
    // Duplicates are bounded by what was in flight at the kill (the killed node's workers).
    let mut seen: HashMap<(&str, String), usize> = HashMap::new();
    for path in ["/a", "/b"] {
        for id in event_ids(&receiver, path) {
            *seen.entry((path, id)).or_default() += 1;
        }
    }
    let duplicates: usize = seen.values().map(|count| count.saturating_sub(1)).sum();
    assert!(duplicates <= 2 * setup.workers as usize, "{duplicates} duplicate deliveries");
    drop(second);
}

#[test]
fn the_in_flight_cap_holds_across_nodes() {
    let cluster = PgCluster::start();
    // Answers at once until it is trusted by both nodes, then hangs (past the 2 s timeout).
    let receiver = Receiver::start();
    // The hard cap is under test, not adaptation: with adaptive concurrency a node whose quick
    // answers slowed under a loaded machine may keep itself below the cap (the test would then
    // see 1 at once and not know whether the cap is used).
    let setup = lease_setup(Setup {
        max_in_flight_per_subscription: 2,
        adaptive_concurrency: false,
        ..Setup::default()
    });
    let first = node(&cluster, &setup);
    let second = node(&cluster, &setup);
    subscribe(&first, &receiver.url("/hook"));
    // Each node publishes one event and sees its 2xx: both now trust the endpoint (cap 2 each,
    // 4 together without a shared cap).
    for served in [&first, &second] {
        for _ in 0..3 {
            assert_eq!(
                served
                    .call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received" })))
                    .status,
                202
            );
        }
    }
    receiver.wait_for(6, LONG);
    receiver.set_default(Answer::status(200).after(Duration::from_millis(1500)));
    receiver.reset_max_concurrent();
    for served in [&first, &second] {
        for _ in 0..20 {
            assert_eq!(
                served
                    .call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received" })))
                    .status,
                202
            );
        }
    }
    receiver.wait_for(6 + 12, Duration::from_secs(60));
    assert!(receiver.max_concurrent() <= 2, "{} requests at once with a cap of 2", receiver.max_concurrent());
    assert_eq!(receiver.max_concurrent(), 2, "the cap is used, not undershot");
}

#[test]
fn a_database_restart_under_load_loses_nothing_acknowledged() {
    let cluster = PgCluster::start();
    let receiver = Receiver::start();
    let setup = lease_setup(Setup::default());
    let first = node(&cluster, &setup);
    let second = node(&cluster, &setup);
    subscribe(&first, &receiver.url("/hook"));

    let stop = Arc::new(AtomicBool::new(false));
    let publishers = publish_until(vec![first.url(""), second.url("")], 4, stop.clone());
    wait_until("deliveries before the restart", LONG, || receiver.count() >= 100);
    cluster.stop();
    // While the database is down: prompt 503s and honest readiness, never a hang.
    let started = Instant::now();
    let refused = first.call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received" })));
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(started.elapsed() < Duration::from_secs(15), "a 503 must be prompt");
    wait_until("readyz says the database is unavailable", LONG, || {
        let ready = send("GET", &first.url("/readyz"), &[], None);
        ready.status == 503 && ready.json()["storage"] == "unavailable"
    });
    cluster.resume();
    wait_until("both nodes ready again", Duration::from_secs(60), || {
        [&first, &second].iter().all(|served| send("GET", &served.url("/readyz"), &[], None).status == 200)
    });
    let resumed_at = receiver.count();
    wait_until("deliveries after the restart", LONG, || receiver.count() >= resumed_at + 50);
    stop.store(true, Ordering::SeqCst);
    let acknowledged: HashSet<String> =
        publishers.into_iter().flat_map(|publisher| publisher.join().unwrap()).collect();
    wait_until("every acknowledged event delivered", Duration::from_secs(90), || {
        let arrived: HashSet<String> = event_ids(&receiver, "/hook").into_iter().collect();
        acknowledged.is_subset(&arrived)
    });
}

/// A login the server refuses (here a role that does not exist; a wrong password is the same
/// SQLSTATE class 28) stops the start-up with that said, not as an unreachable database.
#[test]
fn a_refused_login_is_named_as_such_at_start_up() {
    let cluster = PgCluster::start();
    let url = cluster.url().replace("postgres@", "nobody@");
    let config = Setup { storage: Storage::Postgres(url), ..Setup::default() };
    let dir = tempfile::tempdir().unwrap();
    let config = atender_webhooks::Config::parse(&config.config_text(dir.path(), "127.0.0.1:0")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let err = match runtime.block_on(atender_webhooks::Daemon::start(config)) {
        Ok(_) => panic!("the daemon started"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains("the database refused the login")
            && err.contains("\"nobody\"")
            && !err.contains("unreachable"),
        "{err}"
    );
}

/// A database lost while deliveries wait is no tight loop of failing claims: each lane waits
/// `FAULT_RETRY` between tries and the log says so about once a second (before, one ~1 s
/// restart wrote thousands of lines, all for one delivery), and everything goes out once the
/// database is back.
#[test]
fn a_lost_database_is_no_tight_loop_of_failing_claims() {
    let cluster = PgCluster::start();
    // Slow enough that most of the events still wait when the database goes.
    let receiver = Receiver::answering(Answer::status(200).after(Duration::from_millis(300)));
    let served = node(&cluster, &lease_setup(Setup::default()));
    subscribe(&served, &receiver.url("/hook"));
    let acknowledged: HashSet<String> = (0..40)
        .map(|_| {
            let reply =
                served.call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received" })));
            assert_eq!(reply.status, 202, "{}", reply.text);
            reply.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    wait_until("the first delivery", LONG, || receiver.count() >= 1);
    cluster.stop();
    wait_until("readyz says the database is unavailable", LONG, || {
        send("GET", &served.url("/readyz"), &[], None).json()["storage"] == "unavailable"
    });
    // The outage under test lasts three seconds more (its length is the input, not a wait).
    std::thread::sleep(Duration::from_secs(3));
    let lines = served.process.stderr_count("cannot prepare a delivery attempt");
    assert!(lines <= 12, "{lines} lines for a 3-4 s outage\n{}", served.process.transcript());
    cluster.resume();
    wait_until("every acknowledged event delivered", Duration::from_secs(90), || {
        let arrived: HashSet<String> = event_ids(&receiver, "/hook").into_iter().collect();
        acknowledged.is_subset(&arrived)
    });
}

#[test]
fn migrate_storage_moves_a_sled_install_to_postgres() {
    let receiver = Receiver::start();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut served = Served::start(&Setup { storage: Storage::Sled, ..Setup::default() }, &[]);
    let live = subscribe(&served, &receiver.url("/live"));
    let body = json!({
        "name": "stuck", "url": format!("http://{refused}/hook"), "events": ["message.received"],
        "retryDelaySeconds": 3600, "maxRetries": 20,
    });
    let stuck =
        served.call("POST", "/v1/webhooks", ACME_KEY, Some(body)).json()["id"].as_str().unwrap().to_owned();
    let once = served.call(
        "POST",
        "/v1/events",
        ACME_KEY,
        Some(json!({ "event": "message.received", "id": "once" })),
    );
    assert_eq!(once.status, 202, "{}", once.text);
    for _ in 0..2 {
        assert_eq!(
            served.call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received" }))).status,
            202
        );
    }
    receiver.wait_for(3, LONG);
    let log = |served: &Served, id: &str| {
        served.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None).json()
    };
    wait_until("a failed attempt on each stuck delivery", LONG, || {
        log(&served, &stuck)["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["attempts"].as_array().unwrap().len() == 1)
    });
    let before = (
        served.call("GET", "/v1/webhooks", ACME_KEY, None).json(),
        log(&served, &live),
        log(&served, &stuck),
    );
    served.stop("TERM");

    // The same file now says PostgreSQL; data_dir still names the sled data.
    let cluster = PgCluster::start();
    let moved = Setup { storage: Storage::Postgres(cluster.url()), ..Setup::default() };
    std::fs::write(&served.config_path, moved.config_text(&served.dir.path().join("data"), "127.0.0.1:0"))
        .unwrap();
    let config = served.config_path.to_str().unwrap().to_owned();
    let args = ["migrate-storage", "--from", "sled", "--to", "postgres", "--config", &config];
    let copied = crate::process::run_binary(&args);
    copied.assert_success();
    assert!(
        copied.stdout.contains("copied 2 subscriptions, 3 events, 6 deliveries and 1 idempotency ids"),
        "{}",
        copied.stdout
    );
    // Run again (after an interruption, say): nothing is copied twice, and it says so.
    let again = crate::process::run_binary(&args);
    again.assert_success();
    assert!(
        again.stdout.contains("copied 0 subscriptions, 0 events, 0 deliveries and 0 idempotency ids")
            && again.stdout.contains("(12 records were there already, from an earlier run, and were kept)"),
        "{}",
        again.stdout
    );
    assert_eq!(cluster.psql("SELECT count(*) FROM deliveries"), "6");

    let mut served = served.restart(&[]);
    served.storage = moved.storage.clone();
    let after = (
        served.call("GET", "/v1/webhooks", ACME_KEY, None).json(),
        log(&served, &live),
        log(&served, &stuck),
    );
    assert_eq!(after, before, "the API shows the same subscriptions and delivery logs");
    // The idempotency id still answers the first event.
    let again = served.call(
        "POST",
        "/v1/events",
        ACME_KEY,
        Some(json!({ "event": "message.received", "id": "once" })),
    );
    assert_eq!(again.json()["id"], once.json()["id"]);
    // The limit still counts the moved subscriptions, and the moved secret still signs.
    assert_eq!(cluster.psql("SELECT subscriptions FROM tenant_counts WHERE tenant_id = 'acme'"), "2");
    assert_eq!(
        served.call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received" }))).status,
        202
    );
    receiver.wait_for(4, LONG);
    served.stop("TERM");
}

/// `sslmode`/`sslrootcert` in the URL, in libpq's words: a server that takes TLS connections
/// only is reached with its CA; without TLS, or without a CA that signed its certificate, the
/// daemon refuses to start and says why.
#[test]
fn the_database_connection_is_encrypted_and_verified_when_the_url_asks() {
    let (cluster, ca) = PgCluster::start_tls();
    let base = cluster.url();
    let verified = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let daemon = TestDaemon::with(Setup { storage: Storage::Postgres(verified), ..Setup::default() });
    let receiver = Receiver::start();
    let body = json!({ "name": "tls", "url": receiver.url("/hook"), "events": ["message.received"] });
    daemon.create_subscription(ACME_KEY, body);
    daemon.publish(ACME_KEY, "message.received", json!({}));
    receiver.wait_for(1, LONG);
    let plaintext = cluster.psql(
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl) FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend'",
    );
    let (unencrypted, encrypted) = plaintext.split_once('|').unwrap();
    assert_eq!(unencrypted, "0", "every connection is TLS");
    assert!(encrypted.parse::<u32>().unwrap() >= 2, "the daemon's connections are there: {plaintext}");

    let refused = |url: String| {
        let config = Setup { storage: Storage::Postgres(url), ..Setup::default() };
        let dir = tempfile::tempdir().unwrap();
        let config = atender_webhooks::Config::parse(&config.config_text(dir.path(), "127.0.0.1:0")).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        match runtime.block_on(atender_webhooks::Daemon::start(config)) {
            Ok(_) => panic!("the daemon started"),
            Err(err) => format!("{err:#}"),
        }
    };
    let without_tls = refused(base.clone());
    assert!(without_tls.contains("no encryption"), "{without_tls}");
    let unknown_ca = refused(format!("{base}?sslmode=require"));
    assert!(unknown_ca.contains("certificate"), "{unknown_ca}");
}

/// A node killed while it holds claims keeps back only the deliveries it claimed: the
/// survivor goes on delivering the subscription's other events at once, long before the dead
/// node's lease ends (before, each of the survivor's claims met the dead claim first and its
/// whole lane waited, so nothing went out for the lease).
#[test]
fn a_killed_nodes_claims_hold_back_only_their_own_deliveries() {
    let cluster = PgCluster::start();
    let receiver = Receiver::start();
    let setup = Setup {
        lease: Some("30s"),
        timeout: "25s",
        max_in_flight_per_subscription: 4,
        adaptive_concurrency: false,
        ..Setup::default()
    };
    let mut first = node(&cluster, &setup);
    let second = node(&cluster, &setup);
    subscribe(&first, &receiver.url("/hook"));
    let publish = |served: &Served, count: usize| {
        for _ in 0..count {
            let reply =
                served.call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received" })));
            assert_eq!(reply.status, 202, "{}", reply.text);
        }
    };
    // Nothing pending or claimed: no node is inside a transaction on the subscription (a node
    // stopped inside one would hold its row lock).
    let settled = || {
        wait_until("every delivery recorded", LONG, || {
            cluster
                .psql("SELECT count(*) FROM deliveries WHERE state = 'pending' OR claimed_by IS NOT NULL")
                .trim()
                == "0"
        })
    };
    // Each node earns the endpoint's trust (a suspect subscription gets one claim at a time
    // across nodes), delivering alone while the other is stopped (SIGSTOP).
    second.process.signal("STOP");
    publish(&first, 3);
    receiver.wait_for(3, LONG);
    settled();
    second.process.signal("CONT");
    first.process.signal("STOP");
    publish(&second, 3);
    receiver.wait_for(6, LONG);
    settled();
    first.process.signal("CONT");

    // Two slow requests claimed by the first node alone; then it is killed while they hang.
    receiver.script([
        Answer::status(200).after(Duration::from_secs(20)),
        Answer::status(200).after(Duration::from_secs(20)),
    ]);
    second.process.signal("STOP");
    publish(&first, 2);
    receiver.wait_for(8, LONG);
    second.process.signal("CONT");
    first.process.signal("KILL");
    first.process.wait_exit(Duration::from_secs(10));

    let killed_at = Instant::now();
    publish(&second, 5);
    receiver.wait_for(13, LONG);
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "the survivor's deliveries waited {:?}, as long as the dead node's lease",
        killed_at.elapsed()
    );
}
