//! The configuration file: its raw serde form (exactly the TOML a person writes, unknown keys
//! rejected, defaults filled in) and the validated, typed [`Config`] the rest of the daemon uses.
//!
//! Parsing happens in two stages, like ripgrep's flags: [`RawConfig`] stays as close to the file
//! as possible, and [`Config::from_raw`] checks every value and names the key that is wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::event_schema::DataSchema;
use crate::store::CacheSizes;

/// The development default used by `serve` without `--config`: loopback only, data in
/// `./atender-data`, and one demo tenant whose key is generated at start-up.
pub const DEVELOPMENT_DEFAULT: &str = r#"
listen = "127.0.0.1:8080"
data_dir = "./atender-data"

[delivery]
# Local development: let subscriptions point at http:// and loopback receivers.
allow_http = true
allow_private_targets = true

[[tenants]]
id = "demo"
webhooks_enabled = true
max_webhooks = 25
"#;

/// The scopes an API key can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    WebhooksRead,
    WebhooksWrite,
    EventsWrite,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::WebhooksRead, Scope::WebhooksWrite, Scope::EventsWrite];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::WebhooksRead => "webhooks:read",
            Scope::WebhooksWrite => "webhooks:write",
            Scope::EventsWrite => "events:write",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

// ---------------------------------------------------------------------------------------------
// Raw form: what the file says.
// ---------------------------------------------------------------------------------------------

/// The configuration file as written. Every field has a default except the tenants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory holding the sled database.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `human` or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub events: RawEvents,
    #[serde(default)]
    pub portal: RawPortal,
    #[serde(default)]
    pub secrets: RawSecrets,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}

/// `[api]`: request size limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    /// Largest accepted body for `POST /v1/events` and `/v1/events/batch`, in bytes.
    pub max_event_body_bytes: u64,
    /// Largest accepted body for the `/v1/webhooks` endpoints, in bytes.
    pub max_subscription_body_bytes: u64,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi { max_event_body_bytes: 1024 * 1024, max_subscription_body_bytes: 64 * 1024 }
    }
}

/// `[delivery]`: the outbound side.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDelivery {
    pub workers: u32,
    pub timeout: String,
    pub max_retry_delay: String,
    pub max_in_flight_per_subscription: u32,
    pub adaptive_concurrency: bool,
    pub initial_in_flight_per_subscription: u32,
    pub allow_http: bool,
    pub allow_private_targets: bool,
    pub hold_retention: String,
    pub delivery_retention: String,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            workers: 64,
            timeout: "10s".into(),
            max_retry_delay: "6h".into(),
            max_in_flight_per_subscription: 32,
            adaptive_concurrency: true,
            initial_in_flight_per_subscription: 4,
            allow_http: false,
            allow_private_targets: false,
            hold_retention: "72h".into(),
            delivery_retention: "7d".into(),
        }
    }
}

/// `[storage]`: which backend keeps the data, and its settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// `sled` (embedded, in `data_dir`; the default) or `postgres`.
    pub backend: String,
    /// PostgreSQL connection URL (`postgres://user@host:port/db`); `ATENDER_STORAGE_URL`, when
    /// set, takes its place.
    pub url: Option<String>,
    /// Connections to PostgreSQL this daemon keeps at most (default 16; postgres only).
    pub pool_size: Option<u32>,
    /// How long a node's claim on a delivery lasts (humantime, default 30 s; postgres only):
    /// another node may attempt it once the lease ran out without an outcome (the claiming node
    /// died).
    pub lease: Option<String>,
    /// Bytes that must stay free on the data dir's file system (sled); below it client writes
    /// get 503, below half of it every write does and delivery pauses. 0 turns the guard off.
    pub min_free_bytes: u64,
    /// Bytes of sled's page cache (sled).
    pub page_cache_bytes: u64,
    /// Bytes of recently stored events kept in memory for their first attempts; 0: none (sled).
    pub event_cache_bytes: u64,
    /// Subscriptions kept in memory for attempts, at most (sled).
    pub subscription_cache_entries: u64,
    /// Whether sled compresses a data dir it creates (sled; an existing one keeps its choice).
    pub compression: bool,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            backend: "sled".into(),
            url: None,
            pool_size: None,
            lease: None,
            min_free_bytes: crate::store::DEFAULT_MIN_FREE_BYTES,
            page_cache_bytes: CacheSizes::default().page_cache_bytes,
            event_cache_bytes: CacheSizes::default().event_cache_bytes,
            subscription_cache_entries: CacheSizes::default().subscription_cache_entries as u64,
            compression: false,
        }
    }
}

/// `[storage] pool_size` when not set: connections to PostgreSQL per daemon.
const DEFAULT_POOL_SIZE: u32 = 16;
/// `[storage] lease` when not set (humantime).
const DEFAULT_LEASE: &str = "30s";

/// The environment variable that holds the PostgreSQL URL (so the password can live in a
/// systemd credential or an environment file rather than in the config file).
pub const STORAGE_URL_ENV: &str = "ATENDER_STORAGE_URL";

/// Which backend keeps the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// The embedded sled database in `data_dir` (one daemon).
    Sled,
    /// A PostgreSQL database shared by any number of daemons.
    Postgres(PostgresConfig),
}

/// `[storage]` with `backend = "postgres"`, typed.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The connection URL; may hold a password, so `Debug` prints it without one.
    pub url: String,
    /// Most connections this daemon keeps open.
    pub pool_size: usize,
    /// How long a claim on a delivery lasts.
    pub lease: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_password(&self.url))
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .finish()
    }
}

/// `url` with any password replaced by `***`, for logs.
pub fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// `[events]`: the catalogue of event types subscriptions may name and clients may publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvents {
    pub types: Vec<String>,
    /// `[events.descriptions]`: what a type means, by type name (shown by `GET /v1/event-types`;
    /// the five default types have built-in ones).
    pub descriptions: BTreeMap<String, String>,
    /// `[events.schemas]`: the JSON Schema file a type's `data` must satisfy, by type name. A
    /// relative path is relative to the config file's directory.
    pub schemas: BTreeMap<String, PathBuf>,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            types: [
                "message.received",
                "message.sent",
                "conversation.created",
                "conversation.resolved",
                "sla.breached",
            ]
            .map(String::from)
            .to_vec(),
            descriptions: BTreeMap::new(),
            schemas: BTreeMap::new(),
        }
    }
}

/// The descriptions of the five default event types (the user guide's examples), used when
/// `[events.descriptions]` gives none.
pub const BUILT_IN_DESCRIPTIONS: [(&str, &str); 5] = [
    ("message.received", "A message from a customer arrived in a conversation."),
    ("message.sent", "A message was sent to a customer in a conversation."),
    ("conversation.created", "A new conversation was started."),
    ("conversation.resolved", "A conversation was resolved."),
    ("sla.breached", "A conversation breached its service-level agreement (SLA)."),
];

/// Longest event type description, in characters.
pub const DESCRIPTION_CHARS: usize = 1000;

/// `[portal]`: the tenant portal served under `/portal/`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawPortal {
    /// Who may embed the portal in a frame: CSP `frame-ancestors` sources such as `'self'` or
    /// `https://app.example.com`. Empty (the default) means `'none'`: no one.
    pub frame_ancestors: Vec<String>,
    /// Origin the links of `POST /v1/portal-sessions` point at, e.g. `https://hooks.example.com`
    /// (behind a TLS proxy). Default: `http://` plus the `Host` the request was sent to.
    pub public_url: Option<String>,
    /// `SameSite` attribute of the session cookie: `strict` (default), `lax`, or `none` (needed
    /// only to embed the portal in a frame of another site; requires an `https` `public_url`).
    pub cookie_same_site: Option<String>,
}

/// `[secrets]`: subscription secrets at rest.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecrets {
    /// File holding the 32-byte master key that seals subscription secrets at rest (32 raw
    /// bytes, 64 hex characters or base64 of 32 bytes; see `crate::secrets::MasterKey::load`),
    /// e.g. a systemd credential (`/run/credentials/atender-webhooks.service/master-key`).
    /// Unset: secrets are stored in plaintext, and the daemon says so at start-up. A relative
    /// path is relative to the config file's directory.
    pub key_file: Option<PathBuf>,
}

/// `[[tenants]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub id: String,
    #[serde(default = "default_true")]
    pub webhooks_enabled: bool,
    #[serde(default = "default_max_webhooks")]
    pub max_webhooks: u32,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
}

/// `[[tenants.api_keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: String,
    pub key_sha256: String,
    pub scopes: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    "/var/lib/atender-webhooks".into()
}
fn default_true() -> bool {
    true
}
fn default_max_webhooks() -> u32 {
    25
}

// ---------------------------------------------------------------------------------------------
// Validated form: what the daemon uses.
// ---------------------------------------------------------------------------------------------

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The I/O error is in the message, not a `source`: a chain
    /// printed with `{:#}` would say it twice.
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Syntax(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub max_event_body_bytes: u64,
    pub max_subscription_body_bytes: u64,
    pub delivery: DeliveryConfig,
    /// Free-space reserve of the data dir's file system, in bytes (`storage.min_free_bytes`).
    pub min_free_bytes: u64,
    /// The sled backend's cache sizes (`storage.page_cache_bytes`, `storage.event_cache_bytes`,
    /// `storage.subscription_cache_entries`).
    pub caches: CacheSizes,
    /// Whether sled compresses a data dir it creates (`storage.compression`, default off: zstd
    /// takes the space per event to about a third for about twice the store's CPU per event;
    /// sled fixes the choice when it creates a data dir).
    pub compression: bool,
    /// The storage backend (`storage.backend` and its settings).
    pub storage: StorageBackend,
    /// Known event types, in the order the file lists them.
    pub event_types: Vec<String>,
    /// What each of `event_types` means and what its `data` must satisfy, by name (every name of
    /// `event_types` has an entry).
    pub event_details: HashMap<String, EventTypeDetails>,
    pub tenants: HashMap<String, Arc<Tenant>>,
    /// API keys by the SHA-256 digest of the plain key.
    pub api_keys: HashMap<[u8; 32], ApiKey>,
    pub portal: PortalConfig,
    /// `[secrets] key_file`: the master key's file, read at start-up (`None`: secrets are
    /// stored in plaintext).
    pub secrets_key_file: Option<PathBuf>,
}

/// One configured event type's entry in the catalogue.
#[derive(Debug, Clone, Default)]
pub struct EventTypeDetails {
    /// `[events.descriptions]`, or the built-in one of a default type; `None` when neither.
    pub description: Option<String>,
    /// `[events.schemas]`, compiled: a published event's `data` must satisfy it.
    pub schema: Option<DataSchema>,
}

/// `[portal]`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalConfig {
    /// The CSP `frame-ancestors` value, ready to send: `'none'` by default.
    pub frame_ancestors: String,
    /// Origin (no trailing slash) of portal links; `None`: taken from the request's `Host`.
    pub public_url: Option<String>,
    pub cookie_same_site: SameSite,
}

/// The session cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    /// Sent in cross-site frames too; the cookie is then always `Secure`.
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// `[delivery]`, typed.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub workers: usize,
    pub timeout: Duration,
    pub max_retry_delay: Duration,
    /// The hard cap on one subscription's attempts in flight at once, on all nodes together.
    pub max_in_flight_per_subscription: u32,
    /// Whether a trusted subscription's in-flight limit adapts to its endpoint
    /// (`crate::delivery::concurrency`) between 1 and the hard cap; when false it is the cap.
    pub adaptive_concurrency: bool,
    /// Where an adaptive limit starts (at start-up, and for a subscription first attempted):
    /// attempts in flight; above the hard cap it means the cap.
    pub initial_in_flight_per_subscription: u32,
    pub allow_http: bool,
    pub allow_private_targets: bool,
    pub hold_retention: Duration,
    pub delivery_retention: Duration,
}

/// One tenant and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub webhooks_enabled: bool,
    pub max_webhooks: u32,
}

/// One API key, known only by its digest.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub tenant_id: String,
    pub scopes: HashSet<Scope>,
}

impl Config {
    /// Reads and validates a config file (and the schema files it names). The files it names
    /// — `[events.schemas]` and `[secrets] key_file` — are relative to the file's directory
    /// when relative, so the daemon finds them whatever its working directory (`/` under
    /// systemd).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        let mut raw = Config::raw(&text)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for schema in raw.events.schemas.values_mut() {
            *schema = dir.join(&*schema);
        }
        if let Some(key_file) = &mut raw.secrets.key_file {
            if !key_file.as_os_str().is_empty() {
                *key_file = dir.join(&*key_file);
            }
        }
        Config::from_raw(raw)
    }

    /// Parses and validates config text (relative schema paths are relative to the working
    /// directory).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_raw(Config::raw(text)?)
    }

    fn raw(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Syntax(err.to_string()))
    }

    /// Checks every value of the raw form.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            invalid("listen", format!("{:?} is not an address like \"127.0.0.1:8080\"", raw.listen))
        })?;
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let api = &raw.api;
        if !(1024..=64 * 1024 * 1024).contains(&api.max_event_body_bytes) {
            return Err(invalid("api.max_event_body_bytes", "must be between 1024 and 67108864"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&api.max_subscription_body_bytes) {
            return Err(invalid("api.max_subscription_body_bytes", "must be between 1024 and 16777216"));
        }
        let delivery = validate_delivery(&raw.delivery)?;
        if raw.storage.min_free_bytes > 1 << 50 {
            return Err(invalid("storage.min_free_bytes", "must be at most 1125899906842624 (1 PiB)"));
        }
        let caches = validate_caches(&raw.storage)?;
        let storage = validate_storage(&raw.storage, &delivery, std::env::var(STORAGE_URL_ENV).ok())?;
        let event_types = validate_event_types(&raw.events.types)?;
        let event_details = validate_event_details(&raw.events, &event_types)?;
        let (tenants, api_keys) = validate_tenants(&raw.tenants)?;
        let portal = validate_portal(&raw.portal)?;
        if raw.secrets.key_file.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
            return Err(invalid(
                "secrets.key_file",
                "must not be empty (leave it out to store secrets unencrypted)",
            ));
        }
        Ok(Config {
            listen,
            data_dir: raw.data_dir,
            log_format: raw.log_format,
            max_event_body_bytes: api.max_event_body_bytes,
            max_subscription_body_bytes: api.max_subscription_body_bytes,
            delivery,
            min_free_bytes: raw.storage.min_free_bytes,
            caches,
            compression: raw.storage.compression,
            storage,
            event_types,
            event_details,
            tenants,
            api_keys,
            portal,
            secrets_key_file: raw.secrets.key_file,
        })
    }

    /// Looks up an API key by its plain text; the comparison is by digest.
    pub fn find_key(&self, plain_key: &str) -> Option<&ApiKey> {
        self.api_keys.get(&key_digest(plain_key))
    }

    /// Whether `event_type` is in the configured catalogue (`[events] types`): the types
    /// clients may publish.
    pub fn is_known_event_type(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|known| known == event_type)
    }

    /// Whether a subscription may list `event_type`: a configured type, or one the daemon sends
    /// itself (`catalogue::OPERATIONAL`).
    pub fn is_subscribable_event_type(&self, event_type: &str) -> bool {
        self.is_known_event_type(event_type) || crate::catalogue::is_operational(event_type)
    }

    /// What `event_type` means: its configured or built-in description, or an operational
    /// type's; `None` for an unknown type or one without a description.
    pub fn event_description(&self, event_type: &str) -> Option<&str> {
        match self.event_details.get(event_type) {
            Some(details) => details.description.as_deref(),
            None => crate::catalogue::OPERATIONAL
                .iter()
                .find(|known| known.name == event_type)
                .map(|known| known.description),
        }
    }

    /// Every type a subscription may list, in catalogue order: the configured ones, then the
    /// operational ones.
    pub fn subscribable_event_types(&self) -> impl Iterator<Item = &str> {
        let operational = crate::catalogue::OPERATIONAL.iter().map(|known| known.name);
        self.event_types.iter().map(String::as_str).chain(operational)
    }
}

/// The SHA-256 digest under which a key is stored in the config.
pub fn key_digest(plain_key: &str) -> [u8; 32] {
    Sha256::digest(plain_key.as_bytes()).into()
}

fn duration(key: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
    let value = humantime::parse_duration(text)
        .map_err(|err| invalid(key, format!("{text:?} is not a duration like \"10s\" or \"6h\": {err}")))?;
    if value < min || value > max {
        return Err(invalid(
            key,
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(value)
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

fn validate_delivery(raw: &RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    if !(1..=1024).contains(&raw.workers) {
        return Err(invalid("delivery.workers", "must be between 1 and 1024"));
    }
    if !(1..=1000).contains(&raw.max_in_flight_per_subscription) {
        return Err(invalid("delivery.max_in_flight_per_subscription", "must be between 1 and 1000"));
    }
    // Above the cap it means the cap: a file that lowers the cap alone stays valid.
    if !(1..=1000).contains(&raw.initial_in_flight_per_subscription) {
        return Err(invalid("delivery.initial_in_flight_per_subscription", "must be between 1 and 1000"));
    }
    Ok(DeliveryConfig {
        workers: raw.workers as usize,
        timeout: duration(
            "delivery.timeout",
            &raw.timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?,
        max_retry_delay: duration("delivery.max_retry_delay", &raw.max_retry_delay, SECOND, 7 * DAY)?,
        max_in_flight_per_subscription: raw.max_in_flight_per_subscription,
        adaptive_concurrency: raw.adaptive_concurrency,
        initial_in_flight_per_subscription: raw.initial_in_flight_per_subscription,
        allow_http: raw.allow_http,
        allow_private_targets: raw.allow_private_targets,
        hold_retention: duration("delivery.hold_retention", &raw.hold_retention, SECOND, 90 * DAY)?,
        delivery_retention: duration(
            "delivery.delivery_retention",
            &raw.delivery_retention,
            SECOND,
            365 * DAY,
        )?,
    })
}

fn validate_portal(raw: &RawPortal) -> Result<PortalConfig, ConfigError> {
    let mut sources = Vec::new();
    for source in &raw.frame_ancestors {
        let keyword = matches!(source.as_str(), "'self'" | "'none'");
        // A host source: scheme://host[:port] (host may start with "*."), nothing else, so a
        // value can never smuggle another directive (";") or a second source (" ") into the CSP.
        let origin = url::Url::parse(source).ok().filter(|url| {
            matches!(url.scheme(), "https" | "http")
                && url.host_str().is_some()
                && url.path() == "/"
                && !source.ends_with('/')
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
        });
        let wildcard = source.strip_prefix("https://*.").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        });
        if !keyword && origin.is_none() && !wildcard {
            return Err(invalid(
                "portal.frame_ancestors",
                format!("{source:?} is not 'self', 'none' or an origin like \"https://app.example.com\""),
            ));
        }
        sources.push(source.clone());
    }
    if sources.len() > 1 && sources.iter().any(|source| source == "'none'") {
        return Err(invalid("portal.frame_ancestors", "'none' cannot be combined with other sources"));
    }
    let public_url = raw
        .public_url
        .as_ref()
        .map(|text| {
            let trimmed = text.trim_end_matches('/');
            let parsed = url::Url::parse(trimmed).ok().filter(|url| {
                matches!(url.scheme(), "https" | "http")
                    && url.host_str().is_some()
                    && url.path() == "/"
                    && url.query().is_none()
                    && url.fragment().is_none()
            });
            parsed.map(|_| trimmed.to_owned()).ok_or_else(|| {
                invalid(
                    "portal.public_url",
                    format!("{text:?} is not an origin like \"https://hooks.example.com\" (no path)"),
                )
            })
        })
        .transpose()?;
    let cookie_same_site = match raw.cookie_same_site.as_deref() {
        None | Some("strict") => SameSite::Strict,
        Some("lax") => SameSite::Lax,
        Some("none") => SameSite::None,
        Some(other) => {
            return Err(invalid(
                "portal.cookie_same_site",
                format!("{other:?} is not one of \"strict\", \"lax\", \"none\""),
            ))
        }
    };
    if cookie_same_site == SameSite::None
        && !public_url.as_deref().is_some_and(|url| url.starts_with("https://"))
    {
        return Err(invalid(
            "portal.cookie_same_site",
            "\"none\" needs an https portal.public_url (browsers drop SameSite=None cookies that are not Secure)",
        ));
    }
    Ok(PortalConfig {
        frame_ancestors: if sources.is_empty() { "'none'".to_owned() } else { sources.join(" ") },
        public_url,
        cookie_same_site,
    })
}

/// An event type is dot-separated lowercase words: `message.received`.
pub fn is_valid_event_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

fn validate_event_types(types: &[String]) -> Result<Vec<String>, ConfigError> {
    if types.is_empty() || types.len() > 1000 {
        return Err(invalid("events.types", "must list between 1 and 1000 event types"));
    }
    let mut seen = HashSet::new();
    for name in types {
        if !is_valid_event_type_name(name) {
            return Err(invalid(
                "events.types",
                format!("{name:?} is not an event type like \"message.received\" (lowercase words separated by dots)"),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(invalid("events.types", format!("{name:?} is listed twice")));
        }
        if crate::catalogue::is_operational(name) {
            return Err(invalid(
                "events.types",
                format!("{name:?} is an event type the daemon sends itself (subscriptions may list it without configuring it); remove it"),
            ));
        }
    }
    Ok(types.to_vec())
}

/// `[events.descriptions]` and `[events.schemas]`: every key names a type of `types`; each
/// description is a visible line; each schema file is read and compiled now, so a bad one is
/// refused by `check-config` and by a reload (which keeps the running config).
fn validate_event_details(
    raw: &RawEvents,
    types: &[String],
) -> Result<HashMap<String, EventTypeDetails>, ConfigError> {
    let key_of = |table: &str, name: &str| format!("events.{table}.{name:?}");
    let check_listed = |table: &str, name: &str| {
        if types.iter().any(|known| known == name) {
            return Ok(());
        }
        let reason = if crate::catalogue::is_operational(name) {
            "is an event type the daemon sends itself; its description and schema are built in".to_owned()
        } else {
            format!("is not an event type of events.types (known: {})", types.join(", "))
        };
        Err(invalid(key_of(table, name), reason))
    };
    let mut details: HashMap<String, EventTypeDetails> = types
        .iter()
        .map(|name| {
            let built_in = BUILT_IN_DESCRIPTIONS.iter().find(|(known, _)| known == name);
            let description = built_in.map(|(_, description)| (*description).to_owned());
            (name.clone(), EventTypeDetails { description, schema: None })
        })
        .collect();
    for (name, description) in &raw.descriptions {
        check_listed("descriptions", name)?;
        let length = description.chars().count();
        if description.trim().is_empty()
            || length > DESCRIPTION_CHARS
            || description.chars().any(char::is_control)
        {
            return Err(invalid(
                key_of("descriptions", name),
                format!("must be 1-{DESCRIPTION_CHARS} characters, not blank, without control characters (one line)"),
            ));
        }
        details.entry(name.clone()).or_default().description = Some(description.clone());
    }
    for (name, path) in &raw.schemas {
        check_listed("schemas", name)?;
        let schema =
            DataSchema::load(path).map_err(|err| invalid(key_of("schemas", name), err.to_string()))?;
        details.entry(name.clone()).or_default().schema = Some(schema);
    }
    Ok(details)
}

/// `[storage]`: the backend and its settings. `env_url` is `ATENDER_STORAGE_URL`, which takes the
/// place of `url` when set.
const MIB: u64 = 1024 * 1024;

/// `[storage]`'s cache sizes. sled needs a few MiB of page cache to hold the trees' upper nodes;
/// the upper bounds only catch a unit mistake (a value meant in MiB is fine, one in bits is not).
fn validate_caches(raw: &RawStorage) -> Result<CacheSizes, ConfigError> {
    if !(4 * MIB..=64 * 1024 * MIB).contains(&raw.page_cache_bytes) {
        return Err(invalid(
            "storage.page_cache_bytes",
            "must be between 4194304 (4 MiB) and 68719476736 (64 GiB)",
        ));
    }
    if raw.event_cache_bytes > 16 * 1024 * MIB {
        return Err(invalid(
            "storage.event_cache_bytes",
            "must be at most 17179869184 (16 GiB); 0 turns it off",
        ));
    }
    if !(1..=10_000_000).contains(&raw.subscription_cache_entries) {
        return Err(invalid("storage.subscription_cache_entries", "must be between 1 and 10000000"));
    }
    Ok(CacheSizes {
        page_cache_bytes: raw.page_cache_bytes,
        event_cache_bytes: raw.event_cache_bytes,
        subscription_cache_entries: raw.subscription_cache_entries as usize,
    })
}

fn validate_storage(
    raw: &RawStorage,
    delivery: &DeliveryConfig,
    env_url: Option<String>,
) -> Result<StorageBackend, ConfigError> {
    match raw.backend.as_str() {
        "sled" => {
            // A PostgreSQL setting under sled would do nothing: say so rather than ignore it.
            let postgres_only = [
                ("storage.url", raw.url.is_some()),
                ("storage.pool_size", raw.pool_size.is_some()),
                ("storage.lease", raw.lease.is_some()),
            ];
            if let Some((key, _)) = postgres_only.into_iter().find(|(_, set)| *set) {
                return Err(invalid(key, "is only for backend = \"postgres\""));
            }
            // The environment's URL alone would leave every node on a sled of its own, silently.
            if env_url.is_some_and(|url| !url.is_empty()) {
                return Err(invalid(
                    STORAGE_URL_ENV,
                    "is set, but [storage] backend is \"sled\": set backend = \"postgres\" to use it, or unset it",
                ));
            }
            Ok(StorageBackend::Sled)
        }
        "postgres" => {
            // Errors name where the URL came from: the environment variable takes the key's place.
            let (url, source) = match env_url.filter(|url| !url.is_empty()) {
                Some(url) => (url, STORAGE_URL_ENV),
                None => match &raw.url {
                    Some(url) => (url.clone(), "storage.url"),
                    None => {
                        return Err(invalid(
                            "storage.url",
                            format!("is required for backend = \"postgres\" (or set {STORAGE_URL_ENV})"),
                        ))
                    }
                },
            };
            // A URL that does not parse is not echoed (it may hold a password); the parser's
            // reason is (e.g. "invalid port number").
            match url::Url::parse(&url) {
                Err(err) => {
                    // Several hosts with a port each (libpq's form) fail as a bad port here.
                    let hosts = match url.contains(',') {
                        true => " (several hosts share one port: \"postgres://user@host-a,host-b:5432/db\")",
                        false => "",
                    };
                    return Err(invalid(
                        source,
                        format!(
                            "is not a valid URL ({err}); expected one like \"postgres://user@host:5432/db\"{hosts}"
                        ),
                    ));
                }
                Ok(parsed) if !matches!(parsed.scheme(), "postgres" | "postgresql") => {
                    return Err(invalid(
                        source,
                        format!(
                            "{} is not a URL like \"postgres://user@host:5432/db\"",
                            redact_password(&url)
                        ),
                    ))
                }
                Ok(_) => {}
            }
            // What the backend will read of it: the driver's settings, `sslmode`, `sslrootcert`.
            crate::store::check_postgres_url(&url).map_err(|err| invalid(source, err))?;
            let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
            if !(1..=1024).contains(&pool_size) {
                return Err(invalid("storage.pool_size", "must be between 1 and 1024"));
            }
            let lease = raw.lease.as_deref().unwrap_or(DEFAULT_LEASE);
            let lease = duration("storage.lease", lease, SECOND, Duration::from_secs(3600))?;
            if lease <= delivery.timeout {
                return Err(invalid(
                    "storage.lease",
                    format!(
                        "must be longer than delivery.timeout ({}): a claim must outlive its attempt{}",
                        humantime::format_duration(delivery.timeout),
                        match raw.lease {
                            Some(_) => String::new(),
                            None => format!(" (lease is not set: its default, {DEFAULT_LEASE}, applies)"),
                        }
                    ),
                ));
            }
            Ok(StorageBackend::Postgres(PostgresConfig { url, pool_size: pool_size as usize, lease }))
        }
        other => Err(invalid("storage.backend", format!("must be \"sled\" or \"postgres\" (got {other:?})"))),
    }
}

/// A tenant id is short, lowercase and URL-safe: it appears in payloads and in storage keys.
pub fn is_valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

type Tenants = (HashMap<String, Arc<Tenant>>, HashMap<[u8; 32], ApiKey>);

fn validate_tenants(raw: &[RawTenant]) -> Result<Tenants, ConfigError> {
    let mut tenants = HashMap::new();
    let mut keys = HashMap::new();
    for (index, tenant) in raw.iter().enumerate() {
        let at = format!("tenants[{index}]");
        if !is_valid_tenant_id(&tenant.id) {
            return Err(invalid(
                format!("{at}.id"),
                format!("{:?} must be 1-64 characters of a-z, 0-9, '_' or '-'", tenant.id),
            ));
        }
        if tenants.contains_key(&tenant.id) {
            return Err(invalid(format!("{at}.id"), format!("tenant {:?} is defined twice", tenant.id)));
        }
        if tenant.max_webhooks > 100_000 {
            return Err(invalid(format!("{at}.max_webhooks"), "must be at most 100000"));
        }
        for (key_index, key) in tenant.api_keys.iter().enumerate() {
            let key_at = format!("{at}.api_keys[{key_index}]");
            if key.name.trim().is_empty() || key.name.len() > 100 {
                return Err(invalid(format!("{key_at}.name"), "must be 1-100 characters"));
            }
            let digest = parse_digest(&key.key_sha256).ok_or_else(|| {
                invalid(
                    format!("{key_at}.key_sha256"),
                    "must be 64 hex characters (the SHA-256 of the key; see `atender-webhooks keygen`)",
                )
            })?;
            if keys.contains_key(&digest) {
                return Err(invalid(format!("{key_at}.key_sha256"), "the same key is configured twice"));
            }
            let mut scopes = HashSet::new();
            for scope in &key.scopes {
                let parsed = Scope::parse(scope).ok_or_else(|| {
                    invalid(
                        format!("{key_at}.scopes"),
                        format!(
                            "unknown scope {scope:?} (known: webhooks:read, webhooks:write, events:write)"
                        ),
                    )
                })?;
                scopes.insert(parsed);
            }
            if scopes.is_empty() {
                return Err(invalid(format!("{key_at}.scopes"), "must list at least one scope"));
            }
            keys.insert(digest, ApiKey { name: key.name.clone(), tenant_id: tenant.id.clone(), scopes });
        }
        tenants.insert(
            tenant.id.clone(),
            Arc::new(Tenant {
                id: tenant.id.clone(),
                webhooks_enabled: tenant.webhooks_enabled,
                max_webhooks: tenant.max_webhooks,
            }),
        );
    }
    Ok((tenants, keys))
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text.to_ascii_lowercase(), &mut digest).ok()?;
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn development_default_is_valid() {
        let config = Config::parse(DEVELOPMENT_DEFAULT).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(config.tenants.contains_key("demo"));
        assert_eq!(config.delivery.timeout, Duration::from_secs(10));
        assert_eq!(config.event_types.len(), 5);
    }

    #[test]
    fn example_file_is_valid_and_matches_defaults() {
        let text = include_str!("../config.example.toml");
        let config = Config::parse(text).unwrap();
        let defaults = Config::parse("").unwrap();
        assert_eq!(config.delivery.workers, defaults.delivery.workers);
        assert_eq!(config.delivery.max_retry_delay, defaults.delivery.max_retry_delay);
        assert_eq!(config.delivery.hold_retention, defaults.delivery.hold_retention);
        assert_eq!(config.delivery.delivery_retention, defaults.delivery.delivery_retention);
        assert_eq!(config.event_types, defaults.event_types);
        assert_eq!(config.max_event_body_bytes, defaults.max_event_body_bytes);
        assert_eq!(config.min_free_bytes, defaults.min_free_bytes);
        assert_eq!(config.caches, defaults.caches);
        assert_eq!(defaults.caches, CacheSizes::default());
        assert!(!defaults.compression, "compression is opt-in: it doubles the store's CPU per event");
        assert!(Config::parse("[storage]\ncompression = true").unwrap().compression);
    }

    #[test]
    fn the_storage_section_picks_and_checks_the_backend() {
        let raw = |text: &str| -> RawConfig { toml::from_str(text).unwrap() };
        let delivery = validate_delivery(&RawDelivery::default()).unwrap();
        let storage = |text: &str, env: Option<&str>| {
            validate_storage(&raw(text).storage, &delivery, env.map(str::to_owned))
        };
        assert_eq!(storage("", None).unwrap(), StorageBackend::Sled);
        let url = "postgres://atender:secret@db.example:5432/atender";
        let StorageBackend::Postgres(pg) =
            storage(&format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\""), None).unwrap()
        else {
            panic!("not postgres")
        };
        assert_eq!((pg.url.as_str(), pg.pool_size, pg.lease), (url, 16, Duration::from_secs(30)));
        assert!(!format!("{pg:?}").contains("secret"), "the password never reaches a log line");
        // The environment variable takes the place of the file's url.
        let from_env = storage("[storage]\nbackend = \"postgres\"", Some("postgres://env@h/db")).unwrap();
        assert!(matches!(from_env, StorageBackend::Postgres(pg) if pg.url == "postgres://env@h/db"));
        // The environment's URL under sled is refused (it would do nothing), an empty one ignored.
        let err = storage("", Some("postgres://env@h/db")).unwrap_err().to_string();
        assert!(err.starts_with(STORAGE_URL_ENV) && err.contains("backend is \"sled\""), "{err}");
        assert_eq!(storage("", Some("")).unwrap(), StorageBackend::Sled);
        // A bad URL from the environment is named as the environment variable, not the key.
        let err =
            storage("[storage]\nbackend = \"postgres\"", Some("mysql://env@h/db")).unwrap_err().to_string();
        assert!(err.starts_with(STORAGE_URL_ENV), "{err}");
        for (text, key) in [
            ("[storage]\nbackend = \"mysql\"", "storage.backend"),
            ("[storage]\nbackend = \"postgres\"", "storage.url"),
            ("[storage]\nbackend = \"postgres\"\nurl = \"mysql://h/db\"", "storage.url"),
            ("[storage]\nurl = \"postgres://h/db\"", "storage.url"),
            ("[storage]\npool_size = 4", "storage.pool_size"),
            ("[storage]\nbackend = \"sled\"\nlease = \"60s\"", "storage.lease"),
            (
                "[storage]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\npool_size = 0",
                "storage.pool_size",
            ),
            ("[storage]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nlease = \"5s\"", "storage.lease"),
        ] {
            let err = storage(text, None).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
        let err = storage("[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:pw@h:x/db\"", None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pw@"), "{err}");
        // The lease check names the default when the lease is not set.
        let slow =
            validate_delivery(&RawDelivery { timeout: "45s".into(), ..RawDelivery::default() }).unwrap();
        let err = validate_storage(
            &raw("[storage]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"").storage,
            &slow,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("storage.lease") && err.contains("its default, 30s, applies"), "{err}");
        // A URL that does not parse says why, without echoing it.
        let err = storage("[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:pw@h:99999/db\"", None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("storage.url: is not a valid URL (invalid port number)"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
        // Hosts with a port each: the form that is accepted is named.
        let err = storage("[storage]\nbackend = \"postgres\"\nurl = \"postgres://u@a:5432,b:5433/db\"", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("several hosts share one port"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("bogus = 1", "unknown field `bogus`"),
            ("[delivery]\ncolour = 1", "unknown field `colour`"),
            ("listen = \"nowhere\"", "listen:"),
            ("[delivery]\ntimeout = \"ten\"", "delivery.timeout:"),
            ("[delivery]\ntimeout = \"1h\"", "delivery.timeout: must be between"),
            ("[delivery]\nworkers = 0", "delivery.workers:"),
            ("[delivery]\nmax_in_flight_per_subscription = 0", "delivery.max_in_flight_per_subscription:"),
            ("[delivery]\ninitial_in_flight_per_subscription = 0", "delivery.initial_in_flight_per_subscription:"),
            ("[delivery]\ninitial_in_flight_per_subscription = 1001", "delivery.initial_in_flight_per_subscription:"),
            ("[delivery]\nadaptive_concurrency = \"yes\"", "adaptive_concurrency"),
            ("[delivery]\nhold_retention = \"0s\"", "delivery.hold_retention:"),
            ("[events]\ntypes = []", "events.types:"),
            ("[events]\ntypes = [\"Message Received\"]", "events.types:"),
            ("[events]\ntypes = [\"a.b\", \"a.b\"]", "listed twice"),
            ("[api]\nmax_event_body_bytes = 1", "api.max_event_body_bytes:"),
            ("[storage]\npage_cache_bytes = 1024", "storage.page_cache_bytes: must be between"),
            ("[storage]\npage_cache_bytes = 137438953472", "storage.page_cache_bytes: must be between"),
            ("[storage]\npage_cache_bytes = -1", "invalid value"),
            ("[storage]\npage_cache_bytes = \"32MiB\"", "invalid type"),
            ("[storage]\ncompression = \"zstd\"", "invalid type"),
            ("[storage]\nevent_cache_bytes = 17179869185", "storage.event_cache_bytes: must be at most"),
            ("[storage]\nsubscription_cache_entries = 0", "storage.subscription_cache_entries: must be between"),
            ("[storage]\ncache_capacity = 1", "unknown field `cache_capacity`"),
            ("[portal]\ncolour = 1", "unknown field `colour`"),
            ("[portal]\nframe_ancestors = [\"https://a.example; script-src *\"]", "portal.frame_ancestors:"),
            ("[portal]\nframe_ancestors = [\"'none'\", \"'self'\"]", "portal.frame_ancestors:"),
            ("[portal]\nframe_ancestors = [\"https://a.example/path\"]", "portal.frame_ancestors:"),
            ("[portal]\npublic_url = \"ftp://x\"", "portal.public_url:"),
            ("[portal]\ncookie_same_site = \"sometimes\"", "portal.cookie_same_site:"),
            ("[portal]\ncookie_same_site = \"none\"", "portal.cookie_same_site:"),
            ("[[tenants]]\nid = \"Bad Id\"", "tenants[0].id:"),
            ("[[tenants]]\nid = \"a\"\n[[tenants]]\nid = \"a\"", "tenants[1].id: tenant \"a\" is defined twice"),
            (
                "[[tenants]]\nid = \"a\"\n[[tenants.api_keys]]\nname = \"k\"\nkey_sha256 = \"xyz\"\nscopes = [\"events:write\"]",
                "tenants[0].api_keys[0].key_sha256:",
            ),
            (
                "[[tenants]]\nid = \"a\"\n[[tenants.api_keys]]\nname = \"k\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nscopes = [\"admin\"]",
                "tenants[0].api_keys[0].scopes: unknown scope \"admin\"",
            ),
        ];
        for (text, expected) in cases {
            let error = error_of(text);
            assert!(error.contains(expected), "config {text:?} gave {error:?}, expected {expected:?}");
        }
    }

    #[test]
    fn default_types_have_built_in_descriptions_and_configured_ones_win() {
        let defaults = Config::parse("").unwrap();
        for name in &defaults.event_types {
            let details = &defaults.event_details[name];
            assert!(details.description.as_deref().is_some_and(|text| !text.is_empty()), "{name}");
            assert!(details.schema.is_none(), "{name}");
        }
        let text = "[events]\ntypes = [\"message.received\", \"invoice.paid\"]\n[events.descriptions]\n\"invoice.paid\" = \"An invoice was paid.\"\n\"message.received\" = \"Ours.\"";
        let config = Config::parse(text).unwrap();
        assert_eq!(config.event_details["invoice.paid"].description.as_deref(), Some("An invoice was paid."));
        assert_eq!(config.event_details["message.received"].description.as_deref(), Some("Ours."));
        let bare = Config::parse("[events]\ntypes = [\"invoice.paid\"]").unwrap();
        assert_eq!(bare.event_details["invoice.paid"].description, None);
        assert!(bare.is_subscribable_event_type("webhook.disabled"));
        assert!(!bare.is_known_event_type("webhook.disabled"));
        assert_eq!(
            bare.subscribable_event_types().collect::<Vec<_>>(),
            ["invoice.paid", "webhook.disabled", "webhook.enabled", "delivery.exhausted", "webhook.test"]
        );
    }

    #[test]
    fn bad_descriptions_and_operational_names_name_their_key() {
        let cases = [
            (
                "[events.descriptions]\n\"invoice.paid\" = \"x\"",
                "events.descriptions.\"invoice.paid\": is not an event type of events.types",
            ),
            (
                "[events.descriptions]\n\"webhook.disabled\" = \"x\"",
                "events.descriptions.\"webhook.disabled\": is an event type the daemon sends itself",
            ),
            (
                "[events.descriptions]\n\"sla.breached\" = \"  \"",
                "events.descriptions.\"sla.breached\": must be 1-1000 characters",
            ),
            (
                "[events.descriptions]\n\"sla.breached\" = \"a\\nb\"",
                "events.descriptions.\"sla.breached\": must be",
            ),
            (
                "[events]\ntypes = [\"webhook.test\"]",
                "events.types: \"webhook.test\" is an event type the daemon sends itself",
            ),
            (
                "[events.schemas]\n\"invoice.paid\" = \"/x.json\"",
                "events.schemas.\"invoice.paid\": is not an event type",
            ),
            ("[events.colours]\n\"sla.breached\" = 1", "unknown field `colours`"),
        ];
        for (text, expected) in cases {
            let error = error_of(text);
            assert!(error.contains(expected), "config {text:?} gave {error:?}, expected {expected:?}");
        }
    }

    #[test]
    fn a_relative_key_file_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, "[secrets]\nkey_file = \"keys/master.key\"\n").unwrap();
        let config = Config::load(&config_path).unwrap();
        assert_eq!(config.secrets_key_file, Some(dir.path().join("keys/master.key")));
        std::fs::write(&config_path, "[secrets]\nkey_file = \"/run/credentials/x/master-key\"\n").unwrap();
        let config = Config::load(&config_path).unwrap();
        assert_eq!(config.secrets_key_file, Some(PathBuf::from("/run/credentials/x/master-key")));
    }

    #[test]
    fn schema_files_are_compiled_at_load_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schemas")).unwrap();
        std::fs::write(
            dir.path().join("schemas/message.json"),
            r#"{"type": "object", "required": ["text"]}"#,
        )
        .unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, "[events.schemas]\n\"message.received\" = \"schemas/message.json\"\n")
            .unwrap();
        let config = Config::load(&config_path).unwrap();
        let schema = config.event_details["message.received"].schema.as_ref().expect("compiled");
        assert_eq!(schema.document()["required"], serde_json::json!(["text"]));
        assert_eq!(schema.path(), dir.path().join("schemas/message.json"));
        assert!(config.event_details["message.sent"].schema.is_none());

        // Each kind of bad file is refused, naming the type and the file.
        for (contents, reason) in [
            (None, "cannot read it"),
            (Some("{ not json"), "is not JSON"),
            (Some(r#"{"type": "objekt"}"#), "is not a valid JSON Schema"),
            (Some(r#"{"$ref": "https://schemas.example.com/remote.json"}"#), "is not a valid JSON Schema"),
        ] {
            let file = dir.path().join("schemas/bad.json");
            let _ = std::fs::remove_file(&file);
            if let Some(contents) = contents {
                std::fs::write(&file, contents).unwrap();
            }
            std::fs::write(&config_path, "[events.schemas]\n\"sla.breached\" = \"schemas/bad.json\"\n")
                .unwrap();
            let error = Config::load(&config_path).unwrap_err().to_string();
            assert!(error.starts_with("events.schemas.\"sla.breached\": "), "{error}");
            assert!(error.contains("bad.json") && error.contains(reason), "{reason}: {error}");
        }
    }

    #[test]
    fn portal_defaults_and_sources() {
        let defaults = Config::parse("").unwrap().portal;
        assert_eq!(defaults.frame_ancestors, "'none'");
        assert_eq!(defaults.cookie_same_site, SameSite::Strict);
        assert_eq!(defaults.public_url, None);
        let text = "[portal]\nframe_ancestors = [\"'self'\", \"https://app.example.com\", \"https://*.example.org\"]\npublic_url = \"https://hooks.example.com/\"\ncookie_same_site = \"none\"";
        let portal = Config::parse(text).unwrap().portal;
        assert_eq!(portal.frame_ancestors, "'self' https://app.example.com https://*.example.org");
        assert_eq!(portal.public_url.as_deref(), Some("https://hooks.example.com"));
        assert_eq!(portal.cookie_same_site, SameSite::None);
    }

    #[test]
    fn keys_are_found_by_digest() {
        let digest = hex::encode(key_digest("sa_live_example"));
        let text = format!(
            "[[tenants]]\nid = \"acme\"\n[[tenants.api_keys]]\nname = \"backend\"\nkey_sha256 = \"{digest}\"\nscopes = [\"webhooks:read\"]"
        );
        let config = Config::parse(&text).unwrap();
        let key = config.find_key("sa_live_example").unwrap();
        assert_eq!(key.tenant_id, "acme");
        assert!(key.scopes.contains(&Scope::WebhooksRead));
        assert!(config.find_key("sa_live_other").is_none());
    }
}

/// The configuration in force, replaceable at run time (SIGHUP) without a restart.
#[derive(Debug)]
pub struct SharedConfig(std::sync::RwLock<Arc<Config>>);

impl SharedConfig {
    pub fn new(config: Config) -> SharedConfig {
        SharedConfig(std::sync::RwLock::new(Arc::new(config)))
    }

    /// A snapshot: a request uses one consistent config from start to end.
    pub fn current(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn replace(&self, config: Config) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
    }
}
