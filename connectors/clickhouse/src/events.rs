//! The sink's Prometheus metrics, named in one place: every count and gauge it reports goes
//! through a function here, so the names and labels a dashboard depends on are in one file.
#![allow(clippy::disallowed_macros)] // the one module that may call the raw macros

use std::time::Instant;

use metrics::{counter, gauge, histogram};

use crate::batch::Table;

/// Whether ClickHouse answers (1) or not (0).
pub fn clickhouse_up(up: bool) {
    gauge!("fleetpulse_sink_clickhouse_up").set(if up { 1.0 } else { 0.0 });
}

/// Whether Kafka answers (1) or not (0).
pub fn kafka_up(up: bool) {
    gauge!("fleetpulse_sink_kafka_up").set(if up { 1.0 } else { 0.0 });
}

/// The consumer group's lag on `topic`, from librdkafka's statistics.
pub fn consumer_lag(topic: &str, lag: i64) {
    gauge!("fleetpulse_sink_consumer_lag", "topic" => topic.to_string()).set(lag as f64);
}

/// An insert of `rows` into `table` that began at `started` went in.
pub fn inserted(table: Table, rows: usize, started: Instant) {
    histogram!("fleetpulse_sink_insert_seconds", "table" => table.name())
        .record(started.elapsed().as_secs_f64());
    counter!("fleetpulse_sink_rows_inserted_total", "table" => table.name()).increment(rows as u64);
}

/// A derived record that did not decode (skipped).
pub fn undecodable() {
    counter!("fleetpulse_sink_undecodable_total").increment(1);
}

/// A batch of `rows` committed.
pub fn committed(rows: usize) {
    histogram!("fleetpulse_sink_batch_rows").record(rows as f64);
}

/// An insert or rollup write retried.
pub fn retried() {
    counter!("fleetpulse_sink_insert_retries_total").increment(1);
}

/// A batch's rollup periods written, begun at `started`.
pub fn rollups_written(periods: usize, started: Instant) {
    histogram!("fleetpulse_sink_rollup_seconds").record(started.elapsed().as_secs_f64());
    counter!("fleetpulse_sink_rollup_periods_total").increment(periods as u64);
}
