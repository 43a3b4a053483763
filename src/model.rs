//! Domain types and identifiers: subscriptions, events, deliveries and their attempts.
//! Plain data, no I/O and no clock: times are unix milliseconds handed in by the caller.
//!
//! These structs are also the current on-disk shape (see `store::codec`): change a field and you
//! must freeze the old shape as a previous version and migrate it on read.

use serde::{Deserialize, Serialize};

/// Unix time in milliseconds.
pub type Millis = u64;

/// Milliseconds since the epoch, now.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as Millis)
        .unwrap_or(0)
}

/// RFC 3339 UTC with seconds precision: `2026-05-11T09:00:00Z`.
pub fn rfc3339(at: Millis) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The kinds of identifier, each with its prefix. Ids are prefix + ULID, so they sort by
/// creation time and are exactly `prefix.len() + 26` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Subscription,
    Event,
    Delivery,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Subscription => "wh_",
            IdKind::Event => "evt_",
            IdKind::Delivery => "dlv_",
        }
    }

    /// A new id created at `at`, greater than every id of this kind made before by this
    /// process: listings promise newest first by id, and two ids made within one millisecond
    /// must not sort at random.
    pub fn new_id(self, at: Millis) -> String {
        /// The last id of each kind. Id generation is the one piece of process-wide state, as
        /// a random number generator would be.
        static LAST: std::sync::Mutex<[Option<ulid::Ulid>; 3]> = std::sync::Mutex::new([None; 3]);
        let random = u128::from_le_bytes(random_bytes::<16>());
        let fresh = ulid::Ulid::from_parts(at, random);
        let slot = self as usize;
        let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = match last[slot] {
            // Same millisecond (or the clock stepped back): one more than the previous id.
            Some(previous) if fresh <= previous => previous.increment().unwrap_or(fresh),
            _ => fresh,
        };
        last[slot] = Some(id);
        format!("{}{}", self.prefix(), id)
    }

    /// Whether `text` is a well-formed id of this kind (it may still not exist).
    pub fn is_valid(self, text: &str) -> bool {
        text.strip_prefix(self.prefix())
            .is_some_and(|rest| rest.len() == 26 && ulid::Ulid::from_string(rest).is_ok())
    }

    /// The creation time encoded in a well-formed id.
    pub fn created_at(self, text: &str) -> Option<Millis> {
        let rest = text.strip_prefix(self.prefix())?;
        ulid::Ulid::from_string(rest).ok().map(|ulid| ulid.timestamp_ms())
    }
}

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
/// is the one way to read it (to sign, and in the create and rotate answers). Stored as a plain
/// string (`serde(transparent)`): the on-disk bytes are those of a `String`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredSecret {
    pub secret: SigningSecret,
    pub valid_until: Millis,
}

/// A webhook subscription of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
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
            id: IdKind::Subscription.new_id(now),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub created_at: Millis,
    pub body: Vec<u8>,
    /// Delivery records that still reference this event; the event is purged at zero.
    pub live_deliveries: u32,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: Millis,
    pub duration_ms: u32,
    pub response_code: Option<u16>,
    pub error: Option<String>,
}

/// The most attempts kept in a delivery's log; older ones are dropped first.
pub const MAX_LOGGED_ATTEMPTS: usize = 50;

/// One event on its way to one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub tenant_id: String,
    pub subscription_id: String,
    pub event_id: String,
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

impl Delivery {
    pub fn push_attempt(&mut self, attempt: Attempt) {
        if self.attempts.len() >= MAX_LOGGED_ATTEMPTS {
            self.attempts.remove(0);
        }
        self.attempts.push(attempt);
        self.attempts_in_round += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_time_and_validate() {
        // Far in the future, so ids other tests made at the real time do not interfere.
        let earlier = IdKind::Subscription.new_id(200_000_000_001_000);
        let later = IdKind::Subscription.new_id(200_000_000_002_000);
        assert!(earlier < later);
        assert!(IdKind::Subscription.is_valid(&earlier));
        assert!(!IdKind::Delivery.is_valid(&earlier));
        assert!(!IdKind::Subscription.is_valid("wh_nope"));
        assert_eq!(IdKind::Subscription.created_at(&later), Some(200_000_000_002_000));
        assert_eq!(earlier.len(), 3 + 26);
    }

    #[test]
    fn ids_made_in_one_millisecond_still_increase() {
        let ids: Vec<String> = (0..1000).map(|_| IdKind::Delivery.new_id(200_000_000_005_000)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(1_778_490_000_000), "2026-05-11T09:00:00Z");
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
        // The same bytes as the String it replaced, so stored subscriptions read unchanged.
        assert_eq!(bincode::serialize(&subscription.secret).unwrap(), bincode::serialize(&secret).unwrap());
    }
}
