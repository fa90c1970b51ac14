//! Bounds on what one reading may hold. A broken or hostile producer could otherwise send ids,
//! classes or attribute maps of a megabyte, and every one of them would be kept, checkpointed
//! and sent downstream. Beyond a bound a reading is rejected naming the field and the limit,
//! never truncated: a truncated id would be another device.

use serde::{Deserialize, Serialize};

use crate::error::InvalidField;
use crate::telemetry::Telemetry;
use crate::telemetry_ref::TelemetryRef;

/// The bounds, each far above what a real fleet sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The most bytes of `tenant_id`, `device_id` and `device_class`, each.
    pub id_bytes: usize,
    /// The most entries of the attribute map.
    pub attributes: usize,
    /// The most bytes of the attribute map, keys and values together.
    pub attribute_bytes: usize,
    /// The most bytes of one message, as read from Kafka or a file.
    pub message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            id_bytes: 256,
            attributes: 256,
            attribute_bytes: 65_536,
            message_bytes: 262_144,
        }
    }
}

fn over(field: &'static str, size: usize, what: &str, limit: usize, key: &str) -> InvalidField {
    InvalidField::new(
        field,
        format!("{size} {what}, over the limit of {limit} (pipeline.limits.{key})"),
    )
}

impl Limits {
    /// Checks a message's size before it is decoded.
    pub fn check_message(&self, len: usize) -> Result<(), InvalidField> {
        if len > self.message_bytes {
            return Err(over(
                "message",
                len,
                "bytes",
                self.message_bytes,
                "message_bytes",
            ));
        }
        Ok(())
    }

    /// Checks a decoded reading's ids and attributes.
    pub fn check(&self, t: &Telemetry) -> Result<(), InvalidField> {
        self.check_ref(&TelemetryRef::of(t))
    }

    /// Checks the ids and attributes of a reading decoded without copying.
    pub fn check_ref(&self, t: &TelemetryRef<'_>) -> Result<(), InvalidField> {
        let ids = [
            ("tenant_id", Some(&t.tenant_id)),
            ("device_id", Some(&t.device_id)),
            ("device_class", t.device_class.as_ref()),
        ];
        for (field, value) in ids {
            if let Some(v) = value.filter(|v| v.len() > self.id_bytes) {
                return Err(over(field, v.len(), "bytes", self.id_bytes, "id_bytes"));
            }
        }
        let attributes = t.attributes;
        if attributes.entries > self.attributes {
            return Err(over(
                "attributes",
                attributes.entries,
                "entries",
                self.attributes,
                "attributes",
            ));
        }
        if attributes.bytes > self.attribute_bytes {
            return Err(over(
                "attributes",
                attributes.bytes,
                "bytes",
                self.attribute_bytes,
                "attribute_bytes",
            ));
        }
        Ok(())
    }

    /// The first limit that is zero, by its key: a zero limit would reject every reading.
    pub fn zero(&self) -> Option<&'static str> {
        [
            ("id_bytes", self.id_bytes),
            ("attributes", self.attributes),
            ("attribute_bytes", self.attribute_bytes),
            ("message_bytes", self.message_bytes),
        ]
        .into_iter()
        .find(|(_, v)| *v == 0)
        .map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Telemetry)) -> Result<(), InvalidField> {
        let mut t = Telemetry::example();
        f(&mut t);
        Limits::default().check(&t)
    }

    #[test]
    fn each_limit_names_its_field_and_key() {
        type Breaker = fn(&mut Telemetry);
        let cases: [(&str, &str, Breaker); 6] = [
            ("tenant_id", "id_bytes", |t| t.tenant_id = "t".repeat(257)),
            ("device_id", "id_bytes", |t| {
                t.device_id = "d".repeat(1 << 20)
            }),
            ("device_class", "id_bytes", |t| {
                t.device_class = Some("c".repeat(300))
            }),
            ("attributes", "limits.attributes)", |t| {
                t.attributes = (0..257).map(|i| (i.to_string(), String::new())).collect()
            }),
            ("attributes", "attribute_bytes", |t| {
                t.attributes = [("k".to_string(), "v".repeat(65_536))].into()
            }),
            ("device_id", "over the limit of 256", |t| {
                t.device_id = "é".repeat(129)
            }),
        ];
        for (field, key, break_it) in cases {
            let e = with(break_it).err();
            assert_eq!(e.as_ref().map(|e| e.field), Some(field));
            let message = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(key), "{message}");
        }
        let e = Limits::default().check_message(262_145).err();
        assert_eq!(e.map(|e| e.field), Some("message"));
    }

    #[test]
    fn readings_at_the_limits_pass() {
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(with(|t| t.device_id = "d".repeat(256)), Ok(()));
        assert_eq!(
            with(|t| t.attributes = (0..256).map(|i| (i.to_string(), "v".into())).collect()),
            Ok(())
        );
        assert_eq!(Limits::default().check_message(262_144), Ok(()));
        assert_eq!(Limits::default().zero(), None);
    }
}
