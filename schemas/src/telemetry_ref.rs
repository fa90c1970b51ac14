//! A reading decoded without copying, the form the pipeline's source reads a million of a
//! second: its ids borrow from the message (a JSON id with escapes is the exception), and its
//! attribute map, which nothing downstream reads, is counted for the limits but not kept.
//!
//! The checks are the ones [`Telemetry`] passes through: [`TelemetryRef::validate`] is the one
//! implementation of both.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use crate::binary::{double, long, optional, string};
use crate::error::{DecodeError, InvalidField};
use crate::record::{Record, RecordKind};
use crate::telemetry::{RESPONSE_TIME_MAX_MS, TS_MAX_MS, TS_MIN_MS, Telemetry};

/// How many attributes a reading carries and their bytes (keys and values together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttributeCount {
    /// Entries.
    pub entries: usize,
    /// Bytes of keys and values.
    pub bytes: usize,
}

impl<'de> Deserialize<'de> for AttributeCount {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = AttributeCount;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttributeCount, A::Error> {
                let mut count = AttributeCount::default();
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, Cow<'de, str>>()? {
                    count.entries += 1;
                    count.bytes += k.len() + v.len();
                }
                Ok(count)
            }
        }
        d.deserialize_map(Count)
    }
}

/// One reading, borrowing from the message it was decoded from. Fields as in [`Telemetry`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TelemetryRef<'a> {
    /// Tenant that owns the device.
    #[serde(borrow)]
    pub tenant_id: Cow<'a, str>,
    /// Device id.
    #[serde(borrow)]
    pub device_id: Cow<'a, str>,
    /// Event time, ms since the epoch.
    #[serde(deserialize_with = "crate::timestamp::deserialize")]
    pub ts: i64,
    /// Response time in ms.
    #[serde(default)]
    pub response_time_ms: Option<f64>,
    /// Whether the operation succeeded.
    #[serde(default = "ok_by_default")]
    pub ok: bool,
    /// Error code when `ok` is false.
    #[serde(default, borrow)]
    pub error_code: Option<Cow<'a, str>>,
    /// Battery charge, percent.
    #[serde(default)]
    pub battery_pct: Option<f64>,
    /// Signal strength, dBm.
    #[serde(default)]
    pub signal_dbm: Option<f64>,
    /// Device class.
    #[serde(default, borrow)]
    pub device_class: Option<Cow<'a, str>>,
    /// The attribute map, counted.
    #[serde(default)]
    pub attributes: AttributeCount,
}

fn ok_by_default() -> bool {
    true
}

fn finite(field: &'static str, v: Option<f64>) -> Result<(), InvalidField> {
    match v {
        Some(x) if !x.is_finite() => Err(InvalidField::new(field, format!("{x} is not finite"))),
        _ => Ok(()),
    }
}

impl<'a> TelemetryRef<'a> {
    /// A view of an owned reading.
    pub fn of(t: &'a Telemetry) -> TelemetryRef<'a> {
        TelemetryRef {
            tenant_id: Cow::Borrowed(&t.tenant_id),
            device_id: Cow::Borrowed(&t.device_id),
            ts: t.ts,
            response_time_ms: t.response_time_ms,
            ok: t.ok,
            error_code: t.error_code.as_deref().map(Cow::Borrowed),
            battery_pct: t.battery_pct,
            signal_dbm: t.signal_dbm,
            device_class: t.device_class.as_deref().map(Cow::Borrowed),
            attributes: AttributeCount {
                entries: t.attributes.len(),
                bytes: t.attributes.iter().map(|(k, v)| k.len() + v.len()).sum(),
            },
        }
    }

    /// An owned reading's view that owns its strings (a reading the slow path decoded).
    pub fn owned(t: Telemetry) -> TelemetryRef<'static> {
        let attributes = TelemetryRef::of(&t).attributes;
        TelemetryRef {
            tenant_id: Cow::Owned(t.tenant_id),
            device_id: Cow::Owned(t.device_id),
            ts: t.ts,
            response_time_ms: t.response_time_ms,
            ok: t.ok,
            error_code: t.error_code.map(Cow::Owned),
            battery_pct: t.battery_pct,
            signal_dbm: t.signal_dbm,
            device_class: t.device_class.map(Cow::Owned),
            attributes,
        }
    }

    /// Checks the field values the schema cannot express (ranges, non-empty ids).
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.tenant_id.is_empty() {
            return Err(InvalidField::new("tenant_id", "must not be empty"));
        }
        if self.device_id.is_empty() {
            return Err(InvalidField::new("device_id", "must not be empty"));
        }
        if !(TS_MIN_MS..TS_MAX_MS).contains(&self.ts) {
            return Err(InvalidField::new(
                "ts",
                format!(
                    "{} is outside 1970-01-01..2100-01-01 (expected milliseconds since the epoch)",
                    self.ts
                ),
            ));
        }
        finite("response_time_ms", self.response_time_ms)?;
        if let Some(rt) = self.response_time_ms.filter(|rt| *rt < 0.0) {
            return Err(InvalidField::new(
                "response_time_ms",
                format!("{rt} is negative"),
            ));
        }
        if let Some(rt) = self
            .response_time_ms
            .filter(|rt| *rt > RESPONSE_TIME_MAX_MS)
        {
            return Err(InvalidField::new(
                "response_time_ms",
                format!("{rt} is more than a day ({RESPONSE_TIME_MAX_MS} ms)"),
            ));
        }
        finite("battery_pct", self.battery_pct)?;
        if let Some(b) = self.battery_pct.filter(|b| !(0.0..=100.0).contains(b)) {
            return Err(InvalidField::new(
                "battery_pct",
                format!("{b} is outside 0..=100"),
            ));
        }
        finite("signal_dbm", self.signal_dbm)?;
        Ok(())
    }
}

fn boolean(body: &mut &[u8]) -> Result<bool, DecodeError> {
    let (&byte, rest) = body
        .split_first()
        .ok_or_else(|| DecodeError::Avro("the record ends inside a boolean".into()))?;
    *body = rest;
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(DecodeError::Avro(format!("{b} is not a boolean"))),
    }
}

/// Counts an Avro `map<string>`: blocks of entries, each block's count first (negative: its
/// byte size follows), a zero count last.
fn attributes(body: &mut &[u8]) -> Result<AttributeCount, DecodeError> {
    let mut count = AttributeCount::default();
    loop {
        let n = long(body)?;
        if n == 0 {
            return Ok(count);
        }
        if n < 0 {
            long(body)?;
        }
        for _ in 0..n.unsigned_abs() {
            let key = string(body)?;
            let value = string(body)?;
            count.entries += 1;
            count.bytes += key.len() + value.len();
        }
    }
}

/// Reads one `Telemetry` written with the current schema from the front of `body`, borrowing
/// its strings. Written by hand for the reason `binary.rs` gives; a test holds it to the schema.
pub(crate) fn read_telemetry<'a>(body: &mut &'a [u8]) -> Result<TelemetryRef<'a>, DecodeError> {
    let borrowed = |s: &'a str| Cow::Borrowed(s);
    Ok(TelemetryRef {
        tenant_id: string(body).map(borrowed)?,
        device_id: string(body).map(borrowed)?,
        ts: long(body)?,
        response_time_ms: optional(body, double)?,
        ok: boolean(body)?,
        error_code: optional(body, string)?.map(borrowed),
        battery_pct: optional(body, double)?,
        signal_dbm: optional(body, double)?,
        device_class: optional(body, string)?.map(borrowed),
        attributes: attributes(body)?,
    })
}

/// Telemetry is validated as it is read, borrowed: the owned record is checked the same way.
impl Record for Telemetry {
    const KIND: RecordKind = RecordKind::Telemetry;

    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.device_id)
    }

    fn validate(&self) -> Result<(), InvalidField> {
        TelemetryRef::of(self).validate()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Codec, InputFormat};

    /// Mostly in range, sometimes anything (negative, huge, NaN, infinite), sometimes absent.
    fn number(usual: impl Strategy<Value = f64> + 'static) -> impl Strategy<Value = Option<f64>> {
        proptest::option::of(prop_oneof![4 => usual, 1 => any::<f64>()])
    }

    /// Mostly valid readings, with every kind of invalid one among them.
    fn telemetry() -> impl Strategy<Value = Telemetry> {
        let ts = prop_oneof![4 => TS_MIN_MS..TS_MAX_MS, 1 => any::<i64>()];
        let text = "[a-z0-9/\"\\\\é-]{0,12}";
        (
            (text, text, ts, number(0.0..2e5), any::<bool>()),
            (
                proptest::option::of(text),
                number(0.0..=100.0),
                number(-120.0..0.0),
                proptest::option::of(text),
                proptest::collection::btree_map(text, text, 0..4),
            ),
        )
            .prop_map(
                |((tenant, device, ts, rt, ok), (code, battery, signal, class, attributes))| {
                    Telemetry {
                        tenant_id: tenant,
                        device_id: device,
                        ts,
                        response_time_ms: rt,
                        ok,
                        error_code: code,
                        battery_pct: battery,
                        signal_dbm: signal,
                        device_class: class,
                        attributes,
                    }
                },
            )
    }

    fn same(a: &Result<TelemetryRef<'_>, DecodeError>, b: &Result<Telemetry, DecodeError>) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => *a == TelemetryRef::of(b),
            (Err(a), Err(b)) => a.reason() == b.reason(),
            _ => false,
        }
    }

    proptest! {
        /// The direct Avro reader and the borrowed JSON path agree with apache-avro and the
        /// owned JSON path on every reading, valid or not: same fields, same dead-letter reason.
        #[test]
        fn the_fast_paths_agree_with_the_owned_ones(t in telemetry()) {
            let codec = Codec::builtin();
            let avro = codec.encode(&t).unwrap();
            let fast = codec.decode_telemetry_ref(&avro, InputFormat::Auto);
            let slow = codec.decode::<Telemetry>(&avro);
            prop_assert!(same(&fast, &slow), "{fast:?} / {slow:?}");
            let json = serde_json::to_vec(&t).unwrap();
            let fast = codec.decode_telemetry_ref(&json, InputFormat::Auto);
            let slow = codec.decode_telemetry(&json, InputFormat::Auto);
            prop_assert!(same(&fast, &slow), "{fast:?} / {slow:?}");
        }

        /// Cut short anywhere, or given garbage, the direct reader fails as apache-avro does.
        #[test]
        fn broken_avro_is_undecodable_on_both_paths(
            t in telemetry(),
            cut in any::<prop::sample::Index>(),
        ) {
            let codec = Codec::builtin();
            let avro = codec.encode(&t).unwrap();
            let short = &avro[..crate::WIRE_HEADER_LEN + cut.index(avro.len() - crate::WIRE_HEADER_LEN)];
            let fast = codec.decode_telemetry_ref(short, InputFormat::Avro);
            let slow = codec.decode::<Telemetry>(short);
            prop_assert!(same(&fast, &slow), "{fast:?} / {slow:?}");
        }
    }

    #[test]
    fn json_ids_borrow_unless_escaped() {
        let codec = Codec::builtin();
        let json = br#"{"tenant_id":"a","device_id":"d\"1","ts":5,"attributes":{"fw":"1.2"}}"#;
        let t = codec.decode_telemetry_ref(json, InputFormat::Json).unwrap();
        assert!(matches!(t.tenant_id, Cow::Borrowed("a")));
        assert!(matches!(t.device_id, Cow::Owned(ref d) if d == "d\"1"));
        assert_eq!(
            t.attributes,
            AttributeCount {
                entries: 1,
                bytes: 5
            }
        );
    }

    #[test]
    fn avro_attributes_in_blocks_with_sizes_are_counted() {
        // Two blocks: one of -1 entries with its byte size, then one of 1; then the end.
        let mut body = Vec::new();
        crate::binary::write_long(&mut body, -1);
        crate::binary::write_long(&mut body, 6);
        crate::binary::write_string(&mut body, "fw");
        crate::binary::write_string(&mut body, "1.2");
        crate::binary::write_long(&mut body, 1);
        crate::binary::write_string(&mut body, "k");
        crate::binary::write_string(&mut body, "");
        crate::binary::write_long(&mut body, 0);
        let count = attributes(&mut body.as_slice()).unwrap();
        assert_eq!(
            count,
            AttributeCount {
                entries: 2,
                bytes: 6
            }
        );
    }
}
