//! Liveness and readiness flags shared by the parts of the daemon, read by `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the parts that make the daemon ready; read by the API.
#[derive(Debug, Default)]
pub struct Health {
    delivery_running: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
    pub fn set_delivery_running(&self, running: bool) {
        self.delivery_running.store(running, Ordering::SeqCst);
    }

    pub fn delivery_running(&self) -> bool {
        self.delivery_running.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
