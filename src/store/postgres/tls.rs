//! TLS to the database server, set in `[storage] url` in libpq's own words: `sslmode` and
//! `sslrootcert` (PostgreSQL documentation, "SSL Support", 34.19 in the PostgreSQL 15 manual).
//!
//! | `sslmode` | here |
//! | --- | --- |
//! | absent, `disable`, `allow`, `prefer` | no TLS |
//! | `require`, `verify-ca`, `verify-full` | TLS, the server's certificate verified as libpq's `verify-full` does (chain and host name) |
//!
//! Stricter than libpq where they differ: libpq's `prefer` tries TLS without verifying anything
//! (an active attacker can downgrade it), and its `require` and `verify-ca` do not check the
//! host name; here an encrypted connection is always a verified one. The certificate is verified
//! against `sslrootcert` (a PEM file of CA certificates, e.g. a cloud provider's bundle) or, when
//! it is not given, the Mozilla roots (`webpki-roots`). Client certificates (`sslcert`, `sslkey`)
//! are not supported: authenticate with a password (in `ATENDER_STORAGE_URL`).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// How a daemon connects: the driver's settings, and the TLS connector every connection uses
/// (it only encrypts when the settings say `SslMode::Require`).
#[derive(Clone)]
pub(super) struct Connection {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// Whether connections are encrypted.
    pub encrypted: bool,
}

/// Reads `url` (a `postgres://` URL, or libpq's `key=value` form) with its `sslmode` and
/// `sslrootcert`. Errors name what is wrong: an unknown `sslmode`, an unreadable `sslrootcert`
/// or one with no certificate in it, a URL the driver refuses (the password is never shown).
pub(super) fn connection(url: &str) -> Result<Connection, StoreError> {
    let invalid = |what: String| StoreError::Io(format!("{}: {what}", crate::config::redact_password(url)));
    let (driver_url, mode, root_cert) = split_tls_options(url).map_err(invalid)?;
    let mut config: tokio_postgres::Config = driver_url.parse().map_err(|err| invalid(format!("{err}")))?;
    let encrypted = match mode.as_deref() {
        None => config.get_ssl_mode() == SslMode::Require,
        Some("disable" | "allow" | "prefer") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(other) => {
            return Err(invalid(format!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )))
        }
    };
    config.ssl_mode(if encrypted { SslMode::Require } else { SslMode::Disable });
    let roots = match root_cert {
        Some(path) => certificates(Path::new(&path)).map_err(invalid)?,
        None => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(format!("TLS set-up: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connection { config, tls: MakeRustlsConnect::new(client), encrypted })
}

/// `url` without `sslmode` and `sslrootcert` (which the driver reads differently or not at
/// all), and their values. A `key=value` string is passed on as it is.
fn split_tls_options(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok((url.to_owned(), None, None));
    }
    let mut parsed = url::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
    let (mut mode, mut root_cert) = (None, None);
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(key, value)| match key.as_ref() {
            "sslmode" => {
                mode = Some(value.into_owned());
                None
            }
            "sslrootcert" => {
                root_cert = Some(value.into_owned());
                None
            }
            _ => Some((key.into_owned(), value.into_owned())),
        })
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), mode, root_cert))
}

/// The CA certificates of a PEM file.
fn certificates(path: &Path) -> Result<rustls::RootCertStore, String> {
    let unreadable = |err: &dyn std::fmt::Display| format!("sslrootcert {}: {err}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|err| unreadable(&err))? {
        let certificate = certificate.map_err(|err| unreadable(&err))?;
        roots.add(certificate).map_err(|err| unreadable(&err))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in it (a PEM file of CA certificates is expected)"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_the_url_and_the_rest_is_kept() {
        let (url, mode, root) = split_tls_options(
            "postgres://u:p@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p@db.example:5432/app?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (url, mode, root) = split_tls_options("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!((url.as_str(), mode.as_deref(), root), ("postgres://u@h/db", Some("disable"), None));
    }

    #[test]
    fn only_verifying_modes_encrypt_and_unknown_ones_are_refused() {
        for (mode, encrypted) in
            [("", false), ("disable", false), ("prefer", false), ("require", true), ("verify-full", true)]
        {
            let url = format!("postgres://u@h/db?sslmode={mode}");
            let url = if mode.is_empty() { "postgres://u@h/db".to_owned() } else { url };
            let connection = connection(&url).unwrap();
            assert_eq!(connection.encrypted, encrypted, "{mode}");
            let expected = if encrypted { SslMode::Require } else { SslMode::Disable };
            assert_eq!(connection.config.get_ssl_mode(), expected, "{mode}");
        }
        let Err(err) = connection("postgres://u:secret@h/db?sslmode=verify-everything") else { panic!() };
        let text = err.to_string();
        assert!(text.contains("verify-everything") && !text.contains("secret"), "{text}");
    }

    #[test]
    fn a_root_certificate_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in [empty, dir.path().join("missing.pem")] {
            let url = format!("postgres://u@h/db?sslmode=verify-full&sslrootcert={}", path.display());
            let Err(err) = connection(&url) else { panic!("{path:?} accepted") };
            assert!(err.to_string().contains("sslrootcert"), "{err}");
        }
    }
}
