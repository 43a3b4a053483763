//! The tenant portal (`/portal/`): links from `POST /v1/portal-sessions`, the session cookie,
//! expiry, tenant isolation, read-only sessions, CSRF, the security headers, escaping of tenant
//! strings, the API's validation on forms — over HTTP — and one walk through every page in a
//! real headless Chromium driven by WebDriver.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::process::Running;
use crate::support::*;

const XSS: &str = "<img src=x onerror=alert(1)>";
/// A payload whose handler would leave a trace the browser test can look for.
const XSS_TRACE: &str = "<img src=x onerror=window.xssRan=1>";

/// A portal link for `key`'s tenant: (url, expiresAt).
fn portal_link(daemon: &TestDaemon, key: &str, body: Option<Value>) -> (String, String) {
    let reply = daemon.call("POST", "/v1/portal-sessions", key, body);
    assert_eq!(reply.status, 201, "{}", reply.text);
    let json = reply.json();
    (json["url"].as_str().unwrap().to_owned(), json["expiresAt"].as_str().unwrap().to_owned())
}

/// Opens a link and returns the session cookie (`atender_portal=…`) and the Set-Cookie line.
fn enter(link: &str) -> (String, String) {
    let reply = send("GET", link, &[], None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let set_cookie = reply.header("set-cookie").expect("a session cookie").to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    (cookie, set_cookie)
}

/// A session cookie for `key`'s tenant.
fn session(daemon: &TestDaemon, key: &str, read_only: bool) -> String {
    enter(&portal_link(daemon, key, Some(json!({ "readOnly": read_only }))).0).0
}

fn page(daemon: &TestDaemon, path: &str, cookie: &str) -> Reply {
    send("GET", &daemon.url(path), &[("Cookie", cookie)], None)
}

fn post_form(daemon: &TestDaemon, path: &str, cookie: &str, fields: &[(&str, &str)]) -> Reply {
    let body: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    send(
        "POST",
        &daemon.url(path),
        &[("Cookie", cookie), ("Content-Type", "application/x-www-form-urlencoded")],
        Some(body.as_bytes()),
    )
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    html[start..].split('"').next().unwrap().to_owned()
}

/// Text as maud writes it into HTML.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn subscription_body(name: &str, url: &str) -> Value {
    json!({ "name": name, "url": url, "events": ["message.received"] })
}

#[test]
fn a_link_opens_a_session_in_an_http_only_cookie_and_leaves_the_address_bar() {
    let daemon = TestDaemon::start();
    daemon.create_subscription(ACME_KEY, subscription_body("orders-listener", "https://example.com/hook"));
    let (link, expires_at) = portal_link(&daemon, ACME_KEY, None);
    // The link's origin is the node that answered (the Host it was asked on).
    let origin = |url: String| url.split("/portal").next().unwrap().to_owned();
    let nodes: Vec<String> = (0..daemon.nodes()).map(|_| origin(daemon.url("/portal"))).collect();
    assert!(nodes.iter().any(|node| link.starts_with(&format!("{node}/portal/enter/"))), "{link}");
    let expires = humantime::parse_rfc3339(&expires_at).unwrap();
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    let off = in_an_hour.duration_since(expires).unwrap_or_else(|err| err.duration());
    assert!(off < Duration::from_secs(10), "default lifetime is 1 h, got {expires_at}");

    let reply = send("GET", &link, &[], None);
    assert_eq!(reply.status, 200);
    let set_cookie = reply.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/portal", "Max-Age=3"] {
        assert!(set_cookie.contains(attribute), "{attribute} missing from {set_cookie}");
    }
    assert!(reply.text.contains("http-equiv=\"refresh\" content=\"0;url=/portal/\""), "{}", reply.text);
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));

    let (cookie, _) = enter(&link);
    let list = page(&daemon, "/portal/", &cookie);
    assert_eq!(list.status, 200);
    assert!(list.header("content-type").unwrap().starts_with("text/html"));
    assert!(list.text.contains("orders-listener"), "{}", list.text);

    let anonymous = send("GET", &daemon.url("/portal/"), &[], None);
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.text.contains("Open the portal from the Atender app"), "{}", anonymous.text);
}

#[test]
fn portal_session_requests_are_validated_like_the_api() {
    let daemon = TestDaemon::start();
    let cases = [
        (ACME_KEY, Some(json!({ "ttlSeconds": 0 })), 400, "ttlSeconds must be between 1 and 86400"),
        (ACME_KEY, Some(json!({ "ttlSeconds": 86_401 })), 400, "ttlSeconds must be between 1 and 86400"),
        (ACME_KEY, Some(json!({ "readonly": true })), 400, "unknown field `readonly`"),
        (ACME_KEY, Some(json!({ "readOnly": "yes" })), 400, "readOnly"),
        (ACME_READ_KEY, None, 403, "this API key lacks the webhooks:write scope"),
        (FROZEN_KEY, None, 403, "webhooks are not enabled for this tenant"),
        ("sa_live_unknown", None, 401, "unknown API key"),
    ];
    for (key, body, status, message) in cases {
        let reply = daemon.call("POST", "/v1/portal-sessions", key, body.clone());
        assert_eq!(reply.status, status, "{body:?}: {}", reply.text);
        assert!(reply.error_message().contains(message), "{body:?}: {}", reply.text);
    }
    let longest = daemon.call("POST", "/v1/portal-sessions", ACME_KEY, Some(json!({ "ttlSeconds": 86_400 })));
    assert_eq!(longest.status, 201, "{}", longest.text);
    let wrong_method = daemon.call("GET", "/v1/portal-sessions", ACME_KEY, None);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
}

#[test]
fn an_expired_link_and_an_expired_cookie_are_refused_with_a_clear_page() {
    let daemon = TestDaemon::start();
    // Two seconds, so a loaded machine still opens the link before it expires.
    let asked = std::time::SystemTime::now();
    let (link, expires_at) = portal_link(&daemon, ACME_KEY, Some(json!({ "ttlSeconds": 2 })));
    let expires = humantime::parse_rfc3339(&expires_at).unwrap();
    // Whole seconds rounded up: a link lives at least its ttlSeconds, never a truncated part.
    assert!(expires >= asked + Duration::from_secs(2), "{expires_at} is short of 2 s");
    let (cookie, _) = enter(&link);
    wait_until("the link's expiry", Duration::from_secs(10), || std::time::SystemTime::now() > expires);
    for reply in [send("GET", &link, &[], None), page(&daemon, "/portal/", &cookie)] {
        assert_eq!(reply.status, 401, "{}", reply.text);
        assert!(reply.text.contains("This portal link has expired"), "{}", reply.text);
        assert!(reply.header("set-cookie").is_none());
    }
}

#[test]
fn a_session_never_shows_or_changes_another_tenants_subscriptions() {
    let daemon = TestDaemon::start();
    let acme =
        daemon.create_subscription(ACME_KEY, subscription_body("acme-secret-hook", "https://example.com/a"));
    let id = acme["id"].as_str().unwrap();
    let globex = session(&daemon, GLOBEX_KEY, false);
    let list = page(&daemon, "/portal/", &globex);
    assert_eq!(list.status, 200);
    assert!(!list.text.contains("acme-secret-hook"));
    for path in [format!("/portal/webhooks/{id}"), format!("/portal/webhooks/{id}/deliveries")] {
        let reply = page(&daemon, &path, &globex);
        assert_eq!(reply.status, 404, "{path}: {}", reply.text);
        assert!(reply.text.contains("subscription not found"));
    }
    let csrf = csrf_of(&page(&daemon, "/portal/new", &globex).text);
    let pause = post_form(&daemon, &format!("/portal/webhooks/{id}/pause"), &globex, &[("csrf", &csrf)]);
    assert_eq!(pause.status, 404, "{}", pause.text);
    assert_eq!(daemon.subscription(ACME_KEY, id)["isPaused"], false);

    // A cookie whose tenant was edited no longer verifies.
    let forged = globex.replace(".globex.", ".acme.");
    assert_eq!(page(&daemon, "/portal/", &forged).status, 401);
}

#[test]
fn a_read_only_session_shows_no_change_buttons_and_the_server_refuses_changes() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(ACME_KEY, subscription_body("watched", "https://example.com/a"));
    let id = created["id"].as_str().unwrap();
    let cookie = session(&daemon, ACME_KEY, true);
    for path in
        ["/portal/".to_owned(), format!("/portal/webhooks/{id}"), format!("/portal/webhooks/{id}/deliveries")]
    {
        let reply = page(&daemon, &path, &cookie);
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.text.contains("read-only"), "{path}");
        assert!(!reply.text.contains("method=\"post\""), "{path} has a change form: {}", reply.text);
        assert!(!reply.text.contains("name=\"csrf\""), "{path}");
    }
    assert_eq!(page(&daemon, "/portal/new", &cookie).status, 403);
    // Even with the CSRF token a writable session of the same tenant would have, nothing changes.
    let writable = session(&daemon, ACME_KEY, false);
    let csrf = csrf_of(&page(&daemon, "/portal/new", &writable).text);
    for action in ["pause", "rotate", "delete", "enable"] {
        let reply =
            post_form(&daemon, &format!("/portal/webhooks/{id}/{action}"), &cookie, &[("csrf", &csrf)]);
        assert_eq!(reply.status, 403, "{action}: {}", reply.text);
        assert!(reply.text.contains("read-only"), "{}", reply.text);
    }
    let json = send(
        "POST",
        &daemon.url(&format!("/portal/webhooks/{id}/pause")),
        &[("Cookie", &cookie), ("Accept", "application/json")],
        Some(b""),
    );
    assert_eq!(json.status, 403);
    assert_eq!(json.error_code(), "read_only_session");
    let after = daemon.subscription(ACME_KEY, id);
    assert_eq!(after["isPaused"], false);
    assert_eq!(after["updatedAt"], created["updatedAt"]);
}

#[test]
fn every_change_needs_the_sessions_csrf_token() {
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(ACME_KEY, subscription_body("guarded", "https://example.com/a"));
    let id = created["id"].as_str().unwrap();
    let cookie = session(&daemon, ACME_KEY, false);
    let other = session(&daemon, ACME_KEY, false);
    let other_csrf = csrf_of(&page(&daemon, "/portal/new", &other).text);
    let pause = format!("/portal/webhooks/{id}/pause");
    for fields in
        [vec![], vec![("csrf", "")], vec![("csrf", "bm90LWEtdG9rZW4")], vec![("csrf", other_csrf.as_str())]]
    {
        let reply = post_form(&daemon, &pause, &cookie, &fields);
        assert_eq!(reply.status, 403, "{fields:?}: {}", reply.text);
        assert!(reply.text.contains("CSRF check failed"), "{}", reply.text);
    }
    assert_eq!(daemon.subscription(ACME_KEY, id)["isPaused"], false);
    let csrf = csrf_of(&page(&daemon, &format!("/portal/webhooks/{id}"), &cookie).text);
    let reply = post_form(&daemon, &pause, &cookie, &[("csrf", &csrf)]);
    assert_eq!(reply.status, 303, "{}", reply.text);
    assert_eq!(reply.header("location"), Some(format!("/portal/webhooks/{id}?done=paused").as_str()));
    assert_eq!(daemon.subscription(ACME_KEY, id)["isPaused"], true);
}

#[test]
fn every_portal_answer_has_a_strict_csp_and_no_inline_script() {
    let daemon = TestDaemon::start();
    let cookie = session(&daemon, ACME_KEY, false);
    for path in [
        "/portal/",
        "/portal/new",
        "/portal/assets/portal.js",
        "/portal/assets/portal.css",
        "/portal/nowhere",
    ] {
        let reply = page(&daemon, path, &cookie);
        let csp = reply.header("content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        for directive in
            ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]
        {
            assert!(csp.contains(directive), "{path}: {directive} missing from {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        if reply.header("content-type").is_some_and(|kind| kind.starts_with("text/html")) {
            assert_eq!(reply.text.matches("<script").count(), reply.text.matches("<script src=").count());
            assert!(!reply.text.contains(" style="), "{path} has an inline style");
            assert!(!reply.text.contains("onerror=") && !reply.text.contains("onclick="), "{path}");
        }
    }
    assert_eq!(page(&daemon, "/portal/nowhere", &cookie).status, 404);
    let wrong = send("DELETE", &daemon.url("/portal/"), &[("Cookie", &cookie)], None);
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"), "RFC 9110: a 405 names the methods");

    let framed = TestDaemon::with(Setup {
        extra: "[portal]\nframe_ancestors = [\"'self'\", \"https://app.example.com\"]\n".into(),
        ..Setup::default()
    });
    let reply = send("GET", &framed.url("/portal/"), &[], None);
    let csp = reply.header("content-security-policy").unwrap();
    assert!(csp.ends_with("frame-ancestors 'self' https://app.example.com"), "{csp}");
}

#[test]
fn tenant_strings_are_escaped_on_every_page() {
    let receiver = Receiver::answering(Answer::status(500));
    let daemon = TestDaemon::start();
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({
            "name": XSS, "url": receiver.url("/hook?q=<b>"), "events": ["message.received"],
            "headers": { "X-Note": XSS }, "maxRetries": 0,
        }),
    );
    let id = created["id"].as_str().unwrap();
    daemon.publish(
        ACME_KEY,
        "message.received",
        json!({ "text": XSS, "html": "</code></pre><script>alert(1)</script>" }),
    );
    receiver.wait_for(1, Duration::from_secs(10));
    wait_until("the delivery to fail", Duration::from_secs(10), || {
        daemon.subscription(ACME_KEY, id)["isActive"] == false
    });
    let deliveries = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None).json();
    let delivery_id = deliveries["data"][0]["id"].as_str().unwrap().to_owned();
    let cookie = session(&daemon, ACME_KEY, false);
    let pages = [
        "/portal/".to_owned(),
        format!("/portal/webhooks/{id}"),
        format!("/portal/webhooks/{id}/delete"),
        format!("/portal/webhooks/{id}/deliveries"),
        format!("/portal/webhooks/{id}/deliveries/{delivery_id}"),
    ];
    for path in &pages {
        let reply = page(&daemon, path, &cookie);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        assert!(!reply.text.contains("<img"), "{path} has a raw tenant tag: {}", reply.text);
        assert!(!reply.text.contains("<script>"), "{path}");
        assert!(!reply.text.contains("<b>"), "{path}");
    }
    assert!(page(&daemon, &pages[1], &cookie).text.contains(&escaped(XSS)));
    let delivery = page(&daemon, &pages[4], &cookie).text;
    assert!(delivery.contains("&lt;/code&gt;&lt;/pre&gt;&lt;script&gt;"), "{delivery}");
    assert!(delivery.contains("\n  &quot;data&quot;: {"), "payload is pretty-printed: {delivery}");
}

#[test]
fn forms_answer_the_apis_validation_errors() {
    let daemon = TestDaemon::start();
    let cookie = session(&daemon, ACME_KEY, false);
    let csrf = csrf_of(&page(&daemon, "/portal/new", &cookie).text);
    let cases: [(&[(&str, &str)], Value); 6] = [
        (
            &[("name", " "), ("url", "https://example.com/a"), ("events", "message.received")],
            subscription_body(" ", "https://example.com/a"),
        ),
        (
            &[("name", "a"), ("url", "ftp://example.com/a"), ("events", "message.received")],
            subscription_body("a", "ftp://example.com/a"),
        ),
        (
            &[("name", "a"), ("url", "https://example.com/a")],
            json!({ "name": "a", "url": "https://example.com/a", "events": [] }),
        ),
        (
            &[
                ("name", "a"),
                ("url", "https://example.com/a"),
                ("events", "message.received"),
                ("headers", "X-Atender-Event: x"),
            ],
            json!({ "name": "a", "url": "https://example.com/a", "events": ["message.received"], "headers": { "X-Atender-Event": "x" } }),
        ),
        (
            &[
                ("name", "a"),
                ("url", "https://example.com/a"),
                ("events", "message.received"),
                ("maxRetries", "21"),
            ],
            json!({ "name": "a", "url": "https://example.com/a", "events": ["message.received"], "maxRetries": 21 }),
        ),
        (
            &[
                ("name", "a"),
                ("url", "https://example.com/a"),
                ("events", "message.received"),
                ("rateLimitPerSecond", "0"),
            ],
            json!({ "name": "a", "url": "https://example.com/a", "events": ["message.received"], "rateLimitPerSecond": 0 }),
        ),
    ];
    for (fields, api_body) in cases {
        let api = daemon.call("POST", "/v1/webhooks", ACME_KEY, Some(api_body));
        assert_eq!(api.status, 400, "{}", api.text);
        let mut fields = fields.to_vec();
        fields.push(("csrf", &csrf));
        let reply = post_form(&daemon, "/portal/webhooks", &cookie, &fields);
        assert_eq!(reply.status, 400, "{fields:?}");
        assert!(
            reply.text.contains(&escaped(&api.error_message())),
            "{fields:?}: the page lacks the API's message {:?}: {}",
            api.error_message(),
            reply.text
        );
        // What was typed is kept.
        assert!(reply.text.contains("value=\"https://example.com/a\"") || reply.text.contains("ftp://"));
    }
    let not_a_number = post_form(
        &daemon,
        "/portal/webhooks",
        &cookie,
        &[
            ("csrf", &csrf),
            ("name", "a"),
            ("url", "https://example.com/a"),
            ("events", "message.received"),
            ("retryDelaySeconds", "soon"),
        ],
    );
    assert!(
        not_a_number.text.contains("retryDelaySeconds must be between 1 and 86400"),
        "{}",
        not_a_number.text
    );
    let bad_status =
        page(&daemon, "/portal/webhooks/wh_01ARZ3NDEKTSV4RRFFQ69G5FAV/deliveries?status=bogus", &cookie);
    assert_eq!(bad_status.status, 404, "an unknown subscription is looked up first, as in the API");
    let limit = daemon.call("GET", "/v1/webhooks", ACME_KEY, None).json();
    assert_eq!(limit["data"].as_array().unwrap().len(), 0, "nothing was created");
}

#[test]
fn create_edit_rotate_and_delete_through_forms() {
    let daemon = TestDaemon::start();
    let cookie = session(&daemon, ACME_KEY, false);
    let csrf = csrf_of(&page(&daemon, "/portal/new", &cookie).text);
    let created = post_form(
        &daemon,
        "/portal/webhooks",
        &cookie,
        &[
            ("csrf", &csrf),
            ("name", "first"),
            ("url", "https://example.com/a"),
            ("events", "message.sent"),
            ("events", "sla.breached"),
            ("headers", "X-Team: billing\n"),
            ("rateLimitPerSecond", "25"),
        ],
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let secret_at = created.text.find("whsec_").expect("the secret is shown once");
    let secret = &created.text[secret_at..secret_at + 50];
    let list = daemon.call("GET", "/v1/webhooks", ACME_KEY, None).json();
    let stored = &list["data"][0];
    let id = stored["id"].as_str().unwrap();
    assert_eq!(stored["events"], json!(["message.sent", "sla.breached"]));
    assert_eq!(stored["headers"], json!({ "X-Team": "billing" }));
    assert_eq!(stored["rateLimitPerSecond"], 25);
    let detail = page(&daemon, &format!("/portal/webhooks/{id}"), &cookie).text;
    assert!(detail.contains("25 attempts per second at most"), "{detail}");
    assert!(!detail.contains(secret), "the secret is never shown again");

    let edited = post_form(
        &daemon,
        &format!("/portal/webhooks/{id}"),
        &cookie,
        &[
            ("csrf", &csrf),
            ("name", "renamed"),
            ("url", "https://example.com/b"),
            ("events", "message.sent"),
            ("headers", ""),
            ("maxRetries", "3"),
            ("retryDelaySeconds", "60"),
        ],
    );
    assert_eq!(edited.status, 303, "{}", edited.text);
    let stored = daemon.subscription(ACME_KEY, id);
    assert_eq!(
        (stored["name"].as_str(), stored["url"].as_str()),
        (Some("renamed"), Some("https://example.com/b"))
    );
    assert_eq!((stored["maxRetries"].as_u64(), stored["retryDelaySeconds"].as_u64()), (Some(3), Some(60)));
    assert_eq!(stored["headers"], json!({}));
    assert_eq!(stored["rateLimitPerSecond"], Value::Null, "an emptied rate limit field removes the limit");

    let rotated = post_form(&daemon, &format!("/portal/webhooks/{id}/rotate"), &cookie, &[("csrf", &csrf)]);
    assert_eq!(rotated.status, 200);
    assert!(rotated.text.contains("whsec_") && !rotated.text.contains(secret));

    let confirm = page(&daemon, &format!("/portal/webhooks/{id}/delete"), &cookie);
    assert!(confirm.text.contains("Delete for good"));
    assert_eq!(daemon.call("GET", &format!("/v1/webhooks/{id}"), ACME_KEY, None).status, 200);
    let deleted = post_form(&daemon, &format!("/portal/webhooks/{id}/delete"), &cookie, &[("csrf", &csrf)]);
    assert_eq!(deleted.status, 303);
    assert_eq!(daemon.call("GET", &format!("/v1/webhooks/{id}"), ACME_KEY, None).status, 404);
}

// ---------------------------------------------------------------------------------------------
// The browser test.
// ---------------------------------------------------------------------------------------------

/// A Debian program the browser test needs; fails (never skips) naming the package when missing.
fn program(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    if !std::path::Path::new(&path).exists() {
        panic!(
            "{path} is missing: the portal's browser test needs Debian's chromium and chromium-driver \
             packages (apt-get install chromium chromium-driver; .ci/run installs them)"
        );
    }
    path
}

/// chromedriver on a free port, and a WebDriver session on headless Chromium.
async fn browser() -> (Running, fantoccini::Client) {
    let chromium = program("chromium");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut command = std::process::Command::new(program("chromedriver"));
    command.arg(format!("--port={port}"));
    let mut driver = Running::start(command);
    driver.wait_for_stdout("started successfully", Duration::from_secs(30));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => break client,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(%err, "WebDriver not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot start a Chromium session through chromedriver: {err}"),
        }
    };
    (driver, client)
}

/// Waits for an element with a deadline (never a fixed sleep).
async fn element(client: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    match client.wait().at_most(Duration::from_secs(15)).for_element(fantoccini::Locator::Css(css)).await {
        Ok(element) => element,
        Err(err) => {
            let page = client.source().await.unwrap_or_default();
            panic!(
                "no {css} within 15 s ({err}) on {:?}: {page}",
                client.current_url().await.map(|u| u.to_string())
            )
        }
    }
}

async fn click_button(client: &fantoccini::Client, label: &str) {
    let xpath = format!("//button[normalize-space()='{label}'] | //a[normalize-space()='{label}']");
    let button = client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(fantoccini::Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|err| panic!("no {label:?} button: {err}"));
    button.click().await.unwrap();
}

async fn text(client: &fantoccini::Client, css: &str) -> String {
    element(client, css).await.text().await.unwrap()
}

/// Polls (every 50 ms, for at most 15 s) until the element's text satisfies `expected`: after a
/// click the old page may still be there, or its element may go stale under us.
async fn wait_text(client: &fantoccini::Client, css: &str, expected: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        if let Ok(found) = client.find(fantoccini::Locator::Css(css)).await {
            if let Ok(text) = found.text().await {
                if expected(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(Instant::now() < deadline, "{css} never showed the expected text (last: {last:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the address contains `part`.
async fn wait_url(client: &fantoccini::Client, part: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !client.current_url().await.is_ok_and(|url| url.as_str().contains(part)) {
        assert!(Instant::now() < deadline, "the address never contained {part:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nothing a tenant wrote ran: no alert is open and the trace handler never set its global.
async fn assert_no_script_ran(client: &fantoccini::Client) {
    assert!(client.get_alert_text().await.is_err(), "an alert is open: tenant markup ran");
    let ran = client.execute("return window.xssRan === undefined", vec![]).await.unwrap();
    assert_eq!(ran, json!(true), "an onerror handler from tenant data ran");
}

/// Every visible form control has a label (screen readers and keyboard users).
async fn assert_controls_are_labelled(client: &fantoccini::Client) {
    let unlabelled = client
        .execute(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]\
             .filter(e => e.labels.length === 0).map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "unlabelled form controls");
}

async fn screenshot(client: &fantoccini::Client, name: &str) {
    // Taken for docs/portal.md when asked to (PORTAL_SCREENSHOTS=<dir>); the test itself does not
    // depend on them.
    if let Some(dir) = std::env::var_os("PORTAL_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

#[test]
fn a_tenant_uses_the_portal_in_a_real_browser() {
    let receiver = Receiver::answering(Answer::status(503));
    let daemon = TestDaemon::start();
    daemon.create_subscription(ACME_KEY, subscription_body(XSS, "https://example.com/a"));
    daemon.create_subscription(ACME_KEY, subscription_body(XSS_TRACE, "https://example.com/b"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let (_driver, client) = browser().await;
        let (link, _) = portal_link(&daemon, ACME_KEY, None);
        client.goto(&link).await.unwrap();
        // The meta refresh moves on to /portal/, leaving the token out of the address bar.
        element(&client, "table.list").await;
        assert_eq!(client.current_url().await.unwrap().path(), "/portal/");
        assert!(text(&client, "table.list").await.contains(XSS), "the name shows as text");
        assert_no_script_ran(&client).await;

        // Create a subscription that fails at once (no retries), and read its secret.
        click_button(&client, "New subscription").await;
        assert_controls_are_labelled(&client).await;
        element(&client, "#name").await.send_keys("browser-listener").await.unwrap();
        element(&client, "#url").await.send_keys(&receiver.url("/hook")).await.unwrap();
        element(&client, "#event-message-received").await.click().await.unwrap();
        let retries = element(&client, "#maxRetries").await;
        retries.clear().await.unwrap();
        retries.send_keys("0").await.unwrap();
        click_button(&client, "Create subscription").await;
        let secret = text(&client, "#secret").await;
        assert!(secret.starts_with("whsec_"), "{secret}");
        let copy = element(&client, "button.copy").await;
        assert!(copy.is_displayed().await.unwrap(), "the copy button's script loaded under the CSP");
        screenshot(&client, "portal-secret").await;
        let list = daemon.call("GET", "/v1/webhooks", ACME_KEY, None).json();
        let id = list["data"][0]["id"].as_str().unwrap().to_owned();

        // Pause and resume.
        click_button(&client, "Go to the subscription").await;
        click_button(&client, "Pause").await;
        wait_text(&client, "h1 .badge", |badge| badge == "paused").await;
        assert_eq!(daemon.subscription(ACME_KEY, &id)["isPaused"], true);
        click_button(&client, "Resume").await;
        wait_text(&client, "h1 .badge", |badge| badge == "active").await;

        // A failed delivery disables it; re-enable, then open the failed delivery and redeliver.
        daemon.publish(ACME_KEY, "message.received", json!({ "note": XSS_TRACE }));
        wait_until("the subscription to be disabled", Duration::from_secs(15), || {
            daemon.subscription(ACME_KEY, &id)["isActive"] == false
        });
        // Opened afresh (not refreshed), so the last action's notice is gone.
        client.goto(&daemon.url(&format!("/portal/webhooks/{id}"))).await.unwrap();
        wait_text(&client, "h1 .badge", |badge| badge == "disabled").await;
        assert!(text(&client, ".disabled-box").await.contains("HTTP 503"));
        screenshot(&client, "portal-subscription").await;
        receiver.set_default(Answer::status(200));
        click_button(&client, "Re-enable").await;
        wait_text(&client, "h1 .badge", |badge| badge == "active").await;
        click_button(&client, "Delivery log").await;
        let status = element(&client, "#status").await;
        status.select_by_value("failed").await.unwrap();
        click_button(&client, "Filter").await;
        wait_url(&client, "status=failed").await;
        element(&client, "table.list tbody tr td a").await.click().await.unwrap();
        assert!(text(&client, "pre.payload").await.contains("\"note\""));
        assert!(text(&client, "table.list").await.contains("503"), "the failed attempt is listed");
        assert_no_script_ran(&client).await;
        click_button(&client, "Redeliver").await;
        element(&client, ".notice").await;
        receiver.wait_for(2, Duration::from_secs(15));
        wait_until("the redelivery to succeed", Duration::from_secs(15), || {
            newest_delivery_status(&daemon, &id) == "succeeded"
        });
        client.refresh().await.unwrap();
        wait_text(&client, "h1 .status", |status| status == "succeeded").await;
        screenshot(&client, "portal-delivery").await;

        // Rotate, then delete with confirmation.
        client.goto(&daemon.url(&format!("/portal/webhooks/{id}"))).await.unwrap();
        click_button(&client, "Rotate secret").await;
        let rotated = text(&client, "#secret").await;
        assert!(rotated.starts_with("whsec_") && rotated != secret);
        click_button(&client, "Back to the subscription").await;
        click_button(&client, "Delete…").await;
        click_button(&client, "Delete for good").await;
        element(&client, "table.list").await;
        assert!(!text(&client, "table.list").await.contains("browser-listener"));
        assert_eq!(daemon.call("GET", &format!("/v1/webhooks/{id}"), ACME_KEY, None).status, 404);
        screenshot(&client, "portal-list").await;
        assert_no_script_ran(&client).await;

        // A read-only session shows no change button at all.
        let (read_only, _) = portal_link(&daemon, ACME_KEY, Some(json!({ "readOnly": true })));
        client.goto(&read_only).await.unwrap();
        element(&client, ".badge.readonly").await;
        let forms = client.find_all(fantoccini::Locator::Css("form[method=post]")).await.unwrap();
        assert!(forms.is_empty());
        element(&client, "table.list tbody tr td a").await.click().await.unwrap();
        element(&client, "dl.facts").await;
        let forms =
            client.find_all(fantoccini::Locator::Css("form[method=post], button.primary")).await.unwrap();
        assert!(forms.is_empty(), "a read-only subscription page has change buttons");

        // An expired link is refused with a clear page.
        let (short, expires_at) = portal_link(&daemon, ACME_KEY, Some(json!({ "ttlSeconds": 1 })));
        let expires = humantime::parse_rfc3339(&expires_at).unwrap();
        wait_until("the link's expiry", Duration::from_secs(5), || std::time::SystemTime::now() > expires);
        client.goto(&short).await.unwrap();
        wait_text(&client, "h1", |title| title == "Link expired").await;
        client.close().await.unwrap();
    });
}

/// The status of the subscription's newest delivery, through the API.
fn newest_delivery_status(daemon: &TestDaemon, id: &str) -> String {
    let log = daemon.call("GET", &format!("/v1/webhooks/{id}/deliveries"), ACME_KEY, None).json();
    log["data"][0]["status"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn the_portal_sends_test_events_and_recovers_failed_deliveries() {
    let daemon = TestDaemon::start();
    let receiver = Receiver::answering(Answer::status(500));
    let body = json!({ "name": "tested", "url": receiver.url("/hook"), "events": ["message.received"], "maxRetries": 0 });
    let id = daemon.create_subscription(ACME_KEY, body)["id"].as_str().unwrap().to_owned();
    daemon.publish(ACME_KEY, "message.received", json!({}));
    wait_until("the delivery failed", Duration::from_secs(15), || {
        newest_delivery_status(&daemon, &id) == "failed"
    });
    // The failure disabled the subscription; enabled again, a recovery sends at once.
    let reply =
        daemon.call("PATCH", &format!("/v1/webhooks/{id}"), ACME_KEY, Some(json!({ "isActive": true })));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let cookie = session(&daemon, ACME_KEY, false);
    let base = format!("/portal/webhooks/{id}");

    // The subscription page has the button; its answer is the outcome, nothing is stored.
    let subscription_page = page(&daemon, &base, &cookie);
    assert!(
        subscription_page.text.contains(&format!("action=\"{base}/test\"")),
        "{}",
        subscription_page.text
    );
    let csrf = csrf_of(&subscription_page.text);
    let failed = post_form(&daemon, &format!("{base}/test"), &cookie, &[("csrf", &csrf)]);
    assert_eq!(failed.status, 200, "{}", failed.text);
    assert!(failed.text.contains("did not accept") && failed.text.contains("HTTP 500"), "{}", failed.text);
    receiver.set_default(Answer::status(200));
    let accepted = post_form(&daemon, &format!("{base}/test"), &cookie, &[("csrf", &csrf)]);
    assert!(accepted.text.contains("Your endpoint accepted the test event."), "{}", accepted.text);
    assert_eq!(receiver.received().iter().filter(|r| r.json()["event"] == "webhook.test").count(), 2);
    assert_eq!(newest_delivery_status(&daemon, &id), "failed", "the test sends are not in the log");

    // The delivery log has the recovery form; a window it does not offer is refused.
    let log_page = page(&daemon, &format!("{base}/deliveries"), &cookie);
    assert!(log_page.text.contains(&format!("action=\"{base}/recover\"")), "{}", log_page.text);
    let refused = post_form(&daemon, &format!("{base}/recover"), &cookie, &[("csrf", &csrf), ("hours", "5")]);
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.text.contains("hours must be one of 1, 24, 72, 168"), "{}", refused.text);
    assert_eq!(newest_delivery_status(&daemon, &id), "failed");
    let recovered =
        post_form(&daemon, &format!("{base}/recover"), &cookie, &[("csrf", &csrf), ("hours", "24")]);
    assert_eq!(recovered.status, 200, "{}", recovered.text);
    assert!(
        recovered.text.contains("1 failed or expired delivery of the last 24 hours queued again"),
        "{}",
        recovered.text
    );
    wait_until("the recovered delivery succeeded", Duration::from_secs(15), || {
        newest_delivery_status(&daemon, &id) == "succeeded"
    });

    // A read-only session has neither control, and the server refuses both.
    let read_only = session(&daemon, ACME_KEY, true);
    assert!(!page(&daemon, &base, &read_only).text.contains("/test\""));
    assert!(!page(&daemon, &format!("{base}/deliveries"), &read_only).text.contains("/recover\""));
    for action in ["test", "recover"] {
        let reply =
            post_form(&daemon, &format!("{base}/{action}"), &read_only, &[("csrf", &csrf), ("hours", "24")]);
        assert_eq!(reply.status, 403, "{action}: {}", reply.text);
    }
}
