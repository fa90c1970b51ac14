//! `fleetpulse mqtt`'s mapping: which MQTT messages are whose telemetry, and how their payloads
//! become readings or availability reports.
//!
//! A mapping is a list of rules ([`mapping::Rule`]), each a topic pattern ([`pattern::Pattern`]:
//! `zigbee2mqtt/{device+}`, `tele/{device}/STATE`, `site/{tenant}/{device}/data`) and what a
//! matching message is: a reading whose fields come from the payload by JSON pointer with unit
//! conversions, an availability report, or nothing. The first rule that matches decides.
//! Built-in presets ([`presets`]) write those rules for Zigbee2MQTT, Home Assistant's MQTT
//! statestream and Tasmota from their documented payloads; a deployment adds rules of its own.
//! Nothing here talks to a broker: the mapping is a function of a topic, a payload and the
//! gateway's clock.

pub mod config;
pub mod mapping;
pub mod pattern;
pub mod presets;

pub use config::{MappingConfig, MqttConfig};
pub use mapping::{Availability, Conversion, Field, Mapper, Outcome, Rule, RuleKind};
pub use pattern::Pattern;
