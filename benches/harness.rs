//! The benchmark harness: `cargo bench --bench harness` (release build) starts the daemon on a
//! temporary data dir, a fast in-process receiver and a load generator, measures throughput,
//! latency, isolation, backlog and durability cost, each beside a baseline measured in the same
//! run, and prints a Markdown table. Under `cargo test` (no `--bench` argument) it runs a smoke
//! pass with tiny sizes so the harness cannot rot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atender_webhooks::config::key_digest;

/// PostgreSQL clusters of their own, shared with the integration tests.
#[path = "../tests/it/pg.rs"]
mod pg;
use atender_webhooks::model::{now_millis, Attempt, EventId, Subscription, SubscriptionId};
use atender_webhooks::store::{
    AttemptDecision, AttemptRecord, DueWork, NewEvent, Outcomes, SledStore, Subscriptions, Vitals,
};
use atender_webhooks::{Config, Daemon};
use serde_json::{json, Value};
use warp::Filter;

/// The same allocator as the binary (`src/main.rs`), since the daemon runs in-process here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "sa_live_benchbenchbenchbenchbenchbenchbenc1";
const WORKERS: usize = 16;
const IN_FLIGHT_PER_SUBSCRIPTION: usize = 8;

/// Sizes of one run.
struct Sizes {
    publish_window: Duration,
    e2e_events: usize,
    latency_window: Duration,
    isolation_events: usize,
    hanging_subscriptions: usize,
    backlog: usize,
    /// Events queued at once for the rate-limited subscription.
    rate_backlog: usize,
    /// The real binary's section.
    binary: binary::Sizes,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            publish_window: Duration::from_secs(3),
            e2e_events: 20_000,
            latency_window: Duration::from_secs(5),
            isolation_events: 2_000,
            hanging_subscriptions: 50,
            backlog: std::env::var("BENCH_BACKLOG").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000),
            rate_backlog: 300,
            binary: binary::Sizes::full(),
        }
    }

    fn smoke() -> Sizes {
        Sizes {
            publish_window: Duration::from_millis(200),
            e2e_events: 100,
            latency_window: Duration::from_millis(300),
            isolation_events: 50,
            hanging_subscriptions: 3,
            backlog: 2_000,
            rate_backlog: 15,
            binary: binary::Sizes::smoke(),
        }
    }
}

/// One row of the table.
struct Row {
    figure: String,
    ours: f64,
    baseline: f64,
    unit: &'static str,
    baseline_name: &'static str,
    target: Option<Target>,
}

/// The p50, p99 and max rows (ms) of a latency figure: `figure(name)` names each, `ours` and
/// `baseline` are [p50, p99, max], `targets` the target of each.
fn percentile_rows(
    figure: impl Fn(&str) -> String,
    ours: [f64; 3],
    baseline: [f64; 3],
    baseline_name: &'static str,
    targets: [Option<Target>; 3],
) -> Vec<Row> {
    ["p50", "p99", "max"]
        .into_iter()
        .enumerate()
        .map(|(index, name)| Row {
            figure: figure(name),
            ours: ours[index],
            baseline: baseline[index],
            unit: "ms",
            baseline_name,
            target: targets[index],
        })
        .collect()
}

/// What a row must reach to meet its target.
#[derive(Clone, Copy)]
enum Target {
    /// ours / baseline at least this.
    RatioAtLeast(f64),
    /// ours / baseline at most this (latency-like figures: lower is better).
    RatioAtMost(f64),
    /// ours at least this, in the row's unit.
    AtLeast(f64),
    /// ours at most this, in the row's unit.
    AtMost(f64),
    /// ours within ±10 % of this, in the row's unit.
    Within10Percent(f64),
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let sizes = if full { Sizes::full() } else { Sizes::smoke() };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let receiver = FastReceiver::start();
    let mut rows = Vec::new();
    // `BENCH_ONLY=publish,e2e` runs only those sections (for profiling one of them).
    let only = std::env::var("BENCH_ONLY").ok();
    let named = |section: &str| only.as_deref().is_some_and(|only| only.split(',').any(|s| s == section));
    let wanted = |section: &str| only.is_none() || named(section);

    // 1. Durable publish rate against a warp handler that stores nothing.
    let baseline = runtime.block_on(no_storage_server());
    let publish_modes = if wanted("publish") {
        &[(true, "storing only"), (false, "1 endpoint delivering meanwhile")][..]
    } else {
        &[]
    };
    for &(paused, label) in publish_modes {
        let bench = BenchDaemon::start(&runtime);
        bench.subscribe(&receiver, "/publish", paused);
        for publishers in [1, 16, 64] {
            let ours = publish_rate(bench.addr, publishers, 1, sizes.publish_window);
            let base = publish_rate(baseline, publishers, 1, sizes.publish_window);
            rows.push(Row {
                figure: format!("publish, single, {publishers} publishers, {label}"),
                ours,
                baseline: base,
                unit: "events/s",
                baseline_name: "warp 202, no storage",
                target: (publishers == 64 && paused).then_some(Target::RatioAtLeast(0.5)),
            });
        }
        for publishers in [1, 16] {
            let ours = publish_rate(bench.addr, publishers, 100, sizes.publish_window);
            let base = publish_rate(baseline, publishers, 100, sizes.publish_window);
            rows.push(Row {
                figure: format!("publish, batch of 100, {publishers} publishers, {label}"),
                ours,
                baseline: base,
                unit: "events/s",
                baseline_name: "warp 202, no storage",
                target: None,
            });
        }
        if paused {
            let stats = bench.commit_stats();
            rows.push(Row {
                figure: "publishes sharing one flush (mean, over the publish runs)".into(),
                ours: stats,
                baseline: 1.0,
                unit: "writes/flush",
                baseline_name: "one fsync per write",
                target: None,
            });
        }
        bench.stop(&runtime);
    }

    // 2. End-to-end delivery rate against raw ureq clients posting to the same receiver.
    let mut max_e2e = 4000.0f64;
    let fan_outs = if wanted("e2e") { &[1usize, 10][..] } else { &[] };
    for &fan_out in fan_outs {
        let bench = BenchDaemon::start(&runtime);
        let path = format!("/e2e{fan_out}");
        for _ in 0..fan_out {
            bench.subscribe(&receiver, &path, false);
        }
        let ours = e2e_rate(&bench, &receiver, &path, sizes.e2e_events, fan_out);
        let concurrency = WORKERS.min(IN_FLIGHT_PER_SUBSCRIPTION * fan_out);
        let base = raw_post_rate(receiver.addr, concurrency, sizes.e2e_events * fan_out);
        if fan_out == 1 {
            max_e2e = ours;
        }
        rows.push(Row {
            figure: format!("end-to-end deliveries, fan-out {fan_out}"),
            ours,
            baseline: base,
            unit: "deliveries/s",
            baseline_name: "raw ureq pool, same concurrency",
            target: Some(Target::RatioAtLeast(0.6)),
        });
        bench.stop(&runtime);
    }

    // 3. Latency at half the measured maximum, against a raw POST's round trip at that rate.
    let rate = (max_e2e / 2.0).max(50.0);
    if wanted("latency") {
        let bench = BenchDaemon::start(&runtime);
        bench.subscribe(&receiver, "/latency", false);
        let ours = latency_at(&bench, &receiver, "/latency", rate, sizes.latency_window);
        let raw = raw_latency_at(receiver.addr, rate, sizes.latency_window);
        rows.extend(percentile_rows(
            |name| format!("publish→arrival {name} at {rate:.0}/s"),
            ours,
            raw,
            "raw POST round trip",
            [None, Some(Target::AtMost(20.0)), None],
        ));
        bench.stop(&runtime);
    }

    // 4. Isolation: healthy p99 with hanging endpoints against the same without them.
    if wanted("isolation") {
        let quiet = isolation_p99(&runtime, &receiver, 0, sizes.isolation_events);
        let noisy = isolation_p99(&runtime, &receiver, sizes.hanging_subscriptions, sizes.isolation_events);
        rows.push(Row {
            figure: format!("healthy p99 with {} hanging endpoints", sizes.hanging_subscriptions),
            ours: noisy,
            baseline: quiet,
            unit: "ms",
            baseline_name: "same, no hanging endpoints",
            target: Some(Target::RatioAtMost(2.0)),
        });
    }

    // 5. PostgreSQL: one and two daemons on one database, against sled and the baselines.
    if wanted("postgres") {
        rows.extend(postgres_rows(&runtime, &receiver, baseline, &sizes));
    }

    // 5b. The per-subscription rate limit under a backlog, against an unlimited subscription.
    if wanted("ratelimit") {
        rows.push(rate_limited(&runtime, &receiver, sizes.rate_backlog));
    }

    // 6. Backlog and 7. raw flush latency.
    if wanted("backlog") {
        rows.extend(backlog(sizes.backlog));
    }
    // 8. The real binary with the default config. Several minutes at full size (200,000 events
    // through the binary among them), so `cargo bench` runs it only when named; the smoke pass
    // always runs its tiny version.
    if named("binary") || (!full && wanted("binary")) {
        rows.extend(binary::rows(&receiver, &sizes.binary));
    }
    rows.push(Row {
        figure: "raw flush (write + fdatasync) latency of the data dir".into(),
        ours: raw_fsync_ms(),
        baseline: 0.0,
        unit: "ms",
        baseline_name: "-",
        target: None,
    });

    print_table(&rows, full);
}

/// The PostgreSQL rows: publishing (64 publishers, storing only) and end-to-end delivery to one
/// endpoint on sled, on PostgreSQL with one daemon and with two daemons sharing the database, each
/// against the same run's baselines; publish→arrival at half the one-daemon rate. Every figure
/// gets fresh daemons (and a fresh database, `fsync` on) so no earlier subscription fans out.
/// The end-to-end rows (PostgreSQL and their sled baseline) run the delivery defaults users get
/// ([`default_delivery`]); the raw baseline posts at the default cap of concurrency.
fn postgres_rows(
    runtime: &tokio::runtime::Runtime,
    receiver: &FastReceiver,
    baseline: SocketAddr,
    sizes: &Sizes,
) -> Vec<Row> {
    let mut rows = Vec::new();
    // `BENCH_PG_LATENCY_RATE=N` measures only the latency row, at N events/s (for profiling it).
    let latency_only = std::env::var("BENCH_PG_LATENCY_RATE").ok().and_then(|rate| rate.parse::<f64>().ok());
    if let Some(rate) = latency_only {
        return postgres_latency_rows(runtime, receiver, rate, sizes);
    }
    let no_storage = publish_rate(baseline, 64, 1, sizes.publish_window);
    let sled = BenchDaemon::start(runtime);
    sled.subscribe(receiver, "/pg-publish-sled", true);
    let sled_publish = publish_rate(sled.addr, 64, 1, sizes.publish_window);
    sled.stop(runtime);
    let sled = BenchDaemon::sled_default_delivery(runtime);
    sled.subscribe(receiver, "/pg-e2e-sled", false);
    let sled_e2e = e2e_rate(&sled, receiver, "/pg-e2e-sled", sizes.e2e_events, 1);
    sled.stop(runtime);
    let raw = raw_post_rate(receiver.addr, DEFAULT_IN_FLIGHT_CAP, sizes.e2e_events);

    // `nodes` daemons on a fresh database; the first one creates the subscription.
    let cluster_of = |nodes: usize| {
        let cluster = pg::PgCluster::start_durable();
        let daemons: Vec<BenchDaemon> =
            (0..nodes).map(|_| BenchDaemon::postgres(runtime, &cluster.url())).collect();
        (cluster, daemons)
    };
    let stop = |daemons: Vec<BenchDaemon>| daemons.into_iter().for_each(|daemon| daemon.stop(runtime));
    let mut one_daemon_e2e = 0.0;
    for nodes in [1usize, 2] {
        let label = if nodes == 1 { "1 daemon" } else { "2 daemons" };
        let (_cluster, daemons) = cluster_of(nodes);
        daemons[0].subscribe(receiver, &format!("/pg-publish-{nodes}"), true);
        let addrs: Vec<SocketAddr> = daemons.iter().map(|daemon| daemon.addr).collect();
        let publish = publish_rate_to(&addrs, 64, 1, sizes.publish_window);
        stop(daemons);
        for (baseline, baseline_name) in
            [(no_storage, "warp 202, no storage"), (sled_publish, "sled, same run")]
        {
            rows.push(Row {
                figure: format!("PostgreSQL, {label}: publish, 64 publishers, storing only"),
                ours: publish,
                baseline,
                unit: "events/s",
                baseline_name,
                target: None,
            });
        }

        let (_cluster, daemons) = cluster_of(nodes);
        let path = format!("/pg-e2e-{nodes}");
        daemons[0].subscribe(receiver, &path, false);
        let addrs: Vec<SocketAddr> = daemons.iter().map(|daemon| daemon.addr).collect();
        let e2e = e2e_rate_to(&addrs, receiver, &path, sizes.e2e_events, 1);
        stop(daemons);
        if nodes == 1 {
            one_daemon_e2e = e2e;
        }
        for (baseline, baseline_name) in
            [(raw, "raw ureq pool, same concurrency"), (sled_e2e, "sled, same run")]
        {
            rows.push(Row {
                figure: format!("PostgreSQL, {label}: end-to-end deliveries, one endpoint"),
                ours: e2e,
                baseline,
                unit: "deliveries/s",
                baseline_name,
                target: None,
            });
        }
    }
    rows.extend(postgres_latency_rows(runtime, receiver, (one_daemon_e2e / 2.0).max(50.0), sizes));
    rows
}

/// Publish→arrival p50, p99 and max (ms) on one PostgreSQL daemon at `rate` events/s, open loop
/// from 4 publishing threads, against the raw round trip at the same rate.
fn postgres_latency_rows(
    runtime: &tokio::runtime::Runtime,
    receiver: &FastReceiver,
    rate: f64,
    sizes: &Sizes,
) -> Vec<Row> {
    let cluster = pg::PgCluster::start_durable();
    let daemon = BenchDaemon::postgres(runtime, &cluster.url());
    daemon.subscribe(receiver, "/pg-latency", false);
    let ours = latency_at(&daemon, receiver, "/pg-latency", rate, sizes.latency_window);
    daemon.stop(runtime);
    let raw_latency = raw_latency_at(receiver.addr, rate, sizes.latency_window);
    percentile_rows(
        |name| format!("PostgreSQL, 1 daemon: publish→arrival {name} at {rate:.0}/s"),
        ours,
        raw_latency,
        "raw POST round trip",
        [None; 3],
    )
}

fn print_table(rows: &[Row], full: bool) {
    println!();
    println!("| figure | atender-webhooks | baseline | ratio | unit | baseline is | target |");
    println!("| --- | ---: | ---: | ---: | --- | --- | --- |");
    for row in rows {
        let ratio = if row.baseline > 0.0 { row.ours / row.baseline } else { f64::NAN };
        let verdict = |met: bool| if met { "met" } else { "NOT met" };
        let target = match row.target {
            None => String::new(),
            Some(Target::Within10Percent(expected)) => {
                format!("{expected} ± 10 %: {}", verdict((row.ours - expected).abs() <= expected / 10.0))
            }
            Some(Target::AtLeast(limit)) => format!("≥ {limit} {}: {}", row.unit, verdict(row.ours >= limit)),
            Some(Target::AtMost(limit)) => format!("≤ {limit} {}: {}", row.unit, verdict(row.ours <= limit)),
            Some(Target::RatioAtMost(limit)) => format!("ratio ≤ {limit}: {}", verdict(ratio <= limit)),
            Some(Target::RatioAtLeast(limit)) => format!("ratio ≥ {limit}: {}", verdict(ratio >= limit)),
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {} | {} | {} |",
            row.figure, row.ours, row.baseline, ratio, row.unit, row.baseline_name, target
        );
    }
    if !full {
        println!(
            "\n(smoke run with tiny sizes: figures are not meaningful; run `cargo bench --bench harness`)"
        );
        println!("harness smoke: 1 passed, 0 failed");
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test and the receiver.
// ---------------------------------------------------------------------------------------------

fn config_text(data_dir: &Path, timeout: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
data_dir = "{}"
[delivery]
workers = {WORKERS}
timeout = "{timeout}"
max_in_flight_per_subscription = {IN_FLIGHT_PER_SUBSCRIPTION}
allow_http = true
allow_private_targets = true
[[tenants]]
id = "bench"
max_webhooks = 1000
[[tenants.api_keys]]
name = "bench"
key_sha256 = "{}"
scopes = ["webhooks:read", "webhooks:write", "events:write"]
"#,
        data_dir.display(),
        key_digest(KEY).iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// `max_in_flight_per_subscription` when the config leaves it out (`[delivery]`'s default).
const DEFAULT_IN_FLIGHT_CAP: usize = 32;

/// `text` (a [`config_text`]) with `workers` and `max_in_flight_per_subscription` left out, so
/// the daemon runs the delivery defaults users get (64 workers, a cap of 32, adaptive
/// concurrency from 4): what the PostgreSQL rows of issue 13 compare with Svix on.
fn default_delivery(text: String) -> String {
    let fixed = [
        format!("workers = {WORKERS}\n"),
        format!("max_in_flight_per_subscription = {IN_FLIGHT_PER_SUBSCRIPTION}\n"),
    ];
    let text = fixed.iter().fold(text, |text, line| text.replace(line.as_str(), ""));
    assert_eq!(
        Config::parse(&text).unwrap().delivery.max_in_flight_per_subscription as usize,
        DEFAULT_IN_FLIGHT_CAP
    );
    text
}

struct BenchDaemon {
    daemon: Daemon,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl BenchDaemon {
    fn start(runtime: &tokio::runtime::Runtime) -> BenchDaemon {
        BenchDaemon::with_timeout(runtime, "10s")
    }

    /// A daemon on sled with the delivery settings of [`default_delivery`].
    fn sled_default_delivery(runtime: &tokio::runtime::Runtime) -> BenchDaemon {
        let dir = tempfile::tempdir().unwrap();
        let text = default_delivery(config_text(&dir.path().join("data"), "10s"));
        let daemon = runtime.block_on(Daemon::start(Config::parse(&text).unwrap())).unwrap();
        BenchDaemon { addr: daemon.local_addr(), daemon, _dir: dir }
    }

    /// A daemon on the PostgreSQL database at `url` (several may share it), with the delivery
    /// settings of [`default_delivery`].
    fn postgres(runtime: &tokio::runtime::Runtime, url: &str) -> BenchDaemon {
        let dir = tempfile::tempdir().unwrap();
        let text = default_delivery(config_text(&dir.path().join("data"), "10s"));
        let text = format!("{text}\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 32\n");
        // `BENCH_PG_FIXED_CAP=1`: every subscription may use the whole cap at once (no adaptation).
        let text = match std::env::var("BENCH_PG_FIXED_CAP").is_ok_and(|fixed| fixed == "1") {
            true => text.replace("[delivery]\n", "[delivery]\nadaptive_concurrency = false\n"),
            false => text,
        };
        let daemon = runtime.block_on(Daemon::start(Config::parse(&text).unwrap())).unwrap();
        BenchDaemon { addr: daemon.local_addr(), daemon, _dir: dir }
    }

    fn with_timeout(runtime: &tokio::runtime::Runtime, timeout: &str) -> BenchDaemon {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&config_text(&dir.path().join("data"), timeout)).unwrap();
        let daemon = runtime.block_on(Daemon::start(config)).unwrap();
        BenchDaemon { addr: daemon.local_addr(), daemon, _dir: dir }
    }

    fn subscribe(&self, receiver: &FastReceiver, path: &str, paused: bool) -> String {
        self.subscribe_url(&format!("http://{}{path}", receiver.addr), paused)
    }

    fn subscribe_url(&self, url: &str, paused: bool) -> String {
        let body = json!({ "name": "bench", "url": url, "events": ["message.received"], "isPaused": paused });
        let reply = post(&agent(), self.addr, "/v1/webhooks", &body.to_string()).expect("create");
        serde_json::from_str::<Value>(&reply).unwrap()["id"].as_str().unwrap().to_owned()
    }

    fn commit_stats(&self) -> f64 {
        let figures = self.daemon.store().figures();
        figures.flushed_writes as f64 / figures.flushes.max(1) as f64
    }

    fn stop(self, runtime: &tokio::runtime::Runtime) {
        runtime.block_on(self.daemon.shutdown(Duration::from_secs(2))).unwrap();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_idle_connections(256)
        .max_idle_connections_per_host(256)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// POSTs JSON with the bench key; the body of a 2xx answer, or None.
fn post(agent: &ureq::Agent, addr: SocketAddr, path: &str, body: &str) -> Option<String> {
    let mut response = agent
        .post(format!("http://{addr}{path}"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .header("Content-Type", "application/json")
        .send(body)
        .ok()?;
    let ok = response.status().is_success();
    let text = response.body_mut().read_to_string().ok()?;
    ok.then_some(text)
}

/// Arrivals at the receiver: a count per path and the latency of timed events.
#[derive(Default)]
struct Arrivals {
    per_path: HashMap<String, u64>,
    /// The latest arrival per path, µs since the receiver's epoch.
    last_us: HashMap<String, u64>,
    /// Per timed event (a `"sentUs"` field in its data): (arrival, arrival − sentUs), both µs.
    timed_us: Vec<(u64, u64)>,
}

/// A fast in-process receiver answering 200 at once (and hanging on `/hang…` paths).
struct FastReceiver {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Arrivals>>,
    epoch: Instant,
    _runtime: tokio::runtime::Runtime,
}

impl FastReceiver {
    fn start() -> FastReceiver {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let epoch = Instant::now();
        let shared = arrivals.clone();
        let route = warp::path::full().and(warp::body::bytes()).then(
            move |path: warp::path::FullPath, body: bytes::Bytes| {
                let shared = shared.clone();
                async move {
                    if path.as_str().starts_with("/hang") {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let sent_us = timed_field(&body);
                    let now_us = epoch.elapsed().as_micros() as u64;
                    let mut arrivals = shared.lock().unwrap();
                    *arrivals.per_path.entry(path.as_str().to_owned()).or_default() += 1;
                    arrivals.last_us.insert(path.as_str().to_owned(), now_us);
                    if let Some(sent_us) = sent_us {
                        arrivals.timed_us.push((now_us, now_us.saturating_sub(sent_us)));
                    }
                    warp::http::StatusCode::OK
                }
            },
        );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(warp::serve(route).incoming(listener).run());
        FastReceiver { addr, arrivals, epoch, _runtime: runtime }
    }

    fn count(&self, path: &str) -> u64 {
        self.arrivals.lock().unwrap().per_path.get(path).copied().unwrap_or(0)
    }

    /// The latencies (µs) of the timed events that arrived since the last take.
    fn take_latencies(&self) -> Vec<u64> {
        self.take_timed().into_iter().map(|(_, latency)| latency).collect()
    }

    /// (arrival µs since the epoch, latency µs) of the timed events since the last take.
    fn take_timed(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.arrivals.lock().unwrap().timed_us)
    }

    /// When the latest request to `path` arrived, µs since the epoch.
    fn last_arrival_us(&self, path: &str) -> Option<u64> {
        self.arrivals.lock().unwrap().last_us.get(path).copied()
    }

    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// The `"sentUs":N` field the latency runs put in their data, found without a JSON parse.
fn timed_field(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"sentUs\":")? + 9;
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "benchmark timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.
// ---------------------------------------------------------------------------------------------

/// A warp handler that reads the body and answers 202 like publish, storing nothing.
async fn no_storage_server() -> SocketAddr {
    let route = warp::path!("v1" / "events" / ..).and(warp::body::bytes()).map(|_body: bytes::Bytes| {
        warp::reply::with_status(
            warp::reply::json(&json!({ "id": "evt_01ARZ3NDEKTSV4RRFFQ69G5FAV", "deliveries": 1 })),
            warp::http::StatusCode::ACCEPTED,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

fn event_body(sent_us: Option<u64>) -> Value {
    match sent_us {
        Some(sent_us) => {
            json!({ "event": "message.received", "data": { "sentUs": sent_us, "text": "x".repeat(200) } })
        }
        None => {
            json!({ "event": "message.received", "data": { "conversationId": "c_123", "text": "x".repeat(220) } })
        }
    }
}

/// Events per second answered 2xx by `publishers` threads during `window`.
fn publish_rate(addr: SocketAddr, publishers: usize, batch: usize, window: Duration) -> f64 {
    publish_rate_to(&[addr], publishers, batch, window)
}

/// [`publish_rate`] spread over several daemons (publisher `i` posts to `addrs[i % n]`).
fn publish_rate_to(addrs: &[SocketAddr], publishers: usize, batch: usize, window: Duration) -> f64 {
    let (path, body) = if batch == 1 {
        ("/v1/events", event_body(None).to_string())
    } else {
        ("/v1/events/batch", json!({ "events": vec![event_body(None); batch] }).to_string())
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..publishers)
        .map(|publisher| {
            let (accepted, stop, body) = (accepted.clone(), stop.clone(), body.clone());
            let addr = addrs[publisher % addrs.len()];
            std::thread::spawn(move || {
                let agent = agent();
                while !stop.load(Ordering::Relaxed) {
                    if post(&agent, addr, path, &body).is_some() {
                        accepted.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Deliveries per second: from the first publish until every delivery arrived.
fn e2e_rate(bench: &BenchDaemon, receiver: &FastReceiver, path: &str, events: usize, fan_out: usize) -> f64 {
    e2e_rate_to(&[bench.addr], receiver, path, events, fan_out)
}

/// [`e2e_rate`] with the batches spread over several daemons.
fn e2e_rate_to(
    addrs: &[SocketAddr],
    receiver: &FastReceiver,
    path: &str,
    events: usize,
    fan_out: usize,
) -> f64 {
    let before = receiver.count(path);
    let batch = json!({ "events": vec![event_body(None); 100] }).to_string();
    let started = Instant::now();
    let agent = agent();
    for n in 0..events.div_ceil(100) {
        post(&agent, addrs[n % addrs.len()], "/v1/events/batch", &batch).expect("batch publish");
    }
    let expected = before + (events.div_ceil(100) * 100 * fan_out) as u64;
    wait_for("end-to-end deliveries", Duration::from_secs(300), || receiver.count(path) >= expected);
    (expected - before) as f64 / started.elapsed().as_secs_f64()
}

/// POSTs per second from `concurrency` ureq clients straight at the receiver.
fn raw_post_rate(receiver: SocketAddr, concurrency: usize, total: usize) -> f64 {
    let body = event_body(None).to_string();
    let per_thread = total.div_ceil(concurrency);
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let agent = agent();
                for _ in 0..per_thread {
                    post(&agent, receiver, "/raw", &body).expect("raw post");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    (per_thread * concurrency) as f64 / started.elapsed().as_secs_f64()
}

/// p50, p99, max in milliseconds.
fn percentiles(mut micros: Vec<u64>) -> [f64; 3] {
    if micros.is_empty() {
        return [f64::NAN; 3];
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    [at(0.5), at(0.99), *micros.last().unwrap() as f64 / 1000.0]
}

/// Paces publishes at `rate`/s from 4 threads for `window`; latency publish→arrival.
fn latency_at(
    bench: &BenchDaemon,
    receiver: &FastReceiver,
    path: &str,
    rate: f64,
    window: Duration,
) -> [f64; 3] {
    receiver.take_latencies();
    let before = receiver.count(path);
    let threads = 4;
    let interval = Duration::from_secs_f64(threads as f64 / rate);
    let sent = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let (addr, sent) = (bench.addr, sent.clone());
            let epoch = receiver.epoch;
            std::thread::spawn(move || {
                let agent = agent();
                let start = Instant::now() + interval.mul_f64(index as f64 / threads as f64);
                let end = start + window;
                for n in 0u32.. {
                    let due = start + interval * n;
                    if due >= end {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent_us = epoch.elapsed().as_micros() as u64;
                    post(&agent, addr, "/v1/events", &event_body(Some(sent_us)).to_string())
                        .expect("publish");
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let expected = before + sent.load(Ordering::Relaxed);
    wait_for("latency deliveries", Duration::from_secs(60), || receiver.count(path) >= expected);
    percentiles(receiver.take_latencies())
}

/// The same pacing, each request a raw POST straight at the receiver.
fn raw_latency_at(receiver: SocketAddr, rate: f64, window: Duration) -> [f64; 3] {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let agent = agent();
    let body = event_body(None).to_string();
    let mut micros = Vec::new();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < window {
        if let Some(wait) = (start + interval * n).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sent = Instant::now();
        post(&agent, receiver, "/raw", &body).expect("raw post");
        micros.push(sent.elapsed().as_micros() as u64);
        n += 1;
    }
    percentiles(micros)
}

/// p99 (ms) of deliveries to 5 healthy subscriptions while `hanging` others hang until the
/// timeout; events are paced at 200/s.
fn isolation_p99(
    runtime: &tokio::runtime::Runtime,
    receiver: &FastReceiver,
    hanging: usize,
    events: usize,
) -> f64 {
    let bench = BenchDaemon::with_timeout(runtime, "2s");
    for n in 0..hanging {
        bench.subscribe(receiver, &format!("/hang{n}"), false);
    }
    for _ in 0..5 {
        bench.subscribe(receiver, "/healthy", false);
    }
    // The healthy endpoints answer once before the measurement, as in a running system.
    let warmed = receiver.count("/healthy") + 5;
    post(&agent(), bench.addr, "/v1/events", &event_body(None).to_string()).unwrap();
    wait_for("healthy warm-up", Duration::from_secs(30), || receiver.count("/healthy") >= warmed);
    receiver.take_latencies();
    let before = receiver.count("/healthy");
    let agent = agent();
    let interval = Duration::from_millis(5);
    let start = Instant::now();
    for n in 0..events as u32 {
        if let Some(wait) = (start + interval * n).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        post(&agent, bench.addr, "/v1/events", &event_body(Some(receiver.micros())).to_string()).unwrap();
    }
    let expected = before + 5 * events as u64;
    wait_for("healthy deliveries", Duration::from_secs(120), || receiver.count("/healthy") >= expected);
    let p99 = percentiles(receiver.take_latencies())[1];
    bench.stop(runtime);
    p99
}

/// The limit of the rate-limit row, attempts per second.
const RATE_LIMIT: u32 = 50;

/// Deliveries per second a subscription limited to [`RATE_LIMIT`] receives while `backlog`
/// events wait (from its first arrival to its last), beside an unlimited subscription of the
/// same daemon getting the same events (from the first publish to its last arrival).
fn rate_limited(runtime: &tokio::runtime::Runtime, receiver: &FastReceiver, backlog: usize) -> Row {
    let bench = BenchDaemon::start(runtime);
    let (limited, unlimited) = ("/rate-limited", "/rate-unlimited");
    for (path, limit) in [(limited, Some(RATE_LIMIT)), (unlimited, None)] {
        let url = format!("http://{}{path}", receiver.addr);
        let body = json!({ "name": "bench", "url": url, "events": ["message.received"], "rateLimitPerSecond": limit });
        post(&agent(), bench.addr, "/v1/webhooks", &body.to_string()).expect("create");
    }
    let (limited_before, unlimited_before) = (receiver.count(limited), receiver.count(unlimited));
    let started = Instant::now();
    let agent = agent();
    for sent in (0..backlog).step_by(100) {
        let batch = json!({ "events": vec![event_body(None); (backlog - sent).min(100)] }).to_string();
        post(&agent, bench.addr, "/v1/events/batch", &batch).expect("batch publish");
    }
    let all = backlog as u64;
    let mut first_limited = None;
    let mut unlimited_done = None;
    wait_for("rate-limited deliveries", Duration::from_secs(120), || {
        if first_limited.is_none() && receiver.count(limited) > limited_before {
            first_limited = Some(Instant::now());
        }
        if unlimited_done.is_none() && receiver.count(unlimited) >= unlimited_before + all {
            unlimited_done = Some(started.elapsed());
        }
        receiver.count(limited) >= limited_before + all && unlimited_done.is_some()
    });
    let limited_rate = (all - 1) as f64 / first_limited.unwrap().elapsed().as_secs_f64();
    let unlimited_rate = all as f64 / unlimited_done.unwrap().as_secs_f64();
    bench.stop(runtime);
    Row {
        figure: format!("rate limit {RATE_LIMIT}/s, backlog of {backlog}: deliveries per second received"),
        ours: limited_rate,
        baseline: unlimited_rate,
        unit: "deliveries/s",
        baseline_name: "same backlog, no limit",
        target: Some(Target::Within10Percent(f64::from(RATE_LIMIT))),
    }
}

/// Seeds `size` pending retries due in an hour straight through the store, then measures the
/// real binary: time to `/readyz` 200, resident memory, data dir size — against the same
/// binary on a tenth of the backlog (memory must not grow with the backlog).
fn backlog(size: usize) -> Vec<Row> {
    let large = seeded_backlog(size);
    let small = seeded_backlog((size / 10).max(1));
    let (large_ready, large_rss, large_disk) = measure_binary(large.path());
    let (small_ready, small_rss, small_disk) = measure_binary(small.path());
    vec![
        Row {
            figure: format!("backlog {size} pending retries: resident memory"),
            ours: large_rss,
            baseline: small_rss,
            unit: "MiB",
            baseline_name: "a tenth of the backlog",
            target: None,
        },
        Row {
            figure: format!("backlog {size}: start to /readyz 200"),
            ours: large_ready,
            baseline: small_ready,
            unit: "ms",
            baseline_name: "a tenth of the backlog",
            target: None,
        },
        Row {
            figure: format!("backlog {size}: data dir size"),
            ours: large_disk,
            baseline: small_disk,
            unit: "MiB",
            baseline_name: "a tenth of the backlog",
            target: None,
        },
    ]
}

fn seeded_backlog(size: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(dir.path().join("config.toml"), config_text(&data, "10s")).unwrap();
    let store = SledStore::open(&data).unwrap();
    let now = now_millis();
    // Ten subscriptions, as a real backlog spreads over several endpoints.
    let subscriptions: Vec<SubscriptionId> = (0..10)
        .map(|n| {
            let mut subscription = Subscription::new(
                "bench",
                format!("backlog {n}"),
                "http://127.0.0.1:9/",
                vec!["message.received".into()],
                now,
            );
            subscription.retry_delay_seconds = 3600;
            store.create_subscription(&subscription, 1000).unwrap();
            subscription.id
        })
        .collect();
    let body = event_body(None).to_string().into_bytes();
    let per_event = subscriptions.len();
    for _ in 0..size.div_ceil(per_event).div_ceil(500) {
        let events: Vec<NewEvent> = (0..500)
            .map(|_| NewEvent {
                id: EventId::new(now),
                event_type: "message.received".into(),
                body: body.clone(),
                client_id: None,
                fingerprint: [0; 32],
            })
            .collect();
        store.publish_now("bench", true, &events, now).unwrap();
    }
    // Every delivery has failed once and waits an hour for its retry.
    let due = now + 3_600_000;
    let queued: Vec<_> = subscriptions
        .iter()
        .flat_map(|subscription| {
            store
                .queued_after(subscription, None, usize::MAX)
                .unwrap()
                .into_iter()
                .map(move |(at, delivery)| (subscription.clone(), at, delivery))
        })
        .collect();
    let records: Vec<AttemptRecord> = queued
        .into_iter()
        .map(|(subscription_id, at, delivery_id)| AttemptRecord {
            subscription_id,
            due: at,
            delivery_id,
            attempt: Attempt {
                at: now,
                duration_ms: 1,
                response_code: Some(503),
                error: Some("HTTP 503".into()),
            },
            decision: AttemptDecision::Retry { due },
        })
        .collect();
    for group in records.chunks(500) {
        store.record_attempts(group).unwrap();
    }
    store.durable_blocking().unwrap();
    assert_eq!(store.queue_depth().0, size.div_ceil(per_event).div_ceil(500) * 500 * per_event);
    dir
}

/// Starts the binary on a seeded dir: (ms to /readyz 200, resident MiB 3 s after ready, MiB on disk).
fn measure_binary(dir: &Path) -> (f64, f64, f64) {
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atender-webhooks"))
        .args(["serve", "--config"])
        .arg(dir.join("config.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let addr = Arc::new(Mutex::new(None));
    let found = addr.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("local_addr=") {
                let text = line[at + 11..].split_whitespace().next().unwrap_or_default().to_owned();
                *found.lock().unwrap() = text.parse::<SocketAddr>().ok();
            }
        }
    });
    let client = agent();
    wait_for("the binary to be ready", Duration::from_secs(120), || {
        let Some(addr) = *addr.lock().unwrap() else { return false };
        client.get(format!("http://{addr}/readyz")).call().is_ok_and(|response| response.status() == 200)
    });
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(3));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN);
    let _ = child.kill();
    let _ = child.wait();
    (ready_ms, rss_kib / 1024.0, dir_size(&dir.join("data")) as f64 / (1024.0 * 1024.0))
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| {
                    let meta = entry.metadata().unwrap();
                    if meta.is_dir() {
                        dir_size(&entry.path())
                    } else {
                        meta.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Mean latency of a 4 KiB write + fdatasync in a fresh file of the data dir's filesystem.
fn raw_fsync_ms() -> f64 {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("probe")).unwrap();
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        file.write_all(&[7u8; 4096]).unwrap();
        file.sync_data().unwrap();
    }
    started.elapsed().as_secs_f64() * 1000.0 / rounds as f64
}

// ---------------------------------------------------------------------------------------------
// The real binary with the default config (issue 12).
// ---------------------------------------------------------------------------------------------

/// `BENCH_ONLY=binary`: the daemon as users run it. The binary cargo built for this target (the
/// release build under `cargo bench`, the debug build under `cargo test`) runs as a child with the
/// default config — only a loopback listener, a temporary data dir, one tenant and key, and plain
/// HTTP to private addresses allowed — and [`CLIENTS`] hyper clients publish single 300-byte
/// events to it over HTTP. Every section starts a fresh child on a fresh data dir and stops it
/// with SIGTERM; every rate has a same-run baseline: the same load generator posting the same
/// body straight to the receiver.
mod binary {
    use std::collections::VecDeque;
    use std::io::BufRead;
    use std::net::SocketAddr;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use serde_json::json;

    use super::{agent, percentiles, post, FastReceiver, Row, Target, KEY};
    use atender_webhooks::config::key_digest;

    /// Concurrent HTTP clients of the load generator.
    const CLIENTS: usize = 64;
    /// Size of every published (and every raw) request body, bytes.
    const BODY_BYTES: usize = 300;
    /// Subscriptions receiving every event in the fan-out section.
    const FAN_OUT: usize = 10;
    /// A million bytes: disk and memory figures are in MB, as their targets are.
    const MB: f64 = 1e6;
    /// Publish→arrival latencies above this (ms) are listed with the second they happened at.
    const SLOW_MS: f64 = 10.0;

    /// Sizes of the binary mode.
    pub(super) struct Sizes {
        /// Events of the end-to-end figure.
        e2e_events: usize,
        /// Open-loop publish rates of the latency figures, events/s.
        latency_rates: [f64; 2],
        /// How long each latency run sends.
        latency_window: Duration,
        /// How long the publishers of the fan-out section run.
        fan_out_window: Duration,
        /// Events of the disk and memory figures (`BENCH_BINARY_EVENTS`).
        volume_events: usize,
        /// Measure the data dir and memory after every this many of them
        /// (`BENCH_BINARY_SAMPLE_EVERY`); None: only at the end.
        sample_every: Option<usize>,
    }

    impl Sizes {
        pub(super) fn full() -> Sizes {
            let number = |name: &str| std::env::var(name).ok().and_then(|value| value.parse().ok());
            Sizes {
                e2e_events: 20_000,
                latency_rates: [200.0, 2_000.0],
                latency_window: Duration::from_secs(10),
                fan_out_window: Duration::from_secs(5),
                volume_events: number("BENCH_BINARY_EVENTS").unwrap_or(200_000),
                sample_every: number("BENCH_BINARY_SAMPLE_EVERY").filter(|&every| every > 0),
            }
        }

        /// Tiny sizes for the smoke pass; sampling on, so that code runs too.
        pub(super) fn smoke() -> Sizes {
            Sizes {
                e2e_events: 200,
                latency_rates: [200.0, 2_000.0],
                latency_window: Duration::from_millis(500),
                fan_out_window: Duration::from_millis(500),
                volume_events: 200,
                sample_every: Some(100),
            }
        }
    }

    /// Every section's rows, in order: end-to-end, latency at each rate, fan-out, volume.
    /// `BENCH_BINARY_SECTIONS=latency,fanout` (any of `e2e`, `latency`, `fanout`, `volume`) runs
    /// only those, for profiling one of them.
    pub(super) fn rows(receiver: &FastReceiver, sizes: &Sizes) -> Vec<Row> {
        let sections = std::env::var("BENCH_BINARY_SECTIONS").ok();
        let wanted = |name: &str| sections.as_deref().is_none_or(|list| list.split(',').any(|s| s == name));
        let load = LoadGen::start();
        let mut rows = Vec::new();
        if wanted("e2e") {
            rows.extend(end_to_end(&load, receiver, sizes.e2e_events));
        }
        if wanted("latency") {
            for rate in sizes.latency_rates {
                rows.extend(latency(&load, receiver, rate, sizes.latency_window));
            }
        }
        if wanted("fanout") {
            rows.extend(fan_out(&load, receiver, sizes.fan_out_window));
        }
        if wanted("volume") {
            rows.extend(volume(&load, receiver, sizes.volume_events, sizes.sample_every));
        }
        rows
    }

    /// Deliveries per second to one healthy subscription: `events` / (time from the first publish
    /// to the last arrival), the publishers' own rate meanwhile, and the child's CPU per delivery.
    fn end_to_end(load: &LoadGen, receiver: &FastReceiver, events: usize) -> Vec<Row> {
        let child = Child::start();
        let path = "/binary-e2e";
        child.subscribe(receiver, path, 1);
        let (before, cpu) = (receiver.count(path), child.cpu_seconds());
        let first_publish_us = receiver.micros();
        let published = load.burst(child.addr, "/v1/events", Until::Total(events));
        published.assert_clean("end-to-end publishes");
        child.wait_arrivals(receiver, path, before, published.accepted, "end-to-end deliveries");
        let last_us = receiver.last_arrival_us(path).unwrap();
        let cpu = child.cpu_seconds() - cpu;
        child.stop();
        let rate = published.accepted as f64 / seconds_between(first_publish_us, last_us);
        let raw = load.burst(receiver.addr, "/binary-raw", Until::Total(events));
        raw.assert_clean("raw posts");
        let baseline_name = "64 hyper clients → receiver, same body";
        vec![
            Row {
                figure: format!(
                    "binary: end-to-end, {events} events, 1 subscription (first publish → last arrival)"
                ),
                ours: rate,
                baseline: raw.rate(),
                unit: "deliveries/s",
                baseline_name,
                target: Some(Target::AtLeast(8_000.0)),
            },
            Row {
                figure: "binary: publish rate meanwhile (64 clients, 202s)".into(),
                ours: published.rate(),
                baseline: raw.rate(),
                unit: "events/s",
                baseline_name,
                target: None,
            },
            cpu_row("end-to-end", cpu, published.accepted),
        ]
    }

    /// Publish→arrival p50, p99 and max (ms) at a steady `rate`, open loop, against the raw round
    /// trip to the receiver at the same rate; the max's row says when in the run it happened.
    fn latency(load: &LoadGen, receiver: &FastReceiver, rate: f64, window: Duration) -> Vec<Row> {
        let child = Child::start();
        let path = format!("/binary-latency-{rate}");
        child.subscribe(receiver, &path, 1);
        receiver.take_timed();
        let (before, cpu) = (receiver.count(&path), child.cpu_seconds());
        let sent = load.open_loop(child.addr, "/v1/events", rate, window, receiver.epoch, true);
        sent.assert_clean("paced publishes");
        child.wait_arrivals(receiver, &path, before, sent.sends.len() as u64, "paced deliveries");
        let cpu = child.cpu_seconds() - cpu;
        let timed = receiver.take_timed();
        let child_started_us = child.spawned.saturating_duration_since(receiver.epoch).as_micros() as u64;
        child.stop();
        let raw = load.open_loop(receiver.addr, "/binary-raw-latency", rate, window, receiver.epoch, false);
        raw.assert_clean("paced raw posts");

        // When each latency happened: its scheduled send, in seconds from the run's first send.
        let at = |arrival_us: u64, latency_us: u64| seconds_between(sent.start_us, arrival_us - latency_us);
        let (max_arrival, max_latency) = timed.iter().copied().max_by_key(|&(_, latency)| latency).unwrap();
        let max_at = at(max_arrival, max_latency);
        let child_age = max_at + seconds_between(child_started_us, sent.start_us);
        // The slow ones by the tenth of a second of the run they were scheduled in.
        let mut slow = std::collections::BTreeMap::<u64, (usize, f64)>::new();
        for &(arrival, latency) in &timed {
            let ms = latency as f64 / 1000.0;
            if ms > SLOW_MS {
                let tenth = slow.entry((at(arrival, latency) * 10.0) as u64).or_default();
                *tenth = (tenth.0 + 1, tenth.1.max(ms));
            }
        }
        let slow_count = slow.values().map(|&(count, _)| count).sum::<usize>();
        let tenths: Vec<String> = slow
            .iter()
            .take(30)
            .map(|(tenth, (count, max))| format!("{:.1} s: {count} (max {max:.1} ms)", *tenth as f64 / 10.0))
            .collect();
        println!(
            "binary latency at {rate}/s: {} publishes, {slow_count} over {SLOW_MS} ms{}{}",
            timed.len(),
            if slow_count == 0 { "" } else { "; by 100 ms of the run: " },
            tenths.join(", ")
        );

        let ours = percentiles(timed.iter().map(|&(_, latency)| latency).collect());
        let base = percentiles(raw.sends.iter().map(|&(_, round_trip)| round_trip).collect());
        let targets = if rate <= 200.0 { [None, Some(2.0), Some(10.0)] } else { [None, Some(10.0), None] };
        let mut rows = super::percentile_rows(
            |name| format!("binary: publish→arrival {name} at {rate}/s, open loop, {window:?}"),
            ours,
            base,
            "raw round trip to the receiver, same rate",
            targets.map(|target| target.map(Target::AtMost)),
        );
        rows[2].figure += &format!(" (at {max_at:.2} s of the run; child up {child_age:.2} s)");
        rows.push(cpu_row(&format!("latency at {rate}/s"), cpu, sent.sends.len() as u64));
        rows
    }

    /// Publishes answered 202 per second from [`CLIENTS`] clients during `window` while
    /// [`FAN_OUT`] subscriptions receive every event; then the deliveries per second from the
    /// first publish to the last arrival.
    fn fan_out(load: &LoadGen, receiver: &FastReceiver, window: Duration) -> Vec<Row> {
        let child = Child::start();
        let path = "/binary-fan-out";
        child.subscribe(receiver, path, FAN_OUT);
        let (before, cpu) = (receiver.count(path), child.cpu_seconds());
        let first_publish_us = receiver.micros();
        let published = load.burst(child.addr, "/v1/events", Until::Window(window));
        published.assert_clean("fan-out publishes");
        let deliveries = published.accepted * FAN_OUT as u64;
        child.wait_arrivals(receiver, path, before, deliveries, "fan-out deliveries");
        let last_us = receiver.last_arrival_us(path).unwrap();
        let cpu = child.cpu_seconds() - cpu;
        child.stop();
        let raw = load.burst(receiver.addr, "/binary-raw", Until::Window(window));
        raw.assert_clean("raw posts");
        let baseline_name = "64 hyper clients → receiver, same body";
        vec![
            Row {
                figure: format!("binary: publish rate, 64 clients, fan-out {FAN_OUT}, {window:?}"),
                ours: published.rate(),
                baseline: raw.rate(),
                unit: "events/s",
                baseline_name,
                target: Some(Target::AtLeast(5_000.0)),
            },
            Row {
                figure: format!(
                    "binary: fan-out {FAN_OUT}, {deliveries} deliveries (first publish → last arrival)"
                ),
                ours: deliveries as f64 / seconds_between(first_publish_us, last_us),
                baseline: raw.rate(),
                unit: "deliveries/s",
                baseline_name,
                target: None,
            },
            cpu_row("fan-out", cpu, deliveries),
        ]
    }

    /// After `events` published to one subscription and all delivered (every arrival seen and
    /// the child's `deliveries_queued{state="pending"}` at 0): the data dir's size (apparent and
    /// allocated) against the bodies' bytes, and the child's VmRSS and VmHWM against its own
    /// right after start-up.
    fn volume(
        load: &LoadGen,
        receiver: &FastReceiver,
        events: usize,
        sample_every: Option<usize>,
    ) -> Vec<Row> {
        let child = Child::start();
        let path = "/binary-volume";
        child.subscribe(receiver, path, 1);
        let (idle_rss, idle_hwm) = child.memory();
        let (before, cpu) = (receiver.count(path), child.cpu_seconds());
        let started = Instant::now();
        let mut published = 0;
        while published < events {
            let chunk = sample_every.unwrap_or(events).min(events - published);
            let burst = load.burst(child.addr, "/v1/events", Until::Total(chunk));
            burst.assert_clean("volume publishes");
            published += chunk;
            if sample_every.is_some() {
                let (apparent, allocated) = disk_usage(&child.data_dir);
                let (rss, hwm) = child.memory();
                println!(
                    "binary volume: {published} published, {} arrived, {:.0} s: data dir {:.1} MB \
                     ({:.1} MB allocated), VmRSS {:.1} MB, VmHWM {:.1} MB",
                    receiver.count(path) - before,
                    started.elapsed().as_secs_f64(),
                    apparent as f64 / MB,
                    allocated as f64 / MB,
                    rss as f64 / MB,
                    hwm as f64 / MB
                );
            }
        }
        child.wait_arrivals(receiver, path, before, events as u64, "volume deliveries");
        child.wait_nothing_pending();
        let cpu = child.cpu_seconds() - cpu;
        let (apparent, allocated) = disk_usage(&child.data_dir);
        let (rss, hwm) = child.memory();
        println!(
            "binary volume: {events} events published and delivered in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        child.stop();
        let bodies = (events * BODY_BYTES) as f64 / MB;
        let (disk, memory) = ("the published bodies' bytes", "the same child right after start-up");
        vec![
            Row {
                figure: format!(
                    "binary: data dir after {events} events delivered, apparent (sum of file sizes)"
                ),
                ours: apparent as f64 / MB,
                baseline: bodies,
                unit: "MB",
                baseline_name: disk,
                target: Some(Target::AtMost(100.0)),
            },
            Row {
                figure: format!("binary: data dir after {events} events delivered, allocated (du)"),
                ours: allocated as f64 / MB,
                baseline: bodies,
                unit: "MB",
                baseline_name: disk,
                target: Some(Target::AtMost(100.0)),
            },
            Row {
                figure: format!("binary: resident memory (VmRSS) after {events} events delivered"),
                ours: rss as f64 / MB,
                baseline: idle_rss as f64 / MB,
                unit: "MB",
                baseline_name: memory,
                target: Some(Target::AtMost(150.0)),
            },
            Row {
                figure: format!("binary: peak resident memory (VmHWM) over {events} events"),
                ours: hwm as f64 / MB,
                baseline: idle_hwm as f64 / MB,
                unit: "MB",
                baseline_name: memory,
                target: Some(Target::AtMost(150.0)),
            },
            cpu_row("volume", cpu, events as u64),
        ]
    }

    /// The child's user + system CPU per delivery in a section, µs (no baseline: compare with
    /// peers, e.g. ANCHORS.md's CPU-s per 1,000 deliveries, which is this figure in ms).
    fn cpu_row(section: &str, cpu_seconds: f64, deliveries: u64) -> Row {
        Row {
            figure: format!("binary, {section}: child CPU (user + system) per delivery"),
            ours: cpu_seconds * 1e6 / deliveries.max(1) as f64,
            baseline: 0.0,
            unit: "µs",
            baseline_name: "-",
            target: None,
        }
    }

    /// Seconds from `from_us` to `to_us` (µs on the receiver's clock).
    fn seconds_between(from_us: u64, to_us: u64) -> f64 {
        to_us.saturating_sub(from_us) as f64 / 1e6
    }

    /// A body of exactly [`BODY_BYTES`]: a `message.received` event, timed (its data carries
    /// `sentUs`, the scheduled send in µs on the receiver's clock) or not.
    fn event_body(sent_us: Option<u64>) -> String {
        let head = match sent_us {
            Some(sent_us) => format!(r#"{{"event":"message.received","data":{{"sentUs":{sent_us},"text":""#),
            None => r#"{"event":"message.received","data":{"conversationId":"c_123","text":""#.to_owned(),
        };
        let tail = r#""}}"#;
        format!("{head}{}{tail}", "x".repeat(BODY_BYTES - head.len() - tail.len()))
    }

    /// How long to wait for `count` deliveries: a minute plus 2 ms each (500/s, far below any
    /// rate this daemon reaches; a miss is a failure, reported with the counts).
    fn generous(count: u64) -> Duration {
        Duration::from_secs(60) + Duration::from_millis(2) * count as u32
    }

    // -----------------------------------------------------------------------------------------
    // The child.
    // -----------------------------------------------------------------------------------------

    /// The default config: only what a loopback benchmark needs, everything else left at its
    /// default (workers, caps, caches, timeouts, retention).
    fn default_config(data_dir: &Path) -> String {
        format!(
            r#"listen = "127.0.0.1:0"
data_dir = "{}"
[delivery]
allow_http = true
allow_private_targets = true
[[tenants]]
id = "bench"
[[tenants.api_keys]]
name = "bench"
key_sha256 = "{}"
scopes = ["webhooks:read", "webhooks:write", "events:write"]
"#,
            data_dir.display(),
            key_digest(KEY).iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    /// The binary running as a child on a fresh data dir, its stderr drained by a thread (the
    /// last lines kept for failure messages); killed on drop if not stopped.
    struct Child {
        process: std::process::Child,
        addr: SocketAddr,
        /// When it was spawned, to place a stall in the child's life.
        spawned: Instant,
        data_dir: PathBuf,
        log_tail: Arc<Mutex<VecDeque<String>>>,
        _dir: tempfile::TempDir,
    }

    impl Child {
        /// Spawns the binary and waits (60 s at most) for `/readyz` to answer 200.
        fn start() -> Child {
            let dir = tempfile::tempdir().unwrap();
            let data_dir = dir.path().join("data");
            let config = dir.path().join("config.toml");
            std::fs::write(&config, default_config(&data_dir)).unwrap();
            let spawned = Instant::now();
            let mut process = Command::new(env!("CARGO_BIN_EXE_atender-webhooks"))
                .args(["serve", "--config"])
                .arg(&config)
                .env_remove("ATENDER_LOG")
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the binary");
            let stderr = process.stderr.take().unwrap();
            let log_tail = Arc::new(Mutex::new(VecDeque::new()));
            let listening = Arc::new(Mutex::new(None));
            let (tail, found) = (log_tail.clone(), listening.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(at) = line.find("local_addr=") {
                        let text = line[at + 11..].split_whitespace().next().unwrap_or_default();
                        *found.lock().unwrap() = text.parse::<SocketAddr>().ok();
                    }
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == 40 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
            let mut child = Child {
                process,
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                spawned,
                data_dir,
                log_tail,
                _dir: dir,
            };
            let client = agent();
            child.wait("the binary's /readyz 200", Duration::from_secs(60), |child| {
                let Some(addr) = *listening.lock().unwrap() else { return false };
                child.addr = addr;
                client.get(format!("http://{addr}/readyz")).call().is_ok_and(|reply| reply.status() == 200)
            });
            child
        }

        /// Polls `condition` every 2 ms until it holds; panics with the child's last log lines
        /// when `timeout` passes or the child exits first.
        fn wait(&mut self, what: &str, timeout: Duration, mut condition: impl FnMut(&mut Child) -> bool) {
            let deadline = Instant::now() + timeout;
            while !condition(self) {
                if let Some(status) = self.process.try_wait().unwrap() {
                    panic!("the binary exited ({status}) while waiting for {what}\n{}", self.log());
                }
                assert!(Instant::now() < deadline, "no {what} within {timeout:?}\n{}", self.log());
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        fn log(&self) -> String {
            let tail = self.log_tail.lock().unwrap();
            format!(
                "--- last lines of the binary's log ---\n{}",
                tail.iter().cloned().collect::<Vec<_>>().join("\n")
            )
        }

        /// Creates `count` subscriptions to `path` on the receiver, for `message.received`.
        fn subscribe(&self, receiver: &FastReceiver, path: &str, count: usize) {
            let url = format!("http://{}{path}", receiver.addr);
            let body = json!({ "name": "bench", "url": url, "events": ["message.received"] }).to_string();
            for _ in 0..count {
                post(&agent(), self.addr, "/v1/webhooks", &body).expect("create a subscription");
            }
        }

        /// Waits until `expected` requests arrived at `path` since `before`; a miss panics with
        /// the counts and the child's queue.
        fn wait_arrivals(&self, receiver: &FastReceiver, path: &str, before: u64, expected: u64, what: &str) {
            let deadline = Instant::now() + generous(expected);
            while receiver.count(path) < before + expected {
                if Instant::now() >= deadline {
                    panic!(
                        "{what}: {} of {expected} arrived within {:?}; the child reports {:?} pending\n{}",
                        receiver.count(path) - before,
                        generous(expected),
                        self.pending(),
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let extra = receiver.count(path) - before - expected;
            if extra > 0 {
                println!("binary: {what}: {extra} more arrivals than events (redeliveries)");
            }
        }

        /// Waits until the child has no pending delivery (its recorder caught up with the arrivals).
        fn wait_nothing_pending(&self) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.pending() != Some(0) {
                assert!(
                    Instant::now() < deadline,
                    "still {:?} pending after 60 s\n{}",
                    self.pending(),
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// `atender_deliveries_queued{state="pending"}` from the child's `/metrics`.
        fn pending(&self) -> Option<u64> {
            let mut reply = agent().get(format!("http://{}/metrics", self.addr)).call().ok()?;
            let text = reply.body_mut().read_to_string().ok()?;
            let line = text
                .lines()
                .find(|line| line.starts_with(r#"atender_deliveries_queued{state="pending"}"#))?;
            line.split_whitespace().nth(1)?.parse().ok()
        }

        /// User + system CPU the child used so far, seconds (`/proc/<pid>/stat`).
        fn cpu_seconds(&self) -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())).unwrap();
            // After the command name in parentheses: state is the first field, utime the 12th.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
            ticks as f64 / clock_ticks_per_second()
        }

        /// (VmRSS, VmHWM) in bytes (`/proc/<pid>/status`).
        fn memory(&self) -> (u64, u64) {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).unwrap();
            let kib = |key: &str| -> u64 {
                let line = status.lines().find(|line| line.starts_with(key)).unwrap();
                line.split_whitespace().nth(1).unwrap().parse().unwrap()
            };
            (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024)
        }

        /// SIGTERM, then waits (60 s at most: the daemon's grace is 20 s) for a clean exit.
        fn stop(mut self) {
            let pid = self.process.id().to_string();
            let signalled = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
            assert!(signalled.success(), "kill -TERM {pid} failed");
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = self.process.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the binary did not exit within 60 s of SIGTERM\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            assert!(status.success(), "the binary exited with {status} after SIGTERM\n{}", self.log());
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            if let Ok(None) = self.process.try_wait() {
                let _ = self.process.kill();
                let _ = self.process.wait();
            }
        }
    }

    /// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`; 100 if unknown).
    fn clock_ticks_per_second() -> f64 {
        static TICKS: OnceLock<f64> = OnceLock::new();
        *TICKS.get_or_init(|| {
            Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .ok()
                .and_then(|output| String::from_utf8(output.stdout).ok())
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(100.0)
        })
    }

    /// (apparent, allocated) bytes of the files under `path`: the sum of their lengths, and of
    /// their allocated 512-byte blocks (what `du` counts).
    fn disk_usage(path: &Path) -> (u64, u64) {
        let mut sizes = (0, 0);
        for entry in std::fs::read_dir(path).unwrap().map(Result::unwrap) {
            let meta = entry.metadata().unwrap();
            let (apparent, allocated) =
                if meta.is_dir() { disk_usage(&entry.path()) } else { (meta.len(), meta.blocks() * 512) };
            sizes = (sizes.0 + apparent, sizes.1 + allocated);
        }
        sizes
    }

    // -----------------------------------------------------------------------------------------
    // The load generator.
    // -----------------------------------------------------------------------------------------

    /// When a closed-loop burst ends.
    #[derive(Clone, Copy)]
    enum Until {
        /// After this many requests in all.
        Total(usize),
        /// When this long has passed since the start (requests under way finish).
        Window(Duration),
    }

    /// What a batch of requests achieved.
    #[derive(Default)]
    struct Tally {
        /// Requests answered 2xx.
        accepted: AtomicU64,
        /// Requests answered otherwise, or failed.
        failed: AtomicU64,
        /// The first failure's status and body, or error.
        first_failure: Mutex<Option<String>>,
    }

    impl Tally {
        fn record(&self, outcome: Result<(), String>) {
            match outcome {
                Ok(()) => self.accepted.fetch_add(1, Ordering::Relaxed),
                Err(failure) => {
                    self.first_failure.lock().unwrap().get_or_insert(failure);
                    self.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }

        fn assert_clean(&self, what: &str) {
            let failed = self.failed.load(Ordering::Relaxed);
            assert!(
                failed == 0,
                "{what}: {failed} failed, {} accepted; first failure: {:?}",
                self.accepted.load(Ordering::Relaxed),
                self.first_failure.lock().unwrap()
            );
        }
    }

    /// A closed-loop burst's outcome.
    struct Burst {
        tally: Arc<Tally>,
        /// Requests answered 2xx.
        accepted: u64,
        /// From the first send to the last answer.
        elapsed: Duration,
    }

    impl Burst {
        /// Requests answered 2xx per second.
        fn rate(&self) -> f64 {
            self.accepted as f64 / self.elapsed.as_secs_f64()
        }

        fn assert_clean(&self, what: &str) {
            self.tally.assert_clean(what);
        }
    }

    /// An open-loop run's outcome.
    struct Paced {
        tally: Arc<Tally>,
        /// The first send's scheduled instant, µs on the receiver's clock.
        start_us: u64,
        /// Per answered send: (scheduled µs on the receiver's clock, µs from then to the answer).
        sends: Vec<(u64, u64)>,
    }

    impl Paced {
        fn assert_clean(&self, what: &str) {
            self.tally.assert_clean(what);
        }
    }

    /// [`CLIENTS`] HTTP/1.1 keep-alive clients (hyper's pooled client) on a tokio runtime of
    /// their own (two threads), apart from the receiver's runtime and from the child.
    struct LoadGen {
        runtime: tokio::runtime::Runtime,
        client: Client<HttpConnector, Full<Bytes>>,
    }

    impl LoadGen {
        fn start() -> LoadGen {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("load-generator")
                .enable_all()
                .build()
                .unwrap();
            let client = {
                let _inside = runtime.enter();
                Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CLIENTS).build_http()
            };
            LoadGen { runtime, client }
        }

        /// [`CLIENTS`] clients POST an untimed event to `addr` + `path` back to back until `until`.
        fn burst(&self, addr: SocketAddr, path: &'static str, until: Until) -> Burst {
            let body = Bytes::from(event_body(None));
            let tally = Arc::new(Tally::default());
            let next = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            self.runtime.block_on(async {
                let clients: Vec<_> = (0..CLIENTS)
                    .map(|_| {
                        let (client, body, tally, next) =
                            (self.client.clone(), body.clone(), tally.clone(), next.clone());
                        tokio::spawn(async move {
                            while match until {
                                Until::Total(total) => next.fetch_add(1, Ordering::Relaxed) < total,
                                Until::Window(window) => started.elapsed() < window,
                            } {
                                tally.record(send(&client, addr, path, body.clone()).await);
                            }
                        })
                    })
                    .collect();
                for client in clients {
                    client.await.unwrap();
                }
            });
            let elapsed = started.elapsed();
            Burst { accepted: tally.accepted.load(Ordering::Relaxed), tally, elapsed }
        }

        /// Sends at a steady `rate` (events/s) for `window`, open loop: send n is scheduled at
        /// start + n / rate (this thread sleeps until then) and handed to the runtime, where it
        /// takes one of [`CLIENTS`] connections (waiting if all are busy). A `timed` body carries
        /// its scheduled instant (`sentUs`), so the receiver measures arrival − schedule.
        fn open_loop(
            &self,
            addr: SocketAddr,
            path: &'static str,
            rate: f64,
            window: Duration,
            epoch: Instant,
            timed: bool,
        ) -> Paced {
            let tally = Arc::new(Tally::default());
            let clients = Arc::new(tokio::sync::Semaphore::new(CLIENTS));
            let sends = Arc::new(Mutex::new(Vec::new()));
            let start = Instant::now() + Duration::from_millis(5);
            let micros = move |at: Instant| at.saturating_duration_since(epoch).as_micros() as u64;
            let mut tasks = Vec::new();
            for n in 0u64.. {
                let due = start + Duration::from_secs_f64(n as f64 / rate);
                if due >= start + window {
                    break;
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let due_us = micros(due);
                let body = Bytes::from(event_body(timed.then_some(due_us)));
                let (client, clients, tally, sends) =
                    (self.client.clone(), clients.clone(), tally.clone(), sends.clone());
                tasks.push(self.runtime.spawn(async move {
                    let _client = clients.acquire_owned().await.unwrap();
                    let outcome = send(&client, addr, path, body).await;
                    if outcome.is_ok() {
                        sends.lock().unwrap().push((due_us, micros(Instant::now()) - due_us));
                    }
                    tally.record(outcome);
                }));
            }
            self.runtime.block_on(async {
                for task in tasks {
                    task.await.unwrap();
                }
            });
            let sends = std::mem::take(&mut *sends.lock().unwrap());
            Paced { tally, start_us: micros(start), sends }
        }
    }

    /// One POST with the bench key; Ok on a 2xx answer, whose body is read to the end so the
    /// connection goes back to the pool.
    async fn send(
        client: &Client<HttpConnector, Full<Bytes>>,
        addr: SocketAddr,
        path: &str,
        body: Bytes,
    ) -> Result<(), String> {
        let request = warp::http::Request::post(format!("http://{addr}{path}"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let response = client.request(request).await.map_err(|err| format!("{err:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|err| err.to_string())?.to_bytes();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}
