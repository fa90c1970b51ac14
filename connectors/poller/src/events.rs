//! The poller's Prometheus metrics, named in one place: every count and gauge it reports goes
//! through a function here, so the names and labels a dashboard depends on are in one file.
#![allow(clippy::disallowed_macros)] // the one module that may call the raw macros

use metrics::{counter, gauge, histogram};
use schemas::ProbeKind;

use crate::breaker::State;

fn kind_name(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::Http => "http",
        ProbeKind::Tcp => "tcp",
    }
}

/// A probe of `kind` ended: `result` is `ok`, the HTTP error (`http_503`) or the failure
/// (`timeout`, `refused`, `unreachable`); `seconds` is how long it took, retries included.
pub fn probed(kind: ProbeKind, result: &str, seconds: f64) {
    counter!("fleetpulse_poller_probes_total", "kind" => kind_name(kind), "result" => result.to_string())
        .increment(1);
    histogram!("fleetpulse_poller_probe_seconds", "kind" => kind_name(kind)).record(seconds);
}

/// A due probe that did not run: `breaker_open` (its device's breaker is open) or `in_flight`
/// (its previous probe has not ended: the device is slower than its interval).
pub fn skipped(reason: &'static str) {
    counter!("fleetpulse_poller_skipped_total", "reason" => reason).increment(1);
}

/// A device's breaker moved to `state`.
pub fn breaker(state: State) {
    let name = match state {
        State::Closed { .. } => "closed",
        State::Open { .. } => "open",
        State::HalfOpen => "half_open",
    };
    counter!("fleetpulse_poller_breaker_transitions_total", "to" => name).increment(1);
}

/// What the poller holds: devices scheduled, probes in flight, breakers open.
pub fn state(devices: usize, in_flight: usize, open: usize) {
    gauge!("fleetpulse_poller_devices").set(devices as f64);
    gauge!("fleetpulse_poller_in_flight").set(in_flight as f64);
    gauge!("fleetpulse_poller_breakers_open").set(open as f64);
}

/// A probe's record could not be handed on (the writer is gone).
pub fn unsent() {
    counter!("fleetpulse_poller_unsent_total").increment(1);
}
