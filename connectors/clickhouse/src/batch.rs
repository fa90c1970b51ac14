//! What the sink has consumed and not yet inserted: rows per table, and per partition the offset
//! to commit once they are in. A batch is due by rows, bytes or age, whichever comes first.

use std::time::{Duration, Instant};

use schemas::{
    Anomaly, Codec, DeadLetter, DecodeError, LastSeen, Registration, StatusTransition,
    WindowAggregate, device_of_key,
};

use crate::encoded::AggregateRows;
use crate::rows::{AnomalyRow, DeadLetterRow, InventoryRow, LastSeenRow, StatusRow};

/// Which table a topic feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// `device_aggregates`.
    Aggregates,
    /// `device_anomalies`.
    Anomalies,
    /// `device_status`.
    Status,
    /// `dead_letters`.
    DeadLetters,
    /// `device_last_seen`.
    LastSeen,
    /// `device_inventory`.
    Inventory,
}

impl Table {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Aggregates => "device_aggregates",
            Table::Anomalies => "device_anomalies",
            Table::Status => "device_status",
            Table::DeadLetters => "dead_letters",
            Table::LastSeen => "device_last_seen",
            Table::Inventory => "device_inventory",
        }
    }
}

/// A consumed record's parts, borrowed from the consumer's message.
#[derive(Debug, Clone, Copy)]
pub struct Consumed<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// Its Kafka timestamp, ms.
    pub timestamp_ms: i64,
}

impl<'a> Consumed<'a> {
    /// A record with a value and neither key nor time, as the derived topics' rows need.
    pub fn value(topic: &'a str, partition: i32, offset: i64, value: &'a [u8]) -> Consumed<'a> {
        Consumed {
            topic,
            partition,
            offset,
            key: None,
            value: Some(value),
            timestamp_ms: 0,
        }
    }
}

/// The most window aggregates a batch reserves room for (about 200 MB): a `batch_rows` set far
/// higher grows the batch as rows come instead of asking for all of it at start-up.
pub const RESERVED_ROWS: usize = 1_000_000;

/// Rows waiting for their insert.
#[derive(Debug, Default)]
pub struct Batch {
    /// `device_aggregates`, encoded as they come.
    pub aggregates: AggregateRows,
    /// `device_anomalies`.
    pub anomalies: Vec<AnomalyRow>,
    /// `device_status`.
    pub status: Vec<StatusRow>,
    /// `dead_letters`.
    pub dead_letters: Vec<DeadLetterRow>,
    /// `device_last_seen`: every record, not only each device's newest. The table keeps the
    /// newest on merge anyway, and collapsing here would rarely pay for its map: a device sends
    /// one per interval (5 s by default), a trickle batch lasts a second, and a backlog batch of
    /// `batch_rows` spans a few seconds of any fleet big enough for the rows to matter.
    pub last_seen: Vec<LastSeenRow>,
    /// `device_inventory`: registrations and decommissions.
    pub inventory: Vec<InventoryRow>,
    /// Per (topic, partition), the offset after the last record taken: a handful of entries,
    /// looked up for every record without allocating.
    offsets: Vec<(String, i32, i64)>,
    bytes: usize,
    since: Option<Instant>,
}

impl Batch {
    /// An empty batch with room for `rows` window aggregates (at most [`RESERVED_ROWS`]), the
    /// table that takes most rows; the others grow as needed. Reserved room is touched only as
    /// rows come; growing the vector while a batch fills copied it at every doubling, into pages
    /// the kernel zeroes first, which took a quarter of a sink's time catching up on a backlog.
    pub fn with_capacity(rows: usize) -> Batch {
        Batch {
            aggregates: AggregateRows::with_capacity(rows.min(RESERVED_ROWS)),
            ..Batch::default()
        }
    }

    /// Takes a consumed record of a topic that feeds `table`. A record that does not decode is
    /// not added (the caller counts it) but its offset is: it will never decode, and must not
    /// hold the partition back.
    pub fn add(
        &mut self,
        codec: &Codec,
        table: Table,
        record: &Consumed<'_>,
    ) -> Result<(), DecodeError> {
        self.taken(record);
        if table == Table::Inventory {
            return self.add_registration(codec, record);
        }
        // Only the inventory's tombstones have no value; anywhere else one is a broken record.
        let value = record.value.unwrap_or_default();
        match table {
            Table::Aggregates => match codec.decode_window_aggregate_ref(value)? {
                Some(a) => self.aggregates.push(&a),
                // Written with an older schema: resolved, then encoded the same way.
                None => self
                    .aggregates
                    .push(&codec.decode::<WindowAggregate>(value)?.borrowed()),
            },
            Table::Anomalies => self
                .anomalies
                .push(AnomalyRow::from(&codec.decode::<Anomaly>(value)?)),
            Table::Status => self
                .status
                .push(StatusRow::from(&codec.decode::<StatusTransition>(value)?)),
            Table::DeadLetters => self
                .dead_letters
                .push(DeadLetterRow::from(&codec.decode::<DeadLetter>(value)?)),
            Table::LastSeen => self
                .last_seen
                .push(LastSeenRow::from(codec.decode::<LastSeen>(value)?)),
            Table::Inventory => {}
        }
        Ok(())
    }

    /// A record of the inventory topic: its key names the device (a tombstone has no value, and
    /// decommissions it) and its time is the row's version.
    fn add_registration(
        &mut self,
        codec: &Codec,
        record: &Consumed<'_>,
    ) -> Result<(), DecodeError> {
        let (tenant, device) = record.key.and_then(device_of_key).ok_or_else(|| {
            DecodeError::JsonShape("an inventory key is a [tenant, device] JSON array".into())
        })?;
        let row = match record.value {
            None => InventoryRow::decommissioned(tenant, device, record.timestamp_ms),
            Some(value) => {
                InventoryRow::registered(codec.decode::<Registration>(value)?, record.timestamp_ms)
            }
        };
        self.inventory.push(row);
        Ok(())
    }

    /// Counts a consumed record in the batch's age and size and its partition's offset.
    fn taken(&mut self, record: &Consumed<'_>) {
        let Consumed {
            topic,
            partition,
            offset,
            ..
        } = *record;
        self.since.get_or_insert_with(Instant::now);
        self.bytes += record.value.map_or(0, <[u8]>::len);
        match self
            .offsets
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, next)) => *next = (*next).max(offset + 1),
            None => self
                .offsets
                .push((topic.to_string(), partition, offset + 1)),
        }
    }

    /// Empties the batch for reuse, keeping what its vectors have allocated: a batch of 100,000
    /// rows is tens of megabytes, and growing a fresh one for every batch (copying it at every
    /// doubling, the kernel zeroing every new page) cost as much as decoding the records.
    pub fn clear(&mut self) {
        self.aggregates.clear();
        self.anomalies.clear();
        self.status.clear();
        self.dead_letters.clear();
        self.last_seen.clear();
        self.inventory.clear();
        self.offsets.clear();
        self.bytes = 0;
        self.since = None;
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.aggregates.len()
            + self.anomalies.len()
            + self.status.len()
            + self.dead_letters.len()
            + self.last_seen.len()
            + self.inventory.len()
    }

    /// Whether anything was taken (rows, or offsets of records that did not decode).
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Whether the batch should be inserted now.
    pub fn due(&self, rows: usize, bytes: usize, age: Duration) -> bool {
        self.rows() >= rows || self.bytes >= bytes || self.since.is_some_and(|s| s.elapsed() >= age)
    }

    /// The offsets to commit once the rows are in: per (topic, partition), the next to read.
    pub fn offsets(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.offsets.iter().map(|(t, p, o)| (t.as_str(), *p, *o))
    }
}

#[cfg(test)]
mod tests {
    use schemas::DeadLetterReason;

    use super::*;

    #[test]
    fn a_batch_is_due_by_rows_bytes_or_age_and_keeps_the_next_offsets() {
        let codec = Codec::builtin();
        let dead = DeadLetter {
            event_id: "dlq/t/0/7".into(),
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 7,
            key: None,
            raw: vec![1, 2, 3],
            reason: DeadLetterReason::Undecodable,
            detail: "x".into(),
            record_ts: None,
        };
        let value = codec.encode(&dead).unwrap_or_default();
        let mut batch = Batch::default();
        assert!(batch.is_empty() && !batch.due(1, 1, Duration::from_secs(60)));
        assert!(
            batch
                .add(
                    &codec,
                    Table::DeadLetters,
                    &Consumed::value("dlq", 2, 10, &value)
                )
                .is_ok()
        );
        assert!(
            batch
                .add(
                    &codec,
                    Table::DeadLetters,
                    &Consumed::value("dlq", 2, 9, &value)
                )
                .is_ok()
        );
        assert!(
            batch
                .add(
                    &codec,
                    Table::Status,
                    &Consumed::value("status", 0, 4, b"junk")
                )
                .is_err()
        );
        assert_eq!(batch.rows(), 2);
        assert!(batch.due(2, usize::MAX, Duration::from_secs(60)));
        assert!(!batch.due(3, usize::MAX, Duration::from_secs(60)));
        assert!(batch.due(3, 4, Duration::from_secs(60)));
        assert!(batch.due(3, usize::MAX, Duration::ZERO));
        let mut offsets: Vec<_> = batch.offsets().collect();
        offsets.sort();
        assert_eq!(offsets, vec![("dlq", 2, 11), ("status", 0, 5)]);
        batch.clear();
        assert!(batch.is_empty() && batch.rows() == 0);
        assert!(!batch.due(1, 1, Duration::ZERO));
        assert!(
            batch.dead_letters.capacity() >= 2,
            "kept for the next batch"
        );
    }

    #[test]
    fn last_seen_records_become_rows_and_other_records_on_their_topic_do_not() {
        let codec = Codec::builtin();
        let seen = LastSeen {
            tenant_id: "t1".into(),
            device_id: "d1".into(),
            device_class: None,
            last_seen: 1_700_000_000_500,
            event_id: "lastseen/t1/d1/1700000000500".into(),
        };
        let value = codec.encode(&seen).unwrap_or_default();
        let mut batch = Batch::default();
        assert!(
            batch
                .add(
                    &codec,
                    Table::LastSeen,
                    &Consumed::value("lastseen", 1, 3, &value)
                )
                .is_ok()
        );
        let wrong = codec
            .encode(&DeadLetter {
                event_id: "dlq/t/0/7".into(),
                source_topic: "t".into(),
                source_partition: 0,
                source_offset: 7,
                key: None,
                raw: vec![],
                reason: DeadLetterReason::Undecodable,
                detail: String::new(),
                record_ts: None,
            })
            .unwrap_or_default();
        assert!(
            batch
                .add(
                    &codec,
                    Table::LastSeen,
                    &Consumed::value("lastseen", 1, 4, &wrong)
                )
                .is_err()
        );
        assert_eq!(batch.rows(), 1);
        assert_eq!(batch.last_seen, vec![LastSeenRow::from(seen)]);
        assert_eq!(
            batch.offsets().collect::<Vec<_>>(),
            vec![("lastseen", 1, 5)]
        );
        batch.clear();
        assert!(batch.last_seen.is_empty() && batch.rows() == 0);
    }

    #[test]
    fn inventory_records_become_rows_and_tombstones_decommissions() {
        let codec = Codec::builtin();
        let registration = Registration {
            device_class: Some("router".into()),
            ..Registration::new("t1", "d1")
        };
        let value = codec.encode(&registration).unwrap();
        let key = schemas::device_key("t1", "d1");
        let mut batch = Batch::default();
        let record = |offset, value, key: Option<&'static [u8]>| Consumed {
            topic: "inventory",
            partition: 0,
            offset,
            key,
            value,
            timestamp_ms: 1_700_000_000_000 + offset,
        };
        let key: &'static [u8] = Box::leak(key.into_bytes().into_boxed_slice());
        batch
            .add(
                &codec,
                Table::Inventory,
                &record(0, Some(&value), Some(key)),
            )
            .unwrap();
        batch
            .add(&codec, Table::Inventory, &record(1, None, Some(key)))
            .unwrap();
        assert!(
            batch
                .add(&codec, Table::Inventory, &record(2, None, Some(b"d1")))
                .is_err()
        );
        assert_eq!(
            batch.inventory,
            vec![
                InventoryRow::registered(registration, 1_700_000_000_000),
                InventoryRow::decommissioned("t1".into(), "d1".into(), 1_700_000_000_001),
            ]
        );
        assert_eq!(
            batch.offsets().collect::<Vec<_>>(),
            vec![("inventory", 0, 3)]
        );
    }
}
