//! The engine's side of a test send (`probe::TestSend`): one attempt through the same code a
//! real attempt uses — `worker::delivery_headers` to sign, `http::post_within` on the engine's
//! shared agent (pool, address guard, no proxy, no redirects) — and nothing else: no claim, no
//! record, no retry, no metrics of deliveries.

use std::time::Duration;

use crate::delivery::http::{post_within, AttemptResult};
use crate::delivery::worker::delivery_headers;
use crate::model::{now_millis, Subscription};
use crate::probe::{OnePerSubscription, TestMessage, TestOutcome, TestSend, TestSendError, MAX_TEST_TIMEOUT};

/// Makes test sends with the engine's agent; at most one per subscription at a time.
pub struct TestSender {
    agent: ureq::Agent,
    timeout: Duration,
    in_flight: OnePerSubscription,
}

impl TestSender {
    /// A sender on `agent` (the engine's), waiting at most `delivery_timeout` capped by
    /// [`MAX_TEST_TIMEOUT`] for each receiver.
    pub fn new(agent: ureq::Agent, delivery_timeout: Duration) -> TestSender {
        TestSender {
            agent,
            timeout: delivery_timeout.min(MAX_TEST_TIMEOUT),
            in_flight: OnePerSubscription::default(),
        }
    }
}

impl TestSend for TestSender {
    fn send(
        &self,
        subscription: &Subscription,
        message: &TestMessage<'_>,
    ) -> Result<TestOutcome, TestSendError> {
        let _slot = self.in_flight.begin(&subscription.id).ok_or(TestSendError::Busy)?;
        let headers = delivery_headers(
            subscription,
            message.delivery_id,
            message.event_type,
            message.body,
            now_millis(),
        );
        let outcome = post_within(&self.agent, &subscription.url, &headers, message.body, self.timeout);
        tracing::info!(
            subscription = %subscription.id,
            tenant = %subscription.tenant_id,
            delivery = %message.delivery_id,
            status = ?outcome.status,
            error = outcome.error.as_deref().unwrap_or(""),
            "test send made"
        );
        Ok(TestOutcome {
            succeeded: outcome.result == AttemptResult::Success,
            response_code: outcome.status,
            duration_ms: outcome.duration.as_millis().min(u128::from(u32::MAX)) as u32,
            error: outcome.error,
        })
    }
}
