//! `fleetpulse bench`: throughput of a fleetpulse path beside a raw baseline of the same bytes,
//! measured in one run, because these machines are shared and only ratios mean anything.

mod bridge;
mod files;
mod ingest;
mod mqtt;
mod pipeline;
mod poll;
mod recovery;
mod sink;

use std::time::Instant;

use clap::{Args, Subcommand};
use generator::{Fleet, GeneratorConfig, KafkaSink, Sink};
use schemas::Codec;

use crate::commands::KafkaArgs;
use crate::config::{Config, Override};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// `fleetpulse generate` into Kafka beside a raw rdkafka produce of the same messages.
    Generate(GenerateBench),
    /// `fleetpulse pipeline` from a loaded topic beside a raw consume and decode of it.
    Pipeline(pipeline::PipelineBench),
    /// `fleetpulse sink clickhouse` draining a loaded topic beside a raw insert of the same rows.
    Sink(sink::SinkBench),
    /// `fleetpulse bridge` fanning events out to N WebSocket clients beside a raw consume.
    Bridge(bridge::BridgeBench),
    /// `fleetpulse poll` against a simulated fleet on loopback beside a raw loop of the same GETs.
    Poll(poll::PollBench),
    /// `fleetpulse ingest` taking NDJSON batches over HTTP beside a raw produce of the readings.
    Ingest(ingest::IngestBench),
    /// `fleetpulse mqtt` bridging MQTT messages into Kafka beside `mosquitto_sub` reading them.
    Mqtt(mqtt::MqttBench),
}

/// Flags of `bench generate`.
#[derive(Debug, Args)]
pub struct GenerateBench {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Messages per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Devices in the fleet.
    #[arg(long, default_value_t = 100_000)]
    devices: u32,
    /// Partitions of each benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Rounds; each runs the raw produce then the generator, alternating.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

impl BenchCommand {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        match self {
            BenchCommand::Generate(b) => b.kafka.overrides(into),
            BenchCommand::Pipeline(b) => b.kafka.overrides(into),
            BenchCommand::Sink(b) => b.overrides(into),
            BenchCommand::Bridge(b) => b.kafka.overrides(into),
            BenchCommand::Poll(_) => {}
            BenchCommand::Ingest(b) => b.overrides(into),
            BenchCommand::Mqtt(b) => b.overrides(into),
        }
    }
}

pub(crate) async fn run(config: &Config, command: BenchCommand) -> anyhow::Result<()> {
    let files_only = matches!(&command, BenchCommand::Pipeline(args) if args.files_only);
    // The poller's benchmark simulates its devices and keeps its records: no Kafka.
    if !files_only && !matches!(command, BenchCommand::Poll(_)) {
        crate::kafka::check_access(config).await?;
    }
    match command {
        BenchCommand::Generate(args) => generate(config, args).await,
        BenchCommand::Pipeline(args) => pipeline::run(config, args).await,
        BenchCommand::Sink(args) => sink::run(config, args).await,
        BenchCommand::Bridge(args) => bridge::run(config, args).await,
        BenchCommand::Poll(args) => poll::run(args).await,
        BenchCommand::Ingest(args) => ingest::run(config, args).await,
        BenchCommand::Mqtt(args) => mqtt::run(config, args).await,
    }
}

async fn generate(config: &Config, args: GenerateBench) -> anyhow::Result<()> {
    let fleet = GeneratorConfig {
        devices: args.devices,
        tenants: config.generate.tenants.min(args.devices),
        events: args.events,
        rate: 0.0,
        start_ms: Some(1_700_000_000_000),
        ..config.generate.clone()
    };
    let codec = Codec::builtin();
    // The raw baseline sends exactly the bytes the generator would, prepared beforehand.
    let mut prepared = Vec::with_capacity(args.events as usize);
    for event in Fleet::new(&fleet, 1_700_000_000_000).take(args.events as usize) {
        let mut value = Vec::new();
        generator::encode(&event, fleet.format, &codec, &mut value)?;
        prepared.push((event.key, value, event.record_ts));
    }
    let bytes: usize = prepared.iter().map(|(k, v, _)| k.len() + v.len()).sum();
    let run_id = std::process::id();
    println!(
        "bench generate: {} messages, {} devices, {:.1} MB of keys and values, {} partitions",
        args.events,
        args.devices,
        bytes as f64 / 1e6,
        args.partitions
    );
    let (mut raw_total, mut gen_total) = (0.0, 0.0);
    for round in 1..=args.rounds {
        let raw_topic = format!("bench-raw-{run_id}-{round}");
        let gen_topic = format!("bench-generate-{run_id}-{round}");
        crate::kafka::ensure_topic(config, &raw_topic, args.partitions).await?;
        crate::kafka::ensure_topic(config, &gen_topic, args.partitions).await?;
        let sink = |topic: &str| {
            KafkaSink::new(
                config.brokers()?.as_str(),
                topic,
                &config.kafka.properties,
                codec.clone(),
                fleet.format,
            )
            .map_err(anyhow::Error::from)
        };

        let mut raw = sink(&raw_topic)?;
        let started = Instant::now();
        for (key, value, ts) in &prepared {
            raw.send_raw(key.as_bytes(), value, *ts)?;
        }
        raw.finish()?;
        let raw_rate = args.events as f64 / started.elapsed().as_secs_f64();

        let mut generated = sink(&gen_topic)?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let summary =
            tokio::task::block_in_place(|| generator::run(&fleet, &mut generated, &stop, false))?;
        let gen_rate = summary.rate();

        println!(
            "round {round}: raw produce {raw_rate:>10.0} msg/s   generate {gen_rate:>10.0} msg/s   ratio {:.2}",
            gen_rate / raw_rate
        );
        raw_total += raw_rate;
        gen_total += gen_rate;
    }
    let rounds = f64::from(args.rounds.max(1));
    println!(
        "mean: raw produce {:.0} msg/s, generate {:.0} msg/s, ratio generate/raw {:.2}",
        raw_total / rounds,
        gen_total / rounds,
        gen_total / raw_total
    );
    Ok(())
}
