//! The janitor thread: expires held deliveries past `hold_retention`, purges finished records
//! past `delivery_retention` and idempotency ids past 24 h, and finishes interrupted deletes.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SharedConfig;
use crate::model::now_millis;
use crate::store::{Store, StoreError};

/// Time between two sweeps.
const PERIOD: Duration = Duration::from_secs(30);

/// Sweeps at start and then every [`PERIOD`] until `stop` is closed.
pub fn run(store: Store, config: Arc<SharedConfig>, stop: crossbeam_channel::Receiver<()>) {
    if let Err(err) = store.purge_deleted_subscriptions() {
        tracing::error!(error = %err, "cannot finish the cleanup of deleted subscriptions");
    }
    match store.release_all_deliverable() {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "released held deliveries of active subscriptions"),
        Err(err) => tracing::error!(error = %err, "cannot release held deliveries at start-up"),
    }
    loop {
        if let Err(err) = sweep(&store, &config) {
            tracing::error!(error = %err, "janitor sweep failed");
        }
        match stop.recv_timeout(PERIOD) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

fn sweep(store: &Store, config: &SharedConfig) -> Result<(), StoreError> {
    let delivery = config.current().delivery.clone();
    let now = now_millis();
    let expired = store.expire_held(now, delivery.hold_retention.as_millis() as u64)?;
    let purged = store.purge_finished(now, delivery.delivery_retention.as_millis() as u64)?;
    let forgotten = store.purge_idempotency(now)?;
    if expired + purged + forgotten > 0 {
        tracing::info!(expired, purged, forgotten, "janitor sweep");
    }
    Ok(())
}
