//! The derived topics into events: one consumer reads every partition of the aggregates,
//! anomalies, status and last-seen topics (no consumer group: every bridge sees everything, so
//! any bridge can serve any client), keeps the [`Store`] current, and publishes each record once,
//! already serialized, to every connection. Last-seen times are state rather than events: they
//! go to the hub to be batched ([`Hub::note_last_seen`]), outside the cursor's sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kafka_auth::Tokens;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::retry::Backoff;
use schemas::{Codec, DecodeError, LastSeen, Record};
use serde::Serialize;

use crate::cursor::{Position, Source};
use crate::event::{Event, Kind, Owned, event};
use crate::events;
use crate::hub::Hub;
use crate::protocol::Seen;
use crate::store::Store;

/// How often the feed looks for a last-seen topic that did not exist when it started.
const LOOK_FOR_LAST_SEEN: Duration = Duration::from_secs(5);

/// The topics the feed reads.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Window aggregates.
    pub aggregates: String,
    /// Anomalies.
    pub anomalies: String,
    /// Status transitions.
    pub status: String,
    /// Last-seen times (compacted). Read once it exists: a bridge may be upgraded before the
    /// pipeline that creates it.
    pub lastseen: String,
}

/// The derived topics a cursor covers, in its order (see [`crate::cursor::TOPICS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Derived {
    Status,
    Anomalies,
    Aggregates,
}

impl Derived {
    /// In cursor order.
    const ALL: [Derived; 3] = [Derived::Status, Derived::Anomalies, Derived::Aggregates];

    /// Its index in a cursor.
    fn index(self) -> u8 {
        match self {
            Derived::Status => 0,
            Derived::Anomalies => 1,
            Derived::Aggregates => 2,
        }
    }
}

impl Topics {
    /// Which of the cursor's topics `topic` is; `None` for any other.
    fn which(&self, topic: &str) -> Option<Derived> {
        Derived::ALL.into_iter().find(|d| self.name(*d) == topic)
    }

    fn name(&self, topic: Derived) -> &str {
        match topic {
            Derived::Status => &self.status,
            Derived::Anomalies => &self.anomalies,
            Derived::Aggregates => &self.aggregates,
        }
    }
}

/// Errors of the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The consumer could not be created or assigned.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Reads the topics from their beginning (the store is rebuilt from them) until `stop`; sets
/// `kafka_up` once it has read what the topics held at the start, and as the brokers answer or
/// not after that.
pub fn run(
    kafka: &[(String, String)],
    topics: &Topics,
    codec: &Codec,
    store: &Store,
    hub: &Hub,
    stop: &AtomicBool,
    kafka_up: &AtomicBool,
) -> Result<(), FeedError> {
    let mut config = ClientConfig::new();
    // librdkafka wants a group id; partitions are assigned by hand and nothing is committed, so
    // the group never coordinates anything.
    config
        .set("group.id", "fleetpulse-bridge")
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in kafka {
        config.set(k, v);
    }
    let consumer: BaseConsumer<Tokens> = config.create_with_context(Tokens)?;
    // Answers librdkafka's request for an OAUTHBEARER token before the brokers are asked anything.
    consumer.poll(Duration::ZERO);
    let mut assigned = false;
    let mut reading_last_seen = false;
    let mut looked_for_last_seen = std::time::Instant::now();
    // Per (topic, partition), the end offset at assignment: the bridge is ready once it has
    // read that far everywhere, so a first snapshot is not a partial one.
    let mut behind: Ends = Vec::new();
    let mut position = Position::default();
    let mut probed = std::time::Instant::now();
    let mut waiting = Backoff::Unavailable.delays();
    while !stop.load(Ordering::Relaxed) {
        if !assigned {
            match assign(&consumer, topics) {
                Ok(a) => {
                    assigned = true;
                    waiting = Backoff::Unavailable.delays();
                    hub.start_at(&a.start);
                    position = a.start;
                    behind = a.ends;
                    reading_last_seen = a.last_seen;
                    looked_for_last_seen = std::time::Instant::now();
                    if !reading_last_seen {
                        tracing::warn!(
                            topic = topics.lastseen,
                            "the last-seen topic does not exist yet; read once it does (last seen \
                             comes from status transitions meanwhile)"
                        );
                    }
                    kafka_up.store(behind.is_empty(), Ordering::Relaxed);
                }
                Err(e) => {
                    kafka_up.store(false, Ordering::Relaxed);
                    let wait = waiting.next_wait();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "waiting for the derived topics");
                    std::thread::sleep(wait);
                }
            }
            continue;
        }
        if !reading_last_seen && looked_for_last_seen.elapsed() >= LOOK_FOR_LAST_SEEN {
            looked_for_last_seen = std::time::Instant::now();
            match assign_last_seen(&consumer, topics) {
                Ok(true) => {
                    reading_last_seen = true;
                    tracing::info!(topic = topics.lastseen, "reading the last-seen topic");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the last-seen topic yet"),
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                if !behind.is_empty() {
                    behind.retain(|(t, bp, end)| !(t == m.topic() && *bp == p && o + 1 >= *end));
                }
                kafka_up.store(behind.is_empty(), Ordering::Relaxed);
                if m.topic() == topics.lastseen {
                    last_seen(m.payload(), codec, store, hub, (m.topic(), p, o));
                    continue;
                }
                let Some(derived) = topics.which(m.topic()) else {
                    // Only the four topics are assigned; a record of any other is not read as one.
                    tracing::warn!(
                        topic = m.topic(),
                        "a record of a topic the feed does not read; skipped"
                    );
                    continue;
                };
                let value = m.payload().unwrap_or_default();
                let topic = derived.index();
                position.set(topic, p, o + 1);
                let source = Source {
                    topic,
                    partition: p,
                    offset: o,
                };
                let cursor: Arc<str> = position.encode().into();
                let at = (source, cursor);
                let decoded = match derived {
                    Derived::Status => read(codec, value, Kind::Status, at, |r| store.status(r)),
                    Derived::Anomalies => {
                        read(codec, value, Kind::Anomaly, at, |r| store.anomaly(r))
                    }
                    Derived::Aggregates => {
                        read(codec, value, Kind::Aggregate, at, |r| store.aggregate(r))
                    }
                };
                match decoded {
                    Ok(e) => {
                        events::event_read();
                        hub.publish(&Arc::new(e));
                    }
                    Err(e) => {
                        // Its offset is passed all the same: a cursor after it owes nothing of it.
                        events::undecodable();
                        tracing::error!(error = %e, topic = m.topic(), partition = p, offset = o, "a derived record does not decode; skipped");
                    }
                }
            }
            Some(Err(e)) => {
                kafka_up.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "kafka");
            }
            // Quiet topics bring no record to say the brokers are back: they are asked.
            None if !kafka_up.load(Ordering::Relaxed)
                && behind.is_empty()
                && probed.elapsed() >= Duration::from_secs(1) =>
            {
                probed = std::time::Instant::now();
                let answered = consumer
                    .fetch_metadata(Some(&topics.status), Duration::from_secs(1))
                    .is_ok();
                kafka_up.store(answered, Ordering::Relaxed);
            }
            None => {}
        }
    }
    Ok(())
}

/// A record of one of the cursor's topics, decoded, noted in the store and made an event.
fn read<T: Record + Serialize + Owned>(
    codec: &Codec,
    value: &[u8],
    kind: Kind,
    (source, cursor): (Source, Arc<str>),
    note: impl FnOnce(&T),
) -> Result<Event, DecodeError> {
    let record = codec.decode::<T>(value)?;
    note(&record);
    Ok(event(kind, source, cursor, &record))
}

/// A last-seen record into the store, and to the hub when it moved a device's time. A record
/// without a value is a compaction tombstone: nothing to show.
fn last_seen(
    value: Option<&[u8]>,
    codec: &Codec,
    store: &Store,
    hub: &Hub,
    (topic, partition, offset): (&str, i32, i64),
) {
    let Some(value) = value else {
        return;
    };
    match codec.decode::<LastSeen>(value) {
        Ok(l) => {
            events::last_seen_read();
            if let Some((device_class, last_seen)) = store.last_seen(&l) {
                hub.note_last_seen(Seen {
                    tenant_id: l.tenant_id,
                    device_id: l.device_id,
                    device_class,
                    last_seen,
                });
            }
        }
        Err(e) => {
            events::undecodable();
            tracing::error!(error = %e, topic, partition, offset, "a last-seen record does not decode; skipped");
        }
    }
}

/// Partitions that held records at assignment, with their end offsets.
type Ends = Vec<(String, i32, i64)>;

/// What [`assign`] assigned.
struct Assigned {
    /// Where the cursor's topics start.
    start: Position,
    /// The partitions that held records, with their end offsets.
    ends: Ends,
    /// Whether the last-seen topic exists and is read.
    last_seen: bool,
}

/// The partitions of `topic`; none if it does not exist.
fn partitions(consumer: &BaseConsumer<Tokens>, topic: &str) -> Result<Vec<i32>, FeedError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Assigns every partition of the topics, from the beginning; returns where that is, and the
/// partitions that hold records, with their end offsets. The last-seen topic is assigned if it
/// exists.
fn assign(consumer: &BaseConsumer<Tokens>, topics: &Topics) -> Result<Assigned, FeedError> {
    let mut list = TopicPartitionList::new();
    let mut start = Position::default();
    let mut ends = Vec::new();
    for derived in Derived::ALL {
        let (index, topic) = (derived.index(), topics.name(derived));
        let partitions = partitions(consumer, topic)?;
        if partitions.is_empty() {
            return Err(FeedError::Kafka(rdkafka::error::KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )));
        }
        for p in partitions {
            list.add_partition_offset(topic, p, Offset::Beginning)?;
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?;
            start.set(index, p, low);
            if high > low {
                ends.push((topic.to_string(), p, high));
            }
        }
    }
    let last_seen = partitions(consumer, &topics.lastseen)?;
    for p in &last_seen {
        list.add_partition_offset(&topics.lastseen, *p, Offset::Beginning)?;
        let (low, high) =
            consumer.fetch_watermarks(&topics.lastseen, *p, Duration::from_secs(5))?;
        if high > low {
            ends.push((topics.lastseen.clone(), *p, high));
        }
    }
    consumer.assign(&list)?;
    Ok(Assigned {
        start,
        ends,
        last_seen: !last_seen.is_empty(),
    })
}

/// Adds the last-seen topic's partitions, from the beginning, to what the consumer reads, if
/// the topic exists now. Readiness does not wait for them: the bridge was serving already.
fn assign_last_seen(consumer: &BaseConsumer<Tokens>, topics: &Topics) -> Result<bool, FeedError> {
    let partitions = partitions(consumer, &topics.lastseen)?;
    if partitions.is_empty() {
        return Ok(false);
    }
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition_offset(&topics.lastseen, p, Offset::Beginning)?;
    }
    // Partitions are assigned by hand (no group protocol), so adding to the assignment leaves
    // the other topics' positions where they are.
    consumer.incremental_assign(&list)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cursor_topic_is_known_by_name_and_no_other_is_taken_for_one() {
        let topics = Topics {
            aggregates: "a".into(),
            anomalies: "n".into(),
            status: "s".into(),
            lastseen: "l".into(),
        };
        assert_eq!(topics.which("s"), Some(Derived::Status));
        assert_eq!(topics.which("n"), Some(Derived::Anomalies));
        assert_eq!(topics.which("a"), Some(Derived::Aggregates));
        assert_eq!(topics.which("l"), None);
        assert_eq!(topics.which("device-aggregates-old"), None);
        let order: Vec<u8> = Derived::ALL.iter().map(|d| d.index()).collect();
        assert_eq!(order, [0, 1, 2], "the cursor's order");
    }
}
