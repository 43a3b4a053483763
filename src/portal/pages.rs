//! The portal's HTML, as maud templates compiled into the binary. maud escapes every `(value)`
//! it inserts (text and attributes alike), so tenant strings — names, URLs, header values,
//! payloads, error texts — can only ever appear as text; nothing here uses `PreEscaped` on
//! tenant data. No inline script or style: the page loads `/portal/assets/portal.css` and
//! `portal.js` (the copy button), which the CSP `'self'` allows.
//!
//! A read-only session gets the same pages without a single form that changes anything.

use maud::{html, Markup, DOCTYPE};

use crate::config::Config;
use crate::model::{rfc3339, Delivery, DeliveryState, Subscription};
use crate::portal::forms::{headers_text, SubscriptionFields};

/// What every page of a session needs.
pub struct Context<'a> {
    pub tenant_id: &'a str,
    pub read_only: bool,
    /// The session's CSRF token, put in every form that changes something.
    pub csrf: &'a str,
}

/// The page frame: title, stylesheet, script, header with the tenant and the session kind.
pub fn layout(context: Option<&Context>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Webhooks" }
                link rel="stylesheet" href="/portal/assets/portal.css";
                script src="/portal/assets/portal.js" defer {}
            }
            body {
                header class="top" {
                    @if context.is_some() {
                        a class="home" href="/portal/" { "Webhooks" }
                    } @else {
                        span class="home" { "Webhooks" }
                    }
                    @if let Some(context) = context {
                        span class="tenant" { "Tenant " strong { (context.tenant_id) } }
                        @if context.read_only {
                            span class="badge readonly" { "read-only" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A hidden field carrying the CSRF token.
fn csrf(context: &Context) -> Markup {
    html! { input type="hidden" name="csrf" value=(context.csrf); }
}

/// A one-button form posting to `action`.
fn action_button(context: &Context, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form class="inline" method="post" action=(action) {
            (csrf(context))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// The state badge of a subscription: active, paused or disabled.
pub fn state_badge(subscription: &Subscription) -> Markup {
    if !subscription.is_active {
        html! { span class="badge disabled" { "disabled" } }
    } else if subscription.is_paused {
        html! { span class="badge paused" { "paused" } }
    } else {
        html! { span class="badge active" { "active" } }
    }
}

fn when(at: Option<u64>) -> String {
    at.map(rfc3339).unwrap_or_else(|| "never".to_owned())
}

/// The last delivery of a subscription in a few words: when, status, response code.
fn last_delivery(subscription: &Subscription) -> Markup {
    html! {
        @match subscription.last_delivery_at {
            None => span class="muted" { "no delivery yet" },
            Some(at) => {
                time datetime=(rfc3339(at)) { (rfc3339(at)) } " "
                @if let Some(status) = subscription.last_delivery_status {
                    span class=(format!("status {}", status.as_str())) { (status.as_str()) }
                }
                @if let Some(code) = subscription.last_delivery_response_code {
                    " HTTP " (code)
                }
            }
        }
    }
}

/// `/portal/`: the tenant's subscriptions.
pub fn list(
    context: &Context,
    subscriptions: &[Subscription],
    next: Option<&str>,
    notice: Option<&str>,
) -> Markup {
    layout(
        Some(context),
        "Subscriptions",
        html! {
            div class="title-row" {
                h1 { "Subscriptions" }
                @if !context.read_only {
                    a class="button primary" href="/portal/new" { "New subscription" }
                }
            }
            @if let Some(notice) = notice { div class="notice" role="status" { (notice) } }
            @if subscriptions.is_empty() {
                p { "No subscriptions yet." }
            } @else {
                table class="list" {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "URL" } th scope="col" { "Events" }
                        th scope="col" { "State" } th scope="col" { "Consecutive failures" } th scope="col" { "Last delivery" }
                    } }
                    tbody {
                        @for subscription in subscriptions {
                            tr {
                                td { a href=(format!("/portal/webhooks/{}", subscription.id)) { (subscription.name) } }
                                td class="url" { (subscription.url) }
                                td { (subscription.events.join(", ")) }
                                td {
                                    (state_badge(subscription))
                                    @if let Some(reason) = &subscription.disable_reason {
                                        div class="reason" { (reason) }
                                    }
                                }
                                td class="number" { (subscription.consecutive_failures) }
                                td { (last_delivery(subscription)) }
                            }
                        }
                    }
                }
                @if let Some(next) = next {
                    p { a href=(format!("/portal/?cursor={next}")) { "Older subscriptions →" } }
                }
            }
        },
    )
}

/// The create and edit form (fields named as in the API). `action` is where it posts.
pub fn subscription_form(
    context: &Context,
    config: &Config,
    fields: &SubscriptionFields,
    action: &str,
    submit: &str,
    creating: bool,
) -> Markup {
    html! {
        form class="edit" method="post" action=(action) {
            (csrf(context))
            label for="name" { "Name" }
            input id="name" name="name" type="text" required maxlength="100" value=(fields.name);
            label for="url" { "URL" }
            input id="url" name="url" type="url" required value=(fields.url) placeholder="https://your-server.example.com/atender-webhooks";
            fieldset {
                legend { "Events" }
                // Every type a subscription may list (the operational ones too: a form without
                // them would drop them from a subscription on save), each with its description.
                @for event in config.subscribable_event_types() {
                    @let id = format!("event-{}", event.replace('.', "-"));
                    div class="check" {
                        input id=(id) type="checkbox" name="events" value=(event) checked[fields.events.iter().any(|listed| listed == event)];
                        label for=(id) {
                            (event)
                            @if let Some(description) = config.event_description(event) {
                                span class="hint" { " — " (description) }
                            }
                        }
                    }
                }
            }
            label for="headers" { "Custom headers" span class="hint" { " — one “Name: value” per line" } }
            textarea id="headers" name="headers" rows="3" { (fields.headers) }
            div class="pair" {
                div {
                    label for="maxRetries" { "Max retries (0–20)" }
                    input id="maxRetries" name="maxRetries" type="number" min="0" max="20" value=(fields.max_retries);
                }
                div {
                    label for="retryDelaySeconds" { "First retry delay, seconds (1–86400)" }
                    input id="retryDelaySeconds" name="retryDelaySeconds" type="number" min="1" max="86400" value=(fields.retry_delay_seconds);
                }
            }
            label for="rateLimitPerSecond" {
                "Rate limit, attempts per second (1–10000)" span class="hint" { " — empty: no limit" }
            }
            input id="rateLimitPerSecond" name="rateLimitPerSecond" type="number" min="1" max="10000" placeholder="no limit" value=(fields.rate_limit_per_second);
            @if creating {
                div class="check" {
                    input id="isPaused" type="checkbox" name="isPaused" value="true" checked[fields.is_paused];
                    label for="isPaused" { "Start paused" }
                }
            }
            button type="submit" class="primary" { (submit) }
        }
    }
}

/// An error box (role=alert, so screen readers announce it).
pub fn error_box(message: &str) -> Markup {
    html! { div class="error" role="alert" { (message) } }
}

/// `/portal/new`: the create form, with the previous attempt's error if any.
pub fn new_subscription(
    context: &Context,
    config: &Config,
    fields: &SubscriptionFields,
    error: Option<&str>,
) -> Markup {
    layout(
        Some(context),
        "New subscription",
        html! {
            h1 { "New subscription" }
            @if let Some(error) = error { (error_box(error)) }
            (subscription_form(context, config, fields, "/portal/webhooks", "Create subscription", true))
        },
    )
}

/// The secret of a new or rotated subscription, shown this once, with the copy button and the
/// guide's verification recipe.
fn secret_once(secret: &str) -> Markup {
    html! {
        section class="secret" aria-labelledby="secret-title" {
            h2 id="secret-title" { "Signing secret" }
            p { strong { "Store it now: it is shown only this once." } " If you lose it, rotate the secret." }
            div class="secret-row" {
                code id="secret" { (secret) }
                button type="button" class="copy" data-copy="secret" hidden { "Copy" }
            }
            h3 { "Verify signatures" }
            p {
                "Every delivery is signed with this secret. Compute the HMAC-SHA256 of the "
                strong { "raw request body" } " (not the parsed JSON), with the secret string — "
                code { "whsec_" } " prefix included — as the key, as lowercase hex. If it matches the "
                code { "X-Atender-Signature" } " header, the request is genuine. Compare in constant time."
            }
            pre { code { "import hashlib, hmac\n\n\
    def is_genuine(secret: str, body: bytes, signature: str) -> bool:\n    \
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()\n    \
    return hmac.compare_digest(expected, signature.strip())" } }
            p { "Deliveries also carry the Standard Webhooks headers (" code { "webhook-id" } ", "
                code { "webhook-timestamp" } ", " code { "webhook-signature" } "), so off-the-shelf verifiers work too." }
        }
    }
}

/// After create: the new subscription's secret, once.
pub fn created(context: &Context, subscription: &Subscription) -> Markup {
    layout(
        Some(context),
        "Subscription created",
        html! {
            h1 { "Subscription created: " (subscription.name) }
            (secret_once(subscription.secret.expose()))
            p { a class="button" href=(format!("/portal/webhooks/{}", subscription.id)) { "Go to the subscription" } }
        },
    )
}

/// After rotate: the new secret, once.
pub fn rotated(context: &Context, subscription: &Subscription, secret: &str) -> Markup {
    layout(
        Some(context),
        "Secret rotated",
        html! {
            h1 { "New secret for " (subscription.name) }
            p { "The old secret stopped working at once: every attempt from now on, retries included, is signed with this one." }
            (secret_once(secret))
            p { a class="button" href=(format!("/portal/webhooks/{}", subscription.id)) { "Back to the subscription" } }
        },
    )
}

/// `POST /portal/webhooks/:id/test`: how the test send went.
pub fn tested(context: &Context, subscription: &Subscription, outcome: &crate::probe::TestOutcome) -> Markup {
    let base = format!("/portal/webhooks/{}", subscription.id);
    layout(
        Some(context),
        "Test event sent",
        html! {
            h1 { "Test event to " (subscription.name) }
            @if outcome.succeeded {
                div class="notice" role="status" { "Your endpoint accepted the test event." }
            } @else {
                (error_box("Your endpoint did not accept the test event."))
            }
            dl class="facts" {
                dt { "URL" } dd class="url" { (subscription.url) }
                dt { "Response" } dd {
                    @match outcome.response_code {
                        Some(code) => { "HTTP " (code) }
                        None => { span class="muted" { "no answer" } }
                    }
                }
                dt { "Duration" } dd { (outcome.duration_ms) " ms" }
                @if let Some(error) = &outcome.error { dt { "Error" } dd class="error-text" { (error) } }
            }
            p { "A signed " code { "webhook.test" } " event was sent once: it is not retried, not in the delivery log, and does not change the subscription's failure count." }
            p { a class="button" href=(base) { "Back to the subscription" } }
        },
    )
}

/// `POST /portal/webhooks/:id/recover`: how many deliveries were queued again.
pub fn recovered(context: &Context, subscription: &Subscription, hours: &str, recovered: usize) -> Markup {
    let base = format!("/portal/webhooks/{}", subscription.id);
    let label = hours.parse().map(hours_label).unwrap_or_default();
    layout(
        Some(context),
        "Deliveries recovered",
        html! {
            h1 { "Recovered deliveries of " (subscription.name) }
            div class="notice" role="status" {
                (recovered) " failed or expired " (if recovered == 1 { "delivery" } else { "deliveries" })
                " of the last " (label) " queued again"
                @if !subscription.is_deliverable() && recovered > 0 { ", held until the subscription is resumed or re-enabled" }
                "."
            }
            p { "Deliveries already pending, held or succeeded were left as they were." }
            p { a class="button" href=(format!("{base}/deliveries")) { "Delivery log" } }
        },
    )
}

/// "hour", "24 hours", "7 days": a recovery window in words.
fn hours_label(hours: u64) -> String {
    match hours {
        1 => "hour".to_owned(),
        hours if hours % 24 == 0 && hours > 72 => format!("{} days", hours / 24),
        hours => format!("{hours} hours"),
    }
}

/// Messages shown after a change (`?done=…`), by their fixed key.
pub fn done_message(key: &str) -> Option<&'static str> {
    Some(match key {
        "saved" => "Changes saved.",
        "paused" => "Paused: nothing is sent; deliveries are kept as held until you resume.",
        "resumed" => "Resumed: held deliveries go out now.",
        "enabled" => "Re-enabled: failures reset, held deliveries go out now.",
        "redelivered" => "Queued for delivery again.",
        "redelivered-held" => {
            "Queued again, and held: it goes out when the subscription is resumed or re-enabled."
        }
        "deleted" => "Subscription deleted.",
        _ => return None,
    })
}

/// `/portal/webhooks/:id`: state, charts, edit form and actions.
pub fn subscription(
    context: &Context,
    config: &Config,
    subscription: &Subscription,
    fields: &SubscriptionFields,
    charts: (Markup, Markup),
    notice: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let base = format!("/portal/webhooks/{}", subscription.id);
    layout(
        Some(context),
        &subscription.name,
        html! {
            div class="title-row" {
                h1 { (subscription.name) " " (state_badge(subscription)) }
            }
            @if let Some(notice) = notice { div class="notice" role="status" { (notice) } }
            @if let Some(error) = error { (error_box(error)) }
            @if let Some(reason) = &subscription.disable_reason {
                div class="disabled-box" {
                    p { strong { "Disabled" } @if let Some(at) = subscription.disabled_at { " since " (rfc3339(at)) } ": " span class="reason" { (reason) } }
                    p { "Fix your endpoint, then re-enable the subscription: failures are reset and held deliveries go out." }
                    @if !context.read_only {
                        (action_button(context, &format!("{base}/enable"), "Re-enable", "primary"))
                    }
                }
            }
            dl class="facts" {
                dt { "URL" } dd class="url" { (subscription.url) }
                dt { "Events" } dd { (subscription.events.join(", ")) }
                dt { "Consecutive failures" } dd { (subscription.consecutive_failures) }
                dt { "Last delivery" } dd { (last_delivery(subscription)) }
                @if let Some(error) = &subscription.last_delivery_error {
                    dt { "Last error" } dd class="error-text" { (error) }
                }
                dt { "Retries" } dd { (subscription.max_retries) " retries, first after " (subscription.retry_delay_seconds) " s, doubling" }
                dt { "Rate limit" } dd {
                    @match subscription.rate_limit_per_second {
                        Some(limit) => { (limit) " attempts per second at most" }
                        None => { span class="muted" { "none" } }
                    }
                }
                dt { "Custom headers" } dd {
                    @if subscription.headers.is_empty() { span class="muted" { "none" } }
                    @for (name, value) in &subscription.headers { div { code { (name) ": " (value) } } }
                }
                dt { "Created" } dd { (rfc3339(subscription.created_at)) }
                dt { "Id" } dd { code { (subscription.id) } }
            }
            div class="actions" {
                a class="button" href=(format!("{base}/deliveries")) { "Delivery log" }
                @if !context.read_only {
                    @if subscription.is_active {
                        @if subscription.is_paused {
                            (action_button(context, &format!("{base}/resume"), "Resume", ""))
                        } @else {
                            (action_button(context, &format!("{base}/pause"), "Pause", ""))
                        }
                    }
                    (action_button(context, &format!("{base}/rotate"), "Rotate secret", ""))
                    (action_button(context, &format!("{base}/test"), "Send test event", ""))
                    a class="button danger" href=(format!("{base}/delete")) { "Delete…" }
                }
            }
            section aria-labelledby="charts-title" {
                h2 id="charts-title" { "Last 24 hours" }
                h3 { "Deliveries per hour" }
                (charts.0)
                p class="legend" {
                    span class="key ok" {} "succeeded " span class="key bad" {} "failed "
                    span class="key wait" {} "pending or held " span class="key gone" {} "expired"
                }
                h3 { "Attempt latency (p50, p99)" }
                (charts.1)
                p class="legend" { span class="key p50" {} "p50 " span class="key p99" {} "p99" }
            }
            @if !context.read_only {
                section aria-labelledby="edit-title" {
                    h2 id="edit-title" { "Edit" }
                    (subscription_form(context, config, fields, &base, "Save changes", false))
                }
            }
        },
    )
}

/// The fields of the edit form for a stored subscription.
pub fn fields_of(subscription: &Subscription) -> SubscriptionFields {
    SubscriptionFields {
        name: subscription.name.clone(),
        url: subscription.url.clone(),
        events: subscription.events.clone(),
        headers: headers_text(&subscription.headers),
        max_retries: subscription.max_retries.to_string(),
        retry_delay_seconds: subscription.retry_delay_seconds.to_string(),
        rate_limit_per_second: subscription
            .rate_limit_per_second
            .map(|limit| limit.to_string())
            .unwrap_or_default(),
        is_paused: subscription.is_paused,
    }
}

/// `/portal/webhooks/:id/delete`: the confirmation.
pub fn confirm_delete(context: &Context, subscription: &Subscription) -> Markup {
    layout(
        Some(context),
        "Delete subscription",
        html! {
            h1 { "Delete " (subscription.name) "?" }
            p { "The subscription is removed for good and its queued deliveries are dropped. This cannot be undone." }
            div class="actions" {
                (action_button(context, &format!("/portal/webhooks/{}/delete", subscription.id), "Delete for good", "danger"))
                a class="button" href=(format!("/portal/webhooks/{}", subscription.id)) { "Cancel" }
            }
        },
    )
}

fn status_badge(state: DeliveryState) -> Markup {
    html! { span class=(format!("status {}", state.as_str())) { (state.as_str()) } }
}

/// `/portal/webhooks/:id/deliveries`: the log, filterable by status.
pub fn deliveries(
    context: &Context,
    subscription: &Subscription,
    status: Option<DeliveryState>,
    page: &[Delivery],
    next: Option<&str>,
    notice: Option<&str>,
) -> Markup {
    let base = format!("/portal/webhooks/{}", subscription.id);
    layout(
        Some(context),
        &format!("Deliveries of {}", subscription.name),
        html! {
            p { a href=(base) { "← " (subscription.name) } }
            h1 { "Delivery log" }
            @if let Some(notice) = notice { div class="notice" role="status" { (notice) } }
            form class="filter" method="get" action=(format!("{base}/deliveries")) {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" selected[status.is_none()] { "all" }
                    @for state in DeliveryState::ALL {
                        option value=(state.as_str()) selected[status == Some(state)] { (state.as_str()) }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if !context.read_only {
                form class="filter" method="post" action=(format!("{base}/recover")) {
                    (csrf(context))
                    label for="hours" { "Send again every failed or expired delivery of the last" }
                    select id="hours" name="hours" {
                        @for hours in crate::portal::data::RECOVER_HOURS {
                            option value=(hours) selected[hours == 24] { (hours_label(hours)) }
                        }
                    }
                    button type="submit" { "Recover" }
                }
            }
            @if page.is_empty() {
                p { "No deliveries." }
            } @else {
                table class="list" {
                    thead { tr {
                        th scope="col" { "Created" } th scope="col" { "Event" } th scope="col" { "Status" }
                        th scope="col" { "Attempts" } th scope="col" { "Last response" } th scope="col" { "Next attempt" }
                    } }
                    tbody {
                        @for delivery in page {
                            tr {
                                td { a href=(format!("{base}/deliveries/{}", delivery.id)) { (rfc3339(delivery.created_at)) } }
                                td { (delivery.event_type) }
                                td { (status_badge(delivery.state)) }
                                td class="number" { (delivery.attempts.len()) }
                                td {
                                    @if let Some(attempt) = delivery.attempts.last() {
                                        @if let Some(code) = attempt.response_code { "HTTP " (code) " " }
                                        @if let Some(error) = &attempt.error { span class="error-text" { (error) } }
                                    }
                                }
                                td { (when(delivery.next_attempt_at)) }
                            }
                        }
                    }
                }
                @if let Some(next) = next {
                    @let filter = status.map(|state| format!("&status={}", state.as_str())).unwrap_or_default();
                    p { a href=(format!("{base}/deliveries?cursor={next}{filter}")) { "Older deliveries →" } }
                }
            }
        },
    )
}

/// `/portal/webhooks/:id/deliveries/:deliveryId`: attempts and the payload.
pub fn delivery(
    context: &Context,
    subscription: &Subscription,
    delivery: &Delivery,
    payload: Option<&str>,
    notice: Option<&str>,
) -> Markup {
    let base = format!("/portal/webhooks/{}", subscription.id);
    layout(
        Some(context),
        &format!("Delivery {}", delivery.id),
        html! {
            p { a href=(format!("{base}/deliveries")) { "← delivery log of " (subscription.name) } }
            h1 { "Delivery " code { (delivery.id) } " " (status_badge(delivery.state)) }
            @if let Some(notice) = notice { div class="notice" role="status" { (notice) } }
            dl class="facts" {
                dt { "Event" } dd { (delivery.event_type) " " code { (delivery.event_id) } }
                dt { "Created" } dd { (rfc3339(delivery.created_at)) }
                dt { "Next attempt" } dd { (when(delivery.next_attempt_at)) }
            }
            @if !context.read_only {
                div class="actions" {
                    (action_button(context, &format!("{base}/deliveries/{}/redeliver", delivery.id), "Redeliver", "primary"))
                }
            }
            h2 { "Attempts" }
            @if delivery.attempts.is_empty() {
                p { "No attempt yet." }
            } @else {
                table class="list" {
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Duration" } th scope="col" { "Response code" } th scope="col" { "Error" } } }
                    tbody {
                        @for attempt in &delivery.attempts {
                            tr {
                                td { (rfc3339(attempt.at)) }
                                td class="number" { (attempt.duration_ms) " ms" }
                                td { @if let Some(code) = attempt.response_code { (code) } @else { span class="muted" { "none" } } }
                                td class="error-text" { @if let Some(error) = &attempt.error { (error) } }
                            }
                        }
                    }
                }
            }
            h2 { "Payload" }
            @match payload {
                Some(payload) => pre class="payload" { code { (payload) } },
                None => p class="muted" { "The event was purged after the retention period." },
            }
        },
    )
}

/// A page that only says what went wrong (status pages: expired link, not found, refused).
pub fn message(context: Option<&Context>, title: &str, text: &str) -> Markup {
    layout(
        context,
        title,
        html! {
            h1 { (title) }
            (error_box(text))
            @if context.is_some() { p { a href="/portal/" { "Back to the subscriptions" } } }
        },
    )
}

/// `/portal/enter/…`: sets the cookie, then moves to `/portal/` by a same-site meta refresh (no
/// script) so the secret link leaves the address bar, and a `SameSite=Strict` cookie is sent
/// even when the link was opened from another site.
pub fn enter() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="referrer" content="no-referrer";
                meta http-equiv="refresh" content="0;url=/portal/";
                title { "Opening the portal · Webhooks" }
                link rel="stylesheet" href="/portal/assets/portal.css";
            }
            body { main { p { "Opening the portal… " a href="/portal/" { "Continue" } } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attempt, Delivery};

    const XSS: &str = "<img src=x onerror=alert(1)>";

    #[test]
    fn the_form_lists_every_subscribable_type_with_its_description() {
        let text = format!(
            "[events]\ntypes = [\"invoice.paid\"]\n[events.descriptions]\n\"invoice.paid\" = \"{XSS}\""
        );
        let config = Config::parse(&text).unwrap();
        let subscription =
            Subscription::new("acme", "hook", "https://x.example/", vec!["webhook.disabled".into()], 0);
        let context = Context { tenant_id: "acme", read_only: false, csrf: "token" };
        let form =
            subscription_form(&context, &config, &fields_of(&subscription), "/portal/x", "Save", false)
                .into_string();
        assert!(form.contains(r#"value="invoice.paid">"#), "{form}");
        // An operational type a subscription lists stays checked, so saving the form keeps it.
        assert!(form.contains(r#"value="webhook.disabled" checked"#), "{form}");
        for known in crate::catalogue::OPERATIONAL {
            assert!(form.contains(&format!(r#"value="{}""#, known.name)), "{}", known.name);
        }
        assert!(form.contains("One of your webhooks was disabled"), "{form}");
        assert!(!form.contains("<img") && form.contains("&lt;img"), "{form}");
    }

    /// Error texts and reasons cannot be set by a tenant through the API, so the HTTP tests
    /// cannot reach them: every tenant-visible string is checked here instead.
    #[test]
    fn every_tenant_string_is_escaped_on_the_subscription_and_delivery_pages() {
        let config = Config::parse("").unwrap();
        let mut subscription =
            Subscription::new("acme", XSS, format!("https://x.example/{XSS}"), vec![XSS.into()], 0);
        subscription.headers = vec![(XSS.into(), XSS.into())];
        subscription.is_active = false;
        subscription.disable_reason = Some(XSS.into());
        subscription.last_delivery_at = Some(1);
        subscription.last_delivery_error = Some(XSS.into());
        let context = Context { tenant_id: "acme", read_only: false, csrf: XSS };
        let fields = fields_of(&subscription);
        let pages = [
            subscription_page(&context, &config, &subscription, &fields),
            list(&context, std::slice::from_ref(&subscription), None, Some(XSS)).into_string(),
            message(Some(&context), XSS, XSS).into_string(),
        ];
        for page in &pages {
            assert!(!page.contains("<img"), "{page}");
            assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{page}");
        }
        let delivery = Delivery {
            id: crate::model::DeliveryId::new(1),
            tenant_id: "acme".into(),
            subscription_id: subscription.id.clone(),
            event_id: crate::model::EventId::new(1),
            event_type: XSS.into(),
            state: DeliveryState::Failed,
            attempts: vec![Attempt {
                at: 1,
                duration_ms: 3,
                response_code: Some(500),
                error: Some(XSS.into()),
            }],
            attempts_in_round: 1,
            next_attempt_at: None,
            created_at: 1,
            finished_at: Some(2),
        };
        let page = super::delivery(&context, &subscription, &delivery, Some(XSS), None).into_string();
        assert!(!page.contains("<img"), "{page}");
        let log = deliveries(&context, &subscription, None, &[delivery], Some(XSS), None).into_string();
        assert!(!log.contains("<img"), "{log}");
    }

    fn subscription_page(
        context: &Context,
        config: &Config,
        subscription: &Subscription,
        fields: &SubscriptionFields,
    ) -> String {
        super::subscription(context, config, subscription, fields, (html! {}, html! {}), Some(XSS), Some(XSS))
            .into_string()
    }
}
