//! What `/readyz` reports: whether every source worker can read its input.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Source workers that are failing to read, shared by a process's workers and its HTTP server.
#[derive(Debug, Default)]
pub struct Readiness {
    failing: AtomicUsize,
    started: AtomicUsize,
}

impl Readiness {
    /// A worker's source connected.
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A source worker started failing (`true`) or recovered (`false`).
    pub fn failing(&self, now: bool) {
        if now {
            self.failing.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failing.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Ready: at least one source connected and none is failing.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) > 0 && self.failing.load(Ordering::Relaxed) == 0
    }
}
