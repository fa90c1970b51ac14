//! The sink's side of ClickHouse: a batch's inserts (rows through the crate, window aggregates
//! as RowBinary already encoded) and its rollups, and the two stages that run them in order
//! beside the consume loop, retrying what may pass ([`Backoff::Refused`]) and giving up on a
//! batch, uncommitted, when the sink stops or no retry can help.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use clickhouse::{Client, RowOwned, RowWrite};
use schemas::retry::{Backoff, Delays, Retryable};

use super::Health;
use crate::batch::{Batch, Table};
use crate::encoded::{AGGREGATE_COLUMNS, AggregateRows};
use crate::events;
use crate::rollup::{Plan, Rollups, Versions};
use crate::server::SinkError;

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
    insert(client, Table::Inventory, &batch.inventory).await?;
    let plan = rollups.plan();
    rollups.done(&plan);
    Ok(plan)
}

/// A batch whose rows went in (or did not), on its way to the refresher.
pub(super) struct Staged {
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
pub(super) struct Finished {
    pub(super) written: bool,
    pub(super) fatal: Option<SinkError>,
    pub(super) rows: usize,
    pub(super) offsets: Vec<(String, i32, i64)>,
}

/// What a stage does after a failed attempt.
enum Next {
    Retry,
    /// The batch is left to the next start; with the error, when no retry could help.
    GiveUp(Option<SinkError>),
}

/// What the inserter and the refresher share.
#[derive(Clone)]
pub(super) struct Stages {
    pub(super) client: Client,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) health: Arc<Health>,
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
    pub(super) async fn insert(
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
    pub(super) async fn refresh(
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
