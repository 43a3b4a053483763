//! Portal sessions without storage: the signing key kept in the data dir, the signed session
//! token (in the link and then in the cookie) and the CSRF token derived from it. Pure apart
//! from storage (`store::SharedKeys`): every check takes `now` as an argument.
//!
//! Token: `v1.<tenant>.<ro|rw>.<expires, unix seconds>.<nonce>.<base64url HMAC-SHA256>`, the MAC
//! over `atender-portal-session|v1|<tenant>|<ro|rw>|<expires>|<nonce>` with the daemon's portal
//! key. The nonce (12 random bytes, base64url) makes every link, and so every CSRF token,
//! distinct even for the same tenant and second. Tenant ids
//! are `[a-z0-9_-]`, so `.` separates the parts unambiguously. A session cannot be revoked
//! before it expires (nothing is stored): that is why links live at most 24 h.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Name of the signing key in storage (`store::SharedKeys`): with sled, the file of this name
/// in the data dir; with PostgreSQL, the `shared_keys` row every node reads.
pub const KEY_NAME: &str = "portal-signing-key";

/// Longest a portal link (and its session) may live, in seconds (24 h).
pub const MAX_TTL_SECONDS: u32 = 86_400;

/// Lifetime of a portal link when the caller does not say, in seconds (1 h).
pub const DEFAULT_TTL_SECONDS: u32 = 3_600;

/// The 32-byte HMAC key that signs portal sessions. Redacted in `Debug`.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

impl SigningKey {
    /// A key from its bytes (tests and callers that keep the key elsewhere).
    pub fn from_bytes(bytes: [u8; 32]) -> SigningKey {
        SigningKey(bytes)
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(parts.join("|").as_bytes());
        mac
    }
}

/// A verified portal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub tenant_id: String,
    /// A read-only session sees everything and changes nothing.
    pub read_only: bool,
    /// Unix seconds after which the session is refused.
    pub expires_at: u64,
    /// The signed token itself (the cookie value; the CSRF token is derived from it).
    pub token: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the portal link is not valid")]
    Invalid,
    #[error("the portal link has expired")]
    Expired,
}

impl Session {
    /// Signs a session for `tenant_id` ending at `expires_at` (unix seconds); `nonce` is fresh
    /// randomness (`crate::model::random_bytes`).
    pub fn issue(
        key: &SigningKey,
        tenant_id: &str,
        read_only: bool,
        expires_at: u64,
        nonce: [u8; 12],
    ) -> Session {
        let mode = if read_only { "ro" } else { "rw" };
        let expires = expires_at.to_string();
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let mac = key.mac(&["atender-portal-session", "v1", tenant_id, mode, &expires, &nonce]);
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Session {
            tenant_id: tenant_id.to_owned(),
            read_only,
            expires_at,
            token: format!("v1.{tenant_id}.{mode}.{expires}.{nonce}.{signature}"),
        }
    }

    /// Checks a token's signature (in constant time) and expiry at `now` (unix seconds).
    pub fn verify(key: &SigningKey, token: &str, now: u64) -> Result<Session, SessionError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [version, tenant_id, mode, expires, nonce, signature] = parts[..] else {
            return Err(SessionError::Invalid);
        };
        let plain = |text: &str| text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if version != "v1"
            || !crate::config::is_valid_tenant_id(tenant_id)
            || !matches!(mode, "ro" | "rw")
            || !plain(nonce)
        {
            return Err(SessionError::Invalid);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| SessionError::Invalid)?;
        key.mac(&["atender-portal-session", "v1", tenant_id, mode, expires, nonce])
            .verify_slice(&signature)
            .map_err(|_| SessionError::Invalid)?;
        let expires_at: u64 = expires.parse().map_err(|_| SessionError::Invalid)?;
        if now >= expires_at {
            return Err(SessionError::Expired);
        }
        Ok(Session {
            tenant_id: tenant_id.to_owned(),
            read_only: mode == "ro",
            expires_at,
            token: token.to_owned(),
        })
    }

    /// The CSRF token of this session: HMAC of the session token under the same key. A page
    /// of another site can neither read the HttpOnly cookie nor this value, so it cannot forge
    /// a form post; no server-side state is needed to check it.
    pub fn csrf_token(&self, key: &SigningKey) -> String {
        URL_SAFE_NO_PAD.encode(key.mac(&["atender-portal-csrf", &self.token]).finalize().into_bytes())
    }

    /// Whether `sent` is this session's CSRF token (constant-time comparison).
    pub fn csrf_matches(&self, key: &SigningKey, sent: &str) -> bool {
        let Ok(sent) = URL_SAFE_NO_PAD.decode(sent) else { return false };
        key.mac(&["atender-portal-csrf", &self.token]).verify_slice(&sent).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes([byte; 32])
    }

    #[test]
    fn a_session_verifies_until_it_expires() {
        let session = Session::issue(&key(1), "acme", true, 1_000, [7; 12]);
        assert!(session.token.starts_with("v1.acme.ro.1000.BwcHBwcHBwcHBwcH."), "{}", session.token);
        assert_eq!(Session::verify(&key(1), &session.token, 999), Ok(session.clone()));
        assert_eq!(Session::verify(&key(1), &session.token, 1_000), Err(SessionError::Expired));
    }

    #[test]
    fn tampered_tokens_and_other_keys_are_refused() {
        let token = Session::issue(&key(1), "acme", true, 1_000, [7; 12]).token;
        assert_eq!(Session::verify(&key(2), &token, 0), Err(SessionError::Invalid));
        for forged in [
            token.replace(".ro.", ".rw."),
            token.replace("acme", "globex"),
            token.replace("1000", "9000"),
            token.replace("v1.", "v2."),
            format!("{token}."),
            String::new(),
            token.replace("BwcH", "BwcI"),
            "v1.acme.rw.1000..".to_owned(),
        ] {
            assert_eq!(Session::verify(&key(1), &forged, 0), Err(SessionError::Invalid), "{forged}");
        }
    }

    #[test]
    fn csrf_tokens_are_tied_to_the_session() {
        let one = Session::issue(&key(1), "acme", false, 1_000, [1; 12]);
        let other = Session::issue(&key(1), "acme", false, 1_000, [2; 12]);
        assert_ne!(one.token, other.token);
        assert!(one.csrf_matches(&key(1), &one.csrf_token(&key(1))));
        assert!(!one.csrf_matches(&key(1), &other.csrf_token(&key(1))));
        assert!(!one.csrf_matches(&key(2), &one.csrf_token(&key(1))));
        assert!(!one.csrf_matches(&key(1), ""));
        assert!(!one.csrf_matches(&key(1), "not base64!"));
    }
}
