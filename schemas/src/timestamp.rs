//! Event timestamps as devices send them: epoch milliseconds, or an RFC 3339 string in JSON.
//! Avro always carries milliseconds; JSON may carry either, so one deserializer accepts both.

use serde::Deserializer;
use serde::de::{self, Visitor};

struct EpochMillis;

impl Visitor<'_> for EpochMillis {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("milliseconds since the epoch or an RFC 3339 timestamp")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("timestamp {v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // Some JSON encoders write whole numbers as 1.7e12; accept those, refuse fractions.
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!(
                "timestamp {v} is not a whole number of milliseconds"
            )))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_millis())
            .map_err(|e| E::custom(format!("timestamp {v:?} is not RFC 3339: {e}")))
    }
}

/// Deserializes a timestamp given as epoch milliseconds or as an RFC 3339 string.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(EpochMillis)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::deserialize")]
        ts: i64,
    }

    fn parse(json: &str) -> Result<i64, serde_json::Error> {
        serde_json::from_str::<T>(json).map(|t| t.ts)
    }

    #[test]
    fn accepts_millis_and_rfc3339() {
        assert_eq!(
            parse(r#"{"ts": 1700000000123}"#).ok(),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse(r#"{"ts": 1.7e12}"#).ok(), Some(1_700_000_000_000));
        assert_eq!(
            parse(r#"{"ts": "2023-11-14T22:13:20.123Z"}"#).ok(),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse(r#"{"ts": "2023-11-14T23:13:20.123+01:00"}"#).ok(),
            Some(1_700_000_000_123)
        );
    }

    #[test]
    fn refuses_fractions_and_free_text() {
        assert!(parse(r#"{"ts": 1.5}"#).is_err());
        assert!(parse(r#"{"ts": "yesterday"}"#).is_err());
        assert!(parse(r#"{"ts": 18446744073709551615}"#).is_err());
    }
}
