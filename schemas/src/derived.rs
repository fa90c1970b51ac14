//! The records the pipeline derives from telemetry: window aggregates, anomaly state changes and
//! status transitions. Field docs are in the matching `schemas/avro/*.avsc`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::record::{Record, RecordKind};

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

impl Record for WindowAggregate {
    const KIND: RecordKind = RecordKind::WindowAggregate;

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.device_id)
    }

    fn read_current(body: &mut &[u8]) -> Option<Result<Self, crate::DecodeError>> {
        Some(crate::binary::read_window_aggregate(body).map(|a| a.to_record()))
    }

    fn write_current(&self, buf: &mut Vec<u8>) -> bool {
        crate::binary::write_window_aggregate(buf, self);
        true
    }
}

/// A [`WindowAggregate`] whose strings borrow from the message it was read from
/// ([`Codec::decode_window_aggregate_ref`](crate::Codec::decode_window_aggregate_ref)), for a
/// consumer that copies the fields on and need not allocate them first. The fields are
/// [`WindowAggregate`]'s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowAggregateRef<'a> {
    /// Tenant of the device.
    pub tenant_id: &'a str,
    /// Device id.
    pub device_id: &'a str,
    /// Device class of the latest reading.
    pub device_class: Option<&'a str>,
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
    pub event_id: &'a str,
    /// The clock offset readings of the window were re-timed by, ms.
    pub clock_offset_ms: Option<i64>,
}

impl WindowAggregateRef<'_> {
    /// The nine optional measures, from `rt_min` to `signal_mean`, in the schema's order: the
    /// run every encoder of the record writes alike.
    pub fn measures(&self) -> [Option<f64>; 9] {
        [
            self.rt_min,
            self.rt_mean,
            self.rt_p50,
            self.rt_p95,
            self.rt_p99,
            self.rt_max,
            self.battery_last,
            self.battery_min,
            self.signal_mean,
        ]
    }

    /// The record, its strings copied.
    pub fn to_record(&self) -> WindowAggregate {
        WindowAggregate {
            tenant_id: self.tenant_id.into(),
            device_id: self.device_id.into(),
            device_class: self.device_class.map(Into::into),
            window_start: self.window_start,
            window_end: self.window_end,
            count: self.count,
            errors: self.errors,
            error_rate: self.error_rate,
            rt_min: self.rt_min,
            rt_mean: self.rt_mean,
            rt_p50: self.rt_p50,
            rt_p95: self.rt_p95,
            rt_p99: self.rt_p99,
            rt_max: self.rt_max,
            battery_last: self.battery_last,
            battery_min: self.battery_min,
            signal_mean: self.signal_mean,
            health_score: self.health_score,
            event_id: self.event_id.into(),
            clock_offset_ms: self.clock_offset_ms,
        }
    }
}

impl WindowAggregate {
    /// The record as a [`WindowAggregateRef`].
    pub fn borrowed(&self) -> WindowAggregateRef<'_> {
        WindowAggregateRef {
            tenant_id: &self.tenant_id,
            device_id: &self.device_id,
            device_class: self.device_class.as_deref(),
            window_start: self.window_start,
            window_end: self.window_end,
            count: self.count,
            errors: self.errors,
            error_rate: self.error_rate,
            rt_min: self.rt_min,
            rt_mean: self.rt_mean,
            rt_p50: self.rt_p50,
            rt_p95: self.rt_p95,
            rt_p99: self.rt_p99,
            rt_max: self.rt_max,
            battery_last: self.battery_last,
            battery_min: self.battery_min,
            signal_mean: self.signal_mean,
            health_score: self.health_score,
            event_id: &self.event_id,
            clock_offset_ms: self.clock_offset_ms,
        }
    }
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

impl Record for Anomaly {
    const KIND: RecordKind = RecordKind::Anomaly;

    fn write_current(&self, buf: &mut Vec<u8>) -> bool {
        crate::derived_writers::write_anomaly(buf, self);
        true
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(if self.device_id.is_empty() {
            &self.tenant_id
        } else {
            &self.device_id
        })
    }
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

impl Record for StatusTransition {
    const KIND: RecordKind = RecordKind::StatusTransition;

    fn write_current(&self, buf: &mut Vec<u8>) -> bool {
        crate::derived_writers::write_status_transition(buf, self);
        true
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.device_id)
    }
}
