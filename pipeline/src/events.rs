//! The pipeline's Prometheus metrics, named in one place.
#![allow(clippy::disallowed_macros)] // the one module that may call the raw macros

use metrics::{Counter, counter, gauge};
use schemas::DeadLetterReason;

/// Records read from the input, per topic (or file).
pub fn records_in(topic: &str) -> Counter {
    counter!("fleetpulse_pipeline_records_in_total", "topic" => topic.to_string())
}

/// Records written, per output topic.
pub fn records_out(topic: &str) -> Counter {
    counter!("fleetpulse_pipeline_records_out_total", "topic" => topic.to_string())
}

/// One rejected input record.
pub fn dead_letter(reason: DeadLetterReason) {
    counter!("fleetpulse_pipeline_dead_letters_total", "reason" => reason.as_str()).increment(1);
}

/// A reading re-timed by its device's clock offset.
pub fn retimed() {
    counter!("fleetpulse_pipeline_readings_retimed_total").increment(1);
}

/// A device retired after its silence passed the retention, its state freed.
pub fn device_retired() {
    counter!("fleetpulse_pipeline_devices_retired_total").increment(1);
}

/// A device decommissioned by the inventory, its state freed.
pub fn device_decommissioned() {
    counter!("fleetpulse_pipeline_devices_decommissioned_total").increment(1);
}

/// A registered device that never reported went offline (`never_seen`).
pub fn device_never_seen() {
    counter!("fleetpulse_pipeline_devices_never_seen_total").increment(1);
}

/// An online device was reported offline (`reported_offline`).
pub fn device_reported_offline() {
    counter!("fleetpulse_pipeline_devices_reported_offline_total").increment(1);
}

/// Whether the brokers answer (1) or not (0).
pub fn brokers_up(up: bool) {
    gauge!("fleetpulse_pipeline_brokers_up").set(if up { 1.0 } else { 0.0 });
}

/// Whether the source can read its input (1) or is retrying (0).
pub fn source_up(up: bool) {
    gauge!("fleetpulse_pipeline_source_up").set(if up { 1.0 } else { 0.0 });
}

/// A source worker's watermark and its lag behind the wall clock.
pub fn watermark(wm: i64, now: i64) {
    gauge!("fleetpulse_pipeline_watermark_ms").set(wm as f64);
    gauge!("fleetpulse_pipeline_watermark_lag_ms").set((now - wm) as f64);
}

/// A worker's devices, open windows and readings waiting for the frontier.
pub fn worker_state(worker: usize, devices: usize, open_windows: usize, pending: usize) {
    let w = worker.to_string();
    gauge!("fleetpulse_pipeline_devices_tracked", "worker" => w.clone()).set(devices as f64);
    gauge!("fleetpulse_pipeline_open_windows", "worker" => w.clone()).set(open_windows as f64);
    gauge!("fleetpulse_pipeline_pending_readings", "worker" => w).set(pending as f64);
}

/// A record the producer could not deliver.
pub fn delivery_error() {
    counter!("fleetpulse_pipeline_delivery_errors_total").increment(1);
}

/// A derived record that can never be written (it cannot be encoded, or it is too large).
pub fn write_error() {
    counter!("fleetpulse_pipeline_write_errors_total").increment(1);
}
