//! The sink's loop: consume the derived topics in a consumer group, batch, insert, and only then
//! commit the offsets. Consuming and inserting overlap: the next batch fills while the one before
//! goes in. While ClickHouse refuses, the batch is retried with exponential backoff and jitter
//! and, once the next batch has grown to twice the limits, consuming waits and then the
//! partitions are paused (still polled, so the group keeps them), so nothing piles up in memory
//! and nothing is committed that is not in ClickHouse. A record inserted twice (a retry after a
//! partial failure, a restart before the commit) has the same natural key and payload and is
//! seen once by queries that read with `FINAL`.

mod consume;
mod health;
mod service;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use schemas::Codec;

use crate::batch::{Batch, Table};
use crate::config::SinkConfig;
use crate::events;
use crate::rollup::Rollups;
use crate::server::{Connection, SinkError};
use consume::{Held, Loop};
pub use health::Health;
pub use service::insert_batch;
use service::{Finished, Staged, Stages};

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
        let mut state = Loop::new(self, consumer);
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            state.collect(&emptied, &done);
            if !state.in_flight {
                state.full_since = None;
            }
            if state.due(stopping) && !state.in_flight && !state.abandoned {
                if !state.hand_over(&batches) {
                    break;
                }
            } else if state.full_while_in_flight() && state.hold_back() == Held::Waiting {
                // The batch coming back is taken at the top of the loop.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if stopping {
                // After a batch was given up on, what is in hand is left to the next start.
                if state.settled() {
                    break;
                }
                // Nothing more is taken: wait for what is in flight (the stages give up on it
                // if ClickHouse refuses).
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            state.poll_burst();
            state.ping(connection, runtime);
        }
        drop(batches);
        let Loop {
            mut summary, fatal, ..
        } = state;
        summary.retries =
            runtime.block_on(inserter).unwrap_or(0) + runtime.block_on(refresher).unwrap_or(0);
        match fatal {
            Some(e) => Err(RunError::Sink(e)),
            None => Ok(summary),
        }
    }
}
