//! Domain types and identifiers: subscriptions, events, deliveries and their attempts.
//! Plain data, no I/O and no clock: times are unix milliseconds handed in by the caller.
//!
//! These are not the on-disk shapes: storage keeps its own frozen records (sled:
//! `store::embedded::records`; PostgreSQL: its tables)
//! and converts, so a field here can change without touching what is stored.

use serde::Serialize;

/// Unix time in milliseconds.
pub type Millis = u64;

/// Milliseconds since the epoch, now.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as Millis)
        .unwrap_or(0)
}

/// Unix time in microseconds: the clock of the per-subscription rate limit, whose steps
/// (10,000 attempts per second are 100 µs apart) are finer than a millisecond.
pub type Micros = u64;

/// Microseconds since the epoch, now.
pub fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as Micros)
        .unwrap_or(0)
}

/// Headroom of the rate limit, in µs: N intervals span a second plus this, so the network
/// (connection set-up, a scheduler's hiccup, the receiver's own clock) may shift arrivals by up
/// to 10 ms without a receiver that counts exactly N per second ever seeing N + 1 in one. It
/// costs 1 % of the rate (a limit of 50 sends 49.5/s).
pub const RATE_HEADROOM_MICROS: Micros = 10_000;

/// The least time between two attempt starts of a subscription limited to `per_second`
/// attempts per second (`rateLimitPerSecond`), in µs: ⌈(1 s + [`RATE_HEADROOM_MICROS`]) / N⌉.
/// Rounded up, so N intervals are never shorter than a second and the headroom, and no
/// 1-second window holds more than N starts (nor, with up to 10 ms of jitter, N arrivals). The
/// limiter is GCRA (ITU-T I.371's virtual scheduling algorithm) with no burst tolerance: each
/// attempt may start once this interval has passed since the previous one started.
pub fn rate_interval(per_second: u32) -> Micros {
    (1_000_000 + RATE_HEADROOM_MICROS).div_ceil(u64::from(per_second.max(1)))
}

/// When the next attempt of a subscription limited to `per_second` may start, given when the
/// previous one was allowed to start (`None`: never); `now` when it may start at once.
/// Pure (µs in, µs out), shared by both storage backends' claims and by the scheduler.
pub fn rate_next_start(previous: Option<Micros>, per_second: u32, now: Micros) -> Micros {
    match previous {
        Some(previous) => now.max(previous.saturating_add(rate_interval(per_second))),
        None => now,
    }
}

/// RFC 3339 UTC with seconds precision: `2026-05-11T09:00:00Z`.
pub fn rfc3339(at: Millis) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// An RFC 3339 `date-time` (`2026-05-11T09:00:00Z`, `2026-05-11T11:00:00.250+02:00`) as Unix
/// milliseconds, negative before 1970; `None` when `text` is not one. RFC 3339 §5.6: a time
/// offset is required (`Z` or `±HH:MM`), `T` and `Z` may be lower case, a fraction of a second
/// may have any number of digits (read to the millisecond, rounded down), and a leap second
/// (`:60`) reads as the last millisecond of its minute. The date must exist (no 31 April, 29
/// February only in leap years). Years 0000–9999.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    fn digits(text: &str) -> Option<i64> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
    }
    let bytes = text.as_bytes();
    // Every valid one is ASCII, and byte slicing below needs char boundaries.
    if !text.is_ascii()
        || bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't')
    {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&text[0..4])?, digits(&text[5..7])?, digits(&text[8..10])?);
    let (hour, minute, second) = (digits(&text[11..13])?, digits(&text[14..16])?, digits(&text[17..19])?);
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction.find(|c: char| !c.is_ascii_digit()).unwrap_or(fraction.len());
        if end == 0 {
            return None;
        }
        millis = format!("{:0<3}", &fraction[..end.min(3)]).parse::<i64>().ok()?;
        rest = &fraction[end..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let (hours, minutes) = (digits(&rest[1..3])?, digits(&rest[4..6])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
        _ => return None,
    };
    let leap_year = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap_year => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let (second, millis) = if second == 60 { (59, 999) } else { (second, millis) };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// A new ULID made at `at` for id kind `slot`, greater than every one made before for that
/// slot by this process: listings promise newest first by id, and two ids made within one
/// millisecond must not sort at random.
fn next_ulid(slot: usize, at: Millis) -> ulid::Ulid {
    /// The last ULID of each kind. Id generation is the one piece of process-wide state, as a
    /// random number generator would be.
    static LAST: std::sync::Mutex<[Option<ulid::Ulid>; 3]> = std::sync::Mutex::new([None; 3]);
    let random = u128::from_le_bytes(random_bytes::<16>());
    let fresh = ulid::Ulid::from_parts(at, random);
    let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let id = match last[slot] {
        // Same millisecond (or the clock stepped back): one more than the previous id.
        Some(previous) if fresh <= previous => previous.increment().unwrap_or(fresh),
        _ => fresh,
    };
    last[slot] = Some(id);
    id
}

/// Defines an identifier type: prefix + ULID (Crockford base32, 26 characters), so ids sort by
/// creation time and every id of a kind is exactly [`Self::LEN`] ASCII bytes — the fixed width
/// the sled key encodings rely on (`store::embedded::keys`). Only [`Self::new`] and [`Self::parse`]
/// (which validates) make one, so a value of the type is always well-formed.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $slot:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;
            /// Length in bytes of every id of this kind: the prefix plus 26.
            pub const LEN: usize = $prefix.len() + 26;

            /// A new id created at `at` (Unix ms), greater than every id of this kind this
            /// process made before.
            pub fn new(at: Millis) -> Self {
                $name(format!("{}{}", $prefix, next_ulid($slot, at)))
            }

            /// `text` as an id of this kind, or `None` when it is not a well-formed one (it
            /// may still not exist).
            pub fn parse(text: &str) -> Option<Self> {
                let ulid = text.strip_prefix($prefix)?;
                (ulid.len() == 26 && ulid::Ulid::from_string(ulid).is_ok()).then(|| $name(text.to_owned()))
            }

            /// [`Self::parse`] of stored bytes (a key or a record field).
            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                Self::parse(std::str::from_utf8(bytes).ok()?)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }

            /// The smallest id of this kind [`Self::new`] could make at `at` (Unix ms; a time
            /// past the ULID range, year 10889, counts as its end): the bound of a range of ids
            /// by creation time, e.g. `first_at(since) <= id < first_at(until)`. Never stored.
            pub fn first_at(at: Millis) -> Self {
                const MAX_ULID_MILLIS: Millis = (1 << 48) - 1;
                $name(format!("{}{}", $prefix, ulid::Ulid::from_parts(at.min(MAX_ULID_MILLIS), 0)))
            }

            /// The creation time encoded in the id (Unix ms).
            pub fn created_at(&self) -> Millis {
                ulid::Ulid::from_string(&self.0[$prefix.len()..]).map(|ulid| ulid.timestamp_ms()).unwrap_or(0)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

typed_id!(
    /// A subscription's id: `wh_` + ULID (29 bytes).
    SubscriptionId,
    "wh_",
    0
);
typed_id!(
    /// An event's id: `evt_` + ULID (30 bytes); the `id` of the delivery body.
    EventId,
    "evt_",
    1
);
typed_id!(
    /// A delivery's id: `dlv_` + ULID (30 bytes); sent as `X-Atender-Delivery` and as the
    /// Standard Webhooks `webhook-id`, the receiver's deduplication key.
    DeliveryId,
    "dlv_",
    2
);

/// Bytes from the OS CSPRNG. Failure to read it is unrecoverable for a security product.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes
}

/// A new subscription secret: `whsec_` + standard base64 of 32 bytes from the OS CSPRNG.
pub fn new_secret() -> SigningSecret {
    use base64::Engine as _;
    SigningSecret(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>())))
}

/// A subscription's signing secret (`whsec_…`). `Debug` and `Display` print `<redacted>`, so
/// a secret never reaches a log line or a panic message by accident; [`SigningSecret::expose`]
/// is the one way to read it (to sign, to store, and in the create and rotate answers).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl SigningSecret {
    /// The secret itself, for signing and for the one answer that hands it out.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SigningSecret {
    fn from(secret: String) -> Self {
        SigningSecret(secret)
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl std::fmt::Display for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Outcome of the most recent attempt, as shown on the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastDeliveryStatus {
    Succeeded,
    Failed,
}

impl LastDeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LastDeliveryStatus::Succeeded => "succeeded",
            LastDeliveryStatus::Failed => "failed",
        }
    }
}

/// A signing secret that still verifies for a while after a rotation with grace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredSecret {
    pub secret: SigningSecret,
    pub valid_until: Millis,
}

/// A webhook subscription of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub tenant_id: String,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    /// Custom headers in the order given.
    pub headers: Vec<(String, String)>,
    pub max_retries: u32,
    pub retry_delay_seconds: u32,
    pub is_active: bool,
    pub is_paused: bool,
    pub disable_reason: Option<String>,
    pub disabled_at: Option<Millis>,
    pub consecutive_failures: u32,
    pub last_delivery_at: Option<Millis>,
    pub last_delivery_status: Option<LastDeliveryStatus>,
    pub last_delivery_response_code: Option<u16>,
    pub last_delivery_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub secret: SigningSecret,
    pub retired_secret: Option<RetiredSecret>,
    /// At most this many attempts start per second (`rateLimitPerSecond`; `None`: no limit).
    /// Every attempt counts: first tries, retries, redeliveries (see [`rate_interval`]).
    pub rate_limit_per_second: Option<u32>,
}

impl Subscription {
    /// A new active subscription with the guide's defaults (5 retries, 30 s first delay, no
    /// custom headers, not paused) and a fresh secret. The API overrides the defaults with the
    /// validated request; benchmark seeding and storage tests use it as it is.
    pub fn new(
        tenant_id: &str,
        name: impl Into<String>,
        url: impl Into<String>,
        events: Vec<String>,
        now: Millis,
    ) -> Subscription {
        Subscription {
            id: SubscriptionId::new(now),
            tenant_id: tenant_id.to_owned(),
            name: name.into(),
            url: url.into(),
            events,
            headers: Vec::new(),
            max_retries: 5,
            retry_delay_seconds: 30,
            is_active: true,
            is_paused: false,
            disable_reason: None,
            disabled_at: None,
            consecutive_failures: 0,
            last_delivery_at: None,
            last_delivery_status: None,
            last_delivery_response_code: None,
            last_delivery_error: None,
            created_at: now,
            updated_at: now,
            secret: new_secret(),
            retired_secret: None,
            rate_limit_per_second: None,
        }
    }

    /// Whether deliveries may go out now (active and not paused).
    pub fn is_deliverable(&self) -> bool {
        self.is_active && !self.is_paused
    }

    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|wanted| wanted == event_type)
    }

    /// Secrets that sign an attempt made at `now`: the current one first, then a retired one
    /// still within its grace period.
    pub fn signing_secrets(&self, now: Millis) -> Vec<&str> {
        let mut secrets = vec![self.secret.expose()];
        if let Some(retired) = &self.retired_secret {
            if retired.valid_until > now {
                secrets.push(retired.secret.expose());
            }
        }
        secrets
    }
}

/// An accepted event. `body` is the exact JSON sent to every receiver, on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub tenant_id: String,
    pub event_type: String,
    pub created_at: Millis,
    pub body: Vec<u8>,
    /// Delivery records that still reference this event; the event is purged at zero.
    pub live_deliveries: u32,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    Pending,
    Held,
    Succeeded,
    Failed,
    Expired,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 5] = [
        DeliveryState::Pending,
        DeliveryState::Held,
        DeliveryState::Succeeded,
        DeliveryState::Failed,
        DeliveryState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Held => "held",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
            DeliveryState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Finished deliveries are never attempted again (unless redelivered by hand).
    pub fn is_finished(self) -> bool {
        matches!(self, DeliveryState::Succeeded | DeliveryState::Failed | DeliveryState::Expired)
    }
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at: Millis,
    pub duration_ms: u32,
    pub response_code: Option<u16>,
    pub error: Option<String>,
}

/// The most attempts kept in a delivery's log; older ones are dropped first.
pub const MAX_LOGGED_ATTEMPTS: usize = 50;

/// One event on its way to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub tenant_id: String,
    pub subscription_id: SubscriptionId,
    pub event_id: EventId,
    pub event_type: String,
    pub state: DeliveryState,
    /// Logged attempts, oldest first (at most [`MAX_LOGGED_ATTEMPTS`]).
    pub attempts: Vec<Attempt>,
    /// Attempts made since the delivery was created or last redelivered; drives the backoff.
    pub attempts_in_round: u32,
    /// Due time of the next attempt while pending.
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_time_and_validate() {
        // Far in the future, so ids other tests made at the real time do not interfere.
        let earlier = SubscriptionId::new(200_000_000_001_000);
        let later = SubscriptionId::new(200_000_000_002_000);
        assert!(earlier < later);
        assert_eq!(SubscriptionId::parse(earlier.as_str()), Some(earlier.clone()));
        assert_eq!(DeliveryId::parse(earlier.as_str()), None);
        assert_eq!(SubscriptionId::parse("wh_nope"), None);
        assert_eq!(SubscriptionId::parse("wh_01ARZ3NDEKTSV4RRFFQ69G5FA!"), None);
        assert_eq!(later.created_at(), 200_000_000_002_000);
        assert_eq!(earlier.as_str().len(), SubscriptionId::LEN);
        assert_eq!((SubscriptionId::LEN, EventId::LEN, DeliveryId::LEN), (29, 30, 30));
    }

    #[test]
    fn ids_made_in_one_millisecond_still_increase() {
        let ids: Vec<DeliveryId> = (0..1000).map(|_| DeliveryId::new(200_000_000_005_000)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn rate_interval_never_lets_n_plus_one_starts_into_a_second() {
        for per_second in [1, 3, 7, 50, 333, 9_999, 10_000] {
            let interval = rate_interval(per_second);
            let span = 1_000_000 + RATE_HEADROOM_MICROS;
            assert!(interval * u64::from(per_second) >= span, "{per_second}/s");
            assert!((interval - 1) * u64::from(per_second) < span, "{per_second}/s: the least such interval");
        }
        assert_eq!((rate_interval(50), rate_interval(3), rate_interval(10_000)), (20_200, 336_667, 101));
        assert_eq!(rate_next_start(None, 5, 1_000), 1_000, "never started: at once");
        assert_eq!(rate_next_start(Some(1_000), 5, 1_000), 203_000, "one interval after the last");
        assert_eq!(rate_next_start(Some(1_000), 5, 900_000), 900_000, "long ago: at once");
    }

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(1_778_490_000_000), "2026-05-11T09:00:00Z");
    }

    #[test]
    fn rfc3339_parses_what_it_formats_and_every_offset() {
        for at in [0, 1_778_490_000_000, 951_782_400_000, 4_102_444_799_000] {
            assert_eq!(parse_rfc3339(&rfc3339(at)), Some(at as i64), "{}", rfc3339(at));
        }
        for (text, expected) in [
            ("2026-05-11T09:00:00Z", 1_778_490_000_000),
            ("2026-05-11t09:00:00z", 1_778_490_000_000),
            ("2026-05-11T11:00:00+02:00", 1_778_490_000_000),
            ("2026-05-11T04:30:00-04:30", 1_778_490_000_000),
            ("2026-05-11T09:00:00.25Z", 1_778_490_000_250),
            ("2026-05-11T09:00:00.123456789Z", 1_778_490_000_123),
            ("2026-05-11T09:00:60Z", 1_778_490_059_999),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
            ("1969-12-31T23:59:59Z", -1000),
            ("0000-01-01T00:00:00Z", -62_167_219_200_000),
        ] {
            assert_eq!(parse_rfc3339(text), Some(expected), "{text}");
        }
        for bad in [
            "",
            "2026-05-11",
            "2026-05-11T09:00:00",
            "2026-05-11 09:00:00Z",
            "2026-05-11T09:00Z",
            "2026-05-11T09:00:00.Z",
            "2026-05-11T09:00:00+0200",
            "2026-05-11T09:00:00+24:00",
            "2026-13-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-05-11T24:00:00Z",
            "2026-05-11T09:60:00Z",
            "2026-05-11T09:00:61Z",
            "+2026-05-11T09:00:00Z",
            "2026-05-11T09:00:00Zjunk",
            "2026-05-11T09:00:0\u{e9}Z",
            "yesterday at noon, roughly",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn first_at_bounds_the_ids_made_from_that_millisecond_on() {
        let at = 200_000_000_009_000;
        let bound = DeliveryId::first_at(at);
        assert_eq!(bound.created_at(), at);
        assert_eq!(DeliveryId::parse(bound.as_str()), Some(bound.clone()));
        let made = DeliveryId::new(at);
        assert!(DeliveryId::first_at(at - 1) < made && bound <= made && made < DeliveryId::first_at(at + 1));
        assert_eq!(DeliveryId::first_at(u64::MAX).created_at(), (1 << 48) - 1);
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_and_is_stored_as_a_plain_string() {
        let subscription = Subscription::new("t", "n", "https://a.example/", vec!["a.b".into()], 0);
        let secret = subscription.secret.expose().to_owned();
        assert!(secret.starts_with("whsec_"));
        for printed in [
            format!("{subscription:?}"),
            format!("{:?}", subscription.secret),
            subscription.secret.to_string(),
        ] {
            assert!(!printed.contains(&secret), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }
}
