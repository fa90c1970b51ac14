//! A request's body as readings: one JSON object (pretty-printed or not), or NDJSON, one reading
//! per line. Each line becomes a reading under the credential that sent it, or is refused with a
//! reason and a detail; a line's number is its line in the body, counting from 1.
//!
//! Under a credential the tenant is the key's: a line may leave `tenant_id` out, and one that
//! names another tenant is refused as `foreign_tenant` (or, with `on_foreign_claim = "override"`,
//! given the key's). A device's own key does the same for `device_id` (`foreign_device`). A line
//! without `ts` is stamped with the gateway's clock. Then the reading is checked as the pipeline
//! checks it (the same decoding and limits, the same dead-letter reasons), so what is accepted
//! here is not dead-lettered there.

use schemas::{Codec, InputFormat, Limits, Telemetry};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::OnForeignClaim;
use crate::keys::Credential;

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// `undecodable`, `schema`, `invalid_field`, `foreign_tenant`, `foreign_device`, or
    /// `unavailable` (Kafka did not acknowledge it in time).
    pub reason: &'static str,
    /// What is wrong.
    pub detail: String,
}

impl Refusal {
    fn new(reason: &'static str, detail: impl ToString) -> Refusal {
        Refusal {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// The lines of `body` with their numbers: the whole body if it is one JSON object, else each
/// line that is not blank.
pub fn split(body: &[u8]) -> Vec<(usize, &[u8])> {
    let trimmed = body.trim_ascii();
    if trimmed.starts_with(b"{") && serde_json::from_slice::<Map<String, Value>>(trimmed).is_ok() {
        return vec![(1, trimmed)];
    }
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .collect()
}

/// How lines become readings: what the pipeline checks, and what a foreign claim gets.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Decodes the reading as the pipeline does.
    pub codec: Codec,
    /// The pipeline's limits.
    pub limits: Limits,
    /// A body naming another tenant or device.
    pub on_foreign_claim: OnForeignClaim,
}

impl Rules {
    /// The reading `line` holds, sent with `who` at `now_ms`, or why not.
    pub fn reading(
        &self,
        line: &[u8],
        who: &Credential,
        now_ms: i64,
    ) -> Result<Telemetry, Refusal> {
        let invalid = |e: schemas::InvalidField| Refusal::new("invalid_field", e);
        self.limits.check_message(line.len()).map_err(invalid)?;
        let mut fields: Map<String, Value> = serde_json::from_slice(line)
            .map_err(|e| Refusal::new("undecodable", format!("not a JSON object: {e}")))?;
        self.claim(&mut fields, "tenant_id", &who.tenant, "foreign_tenant")?;
        if let Some(device) = &who.device {
            self.claim(&mut fields, "device_id", device, "foreign_device")?;
        }
        fields.entry("ts").or_insert_with(|| Value::from(now_ms));
        let text = serde_json::to_vec(&fields).map_err(|e| Refusal::new("undecodable", e))?;
        let t = self
            .codec
            .decode_telemetry(&text, InputFormat::Json)
            .map_err(|e| Refusal::new(e.reason().as_str(), e))?;
        self.limits.check(&t).map_err(invalid)?;
        Ok(t)
    }

    /// Makes `field` the credential's `own` value, refusing (or overruling) another.
    fn claim(
        &self,
        fields: &mut Map<String, Value>,
        field: &str,
        own: &str,
        reason: &'static str,
    ) -> Result<(), Refusal> {
        match fields.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(claimed)) if claimed == own => return Ok(()),
            Some(claimed) if self.on_foreign_claim == OnForeignClaim::Reject => {
                return Err(Refusal::new(
                    reason,
                    format!("{field} {claimed} is not this key's ({own:?})"),
                ));
            }
            Some(_) => {}
        }
        fields.insert(field.into(), Value::String(own.into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(on_foreign_claim: OnForeignClaim) -> Rules {
        Rules {
            codec: Codec::builtin(),
            limits: Limits::default(),
            on_foreign_claim,
        }
    }

    fn who(device: Option<&str>) -> Credential {
        Credential {
            id: "k".into(),
            tenant: "acme".into(),
            device: device.map(Into::into),
        }
    }

    #[test]
    fn a_body_is_one_object_or_ndjson() {
        let pretty = b"{\n  \"device_id\": \"d\",\n  \"ok\": true\n}\n";
        assert_eq!(split(pretty).len(), 1);
        let batch = b"{\"device_id\":\"a\"}\n\n{\"device_id\":\"b\"}\r\nnot json\n";
        let numbers: Vec<usize> = split(batch).iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 3, 4]);
        assert!(split(b"").is_empty());
    }

    #[test]
    fn the_tenant_is_the_key_s() {
        let r = rules(OnForeignClaim::Reject);
        let t = r.reading(
            br#"{"device_id":"d","ok":true,"ts":1700000000000}"#,
            &who(None),
            5,
        );
        assert_eq!(
            t.map(|t| (t.tenant_id, t.ts)),
            Ok(("acme".to_string(), 1_700_000_000_000))
        );
        let stamped = r.reading(
            br#"{"device_id":"d","ok":true}"#,
            &who(None),
            1_700_000_000_001,
        );
        assert_eq!(stamped.map(|t| t.ts), Ok(1_700_000_000_001));
        let foreign = r.reading(
            br#"{"tenant_id":"globex","device_id":"d","ok":true}"#,
            &who(None),
            5,
        );
        assert_eq!(foreign.map_err(|e| e.reason), Err("foreign_tenant"));
        let other = r.reading(br#"{"device_id":"e","ok":true}"#, &who(Some("d")), 5);
        assert_eq!(other.map_err(|e| e.reason), Err("foreign_device"));
        let own = r.reading(br#"{"ok":true,"ts":1700000000000}"#, &who(Some("d")), 5);
        assert_eq!(own.map(|t| t.device_id), Ok("d".to_string()));
        let overruled = rules(OnForeignClaim::Override).reading(
            br#"{"tenant_id":"globex","device_id":"d","ok":true,"ts":1700000000000}"#,
            &who(None),
            5,
        );
        assert_eq!(overruled.map(|t| t.tenant_id), Ok("acme".to_string()));
    }

    #[test]
    fn a_line_the_pipeline_would_dead_letter_is_refused_with_its_reason() {
        let r = rules(OnForeignClaim::Reject);
        let reason = |line: &[u8]| {
            r.reading(line, &who(None), 1_700_000_000_000)
                .err()
                .map(|e| e.reason)
        };
        assert_eq!(reason(b"[1,2]"), Some("undecodable"));
        assert_eq!(reason(b"{\"device_id\":"), Some("undecodable"));
        assert_eq!(
            reason(br#"{"device_id":"d","ok":true,"battery_pct":150}"#),
            Some("invalid_field")
        );
        let long = format!(r#"{{"device_id":"{}","ok":true}}"#, "d".repeat(300));
        assert_eq!(reason(long.as_bytes()), Some("invalid_field"));
        assert_eq!(reason(br#"{"device_id":"d","ok":true}"#), None);
    }
}
