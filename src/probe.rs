//! Test sends (`POST /v1/webhooks/{id}/test`): the interface between the API, which asks for
//! one, and the delivery engine, which makes it. The API must not know the engine and the
//! engine must not know the API, so the request crosses this trait: `delivery::test_send`
//! implements [`TestSend`] with the engine's own HTTP agent and signing code, and the daemon
//! hands it to the API as an `Arc<dyn TestSend>`.
//!
//! A test send is one signed attempt made at once, like GitHub's `ping` and Stripe's "send
//! test webhook": nothing is stored, retried or counted. [`OnePerSubscription`] keeps it to
//! one in flight per subscription.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::model::{DeliveryId, Subscription, SubscriptionId};

/// The longest a test send waits for the receiver: `delivery.timeout`, but at most this. The
/// API answers every request that touches storage within 12 s (`api::off_workers`); a test
/// send bounded by 10 s keeps its answer (not a 503) within that deadline even when
/// `delivery.timeout` is longer (it may be up to 5 min).
pub const MAX_TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one test send carries, made by the caller: the body is the ordinary delivery body
/// layout (`catalogue::body`) of a `webhook.test` event.
#[derive(Debug, Clone, Copy)]
pub struct TestMessage<'a> {
    /// Sent as `webhook-id` and `X-Atender-Delivery`, and signed into `webhook-signature`.
    pub delivery_id: &'a DeliveryId,
    /// Sent as `X-Atender-Event`.
    pub event_type: &'a str,
    /// The exact bytes POSTed and signed.
    pub body: &'a [u8],
}

/// How a test send went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// True when the receiver answered 2xx within the timeout.
    pub succeeded: bool,
    /// The receiver's HTTP status; `None` when no answer came (refused, timed out, no route).
    pub response_code: Option<u16>,
    /// Wall time of the attempt in milliseconds, reading the response included.
    pub duration_ms: u32,
    /// Why it failed, in the delivery log's words (`HTTP 500`, `timed out …`, `refused: …`);
    /// `None` on success.
    pub error: Option<String>,
}

/// Why a test send was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TestSendError {
    /// Another test send to the same subscription is still under way on this daemon.
    #[error("a test send to this subscription is already under way")]
    Busy,
}

/// Makes test sends (implemented by `delivery::test_send::TestSender`).
pub trait TestSend: Send + Sync {
    /// POSTs `message` to `subscription`'s URL at once, whatever its state (paused and disabled
    /// too) and event filter: signed like a real attempt (`X-Atender-Signature` and the
    /// Standard Webhooks headers with every currently valid secret), with its custom headers,
    /// through the engine's agent and connect-time address guard, bounded by
    /// `min(delivery.timeout, MAX_TEST_TIMEOUT)`. Blocks for the whole exchange: call it from a
    /// thread that may block. Stores nothing and never retries.
    ///
    /// Errors: [`TestSendError::Busy`] at once when a test send to the same subscription is
    /// under way on this daemon.
    fn send(
        &self,
        subscription: &Subscription,
        message: &TestMessage<'_>,
    ) -> Result<TestOutcome, TestSendError>;
}

/// At most one piece of work per subscription at a time: [`OnePerSubscription::begin`] takes
/// the subscription's slot, and the slot is free again when the returned guard drops (a panic
/// included).
#[derive(Debug, Default)]
pub struct OnePerSubscription {
    in_flight: Mutex<HashSet<SubscriptionId>>,
}

impl OnePerSubscription {
    /// The slot of `id`, or `None` while another holder has it.
    pub fn begin(&self, id: &SubscriptionId) -> Option<Slot<'_>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        in_flight.insert(id.clone()).then(|| Slot { owner: self, id: id.clone() })
    }
}

/// A subscription's slot in [`OnePerSubscription`], held until dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    owner: &'a OnePerSubscription,
    id: SubscriptionId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.owner.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        in_flight.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_subscription_until_it_drops() {
        let slots = OnePerSubscription::default();
        let (a, b) = (SubscriptionId::new(1), SubscriptionId::new(2));
        let first = slots.begin(&a).expect("free");
        assert!(slots.begin(&a).is_none(), "taken while the first holds it");
        let other = slots.begin(&b).expect("another subscription is independent");
        drop(first);
        assert!(slots.begin(&a).is_some(), "free again once dropped");
        drop(other);
    }
}
