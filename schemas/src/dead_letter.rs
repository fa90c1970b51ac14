//! The dead-letter record: input the pipeline could not use, kept with its reason and source
//! position so nothing is lost silently and an operator can replay or inspect it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::record::{Record, RecordKind};

/// Why an input record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Not valid Avro or JSON.
    Undecodable,
    /// Unknown schema id, or a record of another type.
    Schema,
    /// A field value out of range.
    InvalidField,
    /// Behind its partition's watermark.
    Late,
    /// Stamped too far ahead of its partition's clock truth.
    Future,
    /// From a device whose clock is known to be off, with clock correction turned off.
    ClockSkew,
}

impl DeadLetterReason {
    /// Every reason, in schema order.
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::Undecodable,
        DeadLetterReason::Schema,
        DeadLetterReason::InvalidField,
        DeadLetterReason::Late,
        DeadLetterReason::Future,
        DeadLetterReason::ClockSkew,
    ];

    /// The reason as written in the schema and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Undecodable => "undecodable",
            DeadLetterReason::Schema => "schema",
            DeadLetterReason::InvalidField => "invalid_field",
            DeadLetterReason::Late => "late",
            DeadLetterReason::Future => "future",
            DeadLetterReason::ClockSkew => "clock_skew",
        }
    }
}

/// Each decoding error files its record under one reason.
impl DecodeError {
    /// The dead-letter reason this error files the record under.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            DecodeError::Truncated { .. }
            | DecodeError::BadMagicByte(_)
            | DecodeError::Avro(_)
            | DecodeError::Json(_) => DeadLetterReason::Undecodable,
            DecodeError::UnknownSchemaId(_)
            | DecodeError::WrongRecord { .. }
            | DecodeError::JsonShape(_) => DeadLetterReason::Schema,
            DecodeError::Invalid(_) => DeadLetterReason::InvalidField,
        }
    }
}

/// An input record that could not be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Topic or file it came from.
    pub source_topic: String,
    /// Partition it came from.
    pub source_partition: i32,
    /// Offset in that partition.
    pub source_offset: i64,
    /// Key as received.
    #[serde(with = "apache_avro::serde::bytes_opt", default)]
    pub key: Option<Vec<u8>>,
    /// Value exactly as received.
    #[serde(with = "apache_avro::serde::bytes")]
    pub raw: Vec<u8>,
    /// Why it was rejected.
    pub reason: DeadLetterReason,
    /// Human-readable detail.
    pub detail: String,
    /// Kafka record timestamp, ms.
    pub record_ts: Option<i64>,
    /// Deterministic id for deduplication.
    pub event_id: String,
}

impl Record for DeadLetter {
    const KIND: RecordKind = RecordKind::DeadLetter;

    /// The original key when it is text (normally the device id), so a device's rejects stay
    /// together; otherwise empty.
    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(
            self.key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .unwrap_or(""),
        )
    }
}
