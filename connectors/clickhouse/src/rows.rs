//! One row type per table, in the tables' column order (RowBinary, which 18.16 speaks, is
//! positional), built from the `schemas` records. Times become `DateTime` seconds for queries,
//! and stay exact in `*_ms` columns where the record has milliseconds.

use clickhouse::Row;
use schemas::{
    Anomaly, DeadLetter, LastSeen, Registration, StatusTransition, WindowAggregate,
    wire_name as name,
};
use serde::{Deserialize, Serialize};

/// Seconds for a `DateTime` column; times before 1970 or after 2106 (the column's range) clamp.
pub(crate) fn seconds(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1_000)).unwrap_or(if ms < 0 { 0 } else { u32::MAX })
}

/// A window's length, ms, from its bounds.
pub(crate) fn window_ms(start: i64, end: i64) -> u32 {
    end.checked_sub(start)
        .and_then(|ms| u32::try_from(ms).ok())
        .unwrap_or(u32::MAX)
}

/// A count for a `UInt32` column.
pub(crate) fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `device_aggregates`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AggregateRow {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Device class.
    pub device_class: Option<String>,
    /// Window length, ms.
    pub window_ms: u32,
    /// Window start, s.
    pub window_start: u32,
    /// Window end, s.
    pub window_end: u32,
    /// Readings.
    pub count: u32,
    /// Readings with an error.
    pub errors: u32,
    /// `errors / count`.
    pub error_rate: f64,
    /// Response time, ms.
    pub rt_min: Option<f64>,
    /// Response time, ms.
    pub rt_mean: Option<f64>,
    /// Response time, ms.
    pub rt_p50: Option<f64>,
    /// Response time, ms.
    pub rt_p95: Option<f64>,
    /// Response time, ms.
    pub rt_p99: Option<f64>,
    /// Response time, ms.
    pub rt_max: Option<f64>,
    /// Battery, %.
    pub battery_last: Option<f64>,
    /// Battery, %.
    pub battery_min: Option<f64>,
    /// Signal, dBm.
    pub signal_mean: Option<f64>,
    /// Health score, 0-100.
    pub health_score: f64,
    /// Deterministic id.
    pub event_id: String,
    /// Clock offset readings were re-timed by, ms.
    pub clock_offset_ms: Option<i64>,
}

impl From<&WindowAggregate> for AggregateRow {
    fn from(a: &WindowAggregate) -> AggregateRow {
        AggregateRow::from(a.clone())
    }
}

/// By value, as the sink converts: the strings move instead of being copied.
impl From<WindowAggregate> for AggregateRow {
    fn from(a: WindowAggregate) -> AggregateRow {
        AggregateRow {
            window_ms: window_ms(a.window_start, a.window_end),
            tenant_id: a.tenant_id,
            device_id: a.device_id,
            device_class: a.device_class,
            window_start: seconds(a.window_start),
            window_end: seconds(a.window_end),
            count: count(a.count),
            errors: count(a.errors),
            error_rate: a.error_rate,
            rt_min: a.rt_min,
            rt_mean: a.rt_mean,
            rt_p50: a.rt_p50,
            rt_p95: a.rt_p95,
            rt_p99: a.rt_p99,
            rt_max: a.rt_max,
            battery_last: a.battery_last,
            battery_min: a.battery_min,
            signal_mean: a.signal_mean,
            health_score: a.health_score,
            event_id: a.event_id,
            clock_offset_ms: a.clock_offset_ms,
        }
    }
}

/// `device_anomalies`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AnomalyRow {
    /// Tenant.
    pub tenant_id: String,
    /// Device (empty for tenant-level anomalies).
    pub device_id: String,
    /// Device class.
    pub device_class: Option<String>,
    /// Kind (`rt_mean_high`, `mass_offline`, ...).
    pub kind: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// Severity.
    pub severity: String,
    /// What was observed.
    pub observed: f64,
    /// The threshold it was judged against.
    pub threshold: f64,
    /// The baseline, for baseline rules.
    pub baseline: Option<f64>,
    /// When, s.
    pub ts: u32,
    /// When, ms.
    pub ts_ms: i64,
    /// For people.
    pub message: String,
    /// Deterministic id.
    pub event_id: String,
}

impl From<&Anomaly> for AnomalyRow {
    fn from(a: &Anomaly) -> AnomalyRow {
        AnomalyRow {
            tenant_id: a.tenant_id.clone(),
            device_id: a.device_id.clone(),
            device_class: a.device_class.clone(),
            kind: name(&a.kind),
            state: name(&a.state),
            severity: name(&a.severity),
            observed: a.observed,
            threshold: a.threshold,
            baseline: a.baseline,
            ts: seconds(a.ts),
            ts_ms: a.ts,
            message: a.message.clone(),
            event_id: a.event_id.clone(),
        }
    }
}

/// `device_status`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct StatusRow {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Device class.
    pub device_class: Option<String>,
    /// `online` or `offline`.
    pub status: String,
    /// The status before, if any.
    pub previous: Option<String>,
    /// When, s.
    pub ts: u32,
    /// When, ms.
    pub ts_ms: i64,
    /// The device's last reading, ms.
    pub last_seen_ms: i64,
    /// Why.
    pub reason: String,
    /// How long the previous status lasted, ms.
    pub time_in_previous_ms: Option<i64>,
    /// Deterministic id.
    pub event_id: String,
}

impl From<&StatusTransition> for StatusRow {
    fn from(s: &StatusTransition) -> StatusRow {
        StatusRow {
            tenant_id: s.tenant_id.clone(),
            device_id: s.device_id.clone(),
            device_class: s.device_class.clone(),
            status: name(&s.status),
            previous: s.previous.as_ref().map(name),
            ts: seconds(s.ts),
            ts_ms: s.ts,
            last_seen_ms: s.last_seen,
            reason: name(&s.reason),
            time_in_previous_ms: s.time_in_previous_ms,
            event_id: s.event_id.clone(),
        }
    }
}

/// `dead_letters`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// Topic (or file) the record came from.
    pub source_topic: String,
    /// Its partition.
    pub source_partition: i32,
    /// Its offset.
    pub source_offset: i64,
    /// Its key, as bytes.
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    /// Its value, as bytes (at most 256 KiB).
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
    /// Why it was rejected.
    pub reason: String,
    /// Details.
    pub detail: String,
    /// Its Kafka timestamp, ms.
    pub record_ts_ms: Option<i64>,
    /// Deterministic id.
    pub event_id: String,
}

impl From<&DeadLetter> for DeadLetterRow {
    fn from(d: &DeadLetter) -> DeadLetterRow {
        DeadLetterRow {
            source_topic: d.source_topic.clone(),
            source_partition: d.source_partition,
            source_offset: d.source_offset,
            key: d.key.clone(),
            raw: d.raw.clone(),
            reason: d.reason.as_str().to_string(),
            detail: d.detail.clone(),
            record_ts_ms: d.record_ts,
            event_id: d.event_id.clone(),
        }
    }
}

/// `device_last_seen`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct LastSeenRow {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Device class the latest reading gave.
    pub device_class: Option<String>,
    /// The device's latest reading, s.
    pub last_seen: u32,
    /// The device's latest reading, ms: the version the newest row wins by.
    pub last_seen_ms: i64,
    /// Deterministic id.
    pub event_id: String,
}

impl From<&LastSeen> for LastSeenRow {
    fn from(l: &LastSeen) -> LastSeenRow {
        LastSeenRow::from(l.clone())
    }
}

/// By value, as the sink converts: one of these comes per device and interval, the most frequent
/// derived record, and its strings move instead of being copied.
impl From<LastSeen> for LastSeenRow {
    fn from(l: LastSeen) -> LastSeenRow {
        LastSeenRow {
            last_seen: seconds(l.last_seen),
            last_seen_ms: l.last_seen,
            tenant_id: l.tenant_id,
            device_id: l.device_id,
            device_class: l.device_class,
            event_id: l.event_id,
        }
    }
}

/// `device_inventory`: a registration, or a decommission (ids only).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct InventoryRow {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Device class.
    pub device_class: Option<String>,
    /// Label names, in order.
    pub label_names: Vec<String>,
    /// Label values, in the order of `label_names`.
    pub label_values: Vec<String>,
    /// Expected reporting interval, ms.
    pub expected_interval_ms: Option<i64>,
    /// 1 when watched.
    pub monitoring_enabled: u8,
    /// Poll target.
    pub poll_url: Option<String>,
    /// 1 for a decommission.
    pub decommissioned: u8,
    /// When the record was written, s.
    pub changed: u32,
    /// When the record was written, ms: the version the newest row wins by.
    pub version: u64,
}

impl InventoryRow {
    /// A registration written at `at_ms`.
    pub fn registered(r: Registration, at_ms: i64) -> InventoryRow {
        let (label_names, label_values) = r.labels.into_iter().unzip();
        InventoryRow {
            tenant_id: r.tenant_id,
            device_id: r.device_id,
            device_class: r.device_class,
            label_names,
            label_values,
            expected_interval_ms: r.expected_interval_ms,
            monitoring_enabled: u8::from(r.monitoring_enabled),
            poll_url: r.poll.map(|p| p.url),
            decommissioned: 0,
            changed: seconds(at_ms),
            version: u64::try_from(at_ms).unwrap_or(0),
        }
    }

    /// The decommission of a device (a tombstone) written at `at_ms`.
    pub fn decommissioned(tenant_id: String, device_id: String, at_ms: i64) -> InventoryRow {
        InventoryRow {
            monitoring_enabled: 0,
            decommissioned: 1,
            ..InventoryRow::registered(Registration::new(tenant_id, device_id), at_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inventory_row_holds_labels_as_parallel_arrays() {
        let registration = Registration {
            labels: [("site", "berlin"), ("rack", "3")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ..Registration::new("t1", "d1")
        };
        let row = InventoryRow::registered(registration, 1_700_000_001_999);
        assert_eq!(row.label_names, ["rack", "site"]);
        assert_eq!(row.label_values, ["3", "berlin"]);
        assert_eq!(
            (row.changed, row.version),
            (1_700_000_001, 1_700_000_001_999)
        );
        assert_eq!(row.monitoring_enabled, 1);
        let gone = InventoryRow::decommissioned("t1".into(), "d1".into(), 5_000);
        assert_eq!((gone.decommissioned, gone.monitoring_enabled), (1, 0));
        assert!(gone.label_names.is_empty());
    }

    #[test]
    fn times_clamp_to_the_datetime_range() {
        assert_eq!(seconds(1_700_000_000_999), 1_700_000_000);
        assert_eq!(seconds(-5), 0);
        assert_eq!(seconds(i64::MAX), u32::MAX);
    }

    #[test]
    fn a_last_seen_keeps_its_milliseconds_beside_the_seconds() {
        let record = LastSeen {
            tenant_id: "t1".into(),
            device_id: "d1".into(),
            device_class: Some("sensor".into()),
            last_seen: 1_700_000_001_999,
            event_id: "lastseen/x".into(),
        };
        let row = LastSeenRow::from(&record);
        assert_eq!(
            (row.last_seen, row.last_seen_ms),
            (1_700_000_001, 1_700_000_001_999)
        );
        assert_eq!(row, LastSeenRow::from(record));
        assert_eq!(
            <LastSeenRow as Row>::COLUMN_NAMES,
            [
                "tenant_id",
                "device_id",
                "device_class",
                "last_seen",
                "last_seen_ms",
                "event_id"
            ]
        );
    }
}
