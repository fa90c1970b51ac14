//! `fleetpulse mqtt`: the MQTT gateway (`[mqtt]`): subscribes to an MQTT broker, maps its messages
//! to telemetry by the configured presets and rules, writes them to the telemetry topic (what
//! cannot be mapped to the DLQ), and acknowledges each message once Kafka has; `/metrics`,
//! `/healthz` and `/readyz` on `mqtt.listen`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Args;
use mqtt_gateway::gateway::{self, Health, Setup};
use schemas::RecordKind;

use super::KafkaArgs;
use crate::config::{Config, Override};

/// Flags of `mqtt`.
#[derive(Debug, Args)]
pub struct MqttArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The MQTT broker, `mqtt://host:port` or `mqtts://host:port` (`mqtt.url`).
    #[arg(long)]
    url: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz` (`mqtt.listen`).
    #[arg(long)]
    listen: Option<String>,
}

impl MqttArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        for (key, value) in [("mqtt.url", &self.url), ("mqtt.listen", &self.listen)] {
            if let Some(v) = value {
                into.push((key.into(), toml::Value::String(v.clone())));
            }
        }
    }
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    crate::kafka::check_access(config).await?;
    crate::kafka::ensure_topic(config, config.topics.telemetry.as_str(), 4).await?;
    crate::kafka::ensure_topic(config, config.topics.dlq.as_str(), 4).await?;
    let codec = super::codec(config, &[RecordKind::Telemetry, RecordKind::DeadLetter]).await?;
    let health = Arc::new(Health::default());
    let watched = Arc::clone(&health);
    crate::observability::serve(
        config.mqtt.listen,
        "mqtt.listen",
        "mqtt",
        Box::new(move || {
            if !watched.connected.load(Ordering::Relaxed) {
                Some("not connected to the MQTT broker")
            } else if watched.kafka_failing.load(Ordering::Relaxed) {
                Some("Kafka is not acknowledging records")
            } else {
                None
            }
        }),
    )
    .await?;
    let setup = Setup {
        config: config.mqtt.clone(),
        kafka: crate::kafka::properties(config)?,
        telemetry: config.topics.telemetry.as_str().into(),
        dlq: config.topics.dlq.as_str().into(),
        codec,
        limits: config.pipeline.limits,
        stop: super::stop_on_signal(),
    };
    let counts = gateway::run(setup, health).await?;
    println!(
        "{}",
        serde_json::json!({ "acknowledged": counts.acknowledged })
    );
    Ok(())
}

/// The host and port of a plain-MQTT broker at `url` (`mqtt.url`), for the clients of the demo
/// and the benchmark, which speak no TLS.
pub(crate) fn plain_broker(url: &str) -> anyhow::Result<(String, u16)> {
    let (host, port, tls) = mqtt_gateway::client::address(url)
        .map_err(|e| anyhow::anyhow!("mqtt.{}: {}", e.key, e.why))?;
    anyhow::ensure!(!tls, "{url}: a plain mqtt:// broker is wanted here");
    Ok((host, port))
}
