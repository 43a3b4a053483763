//! `POST /v1/webhooks/:id/test`: sends one signed `webhook.test` event to a subscription at once
//! and answers how it went, like GitHub's `ping` and Stripe's "send test webhook". The attempt
//! itself is the delivery engine's (through `probe::TestSend`, held in `ApiState`); this file
//! makes the event and shapes the answer.

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use crate::api::error::ApiError;
use crate::api::openapi::{NotFound, SubscriptionPath, TestInProgress};
use crate::api::request::{authorize, json_reply, Gate};
use crate::api::webhooks::find;
use crate::api::ApiState;
use crate::catalogue::{self, WEBHOOK_TEST};
use crate::config::Scope;
use crate::model::{now_millis, rfc3339, DeliveryId, EventId, Subscription};
use crate::probe::{TestMessage, TestOutcome, TestSendError};

/// The message of the 429 `test_in_progress` answer.
pub const BUSY_MESSAGE: &str =
    "a test send to this subscription is already under way; wait for its answer, then try again";

/// How a test send went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = TestSendStatus)]
enum TestStatus {
    /// The receiver answered 2xx within the timeout.
    Succeeded,
    /// Anything else: another status (3xx included: redirects are not followed), a timeout, a
    /// refused or failed connection.
    Failed,
}

/// The answer of a test send: the attempt's outcome, in the delivery log's words.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = TestSendResult, description = "The outcome of the test send's one attempt")]
struct TestResult {
    status: TestStatus,
    /// The receiver's HTTP status; null when no answer came (refused, timed out, unreachable).
    #[schema(required = true)]
    response_code: Option<u16>,
    /// Wall time of the attempt in milliseconds
    duration_ms: u32,
    /// Why it failed (`HTTP 500`, `timed out …`, `connection failed: …`, `refused: …`); null on
    /// success.
    #[schema(required = true)]
    error: Option<String>,
}

impl From<TestOutcome> for TestResult {
    fn from(outcome: TestOutcome) -> Self {
        TestResult {
            status: if outcome.succeeded { TestStatus::Succeeded } else { TestStatus::Failed },
            response_code: outcome.response_code,
            duration_ms: outcome.duration_ms,
            error: outcome.error,
        }
    }
}

/// `POST /v1/webhooks/:id/test`: answers 200 with the outcome whatever the receiver did.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    operation_id = "testWebhook",
    tag = "webhooks",
    summary = "Send a test event to a subscription now",
    description = "Sends one `webhook.test` event (body `{\"id\",\"event\",\"tenantId\",\"timestamp\",\"data\"}` \
        with `data` `{\"webhookId\",\"message\"}`) to the subscription at once, whatever its state (paused \
        and disabled too) and its event filter, signed like every delivery (`X-Atender-Signature` and the \
        Standard Webhooks headers, with every currently valid secret) and with its custom headers. The \
        answer is 200 with the attempt's outcome whatever the receiver answered. Nothing is stored: no \
        delivery log entry, no change to `consecutiveFailures` or `lastDelivery*`, no retry. The wait is \
        `delivery.timeout`, at most 10 s. At most one test send per subscription at a time (429 \
        `test_in_progress`). Takes no body.",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "The test send was made; `status` says how the receiver answered", body = TestResult),
        (status = 404, response = NotFound),
        (status = 429, response = TestInProgress),
    ),
)]
pub async fn test(state: ApiState, headers: HeaderMap, id: String) -> Result<Response, ApiError> {
    let config = state.config.current();
    let principal = authorize(&config, &headers, Scope::WebhooksWrite, Gate::Webhooks)?;
    let subscription = find(&state, &principal.tenant.id, &id)?;
    let outcome = send_test(&state, &subscription)?;
    Ok(json_reply(StatusCode::OK, &TestResult::from(outcome)))
}

/// Sends a fresh `webhook.test` event to `subscription` now and returns how it went (the
/// endpoint's and the portal's button's work). Blocks for the exchange, at most
/// `probe::MAX_TEST_TIMEOUT`. Errors: 429 `test_in_progress` while another test send to the
/// subscription is under way on this daemon.
pub(crate) fn send_test(state: &ApiState, subscription: &Subscription) -> Result<TestOutcome, ApiError> {
    let now = now_millis();
    let (event_id, delivery_id) = (EventId::new(now), DeliveryId::new(now));
    let body = catalogue::body(
        event_id.as_str(),
        WEBHOOK_TEST,
        &subscription.tenant_id,
        &rfc3339(now),
        &catalogue::test_data(subscription.id.as_str()),
    );
    let message = TestMessage { delivery_id: &delivery_id, event_type: WEBHOOK_TEST, body: &body };
    state.test_send.send(subscription, &message).map_err(|err| match err {
        TestSendError::Busy => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "test_in_progress", BUSY_MESSAGE),
    })
}
