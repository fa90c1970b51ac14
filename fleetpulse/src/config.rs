//! fleetpulse's configuration: one TOML file, every key overridable by a `FLEETPULSE_SECTION__KEY`
//! environment variable and by command-line flags, in that order of precedence. Values are
//! checked as they are read; a mistake fails start-up with a message naming the key and the
//! form it expects.

mod secrets;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Environment variables with the `FLEETPULSE_` prefix that are not configuration keys: the
/// config file's path, and the settings of `scripts/services.sh`. Any other is a key, so a
/// misspelt one fails start-up instead of being ignored.
const NOT_KEYS: [&str; 7] = [
    "config",
    "cache",
    "services_dir",
    "kafka_version",
    "kafka_heap",
    "kafka_java_opts",
    "ready_timeout",
];

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[kafka]`: the brokers and client settings.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// `[topics]`: topic names.
    #[serde(default)]
    pub topics: Topics,
    /// `[schema_registry]`: a Confluent-compatible registry; absent means built-in schema ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<registry::ClientConfig>,
    /// `[registry]`: the `fleetpulse registry` server.
    #[serde(default)]
    pub registry: registry::ServerConfig,
    /// `[generate]`: the synthetic fleet.
    #[serde(default)]
    pub generate: generator::GeneratorConfig,
    /// `[pipeline]`: the dataflow.
    #[serde(default)]
    pub pipeline: pipeline::PipelineConfig,
    /// `[clickhouse]`: the ClickHouse sink.
    #[serde(default)]
    pub clickhouse: clickhouse_sink::SinkConfig,
    /// `[bridge]`: the WebSocket bridge (checked when the bridge starts: its secret is needed
    /// there only).
    #[serde(default)]
    pub bridge: ws_bridge::BridgeConfig,
    /// `[poller]`: `fleetpulse poll`.
    #[serde(default)]
    pub poller: poller::PollerConfig,
    /// `[ingest]`: `fleetpulse ingest`.
    #[serde(default)]
    pub ingest: ingest::IngestConfig,
    /// `[mqtt]`: `fleetpulse mqtt`.
    #[serde(default)]
    pub mqtt: mqtt_gateway::MqttConfig,
    /// `[log]`: logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[kafka]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Required by every command that talks to
    /// Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<Brokers>,
    /// Extra librdkafka settings for every client (for example `security.protocol`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka settings whose values are read from files at start-up, as Docker and
    /// Kubernetes mount secrets: `"sasl.password" = "/run/secrets/kafka-password"`. A value in
    /// [`KafkaConfig::properties`] under the same name loses to the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub property_files: BTreeMap<String, PathBuf>,
}

/// A validated bootstrap list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers(String);

impl Brokers {
    /// The list, as librdkafka takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A text that is not a list of `host:port`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a list of host:port")]
pub struct NotBrokers(String);

impl std::str::FromStr for Brokers {
    type Err = NotBrokers;

    fn from_str(s: &str) -> Result<Brokers, NotBrokers> {
        let well_formed = |b: &str| {
            b.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        if !s.is_empty() && s.split(',').map(str::trim).all(well_formed) {
            Ok(Brokers(s.to_string()))
        } else {
            Err(NotBrokers(s.to_string()))
        }
    }
}

impl<'de> Deserialize<'de> for Brokers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Brokers, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&text),
                &"host:port[,host:port...], for example 127.0.0.1:9092",
            )
        })
    }
}

impl Serialize for Brokers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicName(String);

impl TopicName {
    fn new(name: &str) -> TopicName {
        TopicName(name.to_string())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name behind `prefix`, which must be letters, digits, '.', '_' or '-'.
    pub(crate) fn prefixed(&self, prefix: &str) -> TopicName {
        TopicName(format!("{prefix}{}", self.0))
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TopicName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TopicName, D::Error> {
        let name = String::deserialize(d)?;
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if (1..=249).contains(&name.len()) && name.chars().all(legal) {
            Ok(TopicName(name))
        } else {
            Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&name),
                &"a Kafka topic name: 1 to 249 letters, digits, '.', '_' or '-'",
            ))
        }
    }
}

/// `[topics]`: where each record kind is read from or written to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Telemetry in.
    #[serde(default = "topic::telemetry")]
    pub telemetry: TopicName,
    /// Window aggregates out.
    #[serde(default = "topic::aggregates")]
    pub aggregates: TopicName,
    /// Anomalies out.
    #[serde(default = "topic::anomalies")]
    pub anomalies: TopicName,
    /// Status transitions out.
    #[serde(default = "topic::status")]
    pub status: TopicName,
    /// Dead letters out.
    #[serde(default = "topic::dlq")]
    pub dlq: TopicName,
    /// Last-seen times out (compacted).
    #[serde(default = "topic::lastseen")]
    pub lastseen: TopicName,
    /// The device inventory (compacted): written by `inventory apply`, read by the pipeline,
    /// the poller and the sink.
    #[serde(default = "topic::inventory")]
    pub inventory: TopicName,
}

mod topic {
    use super::TopicName;
    use schemas::RecordKind;
    pub(super) fn telemetry() -> TopicName {
        TopicName::new(RecordKind::Telemetry.default_topic())
    }
    pub(super) fn aggregates() -> TopicName {
        TopicName::new(RecordKind::WindowAggregate.default_topic())
    }
    pub(super) fn anomalies() -> TopicName {
        TopicName::new(RecordKind::Anomaly.default_topic())
    }
    pub(super) fn status() -> TopicName {
        TopicName::new(RecordKind::StatusTransition.default_topic())
    }
    pub(super) fn dlq() -> TopicName {
        TopicName::new(RecordKind::DeadLetter.default_topic())
    }
    pub(super) fn lastseen() -> TopicName {
        TopicName::new(RecordKind::LastSeen.default_topic())
    }
    pub(super) fn inventory() -> TopicName {
        TopicName::new(RecordKind::Registration.default_topic())
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            telemetry: topic::telemetry(),
            aggregates: topic::aggregates(),
            anomalies: topic::anomalies(),
            status: topic::status(),
            dlq: topic::dlq(),
            lastseen: topic::lastseen(),
            inventory: topic::inventory(),
        }
    }
}

impl Topics {
    /// The topic of a record kind.
    pub fn of(&self, kind: schemas::RecordKind) -> &TopicName {
        use schemas::RecordKind::*;
        match kind {
            Telemetry => &self.telemetry,
            WindowAggregate => &self.aggregates,
            Anomaly => &self.anomalies,
            StatusTransition => &self.status,
            DeadLetter => &self.dlq,
            LastSeen => &self.lastseen,
            Registration => &self.inventory,
        }
    }

    /// The record kind carried by a topic, if it is one of ours.
    pub fn kind_of(&self, topic: &str) -> Option<schemas::RecordKind> {
        schemas::RecordKind::ALL
            .into_iter()
            .find(|k| self.of(*k).as_str() == topic)
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,rdkafka=warn`; `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

/// A configuration mistake, naming the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file named on the command line does not exist or cannot be read.
    #[error("configuration file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        detail: String,
    },
    /// One or more keys have bad values, are unknown, or are missing.
    #[error("{}", .0.join("\n"))]
    Keys(Vec<String>),
}

impl ConfigError {
    fn key(key: &str, source: Option<&str>, problem: impl fmt::Display) -> String {
        match source {
            Some(source) => format!("configuration key `{key}` (from {source}): {problem}"),
            None => format!("configuration key `{key}`: {problem}"),
        }
    }

    /// An invalid value that serde could not see (a relation between keys, or a command's own
    /// requirement).
    pub fn invalid(key: &str, expected: &str) -> ConfigError {
        ConfigError::Keys(vec![ConfigError::key(
            key,
            None,
            format_args!("expected {expected}"),
        )])
    }
}

fn describe(error: figment::Error) -> Vec<String> {
    use figment::error::Kind;
    error
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            let problem = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    if expected.is_empty() {
                        "unknown key".to_string()
                    } else {
                        format!("unknown key; expected one of: {}", expected.join(", "))
                    }
                }
                Kind::MissingField(field) => {
                    path.push(field.to_string());
                    "missing; this key is required".to_string()
                }
                Kind::InvalidType(actual, expected) => {
                    format!("found {actual}, expected {expected}")
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("{actual} is invalid, expected {expected}")
                }
                Kind::UnknownVariant(actual, expected) => {
                    format!(
                        "unknown value {actual:?}, expected one of: {}",
                        expected.join(", ")
                    )
                }
                other => other.to_string(),
            };
            let source = e.metadata.as_ref().map(|m| match &m.source {
                _ if m.name.contains("environment") => format!(
                    "environment variable FLEETPULSE_{}",
                    path.join("__").to_uppercase()
                ),
                Some(figment::Source::File(file)) => format!("{} {}", m.name, file.display()),
                _ => m.name.to_string(),
            });
            ConfigError::key(&path.join("."), source.as_deref(), problem)
        })
        .collect()
}

/// A command-line flag that sets a key, as `(key, value)`.
pub type Override = (String, toml::Value);

/// Reads the configuration: `file` (if any), then `FLEETPULSE_*` variables, then `overrides`.
pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        // A missing file would otherwise be skipped in silence.
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError::File {
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(
        Env::prefixed("FLEETPULSE_")
            .ignore(&NOT_KEYS)
            .split("__")
            .map(|k| k.as_str().to_lowercase().into()),
    );
    for (key, value) in overrides {
        figment = figment.merge((key.as_str(), value.clone()));
    }
    let mut config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Keys(describe(e)))?;
    secrets::read_files(&mut config)?;
    if let Err((key, expected)) = config.generate.validate() {
        return Err(ConfigError::invalid(&format!("generate.{key}"), expected));
    }
    if let Err((key, expected)) = config.pipeline.validate() {
        return Err(ConfigError::invalid(&format!("pipeline.{key}"), expected));
    }
    if let Err((key, expected)) = config.clickhouse.validate() {
        return Err(ConfigError::invalid(
            &format!("clickhouse.{key}"),
            &expected,
        ));
    }
    if let Err((key, expected)) = config.poller.validate() {
        return Err(ConfigError::invalid(&format!("poller.{key}"), &expected));
    }
    if let Err((key, expected)) = config.ingest.validate() {
        return Err(ConfigError::invalid(&format!("ingest.{key}"), &expected));
    }
    if let Err((key, expected)) = config.mqtt.validate() {
        return Err(ConfigError::invalid(&format!("mqtt.{key}"), &expected));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(ConfigError::Keys(vec![ConfigError::key(
            "log.level",
            None,
            format_args!("{e}; expected a filter such as `info` or `info,rdkafka=warn`"),
        )]));
    }
    Ok(config)
}

impl Config {
    /// The brokers, for commands that need Kafka.
    pub fn brokers(&self) -> Result<&Brokers, ConfigError> {
        self.kafka.brokers.as_ref().ok_or_else(|| {
            ConfigError::invalid(
                "kafka.brokers",
                "host:port of the Kafka brokers (set it in the file, with FLEETPULSE_KAFKA__BROKERS or with --brokers)",
            )
        })
    }
}

#[cfg(test)]
mod tests;
