//! docs/: the receiving-side examples. The Python and Node receivers in docs/examples/ verify a
//! real delivery from a daemon, and refuse tampered, foreign-keyed, stale and unsigned requests,
//! for both signature schemes; and the snippets in docs/verifying-signatures.md are the
//! examples' own code, so what the page shows is what these tests run.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atender_webhooks::delivery::signer::{atender_signature, standard_webhooks_signature};
use serde_json::json;

use crate::process::{repo_path, Running};
use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

/// Another well-formed secret, for signatures the receiver must not accept.
const FOREIGN_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1rZXktYnl0ZXM=";

#[derive(Debug, Clone, Copy)]
enum Language {
    Python,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scheme {
    /// `X-Atender-Signature`, the guide's recipe.
    Atender,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard,
}

impl Language {
    /// The interpreter and example file; fails naming the package to install when missing.
    fn command(self) -> Command {
        let (program, file, package) = match self {
            Language::Python => ("python3", "docs/examples/verify.py", "python3"),
            Language::Node => ("node", "docs/examples/verify.js", "nodejs"),
        };
        if Command::new(program).arg("--version").output().is_err() {
            panic!("{program} is not installed: install Debian's `{package}` package (apt-get install {package})");
        }
        let mut command = Command::new(program);
        command.arg(repo_path(file));
        command
    }
}

/// Starts an example receiver on a free port with the subscription's secret.
fn start_example(language: Language, scheme: Scheme, secret: &str) -> (Running, SocketAddr) {
    let mut command = language.command();
    command
        .env("WEBHOOK_SECRET", secret)
        .env("SCHEME", if scheme == Scheme::Atender { "atender" } else { "standard" })
        .env("HOST", "127.0.0.1")
        .env("PORT", "0");
    let mut example = Running::start(command);
    let line = example.wait_for_stdout("listening on http://", LONG);
    let addr = line.rsplit("http://").next().unwrap().trim().parse().unwrap();
    (example, addr)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// One request to send straight to the example, and the status it must answer.
struct Case {
    what: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: u16,
}

/// A body signed with `secret` for `scheme`, and variations of it that must be refused.
fn cases(scheme: Scheme, secret: &str) -> Vec<Case> {
    let body = br#"{"id":"evt_direct","event":"message.received","tenantId":"acme","timestamp":"2026-05-11T09:00:00Z","data":{"text":"h\u00e9llo"}}"#.to_vec();
    let tampered = String::from_utf8(body.clone()).unwrap().replace("h\\u00e9llo", "hello").into_bytes();
    let now = unix_now();
    match scheme {
        Scheme::Atender => {
            let signed =
                |secret: &str, body: &[u8]| vec![("X-Atender-Signature", atender_signature(secret, body))];
            vec![
                Case { what: "genuine", headers: signed(secret, &body), body: body.clone(), expect: 204 },
                Case { what: "a repeat", headers: signed(secret, &body), body: body.clone(), expect: 204 },
                Case { what: "tampered body", headers: signed(secret, &body), body: tampered, expect: 401 },
                Case {
                    what: "foreign secret",
                    headers: signed(FOREIGN_SECRET, &body),
                    body: body.clone(),
                    expect: 401,
                },
                Case {
                    what: "keyed without the whsec_ prefix",
                    headers: signed(secret.strip_prefix("whsec_").unwrap(), &body),
                    body: body.clone(),
                    expect: 401,
                },
                Case { what: "unsigned", headers: Vec::new(), body, expect: 401 },
            ]
        }
        Scheme::Standard => {
            let signed = |secret: &str, timestamp: i64, body: &[u8]| {
                vec![
                    ("webhook-id", "dlv_direct".to_owned()),
                    ("webhook-timestamp", timestamp.to_string()),
                    (
                        "webhook-signature",
                        standard_webhooks_signature(secret, "dlv_direct", timestamp, body).unwrap(),
                    ),
                ]
            };
            let mut rotation = signed(secret, now, &body);
            let foreign = standard_webhooks_signature(FOREIGN_SECRET, "dlv_direct", now, &body).unwrap();
            rotation[2].1 = format!("{foreign} {}", rotation[2].1);
            let mut wrong_version = signed(secret, now, &body);
            wrong_version[2].1 = wrong_version[2].1.replacen("v1,", "v2,", 1);
            let mut unsigned = signed(secret, now, &body);
            unsigned.pop();
            vec![
                Case {
                    what: "genuine",
                    headers: signed(secret, now, &body),
                    body: body.clone(),
                    expect: 204,
                },
                Case {
                    what: "a repeat",
                    headers: signed(secret, now, &body),
                    body: body.clone(),
                    expect: 204,
                },
                Case { what: "two signatures, one good", headers: rotation, body: body.clone(), expect: 204 },
                Case {
                    what: "tampered body",
                    headers: signed(secret, now, &body),
                    body: tampered,
                    expect: 401,
                },
                Case {
                    what: "foreign secret",
                    headers: signed(FOREIGN_SECRET, now, &body),
                    body: body.clone(),
                    expect: 401,
                },
                Case {
                    what: "signed 10 minutes ago",
                    headers: signed(secret, now - 600, &body),
                    body: body.clone(),
                    expect: 401,
                },
                Case {
                    what: "signed 10 minutes ahead",
                    headers: signed(secret, now + 600, &body),
                    body: body.clone(),
                    expect: 401,
                },
                Case {
                    what: "unknown signature version",
                    headers: wrong_version,
                    body: body.clone(),
                    expect: 401,
                },
                Case { what: "no webhook-signature", headers: unsigned, body, expect: 401 },
            ]
        }
    }
}

/// The example verifies a real delivery (answering 204, which the daemon records as success),
/// then answers every direct case as expected.
fn check_example(language: Language, scheme: Scheme) {
    let daemon = TestDaemon::start();
    // Created paused on a placeholder URL: the receiver needs the secret before it starts.
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "docs", "url": "http://127.0.0.1:9/placeholder", "events": ["message.received"], "isPaused": true }),
    );
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    let (mut example, addr) = start_example(language, scheme, secret);
    let url = format!("http://{addr}/atender-webhooks");
    let patched = daemon.call(
        "PATCH",
        &format!("/v1/webhooks/{id}"),
        ACME_KEY,
        Some(json!({ "url": url, "isPaused": false })),
    );
    assert_eq!(patched.status, 200, "{}", patched.text);

    // Non-ASCII data: the signature covers the raw bytes, which a verifier must not re-encode.
    let published = daemon.publish(ACME_KEY, "message.received", json!({ "text": "h\u{e9}llo \u{2713}" }));
    let event_id = published["id"].as_str().unwrap();
    example.wait_for_stdout(&format!("verified {event_id} message.received"), LONG);
    wait_until("the daemon to record the 204 as a success", LONG, || {
        daemon.subscription(ACME_KEY, id)["lastDeliveryStatus"] == "succeeded"
    });

    for case in cases(scheme, secret) {
        let headers: Vec<(&str, &str)> = std::iter::once(("Content-Type", "application/json"))
            .chain(case.headers.iter().map(|(name, value)| (*name, value.as_str())))
            .collect();
        let reply = send("POST", &url, &headers, Some(&case.body));
        assert_eq!(
            reply.status,
            case.expect,
            "{language:?} {scheme:?} receiver, {}: expected {}\n{}",
            case.what,
            case.expect,
            example.transcript()
        );
    }
    example.wait_for_stdout("duplicate evt_direct", LONG);
}

#[test]
fn python_example_verifies_the_atender_signature() {
    check_example(Language::Python, Scheme::Atender);
}

#[test]
fn python_example_verifies_standard_webhooks() {
    check_example(Language::Python, Scheme::Standard);
}

#[test]
fn node_example_verifies_the_atender_signature() {
    check_example(Language::Node, Scheme::Atender);
}

#[test]
fn node_example_verifies_standard_webhooks() {
    check_example(Language::Node, Scheme::Standard);
}

/// The fenced code blocks of `language` in a Markdown text.
fn code_blocks<'a>(markdown: &'a str, language: &str) -> Vec<&'a str> {
    let fence = format!("```{language}\n");
    markdown.split(fence.as_str()).skip(1).map(|rest| rest.split("\n```").next().unwrap()).collect()
}

#[test]
fn the_guide_shows_the_examples_own_code() {
    let guide = std::fs::read_to_string(repo_path("docs/verifying-signatures.md")).unwrap();
    for (language, file) in [("python", "docs/examples/verify.py"), ("js", "docs/examples/verify.js")] {
        let example = std::fs::read_to_string(repo_path(file)).unwrap();
        let blocks = code_blocks(&guide, language);
        assert!(blocks.len() >= 2, "the guide should show both {language} verifiers");
        for block in blocks {
            assert!(example.contains(block), "this {language} snippet is not in {file}:\n{block}");
        }
    }
}
