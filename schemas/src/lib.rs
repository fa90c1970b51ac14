//! The vocabulary every part of fleetpulse shares: the seven records of the design (telemetry and
//! the device inventory in; aggregates, anomalies, status transitions, dead letters and last-seen
//! times out), their Avro schemas, the Confluent-framed Avro codec, and the JSON form of telemetry
//! that devices may send instead.
//!
//! This crate is a leaf: it does no I/O. The schemas under `schemas/avro/` are compiled in and
//! form the file-backed registry ([`SchemaStore::builtin`]); a networked registry lives in the
//! `registry` crate and feeds this one through [`SchemaStore::insert`].
//!
//! ```
//! use schemas::{Codec, Telemetry};
//!
//! let codec = Codec::builtin();
//! let reading = Telemetry::example();
//! let bytes = codec.encode(&reading).unwrap();
//! assert_eq!(bytes[0], 0); // Confluent magic byte
//! assert_eq!(codec.decode::<Telemetry>(&bytes).unwrap(), reading);
//! ```

mod binary;
mod codec;
mod dead_letter;
mod derived;
mod derived_writers;
mod error;
pub mod headers;
mod json;
mod last_seen;
mod limits;
mod record;
mod registration;
pub mod retry;
mod store;
mod telemetry;
mod telemetry_ref;
mod timestamp;
mod window_aggregate_ref;

pub use codec::{Codec, InputFormat, WIRE_HEADER_LEN, schema_id};
pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use derived::{
    Anomaly, AnomalyKind, AnomalyState, DeviceStatus, Severity, StatusTransition, TransitionReason,
    WindowAggregate,
};
pub use error::{DecodeError, EncodeError, InvalidField, SchemaError};
pub use last_seen::{LastSeen, device_key};
pub use limits::Limits;
pub use record::{Record, RecordKind, wire_name};
pub use registration::{PollTarget, ProbeKind, Registration, device_of_key};
pub use store::{BuiltinSchema, SchemaStore, builtin_schemas};
pub use telemetry::{TS_MAX_MS, TS_MIN_MS, Telemetry};
pub use telemetry_ref::{AttributeCount, TelemetryRef};
pub use window_aggregate_ref::WindowAggregateRef;
