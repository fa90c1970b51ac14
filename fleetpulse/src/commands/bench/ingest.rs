//! `fleetpulse bench ingest`: readings per second `fleetpulse ingest` accepts in NDJSON batches
//! over HTTP on loopback (clients, server and producer in this process), beside a raw produce of
//! the same readings, already Avro-encoded, to a topic of the same partitions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use generator::{Body, Fleet, GeneratorConfig, KafkaSink, MessageFormat, Sink};
use ingest::lines::Rules;
use ingest::{App, IngestConfig, KeyFile, Keys, OnForeignClaim, Producer, router};
use schemas::{Codec, Limits, Telemetry};

use crate::commands::KafkaArgs;
use crate::config::{Config, Override};

/// Flags of `bench ingest`.
#[derive(Debug, Args)]
pub struct IngestBench {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Readings per measurement.
    #[arg(long, default_value_t = 200_000)]
    readings: usize,
    /// Readings per request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Clients posting at once, each its share of the batches in turn.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Partitions of each benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Rounds; each runs the raw produce, then the ingest.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

impl IngestBench {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
    }
}

/// Serves `fleetpulse ingest` on loopback, writing to `topic` under a key of tenant `bench`;
/// its URL and the key.
async fn serve(
    config: &Config,
    topic: &str,
    keys: &std::path::Path,
) -> anyhow::Result<(String, String)> {
    let mut file = KeyFile::default();
    let key = file.create("bench", None, Some("bench"), crate::commands::now_ms())?;
    file.save(keys)?;
    let ingest = IngestConfig {
        readings_per_s: u32::MAX,
        max_lines: 1_000_000,
        ..IngestConfig::default()
    };
    let codec = Codec::builtin();
    let producer = Arc::new(Producer::new(
        &crate::kafka::properties(config)?,
        topic,
        codec.clone(),
        Duration::from_millis(ingest.timeout_ms),
    )?);
    let rules = Rules {
        codec,
        limits: Limits::default(),
        on_foreign_claim: OnForeignClaim::Reject,
    };
    let app = Arc::new(App::new(
        &ingest,
        Arc::new(Keys::open(keys)?),
        rules,
        producer,
        crate::commands::now_ms,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/telemetry", listener.local_addr()?);
    let routes = router(app, 256 << 20);
    tokio::spawn(async move { axum::serve(listener, routes).await });
    Ok((url, key))
}

/// Posts `batches` from `clients` clients at once; the readings accepted.
async fn post_all(
    url: &str,
    key: &str,
    batches: Arc<Vec<String>>,
    clients: usize,
) -> anyhow::Result<u64> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (url, key, batches) = (url.to_string(), key.to_string(), Arc::clone(&batches));
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            let mut accepted = 0u64;
            for body in batches.iter().skip(c).step_by(clients) {
                let answer = client
                    .post(&url)
                    .bearer_auth(&key)
                    .body(body.clone())
                    .send()
                    .await?
                    .bytes()
                    .await?;
                let answer: serde_json::Value = serde_json::from_slice(&answer)?;
                accepted += answer["accepted"].as_u64().unwrap_or(0);
            }
            Ok::<u64, anyhow::Error>(accepted)
        });
    }
    let mut accepted = 0;
    while let Some(done) = tasks.join_next().await {
        accepted += done.context("a client panicked")??;
    }
    Ok(accepted)
}

pub(crate) async fn run(config: &Config, args: IngestBench) -> anyhow::Result<()> {
    let fleet = GeneratorConfig {
        devices: 10_000,
        tenants: 1,
        events: args.readings as u64 * 2,
        malformed_fraction: 0.0,
        future_fraction: 0.0,
        late_fraction: 0.0,
        ..GeneratorConfig::default()
    };
    let codec = Codec::builtin();
    let readings: Vec<Telemetry> = Fleet::new(&fleet, 1_700_000_000_000)
        .filter_map(|e| match e.body {
            Body::Reading(t) => Some(Telemetry {
                tenant_id: "bench".into(),
                ..t
            }),
            Body::Malformed(_) => None,
        })
        .take(args.readings)
        .collect();
    let encoded: Vec<(String, Vec<u8>, i64)> = readings
        .iter()
        .map(|t| Ok((t.device_id.clone(), codec.encode(t)?, t.ts)))
        .collect::<Result<_, schemas::EncodeError>>()?;
    let batches: Vec<String> = readings
        .chunks(args.batch.max(1))
        .map(|chunk| {
            chunk
                .iter()
                .map(|t| serde_json::to_string(t).map(|l| l + "\n"))
                .collect::<Result<String, _>>()
        })
        .collect::<Result<_, _>>()?;
    let batches = Arc::new(batches);
    let bytes: usize = batches.iter().map(String::len).sum();
    println!(
        "bench ingest: {} readings in batches of {} ({:.1} MB of NDJSON), {} clients, {} partitions",
        readings.len(),
        args.batch,
        bytes as f64 / 1e6,
        args.clients,
        args.partitions
    );
    let dir = tempfile_dir()?;
    let run_id = std::process::id();
    let n = readings.len() as f64;
    for round in 1..=args.rounds {
        let raw_topic = format!("bench-ingest-raw-{run_id}-{round}");
        let http_topic = format!("bench-ingest-http-{run_id}-{round}");
        crate::kafka::ensure_topic(config, &raw_topic, args.partitions).await?;
        crate::kafka::ensure_topic(config, &http_topic, args.partitions).await?;

        let mut raw = KafkaSink::new(
            config.brokers()?.as_str(),
            &raw_topic,
            &config.kafka.properties,
            codec.clone(),
            MessageFormat::Avro,
        )?;
        let started = Instant::now();
        tokio::task::block_in_place(|| {
            for (key, value, ts) in &encoded {
                raw.send_raw(key.as_bytes(), value, *ts)?;
            }
            raw.finish()
        })?;
        let raw_rate = n / started.elapsed().as_secs_f64();

        let keys = dir.join(format!("keys-{round}.json"));
        let (url, key) = serve(config, &http_topic, &keys).await?;
        let started = Instant::now();
        let accepted = post_all(&url, &key, Arc::clone(&batches), args.clients).await?;
        let http_rate = n / started.elapsed().as_secs_f64();
        anyhow::ensure!(
            accepted == readings.len() as u64,
            "ingest accepted {accepted} of {} readings",
            readings.len()
        );
        println!(
            "round {round}: raw produce {raw_rate:>10.0} readings/s   ingest (HTTP, NDJSON) {http_rate:>10.0} readings/s   ratio {:.2}",
            http_rate / raw_rate
        );
    }
    Ok(())
}

/// A directory for the benchmark's keys files, removed with the process's temporary files.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleetpulse-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
