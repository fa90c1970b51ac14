//! Rules, and what a message that matches one becomes: a reading, built as the JSON reading the
//! pipeline accepts and checked by the same decoding and limits; an availability report (a device
//! that said it went offline, or came back); or nothing.

use std::collections::BTreeMap;

use schemas::{Codec, InputFormat, Limits, Telemetry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pattern::Pattern;

/// How a payload value becomes a field's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conversion {
    /// As it is (a number given as text, `"100.00"`, is a number).
    #[default]
    None,
    /// Zigbee link quality (LQI, 0 to 255) to dBm, linearly onto -100 to -20 dBm. LQI is no
    /// power measure and radios map it differently; this keeps its order and a plausible range,
    /// which is what a signal rule or a chart needs.
    LqiToDbm,
    /// Seconds to milliseconds.
    SecondsToMs,
    /// A state to `ok`: false for `unavailable`, `unknown`, `off`, `offline`, `error`, `false`,
    /// `0`; true otherwise.
    StateToOk,
}

/// A field of the reading, from the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// JSON pointer into the payload (`""`: the whole payload).
    pub pointer: String,
    /// How its value is converted.
    pub convert: Conversion,
}

/// What a matching message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    /// A reading: telemetry field (`ok`, `response_time_ms`, `battery_pct`, `signal_dbm`,
    /// `error_code`, `ts`, `attributes.<name>`) to where in the payload; the scalar members of the
    /// object at `attributes` (`""`: the payload's own) become attributes too, but for those a
    /// field takes; a payload equal to one of `offline_when` is an availability report instead.
    Reading {
        /// Fields by telemetry name.
        fields: BTreeMap<String, Field>,
        /// Where further attributes come from.
        attributes: Option<String>,
        /// Whole payloads that mean the device reported itself offline.
        offline_when: Vec<String>,
    },
    /// An availability report: the value at `pointer` (or the whole payload), compared without
    /// case, is one of `online` or `offline`.
    Availability {
        /// Where the value is; `None`: the payload itself (or its `state` member, as
        /// Zigbee2MQTT's JSON availability has it).
        pointer: Option<String>,
        /// Values that mean online.
        online: Vec<String>,
        /// Values that mean offline.
        offline: Vec<String>,
    },
    /// Not telemetry (a bridge's own topics, commands to devices).
    Ignore,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The topics it takes.
    pub pattern: Pattern,
    /// The tenant: a fixed name, or a template of the pattern's captures (`{tenant}`).
    pub tenant: String,
    /// The device: a template of the pattern's captures (`{device}`, `{domain}.{entity}`).
    pub device: String,
    /// The device class its readings carry.
    pub device_class: Option<String>,
    /// What a message is.
    pub kind: RuleKind,
}

/// A device reporting itself online or offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// Tenant.
    pub tenant_id: String,
    /// Device.
    pub device_id: String,
    /// Online (true) or offline.
    pub online: bool,
    /// When the gateway received it, ms since the epoch.
    pub ts: i64,
}

/// What a message became.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A reading.
    Reading(Telemetry),
    /// An availability report.
    Availability(Availability),
    /// Nothing: a topic a rule ignores.
    Ignored,
    /// A message that no rule maps, or whose payload does not fit its rule: a dead letter.
    Unmappable {
        /// The dead-letter reason: `undecodable`, `schema` or `invalid_field`.
        reason: schemas::DeadLetterReason,
        /// What is wrong.
        detail: String,
    },
}

/// The rules of a gateway, in order.
#[derive(Debug, Clone)]
pub struct Mapper {
    rules: Vec<Rule>,
    codec: Codec,
    limits: Limits,
}

fn unmappable(reason: schemas::DeadLetterReason, detail: impl ToString) -> Outcome {
    Outcome::Unmappable {
        reason,
        detail: detail.to_string(),
    }
}

/// The payload as JSON, or as one string when it is not JSON (`Online`, `on`).
fn parse(payload: &[u8]) -> Option<Value> {
    serde_json::from_slice(payload).ok().or_else(|| {
        std::str::from_utf8(payload)
            .ok()
            .map(|s| Value::String(s.trim().into()))
    })
}

fn at<'a>(payload: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.is_empty() {
        Some(payload)
    } else {
        payload.pointer(pointer)
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn converted(field: &str, v: &Value, convert: Conversion) -> Result<Value, String> {
    let numeric = |v: &Value| number(v).ok_or_else(|| format!("{field}: {v} is not a number"));
    Ok(match convert {
        Conversion::None => match field {
            "ok" => match v {
                Value::Bool(_) => v.clone(),
                other => Value::Bool(state_ok(other)),
            },
            "error_code" => {
                Value::String(text(v).ok_or_else(|| format!("{field}: {v} is not a value"))?)
            }
            "ts" => match v {
                Value::String(s) if s.trim().parse::<i64>().is_ok() => {
                    Value::from(s.trim().parse::<i64>().unwrap_or_default())
                }
                other => other.clone(),
            },
            _ => Value::from(numeric(v)?),
        },
        Conversion::LqiToDbm => Value::from(-100.0 + numeric(v)?.clamp(0.0, 255.0) * 80.0 / 255.0),
        Conversion::SecondsToMs => Value::from(numeric(v)? * 1_000.0),
        Conversion::StateToOk => Value::Bool(state_ok(v)),
    })
}

/// Whether a device's state value says it works.
fn state_ok(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        other => !matches!(
            text(other)
                .unwrap_or_default()
                .to_ascii_lowercase()
                .as_str(),
            "unavailable" | "unknown" | "off" | "offline" | "error" | "false" | "0"
        ),
    }
}

/// Whether subscription filter `wide` receives every topic `narrow` does.
fn covers(wide: &str, narrow: &str) -> bool {
    let (mut w, mut n) = (wide.split('/'), narrow.split('/'));
    loop {
        match (w.next(), n.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some(_), Some("#")) | (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// `template` with each `{name}` replaced by its capture.
pub fn fill(template: &str, captures: &[(String, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in captures {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

impl Mapper {
    /// A mapper of `rules`, checking readings with `codec` and `limits` as the pipeline does.
    pub fn new(rules: Vec<Rule>, codec: Codec, limits: Limits) -> Mapper {
        Mapper {
            rules,
            codec,
            limits,
        }
    }

    /// The subscription filters the rules need: those of the rules that take messages (an
    /// ignoring rule only swallows what a wider filter brings), without one another filter
    /// covers, since a broker may deliver a message once per matching subscription.
    pub fn filters(&self) -> Vec<String> {
        let all: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.kind != RuleKind::Ignore)
            .map(|r| r.pattern.filter())
            .collect();
        let mut out: Vec<String> = Vec::new();
        for (i, f) in all.iter().enumerate() {
            let covered = all
                .iter()
                .enumerate()
                .any(|(j, g)| j != i && covers(g, f) && (g != f || j < i));
            if !covered {
                out.push(f.clone());
            }
        }
        out
    }

    /// What the message on `topic` with `payload`, received at `now_ms`, is.
    pub fn map(&self, topic: &str, payload: &[u8], now_ms: i64) -> Outcome {
        use schemas::DeadLetterReason::{InvalidField, Schema, Undecodable};
        let Some((rule, captures)) = self
            .rules
            .iter()
            .find_map(|r| r.pattern.matches(topic).map(|c| (r, c)))
        else {
            return unmappable(Schema, format!("no mapping rule takes topic {topic}"));
        };
        if rule.kind == RuleKind::Ignore {
            return Outcome::Ignored;
        }
        if let Err(e) = self.limits.check_message(payload.len()) {
            return unmappable(InvalidField, e);
        }
        let (tenant, device) = (fill(&rule.tenant, &captures), fill(&rule.device, &captures));
        if tenant.is_empty() || device.is_empty() {
            return unmappable(Schema, format!("topic {topic} gives no tenant or device"));
        }
        let Some(payload) = parse(payload) else {
            return unmappable(Undecodable, "the payload is neither JSON nor UTF-8 text");
        };
        match &rule.kind {
            RuleKind::Availability {
                pointer,
                online,
                offline,
            } => {
                let value = match pointer {
                    Some(p) => at(&payload, p),
                    None => payload.get("state").or(Some(&payload)),
                };
                let said = value
                    .and_then(text)
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let is = |values: &[String]| values.iter().any(|v| v.eq_ignore_ascii_case(&said));
                let online = match (is(online), is(offline)) {
                    (true, _) => true,
                    (_, true) => false,
                    _ => {
                        return unmappable(
                            InvalidField,
                            format!("availability {said:?} is neither online nor offline"),
                        );
                    }
                };
                Outcome::Availability(Availability {
                    tenant_id: tenant,
                    device_id: device,
                    online,
                    ts: now_ms,
                })
            }
            RuleKind::Reading {
                fields,
                attributes,
                offline_when,
            } => {
                let whole = |p: &str| p.is_empty();
                let needs_object = fields.values().any(|f| !whole(&f.pointer))
                    || attributes.as_deref().is_some_and(whole);
                if needs_object && !payload.is_object() {
                    return unmappable(Undecodable, "the payload is not a JSON object");
                }
                if let Value::String(s) = &payload
                    && offline_when.iter().any(|o| o.eq_ignore_ascii_case(s))
                {
                    return Outcome::Availability(Availability {
                        tenant_id: tenant,
                        device_id: device,
                        online: false,
                        ts: now_ms,
                    });
                }
                match self.reading(
                    rule,
                    fields,
                    attributes.as_deref(),
                    &payload,
                    (tenant, device),
                    now_ms,
                ) {
                    Ok(t) => Outcome::Reading(t),
                    Err((reason, detail)) => Outcome::Unmappable { reason, detail },
                }
            }
            RuleKind::Ignore => Outcome::Ignored,
        }
    }

    fn reading(
        &self,
        rule: &Rule,
        fields: &BTreeMap<String, Field>,
        attributes: Option<&str>,
        payload: &Value,
        (tenant, device): (String, String),
        now_ms: i64,
    ) -> Result<Telemetry, (schemas::DeadLetterReason, String)> {
        use schemas::DeadLetterReason::InvalidField;
        let mut reading = Map::new();
        let mut attrs = Map::new();
        if let Some(Value::Object(members)) = attributes.and_then(|p| at(payload, p)) {
            let taken: Vec<&str> = fields
                .values()
                .filter_map(|f| f.pointer.rsplit('/').next())
                .collect();
            for (name, v) in members {
                if taken.contains(&name.as_str()) {
                    continue;
                }
                match v {
                    // A sensor's readings under its name (Tasmota's `"AM2301":{"Temperature":..}`).
                    Value::Object(inner) => {
                        for (inner_name, v) in inner {
                            if let Some(t) = text(v) {
                                attrs.insert(format!("{name}.{inner_name}"), Value::String(t));
                            }
                        }
                    }
                    v => {
                        if let Some(t) = text(v) {
                            attrs.insert(name.clone(), Value::String(t));
                        }
                    }
                }
            }
        }
        for (name, field) in fields {
            let Some(v) = at(payload, &field.pointer).filter(|v| !v.is_null()) else {
                continue;
            };
            if let Some(attribute) = name.strip_prefix("attributes.") {
                if let Some(t) = text(v) {
                    attrs.insert(attribute.into(), Value::String(t));
                }
                continue;
            }
            match converted(name, v, field.convert) {
                Ok(value) => {
                    reading.insert(name.clone(), value);
                }
                Err(e) => return Err((InvalidField, e)),
            }
        }
        reading.insert("tenant_id".into(), Value::String(tenant));
        reading.insert("device_id".into(), Value::String(device));
        if let Some(class) = &rule.device_class {
            reading.insert("device_class".into(), Value::String(class.clone()));
        }
        reading.entry("ts").or_insert_with(|| Value::from(now_ms));
        reading.entry("ok").or_insert(Value::Bool(true));
        if !attrs.is_empty() {
            reading.insert("attributes".into(), Value::Object(attrs));
        }
        let bytes = serde_json::to_vec(&reading).map_err(|e| (InvalidField, e.to_string()))?;
        let t = self
            .codec
            .decode_telemetry(&bytes, InputFormat::Json)
            .map_err(|e| (e.reason(), e.to_string()))?;
        self.limits
            .check(&t)
            .map_err(|e| (InvalidField, e.to_string()))?;
        Ok(t)
    }
}
