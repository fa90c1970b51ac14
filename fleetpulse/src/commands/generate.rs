//! `fleetpulse generate`: the synthetic fleet into Kafka (keyed by device id) or into a file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use generator::{FileSink, KafkaSink, Sink, Summary};
use schemas::RecordKind;

use super::KafkaArgs;
use crate::config::{Config, Override};

/// Flags of `generate`; each overrides the `[generate]` key of the same name.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic to produce to (`topics.telemetry`).
    #[arg(long)]
    topic: Option<String>,
    /// Number of devices.
    #[arg(long)]
    devices: Option<u32>,
    /// Number of tenants.
    #[arg(long)]
    tenants: Option<u32>,
    /// Messages to send; 0 runs until stopped.
    #[arg(long)]
    events: Option<u64>,
    /// Messages per second; 0 is as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the fleet.
    #[arg(long)]
    seed: Option<u64>,
    /// `avro` or `json`.
    #[arg(long)]
    format: Option<String>,
    /// Event time of the first reading, ms since the epoch.
    #[arg(long)]
    start_ms: Option<i64>,
    /// Write to this file instead of Kafka: `.ndjson`/`.jsonl` (JSON lines) or `.avro` (Avro
    /// object container).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Partitions to create the topic with when it does not exist.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl GenerateArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        let mut set = |key: &str, value: Option<toml::Value>| {
            if let Some(v) = value {
                into.push((key.to_string(), v));
            }
        };
        set(
            "topics.telemetry",
            self.topic.clone().map(toml::Value::String),
        );
        set(
            "generate.devices",
            self.devices.map(|v| toml::Value::Integer(v.into())),
        );
        set(
            "generate.tenants",
            self.tenants.map(|v| toml::Value::Integer(v.into())),
        );
        set(
            "generate.events",
            self.events.map(|v| toml::Value::Integer(v as i64)),
        );
        set("generate.rate", self.rate.map(toml::Value::Float));
        set(
            "generate.seed",
            self.seed.map(|v| toml::Value::Integer(v as i64)),
        );
        set(
            "generate.format",
            self.format.clone().map(toml::Value::String),
        );
        set("generate.start_ms", self.start_ms.map(toml::Value::Integer));
    }
}

pub(crate) async fn run(config: &Config, args: GenerateArgs) -> anyhow::Result<()> {
    let mut sink: Box<dyn Sink + Send> = match &args.output {
        Some(path) => Box::new(FileSink::create(path)?),
        None => {
            let topic = config.topics.telemetry.as_str();
            crate::kafka::check_access(config).await?;
            crate::kafka::ensure_topic(config, topic, args.partitions).await?;
            let codec = super::codec(config, &[RecordKind::Telemetry]).await?;
            Box::new(KafkaSink::new(
                config.brokers()?.as_str(),
                topic,
                &config.kafka.properties,
                codec,
                config.generate.format,
            )?)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stopper.store(true, Ordering::Relaxed);
    });
    let fleet = config.generate.clone();
    let progress = !args.no_progress;
    let summary: Summary =
        tokio::task::spawn_blocking(move || generator::run(&fleet, sink.as_mut(), &stop, progress))
            .await
            .context("the generator thread failed")??;
    tracing::info!(
        events = summary.events,
        malformed = summary.malformed,
        late = summary.late,
        rate = format!("{:.0}/s", summary.rate()),
        "fleet sent"
    );
    println!(
        "{}",
        serde_json::json!({
            "events": summary.events,
            "malformed": summary.malformed,
            "out_of_order": summary.out_of_order,
            "late": summary.late,
            "future": summary.future,
            "bytes": summary.bytes,
            "seconds": summary.elapsed.as_secs_f64(),
            "events_per_second": summary.rate(),
        })
    );
    Ok(())
}
