//! The rate limit's state on sled: when each rate-limited subscription's last attempt was
//! granted its start (`rateLimitPerSecond`, see `DueWork::claim`). One node owns a sled store,
//! so the state lives in memory, under one mutex taken by every claim of a limited
//! subscription: the check and the stamp are one step, whichever worker claims.
//!
//! Not stored: after a restart no subscription has a previous grant, so each is treated as
//! granted at the instant the store was opened — the previous process's last grant was before
//! that — and its first attempt waits one interval from there. The guarantee holds across
//! restarts at the price of at most one interval (≤ 1 s) at start-up.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::{rate_next_start, Micros, SubscriptionId};

/// The last granted start of every rate-limited subscription claimed since the store opened.
pub(crate) struct RateLimits {
    /// When the store was opened (Unix µs): the previous grant of every subscription without one.
    opened_at: Micros,
    granted: Mutex<HashMap<SubscriptionId, Micros>>,
}

impl RateLimits {
    /// No grants yet, the store opened at `opened_at` (Unix µs).
    pub(crate) fn new(opened_at: Micros) -> RateLimits {
        RateLimits { opened_at, granted: Mutex::default() }
    }

    /// Grants `subscription` an attempt start at `now` (Unix µs) if `per_second` allows one:
    /// `Ok(now)`, stamped as its last grant; otherwise `Err(until)`, the instant the next start
    /// is allowed (nothing changes).
    pub(crate) fn grant(
        &self,
        subscription: &SubscriptionId,
        per_second: u32,
        now: Micros,
    ) -> Result<Micros, Micros> {
        let mut granted = self.granted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = granted.get(subscription).copied().unwrap_or(self.opened_at);
        let allowed = rate_next_start(Some(previous), per_second, now);
        if allowed > now {
            return Err(allowed);
        }
        granted.insert(subscription.clone(), now);
        Ok(now)
    }

    /// Drops a deleted subscription's state.
    pub(crate) fn forget(&self, subscription: &SubscriptionId) {
        self.granted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(subscription);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_one_interval_apart_and_a_refusal_names_the_next_instant() {
        let id = SubscriptionId::new(1);
        let other = SubscriptionId::new(1);
        let limits = RateLimits::new(0);
        // 5/s: one start every 202 ms (200 ms and the headroom).
        assert_eq!(limits.grant(&id, 5, 1_000_000), Ok(1_000_000));
        assert_eq!(limits.grant(&id, 5, 1_100_000), Err(1_202_000));
        assert_eq!(limits.grant(&other, 5, 1_100_000), Ok(1_100_000), "each subscription on its own");
        assert_eq!(limits.grant(&id, 5, 1_202_000), Ok(1_202_000));
        // A changed limit applies to the very next claim, counted from the last grant.
        assert_eq!(limits.grant(&id, 1, 1_500_000), Err(2_212_000));
        assert_eq!(limits.grant(&id, 100, 1_212_100), Ok(1_212_100));
        limits.forget(&id);
        assert_eq!(limits.grant(&id, 5, 1_220_000), Ok(1_220_000));
    }

    #[test]
    fn after_a_restart_the_first_start_waits_one_interval_from_the_opening() {
        let limits = RateLimits::new(5_000_000);
        let id = SubscriptionId::new(1);
        assert_eq!(limits.grant(&id, 2, 5_100_000), Err(5_505_000));
        assert_eq!(limits.grant(&id, 2, 5_505_000), Ok(5_505_000));
    }
}
