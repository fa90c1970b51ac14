//! Where derived records go: the Kafka sink (Confluent-framed Avro, keyed by device, through an
//! idempotent producer shared by a process's workers), or a collector in tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use schemas::{Codec, Record};

use crate::metrics;
use crate::output::Output;

/// Errors of a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Kafka refused.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A record could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] schemas::EncodeError),
}

/// A destination of derived records; one per worker.
pub trait OutputSink {
    /// Writes one record; waits (retrying) rather than loses it.
    fn write(&mut self, record: &Output) -> Result<(), SinkError>;
    /// Waits until everything written is acknowledged.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Builds worker `index`'s sink.
pub type SinkFactory = Arc<dyn Fn(usize) -> Result<Box<dyn OutputSink>, SinkError> + Send + Sync>;

/// The five derived topics.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Window aggregates.
    pub aggregates: String,
    /// Anomalies.
    pub anomalies: String,
    /// Status transitions.
    pub status: String,
    /// Dead letters.
    pub dlq: String,
    /// Last-seen times (compacted).
    pub lastseen: String,
}

impl SinkError {
    /// Whether retrying the same record can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SinkError::Encode(_)
                | SinkError::Kafka(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge
                ))
        )
    }
}

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
            metrics::delivery_error();
            tracing::error!(error = %e, "a derived record was not delivered");
        }
    }
}

/// Records written, per kind, by a process's sinks.
#[derive(Debug, Default)]
pub struct Written {
    /// Window aggregates.
    pub aggregates: AtomicU64,
    /// Anomalies.
    pub anomalies: AtomicU64,
    /// Status transitions.
    pub status: AtomicU64,
    /// Dead letters.
    pub dead_letters: AtomicU64,
    /// Last-seen times.
    pub last_seen: AtomicU64,
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
            counters: HashMap::new(),
        })
    }
}

struct KafkaSink {
    shared: Arc<KafkaOutput>,
    buf: Vec<u8>,
    counters: HashMap<&'static str, ::metrics::Counter>,
}

impl KafkaSink {
    fn send<R: Record>(&mut self, topic: &str, record: &R) -> Result<(), SinkError> {
        self.buf.clear();
        self.shared.codec.encode_into(record, &mut self.buf)?;
        let key = record.key();
        let mut backoff = Duration::from_millis(1);
        loop {
            let r = BaseRecord::to(topic).key(key.as_ref()).payload(&self.buf);
            match self.shared.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
}

impl OutputSink for KafkaSink {
    fn write(&mut self, record: &Output) -> Result<(), SinkError> {
        let shared = Arc::clone(&self.shared);
        let (topics, written) = (&shared.topics, &shared.written);
        let (label, topic, count) = match record {
            Output::Aggregate(r) => {
                self.send(&topics.aggregates, r)?;
                ("aggregates", &topics.aggregates, &written.aggregates)
            }
            Output::Anomaly(r) => {
                self.send(&topics.anomalies, r)?;
                ("anomalies", &topics.anomalies, &written.anomalies)
            }
            Output::Status(r) => {
                self.send(&topics.status, r)?;
                ("status", &topics.status, &written.status)
            }
            Output::DeadLetter(r) => {
                self.send(&topics.dlq, r)?;
                ("dlq", &topics.dlq, &written.dead_letters)
            }
            Output::LastSeen(r) => {
                self.send(&topics.lastseen, r)?;
                ("lastseen", &topics.lastseen, &written.last_seen)
            }
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.counters
            .entry(label)
            .or_insert_with(|| metrics::records_out(topic))
            .increment(1);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.shared.producer.flush(Duration::from_secs(300))?;
        Ok(())
    }
}

/// Collects records in memory (tests, benchmarks).
#[derive(Clone, Default)]
pub struct Collector(pub Arc<Mutex<Vec<Output>>>);

impl Collector {
    /// Sinks for every worker that all collect here.
    pub fn factory(&self) -> SinkFactory {
        let me = self.clone();
        Arc::new(move |_| Ok(Box::new(me.clone())))
    }

    /// What was collected so far.
    pub fn records(&self) -> Vec<Output> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl OutputSink for Collector {
    fn write(&mut self, record: &Output) -> Result<(), SinkError> {
        if let Ok(mut v) = self.0.lock() {
            v.push(record.clone());
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
