//! The Kafka sink: an idempotent producer keyed by device id, so each device's messages land in
//! one partition, once, in order. Message timestamps are the fleet's send times, not the wall
//! clock, so a replay of the same seed produces the same topic.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use schemas::Codec;

use crate::config::MessageFormat;
use crate::encode::encode;
use crate::error::GeneratorError;
use crate::fleet::Event;
use crate::sink::Sink;

const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Counts deliveries as the broker acknowledges them.
#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {
    kafka_auth::answer_token_requests!();
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self
                    .first_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Produces messages to one topic.
pub struct KafkaSink {
    producer: BaseProducer<Deliveries>,
    topic: String,
    codec: Codec,
    format: MessageFormat,
    buf: Vec<u8>,
    sent: u64,
}

impl KafkaSink {
    /// A producer to `topic` on `brokers`; `properties` are extra librdkafka settings that
    /// override the defaults here.
    pub fn new(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
        codec: Codec,
        format: MessageFormat,
    ) -> Result<KafkaSink, GeneratorError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "fleetpulse-generate")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.kbytes", "262144");
        for (k, v) in properties {
            config.set(k, v);
        }
        let producer = config
            .create_with_context(Deliveries::default())
            .map_err(|e| GeneratorError::Kafka(e.to_string()))?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_string(),
            codec,
            format,
            buf: Vec::with_capacity(512),
            sent: 0,
        })
    }

    /// Produces already-encoded bytes, waiting while the local queue is full.
    pub fn send_raw(
        &mut self,
        key: &[u8],
        payload: &[u8],
        timestamp: i64,
    ) -> Result<(), GeneratorError> {
        produce(
            &self.producer,
            &mut self.sent,
            BaseRecord::to(&self.topic)
                .key(key)
                .payload(payload)
                .timestamp(timestamp),
        )
    }

    /// Produces a tombstone (a key without a value): on a compacted topic, the key's record is
    /// deleted.
    pub fn send_tombstone(&mut self, key: &[u8], timestamp: i64) -> Result<(), GeneratorError> {
        produce(
            &self.producer,
            &mut self.sent,
            BaseRecord::to(&self.topic).key(key).timestamp(timestamp),
        )
    }

    /// Messages acknowledged by the broker so far.
    pub fn acknowledged(&self) -> u64 {
        self.producer.context().acked.load(Ordering::Relaxed)
    }

    /// Takes the acknowledgements that arrived, without sending: a long-running producer calls
    /// it while it has nothing to send, so [`KafkaSink::acknowledged`] keeps up.
    pub fn serve(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Messages sent and neither acknowledged nor failed yet.
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }
}

/// Sends `record`, waiting while the local queue is full; `sent` counts what was sent.
fn produce(
    producer: &BaseProducer<Deliveries>,
    sent: &mut u64,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), GeneratorError> {
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(GeneratorError::Kafka(e.to_string())),
        }
    }
    *sent += 1;
    if sent.is_multiple_of(1024) {
        producer.poll(Duration::ZERO);
    }
    Ok(())
}

impl Sink for KafkaSink {
    fn send(&mut self, event: &Event) -> Result<usize, GeneratorError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let encoded = encode(event, self.format, &self.codec, &mut buf);
        let sent = encoded
            .map_err(GeneratorError::from)
            .and_then(|()| self.send_raw(event.key.as_bytes(), &buf, event.record_ts));
        let len = buf.len();
        self.buf = buf;
        sent.map(|()| len)
    }

    fn finish(&mut self) -> Result<(), GeneratorError> {
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(|_| GeneratorError::Unacknowledged {
                unacked: self.producer.in_flight_count().max(0) as u64,
                timeout_s: FLUSH_TIMEOUT.as_secs(),
            })?;
        let deliveries = self.producer.context();
        let failed = deliveries.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = deliveries
                .first_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(GeneratorError::Delivery { failed, first });
        }
        Ok(())
    }
}
