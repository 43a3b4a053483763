//! Retry timing: exponential backoff with jitter and `Retry-After` parsing (pure: no clock reads,
//! randomness comes in as an argument; `jitter_fraction` is the one source of it).

use std::time::{Duration, SystemTime};

/// Share of the (capped) delay added as jitter when `jitter_fraction` approaches 1.
const MAX_JITTER_SHARE: f64 = 0.10;

/// Delay before the next try after failed attempt `failed_attempt` (k ≥ 1; 0 counts as 1):
/// `retry_delay_seconds × 2^(k−1)` capped by `max_retry_delay`, plus `jitter_fraction × 10 %` of
/// that. `jitter_fraction` is meant to be in [0, 1); anything else is clamped (NaN counts as 0).
///
/// Saturates instead of overflowing for any inputs (k up to `u32::MAX`, `Duration::MAX` cap).
pub fn retry_delay(
    retry_delay_seconds: u32,
    failed_attempt: u32,
    max_retry_delay: Duration,
    jitter_fraction: f64,
) -> Duration {
    let doublings = failed_attempt.saturating_sub(1);
    let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
    let base =
        Duration::from_secs(u64::from(retry_delay_seconds).saturating_mul(factor)).min(max_retry_delay);

    let jitter_fraction = if jitter_fraction.is_nan() { 0.0 } else { jitter_fraction.clamp(0.0, 1.0) };
    // try_ variant: mul_f64 panics on out-of-range results, and this must never panic.
    let jitter = Duration::try_from_secs_f64(base.as_secs_f64() * jitter_fraction * MAX_JITTER_SHARE)
        .unwrap_or(Duration::ZERO);
    base.saturating_add(jitter)
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (relative to `now`).
/// A date in the past means "now" (`Some(0)`); unparseable values give `None`. Huge
/// delta-seconds saturate; callers cap the result with `max_retry_delay`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits, so a parse failure can only be overflow.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A uniformly distributed fraction in [0, 1) from the OS random source, for `retry_delay`.
/// Falls back to 0 (no jitter) if the random source fails: jitter only spreads load.
pub fn jitter_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.0;
    }
    // Top 53 bits: exactly representable in an f64, so the result is < 1.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIX_HOURS: Duration = Duration::from_secs(6 * 3600);

    #[test]
    fn doubles_per_failed_attempt() {
        let delays: Vec<u64> = (1..=6).map(|k| retry_delay(10, k, SIX_HOURS, 0.0).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320]);
        assert_eq!(retry_delay(10, 0, SIX_HOURS, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn capped_by_max_retry_delay() {
        assert_eq!(retry_delay(60, 12, SIX_HOURS, 0.0), SIX_HOURS);
        assert_eq!(retry_delay(60, 9, SIX_HOURS, 0.0), Duration::from_secs(60 * 256));
    }

    #[test]
    fn jitter_adds_up_to_ten_percent_of_the_capped_delay() {
        assert_eq!(retry_delay(100, 1, SIX_HOURS, 0.5), Duration::from_secs(105));
        let near_one = retry_delay(100, 1, SIX_HOURS, 0.999_999);
        assert!(near_one > Duration::from_secs(109) && near_one < Duration::from_secs(110));
        // Jitter applies after the cap.
        assert_eq!(retry_delay(60, 30, SIX_HOURS, 0.5), SIX_HOURS + SIX_HOURS / 20);
    }

    #[test]
    fn never_overflows_or_panics() {
        for k in [31, 32, 33, 34, 63, 64, 65, 1000, u32::MAX] {
            for cap in [SIX_HOURS, Duration::MAX] {
                let base = retry_delay(u32::MAX, k, cap, 0.0);
                if k >= 34 {
                    // 2^32 × 2^33 no longer fits in u64 seconds: saturated, then capped.
                    assert_eq!(base, cap.min(Duration::from_secs(u64::MAX)), "k={k}");
                }
                for j in [0.5, 0.999_999, 1.0, -3.0, 7.0, f64::NAN, f64::INFINITY] {
                    assert!(retry_delay(u32::MAX, k, cap, j) >= base, "k={k} j={j}");
                }
            }
        }
        assert_eq!(retry_delay(0, 64, SIX_HOURS, 0.5), Duration::ZERO);
        assert_eq!(retry_delay(1, 64, SIX_HOURS, f64::NAN), SIX_HOURS);
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(Duration::from_secs(u64::MAX)));
        for bad in ["", "  ", "-5", "1.5", "+3", "soon", "7s"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        // Past dates mean "retry now".
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        // Obsolete formats HTTP still requires recipients to accept.
        assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:57 1994", now), Some(Duration::from_secs(20)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 25:00:00 GMT", now), None);
    }

    #[test]
    fn jitter_fraction_in_unit_interval() {
        let samples: Vec<f64> = (0..1000).map(|_| jitter_fraction()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        // Not constant (a failing random source would give all zeros).
        assert!(samples.iter().any(|&j| j != samples[0]));
    }
}
