//! `fleetpulse bench mqtt`: MQTT messages per second `fleetpulse mqtt` bridges into Kafka (each
//! acknowledged by Kafka before the broker), beside `mosquitto_sub` reading the same messages
//! from the same broker. One publisher in this process sends the same Zigbee2MQTT payloads at
//! QoS 1 to each in turn, under a topic namespace of its own; the clock runs from the first
//! publish to the last message read (`mosquitto_sub`) or on the topic (the gateway).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use mqtt_gateway::gateway::{self, Health, Setup};
use mqtt_gateway::{MappingConfig, MqttConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use schemas::Codec;
use tokio::io::AsyncBufReadExt;

use crate::commands::KafkaArgs;
use crate::config::{Config, Override};

/// What a probe message says; it tells the reader is subscribed, and is not counted.
const PROBE: &str = "probe";

/// Flags of `bench mqtt`.
#[derive(Debug, Args)]
pub struct MqttBench {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The MQTT broker, `mqtt://host:port`; default `mqtt.url`.
    #[arg(long)]
    url: Option<String>,
    /// Messages per measurement.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Devices the messages come from, a topic each.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Partitions of each benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Rounds; each runs `mosquitto_sub`, then the gateway.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

impl MqttBench {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        if let Some(url) = &self.url {
            into.push(("mqtt.url".into(), toml::Value::String(url.clone())));
        }
    }
}

/// Publishes `messages` (topic under `base`, payload) at QoS 1 and waits for the broker to
/// acknowledge every one (the measurements stop at the reading side, and drop a publisher
/// still waiting).
async fn publish(
    (host, port): (String, u16),
    base: String,
    messages: Arc<Vec<(String, String)>>,
) -> anyhow::Result<()> {
    let id = format!("fleetpulse-bench-pub-{}-{base}", std::process::id());
    let mut options = MqttOptions::new(id, host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 1_024);
    let total = messages.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                acked += 1;
            }
        }
        Ok::<(), rumqttc::ConnectionError>(())
    });
    for (topic, payload) in messages.iter() {
        client
            .publish(
                format!("{base}/{topic}"),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await?;
    }
    acks.await
        .context("the publisher's event loop panicked")??;
    Ok(())
}

/// `mosquitto_sub` on everything under `base`: seconds until it printed every message.
async fn raw(
    broker: &(String, u16),
    base: &str,
    messages: &Arc<Vec<(String, String)>>,
) -> anyhow::Result<f64> {
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", &broker.0, "-p", &broker.1.to_string(), "-q", "1"])
        .args(["-t", &format!("{base}/#")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("mosquitto_sub (scripts/services.sh install mosquitto)")?;
    let stdout = sub.stdout.take().context("mosquitto_sub's output")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let probe = Arc::new(vec![("probe".to_string(), PROBE.to_string())]);
    let subscribed = async {
        loop {
            publish(broker.clone(), base.to_string(), Arc::clone(&probe)).await?;
            if let Ok(line) =
                tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
                && line?.as_deref() == Some(PROBE)
            {
                return Ok::<(), anyhow::Error>(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), subscribed)
        .await
        .context("mosquitto_sub did not subscribe")??;
    let started = Instant::now();
    let publisher = tokio::spawn(publish(
        broker.clone(),
        base.to_string(),
        Arc::clone(messages),
    ));
    let mut read = 0;
    while read < messages.len() {
        match lines.next_line().await? {
            Some(line) if line != PROBE => read += 1,
            Some(_) => {}
            None => anyhow::bail!("mosquitto_sub stopped after {read} messages"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    publisher.abort();
    sub.kill().await?;
    Ok(secs)
}

/// The gateway, in this process, mapping Zigbee2MQTT under `base` into `topic`: seconds until
/// every message was on the topic.
async fn gateway(
    config: &Config,
    broker: &(String, u16),
    base: &str,
    topic: &str,
    messages: &Arc<Vec<(String, String)>>,
) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health::default());
    let setup = Setup {
        config: MqttConfig {
            url: format!("mqtt://{}:{}", broker.0, broker.1),
            client_id: format!("fleetpulse-bench-{base}"),
            mappings: vec![MappingConfig {
                preset: Some("zigbee2mqtt".into()),
                base: Some(format!("{base}/zigbee2mqtt")),
                tenant: Some("bench".into()),
                ..MappingConfig::default()
            }],
            ..MqttConfig::default()
        },
        kafka: crate::kafka::properties(config)?,
        telemetry: topic.into(),
        dlq: format!("{topic}-dlq"),
        codec: Codec::builtin(),
        limits: config.pipeline.limits,
        stop: Arc::clone(&stop),
    };
    let running = tokio::spawn(gateway::run(setup, Arc::clone(&health)));
    let connected = async {
        while !health.connected.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), connected)
        .await
        .context("the gateway did not subscribe")?;
    let started = Instant::now();
    let publisher = tokio::spawn(publish(
        broker.clone(),
        base.to_string(),
        Arc::clone(messages),
    ));
    let wanted = messages.len() as u64;
    let deadline = started + Duration::from_secs(600);
    loop {
        let on = tokio::task::block_in_place(|| super::pipeline::messages_on(config, topic))?;
        if on >= wanted {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{on} of {wanted} messages on {topic} after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    publisher.abort();
    stop.store(true, Ordering::Relaxed);
    running.await.context("the gateway panicked")??;
    Ok(secs)
}

pub(crate) async fn run(config: &Config, args: MqttBench) -> anyhow::Result<()> {
    let broker = crate::commands::mqtt::plain_broker(&config.mqtt.url)?;
    // Zigbee2MQTT's payload for a sensor: battery, link quality and its measurements.
    let messages: Arc<Vec<(String, String)>> = Arc::new(
        (0..args.messages)
            .map(|i| {
                let payload = serde_json::json!({
                    "battery": 100 - i % 100,
                    "linkquality": i % 255,
                    "temperature": 20.0 + (i % 50) as f64 / 10.0,
                    "humidity": 48.2,
                    "voltage": 3015,
                });
                (
                    format!("zigbee2mqtt/sensor-{}", i % args.devices.max(1)),
                    payload.to_string(),
                )
            })
            .collect(),
    );
    let bytes: usize = messages.iter().map(|(_, p)| p.len()).sum();
    println!(
        "bench mqtt: {} messages from {} devices ({:.1} MB of Zigbee2MQTT JSON) at QoS 1, broker {}:{}, {} partitions",
        messages.len(),
        args.devices,
        bytes as f64 / 1e6,
        broker.0,
        broker.1,
        args.partitions
    );
    let run_id = std::process::id();
    let n = messages.len() as f64;
    for round in 1..=args.rounds {
        let raw_secs = raw(&broker, &format!("bench-{run_id}-{round}-raw"), &messages).await?;
        let topic = format!("bench-mqtt-{run_id}-{round}");
        crate::kafka::ensure_topic(config, &topic, args.partitions).await?;
        let base = format!("bench-{run_id}-{round}-gw");
        let gw_secs = gateway(config, &broker, &base, &topic, &messages).await?;
        let (raw_rate, gw_rate) = (n / raw_secs, n / gw_secs);
        println!(
            "round {round}: mosquitto_sub {raw_rate:>9.0} messages/s   fleetpulse mqtt into Kafka {gw_rate:>9.0} messages/s   ratio {:.2}",
            gw_rate / raw_rate
        );
    }
    Ok(())
}
