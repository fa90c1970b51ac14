//! The sink's loop: consume the derived topics in a consumer group, batch, insert, and only then
//! commit the offsets. While ClickHouse refuses, the batch is retried with exponential backoff
//! and jitter and the partitions are paused (still polled, so the group keeps them), so nothing
//! piles up in memory and nothing is committed that is not in ClickHouse. A record inserted twice
//! (a retry after a partial failure, a restart before the commit) has the same natural key and
//! payload and is seen once by queries that read with `FINAL`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clickhouse::{Client, RowOwned, RowWrite};
use metrics::{counter, gauge, histogram};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Codec;

use crate::batch::{Batch, Table};
use crate::config::SinkConfig;
use crate::server::{Connection, SinkError};

/// What `/readyz` reports: the sink is ready while Kafka and ClickHouse both answer.
#[derive(Debug, Default)]
pub struct Health {
    kafka_down: AtomicBool,
    clickhouse_down: AtomicBool,
}

impl Health {
    /// Ready to work.
    pub fn ready(&self) -> bool {
        !self.kafka_down.load(Ordering::Relaxed) && !self.clickhouse_down.load(Ordering::Relaxed)
    }

    /// What is wrong, for `/readyz`.
    pub fn problem(&self) -> Option<&'static str> {
        if self.clickhouse_down.load(Ordering::Relaxed) {
            Some("clickhouse is not accepting inserts")
        } else if self.kafka_down.load(Ordering::Relaxed) {
            Some("kafka is not answering")
        } else {
            None
        }
    }

    fn clickhouse(&self, up: bool) {
        self.clickhouse_down.store(!up, Ordering::Relaxed);
        gauge!("fleetpulse_sink_clickhouse_up").set(if up { 1.0 } else { 0.0 });
    }

    fn kafka(&self, up: bool) {
        self.kafka_down.store(!up, Ordering::Relaxed);
        gauge!("fleetpulse_sink_kafka_up").set(if up { 1.0 } else { 0.0 });
    }
}

/// Everything the loop needs besides the connection.
pub struct Sink {
    /// `[clickhouse]`.
    pub config: SinkConfig,
    /// librdkafka properties (`bootstrap.servers` and the user's `[kafka]` settings).
    pub kafka: Vec<(String, String)>,
    /// The derived topics and the table each feeds.
    pub topics: Vec<(String, Table)>,
    /// Decoder of the derived records.
    pub codec: Arc<Codec>,
    /// Set to stop: the batch in hand is inserted and committed first.
    pub stop: Arc<AtomicBool>,
    /// Shared with `/readyz`.
    pub health: Arc<Health>,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rows inserted (and committed), over all tables.
    pub rows: u64,
    /// Inserts retried.
    pub retries: u64,
    /// Records that did not decode (skipped, counted, their offsets committed).
    pub undecodable: u64,
}

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The consumer could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// ClickHouse failed in a way retrying cannot help.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

async fn insert<T: RowOwned + RowWrite>(
    client: &Client,
    table: Table,
    rows: &[T],
) -> Result<(), clickhouse::error::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut insert = client.insert::<T>(table.name()).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    histogram!("fleetpulse_sink_insert_seconds", "table" => table.name())
        .record(started.elapsed().as_secs_f64());
    counter!("fleetpulse_sink_rows_inserted_total", "table" => table.name())
        .increment(rows.len() as u64);
    Ok(())
}

async fn insert_all(client: &Client, batch: &Batch) -> Result<(), clickhouse::error::Error> {
    insert(client, Table::Aggregates, &batch.aggregates).await?;
    insert(client, Table::Anomalies, &batch.anomalies).await?;
    insert(client, Table::Status, &batch.status).await?;
    insert(client, Table::DeadLetters, &batch.dead_letters).await
}

/// A random-enough fraction in [0, 1) for backoff jitter: its only job is to keep several sinks
/// from retrying in step, which the clock's nanoseconds do without a random number generator.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000) / 1_000.0
}

impl Sink {
    fn consumer(&self) -> Result<BaseConsumer, RunError> {
        let mut config = ClientConfig::new();
        for (k, v) in &self.kafka {
            config.set(k, v);
        }
        config
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = config.create()?;
        let topics: Vec<&str> = self.topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    /// Inserts `batch` until ClickHouse takes it (or the sink is stopped), polling `consumer`
    /// with its partitions paused meanwhile; then commits its offsets. Returns whether it went
    /// in.
    fn flush(
        &self,
        consumer: &BaseConsumer,
        connection: &Connection,
        runtime: &tokio::runtime::Handle,
        batch: &Batch,
        summary: &mut Summary,
    ) -> bool {
        let mut backoff = Duration::from_millis(200);
        let mut paused = None;
        loop {
            match runtime.block_on(insert_all(&connection.client, batch)) {
                Ok(()) => break,
                Err(e) => {
                    self.health.clickhouse(false);
                    summary.retries += 1;
                    counter!("fleetpulse_sink_insert_retries_total").increment(1);
                    let wait = backoff.mul_f64(0.5 + jitter());
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "insert failed; retrying");
                    if paused.is_none() {
                        paused = consumer.assignment().ok();
                        if let Some(p) = &paused {
                            let _ = consumer.pause(p);
                        }
                    }
                    // Polling a paused consumer returns no records but keeps its group
                    // membership alive.
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        let _ = consumer.poll(Duration::from_millis(100));
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        tracing::warn!(
                            "stopped while ClickHouse refuses: the batch is not committed and will be read again"
                        );
                        return false;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.health.clickhouse(true);
        if let Some(p) = &paused {
            let _ = consumer.resume(p);
        }
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, next) in batch.offsets() {
            let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(next));
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
            // After a rebalance the new owner reads these again: the rows are in twice, and
            // replaced on merge; queries read with FINAL.
            tracing::warn!(error = %e, "cannot commit offsets");
        }
        summary.rows += batch.rows() as u64;
        histogram!("fleetpulse_sink_batch_rows").record(batch.rows() as f64);
        true
    }

    /// Runs until `stop`: consumes, batches, inserts, commits.
    pub fn run(
        &self,
        connection: &Connection,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Summary, RunError> {
        let consumer = self.consumer()?;
        let mut summary = Summary::default();
        let mut batch = Batch::default();
        let age = Duration::from_millis(self.config.batch_ms);
        let mut lag_at = Instant::now();
        self.health.clickhouse(true);
        while !self.stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    self.health.kafka(true);
                    let table = self
                        .topics
                        .iter()
                        .find(|(t, _)| t == m.topic())
                        .map(|(_, table)| *table);
                    if let Some(table) = table {
                        let value = m.payload().unwrap_or_default();
                        let added = batch.add(
                            &self.codec,
                            table,
                            m.topic(),
                            m.partition(),
                            m.offset(),
                            value,
                        );
                        if let Err(e) = added {
                            summary.undecodable += 1;
                            counter!("fleetpulse_sink_undecodable_total").increment(1);
                            tracing::error!(error = %e, topic = m.topic(), partition = m.partition(), offset = m.offset(), "a derived record does not decode; skipped");
                        }
                    }
                }
                Some(Err(e)) => {
                    self.health.kafka(false);
                    tracing::warn!(error = %e, "kafka");
                }
                None => {}
            }
            if !batch.is_empty()
                && batch.due(self.config.batch_rows, self.config.batch_bytes, age)
                && self.flush(&consumer, connection, runtime, &batch, &mut summary)
            {
                batch = Batch::default();
            }
            if lag_at.elapsed() >= Duration::from_secs(5) {
                lag_at = Instant::now();
                report_lag(&consumer);
            }
        }
        if !batch.is_empty() {
            self.flush(&consumer, connection, runtime, &batch, &mut summary);
        }
        Ok(summary)
    }
}

/// `fleetpulse_sink_consumer_lag`: records on the brokers not yet consumed, per topic.
fn report_lag(consumer: &BaseConsumer) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut lag: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for e in positions.elements() {
        let Ok((_, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
        else {
            continue;
        };
        let at = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
        *lag.entry(e.topic().to_string()).or_default() += (high - at).max(0);
    }
    for (topic, n) in lag {
        gauge!("fleetpulse_sink_consumer_lag", "topic" => topic).set(n as f64);
    }
}
