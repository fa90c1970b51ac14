//! The registry server's Prometheus metrics, named in one place.
#![allow(clippy::disallowed_macros)] // the one module that may call the raw macros

use metrics::{counter, gauge};

/// Schemas the registry holds.
pub fn schemas(count: usize) {
    gauge!("fleetpulse_registry_schemas").set(count as f64);
}

/// A request answered, by route and HTTP status.
pub fn request(route: &'static str, status: u16) {
    counter!("fleetpulse_registry_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
}
