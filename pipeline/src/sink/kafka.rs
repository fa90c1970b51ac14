//! The Kafka sink: every worker's records through one idempotent producer per process, as
//! Confluent-framed Avro keyed by device.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use schemas::{Codec, Record};

use super::{OutputSink, RecordsOut, SinkError, Topics, Written};
use crate::events;
use crate::output::Output;

/// Counts delivery failures (the idempotent producer has already retried them), so the job can
/// refuse to report success.
#[derive(Default)]
pub struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {
    kafka_auth::answer_token_requests!();
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            events::delivery_error();
            tracing::error!(error = %e, "a derived record was not delivered");
        }
    }
}

/// The process-wide producer and what every worker's sink shares.
pub struct KafkaOutput {
    producer: ThreadedProducer<DeliveryCounter>,
    codec: Arc<Codec>,
    topics: Topics,
    /// What was written.
    pub written: Written,
}

impl KafkaOutput {
    /// An idempotent producer with `properties` (at least `bootstrap.servers`).
    pub fn new(
        properties: &HashMap<String, String>,
        codec: Arc<Codec>,
        topics: Topics,
    ) -> Result<Arc<KafkaOutput>, SinkError> {
        let mut config = ClientConfig::new();
        config
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            // A bounded queue: when a window boundary releases a record per device, the sink
            // waits for the broker instead of holding them all.
            .set("queue.buffering.max.kbytes", "32768")
            // While the broker is away the producer keeps retrying (0: no delivery deadline);
            // the queue fills, the sink waits, the source stops reading: nothing is dropped.
            .set("message.timeout.ms", "0");
        for (k, v) in properties {
            config.set(k, v);
        }
        let producer = config.create_with_context(DeliveryCounter::default())?;
        Ok(Arc::new(KafkaOutput {
            producer,
            codec,
            topics,
            written: Written::default(),
        }))
    }

    /// Records the broker never acknowledged.
    pub fn undelivered(&self) -> u64 {
        self.producer.context().failed.load(Ordering::Relaxed)
    }

    /// A sink for one worker.
    pub fn sink(self: &Arc<Self>) -> Box<dyn OutputSink> {
        Box::new(KafkaSink {
            shared: Arc::clone(self),
            buf: Vec::with_capacity(512),
            counters: RecordsOut::default(),
        })
    }
}

struct KafkaSink {
    shared: Arc<KafkaOutput>,
    buf: Vec<u8>,
    counters: RecordsOut,
}

impl KafkaSink {
    fn send<R: Record>(&mut self, topic: &str, record: &R) -> Result<(), SinkError> {
        self.buf.clear();
        self.shared.codec.encode_into(record, &mut self.buf)?;
        let key = record.key();
        let r = BaseRecord::to(topic).key(key.as_ref()).payload(&self.buf);
        self.shared.producer.send(r).map_err(|(e, _)| e.into())
    }
}

impl OutputSink for KafkaSink {
    fn write(&mut self, record: &Output) -> Result<(), SinkError> {
        let shared = Arc::clone(&self.shared);
        let stream = record.stream();
        let topic = shared.topics.of(stream);
        match record {
            Output::Aggregate(r) => self.send(topic, r)?,
            Output::Anomaly(r) => self.send(topic, r)?,
            Output::Status(r) => self.send(topic, r)?,
            Output::DeadLetter(r) => self.send(topic, r)?,
            Output::LastSeen(r) => self.send(topic, r)?,
        }
        shared.written.count(stream);
        self.counters.count(stream, || topic.to_string());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.shared.producer.flush(Duration::from_secs(300))?;
        Ok(())
    }
}
