//! The binary as a person and systemd run it: every command, succeeding and failing, and `serve`
//! as a real child process driven by signals: SIGHUP reload (and refusal of a broken file),
//! SIGTERM draining an attempt in flight, the embedded development default, and the
//! operational endpoints.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::process::{binary, listening_addr, repo_path, run, run_binary, Finished, Running, Served};
use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

/// A secret in the daemon's format (the Standard Webhooks specification's example).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------------------------------------
// --version, --help, usage errors
// ---------------------------------------------------------------------------------------------

#[test]
fn version_prints_the_crate_version() {
    let out = run_binary(&["--version"]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), format!("atender-webhooks {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_every_command_and_its_flags() {
    let out = run_binary(&["--help"]);
    out.assert_success();
    for command in ["serve", "check-config", "keygen", "sign"] {
        assert!(
            out.stdout.lines().any(|line| line.trim_start().starts_with(command)),
            "--help does not list {command}:\n{}",
            out.stdout
        );
    }
    let flags = [
        ("serve", "--config"),
        ("serve", "--json-logs"),
        ("check-config", "--config"),
        ("keygen", "--tenant"),
        ("keygen", "--scope"),
        ("keygen", "--name"),
        ("sign", "--secret"),
        ("sign", "--id"),
        ("sign", "--timestamp"),
    ];
    for (command, flag) in flags {
        let out = run_binary(&[command, "--help"]);
        out.assert_success();
        assert!(out.stdout.contains(flag), "{command} --help does not mention {flag}:\n{}", out.stdout);
    }
}

#[test]
fn a_missing_or_unknown_command_is_a_usage_error() {
    let out = run_binary(&[]);
    out.assert_code(2);
    assert!(out.stderr.contains("Usage"), "{out:#?}");
    let out = run_binary(&["frobnicate"]);
    out.assert_code(2);
    assert!(out.stderr.contains("frobnicate"), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

/// Runs `check-config` on `text` written to a temporary file.
fn check_config(text: &str) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    run_binary(&["check-config", "--config", path.to_str().unwrap()])
}

fn tenant_with_key(key_sha256: &str, scope: &str) -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\n[[tenants.api_keys]]\nname = \"k\"\nkey_sha256 = \"{key_sha256}\"\nscopes = [\"{scope}\"]\n"
    )
}

#[test]
fn check_config_accepts_the_example_file() {
    let path = repo_path("config.example.toml");
    let out = run_binary(&["check-config", "--config", path.to_str().unwrap()]);
    out.assert_success();
    assert!(out.stdout.trim_end().ends_with(": ok"), "{out:#?}");
    assert!(out.stderr.is_empty(), "{out:#?}");
}

#[test]
fn check_config_rejects_a_broken_file_naming_the_key() {
    let digest = "0".repeat(64);
    let cases = [
        ("bogus = 1\n".to_owned(), "bogus"),
        ("[delivery]\ncolour = \"blue\"\n".to_owned(), "colour"),
        ("[delivery]\ntimeout = \"ten seconds\"\n".to_owned(), "delivery.timeout"),
        ("[delivery]\nmax_retry_delay = \"30d\"\n".to_owned(), "delivery.max_retry_delay"),
        ("listen = \"localhost\"\n".to_owned(), "listen"),
        (tenant_with_key("not-a-digest", "webhooks:read"), "tenants[0].api_keys[0].key_sha256"),
        (tenant_with_key(&digest, "admin"), "tenants[0].api_keys[0].scopes"),
        ("listen = [\n".to_owned(), "line 1"),
    ];
    for (text, key) in cases {
        let out = check_config(&text);
        out.assert_code(1);
        assert!(out.stderr.contains("is not valid"), "config {text:?}: {out:#?}");
        assert!(out.stderr.contains(key), "config {text:?} should name {key:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "config {text:?}: {out:#?}");
    }
}

#[test]
fn check_config_reports_a_missing_file() {
    let out = run_binary(&["check-config", "--config", "/nonexistent/atender/config.toml"]);
    out.assert_code(1);
    assert!(out.stderr.contains("cannot read /nonexistent/atender/config.toml"), "{out:#?}");
    // The reason once, not once per level of the error chain.
    assert_eq!(out.stderr.matches("No such file or directory").count(), 1, "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// keygen
// ---------------------------------------------------------------------------------------------

/// The generated key and the TOML lines of a keygen run.
fn parse_keygen(out: &Finished) -> (String, String) {
    let key = out
        .stdout
        .split_whitespace()
        .find(|word| word.starts_with("sa_live_"))
        .unwrap_or_else(|| panic!("no key printed: {out:#?}"))
        .to_owned();
    let snippet_start = out.stdout.find("[[tenants.api_keys]]").expect("a [[tenants.api_keys]] block");
    (key, out.stdout[snippet_start..].to_owned())
}

#[test]
fn keygen_prints_a_key_and_the_toml_that_stores_its_digest() {
    let out = run_binary(&[
        "keygen",
        "--tenant",
        "acme",
        "--scope",
        "webhooks:read",
        "--scope",
        "events:write",
        "--name",
        "backend",
    ]);
    out.assert_success();
    let (key, snippet) = parse_keygen(&out);
    let random = key.strip_prefix("sa_live_").unwrap();
    assert_eq!(random.len(), 40, "{key}");
    assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let lines: Vec<&str> = snippet.lines().collect();
    assert_eq!(
        lines,
        [
            "[[tenants.api_keys]]",
            "name = \"backend\"",
            &format!("key_sha256 = \"{digest}\""),
            "scopes = [\"webhooks:read\", \"events:write\"]",
        ]
    );
    assert!(out.stdout.contains("id = \"acme\""), "the output names the tenant block: {out:#?}");

    // Pasted under the tenant's block, the snippet makes a valid configuration...
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[[tenants]]\nid = \"acme\"\n\n{snippet}",
        dir.path().join("data").display()
    );
    check_config(&config).assert_success();

    // ...and the key works against a running daemon, with exactly the scopes asked for.
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &config).unwrap();
    let mut served = Served::start_with_file(dir, config_path, &[]);
    let listed = served.call("GET", "/v1/webhooks", &key, None);
    assert_eq!(listed.status, 200, "{}", listed.text);
    let create = json!({ "name": "x", "url": "https://hooks.example.com/in", "events": ["message.sent"] });
    let refused = served.call("POST", "/v1/webhooks", &key, Some(create));
    assert_eq!((refused.status, refused.error_code().as_str()), (403, "insufficient_scope"));
    served.stop("TERM");

    let (other, _) =
        parse_keygen(run_binary(&["keygen", "--tenant", "acme", "--scope", "events:write"]).assert_success());
    assert_ne!(key, other, "every run makes a new key");
}

#[test]
fn keygen_refuses_a_bad_tenant_or_scope_without_printing_a_key() {
    let cases: [(&[&str], &str); 3] = [
        (&["--tenant", "Acme Corp", "--scope", "webhooks:read"], "--tenant"),
        (&["--tenant", "", "--scope", "webhooks:read"], "--tenant"),
        (&["--tenant", "acme", "--scope", "webhooks:read", "--scope", "admin"], "\"admin\""),
    ];
    for (args, named) in cases {
        let out = run_binary(&[&["keygen"][..], args].concat());
        out.assert_code(1);
        assert!(out.stderr.contains(named), "keygen {args:?} should name {named}: {out:#?}");
        assert!(!out.stdout.contains("sa_live_"), "keygen {args:?} printed a key: {out:#?}");
    }
    let out = run_binary(&["keygen", "--tenant", "acme"]);
    out.assert_code(2);
    assert!(out.stderr.contains("--scope"), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// sign
// ---------------------------------------------------------------------------------------------

fn sign(args: &[&str], body: &[u8]) -> Finished {
    let mut command = binary();
    command.arg("sign").args(args);
    run(command, body)
}

/// The value of a `Name: value` line.
fn printed_header<'a>(out: &'a Finished, name: &str) -> &'a str {
    out.stdout
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {name} line: {out:#?}"))
}

#[test]
fn sign_prints_the_guide_signature_of_the_raw_stdin_bytes() {
    // Not canonical JSON, non-ASCII and a trailing newline: the signature covers the exact bytes.
    let body = "{\"id\": \"evt_1\",  \"event\":\"message.received\",\"data\":{\"text\":\"h\u{e9}llo\"}}\n";
    let out = sign(&["--secret", SECRET], body.as_bytes());
    out.assert_success();
    assert_eq!(out.stdout.lines().count(), 1, "only X-Atender-Signature without --id: {out:#?}");
    // Independently: HMAC-SHA256 keyed by the whole secret string, lowercase hex.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    assert_eq!(printed_header(&out, "X-Atender-Signature"), hex::encode(mac.finalize().into_bytes()));
    // Any byte changed changes the signature.
    let other = sign(&["--secret", SECRET], body.trim_end().as_bytes());
    assert_ne!(printed_header(&other, "X-Atender-Signature"), printed_header(&out, "X-Atender-Signature"));
}

#[test]
fn sign_with_id_and_timestamp_prints_a_standard_webhooks_signature() {
    let body = br#"{"id":"evt_1","event":"message.received","tenantId":"acme","data":{}}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let out = sign(&["--secret", SECRET, "--id", "dlv_cli", "--timestamp", &now.to_string()], body);
    out.assert_success();
    let signature = printed_header(&out, "webhook-signature");
    assert!(signature.starts_with("v1,"), "{signature}");

    let mut headers = warp::http::HeaderMap::new();
    headers.insert("webhook-id", "dlv_cli".parse().unwrap());
    headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
    headers.insert("webhook-signature", signature.parse().unwrap());
    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    verifier.verify(body, &headers).expect("the standardwebhooks crate accepts the signature");
    assert!(verifier.verify(b"{}", &headers).is_err(), "a different body must not verify");
}

#[test]
fn sign_refuses_incomplete_or_unusable_input() {
    // --id and --timestamp only make sense together.
    sign(&["--secret", SECRET, "--id", "dlv_1"], b"{}").assert_code(2);
    sign(&["--secret", SECRET, "--timestamp", "1"], b"{}").assert_code(2);
    sign(&[], b"{}").assert_code(2);
    // A secret that cannot key a Standard Webhooks signature: an error that never echoes it, and
    // no half output that a person could mistake for a result.
    for (secret, reason) in [("not-a-secret-at-all", "whsec_"), ("whsec_not base64!", "base64")] {
        let out = sign(&["--secret", secret, "--id", "dlv_1", "--timestamp", "1"], b"{}");
        out.assert_code(1);
        assert!(out.stderr.contains(reason), "{out:#?}");
        assert!(!out.stderr.contains(secret), "the secret leaked into the error: {out:#?}");
        assert!(out.stdout.is_empty(), "printed a partial result: {out:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------------

#[test]
fn sighup_applies_a_valid_config_and_refuses_a_broken_one() {
    let mut setup = Setup { tiny_max_webhooks: 1, ..Setup::default() };
    let mut served = Served::start(&setup, &[]);
    let create = |served: &Served, n: u32| {
        let body = json!({ "name": format!("hook-{n}"), "url": "https://hooks.example.com/in", "events": ["message.sent"] });
        served.call("POST", "/v1/webhooks", TINY_KEY, Some(body))
    };
    assert_eq!(create(&served, 1).status, 201);
    let refused = create(&served, 2);
    assert_eq!((refused.status, refused.error_code().as_str()), (429, "limit_exceeded"));

    // A higher limit in the file takes effect on SIGHUP, without a restart.
    setup.tiny_max_webhooks = 3;
    served.write_config(&setup);
    served.process.signal("HUP");
    served.process.wait_for_stderr_count("configuration reloaded", 1, LONG);
    assert_eq!(create(&served, 2).status, 201);
    assert_eq!(create(&served, 3).status, 201);
    assert_eq!(create(&served, 4).status, 429);

    // A broken file is refused with a log line naming the key; the last good config stays.
    std::fs::write(&served.config_path, "bogus = 1\n").unwrap();
    served.process.signal("HUP");
    let refusal = served.process.wait_for_stderr("reload refused", LONG);
    assert!(refusal.contains("bogus"), "the refusal should name the key: {refusal}");
    let listed = served.call("GET", "/v1/webhooks", TINY_KEY, None);
    assert_eq!(listed.status, 200, "keys of the running config still work: {}", listed.text);
    assert_eq!(listed.json()["data"].as_array().unwrap().len(), 3);
    assert_eq!(create(&served, 4).status, 429, "the limit of the last good file stays in force");
    assert_eq!(send("GET", &served.url("/readyz"), &[], None).status, 200);

    // Settings that need a restart are kept, and the log says which.
    served.write_config(&Setup { workers: 2, ..setup.clone() });
    served.process.signal("HUP");
    let kept = served.process.wait_for_stderr("only change on restart", LONG);
    assert!(kept.contains("delivery.workers"), "{kept}");
    assert_eq!(served.call("GET", "/v1/webhooks", TINY_KEY, None).status, 200);

    served.stop("TERM");
    assert_eq!(served.process.stderr_count("configuration reloaded"), 2, "{}", served.process.transcript());
}

#[test]
fn sigterm_lets_an_attempt_in_flight_finish_and_exits_0() {
    // The receiver holds its 200 for 2 s: long enough for SIGTERM to arrive mid-attempt.
    let receiver = Receiver::answering(Answer::status(200).after(Duration::from_secs(2)));
    let setup = Setup { timeout: "10s", ..Setup::default() };
    let mut served = Served::start(&setup, &["--json-logs"]);
    let body = json!({ "name": "slow", "url": receiver.url("/slow"), "events": ["message.received"] });
    let created = served.call("POST", "/v1/webhooks", ACME_KEY, Some(body));
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let event = json!({ "event": "message.received", "data": { "n": 1 } });
    assert_eq!(served.call("POST", "/v1/events", ACME_KEY, Some(event)).status, 202);
    receiver.wait_for(1, LONG);

    served.stop("TERM");
    let lines = served.process.stderr_lines();
    for line in &lines {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "--json-logs printed a non-JSON line: {line}");
    }
    assert!(
        lines.iter().any(|line| line.contains("shut down cleanly")),
        "the attempt in flight should finish within the grace period\n{}",
        served.process.transcript()
    );

    // The receiver's answer was recorded before exit: after a restart the delivery is done, with
    // one successful attempt, rather than due again.
    let mut served = served.restart(&[]);
    let log = served.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None);
    assert_eq!(log.status, 200, "{}", log.text);
    let delivery = &log.json()["data"][0];
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1, "{delivery}");
    assert_eq!(delivery["attempts"][0]["responseCode"], 200, "{delivery}");
    assert_eq!(receiver.count(), 1);
    served.stop("INT");
}

/// Polls /metrics until it contains every line in `expected`; panics naming what is missing.
fn wait_for_metrics(served: &Served, expected: &[&str]) -> Reply {
    let deadline = Instant::now() + LONG;
    loop {
        let reply = send("GET", &served.url("/metrics"), &[], None);
        let missing: Vec<&&str> =
            expected.iter().filter(|line| !reply.text.lines().any(|have| have == **line)).collect();
        if missing.is_empty() {
            return reply;
        }
        assert!(Instant::now() < deadline, "/metrics lacks {missing:?}:\n{}", reply.text);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_readiness_and_metrics_of_a_serving_daemon() {
    let receiver = Receiver::start();
    let mut served = Served::start(&Setup::default(), &[]);
    let health = send("GET", &served.url("/healthz"), &[], None);
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")));
    let ready = send("GET", &served.url("/readyz"), &[], None);
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")), "{}", ready.text);

    let body = json!({ "name": "metrics", "url": receiver.url("/hook"), "events": ["message.received"] });
    assert_eq!(served.call("POST", "/v1/webhooks", ACME_KEY, Some(body)).status, 201);
    let event = json!({ "event": "message.received", "data": {} });
    assert_eq!(served.call("POST", "/v1/events", ACME_KEY, Some(event)).status, 202);
    receiver.wait_for(1, LONG);

    let metrics = wait_for_metrics(
        &served,
        &[
            "atender_events_published_total 1",
            "atender_delivery_attempts_total{result=\"success\"} 1",
            "# TYPE atender_delivery_attempt_duration_seconds histogram",
            "atender_delivery_attempt_duration_seconds_count 1",
            "atender_delivery_attempt_duration_seconds_bucket{le=\"+Inf\"} 1",
            "atender_delivery_in_flight 0",
            "atender_deliveries_queued{state=\"pending\"} 0",
            "atender_deliveries_queued{state=\"held\"} 0",
            "atender_subscriptions_disabled_total 0",
        ],
    );
    assert_eq!(metrics.status, 200);
    // The data dir's free space is a sled figure: PostgreSQL has no data dir to read, and a
    // constant 0 there would trip free-space alerts.
    let free_space = metrics.text.contains("\natender_storage_free_bytes ");
    assert_eq!(free_space, !matches!(served.storage, Storage::Postgres(_)), "{}", metrics.text);
    assert!(metrics.text.trim_end().ends_with("# EOF"), "one end marker, at the end");
    assert_eq!(metrics.text.matches("# EOF").count(), 1);
    let content_type = metrics.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") || content_type.starts_with("application/openmetrics-text"),
        "a content type Prometheus scrapes: {content_type}"
    );
    served.stop("TERM");
}

#[test]
fn serve_without_config_runs_the_development_default() {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = binary();
    command.arg("serve").current_dir(cwd.path());
    let mut process = Running::start(command);
    process.wait_for_stderr("DEVELOPMENT DEFAULT", LONG);
    let announced = process.wait_for_stderr("demo API key", LONG);
    let key = announced
        .split_whitespace()
        .find(|word| word.starts_with("sa_live_"))
        .unwrap_or_else(|| panic!("no demo key in {announced}"))
        .to_owned();

    // The default listens on 127.0.0.1:8080, which something else on a shared machine may hold:
    // then the daemon must say so and fail, and that is all that can be checked here.
    wait_until("listening, or an exit", LONG, || {
        process.stderr_count("listening") > 0 || process.has_exited()
    });
    if process.has_exited() {
        assert!(
            process.stderr_count("cannot listen on 127.0.0.1:8080") > 0,
            "serve exited without listening\n{}",
            process.transcript()
        );
        assert_eq!(process.wait_exit(LONG).code(), Some(1));
    } else {
        let addr = listening_addr(&process.wait_for_stderr("listening", LONG));
        assert_eq!(addr.to_string(), "127.0.0.1:8080");
        let auth = format!("Bearer {key}");
        let listed = send("GET", "http://127.0.0.1:8080/v1/webhooks", &[("Authorization", &auth)], None);
        assert_eq!(listed.status, 200, "the demo key works: {}", listed.text);
        // There is no file to reload: SIGHUP is ignored, not fatal.
        process.signal("HUP");
        process.wait_for_stderr("SIGHUP ignored", LONG);
        process.signal("TERM");
        let status = process.wait_exit(Duration::from_secs(40));
        assert_eq!(status.code(), Some(0), "{}", process.transcript());
    }
    assert!(cwd.path().join("atender-data").is_dir(), "the data dir is ./atender-data");
}

#[test]
fn a_second_daemon_on_a_data_dir_in_use_says_so_and_exits_1() {
    let mut first = Served::start(&Setup { storage: Storage::Sled, ..Setup::default() }, &[]);
    let second = run_binary(&["serve", "--config", first.config_path.to_str().unwrap()]);
    second.assert_code(1);
    assert!(
        second.stderr.contains("is in use by another process")
            && second.stderr.contains("is a daemon already running on it?")
            && !second.stderr.contains("WouldBlock"),
        "{second:#?}"
    );
    // The first one never noticed.
    let ready = send("GET", &first.url("/readyz"), &[], None);
    assert_eq!(ready.status, 200, "{}", ready.text);
    first.stop("TERM");
}
