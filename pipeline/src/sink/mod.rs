//! Where derived records go: Kafka topics (Confluent-framed Avro, keyed by device, through an
//! idempotent producer shared by a process's workers), NDJSON files (a backfill without Kafka),
//! or a collector in tests.

mod behind;
mod files;
mod kafka;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use schemas::retry::{Backoff, Retryable};

use crate::output::{Output, Stream};

pub use behind::Behind;
pub use files::FileOutput;
pub use kafka::{DeliveryCounter, KafkaOutput};

/// Errors of a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Kafka refused.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A record could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] schemas::EncodeError),
    /// An output file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The thread that writes could not start.
    #[error("cannot start the write-behind thread: {0}")]
    Thread(std::io::Error),
    /// The thread that writes is gone (it panicked).
    #[error("the write-behind thread is gone")]
    Gone,
}

/// A destination of derived records; one per worker, written on its own thread ([`Behind`]).
pub trait OutputSink: Send {
    /// Writes one record, or says why not; the caller retries what [`Retryable`] allows (one
    /// layer of retries, in [`Behind`]).
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

impl Topics {
    /// The topic of `stream`.
    pub fn of(&self, stream: Stream) -> &str {
        match stream {
            Stream::Aggregates => &self.aggregates,
            Stream::Anomalies => &self.anomalies,
            Stream::Status => &self.status,
            Stream::Dlq => &self.dlq,
            Stream::LastSeen => &self.lastseen,
        }
    }
}

impl SinkError {
    /// How to wait before writing the record again: a full producer queue drains in
    /// milliseconds, anything else is a service that is away.
    pub fn backoff(&self) -> Backoff {
        if self.is_queue_full() {
            Backoff::QueueFull
        } else {
            Backoff::Unavailable
        }
    }

    /// Whether librdkafka's producer queue had no room: backpressure, not a fault.
    pub fn is_queue_full(&self) -> bool {
        matches!(
            self,
            SinkError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
        )
    }
}

impl Retryable for SinkError {
    fn is_retryable(&self) -> bool {
        !matches!(
            self,
            SinkError::Encode(_)
                | SinkError::Thread(_)
                | SinkError::Gone
                | SinkError::Kafka(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge
                ))
        )
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

impl Written {
    /// Counts one record of `stream`.
    pub fn count(&self, stream: Stream) {
        let counter = match stream {
            Stream::Aggregates => &self.aggregates,
            Stream::Anomalies => &self.anomalies,
            Stream::Status => &self.status,
            Stream::Dlq => &self.dead_letters,
            Stream::LastSeen => &self.last_seen,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as the JSON summary a run prints.
    pub fn summary(&self) -> serde_json::Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "aggregates": load(&self.aggregates),
            "anomalies": load(&self.anomalies),
            "status": load(&self.status),
            "dead_letters": load(&self.dead_letters),
            "last_seen": load(&self.last_seen),
        })
    }
}

/// One sink's `records_out` counters, one per stream, each made at its stream's first record:
/// its label (a topic, a file) is only needed then, not for every record.
#[derive(Default)]
struct RecordsOut([Option<::metrics::Counter>; Stream::ALL.len()]);

impl RecordsOut {
    /// Counts one record of `stream`, labelled `label()` if it is the stream's first.
    fn count(&mut self, stream: Stream, label: impl FnOnce() -> String) {
        self.0[stream as usize]
            .get_or_insert_with(|| crate::events::records_out(&label()))
            .increment(1);
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
