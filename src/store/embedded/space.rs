//! Host faults under the data dir: the free-space guard, the storage monitor thread, and the
//! storage error counters.
//!
//! sled 0.34 cannot go on after a failed write: the error is kept as a process-wide "global
//! error" that every later write returns, and a flush waiting for the failed buffer may never
//! return (ARCHITECTURE.md "Host faults"). So a full disk must never reach sled. The
//! [`SpaceGuard`] reads the file system's free space (`statvfs`, cached for
//! [`READING_TTL`]) before writes and refuses them while it is below the reserve
//! (`storage.min_free_bytes`): client writes (publish, create, update, redeliver) below the
//! reserve, the daemon's own small writes (attempt outcomes, holds, janitor) only below half of
//! it, where delivery pauses. Refusals are ordinary `503 unavailable` answers; writes resume by
//! themselves at the first reading above the reserve. A read-only mount is refused the same way.
//!
//! Whatever gets past the guard (another process filling the disk at once, an I/O error, a file
//! system the kernel remounted read-only) poisons sled; the [`Monitor`] finds out within a
//! second by a tiny probe write and records a fatal fault, and the daemon exits non-zero for the
//! service manager to restart it. Nothing acknowledged is lost: a 2xx is only ever answered after
//! its group commit returned.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::health::Health;
use crate::model::now_millis;
use crate::store::embedded::StoreError;

/// How long a free-space reading is reused before `statvfs` is called again.
pub const READING_TTL: Duration = Duration::from_millis(100);

/// Time between two probes of the storage monitor.
pub const PROBE_PERIOD: Duration = Duration::from_secs(1);

/// Who is writing: clients are refused first, the daemon's own bookkeeping last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteClass {
    /// Publishing, creating or changing subscriptions, redelivering: refused below the reserve.
    Client,
    /// Attempt outcomes, holds, janitor sweeps, deletes: refused below half the reserve.
    Internal,
}

/// The state of the data dir's file system, as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceState {
    /// At least the reserve is free.
    Ok,
    /// Below the reserve: client writes are refused.
    Low,
    /// Below half the reserve: every write is refused and delivery pauses.
    Critical,
    /// The file system is mounted read-only.
    ReadOnly,
}

impl SpaceState {
    fn from_u8(value: u8) -> SpaceState {
        match value {
            1 => SpaceState::Low,
            2 => SpaceState::Critical,
            3 => SpaceState::ReadOnly,
            _ => SpaceState::Ok,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            SpaceState::Ok => 0,
            SpaceState::Low => 1,
            SpaceState::Critical => 2,
            SpaceState::ReadOnly => 3,
        }
    }
}

/// Storage errors by kind since start-up, for `atender_storage_errors_total{kind}`.
#[derive(Debug, Default)]
pub struct StorageErrors {
    /// Writes refused because free space is below the reserve.
    pub no_space: AtomicU64,
    /// Writes refused because the file system is read-only.
    pub read_only: AtomicU64,
    /// I/O errors reported by the storage engine (each one is fatal).
    pub io: AtomicU64,
    /// Records that did not decode.
    pub corrupt: AtomicU64,
    /// Waits for a flush that gave up (the flush did not return in time).
    pub stalled: AtomicU64,
}

impl StorageErrors {
    /// Counts `err` under its kind (limit and conflict errors are not storage errors).
    pub fn count(&self, err: &StoreError) {
        let counter = match err {
            StoreError::NoSpace { .. } => &self.no_space,
            StoreError::ReadOnly => &self.read_only,
            StoreError::Io(_) => &self.io,
            StoreError::Corrupt(_) | StoreError::MasterKey(_) => &self.corrupt,
            StoreError::Stalled => &self.stalled,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(kind, count)` pairs, every kind present.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("no_space", get(&self.no_space)),
            ("read_only", get(&self.read_only)),
            ("io", get(&self.io)),
            ("corrupt", get(&self.corrupt)),
            ("stalled", get(&self.stalled)),
        ]
    }
}

/// Free space of the data dir's file system against the reserve.
#[derive(Debug)]
pub struct SpaceGuard {
    dir: PathBuf,
    /// Bytes that must stay free for client writes; 0 turns the guard off.
    reserve: u64,
    /// Monotonic time of the last reading, in ms since `epoch` (0: never read).
    read_at: AtomicU64,
    epoch: Instant,
    free: AtomicU64,
    read_only: std::sync::atomic::AtomicBool,
    state: AtomicU8,
    /// Serialises readings so one caller reads while the others use the last value.
    reading: Mutex<()>,
    errors: Arc<StorageErrors>,
}

impl SpaceGuard {
    pub fn new(dir: &Path, reserve: u64, errors: Arc<StorageErrors>) -> SpaceGuard {
        let guard = SpaceGuard {
            dir: dir.to_owned(),
            reserve,
            read_at: AtomicU64::new(0),
            epoch: Instant::now(),
            free: AtomicU64::new(u64::MAX),
            read_only: std::sync::atomic::AtomicBool::new(false),
            state: AtomicU8::new(SpaceState::Ok.as_u8()),
            reading: Mutex::new(()),
            errors,
        };
        guard.refresh();
        guard
    }

    /// Admits a write of about `bytes` (0 when small or unknown) of `class`, or says why not.
    /// The bytes of an admitted write are taken off the last reading at once, so the writes
    /// admitted before the next `statvfs` cannot together run far past the reserve (and
    /// readiness says so as soon as the estimate is below it); the next reading corrects it.
    pub fn admit_bytes(&self, class: WriteClass, bytes: u64) -> Result<(), StoreError> {
        self.admit(class)?;
        if bytes > 0 {
            let _ = self
                .free
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |free| Some(free.saturating_sub(bytes)));
            self.classify();
        }
        Ok(())
    }

    /// Admits a write of `class`, or says why not (`NoSpace`, `ReadOnly`).
    pub fn admit(&self, class: WriteClass) -> Result<(), StoreError> {
        let refused = match (self.state(), class) {
            (SpaceState::Ok, _) | (SpaceState::Low, WriteClass::Internal) => None,
            (SpaceState::ReadOnly, _) => Some(StoreError::ReadOnly),
            (SpaceState::Low | SpaceState::Critical, _) => {
                Some(StoreError::NoSpace { free: self.free.load(Ordering::Relaxed), reserve: self.reserve })
            }
        };
        match refused {
            None => Ok(()),
            Some(err) => {
                self.errors.count(&err);
                Err(err)
            }
        }
    }

    /// The current state, read again when the last reading is older than [`READING_TTL`].
    pub fn state(&self) -> SpaceState {
        let elapsed = self.epoch.elapsed().as_millis() as u64;
        if elapsed.saturating_sub(self.read_at.load(Ordering::Relaxed)) >= READING_TTL.as_millis() as u64 {
            if let Ok(_reading) = self.reading.try_lock() {
                self.refresh();
            }
        }
        SpaceState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Bytes free for unprivileged users at the last reading.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Why writes are refused now, in words, or `None`.
    pub fn refusal(&self) -> Option<String> {
        match self.state() {
            SpaceState::Ok => None,
            SpaceState::ReadOnly => Some(format!("{} is on a read-only file system", self.dir.display())),
            SpaceState::Low | SpaceState::Critical => Some(format!(
                "{} bytes free on the file system of {}, below the reserve of {} bytes (storage.min_free_bytes)",
                self.free_bytes(),
                self.dir.display(),
                self.reserve
            )),
        }
    }

    fn refresh(&self) {
        // An unreadable directory keeps the last reading: sled's own writes will say more.
        if let Ok(stat) = rustix::fs::statvfs(&self.dir) {
            self.read_only
                .store(stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY), Ordering::Relaxed);
            self.free.store(stat.f_bavail.saturating_mul(stat.f_frsize), Ordering::Relaxed);
        }
        self.read_at.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.classify();
    }

    /// Sets the state from the free-space estimate and the read-only flag; logs transitions.
    fn classify(&self) {
        let free = self.free.load(Ordering::Relaxed);
        let state = if self.read_only.load(Ordering::Relaxed) {
            SpaceState::ReadOnly
        } else if self.reserve == 0 || free >= self.reserve {
            SpaceState::Ok
        } else if free >= self.reserve / 2 {
            SpaceState::Low
        } else {
            SpaceState::Critical
        };
        let before = SpaceState::from_u8(self.state.swap(state.as_u8(), Ordering::Relaxed));
        if state != before {
            match state {
                SpaceState::Ok => {
                    tracing::info!(free, reserve = self.reserve, "storage has space again; writes resume")
                }
                SpaceState::Low => tracing::warn!(
                    free,
                    reserve = self.reserve,
                    "storage is below its free-space reserve; refusing client writes with 503"
                ),
                SpaceState::Critical => tracing::warn!(
                    free,
                    reserve = self.reserve,
                    "storage is below half its free-space reserve; refusing every write and pausing delivery"
                ),
                SpaceState::ReadOnly => {
                    tracing::error!(dir = %self.dir.display(), "the data dir's file system is read-only; refusing writes")
                }
            }
        }
    }
}

/// The storage monitor thread: re-reads the free space and probes sled with a tiny write every
/// [`PROBE_PERIOD`]; a probe that fails is a fatal fault (sled is poisoned).
pub struct Monitor {
    /// Dropped with the monitor: the thread wakes at once and releases its database handle
    /// (sled's file lock goes with the last handle).
    _stop: crossbeam_channel::Sender<()>,
    /// When the last probe finished (Unix ms), for readiness.
    pub last_probe_ok: Arc<AtomicU64>,
}

impl Monitor {
    pub fn start(
        db: sled::Db,
        space: Arc<SpaceGuard>,
        health: Arc<Health>,
        errors: Arc<StorageErrors>,
    ) -> std::io::Result<Monitor> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let last_probe_ok = Arc::new(AtomicU64::new(now_millis()));
        let thread_last = last_probe_ok.clone();
        std::thread::Builder::new().name("storage-monitor".into()).spawn(move || {
            let beat = health.register("storage-monitor", Duration::from_secs(30));
            loop {
                beat.busy();
                // A read-only mount refuses writes anyway; a probe would only poison sled. A
                // full disk is probed too: sled's own background flush may have failed there.
                if space.state() != SpaceState::ReadOnly {
                    match db.insert(b"storage-probe", &now_millis().to_be_bytes()) {
                        Ok(_) => thread_last.store(now_millis(), Ordering::Relaxed),
                        Err(err) => {
                            beat.error();
                            let err = StoreError::from(err);
                            errors.count(&err);
                            health
                                .fatal(format!("the storage engine failed a write and cannot go on: {err}"));
                        }
                    }
                } else {
                    thread_last.store(now_millis(), Ordering::Relaxed);
                }
                beat.idle();
                // Stops with the store (its last handle dropped) or at the daemon's shutdown.
                crossbeam_channel::select! {
                    recv(stopped) -> _ => return,
                    recv(beat.stop_signal()) -> _ => return,
                    default(PROBE_PERIOD) => {}
                }
            }
        })?;
        Ok(Monitor { _stop: stop, last_probe_ok })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_client_writes_first() {
        let dir = tempfile::tempdir().unwrap();
        let errors = Arc::new(StorageErrors::default());
        let open = SpaceGuard::new(dir.path(), 0, errors.clone());
        assert_eq!(open.state(), SpaceState::Ok);
        assert!(open.admit(WriteClass::Client).is_ok());

        // Half of an impossible reserve is still more than any disk has: critical.
        let full = SpaceGuard::new(dir.path(), u64::MAX, errors.clone());
        assert_eq!(full.state(), SpaceState::Critical);
        assert!(matches!(full.admit(WriteClass::Client), Err(StoreError::NoSpace { .. })));
        assert!(matches!(full.admit(WriteClass::Internal), Err(StoreError::NoSpace { .. })));
        assert!(full.refusal().unwrap().contains("storage.min_free_bytes"));

        // Between half the reserve and the reserve: only clients are refused.
        let free = full.free_bytes();
        let low = SpaceGuard::new(dir.path(), free + free / 2, errors.clone());
        assert_eq!(low.state(), SpaceState::Low);
        assert!(low.admit(WriteClass::Client).is_err());
        assert!(low.admit(WriteClass::Internal).is_ok());
        assert_eq!(errors.no_space.load(Ordering::Relaxed), 3);
    }
}
