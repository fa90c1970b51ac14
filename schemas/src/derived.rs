//! The records the pipeline derives from telemetry: window aggregates, anomaly state changes and
//! status transitions. Field docs are in the matching `schemas/avro/*.avsc`.

use serde::{Deserialize, Serialize};

/// Statistics of one device over one tumbling window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregate {
    /// Tenant of the device.
    pub tenant_id: String,
    /// Device id.
    pub device_id: String,
    /// Device class of the latest reading.
    pub device_class: Option<String>,
    /// Inclusive window start, ms.
    pub window_start: i64,
    /// Exclusive window end, ms.
    pub window_end: i64,
    /// Readings in the window.
    pub count: i64,
    /// Readings with `ok = false`.
    pub errors: i64,
    /// `errors / count`.
    pub error_rate: f64,
    /// Smallest response time.
    pub rt_min: Option<f64>,
    /// Mean response time.
    pub rt_mean: Option<f64>,
    /// Median response time (sketch).
    pub rt_p50: Option<f64>,
    /// 95th percentile response time (sketch).
    pub rt_p95: Option<f64>,
    /// 99th percentile response time (sketch).
    pub rt_p99: Option<f64>,
    /// Largest response time.
    pub rt_max: Option<f64>,
    /// Battery of the latest reading.
    pub battery_last: Option<f64>,
    /// Lowest battery.
    pub battery_min: Option<f64>,
    /// Mean signal strength.
    pub signal_mean: Option<f64>,
    /// Health score, 0 to 100.
    pub health_score: f64,
    /// Deterministic id for deduplication.
    pub event_id: String,
    /// The clock offset readings of the window were re-timed by, ms; `None` when none was.
    pub clock_offset_ms: Option<i64>,
}

/// The rule that detected an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Mean response time of the last readings above the threshold.
    RtMeanHigh,
    /// Window error rate above the threshold.
    ErrorRateHigh,
    /// Battery below the threshold.
    BatteryLow,
    /// Window p95 far above the device's own baseline.
    RtP95Baseline,
    /// Window error rate far above the device's own baseline.
    ErrorRateBaseline,
    /// Too many online/offline transitions in a period.
    Flapping,
    /// Offline for longer than allowed.
    ProlongedOffline,
    /// A large share of a tenant's devices went offline at once (tenant-level).
    MassOffline,
    /// A kind newer than this reader.
    Unknown,
    /// The device's clock is off the partition's clock truth by more than the tolerance.
    ClockSkew,
}

/// Whether an anomaly started or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyState {
    /// The rule started to hold.
    Firing,
    /// The rule stopped holding.
    Resolved,
}

/// How urgent an anomaly is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Degraded.
    Warning,
    /// Broken.
    Critical,
}

/// A change of an anomaly's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Tenant concerned.
    pub tenant_id: String,
    /// Device concerned; empty for tenant-level kinds.
    pub device_id: String,
    /// Device class, when known.
    pub device_class: Option<String>,
    /// Detecting rule.
    pub kind: AnomalyKind,
    /// Fired or resolved.
    pub state: AnomalyState,
    /// Urgency.
    pub severity: Severity,
    /// Value that triggered the change.
    pub observed: f64,
    /// Threshold it was compared with.
    pub threshold: f64,
    /// The device's baseline, for statistical kinds.
    pub baseline: Option<f64>,
    /// Event time of the change, ms.
    pub ts: i64,
    /// Human-readable explanation.
    pub message: String,
    /// Deterministic id for deduplication.
    pub event_id: String,
}

/// A device's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Sending readings.
    Online,
    /// Silent for longer than its timeout.
    Offline,
}

/// Why a status changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionReason {
    /// The device's first reading.
    FirstSeen,
    /// A reading after being offline.
    Resumed,
    /// Other telemetry moved event time past the deadline.
    Timeout,
    /// Only input idleness (the wall clock) moved event time past the deadline.
    InputIdle,
    /// Silent for longer than the device retention: its state is freed, and its next reading
    /// is `first_seen` again.
    Retired,
    /// Registered in the inventory and silent for its timeout since registration.
    NeverSeen,
    /// Removed from the inventory: its last transition; its state is freed, and its next
    /// reading is `first_seen` again.
    Decommissioned,
    /// The device, or the bridge it speaks through, said it is offline (an availability
    /// report): offline at once, not after the timeout.
    ReportedOffline,
}

/// A device went online or offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusTransition {
    /// Tenant of the device.
    pub tenant_id: String,
    /// Device id.
    pub device_id: String,
    /// Device class, when known.
    pub device_class: Option<String>,
    /// Status after the transition.
    pub status: DeviceStatus,
    /// Status before it; `None` the first time.
    pub previous: Option<DeviceStatus>,
    /// Event time of the transition, ms.
    pub ts: i64,
    /// `ts` of the latest reading, ms.
    pub last_seen: i64,
    /// Why.
    pub reason: TransitionReason,
    /// Time in the previous status, ms.
    pub time_in_previous_ms: Option<i64>,
    /// Deterministic id for deduplication.
    pub event_id: String,
}
