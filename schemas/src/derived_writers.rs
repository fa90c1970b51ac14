//! Anomalies and status transitions as [`Record`]s, written straight to Avro under their current
//! schemas, as window aggregates and last-seen times are ([`crate::WindowAggregateRef`],
//! [`crate::LastSeen`]): a restart
//! of a million devices, or a fleet coming online at once, writes one status per device, and
//! apache-avro's serde path costs several times the direct write. Checked against apache-avro
//! for every enum symbol by the tests below.

use std::borrow::Cow;

use crate::binary::{
    write_double, write_long, write_optional_double, write_optional_string, write_string,
};
use crate::derived::{Anomaly, StatusTransition};
use crate::record::{Record, RecordKind};

/// Appends an Avro enum symbol by its index. The Rust enums are declared in their schema's
/// symbol order (the tests compare every symbol with apache-avro's encoding).
fn write_symbol(buf: &mut Vec<u8>, index: i64) {
    write_long(buf, index);
}

/// Appends one `Anomaly` under the current schema.
pub(crate) fn write_anomaly(buf: &mut Vec<u8>, a: &Anomaly) {
    write_string(buf, &a.tenant_id);
    write_string(buf, &a.device_id);
    write_optional_string(buf, a.device_class.as_deref());
    write_symbol(buf, a.kind as i64);
    write_symbol(buf, a.state as i64);
    write_symbol(buf, a.severity as i64);
    write_double(buf, a.observed);
    write_double(buf, a.threshold);
    write_optional_double(buf, a.baseline);
    write_long(buf, a.ts);
    write_string(buf, &a.message);
    write_string(buf, &a.event_id);
}

/// Appends one `StatusTransition` under the current schema.
pub(crate) fn write_status_transition(buf: &mut Vec<u8>, s: &StatusTransition) {
    write_string(buf, &s.tenant_id);
    write_string(buf, &s.device_id);
    write_optional_string(buf, s.device_class.as_deref());
    write_symbol(buf, s.status as i64);
    match s.previous {
        None => write_long(buf, 0),
        Some(p) => {
            write_long(buf, 1);
            write_symbol(buf, p as i64);
        }
    }
    write_long(buf, s.ts);
    write_long(buf, s.last_seen);
    write_symbol(buf, s.reason as i64);
    match s.time_in_previous_ms {
        None => write_long(buf, 0),
        Some(v) => {
            write_long(buf, 1);
            write_long(buf, v);
        }
    }
    write_string(buf, &s.event_id);
}

impl Record for Anomaly {
    const KIND: RecordKind = RecordKind::Anomaly;

    fn write_current(&self, buf: &mut Vec<u8>) -> bool {
        write_anomaly(buf, self);
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

impl Record for StatusTransition {
    const KIND: RecordKind = RecordKind::StatusTransition;

    fn write_current(&self, buf: &mut Vec<u8>) -> bool {
        write_status_transition(buf, self);
        true
    }

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derived::{AnomalyKind, AnomalyState, DeviceStatus, Severity, TransitionReason};
    use proptest::prelude::*;
    use serde::Serialize;

    fn by_avro<T: Serialize>(schema: &str, record: &T) -> Result<Vec<u8>, TestCaseError> {
        let schema = apache_avro::Schema::parse_str(schema)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bytes = Vec::new();
        writer
            .write_ser(&mut bytes, record)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        Ok(bytes)
    }

    /// The symbols of the enum field `field` of `schema`, as Rust values, in the schema's order:
    /// a symbol without a Rust variant fails here, and a variant declared out of the schema's
    /// order writes the wrong index for the symbols after it.
    fn symbols<T: serde::de::DeserializeOwned + Clone + std::fmt::Debug + 'static>(
        schema: &str,
        field: &str,
    ) -> Vec<T> {
        let schema: serde_json::Value = serde_json::from_str(schema).unwrap_or_default();
        let symbols = schema["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f["name"] == field))
            .and_then(|f| f["type"]["symbols"].as_array())
            .cloned()
            .unwrap_or_default();
        let values: Vec<T> = symbols
            .into_iter()
            .map(|symbol| {
                serde_json::from_value(symbol.clone())
                    .unwrap_or_else(|e| panic!("{field}: symbol {symbol} has no variant: {e}"))
            })
            .collect();
        assert!(!values.is_empty(), "{field}: no symbols in the schema");
        values
    }

    const ANOMALY: &str = include_str!("../avro/anomaly.avsc");
    const STATUS: &str = include_str!("../avro/status_transition.avsc");

    fn anomalies() -> impl Strategy<Value = Anomaly> {
        let kind = prop::sample::select(symbols::<AnomalyKind>(ANOMALY, "kind"));
        let state = prop::sample::select(symbols::<AnomalyState>(ANOMALY, "state"));
        let severity = prop::sample::select(symbols::<Severity>(ANOMALY, "severity"));
        (
            (
                "[a-z0-9-]{1,12}",
                "\\PC{0,20}",
                proptest::option::of("[a-z]{0,8}"),
            ),
            (kind, state, severity),
            (
                any::<f64>(),
                any::<f64>(),
                proptest::option::of(any::<f64>()),
            ),
            (any::<i64>(), "\\PC{0,40}", "\\PC{0,40}"),
        )
            .prop_map(
                |((t, d, c), (kind, state, severity), (o, th, b), (ts, m, id))| Anomaly {
                    tenant_id: t,
                    device_id: d,
                    device_class: c,
                    kind,
                    state,
                    severity,
                    observed: o,
                    threshold: th,
                    baseline: b,
                    ts,
                    message: m,
                    event_id: id,
                },
            )
    }

    fn transitions() -> impl Strategy<Value = StatusTransition> {
        let status = || prop::sample::select(symbols::<DeviceStatus>(STATUS, "status"));
        let reason = prop::sample::select(symbols::<TransitionReason>(STATUS, "reason"));
        (
            (
                "[a-z0-9-]{1,12}",
                "\\PC{0,20}",
                proptest::option::of("[a-z]{0,8}"),
            ),
            (status(), proptest::option::of(status()), reason),
            (
                any::<i64>(),
                any::<i64>(),
                proptest::option::of(any::<i64>()),
            ),
            "\\PC{0,40}",
        )
            .prop_map(
                |((t, d, c), (status, previous, reason), (ts, last_seen, time), id)| {
                    StatusTransition {
                        tenant_id: t,
                        device_id: d,
                        device_class: c,
                        status,
                        previous,
                        ts,
                        last_seen,
                        reason,
                        time_in_previous_ms: time,
                        event_id: id,
                    }
                },
            )
    }

    proptest! {
        /// The direct writer writes what apache-avro writes.
        #[test]
        fn anomalies_are_written_as_apache_avro_writes_them(a in anomalies()) {
            let mut direct = Vec::new();
            write_anomaly(&mut direct, &a);
            prop_assert_eq!(direct, by_avro(ANOMALY, &a)?);
        }

        /// The direct writer writes what apache-avro writes.
        #[test]
        fn transitions_are_written_as_apache_avro_writes_them(s in transitions()) {
            let mut direct = Vec::new();
            write_status_transition(&mut direct, &s);
            prop_assert_eq!(direct, by_avro(STATUS, &s)?);
        }

        /// The codec writes them directly, and reads back what it wrote.
        #[test]
        fn the_codec_reads_back_what_it_writes(a in anomalies(), s in transitions()) {
            let codec = crate::Codec::builtin();
            let framed = codec.encode(&a).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Anomaly = codec.decode(&framed).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Compared through the bits, so NaN equals NaN.
            prop_assert_eq!(format!("{back:?}"), format!("{a:?}"));
            let framed = codec.encode(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: StatusTransition = codec.decode(&framed).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, s);
        }
    }
}
