//! Subscription secrets at rest: the master key (`[secrets] key_file`) and the sealed text that
//! storage keeps in place of a plaintext signing secret. The one owner of the key and of the
//! format; the storage backends call [`SecretKeys::seal`] and [`SecretKeys::open`] where a
//! subscription is written and read, so everything above `store` only ever sees plaintext
//! [`SigningSecret`](crate::model::SigningSecret)s. No I/O but [`MasterKey::load`].
//!
//! A sealed secret is one line of ASCII text, stored in the same string field or column as a
//! plaintext one (so no stored record changes shape):
//!
//! ```text
//! enc:v1:<key id>:<base64(nonce || ciphertext || tag)>
//! ```
//!
//! - the AEAD is XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03; RustCrypto's
//!   `chacha20poly1305`), with a fresh random 24-byte nonce from the OS CSPRNG for every seal:
//!   192-bit nonces make random ones safe for any number of seals under one key;
//! - the key id is the first 8 bytes, in lowercase hex, of SHA-256 of the 32 key bytes, so a
//!   value sealed under another key is recognised by its id, with a clear error, before any
//!   decryption is tried (`head -c 32 key | sha256sum | cut -c1-16` for a raw key file);
//! - the associated data binds the ciphertext to its subscription and its field
//!   ([`associated_data`]): a sealed value copied to another subscription, or from the
//!   retired-secret field to the current one, does not open;
//! - base64 is the standard alphabet with padding (RFC 4648 §4).
//!
//! A stored value that does not start with `enc:` is plaintext (`whsec_…`): data written
//! before a key was configured, read as it is and sealed by the migration at the next start
//! with a key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Bytes of a master key.
pub const KEY_LEN: usize = 32;

/// Bytes of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;

/// Bytes of a Poly1305 tag.
const TAG_LEN: usize = 16;

/// What every sealed value starts with; a stored value without it is plaintext.
pub const SEALED_PREFIX: &str = "enc:";

/// The prefix of the one sealed format there is, version 1.
const V1_PREFIX: &str = "enc:v1:";

/// Characters of a key id: 8 bytes in hex.
pub const KEY_ID_LEN: usize = 16;

/// The master key: an XChaCha20-Poly1305 key and its id. The key bytes are never printed
/// (`Debug` shows the id only) and are wiped from memory when the key is dropped (the cipher
/// zeroizes its key on drop; the bytes read from the file are zeroized too).
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the master key file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    /// The content is none of the accepted forms; `len` is its length in bytes (the content
    /// itself is never printed).
    #[error(
        "the master key file {path} must hold a 32-byte key: exactly 32 raw bytes, 64 hex characters, \
         or base64 of 32 bytes (a trailing newline allowed); it holds {len} bytes that are none of these \
         (make one with `atender-webhooks master-keygen --out FILE` or `openssl rand -hex 32 > FILE`)"
    )]
    Format { path: PathBuf, len: usize },
    #[error("cannot write the master key file {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> MasterKey {
        let digest = Sha256::digest(bytes);
        MasterKey { cipher: XChaCha20Poly1305::new(bytes.into()), id: hex::encode(&digest[..KEY_ID_LEN / 2]) }
    }

    /// A new random key from the OS CSPRNG, and its file content (64 lowercase hex characters
    /// and a newline).
    pub fn generate() -> (MasterKey, Zeroizing<String>) {
        let bytes = Zeroizing::new(crate::model::random_bytes::<KEY_LEN>());
        let text = Zeroizing::new(format!("{}\n", hex::encode(*bytes)));
        (MasterKey::from_bytes(&bytes), text)
    }

    /// Reads the key file at `path`. Accepted contents: exactly 32 raw bytes (`head -c 32
    /// /dev/urandom`), 64 hex characters (`openssl rand -hex 32`), or standard base64 of 32
    /// bytes (`openssl rand -base64 32`), the last two with an optional trailing `\n` or `\r\n`.
    /// A 32-byte file is always taken as raw bytes.
    pub fn load(path: &Path) -> Result<MasterKey, KeyFileError> {
        let content = Zeroizing::new(
            std::fs::read(path).map_err(|error| KeyFileError::Read { path: path.to_owned(), error })?,
        );
        parse_key_file(&content)
            .map(|bytes| MasterKey::from_bytes(&bytes))
            .ok_or(KeyFileError::Format { path: path.to_owned(), len: content.len() })
    }

    /// Writes a new random key to `path` (64 hex characters and a newline), created with mode
    /// 0600 and never over an existing file, and fsyncs it.
    pub fn create_file(path: &Path) -> Result<MasterKey, KeyFileError> {
        use std::io::Write as _;
        let (key, text) = MasterKey::generate();
        let failed = |error| KeyFileError::Write { path: path.to_owned(), error };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(failed)?;
        file.write_all(text.as_bytes()).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        Ok(key)
    }

    /// The key id: the first 8 bytes of SHA-256 of the key, 16 lowercase hex characters.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `plaintext` sealed for `field` of `subscription_id`, with a fresh random nonce.
    pub fn seal(&self, subscription_id: &str, field: SecretField, plaintext: &str) -> String {
        self.seal_with_nonce(subscription_id, field, plaintext, &crate::model::random_bytes::<NONCE_LEN>())
    }

    /// [`MasterKey::seal`] with a given nonce (for golden vectors; never reuse a nonce).
    fn seal_with_nonce(
        &self,
        subscription_id: &str,
        field: SecretField,
        plaintext: &str,
        nonce: &[u8; NONCE_LEN],
    ) -> String {
        let aad = associated_data(subscription_id, field);
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(nonce), Payload { msg: plaintext.as_bytes(), aad: &aad })
            // Encryption fails only for messages beyond 256 GiB.
            .expect("XChaCha20-Poly1305 seals a short secret");
        let mut payload = Vec::with_capacity(NONCE_LEN + sealed.len());
        payload.extend_from_slice(nonce);
        payload.extend_from_slice(&sealed);
        format!("{V1_PREFIX}{}:{}", self.id, base64::engine::general_purpose::STANDARD.encode(payload))
    }

    /// The plaintext of a value sealed under this key for `field` of `subscription_id`.
    fn open_sealed(
        &self,
        subscription_id: &str,
        field: SecretField,
        payload: &str,
    ) -> Result<String, OpenError> {
        let payload =
            base64::engine::general_purpose::STANDARD.decode(payload).map_err(|_| OpenError::Malformed)?;
        if payload.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        let aad = associated_data(subscription_id, field);
        let forged = || OpenError::Forged { key_id: self.id.clone() };
        let plaintext = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
            .map_err(|_| forged())?;
        String::from_utf8(plaintext).map_err(|_| forged())
    }
}

/// The content of a key file as key bytes, or `None` when it is none of the accepted forms.
fn parse_key_file(content: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if content.len() == KEY_LEN {
        key.copy_from_slice(content);
        return Some(key);
    }
    let text = content.strip_suffix(b"\n").map_or(content, |rest| rest.strip_suffix(b"\r").unwrap_or(rest));
    if text.len() == 2 * KEY_LEN {
        hex::decode_to_slice(text, key.as_mut_slice()).ok()?;
        return Some(key);
    }
    let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text).ok()?);
    if decoded.len() != KEY_LEN {
        return None;
    }
    key.copy_from_slice(&decoded);
    Some(key)
}

/// Which secret of a subscription a sealed value holds; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretField {
    /// The current signing secret.
    Secret,
    /// The secret retired by a rotation with grace.
    RetiredSecret,
}

impl SecretField {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretField::Secret => "secret",
            SecretField::RetiredSecret => "retired_secret",
        }
    }
}

/// The associated data of a sealed value: `atender-webhooks/subscription-secret/v1`, NUL, the
/// subscription id, NUL, the field name. Authenticated, not stored.
pub fn associated_data(subscription_id: &str, field: SecretField) -> Vec<u8> {
    let mut aad = b"atender-webhooks/subscription-secret/v1\0".to_vec();
    aad.extend_from_slice(subscription_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_str().as_bytes());
    aad
}

/// How a stored secret value is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredForm<'a> {
    /// Not sealed (no `enc:` prefix).
    Plaintext,
    /// Sealed under the key with this id (`enc:v1:<id>:…`).
    Sealed { key_id: &'a str },
    /// Starts with `enc:` but is not a well-formed version-1 value.
    Malformed,
}

/// How `stored` is kept: plaintext, sealed (under which key), or malformed.
pub fn stored_form(stored: &str) -> StoredForm<'_> {
    if !stored.starts_with(SEALED_PREFIX) {
        return StoredForm::Plaintext;
    }
    let Some(rest) = stored.strip_prefix(V1_PREFIX) else { return StoredForm::Malformed };
    match rest.split_once(':') {
        Some((key_id, payload))
            if key_id.len() == KEY_ID_LEN
                && key_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && !payload.is_empty() =>
        {
            StoredForm::Sealed { key_id }
        }
        _ => StoredForm::Malformed,
    }
}

/// Why a stored secret does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed under a key that is not configured.
    #[error("it is sealed under master key {key_id}, which is not configured")]
    UnknownKey { key_id: String },
    /// Starts with `enc:` but is not `enc:v1:<16 hex>:<base64 of at least 40 bytes>`.
    #[error("it starts with \"enc:\" but is not a well-formed sealed value")]
    Malformed,
    /// The key is right but the value does not authenticate: altered, or copied from another
    /// subscription or field.
    #[error(
        "it does not authenticate under master key {key_id} (altered, or copied from another subscription or field)"
    )]
    Forged { key_id: String },
}

/// The keys storage seals and opens secrets with: at most one to seal new values with, and
/// any number to open with (the sealing key among them). Cheap to clone. `Debug` shows key ids.
#[derive(Clone, Default)]
pub struct SecretKeys {
    seal_with: Option<Arc<MasterKey>>,
    open_with: Vec<Arc<MasterKey>>,
}

impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeys")
            .field("seal_with", &self.seal_with.as_ref().map(|key| key.id()))
            .field("open_with", &self.open_with.iter().map(|key| key.id()).collect::<Vec<_>>())
            .finish()
    }
}

impl SecretKeys {
    /// No key: secrets are written in plaintext; sealed values do not open.
    pub fn plaintext() -> SecretKeys {
        SecretKeys::default()
    }

    /// Seals under `key` and opens what it sealed (the daemon with `[secrets] key_file`).
    pub fn sealing(key: Arc<MasterKey>) -> SecretKeys {
        SecretKeys { seal_with: Some(key.clone()), open_with: vec![key] }
    }

    /// Seals under `to` and opens what `to` or `from` sealed (`rotate-master-key`).
    pub fn rotating(from: Option<Arc<MasterKey>>, to: Arc<MasterKey>) -> SecretKeys {
        let mut open_with = vec![to.clone()];
        open_with.extend(from.filter(|from| from.id() != to.id()));
        SecretKeys { seal_with: Some(to), open_with }
    }

    /// The key new values are sealed under, if any.
    pub fn sealing_key(&self) -> Option<&MasterKey> {
        self.seal_with.as_deref()
    }

    /// True when a value sealed under `key_id` opens.
    pub fn knows(&self, key_id: &str) -> bool {
        self.open_with.iter().any(|key| key.id() == key_id)
    }

    /// What storage keeps for `plaintext` in `field` of `subscription_id`: sealed under the
    /// sealing key, or `plaintext` itself without one.
    pub fn seal(&self, subscription_id: &str, field: SecretField, plaintext: &str) -> String {
        match &self.seal_with {
            Some(key) => key.seal(subscription_id, field, plaintext),
            None => plaintext.to_owned(),
        }
    }

    /// The plaintext of a stored value: a plaintext value as it is, a sealed one opened with
    /// the key its id names.
    pub fn open(&self, subscription_id: &str, field: SecretField, stored: &str) -> Result<String, OpenError> {
        match stored_form(stored) {
            StoredForm::Plaintext => Ok(stored.to_owned()),
            StoredForm::Malformed => Err(OpenError::Malformed),
            StoredForm::Sealed { key_id } => {
                let key = self
                    .open_with
                    .iter()
                    .find(|key| key.id() == key_id)
                    .ok_or_else(|| OpenError::UnknownKey { key_id: key_id.to_owned() })?;
                key.open_sealed(subscription_id, field, &stored[V1_PREFIX.len() + KEY_ID_LEN + 1..])
            }
        }
    }

    /// True when `stored` is kept as these keys would write it now: sealed under the sealing
    /// key, or plaintext when there is none. Anything else is rewritten by a migration.
    pub fn is_current(&self, stored: &str) -> bool {
        match (&self.seal_with, stored_form(stored)) {
            (None, form) => form == StoredForm::Plaintext,
            (Some(key), StoredForm::Sealed { key_id }) => key.id() == key_id,
            (Some(_), _) => false,
        }
    }
}

/// The keys of `[secrets] key_file`: sealing under the key the file holds, or none without a
/// file. Logs the key id (never the key), and a warning when the file may be read by others.
pub fn configured_keys(key_file: Option<&Path>) -> Result<SecretKeys, KeyFileError> {
    let Some(path) = key_file else { return Ok(SecretKeys::plaintext()) };
    let key = MasterKey::load(path)?;
    if let Some(warning) = permission_warning(path) {
        tracing::warn!("{warning}");
    }
    tracing::info!(key_id = key.id(), key_file = %path.display(), "master key loaded");
    Ok(SecretKeys::sealing(Arc::new(key)))
}

/// A warning when the key file at `path` may be read by its group or by others (any of the
/// mode bits 0o077), or `None`. systemd's `LoadCredential=` makes credentials 0400.
pub fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the master key file {} may be read by its group or others (mode {mode:04o}); `chmod 600` it",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBSCRIPTION: &str = "wh_01KB0000000000000000000001";
    const OTHER: &str = "wh_01KB0000000000000000000002";
    const SECRET: &str = "whsec_UXR9a8mJtkpuFbG5Vw9f6w4wptiqPpISJWfZfQedr4A=";

    fn key(byte: u8) -> Arc<MasterKey> {
        Arc::new(MasterKey::from_bytes(&[byte; KEY_LEN]))
    }

    /// Pins the format: key id, layout, associated data and the AEAD itself. If this fails,
    /// values stored by an earlier build no longer open. The expected value was computed
    /// independently, in Python: HChaCha20 by hand, then the `cryptography` package's
    /// ChaCha20Poly1305 with the derived key (draft-irtf-cfrg-xchacha-03 §2.3).
    #[test]
    fn golden_vector_of_a_sealed_secret() {
        let key = MasterKey::from_bytes(&[7; KEY_LEN]);
        // SHA-256 of 32 bytes 0x07, first 8 bytes.
        assert_eq!(key.id(), &hex::encode(Sha256::digest([7u8; KEY_LEN]))[..16]);
        let sealed = key.seal_with_nonce(SUBSCRIPTION, SecretField::Secret, SECRET, &[9; NONCE_LEN]);
        assert_eq!(sealed, GOLDEN_SEALED);
        let keys = SecretKeys::sealing(Arc::new(key));
        assert_eq!(keys.open(SUBSCRIPTION, SecretField::Secret, GOLDEN_SEALED).unwrap(), SECRET);
    }

    const GOLDEN_SEALED: &str = "enc:v1:4bb06f8e4e3a7715:CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJyRqR7x/1LDqmK2kEBTlzgFqG8fgHVMuWn+suK+dRIy/rWxCrm9j/A2ov2oZtutizFrZk+SUjWxYO9dIfhwCRsHt0";

    /// The XChaCha20-Poly1305 test vector of draft-irtf-cfrg-xchacha-03, appendix A.3.1, through
    /// the same crate and calls as [`MasterKey::seal`]: the AEAD is the standard one.
    #[test]
    fn the_aead_is_xchacha20_poly1305_of_the_draft() {
        let key: [u8; 32] = hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .unwrap()
            .try_into()
            .unwrap();
        let nonce = hex::decode("404142434445464748494a4b4c4d4e4f5051525354555657").unwrap();
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let sealed = XChaCha20Poly1305::new(&key.into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .unwrap();
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        assert_eq!(hex::encode(tag), "c0875924c1c7987947deafd8780acf49");
        assert!(hex::encode(ciphertext)
            .starts_with("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"));
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_subscription_and_field_and_key() {
        let keys = SecretKeys::sealing(key(1));
        let sealed = keys.seal(SUBSCRIPTION, SecretField::Secret, SECRET);
        assert!(sealed.starts_with(&format!("enc:v1:{}:", key(1).id())), "{sealed}");
        assert!(!sealed.contains("UXR9a8mJ"), "no plaintext in {sealed}");
        assert_eq!(keys.open(SUBSCRIPTION, SecretField::Secret, &sealed).unwrap(), SECRET);
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(keys.seal(SUBSCRIPTION, SecretField::Secret, SECRET), sealed);

        let forged = Err(OpenError::Forged { key_id: key(1).id().to_owned() });
        assert_eq!(keys.open(OTHER, SecretField::Secret, &sealed), forged);
        assert_eq!(keys.open(SUBSCRIPTION, SecretField::RetiredSecret, &sealed), forged);
        // One flipped character of the payload.
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            keys.open(SUBSCRIPTION, SecretField::Secret, std::str::from_utf8(&altered).unwrap()),
            forged
        );

        // Another key: recognised by its id, no decryption tried.
        let other = SecretKeys::sealing(key(2));
        assert_eq!(
            other.open(SUBSCRIPTION, SecretField::Secret, &sealed),
            Err(OpenError::UnknownKey { key_id: key(1).id().to_owned() })
        );
        assert_eq!(
            SecretKeys::plaintext().open(SUBSCRIPTION, SecretField::Secret, &sealed),
            Err(OpenError::UnknownKey { key_id: key(1).id().to_owned() })
        );
    }

    #[test]
    fn plaintext_passes_through_and_malformed_values_are_errors() {
        let keys = SecretKeys::sealing(key(1));
        assert_eq!(keys.open(SUBSCRIPTION, SecretField::Secret, SECRET).unwrap(), SECRET);
        assert_eq!(SecretKeys::plaintext().seal(SUBSCRIPTION, SecretField::Secret, SECRET), SECRET);
        let id = key(1).id().to_owned();
        for malformed in [
            "enc:".to_owned(),
            "enc:v2:0011223344556677:AAAA".to_owned(),
            format!("enc:v1:{id}:"),
            format!("enc:v1:{id}"),
            "enc:v1:ABCDEF0123456789:AAAA".to_owned(),
            format!("enc:v1:{id}:not base64!"),
            format!("enc:v1:{id}:AAAA"),
        ] {
            assert_eq!(
                keys.open(SUBSCRIPTION, SecretField::Secret, &malformed),
                Err(OpenError::Malformed),
                "{malformed}"
            );
        }
    }

    #[test]
    fn rotating_keys_open_both_and_seal_under_the_new_one() {
        let old = SecretKeys::sealing(key(1));
        let sealed_old = old.seal(SUBSCRIPTION, SecretField::Secret, SECRET);
        let rotating = SecretKeys::rotating(Some(key(1)), key(2));
        let sealed_new = rotating.seal(SUBSCRIPTION, SecretField::Secret, SECRET);
        assert_eq!(rotating.open(SUBSCRIPTION, SecretField::Secret, &sealed_old).unwrap(), SECRET);
        assert_eq!(rotating.open(SUBSCRIPTION, SecretField::Secret, &sealed_new).unwrap(), SECRET);
        assert!(!rotating.is_current(&sealed_old));
        assert!(rotating.is_current(&sealed_new));
        assert!(!rotating.is_current(SECRET));
        assert!(SecretKeys::plaintext().is_current(SECRET));
        assert!(!SecretKeys::plaintext().is_current(&sealed_new));
        assert!(rotating.knows(key(1).id()) && rotating.knows(key(2).id()) && !rotating.knows(key(3).id()));
        // The same key twice is one key.
        assert_eq!(SecretKeys::rotating(Some(key(2)), key(2)).open_with.len(), 1);
    }

    #[test]
    fn key_files_in_every_accepted_form_read_as_the_same_key() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7 + 1);
        let hex_text = hex::encode(bytes);
        let base64_text = base64::engine::general_purpose::STANDARD.encode(bytes);
        let expected = MasterKey::from_bytes(&bytes).id().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let forms: [Vec<u8>; 7] = [
            bytes.to_vec(),
            hex_text.clone().into_bytes(),
            format!("{hex_text}\n").into_bytes(),
            format!("{hex_text}\r\n").into_bytes(),
            hex_text.to_uppercase().into_bytes(),
            base64_text.clone().into_bytes(),
            format!("{base64_text}\n").into_bytes(),
        ];
        for (i, content) in forms.iter().enumerate() {
            let path = dir.path().join(format!("key{i}"));
            std::fs::write(&path, content).unwrap();
            assert_eq!(MasterKey::load(&path).unwrap().id(), expected, "form {i}");
        }
    }

    #[test]
    fn a_bad_key_file_is_a_clear_error_that_never_shows_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let bad: [Vec<u8>; 7] = [
            Vec::new(),
            vec![1; 31],
            vec![1; 33],
            "zz".repeat(32).into_bytes(),
            format!("{}\n\n", "ab".repeat(32)).into_bytes(),
            base64::engine::general_purpose::STANDARD.encode([1u8; 16]).into_bytes(),
            b"whsec_notakeynotakeynotakeynotakey".to_vec(),
        ];
        for (i, content) in bad.iter().enumerate() {
            let path = dir.path().join(format!("bad{i}"));
            std::fs::write(&path, content).unwrap();
            let err = MasterKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyFileError::Format { len, .. } if len == content.len()), "{err}");
            let message = err.to_string();
            assert!(message.contains("32 raw bytes, 64 hex characters"), "{message}");
            assert!(!message.contains("notakey") && !message.contains("zzzz"), "{message}");
        }
        let missing = MasterKey::load(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(missing, KeyFileError::Read { .. }), "{missing}");
    }

    #[test]
    fn a_created_key_file_is_private_reads_back_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::create_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(MasterKey::load(&path).unwrap().id(), key.id());
        assert_eq!(permission_warning(&path), None);
        assert!(matches!(MasterKey::create_file(&path), Err(KeyFileError::Write { .. })));
        assert_eq!(MasterKey::load(&path).unwrap().id(), key.id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(permission_warning(&path).unwrap().contains("mode 0644"));
    }

    #[test]
    fn debug_shows_the_key_id_and_never_the_key() {
        let key = Arc::new(MasterKey::from_bytes(&[0xab; KEY_LEN]));
        let shown = format!("{key:?} {:?}", SecretKeys::sealing(key.clone()));
        assert!(shown.contains(MasterKey::from_bytes(&[0xab; KEY_LEN]).id()), "{shown}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    }
}
