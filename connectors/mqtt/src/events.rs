//! The metrics of `fleetpulse mqtt`, named in one place: every count it reports goes through a
//! function here.
#![allow(clippy::disallowed_macros)] // the one module that may call the raw macros

use metrics::{counter, gauge};

/// A message taken from the broker, by what it became: `reading`, `availability`, `ignored`,
/// `dead_letter`.
pub fn message(outcome: &'static str) {
    counter!("fleetpulse_mqtt_messages_total", "outcome" => outcome).increment(1);
}

/// A message acknowledged to the broker (after Kafka acknowledged what it became).
pub fn acknowledged() {
    counter!("fleetpulse_mqtt_acknowledged_total").increment(1);
}

/// Whether the gateway is connected to the broker (1) or not (0).
pub fn connected(up: bool) {
    gauge!("fleetpulse_mqtt_connected").set(if up { 1.0 } else { 0.0 });
}

/// Messages taken and not yet acknowledged.
pub fn in_flight(n: usize) {
    gauge!("fleetpulse_mqtt_in_flight").set(n as f64);
}
