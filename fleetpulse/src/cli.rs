//! The command line: global options, one subcommand per service, and the flags that override
//! configuration keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::config::{self, Config, Override};

/// Device fleet telemetry into windowed aggregates, health, anomalies and presence.
#[derive(Debug, Parser)]
#[command(name = "fleetpulse", version, about)]
pub struct Cli {
    /// Configuration file (TOML); see config/fleetpulse.example.toml.
    #[arg(short, long, global = true, env = "FLEETPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Set any configuration key, e.g. `--set generate.devices=500`; wins over file and
    /// environment. May be repeated.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a synthetic fleet's telemetry to Kafka or to a file.
    Generate(commands::generate::GenerateArgs),
    /// The devices that should exist: apply a YAML or CSV inventory, list it.
    #[command(subcommand)]
    Inventory(commands::inventory::InventoryCommand),
    /// Probe the inventory's poll targets (HTTP, TCP): one telemetry record per probe.
    Poll(commands::poll::PollArgs),
    /// Take readings POSTed over HTTP under API keys (`POST /v1/telemetry`) into the telemetry
    /// topic, the tenant from the key.
    Ingest(commands::ingest::IngestArgs),
    /// Take MQTT messages (Zigbee2MQTT, Home Assistant, Tasmota, or mapped by hand) into the
    /// telemetry topic, each acknowledged once Kafka has it.
    Mqtt(commands::mqtt::MqttArgs),
    /// Make, list and revoke the API keys of `ingest`.
    #[command(subcommand)]
    ApiKey(commands::api_key::ApiKeyCommand),
    /// Run the dataflow: telemetry in, aggregates, anomalies, status and dead letters out.
    Pipeline(commands::pipeline::PipelineArgs),
    /// Write the derived topics somewhere analysts query them.
    #[command(subcommand)]
    Sink(commands::sink::SinkCommand),
    /// Serve live device status, anomalies and health to dashboards over WebSocket.
    Bridge(commands::bridge::BridgeArgs),
    /// Serve the built-in schemas over the Confluent Schema Registry REST API.
    Registry(commands::registry::RegistryArgs),
    /// Print the records of a topic as JSON lines, decoded.
    Tail(commands::tail::TailArgs),
    /// Measure throughput against a raw baseline in the same run.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Print the effective configuration (file, environment and flags merged) as TOML.
    Config,
    /// Print a bridge token (HS256, signed with `bridge.jwt_secret`) for an operator or a test.
    Token(commands::token::TokenArgs),
    /// Everything in one process, nothing to install: an embedded broker, a live fleet, the
    /// pipeline, the bridge and its dashboard (and the sink, given a ClickHouse).
    Demo(commands::demo::DemoArgs),
}

/// A `--set` that is not `KEY=VALUE`.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("--set {0:?}: expected KEY=VALUE")]
struct NotKeyValue(String);

/// Parses `KEY=VALUE`, the value as a TOML value when it is one (numbers, booleans, arrays) and
/// as a string otherwise.
fn parse_set(entry: &str) -> Result<Override, NotKeyValue> {
    let (key, raw) = entry
        .split_once('=')
        .ok_or_else(|| NotKeyValue(entry.to_string()))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((key.trim().to_string(), value))
}

/// The keys whose values `config` does not print: it is run to show a configuration to others.
const SECRETS: [(&str, &str); 7] = [
    ("bridge", "jwt_secret"),
    ("bridge", "redis_password"),
    ("registry", "write_token"),
    ("schema_registry", "token"),
    ("clickhouse", "password"),
    ("schema_registry", "password"),
    ("mqtt", "password"),
];

/// Parts of librdkafka property names that mark a secret value (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`, `sasl.jaas.config`...).
const SECRET_PROPERTIES: [&str; 7] = [
    "password",
    "passphrase",
    "secret",
    "token",
    ".pem",
    "jaas",
    "oauthbearer.config",
];

const REDACTED: &str = "<redacted>";

/// The configuration as TOML with the secrets that are set replaced by `"<redacted>"`: the
/// secret keys, librdkafka properties that hold secrets, and passwords inside URLs.
fn redacted(config: &Config) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::try_from(config)?;
    for (section, key) in SECRETS {
        if let Some(value) = table
            .get_mut(section)
            .and_then(|s| s.get_mut(key))
            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        {
            *value = toml::Value::String(REDACTED.into());
        }
    }
    if let Some(properties) = table
        .get_mut("kafka")
        .and_then(|k| k.get_mut("properties"))
        .and_then(toml::Value::as_table_mut)
    {
        for (name, value) in properties.iter_mut() {
            // A property read from a file is a secret whatever its name.
            if config.kafka.property_files.contains_key(name.as_str())
                || SECRET_PROPERTIES.iter().any(|s| name.contains(s))
            {
                *value = toml::Value::String(REDACTED.into());
            }
        }
    }
    for (_, section) in table.iter_mut() {
        redact_urls(section);
    }
    Ok(table)
}

/// Replaces the password of every URL with credentials (`rediss://user:secret@host`).
fn redact_urls(value: &mut toml::Value) {
    match value {
        toml::Value::String(text) => {
            if let Ok(mut url) = url::Url::parse(text)
                && url.password().is_some()
                && url.set_password(Some(REDACTED)).is_ok()
            {
                *text = url.to_string();
            }
        }
        toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| redact_urls(v)),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_urls),
        _ => {}
    }
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetpulse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = cli
        .set
        .iter()
        .map(|s| parse_set(s))
        .collect::<Result<Vec<_>, _>>()?;
    match &cli.command {
        Command::Generate(args) => args.overrides(&mut overrides),
        Command::Registry(args) => args.overrides(&mut overrides),
        Command::Inventory(command) => command.overrides(&mut overrides),
        Command::Poll(args) => args.overrides(&mut overrides),
        Command::Ingest(args) => args.overrides(&mut overrides),
        Command::Mqtt(args) => args.overrides(&mut overrides),
        Command::Pipeline(args) => args.overrides(&mut overrides),
        Command::Tail(args) => args.kafka.overrides(&mut overrides),
        Command::Sink(sink) => sink.overrides(&mut overrides),
        Command::Bridge(args) => args.overrides(&mut overrides),
        Command::Bench(bench) => bench.overrides(&mut overrides),
        Command::Config | Command::Token(_) | Command::ApiKey(_) => {}
        Command::Demo(args) => args.overrides(&mut overrides),
    }
    let config: Config = config::load(cli.config.as_deref(), &overrides)?;
    crate::observability::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Generate(args) => runtime.block_on(commands::generate::run(&config, args)),
        Command::Registry(_) => runtime.block_on(commands::registry::run(&config)),
        Command::Inventory(command) => runtime.block_on(commands::inventory::run(&config, command)),
        Command::Poll(_) => runtime.block_on(commands::poll::run(&config)),
        Command::Ingest(_) => runtime.block_on(commands::ingest::run(&config)),
        Command::Mqtt(_) => runtime.block_on(commands::mqtt::run(&config)),
        Command::ApiKey(command) => commands::api_key::run(&config, command),
        Command::Pipeline(args) => runtime.block_on(commands::pipeline::run(&config, args)),
        Command::Tail(args) => runtime.block_on(commands::tail::run(&config, args)),
        Command::Sink(sink) => runtime.block_on(commands::sink::run(&config, sink)),
        Command::Bridge(_) => runtime.block_on(commands::bridge::run(&config)),
        Command::Bench(bench) => runtime.block_on(commands::bench::run(&config, bench)),
        Command::Config => {
            print!("{}", toml::to_string_pretty(&redacted(&config)?)?);
            Ok(())
        }
        Command::Demo(args) => runtime.block_on(commands::demo::run(&config, args)),
        Command::Token(args) => commands::token::run(&config, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_toml_values_and_falls_back_to_strings() {
        assert_eq!(
            parse_set("generate.devices=5"),
            Ok(("generate.devices".into(), toml::Value::Integer(5)))
        );
        assert_eq!(
            parse_set("kafka.brokers=127.0.0.1:9092"),
            Ok((
                "kafka.brokers".into(),
                toml::Value::String("127.0.0.1:9092".into())
            ))
        );
        assert!(parse_set("no-equals").is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut config = Config::default();
        config.bridge.jwt_secret = "a-secret-of-sixteen".into();
        config.clickhouse.password = "hunter2".into();
        config.bridge.redis_url = "rediss://fleet:redis-pass@127.0.0.1:6380".into();
        for (name, value) in [
            ("sasl.password", "kafka-pass"),
            ("ssl.key.password", "key-pass"),
            ("sasl.oauthbearer.client.secret", "oauth-secret"),
            (
                "sasl.oauthbearer.assertion.private.key.passphrase",
                "ph-value-77",
            ),
            ("some.future.setting", "from-a-file"),
        ] {
            config.kafka.properties.insert(name.into(), value.into());
        }
        // Read from a file, so a secret whatever its name.
        config
            .kafka
            .property_files
            .insert("some.future.setting".into(), "/run/secrets/x".into());
        config
            .kafka
            .properties
            .insert("sasl.username".into(), "fleet".into());
        let text = redacted(&config).map(|t| t.to_string()).unwrap_or_default();
        assert!(
            [
                "a-secret-of-sixteen",
                "hunter2",
                "redis-pass",
                "kafka-pass",
                "key-pass",
                "oauth-secret",
                "ph-value-77",
                "from-a-file",
            ]
            .iter()
            .all(|s| !text.contains(s)),
            "{text}"
        );
        assert!(
            text.contains("<redacted>") && text.contains(r#""sasl.username" = "fleet""#),
            "{text}"
        );
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
