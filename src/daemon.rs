//! Start-up and shutdown of the whole daemon as one value: storage, delivery engine and HTTP
//! listener, wired together. Start-up is one linear function that logs each step.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::config::{Config, SharedConfig};
use crate::control::ControlServer;
use crate::delivery::Engine;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::{Storage, StoreOptions};

/// A running daemon. Dropping it without [`Daemon::shutdown`] leaves its threads running.
pub struct Daemon {
    local_addr: SocketAddr,
    config: Arc<SharedConfig>,
    store: Arc<dyn Storage>,
    health: Arc<Health>,
    engine: Engine,
    server: JoinHandle<()>,
    /// The control socket (backups), on the embedded backend only.
    control: Option<ControlServer>,
}

impl Daemon {
    /// Opens storage, starts the delivery engine and begins serving the API on `config.listen`
    /// (port 0 picks a free port; see [`Daemon::local_addr`]).
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        let data_dir = config.data_dir.clone();
        let health = Arc::new(Health::default());
        // Queue notices: the store announces committed queue writes, the engine listens.
        let (notices, notices_rx) = crossbeam_channel::unbounded();
        let secrets = crate::secrets::configured_keys(config.secrets_key_file.as_deref())?;
        let options = StoreOptions {
            min_free_bytes: config.min_free_bytes,
            health: health.clone(),
            notices,
            secrets,
            caches: config.caches,
            compression: config.compression,
        };
        let backend = config.storage.clone();
        let store = tokio::task::spawn_blocking(move || crate::store::open(&backend, &data_dir, &options))
            .await?
            .with_context(|| match &config.storage {
                crate::config::StorageBackend::Sled => {
                    format!("cannot open storage in {}", config.data_dir.display())
                }
                crate::config::StorageBackend::Postgres(pg) => {
                    format!("cannot open PostgreSQL storage at {}", crate::config::redact_password(&pg.url))
                }
            })?;
        match &config.storage {
            crate::config::StorageBackend::Sled => {
                tracing::info!(data_dir = %config.data_dir.display(), "storage open")
            }
            // PostgreSQL says where it connected when it opens; `data_dir` is not used.
            crate::config::StorageBackend::Postgres(_) => {
                tracing::info!(backend = "postgres", "storage open")
            }
        }
        // Only the process holding sled's lock can copy the data: it serves `backup` itself.
        // PostgreSQL is backed up with its own tools. Without the socket the daemon still
        // delivers (its job); `backup` then fails, saying no daemon answers, and this line
        // says why.
        let control = match &config.storage {
            crate::config::StorageBackend::Sled => {
                let backups: Arc<dyn crate::store::Backups> = store.clone();
                match ControlServer::start(&config.data_dir, backups, &health) {
                    Ok(control) => {
                        tracing::info!(socket = %control.path().display(), "control socket open (backups)");
                        Some(control)
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "no control socket: `atender-webhooks backup` cannot reach this daemon until it is restarted with one");
                        None
                    }
                }
            }
            crate::config::StorageBackend::Postgres(_) => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let config = Arc::new(SharedConfig::new(config));
        let metrics = Arc::new(Metrics::new());
        let engine =
            Engine::start(store.clone(), notices_rx, config.clone(), metrics.clone(), health.clone())
                .context("cannot start the delivery engine")?;
        tracing::info!(workers = config.current().delivery.workers, "delivery engine running");
        let state = ApiState {
            config: config.clone(),
            store: store.clone(),
            metrics,
            health: health.clone(),
            test_send: engine.test_sender(),
        };
        // The server stops taking connections on the daemon's one shutdown signal.
        let shutdown = health.shutdown_signal().clone();
        let server = tokio::spawn(
            warp::serve(api::routes(state))
                .incoming(listener)
                .graceful(async move { shutdown.raised().await })
                .run(),
        );
        tracing::info!(%local_addr, "listening");
        Ok(Daemon { local_addr, config, store, health, engine, server, control })
    }

    /// The address the API actually listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies a new configuration's tenants, keys, limits and event catalogue at once, without
    /// dropping a request. Settings that need a restart (listener, data dir, workers, HTTP client
    /// settings) are kept, and the returned list names any that differ.
    pub fn reload(&self, mut new: Config) -> Vec<&'static str> {
        let current = self.config.current();
        let mut kept = Vec::new();
        if new.listen != current.listen {
            kept.push("listen");
        }
        if new.data_dir != current.data_dir {
            kept.push("data_dir");
        }
        if new.delivery.workers != current.delivery.workers {
            kept.push("delivery.workers");
        }
        if new.delivery.timeout != current.delivery.timeout {
            kept.push("delivery.timeout");
        }
        if new.delivery.allow_private_targets != current.delivery.allow_private_targets {
            kept.push("delivery.allow_private_targets");
        }
        if new.min_free_bytes != current.min_free_bytes {
            kept.push("storage.min_free_bytes");
        }
        if new.caches.page_cache_bytes != current.caches.page_cache_bytes {
            kept.push("storage.page_cache_bytes");
        }
        if new.caches.event_cache_bytes != current.caches.event_cache_bytes {
            kept.push("storage.event_cache_bytes");
        }
        if new.caches.subscription_cache_entries != current.caches.subscription_cache_entries {
            kept.push("storage.subscription_cache_entries");
        }
        if new.compression != current.compression {
            kept.push("storage.compression");
        }
        if new.storage != current.storage {
            kept.push("storage");
        }
        if new.secrets_key_file != current.secrets_key_file {
            kept.push("secrets.key_file");
        }
        new.listen = current.listen;
        new.data_dir = current.data_dir.clone();
        new.delivery.workers = current.delivery.workers;
        new.delivery.timeout = current.delivery.timeout;
        new.delivery.allow_private_targets = current.delivery.allow_private_targets;
        new.min_free_bytes = current.min_free_bytes;
        new.caches = current.caches;
        new.compression = current.compression;
        new.storage = current.storage.clone();
        new.secrets_key_file = current.secrets_key_file.clone();
        self.config.replace(new);
        kept
    }

    /// Stops accepting requests, lets requests and delivery attempts in flight finish within
    /// `grace`, and makes storage durable. Returns whether everything finished in time. Never
    /// takes much longer than `grace` (plus at most [`crate::store::DURABLE_WAIT`] for the last
    /// flush), whatever state storage is in: every write acknowledged was flushed before its
    /// answer, so a last flush that fails loses nothing acknowledged.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + grace;
        // One signal: the server stops accepting, the engine's threads stop taking work.
        self.health.begin_shutdown();
        // Its file goes at once; its thread stops on the signal (a backup under way is told
        // why and abandoned).
        drop(self.control);
        let server_done = tokio::time::timeout_at(deadline, self.server).await.is_ok();
        let engine = self.engine;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let engine_done = tokio::task::spawn_blocking(move || engine.shutdown(remaining)).await?;
        if let Err(err) = self.store.flush().await {
            tracing::error!(error = %err, "the last flush at shutdown failed; every acknowledged write was flushed before its answer");
            return Ok(false);
        }
        Ok(server_done && engine_done)
    }

    /// Health of the daemon's threads and storage (for the serving loop and the watchdog).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Storage, for tests and benchmarks that inspect state.
    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }
}
