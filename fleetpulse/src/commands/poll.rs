//! `fleetpulse poll`: follows the device inventory, probes its poll targets (`[poller]`), and
//! produces one telemetry record per probe to the telemetry topic, stamped with this process's
//! clock (the pipeline trusts it with `pipeline.trust_record_time`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use generator::{KafkaSink, MessageFormat, Sink};
use poller::{Clock, Poller};
use schemas::{Codec, RecordKind, Telemetry};
use tokio::sync::mpsc;

use super::KafkaArgs;
use crate::config::{Config, Override};

/// Records produced but not yet handed to the producer, at most: past it, probes wait.
const QUEUE: usize = 4_096;
/// How long records may wait for the brokers' acknowledgement before `/readyz` says Kafka is
/// not taking them.
const STALLED: Duration = Duration::from_secs(5);

/// Flags of `poll`.
#[derive(Debug, Args)]
pub struct PollArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// This instance's share of the inventory, from 0 (`poller.instance`).
    #[arg(long)]
    instance: Option<u32>,
    /// How many instances share the inventory (`poller.instances`).
    #[arg(long)]
    instances: Option<u32>,
    /// Address of `/metrics`, `/healthz` and `/readyz` (`poller.listen`).
    #[arg(long)]
    listen: Option<String>,
}

impl PollArgs {
    pub(crate) fn overrides(&self, into: &mut Vec<Override>) {
        self.kafka.overrides(into);
        for (key, value) in [
            ("poller.instance", self.instance),
            ("poller.instances", self.instances),
        ] {
            if let Some(v) = value {
                into.push((key.into(), toml::Value::Integer(i64::from(v))));
            }
        }
        if let Some(listen) = &self.listen {
            into.push(("poller.listen".into(), toml::Value::String(listen.clone())));
        }
    }
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<()> {
    crate::kafka::check_access(config).await?;
    crate::kafka::ensure_topic(config, config.topics.telemetry.as_str(), 4).await?;
    let codec = super::codec(config, &[RecordKind::Registration, RecordKind::Telemetry]).await?;
    let caught_up = Arc::new(AtomicBool::new(false));
    let kafka_ok = Arc::new(AtomicBool::new(true));
    let (ready, taking) = (Arc::clone(&caught_up), Arc::clone(&kafka_ok));
    crate::observability::serve(
        config.poller.listen,
        "poller.listen",
        "poller",
        Box::new(move || {
            if !ready.load(Ordering::Relaxed) {
                Some("the inventory is not read to its end yet")
            } else if !taking.load(Ordering::Relaxed) {
                Some("Kafka is not acknowledging probe records")
            } else {
                None
            }
        }),
    )
    .await?;
    let stop = super::stop_on_signal();
    let clock: Clock = Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    });
    let poller = Poller::new(config.poller.clone(), Arc::clone(&clock))?;
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(QUEUE);

    let consumer = crate::kafka::consumer(
        config,
        &[
            ("group.id", "fleetpulse-poller"),
            ("enable.auto.commit", "false"),
            ("allow.auto.create.topics", "false"),
        ],
    )?;
    let topic = config.topics.inventory.to_string();
    let (follow_codec, follow_stop) = (codec.clone(), Arc::clone(&stop));
    let follower = std::thread::Builder::new()
        .name("inventory".into())
        .spawn(move || {
            inventory::topic::follow(
                &consumer,
                &topic,
                &follow_codec,
                &follow_stop,
                |change| {
                    let _ = changes_tx.send(change);
                },
                || {
                    tracing::info!("the inventory is read; polling");
                    caught_up.store(true, Ordering::Relaxed);
                },
            )
        })
        .context("cannot start the inventory reader")?;

    // A record waits for the brokers for as long as they are away (librdkafka retries it, in
    // order, without duplicates); when its queue is full, probes wait. Unless configured.
    let mut properties = config.kafka.properties.clone();
    for (key, value) in [
        ("message.timeout.ms", "0"),
        ("client.id", "fleetpulse-poll"),
    ] {
        properties.entry(key.into()).or_insert_with(|| value.into());
    }
    let sink = KafkaSink::new(
        config.brokers()?.as_str(),
        config.topics.telemetry.as_str(),
        &properties,
        codec.clone(),
        MessageFormat::Avro,
    )?;
    let writer = std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(move || write(sink, &codec, out_rx, &clock, &kafka_ok))
        .context("cannot start the telemetry writer")?;

    poller.run(changes_rx, out_tx, Arc::clone(&stop)).await;
    stop.store(true, Ordering::Relaxed);
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the telemetry writer panicked"))??;
    tokio::task::spawn_blocking(move || follower.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the inventory reader panicked"))??;
    println!("{}", serde_json::json!({ "records": written }));
    Ok(())
}

/// Produces each probe's record, keyed by device and stamped with `clock` when produced, until
/// the poller stops; then waits for the brokers' acknowledgements. `kafka_ok` says whether the
/// brokers acknowledged something within [`STALLED`] whenever records were waiting. Returns how
/// many records it wrote.
fn write(
    mut sink: KafkaSink,
    codec: &Codec,
    mut records: mpsc::Receiver<Telemetry>,
    clock: &Clock,
    kafka_ok: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut written = 0;
    let (mut acked, mut progress) = (sink.acknowledged(), Instant::now());
    loop {
        match records.try_recv() {
            Ok(record) => {
                let bytes = codec.encode(&record)?;
                sink.send_raw(record.device_id.as_bytes(), &bytes, clock())?;
                written += 1;
            }
            Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(20)),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        }
        sink.serve();
        if sink.acknowledged() != acked || sink.in_flight() == 0 {
            (acked, progress) = (sink.acknowledged(), Instant::now());
        }
        kafka_ok.store(progress.elapsed() < STALLED, Ordering::Relaxed);
    }
    sink.finish()
        .context("probe records were not all acknowledged")?;
    Ok(written)
}
