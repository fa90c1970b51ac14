//! The telemetry record: one reading of one device, and the checks a reading must pass before the
//! pipeline uses it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Smallest accepted event time: the Unix epoch.
pub const TS_MIN_MS: i64 = 0;
/// Largest accepted event time (exclusive): 2100-01-01T00:00:00Z. Anything later is a broken
/// clock or a unit mistake (microseconds sent as milliseconds), not a reading.
pub const TS_MAX_MS: i64 = 4_102_444_800_000;
/// Largest accepted response time: a day. Anything longer is not a response time, and values
/// past `f32::MAX` (which the pipeline's windows store) would turn a window's quantiles and
/// health score into infinities and NaN.
pub const RESPONSE_TIME_MAX_MS: f64 = 86_400_000.0;

/// One reading of one device. Field docs are in `schemas/avro/telemetry.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Tenant that owns the device.
    pub tenant_id: String,
    /// Device id, also the Kafka key.
    pub device_id: String,
    /// Event time, ms since the epoch. JSON may also give an RFC 3339 string.
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub ts: i64,
    /// Response time in ms, if the reading carries one.
    #[serde(default)]
    pub response_time_ms: Option<f64>,
    /// Whether the operation succeeded.
    #[serde(default = "ok_by_default")]
    pub ok: bool,
    /// Error code when `ok` is false.
    #[serde(default)]
    pub error_code: Option<String>,
    /// Battery charge, percent.
    #[serde(default)]
    pub battery_pct: Option<f64>,
    /// Signal strength, dBm.
    #[serde(default)]
    pub signal_dbm: Option<f64>,
    /// Device class (sensor, gateway, ...).
    #[serde(default)]
    pub device_class: Option<String>,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

fn ok_by_default() -> bool {
    true
}

impl Telemetry {
    /// A valid reading, for examples and tests.
    pub fn example() -> Telemetry {
        Telemetry {
            tenant_id: "acme".into(),
            device_id: "dev-0001".into(),
            ts: 1_700_000_000_000,
            response_time_ms: Some(42.5),
            ok: true,
            error_code: None,
            battery_pct: Some(87.0),
            signal_dbm: Some(-71.0),
            device_class: Some("sensor".into()),
            attributes: BTreeMap::from([("fw".to_string(), "1.2.3".to_string())]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::InvalidField;
    use crate::record::Record;

    fn with(f: impl FnOnce(&mut Telemetry)) -> Result<(), InvalidField> {
        let mut t = Telemetry::example();
        f(&mut t);
        t.validate()
    }

    #[test]
    fn example_is_valid() {
        assert_eq!(with(|_| {}), Ok(()));
    }

    #[test]
    fn each_rule_names_its_field() {
        type Breaker = fn(&mut Telemetry);
        let cases: [(&str, Breaker); 10] = [
            ("tenant_id", |t| t.tenant_id.clear()),
            ("device_id", |t| t.device_id.clear()),
            ("ts", |t| t.ts = -1),
            ("ts", |t| t.ts = TS_MAX_MS),
            ("response_time_ms", |t| t.response_time_ms = Some(-0.5)),
            ("response_time_ms", |t| t.response_time_ms = Some(f64::NAN)),
            ("response_time_ms", |t| t.response_time_ms = Some(1e39)),
            ("battery_pct", |t| t.battery_pct = Some(100.5)),
            ("battery_pct", |t| t.battery_pct = Some(-1.0)),
            ("signal_dbm", |t| t.signal_dbm = Some(f64::INFINITY)),
        ];
        for (field, break_it) in cases {
            assert_eq!(with(break_it).map_err(|e| e.field), Err(field));
        }
    }

    #[test]
    fn edges_are_valid() {
        assert_eq!(with(|t| t.ts = TS_MIN_MS), Ok(()));
        assert_eq!(with(|t| t.ts = TS_MAX_MS - 1), Ok(()));
        assert_eq!(with(|t| t.battery_pct = Some(0.0)), Ok(()));
        assert_eq!(with(|t| t.battery_pct = Some(100.0)), Ok(()));
        assert_eq!(with(|t| t.response_time_ms = Some(0.0)), Ok(()));
        assert_eq!(
            with(|t| t.response_time_ms = Some(RESPONSE_TIME_MAX_MS)),
            Ok(())
        );
    }
}
