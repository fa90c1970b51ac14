//! Decoding and checking of one record's value where it lies (the Kafka message, the file's line
//! buffer): the reading it holds, within the limits, or why it is unusable, with the bytes its
//! dead letter keeps. Plain state, no clocks: whichever thread reads the input decodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemas::{Codec, DeadLetterReason, DecodeError, InputFormat, TelemetryRef};

use super::{Payload, SchemaFetcher};

/// How long an id the registry could not give is not asked for again (its records go to the
/// DLQ meanwhile, with reason `schema`).
const REFETCH_AFTER: Duration = Duration::from_secs(60);

/// Why a record is unusable: its dead letter's reason and detail.
pub type Unusable = (DeadLetterReason, String);

/// Decodes the values of one input.
pub struct Decoder {
    codec: Codec,
    fetcher: Option<Arc<dyn SchemaFetcher>>,
    refused: HashMap<u32, Instant>,
    limits: schemas::Limits,
}

impl Decoder {
    /// A decoder with `codec`'s schemas, asking `fetcher` for unknown writer schemas.
    pub fn new(
        codec: Codec,
        fetcher: Option<Arc<dyn SchemaFetcher>>,
        limits: schemas::Limits,
    ) -> Decoder {
        Decoder {
            codec,
            fetcher,
            refused: HashMap::new(),
            limits,
        }
    }

    /// The reading `payload` holds, checked against the limits, or why it is unusable; and the
    /// bytes a dead letter of it keeps. A payload checked already is passed on as it is.
    pub fn check<'a>(
        &mut self,
        payload: Payload<'a>,
    ) -> (Result<TelemetryRef<'a>, Unusable>, &'a [u8]) {
        let invalid = |e: schemas::InvalidField| (DeadLetterReason::InvalidField, e.to_string());
        let (decoded, raw) = match payload {
            Payload::Wire(bytes) => {
                let decoded = self
                    .limits
                    .check_message(bytes.len())
                    .map_err(invalid)
                    .and_then(|()| self.decode(bytes).map_err(|e| (e.reason(), e.to_string())));
                (decoded, bytes)
            }
            Payload::Parsed { result, raw } => {
                let decoded = self
                    .limits
                    .check_message(raw.len())
                    .map_err(invalid)
                    .and(result.map(TelemetryRef::owned));
                (decoded, raw)
            }
            Payload::Checked { result, raw } => return (result, raw),
        };
        let checked = decoded.and_then(|t| self.limits.check_ref(&t).map(|()| t).map_err(invalid));
        (checked, raw)
    }

    /// Decodes a wire value, fetching its writer schema first when the id is unknown and a
    /// registry is configured.
    fn decode<'a>(&mut self, bytes: &'a [u8]) -> Result<TelemetryRef<'a>, DecodeError> {
        let id = match self.codec.decode_telemetry_ref(bytes, InputFormat::Auto) {
            Err(DecodeError::UnknownSchemaId(id)) if self.fetcher.is_some() => id,
            result => return result,
        };
        let unknown = Err(DecodeError::UnknownSchemaId(id));
        let Some(fetcher) = self.fetcher.as_deref() else {
            return unknown;
        };
        if self
            .refused
            .get(&id)
            .is_some_and(|at| at.elapsed() < REFETCH_AFTER)
        {
            return unknown;
        }
        match fetcher.fetch_into(&mut self.codec, id) {
            Ok(()) => {
                tracing::info!(id, "fetched a writer schema from the registry");
                self.codec.decode_telemetry_ref(bytes, InputFormat::Auto)
            }
            Err(e) => {
                tracing::warn!(
                    id,
                    error = %e,
                    "cannot fetch a writer schema; its records go to the DLQ"
                );
                self.refused.insert(id, Instant::now());
                unknown
            }
        }
    }
}
