//! Reading the compacted inventory topic: to its end (the latest registration of every device, a
//! tombstone removing it), or for as long as a service runs ([`follow`]), each record a
//! [`Change`]. The end is each partition's high watermark when reading starts, so a writer that
//! keeps writing cannot keep a reader from finishing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::{Codec, Registration, device_of_key};

use crate::DeviceId;

/// The inventory as the topic holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    /// Each device's latest registration.
    pub devices: BTreeMap<DeviceId, Registration>,
    /// Records whose key or value could not be read; a device whose latest record is one of
    /// them counts as not registered, so applying a file writes it again.
    pub unreadable: u64,
}

/// Why the topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The brokers did not answer.
    #[error("cannot read topic {topic}: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// The end was not reached in time.
    #[error("topic {topic}: partitions {partitions:?} not read to their end within {waited:?}")]
    Timeout {
        /// The topic.
        topic: String,
        /// The partitions still short of their end.
        partitions: Vec<i32>,
        /// How long it waited.
        waited: Duration,
    },
}

/// Reads `topic` from its beginning to its end with `consumer`, which it assigns (a topic that
/// does not exist is an empty inventory). `codec` reads the values.
pub fn read_to_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    codec: &Codec,
    timeout: Duration,
) -> Result<Current, TopicError> {
    let kafka = failed(topic);
    let (_, mut ends) = layout(consumer, topic, timeout)?;
    assign(consumer, topic, ends.keys().copied())?;
    let mut current = Current::default();
    if ends.is_empty() {
        return Ok(current);
    }
    let started = Instant::now();
    while !ends.is_empty() {
        if started.elapsed() > timeout {
            return Err(TopicError::Timeout {
                topic: topic.to_string(),
                partitions: ends.into_keys().collect(),
                waited: timeout,
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(kafka)?;
        let partition = message.partition();
        let Some(end) = ends.get(&partition).copied() else {
            continue;
        };
        if message.offset() < end {
            take(&mut current, codec, message.key(), message.payload());
        }
        if message.offset() + 1 >= end {
            ends.remove(&partition);
        }
    }
    Ok(current)
}

/// How a Kafka error of reading `topic` is told.
fn failed(topic: &str) -> impl Fn(rdkafka::error::KafkaError) -> TopicError + Copy + '_ {
    move |source| TopicError::Kafka {
        topic: topic.to_string(),
        source,
    }
}

/// The partitions of `topic` (none while it does not exist) and, for each that holds records,
/// the offset after its last one: where reading it to its end stops.
fn layout<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<(Vec<i32>, BTreeMap<i32, i64>), TopicError> {
    let kafka = failed(topic);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (low, high) = watermarks(consumer, topic, *p, timeout).map_err(kafka)?;
        if high > low {
            ends.insert(*p, high);
        }
    }
    Ok((partitions, ends))
}

/// A partition's low and high offsets. A partition whose leader is being elected (just after the
/// topic was made, or after a broker restart) answers "not leader" for a moment: asked again
/// until `timeout` has passed.
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    use rdkafka::types::RDKafkaErrorCode::{
        LeaderNotAvailable, NotLeaderForPartition, UnknownTopicOrPartition,
    };
    let started = Instant::now();
    let mut delays = schemas::retry::Backoff::Unavailable.delays();
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(LeaderNotAvailable | NotLeaderForPartition | UnknownTopicOrPartition)
                ) && started.elapsed() < timeout =>
            {
                std::thread::sleep(delays.next_wait());
            }
            other => return other,
        }
    }
}

/// Assigns `partitions` of `topic` to `consumer`, each from its beginning.
fn assign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<(), TopicError> {
    let kafka = failed(topic);
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka)?;
    }
    consumer.assign(&assignment).map_err(kafka)
}

/// A change of the inventory, as one record of the topic says it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A device registered or changed.
    Registered(Registration),
    /// A device decommissioned, or whose record cannot be read (and so counts as unregistered).
    Decommissioned(DeviceId),
}

/// The change one record makes; `None` for a record without a readable key. A value that cannot
/// be read, or that names another device than its key, unregisters the key's device.
fn change(codec: &Codec, key: Option<&[u8]>, value: Option<&[u8]>) -> Option<(Change, bool)> {
    let id = key.and_then(device_of_key)?;
    let Some(value) = value else {
        return Some((Change::Decommissioned(id), true));
    };
    match codec.decode::<Registration>(value) {
        Ok(r) if (r.tenant_id.as_str(), r.device_id.as_str()) == (id.0.as_str(), id.1.as_str()) => {
            Some((Change::Registered(r), true))
        }
        _ => Some((Change::Decommissioned(id), false)),
    }
}

/// Applies one record to `current`.
fn take(current: &mut Current, codec: &Codec, key: Option<&[u8]>, value: Option<&[u8]>) {
    match change(codec, key, value) {
        None => current.unreadable += 1,
        Some((change, readable)) => {
            if !readable {
                current.unreadable += 1;
            }
            match change {
                Change::Registered(r) => {
                    current
                        .devices
                        .insert((r.tenant_id.clone(), r.device_id.clone()), r);
                }
                Change::Decommissioned(id) => {
                    current.devices.remove(&id);
                }
            }
        }
    }
}

/// How long [`follow`] waits between looks for a topic that does not exist yet.
const TOPIC_WAIT: Duration = Duration::from_secs(1);

/// Reads `topic` from its beginning for as long as `stop` is unset, handing `each` every change
/// in the order of its partition, and calling `caught_up` once, when every partition has been read
/// to where it ended when reading began (at once for an empty or missing topic). A topic that does
/// not exist yet, or brokers that do not answer, are waited for. Records without a readable key
/// are skipped.
pub fn follow<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    codec: &Codec,
    stop: &AtomicBool,
    mut each: impl FnMut(Change),
    caught_up: impl FnOnce(),
) -> Result<(), TopicError> {
    let mut caught_up = Some(caught_up);
    let mut ends = loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match layout(consumer, topic, Duration::from_secs(10)) {
            Ok((partitions, ends)) if !partitions.is_empty() => {
                assign(consumer, topic, partitions)?;
                break ends;
            }
            Ok(_) => {
                if let Some(done) = caught_up.take() {
                    done();
                }
            }
            // Brokers that do not answer yet: asked again, and not caught up meanwhile.
            Err(e) => tracing::warn!(error = %e, "the inventory cannot be read yet"),
        }
        std::thread::sleep(TOPIC_WAIT);
    };
    while !stop.load(Ordering::Relaxed) {
        if ends.is_empty()
            && let Some(done) = caught_up.take()
        {
            done();
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        // A broker that is away is retried by librdkafka; the follower keeps polling.
        let Ok(message) = message else { continue };
        if let Some((change, _)) = change(codec, message.key(), message.payload()) {
            each(change);
        }
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use schemas::Record;

    use super::*;

    #[test]
    fn the_latest_record_of_a_key_wins_and_a_tombstone_removes_it() {
        let codec = Codec::builtin();
        let mut current = Current::default();
        let a = Registration::new("acme", "a");
        let b = Registration {
            device_class: Some("router".into()),
            ..Registration::new("acme", "b")
        };
        let bytes = |r: &Registration| codec.encode(r).unwrap();
        let key = |r: &Registration| r.key().into_owned().into_bytes();
        take(&mut current, &codec, Some(&key(&a)), Some(&bytes(&a)));
        take(&mut current, &codec, Some(&key(&b)), Some(&bytes(&b)));
        take(&mut current, &codec, Some(&key(&a)), None);
        assert_eq!(current.devices.len(), 1);
        assert_eq!(current.devices.values().next(), Some(&b));
        // A value that does not decode, or names another device than its key, unregisters.
        take(&mut current, &codec, Some(&key(&b)), Some(b"garbage"));
        take(&mut current, &codec, Some(&key(&a)), Some(&bytes(&b)));
        take(&mut current, &codec, Some(b"no key"), Some(&bytes(&b)));
        assert!(current.devices.is_empty());
        assert_eq!(current.unreadable, 3);
    }
}
