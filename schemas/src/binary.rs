//! A direct reader (and writer) of Avro binary for the current `WindowAggregate` schema, the
//! record a sink decodes a million of a second. It reads a [`WindowAggregateRef`], whose strings borrow from
//! the message, so a sink that copies the fields on (into an insert) allocates nothing.
//!
//! Written by hand because apache-avro's serde path matches every field by name, record after
//! record, and that was a third of the ClickHouse sink's time. It is used only when the writer
//! schema is the current one (the codec checks the id), it reads the fields in the schema's order
//! (a test holds the two together), and anything it cannot read is an error, never a panic.

use crate::derived::{WindowAggregate, WindowAggregateRef};
use crate::error::DecodeError;

fn short(what: &str) -> DecodeError {
    DecodeError::Avro(format!("the record ends inside {what}"))
}

/// A zig-zag varint `long` (at most 10 bytes).
pub(crate) fn long(body: &mut &[u8]) -> Result<i64, DecodeError> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = body.split_first().ok_or_else(|| short("a long"))?;
        *body = rest;
        if shift == 63 && byte > 1 {
            return Err(DecodeError::Avro("a long beyond 64 bits".into()));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(DecodeError::Avro("a long longer than 10 bytes".into()))
}

pub(crate) fn double(body: &mut &[u8]) -> Result<f64, DecodeError> {
    let (bytes, rest) = body
        .split_first_chunk::<8>()
        .ok_or_else(|| short("a double"))?;
    *body = rest;
    Ok(f64::from_le_bytes(*bytes))
}

pub(crate) fn string<'a>(body: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    let len = usize::try_from(long(body)?)
        .map_err(|_| DecodeError::Avro("a string of negative length".into()))?;
    if body.len() < len {
        return Err(short("a string"));
    }
    let (bytes, rest) = body.split_at(len);
    *body = rest;
    std::str::from_utf8(bytes).map_err(|e| DecodeError::Avro(e.to_string()))
}

/// A `["null", T]` union: branch 0 is null, branch 1 is `T`.
pub(crate) fn optional<'a, T>(
    body: &mut &'a [u8],
    read: fn(&mut &'a [u8]) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    match long(body)? {
        0 => Ok(None),
        1 => read(body).map(Some),
        n => Err(DecodeError::Avro(format!(
            "union branch {n} of a nullable field"
        ))),
    }
}

/// Appends `v` as an Avro `long` (zig-zag varint).
pub(crate) fn write_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Appends `s` as an Avro `string`.
pub(crate) fn write_string(buf: &mut Vec<u8>, s: &str) {
    write_long(buf, i64::try_from(s.len()).unwrap_or(i64::MAX));
    buf.extend_from_slice(s.as_bytes());
}

/// Appends a nullable string (`["null", "string"]`).
pub(crate) fn write_optional_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => write_long(buf, 0),
        Some(s) => {
            write_long(buf, 1);
            write_string(buf, s);
        }
    }
}

/// Appends `v` as an Avro `double`.
pub(crate) fn write_double(buf: &mut Vec<u8>, v: f64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends a nullable double (`["null", "double"]`).
pub(crate) fn write_optional_double(buf: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => write_long(buf, 0),
        Some(v) => {
            write_long(buf, 1);
            write_double(buf, v);
        }
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

    /// The fields of `window_aggregate.avsc`, in the order [`read_window_aggregate`] reads them.
    const WINDOW_AGGREGATE_FIELDS: [&str; 20] = [
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
        assert_eq!(names, WINDOW_AGGREGATE_FIELDS);
        Ok(())
    }

    #[test]
    fn longs_read_as_avro_writes_them() -> Result<(), DecodeError> {
        for (bytes, want) in [
            (&[0x00][..], 0),
            (&[0x01], -1),
            (&[0x02], 1),
            (&[0x7f], -64),
            (&[0x80, 0x01], 64),
            (
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MAX,
            ),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MIN,
            ),
        ] {
            let mut body = bytes;
            assert_eq!(long(&mut body)?, want);
            assert!(body.is_empty());
        }
        assert!(long(&mut &[0x80][..]).is_err());
        assert!(long(&mut &[0xff; 11][..]).is_err());
        let too_long = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(long(&mut &too_long[..]).is_err());
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
