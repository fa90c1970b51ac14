//! The metrics of `fleetpulse ingest`, named in one place: every count it reports goes through a
//! function here.
#![allow(clippy::disallowed_macros)] // the one module that may call the raw macros

use metrics::{counter, gauge};

/// A request answered with `status`.
pub fn request(status: u16) {
    counter!("fleetpulse_ingest_requests_total", "status" => status.to_string()).increment(1);
}

/// A line accepted (written to Kafka).
pub fn accepted(n: usize) {
    counter!("fleetpulse_ingest_lines_total", "outcome" => "accepted").increment(n as u64);
}

/// A line refused, for `reason`.
pub fn refused(reason: &'static str) {
    counter!("fleetpulse_ingest_lines_total", "outcome" => "refused", "reason" => reason)
        .increment(1);
}

/// Keys that are not revoked.
pub fn keys(active: usize) {
    gauge!("fleetpulse_ingest_keys").set(active as f64);
}
