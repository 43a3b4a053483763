//! atender-webhooks: a single-binary webhook delivery daemon. Modules in reading order:
//!
//! - [`config`]: the TOML file, raw and validated.
//! - [`model`]: domain types and ids; no I/O.
//! - [`catalogue`]: the event types the daemon sends itself (operational events, test sends).
//! - [`event_schema`]: the JSON Schemas configured event types' `data` must satisfy.
//! - [`secrets`]: the master key and the sealed form of subscription secrets at rest.
//! - [`lifecycle`]: every state change of a delivery and a subscription, as pure functions.
//! - [`net_policy`]: which target addresses are allowed (used by the API and the engine).
//! - [`probe`]: the test-send interface, which the API calls and the delivery engine implements.
//! - [`store`]: the only module that knows sled.
//! - [`api`]: the only module that knows warp and JSON shapes.
//! - [`portal`]: the tenant portal, web pages served under `/portal/` (uses `api`'s validation).
//! - [`delivery`]: the only module that makes outbound HTTP.
//! - [`metrics`], [`health`]: shared observability state.
//! - [`control`]: the control socket in the data dir, through which `backup` reaches the daemon.
//! - [`daemon`]: wires them together; [`cli`]: the command line.
//!
//! Dependencies point one way: `api` and `delivery` use `store` and `model`, never each other.

pub mod api;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod event_schema;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod net_policy;
pub mod portal;
pub mod probe;
pub mod secrets;
pub mod store;

pub use config::Config;
pub use daemon::Daemon;
