//! The window aggregate on the wire without apache-avro: a direct reader of Avro binary into a
//! [`WindowAggregateRef`], whose strings borrow from the message, so a sink that copies the
//! fields on (into an insert) allocates nothing, and a direct writer; the record a sink decodes
//! a million of a second and a job writes most after last-seen times.
//!
//! Written by hand because apache-avro's serde path matches every field by name, record after
//! record, and that was a third of the ClickHouse sink's time. It is used only when the writer
//! schema is the current one (the codec checks the id), it reads the fields in the schema's order
//! (a test holds the two together), and anything it cannot read is an error, never a panic.

use std::borrow::Cow;

use serde::Serialize;

use crate::binary::{
    double, long, optional, string, write_double, write_long, write_optional_double,
    write_optional_string, write_string,
};
use crate::derived::WindowAggregate;
use crate::error::DecodeError;
use crate::record::{Record, RecordKind};

/// A [`WindowAggregate`] whose strings borrow from the message it was read from
/// ([`Codec::decode_window_aggregate_ref`](crate::Codec::decode_window_aggregate_ref)), for a
/// consumer that copies the fields on and need not allocate them first. The fields are
/// [`WindowAggregate`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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
    /// The fields of `window_aggregate.avsc`, in the order the direct reader reads them and the
    /// writer writes them (a test holds it to the schema, a round trip to the code).
    pub const FIELDS: [&'static str; 20] = [
        "tenant_id",
        "device_id",
        "device_class",
        "window_start",
        "window_end",
        "count",
        "errors",
        "error_rate",
        "rt_min",
        "rt_mean",
        "rt_p50",
        "rt_p95",
        "rt_p99",
        "rt_max",
        "battery_last",
        "battery_min",
        "signal_mean",
        "health_score",
        "event_id",
        "clock_offset_ms",
    ];

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

impl Record for WindowAggregate {
    const KIND: RecordKind = RecordKind::WindowAggregate;

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.device_id)
    }

    fn read_current(body: &mut &[u8]) -> Option<Result<Self, DecodeError>> {
        Some(read_window_aggregate(body).map(|a| a.to_record()))
    }

    fn write_current(&self, buf: &mut Vec<u8>) -> bool {
        write_window_aggregate(buf, self);
        true
    }
}

/// Appends one `WindowAggregate` under the current schema: the record a job writes most after
/// last-seen times, one per device and window.
pub(crate) fn write_window_aggregate(buf: &mut Vec<u8>, a: &WindowAggregate) {
    write_string(buf, &a.tenant_id);
    write_string(buf, &a.device_id);
    write_optional_string(buf, a.device_class.as_deref());
    write_long(buf, a.window_start);
    write_long(buf, a.window_end);
    write_long(buf, a.count);
    write_long(buf, a.errors);
    write_double(buf, a.error_rate);
    for v in a.borrowed().measures() {
        write_optional_double(buf, v);
    }
    write_double(buf, a.health_score);
    write_string(buf, &a.event_id);
    match a.clock_offset_ms {
        None => write_long(buf, 0),
        Some(v) => {
            write_long(buf, 1);
            write_long(buf, v);
        }
    }
}

/// Reads one `WindowAggregate` written with the current schema from the front of `body`.
pub(crate) fn read_window_aggregate<'a>(
    body: &mut &'a [u8],
) -> Result<WindowAggregateRef<'a>, DecodeError> {
    Ok(WindowAggregateRef {
        tenant_id: string(body)?,
        device_id: string(body)?,
        device_class: optional(body, string)?,
        window_start: long(body)?,
        window_end: long(body)?,
        count: long(body)?,
        errors: long(body)?,
        error_rate: double(body)?,
        rt_min: optional(body, double)?,
        rt_mean: optional(body, double)?,
        rt_p50: optional(body, double)?,
        rt_p95: optional(body, double)?,
        rt_p99: optional(body, double)?,
        rt_max: optional(body, double)?,
        battery_last: optional(body, double)?,
        battery_min: optional(body, double)?,
        signal_mean: optional(body, double)?,
        health_score: double(body)?,
        event_id: string(body)?,
        clock_offset_ms: optional(body, long)?,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Codec, WIRE_HEADER_LEN};

    #[test]
    fn the_fields_are_the_schemas_in_its_order() -> Result<(), String> {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../avro/window_aggregate.avsc"))
                .map_err(|e| e.to_string())?;
        let names: Vec<&str> = schema["fields"]
            .as_array()
            .ok_or("fields")?
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(names, WindowAggregateRef::FIELDS);
        Ok(())
    }

    fn aggregates() -> impl Strategy<Value = WindowAggregate> {
        let opt = || proptest::option::of(-1e9f64..1e9);
        (
            (
                "[a-z0-9-]{1,12}",
                "\\PC{0,20}",
                proptest::option::of("[a-z]{0,8}"),
            ),
            (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()),
            (any::<f64>(), opt(), opt(), opt(), opt(), opt()),
            (opt(), opt(), opt(), opt(), any::<f64>(), "\\PC{0,40}"),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(
                |((t, d, c), (s, e, n, x), (r, a, b, p5, p9, m), (bl, bm, sg, p99, h, id), off)| {
                    WindowAggregate {
                        tenant_id: t,
                        device_id: d,
                        device_class: c,
                        window_start: s,
                        window_end: e,
                        count: n,
                        errors: x,
                        error_rate: r,
                        rt_min: a,
                        rt_mean: b,
                        rt_p50: p5,
                        rt_p95: p9,
                        rt_p99: p99,
                        rt_max: m,
                        battery_last: bl,
                        battery_min: bm,
                        signal_mean: sg,
                        health_score: h,
                        event_id: id,
                        clock_offset_ms: off,
                    }
                },
            )
    }

    proptest! {
        /// The direct writer writes what apache-avro writes.
        #[test]
        fn writes_what_apache_avro_writes(a in aggregates()) {
            let schema = apache_avro::Schema::parse_str(include_str!("../avro/window_aggregate.avsc"))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut by_avro = Vec::new();
            writer.write_ser(&mut by_avro, &a).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut direct = Vec::new();
            write_window_aggregate(&mut direct, &a);
            prop_assert_eq!(direct, by_avro);
        }

        /// What apache-avro writes, this reads back as it was; every shorter prefix is an
        /// error, not a panic or a wrong record.
        #[test]
        fn reads_what_apache_avro_writes(a in aggregates()) {
            let framed = Codec::builtin().encode(&a).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let body = &framed[WIRE_HEADER_LEN..];
            let mut rest = body;
            let read = read_window_aggregate(&mut rest).map_err(|e| TestCaseError::fail(e.to_string()))?.to_record();
            prop_assert!(rest.is_empty());
            // Compared through the bits, so NaN equals NaN.
            prop_assert_eq!(format!("{read:?}"), format!("{a:?}"));
            for cut in 0..body.len() {
                prop_assert!(read_window_aggregate(&mut &body[..cut]).is_err());
            }
            let codec = Codec::builtin();
            let borrowed = codec.decode_window_aggregate_ref(&framed).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(format!("{borrowed:?}"), format!("{:?}", Some(a.borrowed())));
            let mut longer = framed.clone();
            longer.push(0);
            prop_assert!(codec.decode_window_aggregate_ref(&longer).is_err());
        }
    }
}
