//! What `/readyz` reports: whether every source worker can read its input and the brokers
//! answer; and the error that stopped the job, if one did.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Source workers that are failing to read, shared by a process's workers and its HTTP server.
#[derive(Debug, Default)]
pub struct Readiness {
    failing: AtomicUsize,
    started: AtomicUsize,
    unreachable: AtomicBool,
    fatal: Mutex<Option<String>>,
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

    /// The brokers stopped (`true`) or started again (`false`) answering.
    pub fn unreachable(&self, now: bool) {
        self.unreachable.store(now, Ordering::Relaxed);
    }

    /// A worker met an error that stops the job; the first one is kept.
    pub fn fatal(&self, error: String) {
        if let Ok(mut slot) = self.fatal.lock() {
            slot.get_or_insert(error);
        }
    }

    /// The error that stopped the job, if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|slot| slot.clone())
    }

    /// Ready: at least one source connected, none is failing, the brokers answer, and nothing
    /// stopped the job.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) > 0
            && self.failing.load(Ordering::Relaxed) == 0
            && !self.unreachable.load(Ordering::Relaxed)
            && self.fatal_error().is_none()
    }
}
