//! The built-in presets: the rules for Zigbee2MQTT, Home Assistant's MQTT statestream and
//! Tasmota, written from those projects' documented topics and payloads.
//!
//! - **Zigbee2MQTT** (`<base>/<friendly name>`, base `zigbee2mqtt`; friendly names may hold `/`):
//!   a device's JSON state is a reading: `battery` (percent) to `battery_pct`, `linkquality` (LQI)
//!   to `signal_dbm` ([`Conversion::LqiToDbm`]), `last_seen` (when Zigbee2MQTT is set to publish
//!   it, epoch ms or ISO 8601) to `ts`, every other member an attribute. `<name>/availability`
//!   (`{"state":"online"}`, or the legacy `online`) is an availability report; the bridge's own
//!   topics and `/set`, `/get` commands are ignored.
//! - **Home Assistant statestream** (`<base>/<domain>/<object id>/state`, base `homeassistant`):
//!   the entity (`sensor.kitchen_temperature`) is the device, its state the attribute `state`
//!   (`ok` unless `unknown`, `off`...); `unavailable` is an availability report (offline). The
//!   attribute topics statestream also publishes are ignored.
//! - **Tasmota** (`<base>/<topic>/...`, base `tele`): `STATE` is a reading (`Wifi.Signal` to
//!   `signal_dbm`, `POWER` and `Uptime` as attributes), `SENSOR` a reading whose sensors' values
//!   are attributes (`AM2301.Temperature`); `LWT` (`Online`, `Offline`, the last will) an
//!   availability report; other telemetry topics are ignored. Tasmota's `Time` is local time
//!   without a zone, so readings take the gateway's clock.

use std::collections::BTreeMap;

use crate::mapping::{Conversion, Field, Rule, RuleKind};
use crate::pattern::{Pattern, PatternError};

/// The presets, by name.
pub const NAMES: [&str; 3] = ["zigbee2mqtt", "home_assistant", "tasmota"];

/// The base topic a preset uses unless told otherwise.
pub fn default_base(preset: &str) -> Option<&'static str> {
    match preset {
        "zigbee2mqtt" => Some("zigbee2mqtt"),
        "home_assistant" => Some("homeassistant"),
        "tasmota" => Some("tele"),
        _ => None,
    }
}

fn field(pointer: &str, convert: Conversion) -> Field {
    Field {
        pointer: pointer.into(),
        convert,
    }
}

fn words(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_string()).collect()
}

/// The rules of `preset` under `base`, for `tenant`'s devices of `device_class`; `None` for a
/// preset that does not exist.
pub fn rules(
    preset: &str,
    base: &str,
    tenant: &str,
    device_class: Option<&str>,
) -> Option<Result<Vec<Rule>, PatternError>> {
    let rule = |pattern: String, device: &str, kind: RuleKind| -> Result<Rule, PatternError> {
        Ok(Rule {
            pattern: Pattern::parse(&pattern)?,
            tenant: tenant.into(),
            device: device.into(),
            device_class: device_class.map(Into::into),
            kind,
        })
    };
    let availability = |pointer: Option<&str>| RuleKind::Availability {
        pointer: pointer.map(Into::into),
        online: words(&["online"]),
        offline: words(&["offline"]),
    };
    let made = match preset {
        "zigbee2mqtt" => vec![
            rule(
                format!("{base}/bridge/{{rest+}}"),
                "{rest}",
                RuleKind::Ignore,
            ),
            rule(
                format!("{base}/{{device+}}/set"),
                "{device}",
                RuleKind::Ignore,
            ),
            rule(
                format!("{base}/{{device+}}/get"),
                "{device}",
                RuleKind::Ignore,
            ),
            rule(
                format!("{base}/{{device+}}/availability"),
                "{device}",
                availability(None),
            ),
            rule(
                format!("{base}/{{device+}}"),
                "{device}",
                RuleKind::Reading {
                    fields: BTreeMap::from([
                        ("battery_pct".into(), field("/battery", Conversion::None)),
                        (
                            "signal_dbm".into(),
                            field("/linkquality", Conversion::LqiToDbm),
                        ),
                        ("ts".into(), field("/last_seen", Conversion::None)),
                    ]),
                    attributes: Some(String::new()),
                    offline_when: Vec::new(),
                },
            ),
        ],
        "home_assistant" => vec![
            rule(
                format!("{base}/{{domain}}/{{entity}}/state"),
                "{domain}.{entity}",
                RuleKind::Reading {
                    fields: BTreeMap::from([
                        ("ok".into(), field("", Conversion::StateToOk)),
                        ("attributes.state".into(), field("", Conversion::None)),
                    ]),
                    attributes: None,
                    offline_when: words(&["unavailable"]),
                },
            ),
            rule(
                format!("{base}/{{domain}}/{{entity}}/+"),
                "{domain}.{entity}",
                RuleKind::Ignore,
            ),
        ],
        "tasmota" => vec![
            rule(
                format!("{base}/{{device}}/LWT"),
                "{device}",
                availability(Some("")),
            ),
            rule(
                format!("{base}/{{device}}/STATE"),
                "{device}",
                RuleKind::Reading {
                    fields: BTreeMap::from([
                        ("signal_dbm".into(), field("/Wifi/Signal", Conversion::None)),
                        ("attributes.power".into(), field("/POWER", Conversion::None)),
                        (
                            "attributes.uptime".into(),
                            field("/Uptime", Conversion::None),
                        ),
                    ]),
                    attributes: None,
                    offline_when: Vec::new(),
                },
            ),
            rule(
                format!("{base}/{{device}}/SENSOR"),
                "{device}",
                RuleKind::Reading {
                    fields: BTreeMap::from([(
                        "attributes.Time".into(),
                        field("/Time", Conversion::None),
                    )]),
                    attributes: Some(String::new()),
                    offline_when: Vec::new(),
                },
            ),
            rule(format!("{base}/{{device}}/+"), "{device}", RuleKind::Ignore),
        ],
        _ => return None,
    };
    Some(made.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use schemas::{Codec, Limits};

    use super::*;
    use crate::mapping::{Mapper, Outcome};

    const NOW: i64 = 1_764_640_000_000;

    fn mapper(preset: &str) -> Mapper {
        let base = default_base(preset).unwrap_or_default();
        let rules = rules(preset, base, "home", Some("zigbee"))
            .and_then(Result::ok)
            .unwrap_or_default();
        Mapper::new(rules, Codec::builtin(), Limits::default())
    }

    fn reading(outcome: Outcome) -> schemas::Telemetry {
        match outcome {
            Outcome::Reading(t) => t,
            other => panic!("not a reading: {other:?}"),
        }
    }

    fn availability(outcome: Outcome) -> (String, bool) {
        match outcome {
            Outcome::Availability(a) => (a.device_id, a.online),
            other => panic!("not an availability report: {other:?}"),
        }
    }

    #[test]
    fn zigbee2mqtt_states_availability_and_its_own_topics() {
        let z = mapper("zigbee2mqtt");
        let t = reading(z.map(
            "zigbee2mqtt/kitchen/door_sensor",
            br#"{"battery":"97.00","contact":true,"linkquality":102,"voltage":3015,"last_seen":"2025-12-02T01:46:40.000Z"}"#,
            NOW,
        ));
        assert_eq!(
            (t.tenant_id.as_str(), t.device_id.as_str()),
            ("home", "kitchen/door_sensor")
        );
        assert_eq!(t.battery_pct, Some(97.0));
        let dbm = t.signal_dbm.unwrap_or_default();
        assert!(
            (dbm - (-100.0 + 102.0 * 80.0 / 255.0)).abs() < 1e-9,
            "{dbm}"
        );
        assert_eq!(t.ts, 1_764_640_000_000);
        assert_eq!(
            t.attributes.get("contact").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            t.attributes.get("voltage").map(String::as_str),
            Some("3015")
        );
        assert!(!t.attributes.contains_key("battery"), "{:?}", t.attributes);
        assert_eq!(t.device_class.as_deref(), Some("zigbee"));
        let bulb = reading(z.map(
            "zigbee2mqtt/0x00158d0001a2b3c4",
            br#"{"state":"ON","brightness":215}"#,
            NOW,
        ));
        assert_eq!(bulb.ts, NOW, "no last_seen: the gateway's clock");
        assert_eq!(
            availability(z.map(
                "zigbee2mqtt/kitchen/door_sensor/availability",
                br#"{"state":"offline"}"#,
                NOW
            )),
            ("kitchen/door_sensor".into(), false)
        );
        assert_eq!(
            availability(z.map("zigbee2mqtt/plug/availability", b"online", NOW)),
            ("plug".into(), true)
        );
        for ignored in [
            "zigbee2mqtt/bridge/state",
            "zigbee2mqtt/bridge/logging",
            "zigbee2mqtt/plug/set",
        ] {
            assert_eq!(z.map(ignored, b"{}", NOW), Outcome::Ignored, "{ignored}");
        }
        let garbage = z.map("zigbee2mqtt/plug", b"garbage", NOW);
        assert!(
            matches!(
                garbage,
                Outcome::Unmappable {
                    reason: schemas::DeadLetterReason::Undecodable,
                    ..
                }
            ),
            "{garbage:?}"
        );
        let broken = z.map("zigbee2mqtt/plug", br#"{"battery":"low"}"#, NOW);
        assert!(
            matches!(
                broken,
                Outcome::Unmappable {
                    reason: schemas::DeadLetterReason::InvalidField,
                    ..
                }
            ),
            "{broken:?}"
        );
        assert_eq!(z.filters(), ["zigbee2mqtt/#"]);
    }

    #[test]
    fn home_assistant_statestream_entities() {
        let h = mapper("home_assistant");
        let t = reading(h.map(
            "homeassistant/sensor/kitchen_temperature/state",
            b"21.5",
            NOW,
        ));
        assert_eq!(t.device_id, "sensor.kitchen_temperature");
        assert_eq!(t.attributes.get("state").map(String::as_str), Some("21.5"));
        assert!(t.ok);
        let off = reading(h.map("homeassistant/switch/heater/state", b"off", NOW));
        assert!(!off.ok);
        assert_eq!(
            availability(h.map(
                "homeassistant/sensor/kitchen_temperature/state",
                b"unavailable",
                NOW
            )),
            ("sensor.kitchen_temperature".into(), false)
        );
        assert_eq!(
            h.map(
                "homeassistant/sensor/kitchen_temperature/unit_of_measurement",
                "\"°C\"".as_bytes(),
                NOW
            ),
            Outcome::Ignored
        );
        assert_eq!(h.filters(), ["homeassistant/+/+/state"]);
    }

    #[test]
    fn tasmota_state_sensors_and_last_will() {
        let t = mapper("tasmota");
        let state = reading(t.map(
            "tele/plug-7/STATE",
            br#"{"Time":"2025-12-02T02:46:40","Uptime":"0T00:15:00","Heap":25,"POWER":"ON","Wifi":{"AP":1,"SSId":"iot","RSSI":78,"Signal":-61,"LinkCount":1}}"#,
            NOW,
        ));
        assert_eq!(state.signal_dbm, Some(-61.0));
        assert_eq!(
            state.attributes.get("power").map(String::as_str),
            Some("ON")
        );
        assert_eq!(state.ts, NOW, "Tasmota's local time is not taken");
        let sensor = reading(t.map(
            "tele/plug-7/SENSOR",
            br#"{"Time":"2025-12-02T02:46:40","AM2301":{"Temperature":22.5,"Humidity":45.2},"TempUnit":"C"}"#,
            NOW,
        ));
        assert_eq!(
            sensor
                .attributes
                .get("AM2301.Temperature")
                .map(String::as_str),
            Some("22.5")
        );
        assert_eq!(
            availability(t.map("tele/plug-7/LWT", b"Offline", NOW)),
            ("plug-7".into(), false)
        );
        assert_eq!(
            availability(t.map("tele/plug-7/LWT", b"Online", NOW)),
            ("plug-7".into(), true)
        );
        assert_eq!(t.map("tele/plug-7/INFO1", b"{}", NOW), Outcome::Ignored);
        assert_eq!(t.filters(), ["tele/+/LWT", "tele/+/STATE", "tele/+/SENSOR"]);
    }
}
