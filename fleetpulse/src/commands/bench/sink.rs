//! `fleetpulse bench sink`: the ClickHouse sink draining a pre-filled topic of window aggregates
//! beside a raw `clickhouse` crate insert of the same rows, in one run, into the same server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use clickhouse_sink::batch::{Batch, Consumed, Table};
use clickhouse_sink::rows::AggregateRow;
use clickhouse_sink::server::Target;
use clickhouse_sink::sink::{Health, Sink};
use clickhouse_sink::{Connection, ddl};
use rdkafka::producer::{BaseRecord, Producer};
use schemas::{Codec, WindowAggregate};

use crate::commands::KafkaArgs;
use crate::config::Config;

/// Flags of `bench sink`.
#[derive(Debug, Args)]
pub struct SinkBench {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// The ClickHouse HTTP interface (`clickhouse.url`).
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// Rows to move.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Turns of (a) then (b); the median ratio is the result (the machine is shared and noisy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

impl SinkBench {
    pub(crate) fn overrides(&self, into: &mut Vec<crate::config::Override>) {
        self.kafka.overrides(into);
        if let Some(u) = &self.url {
            into.push(("clickhouse.url".into(), toml::Value::String(u.clone())));
        }
    }
}

/// Aggregates of 10,000 devices over consecutive minutes, as the pipeline would emit them.
fn aggregate(i: u64) -> WindowAggregate {
    let device = i % 10_000;
    let failed = i.is_multiple_of(7);
    let start = 1_700_000_000_000 + (i / 10_000) as i64 * 60_000;
    WindowAggregate {
        tenant_id: format!("tenant-{:02}", device % 20),
        device_id: format!("dev-{device:06}"),
        device_class: Some("sensor".into()),
        window_start: start,
        window_end: start + 60_000,
        count: 6,
        errors: i64::from(failed),
        error_rate: if failed { 1.0 / 6.0 } else { 0.0 },
        rt_min: Some(10.0 + (i % 13) as f64),
        rt_mean: Some(40.0 + (i % 17) as f64),
        rt_p50: Some(38.0),
        rt_p95: Some(90.0),
        rt_p99: Some(110.0),
        rt_max: Some(120.0),
        battery_last: Some(80.0),
        battery_min: Some(79.5),
        signal_mean: Some(-70.0),
        health_score: 97.5,
        event_id: format!(
            "agg/tenant-{:02}/dev-{device:06}/60000/{start}",
            device % 20
        ),
        clock_offset_ms: None,
    }
}

/// CPU seconds this process has used (user and system), from `/proc/self/stat`; 0 where that
/// cannot be read. With wall time it tells waiting from working.
pub(super) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; the kernel
    // counts them in USER_HZ, 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

async fn count(connection: &Connection) -> u64 {
    connection
        .client
        .query("SELECT count() FROM device_aggregates")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

async fn connect(config: &Config, database: &str) -> anyhow::Result<Connection> {
    let c = &config.clickhouse;
    let target = Target {
        database: database.into(),
        ..c.target()
    };
    Connection::open(&target)
        .await
        .with_context(|| format!("cannot reach ClickHouse at {}", c.url))
}

async fn open(config: &Config, database: &str) -> anyhow::Result<Connection> {
    let connection = connect(config, database).await?;
    ddl::apply(&connection, database, 0).await?;
    Ok(connection)
}

/// (a): `rows` through the `clickhouse` crate, 100,000 per insert. Returns rows/s.
async fn raw_insert(connection: &Connection, rows: &[AggregateRow]) -> anyhow::Result<f64> {
    let started = Instant::now();
    for chunk in rows.chunks(100_000) {
        let mut insert = connection
            .client
            .insert::<AggregateRow>("device_aggregates")
            .await?;
        for row in chunk {
            insert.write(row).await?;
        }
        insert.end().await?;
    }
    Ok(rows.len() as f64 / started.elapsed().as_secs_f64())
}

/// (b): the sink (consume, decode, batch, insert, rollups, commit) drains `topic` into
/// `database` with a group of its own, timed from its start until every row is in. Returns
/// rows/s and how busy this process was, in % of one core.
async fn sink(
    config: &Config,
    codec: &Codec,
    topic: &str,
    database: &str,
    rows: u64,
) -> anyhow::Result<(f64, f64)> {
    let sink_connection = open(config, database).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sink = Sink {
        config: clickhouse_sink::SinkConfig {
            database: database.into(),
            group_id: database.into(),
            ..config.clickhouse.clone()
        },
        kafka: crate::kafka::properties(config)?.into_iter().collect(),
        topics: vec![(topic.into(), Table::Aggregates)],
        codec: Arc::new(codec.clone()),
        stop: Arc::clone(&stop),
        health: Arc::new(Health::default()),
    };
    let runtime = tokio::runtime::Handle::current();
    let connection = sink_connection.clone();
    let started = Instant::now();
    let cpu = cpu_seconds();
    let worker = tokio::task::spawn_blocking(move || sink.run(&connection, &runtime));
    while count(&sink_connection).await < rows {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1_800),
            "the sink did not drain the topic"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let busy = 100.0 * (cpu_seconds() - cpu) / seconds;
    stop.store(true, Ordering::Relaxed);
    worker.await.context("the sink thread failed")??;
    Ok((rows as f64 / seconds, busy))
}

/// Waits (a minute at most) until ClickHouse runs no merge, twice in a row.
async fn quiet(connection: &Connection) {
    let started = Instant::now();
    let mut calm = 0;
    while calm < 2 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let merges = connection
            .client
            .query("SELECT count() FROM system.merges")
            .fetch_one::<u64>()
            .await;
        match merges {
            Ok(0) => calm += 1,
            Ok(_) => calm = 0,
            Err(e) => {
                println!("cannot tell whether ClickHouse is merging ({e}); going on");
                return;
            }
        }
    }
    if calm < 2 {
        println!("ClickHouse still merging after a minute; going on");
    }
}

pub(crate) async fn run(config: &Config, args: SinkBench) -> anyhow::Result<()> {
    let id = format!("bench_sink_{}", std::process::id());
    let codec = Codec::builtin();
    let records: Vec<WindowAggregate> = (0..args.rows).map(aggregate).collect();

    // The topic the sink drains, filled first.
    let topic = format!("{id}-aggregates");
    crate::kafka::ensure_topic(config, &topic, 4).await?;
    let producer = crate::kafka::producer(config, &[("linger.ms", "20")])?;
    for r in &records {
        let value = codec.encode(r)?;
        let mut record = BaseRecord::to(&topic)
            .key(r.device_id.as_str())
            .payload(&value);
        while let Err((e, back)) = producer.send(record) {
            if !matches!(
                e,
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull
                )
            ) {
                return Err(e.into());
            }
            record = back;
            producer.poll(Duration::from_millis(10));
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    println!("bench sink: {} window aggregates in {topic}", args.rows);

    let rows: Vec<AggregateRow> = records.iter().map(AggregateRow::from).collect();
    let admin = connect(config, "default").await?;

    // (c), for where the ceiling is: one consumer reads the topic and adds every record to a batch
    // as the sink does, with nothing inserted.
    let cpu = cpu_seconds();
    let (read, consume_s) = tokio::task::block_in_place(|| {
        let codec = Codec::builtin();
        let mut batch = Batch::with_capacity(100_000);
        super::pipeline::raw_consume(config, &topic, |value| {
            if batch.rows() == 100_000 {
                batch.clear();
            }
            batch
                .add(
                    &codec,
                    Table::Aggregates,
                    &Consumed::value(&topic, 0, 0, value),
                )
                .is_ok()
        })
    })?;
    let consume_rate = read as f64 / consume_s;
    println!(
        "(c) raw consume + encode to rows  {consume_rate:>10.0} rows/s   (this process busy {:.0} % of one core)",
        100.0 * (cpu_seconds() - cpu) / consume_s
    );

    // (a) and (b) in turns, each into a fresh database on a server that has finished merging
    // what the turn before inserted: the merges of one side's parts are not the other's cost.
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        let raw_db = format!("{id}_raw_{round}");
        let raw = open(config, &raw_db).await?;
        let raw_rate = raw_insert(&raw, &rows).await?;
        quiet(&admin).await;
        let sink_db = format!("{id}_sink_{round}");
        let (rate, busy) = sink(config, &codec, &topic, &sink_db, args.rows).await?;
        quiet(&admin).await;
        let ratio = rate / raw_rate;
        ratios.push(ratio);
        println!(
            "round {round}: (a) raw clickhouse insert {raw_rate:>8.0} rows/s   (b) fleetpulse sink clickhouse {rate:>8.0} rows/s (this process busy {busy:.0} % of one core)   b/a {ratio:.2}   b/c {:.2}",
            rate / consume_rate
        );
        for db in [raw_db, sink_db] {
            let _ = admin
                .client
                .query(&format!("DROP DATABASE IF EXISTS {db}"))
                .execute()
                .await;
        }
    }
    ratios.sort_by(f64::total_cmp);
    let middle = ratios.len() / 2;
    let median = if ratios.len() % 2 == 1 {
        ratios[middle]
    } else {
        (ratios[middle - 1] + ratios[middle]) / 2.0
    };
    println!(
        "ratio b/a, median of {} rounds: {median:.2}  (sink against raw insert; target 0.5)",
        ratios.len()
    );
    Ok(())
}
