//! `fleetpulse mqtt`: MQTT messages as telemetry. Which messages are whose, and how their payloads
//! become readings or availability reports, is the mapping; the gateway takes them from the broker
//! and writes them to Kafka.
//!
//! A mapping is a list of rules ([`mapping::Rule`]), each a topic pattern ([`pattern::Pattern`]:
//! `zigbee2mqtt/{device+}`, `tele/{device}/STATE`, `site/{tenant}/{device}/data`) and what a
//! matching message is: a reading whose fields come from the payload by JSON pointer with unit
//! conversions, an availability report, or nothing. The first rule that matches decides.
//! Built-in presets ([`presets`]) write those rules for Zigbee2MQTT, Home Assistant's MQTT
//! statestream and Tasmota from their documented payloads; a deployment adds rules of its own.
//! The mapping talks to no broker: it is a function of a topic, a payload and the gateway's clock.
//! [`gateway`] is the client that runs it between the MQTT broker and Kafka.

pub mod client;
pub mod config;
pub mod events;
pub mod gateway;
pub mod mapping;
pub mod pattern;
pub mod presets;

pub use config::{MappingConfig, MqttConfig};
pub use mapping::{Availability, Conversion, Field, Mapper, Outcome, Rule, RuleKind};
pub use pattern::Pattern;
