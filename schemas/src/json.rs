//! Telemetry as JSON, one object per message, for fleets that do not produce Avro. Same field
//! names and the same validation as the Avro record; `ts` may also be an RFC 3339 string.

use serde_json::error::Category;

use crate::error::DecodeError;
use crate::record::Record;
use crate::telemetry::Telemetry;
use crate::telemetry_ref::TelemetryRef;

fn classify(e: serde_json::Error) -> DecodeError {
    match e.classify() {
        Category::Data => DecodeError::JsonShape(e.to_string()),
        Category::Io | Category::Syntax | Category::Eof => DecodeError::Json(e.to_string()),
    }
}

/// Parses and validates one JSON reading.
pub(crate) fn telemetry_from_json(bytes: &[u8]) -> Result<Telemetry, DecodeError> {
    let reading: Telemetry = serde_json::from_slice(bytes).map_err(classify)?;
    reading.validate()?;
    Ok(reading)
}

/// Parses and validates one JSON reading, borrowing its strings.
pub(crate) fn telemetry_ref_from_json(bytes: &[u8]) -> Result<TelemetryRef<'_>, DecodeError> {
    let reading: TelemetryRef<'_> = serde_json::from_slice(bytes).map_err(classify)?;
    reading.validate()?;
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetterReason;

    fn reason(json: &str) -> Option<DeadLetterReason> {
        telemetry_from_json(json.as_bytes())
            .err()
            .map(|e| e.reason())
    }

    #[test]
    fn minimal_reading_takes_the_schema_defaults() {
        let t = telemetry_from_json(br#"{"tenant_id":"a","device_id":"d","ts":5}"#);
        let t = t.ok();
        assert_eq!(t.as_ref().map(|t| t.ok), Some(true));
        assert_eq!(t.and_then(|t| t.response_time_ms), None);
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(reason("{"), Some(DeadLetterReason::Undecodable));
        assert_eq!(reason("not json"), Some(DeadLetterReason::Undecodable));
        assert_eq!(
            reason(r#"{"tenant_id":"a","ts":5}"#),
            Some(DeadLetterReason::Schema)
        );
        assert_eq!(
            reason(r#"{"tenant_id":"a","device_id":"d","ts":"5"}"#),
            Some(DeadLetterReason::Schema)
        );
        assert_eq!(reason("[1,2]"), Some(DeadLetterReason::Schema));
        assert_eq!(
            reason(r#"{"tenant_id":"a","device_id":"","ts":5}"#),
            Some(DeadLetterReason::InvalidField)
        );
    }
}
