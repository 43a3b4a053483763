//! The janitor thread: expires held deliveries past `hold_retention`, purges finished records
//! past `delivery_retention` and idempotency ids past 24 h, and finishes interrupted deletes.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SharedConfig;
use crate::health::BeatGuard;
use crate::model::now_millis;
use crate::store::{Retention, StoreError};

/// Longest time between two sweeps.
const MAX_PERIOD: Duration = Duration::from_secs(30);

/// Longest one sweep may take before the janitor counts as stalled (a purge of millions of
/// records takes minutes).
pub const SWEEP_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Time between two sweeps: a tenth of `hold_retention`, between 1 s and [`MAX_PERIOD`], so a
/// held delivery expires at most 10 % (and at most 30 s) after its retention ran out.
fn period(hold_retention: Duration) -> Duration {
    (hold_retention / 10).clamp(Duration::from_secs(1), MAX_PERIOD)
}

/// Sweeps at start and then every [`period`] until the daemon's shutdown signal (carried by
/// `beat`).
pub fn run(store: Arc<dyn Retention>, config: Arc<SharedConfig>, beat: BeatGuard) {
    beat.busy();
    // Refused writes (low space) are retried by the periodic sweeps; only other errors are news.
    if let Err(err) = store.purge_deleted_subscriptions() {
        if !err.is_host_fault() {
            tracing::error!(error = %err, "cannot finish the cleanup of deleted subscriptions");
        }
    }
    match store.release_all_deliverable() {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "released held deliveries of active subscriptions"),
        Err(err) if err.is_host_fault() => {}
        Err(err) => tracing::error!(error = %err, "cannot release held deliveries at start-up"),
    }
    loop {
        beat.busy();
        if let Err(err) = sweep(&*store, &config) {
            beat.error();
            // A refused write (low space) is expected while it lasts; the next sweep retries.
            if err.is_host_fault() {
                tracing::debug!(error = %err, "janitor sweep skipped");
            } else {
                tracing::error!(error = %err, "janitor sweep failed");
            }
        }
        beat.idle();
        if !beat.rest(period(config.current().delivery.hold_retention)) {
            return;
        }
    }
}

fn sweep(store: &dyn Retention, config: &SharedConfig) -> Result<(), StoreError> {
    let delivery = config.current().delivery.clone();
    let now = now_millis();
    let expired = store.expire_held(now, delivery.hold_retention.as_millis() as u64)?;
    let purged = store.purge_finished(now, delivery.delivery_retention.as_millis() as u64)?;
    let forgotten = store.purge_idempotency(now)?;
    // Deletes interrupted by a crash or refused for space at start-up.
    store.purge_deleted_subscriptions()?;
    if expired + purged + forgotten > 0 {
        tracing::info!(expired, purged, forgotten, "janitor sweep");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_period_is_a_tenth_of_hold_retention_within_bounds() {
        assert_eq!(period(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(100)), Duration::from_secs(10));
        assert_eq!(period(Duration::from_secs(72 * 3600)), MAX_PERIOD);
    }

    #[test]
    fn a_sweep_on_an_empty_store_succeeds_and_refused_writes_are_host_faults() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            SharedConfig::new(crate::config::Config::parse(crate::config::DEVELOPMENT_DEFAULT).unwrap());
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        sweep(&store, &config).unwrap();

        // A reserve no disk can meet: the sweep is refused, as a host fault (logged quietly,
        // retried at the next sweep), never as a failure of the data.
        let guarded = tempfile::tempdir().unwrap();
        let options = crate::store::StoreOptions { min_free_bytes: u64::MAX, ..Default::default() };
        let store = crate::store::SledStore::open_with(guarded.path(), &options).unwrap();
        let err = sweep(&store, &config).unwrap_err();
        assert!(err.is_host_fault(), "{err}");
    }
}
