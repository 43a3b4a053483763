//! Test support: a daemon on an ephemeral loopback port with its own data dir (`TestDaemon`),
//! a real local HTTP receiver that records deliveries and answers scripted responses
//! (`Receiver`), a blocking JSON client, and `wait_until` for waiting on conditions.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atender_webhooks::{Config, Daemon};
use serde_json::Value;
use warp::Filter;

/// Keys of the tenants every test daemon knows.
pub const ACME_KEY: &str = "sa_live_acmeacmeacmeacmeacmeacmeacmeacme0001";
pub const ACME_READ_KEY: &str = "sa_live_acmereadonlyreadonlyreadonlyread02";
pub const ACME_EVENTS_KEY: &str = "sa_live_acmeeventseventseventseventseven03";
pub const GLOBEX_KEY: &str = "sa_live_globexglobexglobexglobexglobexgl04";
pub const FROZEN_KEY: &str = "sa_live_frozenfrozenfrozenfrozenfrozenfr05";
pub const TINY_KEY: &str = "sa_live_tinytinytinytinytinytinytinytiny06";

fn digest(key: &str) -> String {
    atender_webhooks::config::key_digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

/// Settings a test may change; everything else is the test default.
#[derive(Debug, Clone)]
pub struct Setup {
    pub workers: u32,
    pub timeout: &'static str,
    pub max_retry_delay: &'static str,
    pub max_in_flight_per_subscription: u32,
    /// Where each subscription's adaptive in-flight limit starts.
    pub initial_in_flight_per_subscription: u32,
    /// `[delivery] adaptive_concurrency`: off, every trusted subscription may use its whole cap.
    pub adaptive_concurrency: bool,
    pub allow_private_targets: bool,
    pub tiny_max_webhooks: u32,
    pub hold_retention: &'static str,
    /// Free-space reserve of the data dir (`storage.min_free_bytes`); 0 turns the guard off.
    pub min_free_bytes: u64,
    /// Where the daemon keeps its data.
    pub storage: Storage,
    /// `[storage] lease` on PostgreSQL (the default: 30 s).
    pub lease: Option<&'static str>,
    pub extra: String,
}

/// The storage backend of a test daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    /// What the suite runs against (`ATENDER_TEST_STORAGE`: sled, or postgres on a cluster of
    /// the test's own): resolved when the daemon starts.
    #[default]
    Suite,
    /// sled in the data dir, whatever the suite runs against (tests about the data dir's disk).
    Sled,
    /// This PostgreSQL database.
    Postgres(String),
}

impl Setup {
    /// This setup with `Storage::Suite` resolved: under `ATENDER_TEST_STORAGE=postgres`, a new
    /// cluster (returned, to keep it running as long as the daemon) and its URL.
    pub fn resolved(&self) -> (Setup, Option<Arc<crate::pg::PgCluster>>) {
        if self.storage == Storage::Suite && crate::pg::suite_uses_postgres() {
            let cluster = Arc::new(crate::pg::PgCluster::start());
            (Setup { storage: Storage::Postgres(cluster.url()), ..self.clone() }, Some(cluster))
        } else {
            (self.clone(), None)
        }
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            workers: 8,
            timeout: "2s",
            max_retry_delay: "6h",
            max_in_flight_per_subscription: 4,
            initial_in_flight_per_subscription: 4,
            adaptive_concurrency: true,
            allow_private_targets: true,
            tiny_max_webhooks: 3,
            hold_retention: "72h",
            min_free_bytes: 0,
            storage: Storage::Suite,
            lease: None,
            extra: String::new(),
        }
    }
}

impl Setup {
    /// The config file text for a daemon with its data in `data_dir`, on `listen`.
    pub fn config_text(&self, data_dir: &Path, listen: &str) -> String {
        let all = r#"["webhooks:read", "webhooks:write", "events:write"]"#;
        format!(
            r#"listen = "{listen}"
data_dir = "{data_dir}"
{extra}
[delivery]
workers = {workers}
timeout = "{timeout}"
max_retry_delay = "{max_retry_delay}"
max_in_flight_per_subscription = {max_in_flight}
initial_in_flight_per_subscription = {initial_in_flight}
adaptive_concurrency = {adaptive}
allow_http = true
allow_private_targets = {allow_private}
hold_retention = "{hold_retention}"

[storage]
min_free_bytes = {min_free_bytes}
{backend}

[[tenants]]
id = "acme"
max_webhooks = 25
[[tenants.api_keys]]
name = "all"
key_sha256 = "{acme}"
scopes = {all}
[[tenants.api_keys]]
name = "read"
key_sha256 = "{acme_read}"
scopes = ["webhooks:read"]
[[tenants.api_keys]]
name = "events"
key_sha256 = "{acme_events}"
scopes = ["events:write"]

[[tenants]]
id = "globex"
[[tenants.api_keys]]
name = "all"
key_sha256 = "{globex}"
scopes = {all}

[[tenants]]
id = "frozen"
webhooks_enabled = false
[[tenants.api_keys]]
name = "all"
key_sha256 = "{frozen}"
scopes = {all}

[[tenants]]
id = "tiny"
max_webhooks = {tiny_max}
[[tenants.api_keys]]
name = "all"
key_sha256 = "{tiny}"
scopes = {all}
"#,
            data_dir = data_dir.display(),
            extra = self.extra,
            workers = self.workers,
            timeout = self.timeout,
            max_retry_delay = self.max_retry_delay,
            max_in_flight = self.max_in_flight_per_subscription,
            initial_in_flight = self.initial_in_flight_per_subscription,
            adaptive = self.adaptive_concurrency,
            allow_private = self.allow_private_targets,
            hold_retention = self.hold_retention,
            min_free_bytes = self.min_free_bytes,
            backend = match &self.storage {
                Storage::Postgres(url) => format!(
                    "backend = \"postgres\"\nurl = \"{url}\"\n{}",
                    self.lease.map(|lease| format!("lease = \"{lease}\"")).unwrap_or_default()
                ),
                Storage::Suite | Storage::Sled => String::new(),
            },
            acme = digest(ACME_KEY),
            acme_read = digest(ACME_READ_KEY),
            acme_events = digest(ACME_EVENTS_KEY),
            globex = digest(GLOBEX_KEY),
            frozen = digest(FROZEN_KEY),
            tiny = digest(TINY_KEY),
            tiny_max = self.tiny_max_webhooks,
        )
    }
}

/// An answer from the daemon.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The error code of a JSON error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.text))
            .to_owned()
    }

    pub fn error_message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or_default().to_owned()
    }
}

/// A plain HTTP client that reports every status as a reply.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .proxy(None)
        .build()
        .into()
}

/// Sends a request with raw body bytes and any headers.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    let agent = client();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = match body {
        Some(body) => agent.run(request.body(body.to_vec()).unwrap()),
        None => agent.run(request.body(()).unwrap()),
    }
    .unwrap_or_else(|err| panic!("{method} {url} failed: {err}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().to_owned()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Reply { status, headers, text }
}

/// A JSON request to `url` with a bearer key (and a JSON body, if any).
pub fn call_json(method: &str, url: &str, key: &str, body: Option<Value>) -> Reply {
    let auth = format!("Bearer {key}");
    let bytes = body.map(|body| serde_json::to_vec(&body).unwrap());
    let mut headers = vec![("Authorization", auth.as_str())];
    if bytes.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    send(method, url, &headers, bytes.as_deref())
}

/// A daemon on an ephemeral port, in-process, with its own runtime.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub setup: Setup,
    runtime: Option<tokio::runtime::Runtime>,
    daemon: Option<Daemon>,
    _dir: Option<Arc<tempfile::TempDir>>,
    /// The test's own PostgreSQL cluster, when the setup's storage is `Storage::Suite` under
    /// `ATENDER_TEST_STORAGE=postgres` (kept across restarts).
    pub pg: Option<Arc<crate::pg::PgCluster>>,
    /// A second daemon on the same database (`ATENDER_TEST_NODES=2` on PostgreSQL): requests
    /// alternate between the two, as behind a load balancer.
    peer: Option<Daemon>,
    turn: std::sync::atomic::AtomicUsize,
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        TestDaemon::with(Setup::default())
    }

    pub fn with(setup: Setup) -> TestDaemon {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let data_dir = dir.path().join("data");
        let (setup, pg) = setup.resolved();
        TestDaemon::launch(setup, data_dir, Some(dir), pg)
    }

    fn launch(
        setup: Setup,
        data_dir: PathBuf,
        dir: Option<Arc<tempfile::TempDir>>,
        pg: Option<Arc<crate::pg::PgCluster>>,
    ) -> TestDaemon {
        let config =
            Config::parse(&setup.config_text(&data_dir, "127.0.0.1:0")).expect("test config is valid");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        // A daemon that just stopped on this data dir may still be releasing sled's file lock
        // (its last threads exit asynchronously), so starting is retried for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        let daemon = loop {
            match runtime.block_on(Daemon::start(config.clone())) {
                Ok(daemon) => break daemon,
                Err(err) if Instant::now() < deadline && format!("{err:#}").contains("lock") => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => panic!("daemon does not start: {err:#}"),
            }
        };
        let peer =
            (matches!(setup.storage, Storage::Postgres(_)) && crate::pg::suite_nodes() == 2).then(|| {
                runtime
                    .block_on(Daemon::start(config.clone()))
                    .unwrap_or_else(|err| panic!("second node: {err:#}"))
            });
        TestDaemon {
            addr: daemon.local_addr(),
            data_dir,
            setup,
            runtime: Some(runtime),
            daemon: Some(daemon),
            _dir: dir,
            pg,
            peer,
            turn: Default::default(),
        }
    }

    /// Stops the daemon cleanly and starts a new one on the same data dir.
    pub fn restart(mut self) -> TestDaemon {
        let setup = self.setup.clone();
        let data_dir = self.data_dir.clone();
        let dir = self._dir.take();
        let pg = self.pg.take();
        self.stop();
        TestDaemon::launch(setup, data_dir, dir, pg)
    }

    /// Stops the daemon cleanly and starts a new one on the same data (and database) with
    /// `setup`'s settings; its storage stays this daemon's.
    pub fn restart_with(mut self, setup: Setup) -> TestDaemon {
        let setup = Setup { storage: self.setup.storage.clone(), ..setup };
        let data_dir = self.data_dir.clone();
        let dir = self._dir.take();
        let pg = self.pg.take();
        self.stop();
        TestDaemon::launch(setup, data_dir, dir, pg)
    }

    /// Shuts down with a short grace; returns whether everything finished in time.
    pub fn stop(&mut self) -> bool {
        let (Some(runtime), Some(daemon)) = (self.runtime.take(), self.daemon.take()) else { return true };
        let mut finished = runtime.block_on(daemon.shutdown(Duration::from_secs(5))).expect("clean shutdown");
        if let Some(peer) = self.peer.take() {
            finished &= runtime.block_on(peer.shutdown(Duration::from_secs(5))).expect("clean shutdown");
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
        finished
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// The subscription `id` of `tenant` as stored (secrets included), read behind the API.
    pub fn stored(&self, tenant: &str, id: &str) -> Option<atender_webhooks::model::Subscription> {
        let id = atender_webhooks::model::SubscriptionId::parse(id).expect("a subscription id");
        self.daemon().store().subscription(tenant, &id).expect("storage reads")
    }

    /// The URL of `path` on this daemon — on one of the two nodes in turn when there are two.
    pub fn url(&self, path: &str) -> String {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.peer {
            Some(peer) if turn % 2 == 1 => format!("http://{}{}", peer.local_addr(), path),
            _ => format!("http://{}{}", self.addr, path),
        }
    }

    /// How many daemons serve this test daemon's requests (see [`TestDaemon::url`]).
    pub fn nodes(&self) -> usize {
        1 + usize::from(self.peer.is_some())
    }

    /// A JSON request with a bearer key.
    pub fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
        call_json(method, &self.url(path), key, body)
    }

    /// Creates a subscription for `key`'s tenant and returns the 201 body.
    pub fn create_subscription(&self, key: &str, body: Value) -> Value {
        let reply = self.call("POST", "/v1/webhooks", key, Some(body));
        assert_eq!(reply.status, 201, "create failed: {}", reply.text);
        reply.json()
    }

    /// Rotates `id`'s secret (tenant acme) with an hour of grace, so the old one becomes the
    /// retired one; the new secret.
    pub fn rotate_with_grace(&self, id: &str) -> String {
        let reply = self.call(
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            ACME_KEY,
            Some(serde_json::json!({ "graceSeconds": 3600 })),
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()["secret"].as_str().unwrap().to_owned()
    }

    pub fn subscription(&self, key: &str, id: &str) -> Value {
        let reply = self.call("GET", &format!("/v1/webhooks/{id}"), key, None);
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()
    }

    /// Publishes one event and returns the 202 body.
    pub fn publish(&self, key: &str, event: &str, data: Value) -> Value {
        let reply =
            self.call("POST", "/v1/events", key, Some(serde_json::json!({ "event": event, "data": data })));
        assert_eq!(reply.status, 202, "publish failed: {}", reply.text);
        reply.json()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; panics naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Wait this long before answering (a hanging endpoint).
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer { status, headers: Vec::new(), delay: Duration::ZERO }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Answers used in order; when empty, `default` answers.
    script: VecDeque<Answer>,
    default: Option<Answer>,
    /// Requests being answered right now, and the most there ever were at once.
    in_progress: usize,
    max_in_progress: usize,
}

struct InProgress(Arc<Mutex<ReceiverState>>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_progress -= 1;
    }
}

/// A real HTTP receiver on 127.0.0.1, recording every request.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub fn start() -> Receiver {
        Receiver::answering(Answer::status(200))
    }

    pub fn answering(default: Answer) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState { default: Some(default), ..Default::default() }));
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let shared = state.clone();
        let route = warp::any()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |path: warp::path::FullPath, headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let shared = shared.clone();
                async move {
                    let answer = {
                        let mut state = shared.lock().unwrap();
                        state.received.push(Received {
                            at: Instant::now(),
                            path: path.as_str().to_owned(),
                            headers: headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                                .collect(),
                            body: body.to_vec(),
                        });
                        state.in_progress += 1;
                        state.max_in_progress = state.max_in_progress.max(state.in_progress);
                        state.script.pop_front().or_else(|| state.default.clone()).unwrap()
                    };
                    // Counts down even when the client gives up and the answer is dropped.
                    let _answering = InProgress(shared.clone());
                    if !answer.delay.is_zero() {
                        tokio::time::sleep(answer.delay).await;
                    }
                    let status = warp::http::StatusCode::from_u16(answer.status).unwrap();
                    let mut response = warp::Reply::into_response(warp::reply::with_status("ok", status));
                    for (name, value) in &answer.headers {
                        response.headers_mut().insert(*name, value.parse().unwrap());
                    }
                    response
                }
            });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(warp::serve(route).incoming(listener).run());
        Receiver { addr, state, _runtime: runtime }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Queues answers used for the next requests, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    pub fn set_default(&self, answer: Answer) {
        self.state.lock().unwrap().default = Some(answer);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The most requests this receiver was ever answering at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().unwrap().max_in_progress
    }

    /// Starts counting `max_concurrent` afresh from the requests open now.
    pub fn reset_max_concurrent(&self) {
        let mut state = self.state.lock().unwrap();
        state.max_in_progress = state.in_progress;
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Waits until at least `n` requests arrived and returns them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_until(&format!("{n} deliveries at {}", self.addr), timeout, || self.count() >= n);
        self.received()
    }
}

/// The guide's signature recipe (hex HMAC-SHA256 of the body under the secret), written
/// independently of the daemon's signer.
pub fn guide_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies a delivery's Standard Webhooks headers with the off-the-shelf `standardwebhooks`
/// crate.
pub fn standard_webhooks_verifies(secret: &str, delivery: &Received) -> bool {
    let mut headers = warp::http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, delivery.header(name).unwrap_or_default().parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret).unwrap().verify(&delivery.body, &headers).is_ok()
}
