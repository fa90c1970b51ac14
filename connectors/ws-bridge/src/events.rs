//! The bridge's Prometheus metrics, named in one place: every count and gauge it reports goes
//! through a function here, so the names and labels a dashboard depends on are in one file.
#![allow(clippy::disallowed_macros)] // the one module that may call the raw macros

use metrics::{Gauge, counter, gauge, histogram};

/// Why a connection or request was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No valid token.
    Auth,
    /// `bridge.max_connections` reached.
    Connections,
    /// Too many connections from one address.
    Address,
    /// Too many connections for one tenant.
    Tenant,
    /// `/api` requests over their rate.
    ApiRate,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Auth => "auth",
            Refusal::Connections => "connections",
            Refusal::Address => "address",
            Refusal::Tenant => "tenant",
            Refusal::ApiRate => "api_rate",
        }
    }
}

/// Why the bridge closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its socket or queue did not take messages in time.
    SlowConsumer,
    /// It did not speak within `bridge.first_message_ms`.
    NoFirstMessage,
    /// It missed its heartbeats.
    Silent,
    /// It sent more bad messages than `bridge.max_errors`.
    Errors,
}

impl Dropped {
    fn label(self) -> &'static str {
        match self {
            Dropped::SlowConsumer => "slow_consumer",
            Dropped::NoFirstMessage => "no_first_message",
            Dropped::Silent => "silent",
            Dropped::Errors => "errors",
        }
    }
}

/// A derived record read and published.
pub fn event_read() {
    counter!("fleetpulse_bridge_events_total").increment(1);
}

/// A derived record that did not decode (skipped).
pub fn undecodable() {
    counter!("fleetpulse_bridge_undecodable_total").increment(1);
}

/// A last-seen record read.
pub fn last_seen_read() {
    counter!("fleetpulse_bridge_last_seen_total").increment(1);
}

/// Devices changed and not yet written to Redis.
pub fn redis_pending(devices: usize) {
    gauge!("fleetpulse_bridge_redis_pending").set(devices as f64);
}

/// Devices written to Redis.
pub fn redis_written(devices: usize) {
    counter!("fleetpulse_bridge_redis_writes_total").increment(devices as u64);
}

/// Whether Redis answers (1) or not (0).
pub fn redis_up(up: bool) {
    gauge!("fleetpulse_bridge_redis_up").set(if up { 1.0 } else { 0.0 });
}

/// Devices in the store.
pub fn devices(count: usize) {
    gauge!("fleetpulse_bridge_devices").set(count as f64);
}

/// Devices forgotten after their retention.
pub fn devices_expired(count: usize) {
    counter!("fleetpulse_bridge_devices_expired_total").increment(count as u64);
}

/// A connection or request refused.
pub fn refused(why: Refusal) {
    counter!("fleetpulse_bridge_refused_total", "reason" => why.label()).increment(1);
}

/// A connection closed by the bridge.
pub fn dropped(why: Dropped) {
    counter!("fleetpulse_bridge_drops_total", "reason" => why.label()).increment(1);
}

/// A client connected.
pub fn client_connected() {
    gauge!("fleetpulse_bridge_clients").increment(1.0);
}

/// A client gone, with the subscriptions it held.
pub fn client_gone(subscriptions: usize) {
    gauge!("fleetpulse_bridge_clients").decrement(1.0);
    gauge!("fleetpulse_bridge_subscriptions").decrement(subscriptions as f64);
}

/// Subscriptions added (`delta` > 0) or removed.
pub fn subscriptions(delta: isize) {
    gauge!("fleetpulse_bridge_subscriptions").increment(delta as f64);
}

/// A message sent to a client; with the time since its record was read, for an event.
pub fn message_sent(since_read: Option<f64>) {
    counter!("fleetpulse_bridge_messages_sent_total").increment(1);
    if let Some(seconds) = since_read {
        histogram!("fleetpulse_bridge_lag_seconds").record(seconds);
    }
}

/// A subscription's cursor resumed from (`true`) or too old to resume (a resync).
pub fn resumed(from_cursor: bool) {
    let outcome = if from_cursor { "resumed" } else { "resync" };
    counter!("fleetpulse_bridge_resumes_total", "outcome" => outcome).increment(1);
}

/// A client message over a rate: on its connection's (`true`) or its tenant's share.
pub fn rate_limited(connection: bool) {
    let limit = if connection { "connection" } else { "tenant" };
    counter!("fleetpulse_bridge_rate_limited_total", "limit" => limit).increment(1);
}

/// A client message refused as bad.
pub fn client_error() {
    counter!("fleetpulse_bridge_client_errors_total").increment(1);
}

/// Events and bytes held for resumes.
pub fn resume_gauges() -> (Gauge, Gauge) {
    (
        gauge!("fleetpulse_bridge_resume_events"),
        gauge!("fleetpulse_bridge_resume_bytes"),
    )
}
