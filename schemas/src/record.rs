//! What makes a type a fleetpulse record: which schema it has, where it goes by default, and how
//! it checks its own field values.

use std::borrow::Cow;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, InvalidField};

/// The seven kinds of record, one per topic of the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// A device reading ([`crate::Telemetry`]).
    Telemetry,
    /// Per-device window statistics ([`crate::WindowAggregate`]).
    WindowAggregate,
    /// Anomaly state changes ([`crate::Anomaly`]).
    Anomaly,
    /// Online/offline transitions ([`crate::StatusTransition`]).
    StatusTransition,
    /// Rejected input ([`crate::DeadLetter`]).
    DeadLetter,
    /// When each device was last heard from ([`crate::LastSeen`]).
    LastSeen,
    /// The devices that should exist ([`crate::Registration`]).
    Registration,
}

impl RecordKind {
    /// Every kind, in a fixed order.
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Telemetry,
        RecordKind::WindowAggregate,
        RecordKind::Anomaly,
        RecordKind::StatusTransition,
        RecordKind::DeadLetter,
        RecordKind::LastSeen,
        RecordKind::Registration,
    ];

    /// The Avro full name of the record's schema.
    pub fn full_name(self) -> &'static str {
        match self {
            RecordKind::Telemetry => "io.fleetpulse.Telemetry",
            RecordKind::WindowAggregate => "io.fleetpulse.WindowAggregate",
            RecordKind::Anomaly => "io.fleetpulse.Anomaly",
            RecordKind::StatusTransition => "io.fleetpulse.StatusTransition",
            RecordKind::DeadLetter => "io.fleetpulse.DeadLetter",
            RecordKind::LastSeen => "io.fleetpulse.LastSeen",
            RecordKind::Registration => "io.fleetpulse.Registration",
        }
    }

    /// The topic this kind is written to unless configured otherwise.
    pub fn default_topic(self) -> &'static str {
        match self {
            RecordKind::Telemetry => "telemetry",
            RecordKind::WindowAggregate => "device-aggregates",
            RecordKind::Anomaly => "device-anomalies",
            RecordKind::StatusTransition => "device-status",
            RecordKind::DeadLetter => "telemetry-dlq",
            RecordKind::LastSeen => "device-lastseen",
            RecordKind::Registration => "device-inventory",
        }
    }

    /// The registry subject of the record under the default topic, following Confluent's
    /// topic-name strategy (`<topic>-value`) so Confluent clients find the same subjects.
    pub fn default_subject(self) -> String {
        format!("{}-value", self.default_topic())
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_full_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.full_name() == name)
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.full_name())
    }
}

/// The name a record's enum value has on the wire (`rt_mean_high`, `offline`, `timeout`): what
/// the connectors store and send, in the records' own spelling.
pub fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// A record type with an Avro schema in this crate.
pub trait Record: Serialize + DeserializeOwned {
    /// Which of the seven records this is.
    const KIND: RecordKind;

    /// The Kafka key the record is written with: the device id, so one device stays in one
    /// partition and in order (tenant and device for the compacted last-seen topic).
    fn key(&self) -> Cow<'_, str>;

    /// Checks the field values the schema cannot express (ranges, non-empty ids).
    fn validate(&self) -> Result<(), InvalidField> {
        Ok(())
    }

    /// Reads the record from the front of Avro binary written with its current schema, where
    /// this crate has a reader faster than apache-avro's (`None` where it has not).
    fn read_current(_body: &mut &[u8]) -> Option<Result<Self, DecodeError>> {
        None
    }

    /// Appends the record's Avro binary under its current schema to `buf`, where this crate has
    /// a writer faster than apache-avro's serde path (`false` where it has not).
    fn write_current(&self, _buf: &mut Vec<u8>) -> bool {
        false
    }
}
