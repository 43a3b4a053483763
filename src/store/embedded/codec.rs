//! Versioned encoding of stored values: one version byte, then bincode (fixed-width, the
//! `bincode::serialize` flavour, chosen once and forever) of that version's frozen shape.
//!
//! To change a stored struct: copy its current shape here as `...V1`, bump `VERSION` on the
//! live type, and implement [`Versioned::migrate`] to read the old version and convert it
//! (as [`IdempotencyRecord`] does from version 1). Golden bytes pin every version.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::embedded::records::Stored;
use crate::store::embedded::StoreError;

/// A value stored in sled, with the version byte written before it.
pub trait Versioned: Serialize + DeserializeOwned {
    /// Version of the shape this type has today.
    const VERSION: u8;
    /// Name used in corruption errors.
    const NAME: &'static str;

    /// Reads a value stored under an older `version` (the bytes after the version byte).
    /// Types with only one version keep the default, which calls it unknown.
    fn migrate(version: u8, _bytes: &[u8]) -> Result<Self, StoreError> {
        Err(StoreError::Corrupt(format!("{} record has unknown format version {version}", Self::NAME)))
    }
}

/// The remembered answer to a publish with a client idempotency id (version 2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    /// When the id was first accepted (Unix ms): the 24 h window counts from here.
    pub created_at: crate::model::Millis,
    pub event_id: String,
    pub deliveries: u32,
    /// SHA-256 of the event type and canonical data of the first request; `None` for records
    /// stored by version 1, which did not keep it (those never conflict).
    pub fingerprint: Option<[u8; 32]>,
}

/// Version 1 of [`IdempotencyRecord`], frozen: no fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct IdempotencyRecordV1 {
    created_at: crate::model::Millis,
    event_id: String,
    deliveries: u32,
}

impl Versioned for IdempotencyRecord {
    const VERSION: u8 = 2;
    const NAME: &'static str = "idempotency record";

    fn migrate(version: u8, bytes: &[u8]) -> Result<Self, StoreError> {
        match version {
            1 => {
                let old: IdempotencyRecordV1 = deserialize(Self::NAME, bytes)?;
                Ok(IdempotencyRecord {
                    created_at: old.created_at,
                    event_id: old.event_id,
                    deliveries: old.deliveries,
                    fingerprint: None,
                })
            }
            _ => Err(StoreError::Corrupt(format!(
                "{} record has unknown format version {version}",
                Self::NAME
            ))),
        }
    }
}

impl Stored for IdempotencyRecord {
    type Record = IdempotencyRecord;

    fn to_record(&self) -> IdempotencyRecord {
        self.clone()
    }

    fn from_record(record: IdempotencyRecord) -> Result<Self, StoreError> {
        Ok(record)
    }
}

/// The stored bytes of `value`: its record's version byte, then bincode of the record.
pub fn encode<T: Stored>(value: &T) -> Vec<u8> {
    let mut bytes = vec![T::Record::VERSION];
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize_into(&mut bytes, &value.to_record()).expect("bincode serialization of a plain struct");
    bytes
}

/// The value stored as `bytes`, migrated from an older record version when it is one.
/// [`StoreError::Corrupt`] for an empty value, an unknown version or bytes that do not decode.
pub fn decode<T: Stored>(bytes: &[u8]) -> Result<T, StoreError> {
    let record = match bytes.split_first() {
        Some((&version, rest)) if version == T::Record::VERSION => deserialize(T::Record::NAME, rest)?,
        Some((&version, rest)) => T::Record::migrate(version, rest)?,
        None => return Err(StoreError::Corrupt(format!("{} record is empty", T::Record::NAME))),
    };
    T::from_record(record)
}

fn deserialize<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes)
        .map_err(|err| StoreError::Corrupt(format!("{name} record does not decode: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Delivery;

    /// Both versions of the idempotency record: version 1 (no fingerprint) still reads.
    #[test]
    fn golden_bytes_of_both_idempotency_record_versions() {
        let v1 = IdempotencyRecordV1 { created_at: 7, event_id: "evt_1".into(), deliveries: 2 };
        let mut v1_bytes = vec![1];
        bincode::serialize_into(&mut v1_bytes, &v1).unwrap();
        assert_eq!(hex::encode(&v1_bytes), "01070000000000000005000000000000006576745f3102000000");
        let migrated: IdempotencyRecord = decode(&v1_bytes).unwrap();
        assert_eq!(
            migrated,
            IdempotencyRecord { created_at: 7, event_id: "evt_1".into(), deliveries: 2, fingerprint: None }
        );

        let v2 = IdempotencyRecord { fingerprint: Some([0xab; 32]), ..migrated };
        let v2_bytes = encode(&v2);
        assert_eq!(
            hex::encode(&v2_bytes),
            format!("02070000000000000005000000000000006576745f310200000001{}", "ab".repeat(32))
        );
        assert_eq!(decode::<IdempotencyRecord>(&v2_bytes).unwrap(), v2);
        assert!(decode::<IdempotencyRecord>(&[3, 0]).is_err());
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        assert!(decode::<Delivery>(&[]).is_err());
        assert!(decode::<Delivery>(&[9, 1, 2]).is_err());
        assert!(decode::<Delivery>(&[1, 255, 255]).is_err());
    }
}
