//! `fleetpulse sink clickhouse` against real services: a generated fleet goes through the
//! pipeline into the derived topics, the sink consumes them into Debian's `clickhouse-server`
//! (18.16), and every table, read as the documented queries read it (`FINAL`), holds exactly the
//! records of its topic, once each. A restarted sink adds nothing (its offsets were committed).
//! With ClickHouse killed mid-stream and started again 30 s later, or the sink killed with
//! SIGKILL mid-batch and started again, nothing is lost and nothing shows twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Child;
use std::time::Duration;

use clickhouse::{RowOwned, RowRead};
use clickhouse_sink::Connection;
use clickhouse_sink::rows::{AggregateRow, AnomalyRow, DeadLetterRow, StatusRow};
use clickhouse_sink::server::Target;
use pipeline::output::Output;
use support::*;
use testkit::{Kind, shared, unique};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A sink process, killed if a failed assertion leaves it running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the sink on the derived topics of `prefix` into `database`.
fn sink(
    brokers: &str,
    url: &str,
    prefix: &str,
    database: &str,
    extra: &[&str],
) -> (Running, String) {
    let (child, http) = spawn_serving(
        fleetpulse()
            .args(["sink", "clickhouse", "--brokers", brokers, "--url", url])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--set", &format!("clickhouse.database={database}")])
            .args(["--set", &format!("clickhouse.group_id={database}")])
            .args(derived_topics(prefix))
            .args(extra),
    );
    (Running(child), http)
}

async fn rows<T: RowOwned + RowRead>(c: &Connection, table: &str) -> Vec<T> {
    c.client
        .query(&format!(
            "SELECT ?fields FROM {table} FINAL ORDER BY event_id"
        ))
        .fetch_all::<T>()
        .await
        .unwrap()
}

async fn count(c: &Connection, table: &str, fin: bool) -> u64 {
    let fin = if fin { "FINAL" } else { "" };
    c.client
        .query(&format!("SELECT count() FROM {table} {fin}"))
        .fetch_one::<u64>()
        .await
        .unwrap()
}

const TABLES: [&str; 4] = [
    "device_aggregates",
    "device_anomalies",
    "device_status",
    "dead_letters",
];

/// What the tables must hold: the derived records as rows, each table's sorted by `event_id`.
struct Want {
    aggregates: Vec<AggregateRow>,
    anomalies: Vec<AnomalyRow>,
    status: Vec<StatusRow>,
    dead_letters: Vec<DeadLetterRow>,
}

impl Want {
    fn total(&self) -> u64 {
        (self.aggregates.len() + self.anomalies.len() + self.status.len() + self.dead_letters.len())
            as u64
    }
}

/// A fleet through the pipeline: the derived topics' prefix and what the tables must hold.
fn derived_fleet(brokers: &str, events: &str) -> (String, Want) {
    let telemetry = unique("sink-telemetry");
    run_ok(fleetpulse().args([
        "generate",
        "--brokers",
        brokers,
        "--topic",
        &telemetry,
        "--devices",
        "300",
        "--events",
        events,
        "--seed",
        "5",
        "--no-progress",
        "--start-ms",
        &START_MS.to_string(),
        "--set",
        "generate.silence_rate=0.003",
    ]));
    let prefix = unique("sink-derived");
    run_ok(
        fleetpulse()
            .args([
                "pipeline",
                "--brokers",
                brokers,
                "--listen",
                "127.0.0.1:0",
                "--until-end",
            ])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(derived_topics(&prefix)),
    );
    let mut want = Want {
        aggregates: Vec::new(),
        anomalies: Vec::new(),
        status: Vec::new(),
        dead_letters: Vec::new(),
    };
    for o in &derived_all(brokers, &prefix) {
        match o {
            Output::Aggregate(a) => want.aggregates.push(AggregateRow::from(a)),
            Output::Anomaly(a) => want.anomalies.push(AnomalyRow::from(a)),
            Output::Status(s) => want.status.push(StatusRow::from(s)),
            Output::DeadLetter(d) => want.dead_letters.push(DeadLetterRow::from(d)),
        }
    }
    want.aggregates.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.anomalies.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.status.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.dead_letters
        .sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert!(want.aggregates.len() > 1_000 && !want.status.is_empty());
    assert!(!want.dead_letters.is_empty());
    (prefix, want)
}

/// Connects to `database` on `url` once the sink has created its tables.
async fn connect(url: &str, database: &str) -> Connection {
    let target = Target {
        url: url.to_string(),
        database: database.to_string(),
        user: "default".into(),
        password: String::new(),
        validation: None,
    };
    for _ in 0..300 {
        if let Ok(c) = Connection::open(&target).await
            && c.client
                .query("SELECT count() FROM dead_letters")
                .fetch_one::<u64>()
                .await
                .is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sink did not create its tables");
}

/// Rows over all tables, deduplicated as queries see them (`FINAL`) or as stored (`raw`).
async fn total(c: &Connection, fin: bool) -> u64 {
    let mut n = 0;
    for t in TABLES {
        n += count(c, t, fin).await;
    }
    n
}

/// Waits until every derived record is in, then compares every table with what it must hold.
fn check(rt: &tokio::runtime::Runtime, c: &Connection, want: &Want) {
    let arrived = testkit::wait_for(Duration::from_secs(120), || {
        rt.block_on(total(c, true)) >= want.total()
    });
    assert!(
        arrived,
        "every derived record reaches ClickHouse: {} of {} ({} stored)",
        rt.block_on(total(c, true)),
        want.total(),
        rt.block_on(total(c, false))
    );
    rt.block_on(async {
        assert!(rows::<AggregateRow>(c, "device_aggregates").await == want.aggregates);
        assert!(rows::<AnomalyRow>(c, "device_anomalies").await == want.anomalies);
        assert!(rows::<StatusRow>(c, "device_status").await == want.status);
        assert!(rows::<DeadLetterRow>(c, "dead_letters").await == want.dead_letters);
        assert_eq!(total(c, true).await, want.total(), "none visible twice");
    });
}

fn terminate(running: &mut Running) {
    let term = std::process::Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(running.0.wait().unwrap().success(), "a clean stop");
}

#[test]
fn the_tables_hold_the_derived_topics_once_each() {
    let kafka = shared(Kind::Kafka);
    let clickhouse = shared(Kind::ClickHouse);
    let brokers = kafka.address();
    let (prefix, want) = derived_fleet(brokers, "30000");
    let database = unique("fp_sink").replace('-', "_");
    let (mut child, http) = sink(brokers, clickhouse.address(), &prefix, &database, &[]);
    let rt = runtime();
    let c = rt.block_on(connect(clickhouse.address(), &database));
    check(&rt, &c, &want);
    assert_eq!(http_text(&http, "GET", "/readyz", None).0, 200);
    let (_, metrics) = http_text(&http, "GET", "/metrics", None);
    assert!(
        metrics.contains("fleetpulse_sink_rows_inserted_total"),
        "{metrics}"
    );

    // SIGTERM: the sink stops cleanly; started again, it finds its offsets committed.
    terminate(&mut child);
    let (mut again, _) = sink(brokers, clickhouse.address(), &prefix, &database, &[]);
    std::thread::sleep(Duration::from_secs(3));
    terminate(&mut again);
    assert_eq!(
        rt.block_on(total(&c, false)),
        want.total(),
        "nothing inserted twice, even before merges"
    );
}

/// Small batches, so that the stream is still flowing when the fault comes.
const SMALL_BATCHES: [&str; 4] = [
    "--set",
    "clickhouse.batch_rows=100",
    "--set",
    "clickhouse.batch_ms=20",
];

/// Batches so small that inserting the fleet takes seconds: ClickHouse goes away mid-stream.
const TINY_BATCHES: [&str; 4] = [
    "--set",
    "clickhouse.batch_rows=20",
    "--set",
    "clickhouse.batch_ms=10",
];

#[test]
fn clickhouse_stopped_for_30_s_mid_stream_loses_nothing() {
    let kafka = shared(Kind::Kafka);
    let brokers = kafka.address();
    let dir = tempfile::tempdir().unwrap();
    let ch_dir = dir.path().join("clickhouse");
    let mut clickhouse = testkit::Service::start_in(Kind::ClickHouse, &ch_dir);
    let url = clickhouse.address().to_string();
    let (prefix, want) = derived_fleet(brokers, "200000");
    let database = unique("fp_outage").replace('-', "_");
    let (mut child, http) = sink(brokers, &url, &prefix, &database, &TINY_BATCHES);
    let rt = runtime();
    let c = rt.block_on(connect(&url, &database));
    // The sink has its tables and is joining its group (Kafka holds a new group back for 3 s):
    // the backlog meets a ClickHouse that is gone.
    let before = rt.block_on(total(&c, true));
    clickhouse.kill();
    assert!(
        before < want.total(),
        "stopped mid-stream ({before} of {})",
        want.total()
    );
    let unready = testkit::wait_for(Duration::from_secs(20), || {
        http_text(&http, "GET", "/readyz", None).0 == 503
    });
    assert!(unready, "/readyz reports ClickHouse gone");
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        matches!(child.0.try_wait(), Ok(None)),
        "the sink waits for ClickHouse"
    );
    let clickhouse = testkit::Service::start_in(Kind::ClickHouse, &ch_dir);
    assert_eq!(clickhouse.address(), url);
    let c = rt.block_on(connect(&url, &database));
    check(&rt, &c, &want);
    assert!(testkit::wait_for(Duration::from_secs(20), || {
        http_text(&http, "GET", "/readyz", None).0 == 200
    }));
    let (_, metrics) = http_text(&http, "GET", "/metrics", None);
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("fleetpulse_sink_insert_retries_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        retries > 0.0,
        "inserts were retried during the outage: {metrics}"
    );
    terminate(&mut child);
}

#[test]
fn a_sink_killed_mid_batch_loses_nothing() {
    let kafka = shared(Kind::Kafka);
    let clickhouse = shared(Kind::ClickHouse);
    let brokers = kafka.address();
    let (prefix, want) = derived_fleet(brokers, "60000");
    let database = unique("fp_killed").replace('-', "_");
    let rt = runtime();
    let mut c = None;
    for _ in 0..2 {
        let (child, _) = sink(
            brokers,
            clickhouse.address(),
            &prefix,
            &database,
            &SMALL_BATCHES,
        );
        let connection = rt.block_on(connect(clickhouse.address(), &database));
        let before = rt.block_on(total(&connection, false));
        assert!(testkit::wait_for(Duration::from_secs(60), || {
            rt.block_on(total(&connection, false)) > before
        }));
        assert!(
            rt.block_on(total(&connection, true)) < want.total(),
            "killed mid-stream"
        );
        drop(child);
        c = Some(connection);
    }
    let (mut child, _) = sink(brokers, clickhouse.address(), &prefix, &database, &[]);
    check(&rt, &c.unwrap(), &want);
    terminate(&mut child);
}
