//! The Kafka input: a worker's deterministic share of the topic's partitions (partition `p`
//! belongs to global worker `p % peers`), assigned by hand, never through group rebalancing, so
//! which worker reads what is a function of the topic alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use schemas::retry::Backoff;

use super::{Input, Payload, RawRecord, SourceError, Stamp};
use crate::clock::RecordTime;
use crate::events;
use crate::readiness::Readiness;

/// Where and how to read.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// librdkafka properties: `bootstrap.servers` and anything configured.
    pub properties: HashMap<String, String>,
    /// The telemetry topic.
    pub topic: String,
    /// The inventory topic, read beside it ([`super::joined`]); `None`: no inventory.
    pub inventory: Option<String>,
    /// Stop at the end offsets found at start-up instead of running forever.
    pub until_end: bool,
    /// How long to wait for the broker and the topic; `None` waits as long as it takes (a
    /// long-running job started before its broker or its producers).
    pub topic_wait: Option<Duration>,
}

/// Logs librdkafka's errors except the end-of-partition events this input asks for.
pub struct Quiet;

impl ClientContext for Quiet {
    kafka_auth::answer_token_requests!();

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(%error, reason, "kafka consumer");
        }
    }
}

impl ConsumerContext for Quiet {}

/// One worker's partitions of the telemetry topic.
pub struct KafkaInput {
    consumer: BaseConsumer<Quiet>,
    topic: String,
    partitions: Vec<i32>,
    /// Bounded runs: the offset each partition ends at.
    ends: HashMap<i32, i64>,
    /// Bounded runs: partitions read to their end (paused: records produced since start-up are
    /// not this run's).
    done: Vec<i32>,
    until_end: bool,
    finished: Vec<i32>,
    /// An error met after records were taken, returned by the next poll.
    deferred: Option<KafkaError>,
    /// The next offset to read per partition, once one was read or restored.
    next: HashMap<i32, i64>,
}

fn client(settings: &KafkaSettings) -> Result<BaseConsumer<Quiet>, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("group.id", "fleetpulse-pipeline")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // Records deleted by retention before the job read them are gone either way; starting
        // from the earliest kept one loses no more than that (librdkafka's default jumps to the
        // end and would skip everything kept).
        .set("auto.offset.reset", "earliest")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", "50")
        .set("queued.max.messages.kbytes", "16384")
        // After its prefetch queue for a partition filled, librdkafka waits this long before
        // fetching for it again (1 s by default): the job drained the queue in a fraction of
        // that and then sat waiting, which capped a raw consume near 150 k records/s here.
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    config.create_with_context(Quiet)
}

/// Asks the brokers for the topic's metadata every second and tells `readiness` whether they
/// answer, until `done`. librdkafka retries a lost broker by itself and only logs it, so without
/// this a job waiting for its broker would still look ready.
pub fn watch_brokers(
    settings: &KafkaSettings,
    readiness: Arc<Readiness>,
    done: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, SourceError> {
    let consumer = client(settings)?;
    let topic = settings.topic.clone();
    std::thread::Builder::new()
        .name("broker-watch".into())
        .spawn(move || {
            let mut up = true;
            while !done.load(Ordering::Relaxed) {
                // Polled for librdkafka's OAUTHBEARER token requests: this client reads nothing.
                consumer.poll(Duration::ZERO);
                let now = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .is_ok();
                if now != up {
                    up = now;
                    if up {
                        tracing::info!("the brokers answer again");
                    } else {
                        tracing::warn!("the brokers do not answer; the job waits for them");
                    }
                    readiness.unreachable(!up);
                    events::brokers_up(up);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map_err(|e| SourceError::Watch(e.to_string()))
}

impl KafkaInput {
    /// Connects worker `index` of `peers` and assigns its partitions from the beginning.
    pub fn new(
        settings: &KafkaSettings,
        index: usize,
        peers: usize,
        start: &HashMap<i32, i64>,
    ) -> Result<KafkaInput, SourceError> {
        let consumer = client(settings)?;
        let started = Instant::now();
        let mut said = started;
        let mut delays = Backoff::Unavailable.delays();
        let count = loop {
            // Answers librdkafka's OAUTHBEARER token request; nothing is assigned yet.
            consumer.poll(Duration::ZERO);
            let metadata = consumer.fetch_metadata(Some(&settings.topic), Duration::from_secs(5));
            let found = metadata.ok().and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == settings.topic && t.error().is_none())
                    .map(|t| t.partitions().len())
                    .filter(|n| *n > 0)
            });
            match found {
                Some(n) => break n,
                None if settings
                    .topic_wait
                    .is_some_and(|wait| started.elapsed() >= wait) =>
                {
                    return Err(SourceError::NoTopic(settings.topic.clone()));
                }
                None => {
                    if said.elapsed() >= Duration::from_secs(10) {
                        said = Instant::now();
                        tracing::warn!(topic = %settings.topic, waited_s = started.elapsed().as_secs(), "waiting for the broker and the topic");
                    }
                    std::thread::sleep(delays.next_wait());
                }
            }
        };
        let partitions: Vec<i32> = (0..count)
            .filter(|p| p % peers.max(1) == index)
            .filter_map(|p| i32::try_from(p).ok())
            .collect();
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in &partitions {
            let from = start
                .get(p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment.add_partition_offset(&settings.topic, *p, from)?;
            if settings.until_end {
                let (low, high) =
                    consumer.fetch_watermarks(&settings.topic, *p, Duration::from_secs(10))?;
                ends.insert(*p, if high <= low { -1 } else { high });
            }
        }
        consumer.assign(&assignment)?;
        tracing::info!(worker = index, peers, ?partitions, topic = %settings.topic, "reading");
        let next = start
            .iter()
            .filter(|(p, _)| partitions.contains(p))
            .map(|(p, o)| (*p, *o))
            .collect();
        let mut input = KafkaInput {
            consumer,
            topic: settings.topic.clone(),
            partitions,
            ends,
            done: Vec::new(),
            until_end: settings.until_end,
            finished: Vec::new(),
            deferred: None,
            next,
        };
        // Partitions empty at start-up, or resumed at their end (a run restarted from a
        // checkpoint taken there), are done before they begin: no record will say so, and the
        // end-of-partition event that librdkafka sends comes with no position yet.
        let at_end: Vec<(i32, i64)> = input
            .ends
            .iter()
            .map(|(p, end)| {
                (
                    *p,
                    if *end < 0 {
                        0
                    } else {
                        input.next.get(p).copied().unwrap_or(0)
                    },
                )
            })
            .collect();
        for (p, next) in at_end {
            input.reached(p, next);
        }
        Ok(input)
    }

    /// Whether a bounded run is past `partition`'s end at `offset`.
    fn beyond_end(&self, partition: i32, offset: i64) -> bool {
        self.until_end
            && (self.done.contains(&partition)
                || self.ends.get(&partition).is_some_and(|end| offset >= *end))
    }

    fn reached(&mut self, partition: i32, next_offset: i64) {
        if !self.until_end || self.done.contains(&partition) {
            return;
        }
        if self
            .ends
            .get(&partition)
            .is_some_and(|end| next_offset >= *end)
        {
            self.done.push(partition);
            self.finished.push(partition);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, partition);
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::debug!(error = %e, partition, "cannot pause a finished partition");
            }
        }
    }
}

impl Input for KafkaInput {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    fn bounded(&self) -> bool {
        self.until_end
    }

    fn poll(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<usize, SourceError> {
        if let Some(e) = self.deferred.take() {
            return Err(e.into());
        }
        if self.partitions.is_empty()
            || (self.until_end && self.done.len() == self.partitions.len())
        {
            return Ok(0);
        }
        let mut taken = 0;
        while taken < max {
            let Some(result) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            let (partition, next) = match result {
                Ok(m) if self.beyond_end(m.partition(), m.offset()) => {
                    (m.partition(), m.offset() + 1)
                }
                Ok(m) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    // Looked at where librdkafka holds it: nothing is copied for a reading.
                    each(RawRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        record_time: record_time(m.timestamp()),
                        key: m.key(),
                        stamp: stamp(m.headers()),
                        payload: Payload::Wire(m.payload().unwrap_or_default()),
                    });
                    taken += 1;
                    (m.partition(), m.offset() + 1)
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    // Before a partition's first record the consumer has no position (a
                    // negative logical offset): the next offset known is where it resumed.
                    let position = self
                        .consumer
                        .position()
                        .ok()
                        .and_then(|tpl| {
                            tpl.find_partition(&self.topic, p)
                                .and_then(|e| e.offset().to_raw())
                        })
                        .filter(|o| *o >= 0)
                        .or_else(|| self.next.get(&p).copied())
                        .unwrap_or(0);
                    (p, position)
                }
                Err(e) if taken == 0 => return Err(e.into()),
                // Records already taken are processed first; the error is reported next poll.
                Err(e) => {
                    self.deferred = Some(e);
                    break;
                }
            };
            self.reached(partition, next);
        }
        Ok(taken)
    }

    fn take_finished(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.finished)
    }

    fn positions(&self) -> Vec<(i32, i64)> {
        let mut p: Vec<(i32, i64)> = self.next.iter().map(|(p, o)| (*p, *o)).collect();
        p.sort_unstable();
        p
    }
}

/// The headers fleetpulse's gateways stamp, if a record has them.
fn stamp<H: Headers>(headers: Option<&H>) -> Stamp<'_> {
    let mut stamp = Stamp::default();
    for h in headers.into_iter().flat_map(Headers::iter) {
        match h.key {
            schemas::headers::TENANT => stamp.tenant = h.value,
            schemas::headers::DEVICE => stamp.device = h.value,
            schemas::headers::AVAILABILITY => stamp.availability = h.value,
            _ => {}
        }
    }
    stamp
}

/// A record's timestamp and who stamped it: a topic with `message.timestamp.type =
/// LogAppendTime` has the broker's clock on every record.
fn record_time(t: Timestamp) -> RecordTime {
    match t {
        Timestamp::NotAvailable => RecordTime::None,
        Timestamp::CreateTime(ms) => RecordTime::Producer(ms),
        Timestamp::LogAppendTime(ms) => RecordTime::Broker(ms),
    }
}
