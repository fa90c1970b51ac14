//! `fleetpulse tail`: the records of one topic, decoded, as JSON lines on stdout. Shows the
//! demo's events flowing and lets a person (or a test) look at any fleetpulse topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::{
    Anomaly, Codec, DeadLetter, InputFormat, LastSeen, Record, RecordKind, Registration,
    StatusTransition, WindowAggregate,
};
use serde_json::{Value, json};

use super::KafkaArgs;
use crate::config::Config;

/// How long to wait for the topic to appear.
const TOPIC_WAIT: Duration = Duration::from_secs(30);

/// Flags of `tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// Topic to read; its record type comes from `[topics]` (default: the telemetry topic).
    #[arg(long)]
    topic: Option<String>,
    /// Start at the beginning of each partition instead of the end.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// Stop once no record has arrived for this many milliseconds.
    #[arg(long)]
    idle_exit_ms: Option<u64>,
}

fn decode<R: Record>(codec: &Codec, bytes: &[u8]) -> Result<Value, schemas::DecodeError> {
    codec
        .decode::<R>(bytes)
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
}

fn decode_any(
    codec: &Codec,
    kind: RecordKind,
    bytes: &[u8],
) -> Result<Value, schemas::DecodeError> {
    match kind {
        RecordKind::Telemetry => codec
            .decode_telemetry(bytes, InputFormat::Auto)
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
        RecordKind::WindowAggregate => decode::<WindowAggregate>(codec, bytes),
        RecordKind::Anomaly => decode::<Anomaly>(codec, bytes),
        RecordKind::StatusTransition => decode::<StatusTransition>(codec, bytes),
        RecordKind::DeadLetter => decode::<DeadLetter>(codec, bytes),
        RecordKind::LastSeen => decode::<LastSeen>(codec, bytes),
        RecordKind::Registration => decode::<Registration>(codec, bytes),
    }
}

pub(crate) async fn run(config: &Config, args: TailArgs) -> anyhow::Result<()> {
    crate::kafka::check_access(config).await?;
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| config.topics.telemetry.to_string());
    let kind = config
        .topics
        .kind_of(&topic)
        .unwrap_or(RecordKind::Telemetry);
    let mut codec = Codec::builtin();
    let registry = match &config.schema_registry {
        Some(c) => Some(::registry::client::RegistryClient::new(c)?),
        None => None,
    };
    let consumer = crate::kafka::consumer(
        config,
        &[
            ("group.id", "fleetpulse-tail"),
            ("enable.auto.commit", "false"),
        ],
    )?;
    // A producer started at the same time may not have created the topic yet: wait for it.
    let deadline = std::time::Instant::now() + TOPIC_WAIT;
    let assignment = loop {
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .with_context(|| format!("cannot read the metadata of topic {topic}"))?;
        let start = if args.from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        let mut assignment = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment.add_partition_offset(t.name(), p.id(), start)?;
            }
        }
        if assignment.count() > 0 {
            break assignment;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "topic {topic} does not exist (waited {} s)",
            TOPIC_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    consumer.assign(&assignment)?;
    let idle = args.idle_exit_ms.map(Duration::from_millis);
    let mut last = std::time::Instant::now();
    let mut seen = 0u64;
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stopper.store(true, Ordering::Relaxed);
    });
    loop {
        let done =
            args.limit.is_some_and(|l| seen >= l) || idle.is_some_and(|i| last.elapsed() >= i);
        if done || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let message = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        let Some(message) = message else { continue };
        let message = message.context("kafka consume failed")?;
        let key = message.key().map(String::from_utf8_lossy);
        // A tombstone: on a compacted topic, the key's record is deleted (a device decommissioned).
        let Some(bytes) = message.payload() else {
            println!(
                "{}",
                json!({"partition": message.partition(), "offset": message.offset(), "key": key, "record": null, "tombstone": true})
            );
            seen += 1;
            last = std::time::Instant::now();
            continue;
        };
        let mut decoded = decode_any(&codec, kind, bytes);
        if let (Err(schemas::DecodeError::UnknownSchemaId(id)), Some(client)) =
            (&decoded, &registry)
        {
            match client.fetch_into(&mut codec, *id).await {
                Ok(_) => decoded = decode_any(&codec, kind, bytes),
                Err(e) => tracing::warn!(id, error = %e, "cannot fetch the writer schema"),
            }
        }
        let line = match decoded {
            Ok(record) => {
                json!({"partition": message.partition(), "offset": message.offset(), "key": key, "record": record})
            }
            Err(e) => {
                json!({"partition": message.partition(), "offset": message.offset(), "key": key, "error": e.to_string(), "reason": e.reason().as_str()})
            }
        };
        println!("{line}");
        seen += 1;
        last = std::time::Instant::now();
    }
}
