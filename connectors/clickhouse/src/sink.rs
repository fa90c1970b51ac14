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
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Codec;

use crate::batch::{Batch, Table};
use crate::config::SinkConfig;
use crate::rollup::{Plan, Rollups};
use crate::server::{Connection, SinkError};

/// How often an idle sink checks that ClickHouse answers.
const PING_EVERY: Duration = Duration::from_secs(2);

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

    /// ClickHouse answers (`true`) or not.
    pub fn clickhouse(&self, up: bool) {
        self.clickhouse_down.store(!up, Ordering::Relaxed);
        gauge!("fleetpulse_sink_clickhouse_up").set(if up { 1.0 } else { 0.0 });
    }

    fn kafka(&self, up: bool) {
        self.kafka_down.store(!up, Ordering::Relaxed);
        gauge!("fleetpulse_sink_kafka_up").set(if up { 1.0 } else { 0.0 });
    }
}

/// Logs the group's decisions (which partitions this sink got or lost) and reports the consumer
/// lag from librdkafka's statistics, which cost the consume loop nothing (asking the brokers for
/// watermarks from the loop blocked it for seconds while a group rebalanced).
struct Group;

impl ClientContext for Group {
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0)
                .map(|p| p.consumer_lag.max(0))
                .sum();
            gauge!("fleetpulse_sink_consumer_lag", "topic" => name.clone()).set(lag as f64);
        }
    }
}

impl ConsumerContext for Group {
    fn post_rebalance(&self, _: &BaseConsumer<Group>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(p) => {
                let list: Vec<String> = p
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?list, "assigned");
            }
            Rebalance::Revoke(p) => tracing::info!(partitions = p.count(), "revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
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

/// Inserts `batch` and writes the rollups it closed or touched; what the sink does with a batch
/// before it commits its offsets. Everything here may run twice (a retry, a restart before the
/// commit): rows inserted twice are replaced on merge and hidden by `FINAL`, and a rollup written
/// twice is the same row. The caller hands the returned plan to [`Rollups::done`] once it
/// stands.
pub async fn write(
    client: &Client,
    batch: &Batch,
    rollups: &mut Rollups,
) -> Result<Plan, clickhouse::error::Error> {
    // What the tables already cover must be known before the batch is judged against it.
    rollups.load(client).await?;
    rollups.observe(batch);
    insert(client, Table::Aggregates, &batch.aggregates).await?;
    insert(client, Table::Anomalies, &batch.anomalies).await?;
    insert(client, Table::Status, &batch.status).await?;
    insert(client, Table::DeadLetters, &batch.dead_letters).await?;
    let plan = rollups.plan();
    if !plan.is_empty() {
        let started = Instant::now();
        rollups.refresh(client, &plan).await?;
        histogram!("fleetpulse_sink_rollup_seconds").record(started.elapsed().as_secs_f64());
        counter!("fleetpulse_sink_rollup_periods_total")
            .increment((plan.hours.len() + plan.days.len()) as u64);
    }
    Ok(plan)
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
    fn consumer(&self) -> Result<BaseConsumer<Group>, RunError> {
        let mut config = ClientConfig::new();
        // A sink that died holds its partitions until its session times out (librdkafka's
        // default is 45 s), or, if it died while the group was rebalancing, until the rebalance
        // timeout, which is `max.poll.interval.ms` (5 min by default); a restarted sink should
        // not wait that long. The loop polls every 50 ms, also while it retries an insert; only
        // one insert longer than 30 s would cost the sink its membership (it rejoins, and
        // rows inserted twice are replaced). The user's `[kafka]` settings come after, and win.
        config
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "30000")
            .set("statistics.interval.ms", "5000");
        for (k, v) in &self.kafka {
            config.set(k, v);
        }
        config
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<Group> = config.create_with_context(Group)?;
        let topics: Vec<&str> = self.topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    /// Inserts `batch` until ClickHouse takes it (or the sink is stopped), polling `consumer`
    /// with its partitions paused meanwhile; then commits its offsets. Returns whether it went
    /// in.
    fn flush(
        &self,
        consumer: &BaseConsumer<Group>,
        connection: &Connection,
        runtime: &tokio::runtime::Handle,
        batch: &Batch,
        rollups: &mut Rollups,
        summary: &mut Summary,
    ) -> bool {
        let mut backoff = Duration::from_millis(200);
        let mut paused = None;
        loop {
            match runtime.block_on(write(&connection.client, batch, rollups)) {
                Ok(plan) => {
                    rollups.done(&plan);
                    break;
                }
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
        let mut rollups = Rollups::new(self.config.rollup_window_ms, self.config.rollup_grace_ms);
        let age = Duration::from_millis(self.config.batch_ms);
        self.health.clickhouse(true);
        // When there is nothing to insert, a ping keeps `/readyz` honest about ClickHouse.
        let mut contact = Instant::now();
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
                && self.flush(
                    &consumer,
                    connection,
                    runtime,
                    &batch,
                    &mut rollups,
                    &mut summary,
                )
            {
                batch = Batch::default();
                contact = Instant::now();
            }
            if contact.elapsed() >= PING_EVERY {
                contact = Instant::now();
                let ping = connection.client.query("SELECT 1").execute();
                let up = runtime
                    .block_on(tokio::time::timeout(PING_EVERY, ping))
                    .is_ok_and(|r| r.is_ok());
                self.health.clickhouse(up);
            }
        }
        if !batch.is_empty() {
            self.flush(
                &consumer,
                connection,
                runtime,
                &batch,
                &mut rollups,
                &mut summary,
            );
        }
        Ok(summary)
    }
}
