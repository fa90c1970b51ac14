//! Messages as bytes on a topic: readings in the configured format, and each malformation broken
//! the way real producers break messages.

use schemas::{Codec, EncodeError, Telemetry};

use crate::config::MessageFormat;
use crate::fleet::{Body, Event, Malformation};

/// A schema id no registry hands out, for messages framed with an unknown schema.
const UNKNOWN_SCHEMA_ID: u32 = 0x7fff_fff0;

fn json_error(e: serde_json::Error) -> EncodeError {
    EncodeError {
        kind: "io.fleetpulse.Telemetry",
        detail: e.to_string(),
    }
}

fn json_into(reading: &Telemetry, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
    serde_json::to_writer(&mut *buf, reading).map_err(json_error)
}

/// Appends the message's value, as it goes on the topic, to `buf`.
pub fn encode(
    event: &Event,
    format: MessageFormat,
    codec: &Codec,
    buf: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let reading_into = |t: &Telemetry, buf: &mut Vec<u8>| match format {
        MessageFormat::Avro => codec.encode_into(t, buf),
        MessageFormat::Json => json_into(t, buf),
    };
    match &event.body {
        Body::Reading(t) | Body::Malformed(Malformation::InvalidField(t)) => reading_into(t, buf)?,
        Body::Malformed(Malformation::Garbage(bytes)) => match format {
            MessageFormat::Avro => buf.extend_from_slice(bytes),
            // Letters only: never valid JSON, never a line break in an NDJSON file.
            MessageFormat::Json => buf.extend(bytes.iter().map(|b| b'a' + b % 26)),
        },
        Body::Malformed(Malformation::BadFraming(t)) => {
            reading_into(t, buf)?;
            match format {
                MessageFormat::Avro => buf[start] = 0x7b,
                MessageFormat::Json => buf.extend_from_slice(b"}}"),
            }
        }
        Body::Malformed(Malformation::Truncated(t)) => {
            reading_into(t, buf)?;
            let keep = start + (buf.len() - start) / 2;
            buf.truncate(keep.max(start + 6));
        }
        Body::Malformed(Malformation::WrongSchema(t)) => match format {
            MessageFormat::Avro => {
                codec.encode_into(t, buf)?;
                buf[start + 1..start + 5].copy_from_slice(&UNKNOWN_SCHEMA_ID.to_be_bytes());
            }
            MessageFormat::Json => {
                // A field of a type the record does not allow.
                let mut value = serde_json::to_value(t).map_err(json_error)?;
                value["ts"] = serde_json::json!({ "at": t.ts });
                serde_json::to_writer(&mut *buf, &value).map_err(json_error)?;
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GeneratorConfig;
    use crate::fleet::{Event, Fleet};
    use schemas::{DeadLetterReason, InputFormat};

    /// Every message of a fleet, encoded in both formats.
    fn encoded(config: GeneratorConfig) -> Vec<(MessageFormat, Event, Vec<u8>)> {
        let codec = Codec::builtin();
        let mut out = Vec::new();
        for format in [MessageFormat::Avro, MessageFormat::Json] {
            for event in Fleet::new(&config, 1_700_000_000_000).take(500) {
                let mut buf = Vec::new();
                encode(&event, format, &codec, &mut buf).expect("encodes");
                out.push((format, event, buf));
            }
        }
        out
    }

    /// Every malformation is rejected by the codec, with the reason its kind implies.
    #[test]
    fn malformed_messages_are_rejected_for_the_intended_reason() {
        let config = GeneratorConfig {
            malformed_fraction: 1.0,
            ..GeneratorConfig::default()
        };
        let codec = Codec::builtin();
        for (format, event, buf) in encoded(config) {
            let reason = codec
                .decode_telemetry(&buf, InputFormat::Auto)
                .expect_err("malformed must not decode")
                .reason();
            let Body::Malformed(m) = &event.body else {
                panic!("not malformed")
            };
            let expected = match m {
                Malformation::InvalidField(_) => Some(DeadLetterReason::InvalidField),
                Malformation::WrongSchema(_) => Some(DeadLetterReason::Schema),
                Malformation::BadFraming(_) | Malformation::Truncated(_) => {
                    Some(DeadLetterReason::Undecodable)
                }
                Malformation::Garbage(_) => None,
            };
            if let Some(expected) = expected {
                assert_eq!(reason, expected, "{format:?} {m:?}");
            }
        }
    }

    #[test]
    fn readings_decode_in_both_formats() {
        let config = GeneratorConfig {
            malformed_fraction: 0.0,
            ..GeneratorConfig::default()
        };
        let codec = Codec::builtin();
        for (_, event, buf) in encoded(config) {
            let Body::Reading(t) = &event.body else {
                panic!("malformed")
            };
            assert_eq!(
                codec.decode_telemetry(&buf, InputFormat::Auto).as_ref(),
                Ok(t)
            );
        }
    }
}
