//! The only outbound HTTP: one shared blocking ureq agent (connection pool, no proxy, no
//! redirects, connect-time private-address guard) and `post`, which classifies each attempt.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ureq::config::{AutoHeaderValue, Config};
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};
use ureq::Agent;

use crate::delivery::backoff;
use crate::net_policy;

/// Most bytes of a response body read (and discarded) per attempt.
pub const MAX_RESPONSE_BODY: u64 = 64 * 1024;

/// Settings for the shared delivery agent.
#[derive(Debug, Clone)]
pub struct HttpClientConfig {
    /// Bound on a whole attempt: resolve, connect, TLS, send, response and body read.
    pub timeout: Duration,
    /// When false, every address a target resolves to is checked at connect time.
    pub allow_private_targets: bool,
    /// `User-Agent` sent on every request.
    pub user_agent: String,
    /// Idle keep-alive connections kept, in total and per host.
    pub max_idle_connections: usize,
}

/// Builds the agent every delivery shares (it is `Clone + Send + Sync` and pools connections).
///
/// Proxies are off: ureq otherwise honours `*_PROXY` environment variables, and a proxy would
/// resolve and connect on our behalf, bypassing the address guard. Redirects are not followed
/// (a 3xx is a failed attempt) and 4xx/5xx are responses, not errors.
pub fn build_agent(config: &HttpClientConfig) -> Agent {
    let agent_config = Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(config.timeout))
        // Connect (incl. TLS) may use the whole budget; the global bound still applies.
        .timeout_connect(Some(config.timeout))
        .user_agent(config.user_agent.as_str())
        // Bodies are discarded, so there is nothing to gain from asking for compression.
        .accept_encoding(AutoHeaderValue::None)
        // A single busy receiver may use the whole pool: deliveries to one host often dominate.
        .max_idle_connections(config.max_idle_connections)
        .max_idle_connections_per_host(config.max_idle_connections)
        .build();
    let resolver = DeliveryResolver { guard: !config.allow_private_targets, ..DeliveryResolver::default() };
    Agent::with_parts(agent_config, DefaultConnector::new().chain(AnswerBeforeReset), resolver)
}

/// Keeps a receiver's answer when it stops reading the request: a receiver may answer (410
/// Gone, 413 Content Too Large, 401) and close before reading the body, and the rest of the
/// body then fails to send with "broken pipe" or "connection reset". The status line it sent
/// is still in the socket's receive buffer, so the transport stops sending (the rest of the
/// body is dropped), lets ureq read the answer, and never returns the connection to the pool.
/// If no answer arrived, the read fails and the attempt is a connection failure as before.
#[derive(Debug)]
struct AnswerBeforeReset;

impl<In: Transport> Connector<In> for AnswerBeforeReset {
    type Out = SendFailureTolerant<In>;

    fn connect(&self, _: &ConnectionDetails, chained: Option<In>) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(chained.map(|inner| SendFailureTolerant { inner, send_failed: false }))
    }
}

/// A transport that swallows "broken pipe" and "connection reset" while sending (see
/// [`AnswerBeforeReset`]).
#[derive(Debug)]
struct SendFailureTolerant<T> {
    inner: T,
    send_failed: bool,
}

impl<T: Transport> Transport for SendFailureTolerant<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if self.send_failed {
            return Ok(());
        }
        match self.inner.transmit_output(amount, timeout) {
            Err(ureq::Error::Io(err))
                if matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) =>
            {
                self.send_failed = true;
                Ok(())
            }
            other => other,
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        !self.send_failed && self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// Why a target was not connected to; travels through ureq as `ureq::Error::Other`.
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
struct TargetRefused(String);

/// How long a name's addresses are reused. ureq calls the resolver on every request, even on
/// a pooled connection, and its default resolver spawns a thread per lookup when a timeout is
/// set; a short cache keeps DNS off the per-attempt path while still following address changes.
const RESOLVE_TTL: Duration = Duration::from_secs(10);

/// Names cached at most; the cache is emptied when full (a webhook host has few endpoints).
const RESOLVE_CACHE_ENTRIES: usize = 4096;

/// The delivery resolver: IP literals without a lookup, names through the default resolver
/// with a short cache, and — unless private targets are allowed — only the addresses
/// `net_policy` permits. ureq connects only to what this returns, so the guard covers the
/// address actually used (checked on every attempt, cached or not), whatever DNS said when the
/// subscription was created.
#[derive(Debug, Default)]
struct DeliveryResolver {
    guard: bool,
    inner: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl DeliveryResolver {
    fn lookup(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        // Uri::host keeps the brackets around IPv6 literals.
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            let mut out = self.empty();
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        let key = format!("{host}:{port}");
        if let Some((at, addrs)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if at.elapsed() < RESOLVE_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= RESOLVE_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

impl Resolver for DeliveryResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let resolved = self.lookup(uri, config, timeout)?;
        if !self.guard {
            return Ok(resolved);
        }
        let allowed = allowed_addrs(uri.host().unwrap_or_default(), &resolved)
            .map_err(|refused| ureq::Error::Other(Box::new(refused)))?;
        let mut out = self.empty();
        // `allowed` is a subset of `resolved`, which came in an array of the same capacity.
        for addr in allowed {
            out.push(addr);
        }
        Ok(out)
    }
}

/// The addresses of `host` that may be connected to, or why none may.
fn allowed_addrs(host: &str, addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>, TargetRefused> {
    let mut reasons: Vec<&str> = Vec::new();
    let mut allowed = Vec::new();
    for addr in addrs {
        match net_policy::forbidden_reason(addr.ip()) {
            None => allowed.push(*addr),
            Some(reason) if !reasons.contains(&reason) => reasons.push(reason),
            Some(_) => {}
        }
    }
    if !allowed.is_empty() {
        return Ok(allowed);
    }
    let reasons = reasons.join(", ");
    // Uri::host keeps the brackets around IPv6 literals.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    Err(TargetRefused(if literal.parse::<IpAddr>().is_ok() {
        format!("{host} is a forbidden target ({reasons})")
    } else {
        format!("{host} resolves only to {reasons}")
    }))
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptResult {
    /// A 2xx response.
    Success,
    /// Any other response, including 3xx (not followed) and malformed responses.
    HttpError,
    /// A configured timeout expired.
    Timeout,
    /// Name resolution, connection, TLS or I/O failure.
    ConnectError,
    /// The address guard refused every address of the target.
    Refused,
}

impl AttemptResult {
    /// Stable snake_case name, e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Success => "success",
            AttemptResult::HttpError => "http_error",
            AttemptResult::Timeout => "timeout",
            AttemptResult::ConnectError => "connect_error",
            AttemptResult::Refused => "refused",
        }
    }
}

/// What one delivery attempt produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How the attempt ended.
    pub result: AttemptResult,
    /// Response status, when a response was received.
    pub status: Option<u16>,
    /// Why the attempt failed, for the delivery log (`None` on success).
    pub error: Option<String>,
    /// Parsed `Retry-After`, only for 429 and 503 (uncapped: the caller caps it).
    pub retry_after: Option<Duration>,
    /// Wall time of the attempt, including reading the response body.
    pub duration: Duration,
}

/// Sends one delivery attempt: `POST url` with `Content-Type: application/json`, the given
/// headers and `body`. Reads at most [`MAX_RESPONSE_BODY`] of the response and discards it (a
/// fully read body lets the connection return to the pool). Never panics.
///
/// `Content-Type` entries in `headers` are skipped: the body is always JSON. The outcome follows
/// the status line; a failure while reading the discarded body does not change it.
pub fn post(agent: &Agent, url: &str, headers: &[(String, String)], body: &[u8]) -> Outcome {
    post_bounded(agent, url, headers, body, None)
}

/// [`post`] bounded by `timeout` instead of the agent's own (`delivery.timeout`), for this
/// request only: the same agent, pool and address guard. A test send uses it to stay within
/// the API's deadline whatever `delivery.timeout` says.
pub fn post_within(
    agent: &Agent,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Outcome {
    post_bounded(agent, url, headers, body, Some(timeout))
}

fn post_bounded(
    agent: &Agent,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Option<Duration>,
) -> Outcome {
    let started = Instant::now();
    let mut request = agent.post(url).header("Content-Type", "application/json");
    if let Some(timeout) = timeout {
        request = request.config().timeout_global(Some(timeout)).timeout_connect(Some(timeout)).build();
    }
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("content-type") {
            request = request.header(name.as_str(), value.as_str());
        }
    }

    let mut outcome = match request.send(body) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = match status {
                429 | 503 => response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| backoff::parse_retry_after(v, SystemTime::now())),
                _ => None,
            };
            let mut limited = response.body_mut().as_reader().take(MAX_RESPONSE_BODY);
            let _ = io::copy(&mut limited, &mut io::sink());

            let (result, error) = match status {
                200..=299 => (AttemptResult::Success, None),
                300..=399 => {
                    (AttemptResult::HttpError, Some(format!("HTTP {status} (redirects are not followed)")))
                }
                _ => (AttemptResult::HttpError, Some(format!("HTTP {status}"))),
            };
            Outcome { result, status: Some(status), error, retry_after, duration: Duration::ZERO }
        }
        Err(err) => {
            let (result, error) = classify(err);
            Outcome { result, status: None, error: Some(error), retry_after: None, duration: Duration::ZERO }
        }
    };
    outcome.duration = started.elapsed();
    outcome
}

fn classify(err: ureq::Error) -> (AttemptResult, String) {
    use ureq::Error as E;
    match err {
        E::Other(inner) => match inner.downcast::<TargetRefused>() {
            Ok(refused) => (AttemptResult::Refused, refused.to_string()),
            Err(inner) => (AttemptResult::ConnectError, format!("connection failed: {inner}")),
        },
        E::Timeout(which) => (AttemptResult::Timeout, format!("timed out ({which} timeout)")),
        E::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            (AttemptResult::Timeout, format!("timed out: {e}"))
        }
        E::Io(e) => (AttemptResult::ConnectError, format!("connection failed: {e}")),
        E::HostNotFound => (AttemptResult::ConnectError, "host not found".to_string()),
        e @ (E::Protocol(_) | E::LargeResponseHeader(..)) => {
            (AttemptResult::HttpError, format!("invalid HTTP response: {e}"))
        }
        e @ (E::BadUri(_) | E::Http(_)) => (AttemptResult::ConnectError, format!("invalid request: {e}")),
        // TLS and anything ureq adds later.
        e => (AttemptResult::ConnectError, format!("connection failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread;

    /// A scripted HTTP/1.1 server: each request received gets the next canned response.
    struct TestServer {
        port: u16,
        requests: Arc<Mutex<Vec<String>>>,
        connections: Arc<AtomicUsize>,
    }

    fn serve(responses: Vec<Vec<u8>>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(VecDeque::from(responses)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (reqs, conns) = (requests.clone(), connections.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                conns.fetch_add(1, Ordering::SeqCst);
                let (script, reqs) = (script.clone(), reqs.clone());
                // One thread per connection: an idle pooled connection must not block others.
                thread::spawn(move || {
                    let _ = handle_connection(stream, &script, &reqs);
                });
            }
        });
        TestServer { port, requests, connections }
    }

    fn handle_connection(
        stream: TcpStream,
        script: &Mutex<VecDeque<Vec<u8>>>,
        requests: &Mutex<Vec<String>>,
    ) -> io::Result<()> {
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            requests.lock().unwrap().push(head + &String::from_utf8_lossy(&body));
            let Some(response) = script.lock().unwrap().pop_front() else {
                return Ok(());
            };
            writer.write_all(&response)?;
        }
    }

    fn response(status: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 {status}\r\n{extra_headers}Content-Length: {}\r\n\r\n", body.len())
            .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn agent(allow_private_targets: bool, timeout: Duration) -> Agent {
        build_agent(&HttpClientConfig {
            timeout,
            allow_private_targets,
            user_agent: "atender-webhooks/test".to_string(),
            max_idle_connections: 8,
        })
    }

    fn open_agent() -> Agent {
        agent(true, Duration::from_secs(5))
    }

    /// A listener that is never accepted from: `accept` succeeding later proves a connection.
    fn untouched_listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    fn assert_never_connected(listener: &TcpListener) {
        thread::sleep(Duration::from_millis(50));
        let err = listener.accept().map(|_| ()).expect_err("server was connected to");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn success_on_2xx_sends_body_and_headers() {
        let server = serve(vec![response("200 OK", "", b"ok")]);
        let url = format!("http://127.0.0.1:{}/hook", server.port);
        let headers = vec![
            ("X-Atender-Event".to_string(), "ticket.created".to_string()),
            ("content-type".to_string(), "text/plain".to_string()),
        ];
        let out = post(&open_agent(), &url, &headers, br#"{"a":1}"#);
        assert_eq!(out.result, AttemptResult::Success, "{out:?}");
        assert_eq!((out.status, out.error, out.retry_after), (Some(200), None, None));

        let requests = server.requests.lock().unwrap();
        let req = requests[0].to_ascii_lowercase();
        assert!(req.starts_with("post /hook http/1.1\r\n"), "{req}");
        assert!(req.contains("\r\ncontent-type: application/json\r\n"), "{req}");
        assert!(!req.contains("text/plain"), "{req}");
        assert!(req.contains("\r\nx-atender-event: ticket.created\r\n"), "{req}");
        assert!(req.contains("\r\nuser-agent: atender-webhooks/test\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
    }

    #[test]
    fn connections_are_reused() {
        let ok = response("200 OK", "", b"");
        let server = serve(vec![ok.clone(), ok]);
        let url = format!("http://127.0.0.1:{}/", server.port);
        let agent = open_agent();
        for _ in 0..2 {
            assert_eq!(post(&agent, &url, &[], b"{}").result, AttemptResult::Success);
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let server = serve(vec![
            response("503 Service Unavailable", "Retry-After: 7\r\n", b"busy"),
            response("429 Too Many Requests", "Retry-After: 3\r\n", b""),
            response("500 Internal Server Error", "Retry-After: 9\r\n", b""),
        ]);
        let url = format!("http://127.0.0.1:{}/", server.port);
        let agent = open_agent();

        let out = post(&agent, &url, &[], b"{}");
        assert_eq!(out.result, AttemptResult::HttpError);
        assert_eq!(out.status, Some(503));
        assert_eq!(out.error.as_deref(), Some("HTTP 503"));
        assert_eq!(out.retry_after, Some(Duration::from_secs(7)));

        let out = post(&agent, &url, &[], b"{}");
        assert_eq!((out.status, out.retry_after), (Some(429), Some(Duration::from_secs(3))));

        let out = post(&agent, &url, &[], b"{}");
        assert_eq!((out.status, out.retry_after), (Some(500), None));
        assert_eq!(out.error.as_deref(), Some("HTTP 500"));
    }

    #[test]
    fn redirects_are_not_followed() {
        let (elsewhere, other_port) = untouched_listener();
        let location = format!("Location: http://127.0.0.1:{other_port}/\r\n");
        let server = serve(vec![
            response("302 Found", &location, b""),
            response("307 Temporary Redirect", &location, b""),
        ]);
        let url = format!("http://127.0.0.1:{}/", server.port);
        let agent = open_agent();
        for status in [302, 307] {
            let out = post(&agent, &url, &[], b"{}");
            assert_eq!(out.result, AttemptResult::HttpError, "{out:?}");
            assert_eq!(out.status, Some(status));
            assert_eq!(out.error, Some(format!("HTTP {status} (redirects are not followed)")));
        }
        assert_never_connected(&elsewhere);
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            // Accept and hold connections without ever answering.
            let held: Vec<TcpStream> = listener.incoming().take(1).flatten().collect();
            thread::sleep(Duration::from_secs(5));
            drop(held);
        });
        let out =
            post(&agent(true, Duration::from_millis(300)), &format!("http://127.0.0.1:{port}/"), &[], b"{}");
        assert_eq!(out.result, AttemptResult::Timeout, "{out:?}");
        assert_eq!(out.status, None);
        assert!(out.error.as_deref().unwrap().starts_with("timed out"), "{out:?}");
        assert!(out.duration >= Duration::from_millis(250), "{out:?}");
        assert!(out.duration < Duration::from_secs(2), "{out:?}");
    }

    #[test]
    fn post_within_bounds_one_request_below_the_agents_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            let held: Vec<TcpStream> = listener.incoming().take(2).flatten().collect();
            thread::sleep(Duration::from_secs(8));
            drop(held);
        });
        // The agent would wait 30 s; this request gives up after 300 ms.
        let agent = agent(true, Duration::from_secs(30));
        let out =
            post_within(&agent, &format!("http://127.0.0.1:{port}/"), &[], b"{}", Duration::from_millis(300));
        assert_eq!(out.result, AttemptResult::Timeout, "{out:?}");
        assert!(out.duration < Duration::from_secs(5), "{out:?}");
    }

    #[test]
    fn closed_port_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = post(&open_agent(), &format!("http://127.0.0.1:{port}/"), &[], b"{}");
        assert_eq!(out.result, AttemptResult::ConnectError, "{out:?}");
        assert!(out.error.as_deref().unwrap().starts_with("connection failed: "), "{out:?}");
    }

    #[test]
    fn unresolvable_name_is_a_connect_error() {
        let out = post(&agent(false, Duration::from_secs(5)), "http://no-such-host.invalid/", &[], b"{}");
        assert_eq!(out.result, AttemptResult::ConnectError, "{out:?}");
    }

    #[test]
    fn guard_refuses_loopback_at_connect_time() {
        let (listener, port) = untouched_listener();
        let guarded = agent(false, Duration::from_secs(5));

        let out = post(&guarded, &format!("http://localhost:{port}/"), &[], b"{}");
        assert_eq!(out.result, AttemptResult::Refused, "{out:?}");
        assert_eq!(out.error.as_deref(), Some("refused: localhost resolves only to loopback address"));

        let out = post(&guarded, &format!("http://127.0.0.1:{port}/"), &[], b"{}");
        assert_eq!(out.result, AttemptResult::Refused, "{out:?}");
        assert_eq!(out.error.as_deref(), Some("refused: 127.0.0.1 is a forbidden target (loopback address)"));

        let out = post(&guarded, &format!("http://[::ffff:127.0.0.1]:{port}/"), &[], b"{}");
        assert_eq!(out.result, AttemptResult::Refused, "{out:?}");
        assert_eq!(out.status, None);

        assert_never_connected(&listener);
    }

    #[test]
    fn private_targets_allowed_when_configured() {
        let ok = response("200 OK", "", b"");
        let server = serve(vec![ok.clone(), ok]);
        let agent = open_agent();
        for host in ["localhost", "127.0.0.1"] {
            let out = post(&agent, &format!("http://{host}:{}/", server.port), &[], b"{}");
            assert_eq!(out.result, AttemptResult::Success, "{host}: {out:?}");
        }
        assert_eq!(server.requests.lock().unwrap().len(), 2);
    }

    #[test]
    fn guard_keeps_public_addresses_and_drops_forbidden_ones() {
        let public: SocketAddr = "93.184.215.14:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.7:443".parse().unwrap();
        let metadata: SocketAddr = "169.254.169.254:443".parse().unwrap();
        assert_eq!(allowed_addrs("mixed.example", &[private, public]).unwrap(), [public]);
        assert_eq!(
            allowed_addrs("rebind.example", &[private, metadata, private]).unwrap_err().to_string(),
            "refused: rebind.example resolves only to private address, link-local address"
        );
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(
            allowed_addrs("[::1]", &[v6]).unwrap_err().to_string(),
            "refused: [::1] is a forbidden target (loopback address)"
        );
    }

    #[test]
    fn large_response_body_is_cut_off_without_failing() {
        let big = vec![b'x'; 4 * 1024 * 1024];
        let server = serve(vec![response("200 OK", "", &big)]);
        let out = post(&open_agent(), &format!("http://127.0.0.1:{}/", server.port), &[], b"{}");
        assert_eq!(out.result, AttemptResult::Success, "{out:?}");
        assert!(out.duration < Duration::from_secs(4), "{out:?}");
    }

    #[test]
    fn endless_response_body_is_cut_off_without_failing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            if let Some(Ok(mut stream)) = listener.incoming().next() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = format!("1000\r\n{}\r\n", "y".repeat(0x1000));
                while stream.write_all(chunk.as_bytes()).is_ok() {}
            }
        });
        let out = post(&open_agent(), &format!("http://127.0.0.1:{port}/"), &[], b"{}");
        assert_eq!(out.result, AttemptResult::Success, "{out:?}");
        assert!(out.duration < Duration::from_secs(4), "{out:?}");
    }

    #[test]
    fn bad_input_never_panics() {
        let agent = open_agent();
        let bad_header = vec![("Bad Header\n".to_string(), "v".to_string())];
        let out = post(&agent, "http://127.0.0.1:9/", &bad_header, b"{}");
        assert_eq!(out.result, AttemptResult::ConnectError, "{out:?}");
        let out = post(&agent, "not a url", &[], b"{}");
        assert_eq!(out.result, AttemptResult::ConnectError, "{out:?}");
        assert!(out.error.unwrap().starts_with("invalid request: "));
    }
}
