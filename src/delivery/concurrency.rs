//! Adaptive per-subscription concurrency: how many attempts a trusted subscription may have in
//! flight at once, learned from how its endpoint answers.
//!
//! The rule is TCP's congestion avoidance (additive increase, multiplicative decrease; RFC 5681
//! §3.1), as Netflix's `concurrency-limits` library applies it to request concurrency (its
//! `AIMDLimit`, with the latency check of its `Gradient2Limit`):
//!
//! - a subscription starts at `initial_in_flight_per_subscription` (4 by default);
//! - 2xx answers in good time while the window is at least half used grow it: a full window
//!   of them adds one slot (one per round trip, like TCP);
//! - a failed attempt (an error status, a time-out, a refused connection) halves the limit at
//!   once, and rising latency (the recent mean more than [`LATENCY_TOLERANCE`] times the
//!   endpoint's best plus [`LATENCY_SLACK`]) cuts it by a fifth, but not below where it started
//!   (`concurrency-limits`' `minLimit`): an endpoint that answers 2xx, only slower, keeps the
//!   parallelism every endpoint starts with, so one that slows from 0.3 s to 1 s still gets
//!   several attempts a second rather than one. Attempts started before the last cut cannot cut
//!   it again, so one burst of failures of a full window is one cut, not one per attempt (TCP's
//!   one reduction per window of data);
//! - the limit stays within `1..=max_in_flight_per_subscription`, the hard cap.
//!
//! So a fast healthy endpoint earns parallel attempts up to the cap within a few hundred
//! answers, while a slow or failing one falls back to a few at once. A failing endpoint is
//! moreover *suspect* and gets one attempt at a time from the scheduler's suspect budget,
//! whatever its limit; the limit it kept (halved) applies again after its next 2xx.
//!
//! Pure: instants and latencies are passed in, so the rules are tested by table.

use std::time::Duration;

use crate::model::Micros;

/// The recent latency may reach this multiple of the endpoint's best before it counts as
/// rising (Netflix `Gradient2Limit`'s default tolerance is 1.5; 2 leaves room for the jitter of
/// a shared host).
pub const LATENCY_TOLERANCE: f64 = 2.0;

/// Latency rises only by more than this above the endpoint's best, so sub-millisecond jitter of
/// a fast endpoint on loopback or in one data centre never cuts its limit.
pub const LATENCY_SLACK: Duration = Duration::from_millis(5);

/// What a failed attempt leaves of the limit (TCP's halving).
const FAILURE_DECREASE: f64 = 0.5;

/// What rising latency leaves of the limit (gentler than a failure: the endpoint still answers).
const LATENCY_DECREASE: f64 = 0.8;

/// Weight of the newest latency in the recent mean (an exponentially weighted moving average
/// over about the last ten answers).
const RECENT_WEIGHT: f64 = 0.1;

/// The endpoint's best latency is the least seen over the last one to two of these periods, so
/// it follows an endpoint that became slower for good (a deploy, a move) within a minute.
const BEST_PERIOD: Micros = 30_000_000;

/// One subscription's adaptive limit.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    /// The current limit, in attempts.
    limit: usize,
    /// Where it started: rising latency alone never cuts it below this (failures may).
    floor: usize,
    /// Successes counted towards the next slot (a full window of them adds one).
    acks: usize,
    /// Least latency (µs) of the current and the previous [`BEST_PERIOD`].
    best_current: Option<u64>,
    best_previous: Option<u64>,
    /// When the current best period began (Unix µs).
    period_start: Micros,
    /// Exponentially weighted mean of recent 2xx latencies (µs).
    recent: Option<f64>,
    /// When the limit was last cut (Unix µs); attempts dispatched before it do not cut again.
    cut_at: Micros,
}

impl AdaptiveLimit {
    /// A limit starting at `initial` attempts (at least 1), at `now` (Unix µs).
    pub fn new(initial: usize, now: Micros) -> AdaptiveLimit {
        AdaptiveLimit {
            limit: initial.max(1),
            floor: initial.max(1),
            acks: 0,
            best_current: None,
            best_previous: None,
            period_start: now,
            recent: None,
            cut_at: 0,
        }
    }

    /// Attempts the subscription may have in flight now: the limit, within `1..=cap`.
    pub fn current(&self, cap: usize) -> usize {
        self.limit.clamp(1, cap.max(1))
    }

    /// The endpoint's best latency (µs) over the last one to two [`BEST_PERIOD`]s.
    fn best(&self) -> Option<u64> {
        match (self.best_current, self.best_previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A 2xx answered after `latency`. `dispatched_at` is when the attempt was handed to a
    /// worker and `in_flight` how many attempts of the subscription were out when it ended
    /// (itself included); `now` is Unix µs and `cap` the hard cap.
    pub fn on_success(
        &mut self,
        latency: Duration,
        dispatched_at: Micros,
        in_flight: usize,
        cap: usize,
        now: Micros,
    ) {
        let sample = latency.as_micros().min(u64::MAX as u128) as u64;
        if now.saturating_sub(self.period_start) >= BEST_PERIOD {
            self.best_previous = self.best_current.take();
            self.period_start = now;
        }
        self.best_current = Some(self.best_current.map_or(sample, |best| best.min(sample)));
        let recent =
            self.recent.map_or(sample as f64, |recent| recent + RECENT_WEIGHT * (sample as f64 - recent));
        self.recent = Some(recent);
        let best = self.best().unwrap_or(sample) as f64;
        if recent > best * LATENCY_TOLERANCE + LATENCY_SLACK.as_micros() as f64 {
            if self.limit > self.floor {
                self.cut(LATENCY_DECREASE, dispatched_at, now);
                self.limit = self.limit.max(self.floor);
            }
            return;
        }
        // Only a window in use proves it can grow: an endpoint that sees a trickle keeps its limit.
        if in_flight * 2 >= self.limit {
            self.acks += 1;
            if self.acks >= self.limit {
                self.acks = 0;
                self.limit = (self.limit + 1).min(cap.max(1));
            }
        }
    }

    /// An attempt dispatched at `dispatched_at` failed (error status, time-out, no connection).
    pub fn on_failure(&mut self, dispatched_at: Micros, now: Micros) {
        self.cut(FAILURE_DECREASE, dispatched_at, now);
    }

    /// Multiplies the limit by `factor` unless the attempt began before the last cut (its
    /// window was already cut for the same trouble).
    fn cut(&mut self, factor: f64, dispatched_at: Micros, now: Micros) {
        if dispatched_at < self.cut_at {
            return;
        }
        self.limit = ((self.limit as f64 * factor) as usize).max(1);
        self.acks = 0;
        self.cut_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Micros = 1_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Successes at `latency` with a full window, one every millisecond from `*now`.
    fn succeed(limit: &mut AdaptiveLimit, count: usize, latency: Duration, cap: usize, now: &mut Micros) {
        for _ in 0..count {
            let in_flight = limit.current(cap);
            limit.on_success(latency, *now, in_flight, cap, *now);
            *now += MS;
        }
    }

    #[test]
    fn a_fast_endpoint_with_a_full_window_earns_one_slot_per_window_up_to_the_cap() {
        let mut now = 1_000_000;
        let mut limit = AdaptiveLimit::new(4, now);
        assert_eq!(limit.current(32), 4);
        succeed(&mut limit, 4, ms(1), 32, &mut now);
        assert_eq!(limit.current(32), 5, "a window of four successes adds one slot");
        // From 5 to 32 takes 5 + 6 + … + 31 = 486 successes.
        succeed(&mut limit, 486, ms(1), 32, &mut now);
        assert_eq!(limit.current(32), 32);
        succeed(&mut limit, 1_000, ms(1), 32, &mut now);
        assert_eq!(limit.current(32), 32, "never past the hard cap");
    }

    #[test]
    fn a_trickle_does_not_grow_the_limit() {
        let mut limit = AdaptiveLimit::new(4, 0);
        for at in 0..1_000 {
            limit.on_success(ms(1), at * MS, 1, 32, at * MS);
        }
        assert_eq!(limit.current(32), 4, "one attempt out of four proves nothing about eight");
    }

    #[test]
    fn a_failure_halves_the_limit_once_per_window() {
        let mut now = 0;
        let mut limit = AdaptiveLimit::new(4, now);
        succeed(&mut limit, 500, ms(1), 32, &mut now);
        assert_eq!(limit.current(32), 32);
        // A whole window of 32 attempts dispatched before the trouble all fail: one halving.
        let dispatched = now;
        now += 10 * MS;
        for _ in 0..32 {
            limit.on_failure(dispatched, now);
            now += MS;
        }
        assert_eq!(limit.current(32), 16);
        // An attempt dispatched after that cut fails too: halved again.
        limit.on_failure(now, now + MS);
        assert_eq!(limit.current(32), 8);
        for _ in 0..10 {
            now += 10 * MS;
            limit.on_failure(now, now);
        }
        assert_eq!(limit.current(32), 1, "never below one");
    }

    #[test]
    fn rising_latency_cuts_the_limit_and_steady_latency_does_not() {
        let mut now = 0;
        let mut limit = AdaptiveLimit::new(4, now);
        succeed(&mut limit, 500, ms(100), 32, &mut now);
        assert_eq!(limit.current(32), 32, "a steady 100 ms endpoint is not slowing down");
        // The endpoint slows to 400 ms (more than 2 × 100 ms + 5 ms): cut by a fifth, once per
        // window, until it levels.
        let before = limit.current(32);
        succeed(&mut limit, 20, ms(400), 32, &mut now);
        assert!(limit.current(32) < before, "{} < {before}", limit.current(32));
        // However long it stays slow, rising latency alone leaves the limit it started with.
        succeed(&mut limit, 2_000, ms(400), 32, &mut now);
        assert_eq!(limit.current(32), 4, "not below the initial limit for 2xx answers");
        // A failure still halves it below that.
        limit.on_failure(now, now + MS);
        assert_eq!(limit.current(32), 2);
    }

    #[test]
    fn sub_millisecond_jitter_of_a_fast_endpoint_is_not_rising_latency() {
        let mut now = 0;
        let mut limit = AdaptiveLimit::new(4, now);
        for i in 0..2_000u64 {
            // 0.2 ms to 3 ms: many times the best, but within the slack.
            let latency = Duration::from_micros(200 + (i % 10) * 300);
            let in_flight = limit.current(32);
            limit.on_success(latency, now, in_flight, 32, now);
            now += MS;
        }
        assert_eq!(limit.current(32), 32);
    }

    #[test]
    fn the_best_latency_follows_an_endpoint_that_became_slower_for_good() {
        let mut now = 0;
        let mut limit = AdaptiveLimit::new(4, now);
        succeed(&mut limit, 100, ms(10), 32, &mut now);
        // The endpoint now takes 50 ms for good: cut at first; after two best periods the old
        // 10 ms is forgotten, and the limit grows again.
        for _ in 0..200 {
            let in_flight = limit.current(32);
            limit.on_success(ms(50), now, in_flight, 32, now);
            now += 500 * MS;
        }
        assert_eq!(limit.best(), Some(50_000));
        let settled = limit.current(32);
        succeed(&mut limit, 600, ms(50), 32, &mut now);
        assert!(limit.current(32) > settled, "{} > {settled}", limit.current(32));
        assert_eq!(limit.current(32), 32);
    }

    #[test]
    fn the_limit_respects_a_cap_lowered_by_a_reload() {
        let mut now = 0;
        let mut limit = AdaptiveLimit::new(4, now);
        succeed(&mut limit, 600, ms(1), 32, &mut now);
        assert_eq!(limit.current(2), 2);
        assert_eq!(AdaptiveLimit::new(0, 0).current(8), 1);
    }
}
