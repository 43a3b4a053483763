//! The delivery and subscription lifecycles, as pure functions of the model: every state change
//! of a [`Delivery`] and every disable, re-enable and outcome of a [`Subscription`] is written
//! here and nowhere else. No I/O and no clock: the instant is an argument. Storage turns a
//! delivery's (before, after) pair into its index moves (`store::embedded::index` for sled), so a transaction
//! never restates which keys a state needs.
//!
//! ```text
//!             publish (deliverable)            Succeeded
//!   (new) ───────────────────────────▶ pending ──────────▶ succeeded ─┐
//!     │                          ▲  │   │  ▲ Retry                     │
//!     │ publish (paused,         │  │   │  └───┘        GiveUp         │ redeliver
//!     │  disabled)       release │  │   └───────────────────▶ failed ──┤ (pending, or held
//!     ▼                          │  │ hold                             │  if not deliverable)
//!   held ◀───────────────────────┼──┘                                  │
//!     │  └───────────────────────┘                                     │
//!     │ expire (hold_retention after the hold)                         │
//!     └──────────────────────────────────────────────▶ expired ───────┘
//! ```

use crate::model::{
    Attempt, Delivery, DeliveryId, DeliveryState, EventId, LastDeliveryStatus, Millis, Subscription,
    MAX_LOGGED_ATTEMPTS,
};

/// What happens after an attempt, decided by the engine's retry policy
/// (`delivery::worker::decide`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptDecision {
    /// 2xx: the delivery is done.
    Succeeded,
    /// Failed; try again at `due` (Unix ms).
    Retry { due: Millis },
    /// Failed for good: the delivery is `failed` and the subscription is disabled with the reason.
    GiveUp { disable_reason: String },
}

impl Delivery {
    /// A new delivery of an event to a subscription: `pending` and due at `now` when the
    /// subscription is deliverable, `held` otherwise.
    pub fn new(
        id: DeliveryId,
        subscription: &Subscription,
        event_id: &EventId,
        event_type: &str,
        now: Millis,
    ) -> Delivery {
        let deliverable = subscription.is_deliverable();
        Delivery {
            id,
            tenant_id: subscription.tenant_id.clone(),
            subscription_id: subscription.id.clone(),
            event_id: event_id.clone(),
            event_type: event_type.to_owned(),
            state: if deliverable { DeliveryState::Pending } else { DeliveryState::Held },
            attempts: Vec::new(),
            attempts_in_round: 0,
            next_attempt_at: deliverable.then_some(now),
            created_at: now,
            finished_at: None,
        }
    }

    /// Applies an attempt's outcome. The attempt is always logged. A success or a give-up
    /// finishes the delivery at `now` (from `pending`, or from `held` when it was held while
    /// the attempt was under way: what happened, happened); a retry moves a `pending` delivery's
    /// due time and leaves a `held` one held. A finished delivery only gains the log entry.
    pub fn record_attempt(&mut self, attempt: Attempt, decision: &AttemptDecision, now: Millis) {
        push_attempt(self, attempt);
        if self.state.is_finished() {
            return;
        }
        match decision {
            AttemptDecision::Succeeded => self.finish(DeliveryState::Succeeded, now),
            AttemptDecision::GiveUp { .. } => self.finish(DeliveryState::Failed, now),
            AttemptDecision::Retry { due } if self.state == DeliveryState::Pending => {
                self.next_attempt_at = Some(*due)
            }
            AttemptDecision::Retry { .. } => {}
        }
    }

    /// `pending` → `held` (its subscription was paused or disabled). False when not pending.
    pub fn hold(&mut self) -> bool {
        if self.state != DeliveryState::Pending {
            return false;
        }
        self.state = DeliveryState::Held;
        self.next_attempt_at = None;
        true
    }

    /// `held` → `pending`, due at `now`, with a fresh round of retries. False when not held.
    pub fn release(&mut self, now: Millis) -> bool {
        if self.state != DeliveryState::Held {
            return false;
        }
        self.state = DeliveryState::Pending;
        self.attempts_in_round = 0;
        self.next_attempt_at = Some(now);
        true
    }

    /// `held` → `expired` at `now` (held for longer than `hold_retention`). False when not held.
    pub fn expire(&mut self, now: Millis) -> bool {
        if self.state != DeliveryState::Held {
            return false;
        }
        self.finish(DeliveryState::Expired, now);
        true
    }

    /// A finished delivery starts again with a fresh round of retries: `pending` due at `now`
    /// when `deliverable`, `held` otherwise. False (and unchanged) when it is not finished.
    pub fn redeliver(&mut self, deliverable: bool, now: Millis) -> bool {
        if !self.state.is_finished() {
            return false;
        }
        self.finished_at = None;
        self.attempts_in_round = 0;
        if deliverable {
            self.state = DeliveryState::Pending;
            self.next_attempt_at = Some(now);
        } else {
            self.state = DeliveryState::Held;
            self.next_attempt_at = None;
        }
        true
    }

    fn finish(&mut self, state: DeliveryState, now: Millis) {
        self.state = state;
        self.next_attempt_at = None;
        self.finished_at = Some(now);
    }
}

/// When a delivery stored as `after` has been held since — the instant `hold_retention` counts
/// from: kept from `before` while it stays held (`now` if the stored record had no instant),
/// `now` when it becomes held, none when it is not held. `before` is the stored state and
/// instant, `None` for a new delivery. (The sled backend keeps the instant as the `held` index
/// value, written only when the delivery becomes held; PostgreSQL keeps it in `held_since`.)
pub fn held_since(
    before: Option<(DeliveryState, Option<Millis>)>,
    after: DeliveryState,
    now: Millis,
) -> Option<Millis> {
    match (before, after) {
        (Some((DeliveryState::Held, since)), DeliveryState::Held) => since.or(Some(now)),
        (_, DeliveryState::Held) => Some(now),
        _ => None,
    }
}

/// Logs an attempt (the oldest go first beyond [`MAX_LOGGED_ATTEMPTS`]) and counts it in the
/// round that drives the backoff.
fn push_attempt(delivery: &mut Delivery, attempt: Attempt) {
    if delivery.attempts.len() >= MAX_LOGGED_ATTEMPTS {
        delivery.attempts.remove(0);
    }
    delivery.attempts.push(attempt);
    delivery.attempts_in_round += 1;
}

impl Subscription {
    /// Turns an active subscription off with `reason` at `at`. Returns false (and changes
    /// nothing) when it was already disabled, so a disable is counted once.
    pub fn disable(&mut self, reason: &str, at: Millis) -> bool {
        if !self.is_active {
            return false;
        }
        self.is_active = false;
        self.disable_reason = Some(reason.to_owned());
        self.disabled_at = Some(at);
        true
    }

    /// Pauses (`true`) or resumes (`false`) deliveries: a paused subscription's new and due
    /// deliveries are held, and resuming releases them (storage does, when the change makes the
    /// subscription deliverable again). Returns whether anything changed.
    pub fn set_paused(&mut self, paused: bool) -> bool {
        let changed = self.is_paused != paused;
        self.is_paused = paused;
        changed
    }

    /// Turns a disabled subscription back on: clears the reason and the failure counter (the
    /// guide: "fix your endpoint, then PATCH isActive: true"). False when it was active.
    pub fn enable(&mut self) -> bool {
        if self.is_active {
            return false;
        }
        self.is_active = true;
        self.disable_reason = None;
        self.disabled_at = None;
        self.consecutive_failures = 0;
        true
    }

    /// The subscription's side of an attempt: the `lastDelivery*` fields, the failure counter,
    /// and the disable when the delivery gave up — at the end of that attempt. Returns true
    /// when this outcome disabled it.
    pub fn apply_outcome(&mut self, attempt: &Attempt, decision: &AttemptDecision) -> bool {
        let succeeded = *decision == AttemptDecision::Succeeded;
        self.last_delivery_at = Some(attempt.at);
        self.last_delivery_status =
            Some(if succeeded { LastDeliveryStatus::Succeeded } else { LastDeliveryStatus::Failed });
        self.last_delivery_response_code = attempt.response_code;
        self.last_delivery_error = attempt.error.clone();
        self.consecutive_failures = if succeeded { 0 } else { self.consecutive_failures.saturating_add(1) };
        match decision {
            AttemptDecision::GiveUp { disable_reason } => {
                self.disable(disable_reason, attempt.at + Millis::from(attempt.duration_ms))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryState::*;

    fn subscription(active: bool, paused: bool) -> Subscription {
        let mut subscription = Subscription::new("t", "s", "https://a.example/", vec!["a.b".into()], 0);
        subscription.is_active = active;
        subscription.is_paused = paused;
        subscription
    }

    fn delivery(state: DeliveryState) -> Delivery {
        let mut delivery =
            Delivery::new(DeliveryId::new(1), &subscription(true, false), &EventId::new(1), "a.b", 10);
        delivery.state = state;
        delivery.next_attempt_at = (state == Pending).then_some(10);
        delivery.finished_at = state.is_finished().then_some(20);
        delivery.attempts_in_round = 3;
        delivery
    }

    fn attempt() -> Attempt {
        Attempt { at: 100, duration_ms: 7, response_code: Some(503), error: Some("HTTP 503".into()) }
    }

    #[test]
    fn hold_retention_counts_from_when_a_delivery_became_held() {
        for (before, after, expected) in [
            (None, Held, Some(50)),
            (None, Pending, None),
            (Some((Pending, None)), Held, Some(50)),
            (Some((Held, Some(10))), Held, Some(10)),
            (Some((Held, None)), Held, Some(50)),
            (Some((Held, Some(10))), Pending, None),
            (Some((Held, Some(10))), Expired, None),
        ] {
            assert_eq!(held_since(before, after, 50), expected, "{before:?} → {after:?}");
        }
    }

    #[test]
    fn pausing_and_resuming_report_a_change_once() {
        let mut paused = subscription(true, false);
        assert!(paused.set_paused(true));
        assert!(!paused.set_paused(true));
        assert!(!paused.is_deliverable());
        assert!(paused.set_paused(false));
        assert!(paused.is_deliverable());
    }

    #[test]
    fn a_new_delivery_is_pending_or_held_by_its_subscription() {
        for (active, paused, state, due) in
            [(true, false, Pending, Some(5)), (true, true, Held, None), (false, false, Held, None)]
        {
            let delivery =
                Delivery::new(DeliveryId::new(1), &subscription(active, paused), &EventId::new(1), "a.b", 5);
            assert_eq!((delivery.state, delivery.next_attempt_at), (state, due));
        }
    }

    /// (state before, decision) → (state, next attempt, finished at).
    #[test]
    fn attempt_outcomes_by_table() {
        let give_up = AttemptDecision::GiveUp { disable_reason: "r".into() };
        let cases = [
            (Pending, AttemptDecision::Succeeded, Succeeded, None, Some(200)),
            (Pending, AttemptDecision::Retry { due: 500 }, Pending, Some(500), None),
            (Pending, give_up.clone(), Failed, None, Some(200)),
            (Held, AttemptDecision::Succeeded, Succeeded, None, Some(200)),
            (Held, AttemptDecision::Retry { due: 500 }, Held, None, None),
            (Held, give_up.clone(), Failed, None, Some(200)),
            (Succeeded, give_up, Succeeded, None, Some(20)),
        ];
        for (before, decision, state, next, finished) in cases {
            let mut delivery = delivery(before);
            delivery.record_attempt(attempt(), &decision, 200);
            assert_eq!(
                (delivery.state, delivery.next_attempt_at, delivery.finished_at),
                (state, next, finished),
                "{before:?} + {decision:?}"
            );
            assert_eq!(delivery.attempts.len(), 1, "every attempt is logged");
            assert_eq!(delivery.attempts_in_round, 4);
        }
    }

    /// Each manual transition applies from exactly one set of states, and is a no-op otherwise.
    #[test]
    fn hold_release_expire_and_redeliver_by_table() {
        for state in DeliveryState::ALL {
            let mut held = delivery(state);
            assert_eq!(held.hold(), state == Pending, "hold from {state:?}");
            let mut released = delivery(state);
            assert_eq!(released.release(50), state == Held, "release from {state:?}");
            if state == Held {
                assert_eq!(
                    (released.state, released.next_attempt_at, released.attempts_in_round),
                    (Pending, Some(50), 0)
                );
            }
            let mut expired = delivery(state);
            assert_eq!(expired.expire(60), state == Held, "expire from {state:?}");
            if state == Held {
                assert_eq!((expired.state, expired.finished_at), (Expired, Some(60)));
            }
            for deliverable in [true, false] {
                let mut again = delivery(state);
                let changed = again.redeliver(deliverable, 70);
                assert_eq!(changed, state.is_finished(), "redeliver from {state:?}");
                if changed {
                    let expected = if deliverable { (Pending, Some(70)) } else { (Held, None) };
                    assert_eq!((again.state, again.next_attempt_at), expected);
                    assert_eq!((again.finished_at, again.attempts_in_round), (None, 0));
                }
            }
        }
    }

    #[test]
    fn a_subscription_is_disabled_once_at_the_end_of_the_attempt_and_enabled_afresh() {
        let mut subscription = subscription(true, false);
        let give_up = AttemptDecision::GiveUp { disable_reason: "gone".into() };
        assert!(subscription.apply_outcome(&attempt(), &give_up));
        assert_eq!(subscription.disabled_at, Some(107));
        assert_eq!(subscription.consecutive_failures, 1);
        assert!(!subscription.apply_outcome(&attempt(), &give_up), "already disabled: not again");
        assert_eq!(subscription.disabled_at, Some(107));
        assert_eq!(subscription.consecutive_failures, 2);
        assert!(subscription.enable());
        assert_eq!((subscription.disable_reason.clone(), subscription.consecutive_failures), (None, 0));
        assert!(!subscription.enable());
        let ok = Attempt { response_code: Some(200), error: None, ..attempt() };
        assert!(!subscription.apply_outcome(&ok, &AttemptDecision::Succeeded));
        assert_eq!(subscription.last_delivery_status, Some(LastDeliveryStatus::Succeeded));
    }
}
