//! The errors of this crate. Decoding errors are fine-grained because each maps to a dead-letter
//! reason: the pipeline routes a record by the variant, never by parsing a message.

/// A field value outside what the record allows.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct InvalidField {
    /// The field, as named in the schema.
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl InvalidField {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidField {
            field,
            reason: reason.into(),
        }
    }
}

/// Why bytes could not be turned into a valid record. Retrying never helps: the input is bad.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the 5-byte Confluent header.
    #[error("truncated message: {len} bytes, the Confluent wire header alone is 5")]
    Truncated {
        /// Length of the message.
        len: usize,
    },
    /// The first byte is not the Confluent magic byte 0.
    #[error("bad magic byte {0:#04x}: not the Confluent wire format, which starts with 0x00")]
    BadMagicByte(u8),
    /// The schema id is in neither the built-in schemas nor the configured registry.
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    /// The schema id names a schema of another record than the one expected.
    #[error("schema id {id} is for {found}, expected {expected}")]
    WrongRecord {
        /// The schema id in the message.
        id: u32,
        /// The full name of the record that schema describes.
        found: String,
        /// The full name of the record expected.
        expected: &'static str,
    },
    /// The Avro body does not decode with its writer schema (cut short, corrupt, or trailing
    /// bytes).
    #[error("undecodable Avro: {0}")]
    Avro(String),
    /// Not well-formed JSON.
    #[error("undecodable JSON: {0}")]
    Json(String),
    /// Well-formed JSON that does not have the record's fields and types.
    #[error("JSON does not match the record: {0}")]
    JsonShape(String),
    /// The record decoded but a field value is out of range.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// A record that could not be encoded: a value the schema cannot hold, which means a bug, so
/// retrying never helps.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot encode {kind} as Avro: {detail}")]
pub struct EncodeError {
    /// The record's full name.
    pub kind: &'static str,
    /// The serializer's message.
    pub detail: String,
}

/// A schema that cannot be used: it does not parse, or it is not one of fleetpulse's records.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    /// The text is not a valid Avro schema.
    #[error("invalid Avro schema: {0}")]
    Parse(String),
    /// A valid schema of a record fleetpulse does not know.
    #[error("schema {0} is not a fleetpulse record")]
    Foreign(String),
    /// Data written with the schema cannot be read with the current one.
    #[error("schema id {id} for {kind} cannot be read with the current schema: {detail}")]
    Incompatible {
        /// The schema id.
        id: u32,
        /// The record it claims to be.
        kind: &'static str,
        /// Why not.
        detail: String,
    },
}
