//! The last-seen record: when a device was last heard from, for the compacted `device-lastseen`
//! topic that dashboards, caches and analysts read a device's freshness from.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::binary::{long, optional, string, write_long, write_optional_string, write_string};
use crate::error::DecodeError;
use crate::record::{Record, RecordKind};

/// A device's latest reading time. Field docs are in `schemas/avro/last_seen.avsc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSeen {
    /// Tenant of the device.
    pub tenant_id: String,
    /// Device id.
    pub device_id: String,
    /// Device class the reading gave, when it gave one.
    pub device_class: Option<String>,
    /// Event time of the device's latest reading, ms.
    pub last_seen: i64,
    /// Deterministic id for deduplication.
    pub event_id: String,
}

/// The key of a device on a compacted topic: tenant and device as a JSON array, which no choice
/// of ids can make two devices share (a separator character could occur in an id).
pub fn device_key(tenant: &str, device: &str) -> String {
    serde_json::to_string(&[tenant, device]).unwrap_or_default()
}

impl Record for LastSeen {
    const KIND: RecordKind = RecordKind::LastSeen;

    fn key(&self) -> Cow<'_, str> {
        Cow::Owned(device_key(&self.tenant_id, &self.device_id))
    }

    fn read_current(body: &mut &[u8]) -> Option<Result<Self, DecodeError>> {
        let mut read = || {
            Ok(LastSeen {
                tenant_id: string(body)?.to_owned(),
                device_id: string(body)?.to_owned(),
                device_class: optional(body, string)?.map(str::to_owned),
                last_seen: long(body)?,
                event_id: string(body)?.to_owned(),
            })
        };
        Some(read())
    }

    // One of these goes out per device and interval, the most frequent derived record: written
    // directly, it costs a fraction of apache-avro's serde path.
    fn write_current(&self, buf: &mut Vec<u8>) -> bool {
        write_string(buf, &self.tenant_id);
        write_string(buf, &self.device_id);
        write_optional_string(buf, self.device_class.as_deref());
        write_long(buf, self.last_seen);
        write_string(buf, &self.event_id);
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Codec;

    proptest! {
        /// The direct writer and reader agree with apache-avro on the current schema, both ways.
        #[test]
        fn the_direct_codec_is_the_schema_s(
            tenant_id in any::<String>(),
            device_id in any::<String>(),
            device_class in proptest::option::of(any::<String>()),
            last_seen in any::<i64>(),
            event_id in any::<String>(),
        ) {
            let record = LastSeen { tenant_id, device_id, device_class, last_seen, event_id };
            let schema = apache_avro::Schema::parse_str(include_str!("../avro/last_seen.avsc"))
                .unwrap();
            let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .unwrap();
            let mut by_avro = Vec::new();
            writer.write_ser(&mut by_avro, &record).unwrap();
            let mut direct = Vec::new();
            prop_assert!(record.write_current(&mut direct));
            prop_assert_eq!(&direct, &by_avro);
            let mut body = by_avro.as_slice();
            prop_assert_eq!(LastSeen::read_current(&mut body).unwrap().unwrap(), record.clone());
            prop_assert!(body.is_empty());
            let codec = Codec::builtin();
            prop_assert_eq!(codec.decode::<LastSeen>(&codec.encode(&record).unwrap()).unwrap(), record);
        }
    }

    #[test]
    fn keys_of_different_devices_differ_whatever_their_ids() {
        assert_eq!(device_key("t1", "d1"), r#"["t1","d1"]"#);
        assert_ne!(device_key("a/b", "c"), device_key("a", "b/c"));
        assert_ne!(device_key("a\",\"b", "c"), device_key("a", "b\",\"c"));
    }
}
