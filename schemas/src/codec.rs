//! The Confluent wire format: magic byte 0, the schema id as 4 big-endian bytes, then the Avro
//! binary encoding of the record. Decoding resolves older writer schemas against the current one,
//! so readings written before a field was added still decode.

use apache_avro::from_value;

use crate::derived::WindowAggregate;
use crate::error::{DecodeError, EncodeError};
use crate::json::{telemetry_from_json, telemetry_ref_from_json};
use crate::record::Record;
use crate::store::{SchemaStore, WriterSchema};
use crate::telemetry::Telemetry;
use crate::telemetry_ref::TelemetryRef;
use crate::window_aggregate_ref::{WindowAggregateRef, read_window_aggregate};

/// Length of the Confluent header: magic byte and schema id.
pub const WIRE_HEADER_LEN: usize = 5;

/// Largest length an Avro string, bytes or collection in a message may claim. Without a bound,
/// four garbage bytes can ask the decoder for 512 MiB.
const MAX_ALLOCATION: usize = 16 << 20;

fn left_over(body: &[u8]) -> DecodeError {
    DecodeError::Avro(format!("{} bytes left after the record", body.len()))
}

/// How telemetry arrives on the input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Confluent-framed Avro only.
    Avro,
    /// One JSON object per message only.
    Json,
    /// Either, told apart by the first byte (0 for Avro, anything else is taken as JSON).
    #[default]
    Auto,
}

/// Encodes and decodes records in the Confluent wire format with a [`SchemaStore`].
#[derive(Debug, Clone)]
pub struct Codec {
    store: SchemaStore,
}

impl Codec {
    /// A codec over the given schemas.
    pub fn new(store: SchemaStore) -> Codec {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION);
        Codec { store }
    }

    /// A codec over the built-in (file-backed) schemas.
    pub fn builtin() -> Codec {
        Codec::new(SchemaStore::builtin())
    }

    /// The schemas this codec knows.
    pub fn store(&self) -> &SchemaStore {
        &self.store
    }

    /// The schemas, to add ids fetched from a registry.
    pub fn store_mut(&mut self) -> &mut SchemaStore {
        &mut self.store
    }

    /// Appends the framed record to `buf`. Field values are not validated: that is the reader's
    /// job, and the synthetic fleet writes invalid values on purpose.
    pub fn encode_into<R: Record>(&self, record: &R, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        let current = self.store.writer(R::KIND);
        buf.push(0);
        buf.extend_from_slice(&current.id.to_be_bytes());
        if record.write_current(buf) {
            return Ok(());
        }
        current
            .writer
            .write_ser(buf, record)
            .map(|_| ())
            .map_err(|e| EncodeError {
                kind: R::KIND.full_name(),
                detail: e.to_string(),
            })
    }

    /// The framed record.
    pub fn encode<R: Record>(&self, record: &R) -> Result<Vec<u8>, EncodeError> {
        let mut buf = Vec::with_capacity(128);
        self.encode_into(record, &mut buf)?;
        Ok(buf)
    }

    /// The schema a framed record of kind `R` was written with.
    fn writer<R: Record>(&self, bytes: &[u8]) -> Result<&WriterSchema, DecodeError> {
        let id = schema_id(bytes)?;
        let writer = self
            .store
            .reader(id)
            .ok_or(DecodeError::UnknownSchemaId(id))?;
        if writer.kind != R::KIND {
            return Err(DecodeError::WrongRecord {
                id,
                found: writer.kind.full_name().to_string(),
                expected: R::KIND.full_name(),
            });
        }
        Ok(writer)
    }

    /// Decodes and validates a framed record.
    pub fn decode<R: Record>(&self, bytes: &[u8]) -> Result<R, DecodeError> {
        let writer = self.writer::<R>(bytes)?;
        let mut body = &bytes[WIRE_HEADER_LEN..];
        let avro = |e: apache_avro::Error| DecodeError::Avro(e.to_string());
        let record: R = if writer.resolves {
            let value = writer.reader.read_value(&mut body).map_err(avro)?;
            from_value(&value).map_err(avro)?
        } else if let Some(read) = R::read_current(&mut body) {
            read?
        } else {
            writer.reader.read_deser(&mut body).map_err(avro)?
        };
        if !body.is_empty() {
            return Err(left_over(body));
        }
        record.validate()?;
        Ok(record)
    }

    /// Decodes a framed `WindowAggregate` without copying its strings, where it was written with
    /// the current schema; `Ok(None)` where it was written with another (one [`Codec::decode`]
    /// resolves).
    pub fn decode_window_aggregate_ref<'a>(
        &self,
        bytes: &'a [u8],
    ) -> Result<Option<WindowAggregateRef<'a>>, DecodeError> {
        if self.writer::<WindowAggregate>(bytes)?.resolves {
            return Ok(None);
        }
        let mut body = &bytes[WIRE_HEADER_LEN..];
        let record = read_window_aggregate(&mut body)?;
        if !body.is_empty() {
            return Err(left_over(body));
        }
        Ok(Some(record))
    }

    /// Decodes and validates one reading in the given input format without copying its strings
    /// where it can: Avro written with the current schema is read directly, JSON borrows; a
    /// reading written with another schema is resolved as [`Codec::decode`] does.
    pub fn decode_telemetry_ref<'a>(
        &self,
        bytes: &'a [u8],
        format: InputFormat,
    ) -> Result<TelemetryRef<'a>, DecodeError> {
        let avro = match format {
            InputFormat::Avro => true,
            InputFormat::Json => false,
            InputFormat::Auto => bytes.first() == Some(&0),
        };
        if !avro {
            return telemetry_ref_from_json(bytes);
        }
        if self.writer::<Telemetry>(bytes)?.resolves {
            return self.decode::<Telemetry>(bytes).map(TelemetryRef::owned);
        }
        let mut body = &bytes[WIRE_HEADER_LEN..];
        let reading = crate::telemetry_ref::read_telemetry(&mut body)?;
        if !body.is_empty() {
            return Err(left_over(body));
        }
        reading.validate()?;
        Ok(reading)
    }

    /// Decodes and validates one reading in the given input format.
    pub fn decode_telemetry(
        &self,
        bytes: &[u8],
        format: InputFormat,
    ) -> Result<Telemetry, DecodeError> {
        match format {
            InputFormat::Avro => self.decode(bytes),
            InputFormat::Json => telemetry_from_json(bytes),
            InputFormat::Auto if bytes.first() == Some(&0) => self.decode(bytes),
            InputFormat::Auto => telemetry_from_json(bytes),
        }
    }
}

/// The schema id of a framed message, checking the header only.
pub fn schema_id(bytes: &[u8]) -> Result<u32, DecodeError> {
    match bytes {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [magic, _, _, _, _, ..] => Err(DecodeError::BadMagicByte(*magic)),
        _ => Err(DecodeError::Truncated { len: bytes.len() }),
    }
}
