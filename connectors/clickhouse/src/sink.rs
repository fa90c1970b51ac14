//! The sink's loop: consume the derived topics in a consumer group, batch, insert, and only then
//! commit the offsets. Consuming and inserting overlap: the next batch fills while the one before
//! goes in. While ClickHouse refuses, the batch is retried with exponential backoff and jitter
//! and, once the next batch has grown to twice the limits, consuming waits and then the
//! partitions are paused (still polled, so the group keeps them), so nothing piles up in memory
//! and nothing is committed that is not in ClickHouse. A record inserted twice (a retry after a
//! partial failure, a restart before the commit) has the same natural key and payload and is
//! seen once by queries that read with `FINAL`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clickhouse::{Client, RowOwned, RowWrite};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Codec;
use schemas::retry::{Backoff, Delays, Retryable};

use crate::batch::{Batch, Table};
use crate::config::SinkConfig;
use crate::encoded::{AGGREGATE_COLUMNS, AggregateRows};
use crate::events;
use crate::rollup::{Plan, Rollups, Versions};
use crate::server::{Connection, SinkError};

/// How long a full batch waits for a busy inserter with the consumer simply not polled before
/// the partitions are paused: a pause drops what librdkafka prefetched, and the resume fetches
/// it again (a stall of up to a second each time), which an insert that is merely slow does not
/// deserve; a ClickHouse that is down does. librdkafka's prefetch is bounded on its own.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Records taken per turn of the loop: its bookkeeping (channels, clocks, limits) cost as much as
/// decoding when it ran for every record.
const BURST: usize = 512;

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
        events::clickhouse_up(up);
    }

    /// Kafka answers (`true`) or not; called for every record, so the gauge is only touched
    /// when the state changes.
    fn kafka(&self, up: bool) {
        if self.kafka_down.swap(!up, Ordering::Relaxed) == up {
            events::kafka_up(up);
        }
    }
}

/// Logs the group's decisions (which partitions this sink got or lost) and reports the consumer
/// lag from librdkafka's statistics, which cost the consume loop nothing (asking the brokers for
/// watermarks from the loop blocked it for seconds while a group rebalanced).
struct Group;

impl ClientContext for Group {
    kafka_auth::answer_token_requests!();

    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            let lag: i64 = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0)
                .map(|p| p.consumer_lag.max(0))
                .sum();
            events::consumer_lag(name, lag);
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
    events::inserted(table, rows.len(), started);
    Ok(())
}

/// Inserts window aggregates already in RowBinary, naming their columns.
async fn insert_aggregates(
    client: &Client,
    rows: &AggregateRows,
) -> Result<(), clickhouse::error::Error> {
    let table = Table::Aggregates;
    if rows.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut insert = client.insert_formatted_with(format!(
        "INSERT INTO {} ({}) FORMAT RowBinary",
        table.name(),
        AGGREGATE_COLUMNS.map(|(name, _)| name).join(", ")
    ));
    // In pieces of the size the crate itself sends (each compressed on its own).
    for piece in rows.bytes().chunks(256 * 1024) {
        insert.send(Bytes::copy_from_slice(piece)).await?;
    }
    insert.end().await?;
    events::inserted(table, rows.len(), started);
    Ok(())
}

/// The first half of a batch's turn: inserts its rows and returns the rollup periods it closed
/// or touched, which count as written from here on; the second half is [`Plan::write`], and the
/// batch's offsets are committed only after both. Everything here may run twice (a retry, a
/// restart before the commit): rows inserted twice are replaced on merge and hidden by `FINAL`,
/// and a rollup written twice is the same row.
pub async fn insert_batch(
    client: &Client,
    batch: &Batch,
    rollups: &mut Rollups,
) -> Result<Plan, clickhouse::error::Error> {
    // What the tables already cover must be known before the batch is judged against it.
    rollups.load(client).await?;
    rollups.observe(batch);
    // First: last-seen times are read for how fresh they are, and the aggregates of a backlog
    // batch can take a while to go in.
    insert(client, Table::LastSeen, &batch.last_seen).await?;
    insert_aggregates(client, &batch.aggregates).await?;
    insert(client, Table::Anomalies, &batch.anomalies).await?;
    insert(client, Table::Status, &batch.status).await?;
    insert(client, Table::DeadLetters, &batch.dead_letters).await?;
    let plan = rollups.plan();
    rollups.done(&plan);
    Ok(plan)
}

impl Sink {
    fn consumer(&self) -> Result<BaseConsumer<Group>, RunError> {
        let mut config = ClientConfig::new();
        // A sink that died holds its partitions until its session times out (librdkafka's
        // default is 45 s), or, if it died while the group was rebalancing, until the rebalance
        // timeout, which is `max.poll.interval.ms` (5 min by default); a restarted sink should
        // not wait that long. The loop polls all the time, inserts go on beside it, so 30 s
        // without a poll means the sink is stuck. librdkafka waits `fetch.queue.backoff.ms`
        // (1 s) before fetching for a partition whose prefetch queue was full; the sink empties
        // 100,000 records in a fraction of that, and with the default it spent most of its time
        // waiting for the next fetch (a raw consume went from 150 k to 650 k records/s here).
        // The user's `[kafka]` settings come after, and win.
        config
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "30000")
            .set("fetch.queue.backoff.ms", "10")
            // A fetch that finds nothing new waits this long at the broker; the 500 ms default
            // held up the first fetch after partitions were resumed.
            .set("fetch.wait.max.ms", "100")
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

    /// Runs until `stop`. Three stages overlap, each in order: this thread consumes and batches;
    /// an inserter inserts the batch before ([`insert_batch`]); a refresher writes the rollup
    /// periods each inserted batch closed or touched ([`Plan::write`]), after which this thread
    /// commits the batch's offsets. A batch that is due while the inserter is busy keeps filling,
    /// up to twice the batch limits, and then waits: first without polling (for
    /// [`PAUSE_AFTER`]), then with the partitions paused (still polled, so the group keeps them),
    /// so memory stays bounded (about four batches' worth: one in flight, one filled to twice the
    /// limits, and the buffers kept for reuse) however long ClickHouse is away. Pausing is kept
    /// for that case: librdkafka drops what it prefetched for a paused partition and fetches it
    /// again on resume, which stalled the sink for up to a second. The refresher runs apart so
    /// that recomputing a closed hour (a second or more for a large fleet) does not hold up
    /// inserts.
    pub fn run(
        &self,
        connection: &Connection,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Summary, RunError> {
        let consumer = self.consumer()?;
        let mut summary = Summary::default();
        let mut batch = Batch::with_capacity(self.config.batch_rows.saturating_mul(2));
        let age = Duration::from_millis(self.config.batch_ms);
        self.health.clickhouse(true);
        // Kafka counts as up until the consumer reports otherwise (then the gauge follows it).
        events::kafka_up(true);
        let (batches, inbox) = tokio::sync::mpsc::channel::<Batch>(1);
        let (freed, emptied) = std::sync::mpsc::channel::<Batch>();
        let (staged, to_refresh) = tokio::sync::mpsc::channel::<Staged>(16);
        let (finished, done) = std::sync::mpsc::channel::<Finished>();
        let stages = Stages {
            client: connection.client.clone(),
            stop: Arc::clone(&self.stop),
            health: Arc::clone(&self.health),
        };
        let inserter = runtime.spawn(stages.clone().insert(
            Rollups::new(self.config.rollup_window_ms, self.config.rollup_grace_ms),
            inbox,
            freed,
            staged,
        ));
        let refresher = runtime.spawn(stages.refresh(to_refresh, finished));
        // Whether the inserter has a batch, and how many batches are not committed yet.
        let mut in_flight = false;
        let mut uncommitted = 0usize;
        let mut abandoned = false;
        // What ClickHouse refused in a way no retry can fix: the sink stops and says it.
        let mut fatal: Option<SinkError> = None;
        // The batch that went in last, emptied, to be filled again.
        let mut spare = Batch::with_capacity(self.config.batch_rows.saturating_mul(2));
        let mut paused: Option<TopicPartitionList> = None;
        // Since when a full batch has been waiting for the inserter.
        let mut full_since: Option<Instant> = None;
        let mut caught_up = false;
        // When there is nothing to insert, a ping keeps `/readyz` honest about ClickHouse.
        let mut contact = Instant::now();
        let mut probed = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            while let Ok(empty) = emptied.try_recv() {
                in_flight = false;
                spare = empty;
            }
            while let Ok(mut f) = done.try_recv() {
                uncommitted -= 1;
                // A batch given up on (stopped while ClickHouse refused) is read again on the
                // next start, and so must everything after it: a later commit would move the
                // partitions' positions past it.
                abandoned |= !f.written;
                if let Some(e) = f.fatal.take() {
                    self.stop.store(true, Ordering::Relaxed);
                    fatal.get_or_insert(e);
                }
                if !abandoned {
                    self.commit(&consumer, &f, &mut summary);
                }
                contact = Instant::now();
            }
            // A batch also goes once the consumer has caught up, if it holds a hundredth of the
            // limits (1,000 rows by default, the least ClickHouse advises per insert): the end of
            // a backlog need not wait out `batch_ms`, and a trickle still waits for it (many
            // small inserts make many small parts, which ClickHouse then has to merge).
            let due = !batch.is_empty()
                && (stopping
                    || batch.due(self.config.batch_rows, self.config.batch_bytes, age)
                    || (caught_up
                        && batch.due(
                            self.config.batch_rows.div_ceil(100),
                            self.config.batch_bytes.div_ceil(100),
                            age,
                        )));
            if !in_flight {
                full_since = None;
            }
            if due && !in_flight && !abandoned {
                if let Some(p) = paused.take() {
                    let _ = consumer.resume(&p);
                }
                if batches
                    .blocking_send(std::mem::replace(&mut batch, std::mem::take(&mut spare)))
                    .is_err()
                {
                    break;
                }
                in_flight = true;
                uncommitted += 1;
            } else if in_flight
                && batch.due(
                    self.config.batch_rows.saturating_mul(2),
                    self.config.batch_bytes.saturating_mul(2),
                    Duration::MAX,
                )
            {
                let since = *full_since.get_or_insert_with(Instant::now);
                if since.elapsed() < PAUSE_AFTER {
                    // The batch coming back is taken at the top of the loop.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                // Paused again if a rebalance brought partitions that are not.
                let assigned = consumer.assignment().ok();
                let count = |p: &Option<TopicPartitionList>| p.as_ref().map(|p| p.count());
                if count(&assigned) != count(&paused) {
                    paused = assigned;
                    if let Some(p) = &paused {
                        let _ = consumer.pause(p);
                    }
                }
            }
            if stopping {
                // After a batch was given up on, what is in hand is left to the next start.
                if !in_flight && (batch.is_empty() || abandoned) && uncommitted == 0 {
                    break;
                }
                // Nothing more is taken: wait for what is in flight (the stages give up on it
                // if ClickHouse refuses).
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            caught_up = false;
            // A paused consumer returns no records but keeps its group membership alive. The
            // first poll may wait; the rest of a burst takes what is already fetched.
            let mut wait = Duration::from_millis(if in_flight { 5 } else { 50 });
            for _ in 0..BURST {
                match consumer.poll(wait) {
                    Some(Ok(m)) => {
                        self.health.kafka(true);
                        self.take(&mut batch, &m, &mut summary);
                    }
                    Some(Err(e)) => {
                        self.health.kafka(false);
                        tracing::warn!(error = %e, "kafka");
                        break;
                    }
                    // Nothing within the wait: caught up. Nothing at once, mid-burst: the
                    // next fetch may simply not have landed yet.
                    None if wait.is_zero() => break,
                    None => {
                        caught_up = paused.is_none();
                        // Quiet topics bring no record to say the brokers are back: they are
                        // asked.
                        if self.health.kafka_down.load(Ordering::Relaxed)
                            && probed.elapsed() >= PING_EVERY
                        {
                            probed = Instant::now();
                            let answered = consumer
                                .fetch_metadata(None, Duration::from_secs(1))
                                .is_ok();
                            self.health.kafka(answered);
                        }
                        break;
                    }
                }
                wait = Duration::ZERO;
                // While an insert is in flight the batch may grow to twice the limits.
                let limit = if in_flight { 2 } else { 1 };
                if batch.due(
                    self.config.batch_rows.saturating_mul(limit),
                    self.config.batch_bytes.saturating_mul(limit),
                    Duration::MAX,
                ) {
                    break;
                }
            }
            if uncommitted == 0 && contact.elapsed() >= PING_EVERY {
                contact = Instant::now();
                let ping = connection.client.query("SELECT 1").execute();
                let up = runtime
                    .block_on(tokio::time::timeout(PING_EVERY, ping))
                    .is_ok_and(|r| r.is_ok());
                self.health.clickhouse(up);
            }
        }
        drop(batches);
        summary.retries =
            runtime.block_on(inserter).unwrap_or(0) + runtime.block_on(refresher).unwrap_or(0);
        match fatal {
            Some(e) => Err(RunError::Sink(e)),
            None => Ok(summary),
        }
    }

    /// Adds a consumed record to `batch`.
    fn take(
        &self,
        batch: &mut Batch,
        m: &rdkafka::message::BorrowedMessage<'_>,
        summary: &mut Summary,
    ) {
        let Some(table) = self
            .topics
            .iter()
            .find(|(t, _)| t == m.topic())
            .map(|(_, table)| *table)
        else {
            return;
        };
        let value = m.payload().unwrap_or_default();
        if let Err(e) = batch.add(
            &self.codec,
            table,
            m.topic(),
            m.partition(),
            m.offset(),
            value,
        ) {
            summary.undecodable += 1;
            events::undecodable();
            tracing::error!(error = %e, topic = m.topic(), partition = m.partition(), offset = m.offset(), "a derived record does not decode; skipped");
        }
    }

    /// Commits the offsets of a batch that went in, rollups and all.
    fn commit(&self, consumer: &BaseConsumer<Group>, f: &Finished, summary: &mut Summary) {
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, next) in &f.offsets {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
            // After a rebalance the new owner reads these again: the rows are in twice, and
            // replaced on merge; queries read with FINAL.
            tracing::warn!(error = %e, "cannot commit offsets");
        }
        summary.rows += f.rows as u64;
        events::committed(f.rows);
    }
}

/// A batch whose rows went in (or did not), on its way to the refresher.
struct Staged {
    /// Whether its rows went in (they did not if the sink was stopped while ClickHouse refused).
    inserted: bool,
    /// Why they did not, when no retry could help.
    fatal: Option<SinkError>,
    /// The rollup periods to write before its offsets are committed.
    plan: Plan,
    /// Its rows.
    rows: usize,
    /// Per (topic, partition), the next offset to read.
    offsets: Vec<(String, i32, i64)>,
}

/// What became of a batch: whether everything it needs is written, and what to commit.
struct Finished {
    written: bool,
    fatal: Option<SinkError>,
    rows: usize,
    offsets: Vec<(String, i32, i64)>,
}

/// What a stage does after a failed attempt.
enum Next {
    Retry,
    /// The batch is left to the next start; with the error, when no retry could help.
    GiveUp(Option<SinkError>),
}

/// What the inserter and the refresher share.
#[derive(Clone)]
struct Stages {
    client: Client,
    stop: Arc<AtomicBool>,
    health: Arc<Health>,
}

impl Stages {
    /// After an attempt at ClickHouse failed: reports ClickHouse down and, if a retry can
    /// help, counts it and waits ([`Backoff::Refused`]). What to do next: try again, or give
    /// up on the batch (the sink is stopping, or no retry can help), which leaves it to be read
    /// again on the next start.
    async fn failed(
        &self,
        what: &str,
        error: clickhouse::error::Error,
        delays: &mut Delays,
        retries: &mut u64,
    ) -> Next {
        self.health.clickhouse(false);
        let error = SinkError::ClickHouse(error);
        if !error.is_retryable() {
            tracing::error!(error = %error, "{what} refused in a way no retry can fix; the sink stops");
            return Next::GiveUp(Some(error));
        }
        *retries += 1;
        events::retried();
        let wait = delays.next_wait();
        tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
        tokio::time::sleep(wait).await;
        if self.stop.load(Ordering::Relaxed) {
            tracing::warn!(
                "stopped while ClickHouse refuses: the batch is not committed and will be read again"
            );
            return Next::GiveUp(None);
        }
        Next::Retry
    }

    /// Inserts the batches it is handed, one at a time and in order; hands each back emptied
    /// (the inserter is free) and passes it on to the refresher. Returns the retries.
    async fn insert(
        self,
        mut rollups: Rollups,
        mut inbox: tokio::sync::mpsc::Receiver<Batch>,
        freed: std::sync::mpsc::Sender<Batch>,
        staged: tokio::sync::mpsc::Sender<Staged>,
    ) -> u64 {
        let mut retries = 0;
        while let Some(mut batch) = inbox.recv().await {
            let mut delays = Backoff::Refused.delays();
            let plan = loop {
                match insert_batch(&self.client, &batch, &mut rollups).await {
                    Ok(plan) => {
                        self.health.clickhouse(true);
                        break Ok(plan);
                    }
                    Err(e) => {
                        if let Next::GiveUp(fatal) =
                            self.failed("insert", e, &mut delays, &mut retries).await
                        {
                            break Err(fatal);
                        }
                    }
                }
            };
            let (inserted, plan, fatal) = match plan {
                Ok(plan) => (true, plan, None),
                Err(fatal) => (false, Plan::default(), fatal),
            };
            let next = Staged {
                inserted,
                fatal,
                plan,
                rows: batch.rows(),
                offsets: batch
                    .offsets()
                    .map(|(t, p, o)| (t.to_string(), p, o))
                    .collect(),
            };
            batch.clear();
            if freed.send(batch).is_err() || staged.send(next).await.is_err() {
                break;
            }
        }
        retries
    }

    /// Writes the rollup periods of each inserted batch, in order, and reports it finished.
    /// Returns the retries.
    async fn refresh(
        self,
        mut inbox: tokio::sync::mpsc::Receiver<Staged>,
        finished: std::sync::mpsc::Sender<Finished>,
    ) -> u64 {
        let mut retries = 0;
        let mut versions = Versions::default();
        while let Some(next) = inbox.recv().await {
            let mut written = next.inserted;
            let mut fatal = next.fatal;
            if written && !next.plan.is_empty() {
                let started = Instant::now();
                let mut delays = Backoff::Refused.delays();
                written = loop {
                    match next.plan.write(&self.client, &mut versions).await {
                        Ok(()) => {
                            self.health.clickhouse(true);
                            break true;
                        }
                        Err(e) => {
                            if let Next::GiveUp(refused) =
                                self.failed("rollup", e, &mut delays, &mut retries).await
                            {
                                fatal = refused;
                                break false;
                            }
                        }
                    }
                };
                events::rollups_written(next.plan.hours.len() + next.plan.days.len(), started);
            }
            let report = Finished {
                written,
                fatal,
                rows: next.rows,
                offsets: next.offsets,
            };
            if finished.send(report).is_err() {
                break;
            }
        }
        retries
    }
}
