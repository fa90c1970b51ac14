//! The consume loop's state, as one struct: the batch being filled and its spare, what the
//! stages hold, whether the partitions are paused, and what the loop learnt of Kafka and
//! ClickHouse; [`super::Sink::run`] turns it over, one step at a time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::service::Finished;
use super::{BURST, Group, PAUSE_AFTER, PING_EVERY, Sink, Summary};
use crate::batch::{Batch, Consumed};
use crate::events;
use crate::server::{Connection, SinkError};

/// Whether a batch full to twice the limits, behind a busy inserter, still waits unpolled.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Held {
    Waiting,
    Paused,
}

/// The consume loop's state: the batch being filled, what the stages hold, and why it waits.
pub(super) struct Loop<'a> {
    sink: &'a Sink,
    consumer: BaseConsumer<Group>,
    pub(super) summary: Summary,
    batch: Batch,
    /// The batch that went in last, emptied, to be filled again.
    spare: Batch,
    /// Whether the inserter has a batch.
    pub(super) in_flight: bool,
    /// Batches handed over and not committed yet.
    uncommitted: usize,
    /// A batch was given up on (stopped while ClickHouse refused, or refused for good): it is
    /// read again on the next start, and so must everything after it, since a later commit
    /// would move the partitions' positions past it.
    pub(super) abandoned: bool,
    /// What ClickHouse refused in a way no retry can fix: the sink stops and says it.
    pub(super) fatal: Option<SinkError>,
    paused: Option<TopicPartitionList>,
    /// Since when a full batch has been waiting for the inserter.
    pub(super) full_since: Option<Instant>,
    caught_up: bool,
    /// When ClickHouse last answered; with nothing to insert, a ping keeps `/readyz` honest.
    contact: Instant,
    /// When Kafka was last asked whether it answers.
    probed: Instant,
}

impl<'a> Loop<'a> {
    pub(super) fn new(sink: &'a Sink, consumer: BaseConsumer<Group>) -> Loop<'a> {
        let capacity = sink.config.batch_rows.saturating_mul(2);
        Loop {
            sink,
            consumer,
            summary: Summary::default(),
            batch: Batch::with_capacity(capacity),
            spare: Batch::with_capacity(capacity),
            in_flight: false,
            uncommitted: 0,
            abandoned: false,
            fatal: None,
            paused: None,
            full_since: None,
            caught_up: false,
            contact: Instant::now(),
            probed: Instant::now(),
        }
    }

    /// Takes back the batches the inserter emptied, and commits those the stages finished.
    pub(super) fn collect(
        &mut self,
        emptied: &std::sync::mpsc::Receiver<Batch>,
        done: &std::sync::mpsc::Receiver<Finished>,
    ) {
        while let Ok(empty) = emptied.try_recv() {
            self.in_flight = false;
            self.spare = empty;
        }
        while let Ok(mut f) = done.try_recv() {
            self.uncommitted -= 1;
            self.abandoned |= !f.written;
            if let Some(e) = f.fatal.take() {
                self.sink.stop.store(true, Ordering::Relaxed);
                self.fatal.get_or_insert(e);
            }
            if !self.abandoned {
                self.commit(&f);
            }
            self.contact = Instant::now();
        }
    }

    /// Whether the batch should go in now. A batch also goes once the consumer has caught up, if
    /// it holds a hundredth of the limits (1,000 rows by default, the least ClickHouse advises
    /// per insert): the end of a backlog need not wait out `batch_ms`, and a trickle still waits
    /// for it (many small inserts make many small parts, which ClickHouse then has to merge).
    pub(super) fn due(&self, stopping: bool) -> bool {
        let c = &self.sink.config;
        let age = Duration::from_millis(c.batch_ms);
        !self.batch.is_empty()
            && (stopping
                || self.batch.due(c.batch_rows, c.batch_bytes, age)
                || (self.caught_up
                    && self.batch.due(
                        c.batch_rows.div_ceil(100),
                        c.batch_bytes.div_ceil(100),
                        age,
                    )))
    }

    /// Hands the batch to the inserter and takes the spare to fill; false if the inserter is
    /// gone.
    pub(super) fn hand_over(&mut self, batches: &tokio::sync::mpsc::Sender<Batch>) -> bool {
        if let Some(p) = self.paused.take() {
            let _ = self.consumer.resume(&p);
        }
        let full = std::mem::replace(&mut self.batch, std::mem::take(&mut self.spare));
        if batches.blocking_send(full).is_err() {
            return false;
        }
        self.in_flight = true;
        self.uncommitted += 1;
        true
    }

    /// Whether the batch has grown to twice the limits while the inserter is busy.
    pub(super) fn full_while_in_flight(&self) -> bool {
        let c = &self.sink.config;
        self.in_flight
            && self.batch.due(
                c.batch_rows.saturating_mul(2),
                c.batch_bytes.saturating_mul(2),
                Duration::MAX,
            )
    }

    /// With the batch full behind a busy inserter: waits unpolled for [`PAUSE_AFTER`], then
    /// pauses the partitions (again, if a rebalance brought partitions that are not).
    pub(super) fn hold_back(&mut self) -> Held {
        let since = *self.full_since.get_or_insert_with(Instant::now);
        if since.elapsed() < PAUSE_AFTER {
            return Held::Waiting;
        }
        let assigned = self.consumer.assignment().ok();
        let count = |p: &Option<TopicPartitionList>| p.as_ref().map(|p| p.count());
        if count(&assigned) != count(&self.paused) {
            self.paused = assigned;
            if let Some(p) = &self.paused {
                let _ = self.consumer.pause(p);
            }
        }
        Held::Paused
    }

    /// Whether a stopping sink has nothing left to wait for.
    pub(super) fn settled(&self) -> bool {
        !self.in_flight && (self.batch.is_empty() || self.abandoned) && self.uncommitted == 0
    }

    /// Takes up to [`BURST`] records. A paused consumer returns no records but keeps its group
    /// membership alive. The first poll may wait; the rest of a burst takes what is already
    /// fetched.
    pub(super) fn poll_burst(&mut self) {
        let c = &self.sink.config;
        self.caught_up = false;
        let mut wait = Duration::from_millis(if self.in_flight { 5 } else { 50 });
        for _ in 0..BURST {
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    self.sink.health.kafka(true);
                    Self::take(self.sink, &mut self.batch, &mut self.summary, &m);
                }
                Some(Err(e)) => {
                    self.sink.health.kafka(false);
                    tracing::warn!(error = %e, "kafka");
                    break;
                }
                // Nothing within the wait: caught up. Nothing at once, mid-burst: the next
                // fetch may simply not have landed yet.
                None if wait.is_zero() => break,
                None => {
                    self.caught_up = self.paused.is_none();
                    // Quiet topics bring no record to say the brokers are back: they are asked.
                    if self.sink.health.kafka_down() && self.probed.elapsed() >= PING_EVERY {
                        self.probed = Instant::now();
                        let answered = self
                            .consumer
                            .fetch_metadata(None, Duration::from_secs(1))
                            .is_ok();
                        self.sink.health.kafka(answered);
                    }
                    break;
                }
            }
            wait = Duration::ZERO;
            // While an insert is in flight the batch may grow to twice the limits.
            let limit = if self.in_flight { 2 } else { 1 };
            if self.batch.due(
                c.batch_rows.saturating_mul(limit),
                c.batch_bytes.saturating_mul(limit),
                Duration::MAX,
            ) {
                break;
            }
        }
    }

    /// With nothing in the stages for [`PING_EVERY`]: asks ClickHouse whether it answers.
    pub(super) fn ping(&mut self, connection: &Connection, runtime: &tokio::runtime::Handle) {
        if self.uncommitted > 0 || self.contact.elapsed() < PING_EVERY {
            return;
        }
        self.contact = Instant::now();
        let ping = connection.client.query("SELECT 1").execute();
        let up = runtime
            .block_on(tokio::time::timeout(PING_EVERY, ping))
            .is_ok_and(|r| r.is_ok());
        self.sink.health.clickhouse(up);
    }

    /// Adds a consumed record to `batch` (fields apart: the message borrows the consumer).
    fn take(
        sink: &Sink,
        batch: &mut Batch,
        summary: &mut Summary,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        let Some(table) = sink
            .topics
            .iter()
            .find(|(t, _)| t == m.topic())
            .map(|(_, table)| *table)
        else {
            return;
        };
        let record = Consumed {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            value: m.payload(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        };
        if let Err(e) = batch.add(&sink.codec, table, &record) {
            summary.undecodable += 1;
            events::undecodable();
            tracing::error!(error = %e, topic = m.topic(), partition = m.partition(), offset = m.offset(), "a derived record does not decode; skipped");
        }
    }

    /// Commits the offsets of a batch that went in, rollups and all.
    fn commit(&mut self, f: &Finished) {
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, next) in &f.offsets {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Sync) {
            // After a rebalance the new owner reads these again: the rows are in twice, and
            // replaced on merge; queries read with FINAL.
            tracing::warn!(error = %e, "cannot commit offsets");
        }
        self.summary.rows += f.rows as u64;
        events::committed(f.rows);
    }
}
