//! Secrets at rest, the part both backends share: sealing a subscription's secrets where it is
//! written and opening them where it is read ([`seal_subscription`], [`open_subscription`]),
//! the start-up check and migration ([`prepare`]: refuse values no configured key opens, seal
//! plaintext ones), and `rotate-master-key` ([`rotate_master_key`]). The format and the key
//! are `crate::secrets`'; what is stored where is each backend's ([`SealedSecrets`]).
//!
//! Everything above the store sees plaintext: the domain [`Subscription`] a backend returns
//! always holds opened secrets, and the one it is given is sealed on the way in.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::{RetiredSecret, SigningSecret, Subscription};
use crate::secrets::{OpenError, SecretField, SecretKeys, StoredForm};
use crate::store::{PgStore, SledStore, StoreError, StoreOptions};

/// `subscription` as storage keeps it: its secrets sealed under the sealing key of `keys`
/// (unchanged without one). Every seal takes a fresh nonce.
pub(crate) fn seal_subscription(keys: &SecretKeys, subscription: &Subscription) -> Subscription {
    let id = subscription.id.as_str();
    let mut sealed = subscription.clone();
    sealed.secret = SigningSecret::from(keys.seal(id, SecretField::Secret, subscription.secret.expose()));
    sealed.retired_secret = subscription.retired_secret.as_ref().map(|retired| RetiredSecret {
        secret: SigningSecret::from(keys.seal(id, SecretField::RetiredSecret, retired.secret.expose())),
        valid_until: retired.valid_until,
    });
    sealed
}

/// A subscription as storage kept it, with its secrets opened. A value no key of `keys`
/// opens is [`StoreError::MasterKey`] (sealed under another key) or [`StoreError::Corrupt`]
/// (malformed, altered, or copied from another subscription).
pub(crate) fn open_subscription(
    keys: &SecretKeys,
    mut stored: Subscription,
) -> Result<Subscription, StoreError> {
    let id = stored.id.to_string();
    let open = |field: SecretField, value: &SigningSecret| {
        keys.open(&id, field, value.expose())
            .map(SigningSecret::from)
            .map_err(|err| open_error(&id, field, err))
    };
    stored.secret = open(SecretField::Secret, &stored.secret)?;
    if let Some(retired) = &mut stored.retired_secret {
        retired.secret = open(SecretField::RetiredSecret, &retired.secret)?;
    }
    Ok(stored)
}

fn open_error(id: &str, field: SecretField, err: OpenError) -> StoreError {
    let message = format!("the {} of subscription {id} does not open: {err}", field.as_str());
    match err {
        OpenError::UnknownKey { .. } => StoreError::MasterKey(message),
        OpenError::Malformed | OpenError::Forged { .. } => StoreError::Corrupt(message),
    }
}

/// True when every stored secret of `stored` (as read, not opened) is kept as `keys` would
/// write it now; otherwise a migration rewrites it.
pub(crate) fn is_current(keys: &SecretKeys, stored: &Subscription) -> bool {
    keys.is_current(stored.secret.expose())
        && stored.retired_secret.as_ref().is_none_or(|retired| keys.is_current(retired.secret.expose()))
}

/// How the stored secret values are kept: a census taken before anything is migrated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SecretCensus {
    /// Subscriptions whose stored values were counted.
    pub subscriptions: usize,
    /// Values stored in plaintext.
    pub plaintext: usize,
    /// Values sealed, by the id of the key they are sealed under.
    pub sealed: BTreeMap<String, usize>,
    /// Values that start with `enc:` and are not well-formed (counted, never migrated).
    pub malformed: usize,
}

impl SecretCensus {
    /// Counts the stored values of one subscription (as read, not opened): its secret and
    /// retired secret.
    pub(crate) fn count(&mut self, secret: &str, retired_secret: Option<&str>) {
        self.subscriptions += 1;
        for value in std::iter::once(secret).chain(retired_secret) {
            match crate::secrets::stored_form(value) {
                StoredForm::Plaintext => self.plaintext += 1,
                StoredForm::Sealed { key_id } => *self.sealed.entry(key_id.to_owned()).or_default() += 1,
                StoredForm::Malformed => self.malformed += 1,
            }
        }
    }
}

/// What a backend offers for the start-up check, the migration and the rotation. Both walk
/// every subscription; neither is on a request path.
pub(crate) trait SealedSecrets {
    /// How the stored secrets are kept, read without opening them.
    fn secret_census(&self) -> Result<SecretCensus, StoreError>;

    /// Rewrites every subscription whose stored secrets are not kept as the store's keys would
    /// write them now (plaintext, or sealed under another key the store opens), each in a
    /// transaction of its own that re-reads it (a concurrent write is never lost), durable on
    /// return. Idempotent: a second run rewrites nothing. Returns how many it rewrote.
    fn reseal_secrets(&self) -> Result<usize, StoreError>;
}

/// The start-up rule, before a store is used: refuses values no configured key opens (naming
/// the key ids they need), then, with a sealing key, seals every plaintext value (logged with a
/// count); without one, warns once that secrets are stored unencrypted.
pub(crate) fn prepare(store: &dyn SealedSecrets, keys: &SecretKeys) -> Result<(), StoreError> {
    let census = store.secret_census()?;
    let configured = match keys.sealing_key() {
        Some(key) => format!("the configured [secrets] key_file holds master key {}", key.id()),
        None => "no [secrets] key_file is configured".to_owned(),
    };
    refuse_unknown_keys(&census, keys, &configured)?;
    match keys.sealing_key() {
        None => tracing::warn!(
            plaintext = census.plaintext,
            "subscription secrets are stored unencrypted; set [secrets] key_file to encrypt them at rest"
        ),
        Some(key) => {
            let stale = census.plaintext
                + census.sealed.iter().filter(|(id, _)| *id != key.id()).map(|(_, n)| n).sum::<usize>();
            if stale > 0 {
                let rewritten = store.reseal_secrets()?;
                tracing::info!(
                    subscriptions = rewritten,
                    key_id = key.id(),
                    "sealed the stored subscription secrets under the master key (copies written before may remain in free space until it is reused: rotate the subscriptions' secrets to retire them)"
                );
            } else {
                tracing::info!(
                    key_id = key.id(),
                    subscriptions = census.subscriptions,
                    "subscription secrets are encrypted at rest"
                );
            }
        }
    }
    Ok(())
}

/// [`StoreError::MasterKey`] when some stored value is sealed under a key `keys` cannot open,
/// naming the key ids needed; `configured` says which keys there are, in the operator's words.
fn refuse_unknown_keys(census: &SecretCensus, keys: &SecretKeys, configured: &str) -> Result<(), StoreError> {
    let unknown: Vec<&str> = census.sealed.keys().map(String::as_str).filter(|id| !keys.knows(id)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(StoreError::MasterKey(format!(
        "stored subscription secrets are sealed under master key {}, but {configured}: point [secrets] key_file at the key file with that id (or restore it); nothing was changed",
        unknown.join(" and ")
    )))
}

/// What `rotate-master-key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Subscriptions rewritten under the new key (0 on a re-run that found nothing to do).
    pub rewritten: usize,
    /// Subscriptions in storage.
    pub subscriptions: usize,
    /// The new key's id.
    pub key_id: String,
}

/// Re-seals every stored secret under the sealing key of `options.secrets` (built with
/// [`SecretKeys::rotating`]: it opens values sealed under the old or the new key, so a run
/// interrupted half-way is finished by running it again). The daemon must be stopped: sled's
/// lock makes sure; on PostgreSQL every node must be. Refuses, writing nothing, when some value
/// is sealed under a key it does not have.
pub fn rotate_master_key(
    backend: &crate::config::StorageBackend,
    data_dir: &Path,
    options: &StoreOptions,
) -> Result<RotationReport, StoreError> {
    let Some(key) = options.secrets.sealing_key() else {
        return Err(StoreError::MasterKey("rotate-master-key needs the new key".into()));
    };
    let key_id = key.id().to_owned();
    let store: Box<dyn SealedSecrets> = match backend {
        crate::config::StorageBackend::Sled => {
            if !data_dir.join("db").exists() {
                return Err(StoreError::Io(format!("{} holds no sled database", data_dir.display())));
            }
            Box::new(SledStore::open_with(data_dir, options)?)
        }
        crate::config::StorageBackend::Postgres(config) => Box::new(PgStore::open(config, options)?),
    };
    let census = store.secret_census()?;
    let configured = "neither the config's [secrets] key_file (the current key) nor --new-key-file holds it";
    refuse_unknown_keys(&census, &options.secrets, configured)?;
    let rewritten = store.reseal_secrets()?;
    Ok(RotationReport { rewritten, subscriptions: census.subscriptions, key_id })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secrets::MasterKey;

    fn subscription() -> Subscription {
        let mut subscription = Subscription::new("t", "n", "https://a.example/", vec!["a.b".into()], 1);
        subscription.retired_secret =
            Some(RetiredSecret { secret: SigningSecret::from("whsec_old".to_owned()), valid_until: 9 });
        subscription
    }

    #[test]
    fn a_sealed_subscription_opens_to_the_same_subscription() {
        let keys = SecretKeys::sealing(Arc::new(MasterKey::from_bytes(&[1; 32])));
        let plain = subscription();
        let sealed = seal_subscription(&keys, &plain);
        assert!(sealed.secret.expose().starts_with("enc:v1:"));
        assert!(sealed.retired_secret.as_ref().unwrap().secret.expose().starts_with("enc:v1:"));
        assert!(is_current(&keys, &sealed) && !is_current(&keys, &plain));
        assert_eq!(open_subscription(&keys, sealed.clone()).unwrap(), plain);

        // The two fields cannot be swapped, nor a value moved to another subscription.
        let mut swapped = sealed.clone();
        swapped.secret = sealed.retired_secret.as_ref().unwrap().secret.clone();
        assert!(matches!(open_subscription(&keys, swapped), Err(StoreError::Corrupt(_))));
        let mut moved = subscription();
        moved.secret = sealed.secret.clone();
        assert!(matches!(open_subscription(&keys, moved), Err(StoreError::Corrupt(_))));

        // Without the key: a clear error naming it.
        let Err(StoreError::MasterKey(message)) = open_subscription(&SecretKeys::plaintext(), sealed) else {
            panic!("opened without a key")
        };
        assert!(message.contains(keys.sealing_key().unwrap().id()), "{message}");
    }

    #[test]
    fn the_census_counts_each_value_and_unknown_keys_are_refused_by_id() {
        let one = SecretKeys::sealing(Arc::new(MasterKey::from_bytes(&[1; 32])));
        let two = SecretKeys::sealing(Arc::new(MasterKey::from_bytes(&[2; 32])));
        let mut census = SecretCensus::default();
        let count = |census: &mut SecretCensus, s: &Subscription| {
            census.count(s.secret.expose(), s.retired_secret.as_ref().map(|r| r.secret.expose()))
        };
        count(&mut census, &subscription());
        count(&mut census, &seal_subscription(&one, &subscription()));
        let one_id = one.sealing_key().unwrap().id().to_owned();
        assert_eq!(census.subscriptions, 2);
        assert_eq!(census.plaintext, 2);
        assert_eq!(census.sealed, BTreeMap::from([(one_id.clone(), 2)]));
        assert!(refuse_unknown_keys(&census, &one, "").is_ok());
        for keys in [two, SecretKeys::plaintext()] {
            let Err(StoreError::MasterKey(message)) = refuse_unknown_keys(&census, &keys, "") else {
                panic!()
            };
            assert!(message.contains(&one_id), "{message}");
        }
    }
}
