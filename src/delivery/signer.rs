//! Webhook signatures: `X-Atender-Signature` (the guide's recipe) and Standard Webhooks'
//! `webhook-signature`. Pure: secrets come from `model::new_secret`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every subscription secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A secret that cannot key a Standard Webhooks signature. The secret itself is never included:
/// these messages may end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    #[error("secret does not start with whsec_")]
    MissingPrefix,
    #[error("secret is not valid base64 after the whsec_ prefix")]
    InvalidBase64,
    #[error("secret has an empty key after the whsec_ prefix")]
    EmptyKey,
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `X-Atender-Signature`: lowercase hex HMAC-SHA256 of the raw body, keyed by the secret string's
/// bytes with the `whsec_` prefix included (what the integration guide tells users to compute).
pub fn atender_signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), &[body]))
}

/// One Standard Webhooks signature: `v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`,
/// keyed by the base64-decoded part of the secret after `whsec_`.
pub fn standard_webhooks_signature(
    secret: &str,
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> Result<String, SignerError> {
    let key = standard_webhooks_key(secret)?;
    let timestamp = timestamp_secs.to_string();
    let mac = hmac_sha256(&key, &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
    Ok(format!("v1,{}", STANDARD.encode(mac)))
}

/// The `webhook-signature` header value: one space-separated signature per secret, so receivers
/// holding either the old or the new secret verify during a rotation grace period.
pub fn standard_webhooks_header(
    secrets: &[&str],
    msg_id: &str,
    timestamp_secs: i64,
    body: &[u8],
) -> Result<String, SignerError> {
    let signatures = secrets
        .iter()
        .map(|secret| standard_webhooks_signature(secret, msg_id, timestamp_secs, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(signatures.join(" "))
}

fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, SignerError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(SignerError::MissingPrefix)?;
    let key = STANDARD.decode(encoded).map_err(|_| SignerError::InvalidBase64)?;
    if key.is_empty() {
        return Err(SignerError::EmptyKey);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_secret as generate_secret;

    // Golden values computed independently with Python's hmac/hashlib/base64.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn atender_signature_golden() {
        assert_eq!(
            atender_signature(SECRET, BODY),
            "80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"
        );
    }

    #[test]
    fn standard_webhooks_golden() {
        // Also the example published with the Standard Webhooks specification.
        assert_eq!(
            standard_webhooks_signature(SECRET, MSG_ID, TS, BODY).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn header_has_one_signature_per_secret() {
        let second = "whsec_c2Vjb25kLXNlY3JldC1rZXktYnl0ZXM=";
        assert_eq!(
            standard_webhooks_header(&[SECRET, second], MSG_ID, TS, BODY).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= \
             v1,njtgxf66xDm+oHJZbtAxvqy/Bpcy0rGQsU+vk8oLGLo="
        );
        assert_eq!(standard_webhooks_header(&[], MSG_ID, TS, BODY).unwrap(), "");
    }

    #[test]
    fn malformed_secrets_are_errors() {
        let sign = |s| standard_webhooks_signature(s, MSG_ID, TS, BODY);
        assert_eq!(sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(SignerError::MissingPrefix));
        assert_eq!(sign("whsec_not base64!"), Err(SignerError::InvalidBase64));
        assert_eq!(sign("whsec_"), Err(SignerError::EmptyKey));
        assert_eq!(
            standard_webhooks_header(&[SECRET, "bad"], MSG_ID, TS, BODY),
            Err(SignerError::MissingPrefix)
        );
        // Error text never echoes the secret.
        assert!(!SignerError::InvalidBase64.to_string().contains("not base64!"));
    }

    #[test]
    fn generated_secrets_are_well_formed_and_distinct() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        let (a, _) = (a.expose(), b.expose());
        assert_eq!(a.len(), SECRET_PREFIX.len() + 44);
        assert_eq!(standard_webhooks_key(a).unwrap().len(), 32);
    }

    #[test]
    fn standardwebhooks_crate_verifies_our_header() {
        use ureq::http::{HeaderMap, HeaderValue};

        let (old, new) = (generate_secret(), generate_secret());
        let (old, new) = (old.expose(), new.expose());
        let body = br#"{"id":"evt_1","event":"ticket.created","data":{"n":1}}"#;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let header = standard_webhooks_header(&[old, new], "dlv_1", now, body).unwrap();

        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("dlv_1"));
        headers.insert("webhook-timestamp", HeaderValue::from_str(&now.to_string()).unwrap());
        headers.insert("webhook-signature", HeaderValue::from_str(&header).unwrap());

        // A receiver holding either secret accepts; one holding another does not.
        for secret in [old, new] {
            standardwebhooks::Webhook::new(secret).unwrap().verify(body, &headers).unwrap();
        }
        let other = standardwebhooks::Webhook::new(generate_secret().expose()).unwrap();
        assert!(other.verify(body, &headers).is_err());
        assert!(standardwebhooks::Webhook::new(old).unwrap().verify(b"tampered", &headers).is_err());
    }
}
