//! `[mqtt]`: the broker `fleetpulse mqtt` subscribes to, and the mappings from its topics to
//! tenants, devices and telemetry (`[[mqtt.mappings]]`: a preset, or a topic pattern with its
//! fields).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::client::Protocol;
use crate::mapping::{Conversion, Field, Rule, RuleKind};
use crate::pattern::Pattern;
use crate::presets;

/// A field of a hand-written mapping: a JSON pointer, or a pointer with a conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldConfig {
    /// `"/battery"`.
    Pointer(String),
    /// `{ pointer = "/lqi", convert = "lqi_to_dbm" }`.
    Converted {
        /// Where the value is.
        pointer: String,
        /// How it is converted.
        #[serde(default)]
        convert: Conversion,
    },
}

/// One `[[mqtt.mappings]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// A built-in preset: `zigbee2mqtt`, `home_assistant` or `tasmota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The preset's base topic, if not its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// A hand-written rule's topic pattern (`factory/{tenant}/{device}/telemetry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The tenant: a name, or a template of the pattern's captures; default `{tenant}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The device, a template of the pattern's captures; default `{device}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The class the readings carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// A hand-written reading's fields: telemetry field to where in the payload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldConfig>,
    /// Where further attributes come from (an object's scalar members; `""`: the payload's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<String>,
    /// The topic carries availability (`online`/`offline`) instead of readings.
    #[serde(default)]
    pub availability: bool,
    /// Messages on the topic are not telemetry: take them and drop them.
    #[serde(default)]
    pub ignore: bool,
}

/// Settings of `fleetpulse mqtt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The broker: `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: String,
    /// The client id, which names the persistent session the broker keeps while the gateway is
    /// away; one per gateway.
    pub client_id: String,
    /// The protocol version: `"3.1.1"` or `"5"`.
    pub protocol: Protocol,
    /// User name, when the broker asks for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (`password_file` wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password, read at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The CA of an `mqtts://` broker's certificate (else the system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: std::net::SocketAddr,
    /// The mappings, tried in order; the first rule that matches a topic decides.
    pub mappings: Vec<MappingConfig>,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "fleetpulse-mqtt".into(),
            protocol: Protocol::V311,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9468)),
            mappings: Vec::new(),
        }
    }
}

/// The telemetry fields a mapping may fill.
const FIELDS: [&str; 6] = [
    "ok",
    "response_time_ms",
    "battery_pct",
    "signal_dbm",
    "error_code",
    "ts",
];

impl MqttConfig {
    /// The rules of every mapping, in order; the error names the key (within `[mqtt]`) and what
    /// it expects.
    pub fn rules(&self) -> Result<Vec<Rule>, (String, String)> {
        let mut rules = Vec::new();
        for (i, m) in self.mappings.iter().enumerate() {
            let key = |k: &str| format!("mappings[{i}].{k}");
            let fail = |k: &str, why: String| Err((key(k), why));
            match (&m.preset, &m.topic) {
                (Some(preset), None) => {
                    let Some(base) = m.base.as_deref().or_else(|| presets::default_base(preset))
                    else {
                        return fail("preset", format!("one of {}", presets::NAMES.join(", ")));
                    };
                    let Some(tenant) = m.tenant.as_deref() else {
                        return fail("tenant", "the tenant of the preset's devices".into());
                    };
                    match presets::rules(preset, base, tenant, m.device_class.as_deref()) {
                        Some(Ok(made)) => rules.extend(made),
                        Some(Err(e)) => return fail("base", e.to_string()),
                        None => {
                            return fail("preset", format!("one of {}", presets::NAMES.join(", ")));
                        }
                    }
                }
                (None, Some(topic)) => {
                    let pattern = match Pattern::parse(topic) {
                        Ok(p) => p,
                        Err(e) => return fail("topic", e.to_string()),
                    };
                    let tenant = m.tenant.clone().unwrap_or_else(|| "{tenant}".into());
                    let device = m.device.clone().unwrap_or_else(|| "{device}".into());
                    for (name, template) in [("tenant", &tenant), ("device", &device)] {
                        let unfilled = crate::mapping::fill(template, &pattern.names());
                        if unfilled.contains('{') || unfilled.is_empty() {
                            return fail(
                                name,
                                format!(
                                    "a name, or a template of the topic's captures ({template:?} names one it lacks)"
                                ),
                            );
                        }
                    }
                    let kind = if m.ignore {
                        RuleKind::Ignore
                    } else if m.availability {
                        RuleKind::Availability {
                            pointer: None,
                            online: vec!["online".into()],
                            offline: vec!["offline".into()],
                        }
                    } else {
                        let mut fields = BTreeMap::new();
                        for (name, f) in &m.fields {
                            if !FIELDS.contains(&name.as_str()) && !name.starts_with("attributes.")
                            {
                                return fail(
                                    &format!("fields.{name}"),
                                    format!("one of {}, or attributes.<name>", FIELDS.join(", ")),
                                );
                            }
                            let (pointer, convert) = match f {
                                FieldConfig::Pointer(p) => (p.clone(), Conversion::None),
                                FieldConfig::Converted { pointer, convert } => {
                                    (pointer.clone(), *convert)
                                }
                            };
                            if !(pointer.is_empty() || pointer.starts_with('/')) {
                                return fail(
                                    &format!("fields.{name}"),
                                    "a JSON pointer (\"/battery\"), or \"\" for the whole payload"
                                        .into(),
                                );
                            }
                            fields.insert(name.clone(), Field { pointer, convert });
                        }
                        RuleKind::Reading {
                            fields,
                            attributes: m.attributes.clone(),
                            offline_when: Vec::new(),
                        }
                    };
                    rules.push(Rule {
                        pattern,
                        tenant,
                        device,
                        device_class: m.device_class.clone(),
                        kind,
                    });
                }
                _ => return fail("preset", "either preset or topic".into()),
            }
        }
        Ok(rules)
    }

    /// Checks the values; the error names the key (within `[mqtt]`) and what it expects.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.url.starts_with("mqtt://") || self.url.starts_with("mqtts://")) {
            return Err(("url".into(), "mqtt://host:port or mqtts://host:port".into()));
        }
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            return Err(("client_id".into(), "1 to 128 characters".into()));
        }
        self.rules().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_hand_written_rules_and_their_mistakes() {
        let good = MqttConfig {
            mappings: vec![
                MappingConfig {
                    preset: Some("zigbee2mqtt".into()),
                    tenant: Some("home".into()),
                    ..MappingConfig::default()
                },
                MappingConfig {
                    topic: Some("factory/{tenant}/{device}/telemetry".into()),
                    fields: BTreeMap::from([
                        ("battery_pct".into(), FieldConfig::Pointer("/bat".into())),
                        (
                            "signal_dbm".into(),
                            FieldConfig::Converted {
                                pointer: "/lqi".into(),
                                convert: Conversion::LqiToDbm,
                            },
                        ),
                    ]),
                    ..MappingConfig::default()
                },
            ],
            ..MqttConfig::default()
        };
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(good.rules().map(|r| r.len()), Ok(6));
        type Breaker = fn(&mut MqttConfig);
        let cases: [(&str, Breaker); 6] = [
            ("url", |c| c.url = "tcp://x".into()),
            ("mappings[0].preset", |c| {
                c.mappings[0].preset = Some("nope".into())
            }),
            ("mappings[0].tenant", |c| c.mappings[0].tenant = None),
            ("mappings[1].fields.speed", |c| {
                c.mappings[1]
                    .fields
                    .insert("speed".into(), FieldConfig::Pointer("/s".into()));
            }),
            ("mappings[1].device", |c| {
                c.mappings[1].device = Some("{serial}".into())
            }),
            ("mappings[1].topic", |c| {
                c.mappings[1].topic = Some("a/#".into())
            }),
        ];
        for (key, break_it) in cases {
            let mut c = good.clone();
            break_it(&mut c);
            assert_eq!(c.validate().map_err(|(k, _)| k), Err(key.to_string()));
        }
    }
}
