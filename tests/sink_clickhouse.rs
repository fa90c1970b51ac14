//! `fleetpulse sink clickhouse` against real services: a generated fleet goes through the
//! pipeline into the derived topics, the sink consumes them into Debian's `clickhouse-server`
//! (18.16), and every table, read as the documented queries read it (`FINAL`), holds exactly the
//! records of its topic, once each. A restarted sink adds nothing (its offsets were committed); a
//! table changed by hand stops it at start-up.
//! With ClickHouse killed mid-stream and started again 30 s later, or the sink killed with
//! SIGKILL mid-batch and started again, nothing is lost and nothing shows twice. And every query
//! of docs/queries.md, run on a fleet that crosses midnight, answers what the reference model says.
//! `device_last_seen` holds, per device, the newest of its last-seen records, even when an older
//! one arrives after it, within about a batch time (`clickhouse.batch_ms`) of the record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::model;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse_sink::Connection;
use clickhouse_sink::rows::{AggregateRow, AnomalyRow, DeadLetterRow, LastSeenRow, StatusRow};
use e2e::clickhouse::{ask, connect, documented_queries, rows};
use e2e::*;
use pipeline::PipelineConfig;
use pipeline::output::Output;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use schemas::{AnomalyState, Codec, DeviceStatus, LastSeen, Record};
use testkit::{Kind, shared, unique};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
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
    /// Per device, its last-seen record with the largest `last_seen`.
    last_seen: Vec<LastSeenRow>,
    /// The records of the last-seen topic: the most rows `device_last_seen` may store.
    last_seen_records: u64,
}

impl Want {
    /// Rows of the history tables, one per record.
    fn total(&self) -> u64 {
        (self.aggregates.len() + self.anomalies.len() + self.status.len() + self.dead_letters.len())
            as u64
    }
}

/// Per (tenant, device), the record with the largest `last_seen` of `records` (in topic order: of
/// two with the same time, the later, as ClickHouse keeps the row inserted last), by `event_id`.
fn newest_per_device<'a>(records: impl IntoIterator<Item = &'a LastSeen>) -> Vec<LastSeenRow> {
    let mut newest: BTreeMap<(&str, &str), &LastSeen> = BTreeMap::new();
    for r in records {
        let key = (r.tenant_id.as_str(), r.device_id.as_str());
        if newest.get(&key).is_none_or(|n| n.last_seen <= r.last_seen) {
            newest.insert(key, r);
        }
    }
    let mut rows: Vec<LastSeenRow> = newest.into_values().map(LastSeenRow::from).collect();
    rows.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    rows
}

/// A fleet through the pipeline: the derived topics' prefix and what the tables must hold.
fn derived_fleet(brokers: &str, events: &str) -> (String, Want) {
    let (_, prefix, want) = derived_fleet_at(brokers, "300", events, START_MS, &[]);
    (prefix, want)
}

/// The same for `devices` from `start_ms` on, with more `generate` flags; also names the
/// telemetry topic.
fn derived_fleet_at(
    brokers: &str,
    devices: &str,
    events: &str,
    start_ms: i64,
    extra: &[&str],
) -> (String, String, Want) {
    let telemetry = unique("sink-telemetry");
    generate_fleet(brokers, &telemetry, (devices, events, "5"), start_ms, extra);
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
        last_seen: Vec::new(),
        last_seen_records: 0,
    };
    let derived = derived_all(brokers, &prefix);
    let mut last_seen = Vec::new();
    for o in &derived {
        match o {
            Output::Aggregate(a) => want.aggregates.push(AggregateRow::from(a)),
            Output::Anomaly(a) => want.anomalies.push(AnomalyRow::from(a)),
            Output::Status(s) => want.status.push(StatusRow::from(s)),
            Output::DeadLetter(d) => want.dead_letters.push(DeadLetterRow::from(d)),
            Output::LastSeen(l) => last_seen.push(l),
        }
    }
    want.last_seen = newest_per_device(last_seen.iter().copied());
    want.last_seen_records = last_seen.len() as u64;
    want.aggregates.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.anomalies.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.status.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    want.dead_letters
        .sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert!(want.aggregates.len() > 1_000 && !want.status.is_empty());
    assert!(!want.dead_letters.is_empty());
    (telemetry, prefix, want)
}

/// Rows over all tables, deduplicated as queries see them (`FINAL`) or as stored (`raw`).
async fn total(c: &Connection, fin: bool) -> u64 {
    let mut n = 0;
    for t in TABLES {
        n += count(c, t, fin).await;
    }
    n
}

/// A derived fleet on the shared Kafka, to go into a fresh database on the shared ClickHouse.
struct Fleet {
    brokers: &'static str,
    clickhouse: &'static testkit::Service,
    prefix: String,
    want: Want,
    database: String,
}

/// The derived records of `events` readings, and a database named after `name`.
fn fleet_into_database(events: &str, name: &str) -> Fleet {
    let brokers = shared(Kind::Kafka).address();
    let (prefix, want) = derived_fleet(brokers, events);
    Fleet {
        brokers,
        clickhouse: shared(Kind::ClickHouse),
        prefix,
        want,
        database: unique(name).replace('-', "_"),
    }
}

/// Waits until every derived record is in, then compares every table with what it must hold.
fn check(rt: &tokio::runtime::Runtime, c: &Connection, want: &Want) {
    let arrived = testkit::wait_for(Duration::from_secs(120), || {
        rt.block_on(total(c, true)) >= want.total()
            && rt.block_on(rows::<LastSeenRow>(c, "device_last_seen")) == want.last_seen
    });
    assert!(
        arrived,
        "every derived record reaches ClickHouse: {} of {} ({} stored); last seen of {} of {} devices",
        rt.block_on(total(c, true)),
        want.total(),
        rt.block_on(total(c, false)),
        rt.block_on(count(c, "device_last_seen", true)),
        want.last_seen.len(),
    );
    rt.block_on(async {
        assert!(rows::<AggregateRow>(c, "device_aggregates").await == want.aggregates);
        assert!(rows::<AnomalyRow>(c, "device_anomalies").await == want.anomalies);
        assert!(rows::<StatusRow>(c, "device_status").await == want.status);
        assert!(rows::<DeadLetterRow>(c, "dead_letters").await == want.dead_letters);
        assert!(rows::<LastSeenRow>(c, "device_last_seen").await == want.last_seen);
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
    let Fleet {
        brokers,
        clickhouse,
        prefix,
        want,
        database,
    } = fleet_into_database("30000", "fp_sink");
    let (mut child, http) = sink(brokers, clickhouse.address(), &prefix, &database, &[]);
    let rt = runtime();
    let c = rt.block_on(connect(clickhouse.address(), &database));
    check(&rt, &c, &want);
    // A device's older rows are replaced on merge, which may have happened already: never more
    // rows than records.
    let last_seen_stored = rt.block_on(count(&c, "device_last_seen", false));
    assert!(
        last_seen_stored <= want.last_seen_records,
        "{last_seen_stored} rows of {} last-seen records",
        want.last_seen_records
    );
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
    assert!(
        rt.block_on(count(&c, "device_last_seen", false)) <= last_seen_stored,
        "no last-seen row inserted again"
    );
    assert!(rt.block_on(rows::<LastSeenRow>(&c, "device_last_seen")) == want.last_seen);

    // A table of an older release, without the column added since, gets it at start-up.
    rt.block_on(
        c.client
            .query("ALTER TABLE device_aggregates DROP COLUMN clock_offset_ms")
            .execute(),
    )
    .unwrap();
    let (mut again, http) = sink(brokers, clickhouse.address(), &prefix, &database, &[]);
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        http_text(&http, "GET", "/readyz", None).0 == 200
    }));
    terminate(&mut again);
    let added: Vec<String> = rt
        .block_on(
            c.client
                .query(
                    "SELECT type FROM system.columns WHERE database = ? \
                     AND table = 'device_aggregates' AND name = 'clock_offset_ms'",
                )
                .bind(&database)
                .fetch_all(),
        )
        .unwrap();
    assert_eq!(added, vec!["Nullable(Int64)".to_string()]);

    // A table changed by hand no longer takes the rows the sink encodes: it stops at start-up,
    // naming the column, instead of retrying for ever.
    rt.block_on(
        c.client
            .query("ALTER TABLE device_aggregates MODIFY COLUMN count UInt64")
            .execute(),
    )
    .unwrap();
    let out = fleetpulse()
        .args(["sink", "clickhouse", "--brokers", brokers])
        .args(["--url", clickhouse.address(), "--listen", "127.0.0.1:0"])
        .args(["--set", &format!("clickhouse.database={database}")])
        .args(["--set", &format!("clickhouse.group_id={database}")])
        .args(derived_topics(&prefix))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("device_aggregates.count is UInt64; the sink writes it as UInt32"),
        "{stderr}"
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
    let brokers = shared(Kind::Kafka).address();
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
fn a_table_gone_mid_stream_stops_the_sink_and_loses_nothing() {
    let Fleet {
        brokers,
        clickhouse,
        prefix,
        want,
        database,
    } = fleet_into_database("100000", "fp_gone");
    let start = || {
        sink(
            brokers,
            clickhouse.address(),
            &prefix,
            &database,
            &TINY_BATCHES,
        )
        .0
    };
    let mut child = start();
    let rt = runtime();
    let c = rt.block_on(connect(clickhouse.address(), &database));
    assert!(
        testkit::wait_for(Duration::from_secs(60), || rt.block_on(total(&c, true)) > 0),
        "the sink inserts"
    );
    // An operator renames a table away mid-stream: no retry can insert into it (code 60).
    let away = |from: &str, to: &str| {
        rt.block_on(
            c.client
                .query(&format!(
                    "RENAME TABLE {database}.{from} TO {database}.{to}"
                ))
                .execute(),
        )
        .unwrap();
    };
    away("device_anomalies", "device_anomalies_away");
    let mut exit = None;
    let stopped = testkit::wait_for(Duration::from_secs(60), || {
        exit = child.0.try_wait().unwrap();
        exit.is_some()
    });
    assert!(stopped, "the sink stops instead of retrying for ever");
    assert!(exit.is_some_and(|e| !e.success()), "{exit:?}");
    // Before the end: what it inserted, over every table (whichever it had finished), is short
    // of the whole.
    let inserted: u64 = TABLES
        .iter()
        .map(|t| match *t {
            "device_anomalies" => "device_anomalies_away",
            t => t,
        })
        .map(|t| rt.block_on(count(&c, t, true)))
        .sum();
    assert!(inserted < want.total(), "it stopped before the end");
    // The table back, a restarted sink reads the batch it gave up on again: nothing is lost.
    away("device_anomalies_away", "device_anomalies");
    let mut again = start();
    check(&rt, &c, &want);
    terminate(&mut again);
}

#[test]
fn a_sink_killed_mid_batch_loses_nothing() {
    let Fleet {
        brokers,
        clickhouse,
        prefix,
        want,
        database,
    } = fleet_into_database("60000", "fp_killed");
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

/// Last-seen records written by hand into the topic the sink reads, as the pipeline writes them
/// (keyed by tenant and device).
struct LastSeenOut {
    producer: BaseProducer,
    codec: Codec,
    topic: String,
}

impl LastSeenOut {
    fn new(brokers: &str, prefix: &str) -> LastSeenOut {
        LastSeenOut {
            producer: rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "0")
                .create()
                .unwrap(),
            codec: Codec::builtin(),
            topic: format!("{prefix}-lastseen"),
        }
    }

    /// Sends `records` in order and waits until Kafka has them.
    fn send(&self, records: &[LastSeen]) {
        for r in records {
            let value = self.codec.encode(r).unwrap();
            let key = r.key();
            self.producer
                .send(
                    BaseRecord::to(&self.topic)
                        .key(key.as_ref())
                        .payload(&value),
                )
                .unwrap();
        }
        self.producer.flush(Duration::from_secs(30)).unwrap();
    }
}

fn last_seen(tenant: &str, device: &str, ms: i64, class: Option<&str>) -> LastSeen {
    LastSeen {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: class.map(str::to_string),
        last_seen: ms,
        event_id: pipeline::event_id::last_seen(tenant, device, ms),
    }
}

/// The time `not_reported_since` asks about in docs/queries.md: 2023-11-15 00:00:00 UTC.
const CUTOFF_MS: i64 = 1_700_006_400_000;
const MINUTE: i64 = 60_000;

#[test]
fn the_newest_last_seen_of_each_device_wins_whatever_order_it_arrives_in() {
    let kafka = shared(Kind::Kafka);
    let clickhouse = shared(Kind::ClickHouse);
    let brokers = kafka.address();
    let prefix = unique("sink-lastseen");
    let rt = runtime();
    rt.block_on(create_derived(brokers, &prefix, 2));
    let database = unique("fp_lastseen").replace('-', "_");
    // The default batch limits: how long last-seen rows wait is part of what is checked.
    let (mut child, http) = sink(brokers, clickhouse.address(), &prefix, &database, &[]);
    let c = rt.block_on(connect(clickhouse.address(), &database));
    // Parts stay apart, so the queries below see the table as it is before ClickHouse merges.
    rt.block_on(
        c.client
            .query("SYSTEM STOP MERGES device_last_seen")
            .execute(),
    )
    .unwrap();
    let out = LastSeenOut::new(brokers, &prefix);
    let stored = || rt.block_on(count(&c, "device_last_seen", false));
    let latest = || rt.block_on(rows::<LastSeenRow>(&c, "device_last_seen"));

    // The sink is reading once its first record is in (a new group waits a few seconds first).
    let mut sent = vec![last_seen("t2", "d5", CUTOFF_MS + 19 * MINUTE, None)];
    out.send(&sent);
    assert!(testkit::wait_for(Duration::from_secs(60), || stored() == 1));

    // Newer times first for d1 and d6 (d6's record twice, as the pipeline repeats itself after a
    // crash), older ones first for d2 and d3.
    let first = [
        last_seen("t1", "d1", CUTOFF_MS + 10 * MINUTE, Some("sensor")),
        last_seen("t1", "d2", CUTOFF_MS - 120 * MINUTE, None),
        last_seen("t1", "d3", CUTOFF_MS - 30 * MINUTE, Some("gateway")),
        last_seen("t2", "d4", CUTOFF_MS - 1_440 * MINUTE, Some("meter")),
        last_seen("t1", "d6", CUTOFF_MS + 6 * MINUTE, Some("sensor")),
        last_seen("t1", "d6", CUTOFF_MS + 6 * MINUTE, Some("sensor")),
    ];
    let started = Instant::now();
    out.send(&first);
    sent.extend(first);
    let mut prompt = Vec::new();
    assert!(testkit::wait_for(Duration::from_secs(30), || stored() == 7));
    prompt.push(started.elapsed());
    let second = [
        last_seen("t1", "d1", CUTOFF_MS - 60 * MINUTE, Some("gateway")),
        last_seen("t1", "d2", CUTOFF_MS + MINUTE, Some("sensor")),
        last_seen("t1", "d3", CUTOFF_MS - 10 * MINUTE, None),
    ];
    let started = Instant::now();
    out.send(&second);
    sent.extend(second);
    assert!(testkit::wait_for(Duration::from_secs(30), || stored() == 10));
    prompt.push(started.elapsed());
    // A trickle waits out `clickhouse.batch_ms` (1 s), then one insert: within the 2 s beyond
    // the pipeline's interval that the end-to-end freshness check allows.
    eprintln!("last-seen rows in ClickHouse after {prompt:?}");
    assert!(
        prompt.iter().all(|p| *p < Duration::from_secs(2)),
        "last-seen rows are inserted promptly: {prompt:?}"
    );

    let newest = vec![
        LastSeenRow::from(last_seen(
            "t1",
            "d1",
            CUTOFF_MS + 10 * MINUTE,
            Some("sensor"),
        )),
        LastSeenRow::from(last_seen("t1", "d2", CUTOFF_MS + MINUTE, Some("sensor"))),
        LastSeenRow::from(last_seen("t1", "d3", CUTOFF_MS - 10 * MINUTE, None)),
        LastSeenRow::from(last_seen(
            "t1",
            "d6",
            CUTOFF_MS + 6 * MINUTE,
            Some("sensor"),
        )),
        LastSeenRow::from(last_seen(
            "t2",
            "d4",
            CUTOFF_MS - 1_440 * MINUTE,
            Some("meter"),
        )),
        LastSeenRow::from(last_seen("t2", "d5", CUTOFF_MS + 19 * MINUTE, None)),
    ];
    let mut by_id = newest.clone();
    by_id.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(
        newest_per_device(&sent),
        by_id,
        "the test's own expectation"
    );
    assert_eq!(latest(), by_id, "FINAL: the newest per device");
    let parts: u64 = rt
        .block_on(
            c.client
                .query(
                    "SELECT count() FROM system.parts WHERE database = currentDatabase() \
                     AND table = 'device_last_seen' AND active",
                )
                .fetch_one(),
        )
        .unwrap();
    assert!(
        parts >= 2,
        "the older rows are still stored apart: {parts} parts"
    );

    // The documented queries, before and after the merge: d1's and d2's old rows are before the
    // cutoff but their newest are not; d3's newest reading gave no class, its older one did.
    let queries = documented_queries();
    let since = &queries["not_reported_since"];
    assert!(since.contains("'2023-11-15 00:00:00'"), "{since}");
    let now_s = (CUTOFF_MS + 20 * MINUTE) / 1_000;
    let answers = || {
        let not_reported: Vec<(String, String, Option<String>, String)> =
            ask(&rt, &c, &database, since, now_s)
                .iter()
                .map(|r| {
                    (
                        text(&r["tenant_id"]),
                        text(&r["device_id"]),
                        r["device_class"].as_str().map(str::to_string),
                        text(&r["last_seen"]),
                    )
                })
                .collect();
        let silent: Vec<(String, u64, u64, String, Vec<String>)> = ask(
            &rt,
            &c,
            &database,
            &queries["silent_devices_per_tenant"],
            now_s,
        )
        .iter()
        .map(|r| {
            (
                text(&r["tenant_id"]),
                num(&r["silent"]) as u64,
                num(&r["devices"]) as u64,
                text(&r["silent_since"]),
                texts(&r["silent_devices"]),
            )
        })
        .collect();
        (not_reported, silent)
    };
    let expected = (
        vec![
            (
                "t2".to_string(),
                "d4".to_string(),
                Some("meter".to_string()),
                datetime(CUTOFF_MS - 1_440 * MINUTE),
            ),
            (
                "t1".to_string(),
                "d3".to_string(),
                None,
                datetime(CUTOFF_MS - 10 * MINUTE),
            ),
        ],
        // Silent since before now - 15 min = cutoff + 5 min: d2, d3 of t1 (of four), d4 of t2.
        vec![
            (
                "t1".to_string(),
                2,
                4,
                datetime(CUTOFF_MS - 10 * MINUTE),
                vec!["d2".to_string(), "d3".to_string()],
            ),
            (
                "t2".to_string(),
                1,
                2,
                datetime(CUTOFF_MS - 1_440 * MINUTE),
                vec!["d4".to_string()],
            ),
        ],
    );
    assert_eq!(answers(), expected, "before the merge");

    rt.block_on(async {
        c.client
            .query("SYSTEM START MERGES device_last_seen")
            .execute()
            .await?;
        c.client
            .query("OPTIMIZE TABLE device_last_seen FINAL")
            .execute()
            .await
    })
    .unwrap();
    assert_eq!(stored(), 6, "one row per device after the merge");
    assert_eq!(latest(), by_id);
    assert_eq!(answers(), expected, "after the merge");

    assert_eq!(http_text(&http, "GET", "/readyz", None).0, 200);
    let (_, metrics) = http_text(&http, "GET", "/metrics", None);
    assert!(
        metrics.contains(r#"fleetpulse_sink_rows_inserted_total{table="device_last_seen"} 10"#),
        "{metrics}"
    );
    terminate(&mut child);
}

/// The queries of docs/queries.md, by name.
/// A JSON number (ClickHouse quotes 64-bit integers) as f64.
fn num(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        v => v.as_f64().unwrap(),
    }
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().unwrap().to_string()
}

fn texts(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(text).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// `2023-11-15 00:13:00` for `ms`, as ClickHouse prints a `DateTime('UTC')`.
fn datetime(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.div_euclid(1_000) * 1_000)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A device's online and observed time within `[from, to)`, from its transitions in time order:
/// observed from its first transition (or the start, if it had one before), online while its
/// last transition said so.
fn uptime(transitions: &[(i64, DeviceStatus)], from: i64, to: i64) -> Option<(i64, i64, u32)> {
    let mut status = transitions.iter().rfind(|t| t.0 < from).map(|t| t.1);
    let mut since = from;
    let mut observed_from = status.map(|_| from);
    let (mut online, mut changes) = (0, 0);
    for &(ts, next) in transitions.iter().filter(|t| t.0 >= from && t.0 < to) {
        if status == Some(DeviceStatus::Online) {
            online += ts - since;
        }
        observed_from.get_or_insert(ts);
        status = Some(next);
        since = ts;
        changes += 1;
    }
    if status == Some(DeviceStatus::Online) {
        online += to - since;
    }
    observed_from.map(|o| (to - o, online, changes))
}

/// 2023-11-14 23:40 UTC: the fleet runs past midnight, so an hour and a day close on the way.
const NEAR_MIDNIGHT_MS: i64 = 1_700_005_200_000;

#[test]
fn the_documented_queries_answer_what_the_model_says() {
    let brokers = shared(Kind::Kafka).address();
    let url = shared(Kind::ClickHouse).address();
    // 120 devices reporting every 10 s for about 35 minutes.
    let (telemetry, prefix, want) = derived_fleet_at(
        brokers,
        "120",
        "25000",
        NEAR_MIDNIGHT_MS,
        &["--set", "generate.interval_ms=10000"],
    );
    let input = topic_as_partitions(brokers, &telemetry);
    let outputs = model::normalise(model::model(&telemetry, &input, &PipelineConfig::default()));
    let database = unique("fp_queries").replace('-', "_");
    let (mut child, _) = sink(brokers, url, &prefix, &database, &[]);
    let rt = runtime();
    let c = rt.block_on(connect(url, &database));
    check(&rt, &c, &want);

    let aggregates: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Aggregate(a) => Some(a),
            _ => None,
        })
        .collect();
    let horizon = aggregates.iter().map(|a| a.window_end).max().unwrap();
    let now_s = horizon / 1_000;
    let midnight = NEAR_MIDNIGHT_MS - NEAR_MIDNIGHT_MS % DAY + DAY;
    assert!(horizon - 300_000 >= midnight, "the day closed: {horizon}");
    let minute = |a: &&&schemas::WindowAggregate| a.window_end - a.window_start == 60_000;

    // The closed rollups land with the batch that closed them: wait for them.
    let hours: BTreeMap<(String, i64), (u32, i64, i64)> = aggregates
        .iter()
        .filter(minute)
        .filter(|a| a.window_start - a.window_start % 3_600_000 + 3_600_000 <= horizon - 300_000)
        .fold(BTreeMap::new(), |mut m, a| {
            let hour = a.window_start - a.window_start % 3_600_000;
            let e = m.entry((a.tenant_id.clone(), hour)).or_insert((0, 0, 0));
            e.1 += a.count;
            e.2 += a.errors;
            m
        });
    let queries = documented_queries();
    // Each is checked here but `error_rate_per_site`, which needs an inventory: tests/inventory.rs.
    assert_eq!(queries.len(), 10, "{:?}", queries.keys());
    let rows = |name: &str| ask(&rt, &c, &database, &queries[name], now_s);
    assert!(
        testkit::wait_for(Duration::from_secs(60), || {
            !rows("tenant_uptime_yesterday").is_empty()
                && rows("tenant_hourly_last_day").len() >= hours.len()
        }),
        "the rollups of the closed hour and day"
    );

    // Worst devices in the last hour: the ten lowest mean health scores, ties in any order.
    let mut per_device: BTreeMap<(String, String), (f64, u32, i64, i64)> = BTreeMap::new();
    for a in aggregates
        .iter()
        .filter(minute)
        .filter(|a| a.window_start >= (now_s - 3_600) * 1_000)
    {
        let e = per_device
            .entry((a.tenant_id.clone(), a.device_id.clone()))
            .or_insert((0.0, 0, 0, 0));
        e.0 += a.health_score;
        e.1 += 1;
        e.2 += a.errors;
        e.3 += a.count;
    }
    let health: BTreeMap<_, f64> = per_device
        .iter()
        .map(|(k, v)| (k.clone(), v.0 / f64::from(v.1)))
        .collect();
    let worst = rows("worst_devices_last_hour");
    assert_eq!(worst.len(), 10.min(health.len()));
    let mut last = f64::MIN;
    for r in &worst {
        let key = (text(&r["tenant_id"]), text(&r["device_id"]));
        let (_, _, errors, count) = per_device[&key];
        assert!(close(num(&r["health"]), health[&key]), "{r}");
        assert!(
            close(num(&r["error_rate"]), errors as f64 / count as f64),
            "{r}"
        );
        assert!(num(&r["health"]) >= last - 1e-9, "sorted");
        last = num(&r["health"]);
    }
    let listed: Vec<_> = worst
        .iter()
        .map(|r| (text(&r["tenant_id"]), text(&r["device_id"])))
        .collect();
    assert!(
        health
            .iter()
            .all(|(k, h)| listed.contains(k) || *h >= last - 1e-9),
        "no device left out was worse"
    );

    // Uptime yesterday, per device and per tenant, from the model's status transitions.
    let mut transitions: BTreeMap<(String, String), Vec<(i64, DeviceStatus)>> = BTreeMap::new();
    for o in &outputs {
        if let Output::Status(s) = o {
            transitions
                .entry((s.tenant_id.clone(), s.device_id.clone()))
                .or_default()
                .push((s.ts, s.status));
        }
    }
    let day = midnight - DAY;
    let mut devices: Vec<(f64, String, String, u32)> = Vec::new();
    let mut tenants: BTreeMap<String, (u32, i64, i64, u32)> = BTreeMap::new();
    for ((tenant, device), list) in &mut transitions {
        // As the rollup takes them: by time, `offline` before `online` at the same millisecond.
        list.sort_by_key(|t| (t.0, t.1 == DeviceStatus::Online));
        if let Some((observed, online, changes)) = uptime(list, day, midnight) {
            devices.push((
                online as f64 / observed as f64,
                tenant.clone(),
                device.clone(),
                changes,
            ));
            let t = tenants.entry(tenant.clone()).or_default();
            *t = (t.0 + 1, t.1 + observed, t.2 + online, t.3 + changes);
        }
    }
    let got: Vec<_> = rows("tenant_uptime_yesterday")
        .iter()
        .map(|r| {
            (
                text(&r["tenant_id"]),
                num(&r["devices"]) as u32,
                num(&r["uptime"]),
                num(&r["transitions"]) as u32,
            )
        })
        .collect();
    let expected: Vec<_> = tenants
        .iter()
        .map(|(t, v)| (t.clone(), v.0, v.2 as f64 / v.1 as f64, v.3))
        .collect();
    assert!(!expected.is_empty(), "a day closed");
    assert!(
        devices.iter().any(|d| d.0 < 1.0),
        "a device was down for part of the day"
    );
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert!(
            g.0 == e.0 && g.1 == e.1 && close(g.2, e.2) && g.3 == e.3,
            "{g:?} vs {e:?}"
        );
    }
    devices.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let got: Vec<_> = rows("least_available_devices_yesterday")
        .iter()
        .map(|r| {
            (
                num(&r["uptime"]),
                text(&r["tenant_id"]),
                text(&r["device_id"]),
                num(&r["transitions"]) as u32,
            )
        })
        .collect();
    assert_eq!(got.len(), 10.min(devices.len()));
    for (g, e) in got.iter().zip(&devices) {
        assert!(
            close(g.0, e.0) && g.1 == e.1 && g.2 == e.2 && g.3 == e.3,
            "{g:?} vs {e:?}"
        );
    }

    // Open anomalies: those whose last change was a firing.
    let mut latest: BTreeMap<(String, String, String), &schemas::Anomaly> = BTreeMap::new();
    for o in &outputs {
        if let Output::Anomaly(a) = o {
            let key = (
                a.tenant_id.clone(),
                a.device_id.clone(),
                AnomalyRow::from(a).kind,
            );
            if latest.get(&key).is_none_or(|b| b.ts <= a.ts) {
                latest.insert(key, a);
            }
        }
    }
    let mut open: Vec<_> = latest
        .iter()
        .filter(|(_, a)| a.state == AnomalyState::Firing)
        .map(|(k, a)| {
            (
                std::cmp::Reverse(a.ts / 1_000),
                k.clone(),
                a.observed,
                a.threshold,
            )
        })
        .collect();
    open.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let got = rows("open_anomalies");
    assert!(!open.is_empty(), "the fleet leaves anomalies open");
    assert_eq!(got.len(), open.len());
    for (g, e) in got.iter().zip(&open) {
        let key = (
            text(&g["tenant_id"]),
            text(&g["device_id"]),
            text(&g["kind"]),
        );
        assert_eq!(key, e.1, "{g}");
        assert_eq!(text(&g["since"]), datetime(e.0.0 * 1_000), "{g}");
        assert!(
            close(num(&g["observed"]), e.2) && close(num(&g["threshold"]), e.3),
            "{g}"
        );
    }

    // Offline now: the devices whose last transition took them offline.
    let mut offline: Vec<_> = transitions
        .iter()
        .filter_map(|(k, list)| {
            let (ts, status) = *list.last()?;
            (status == DeviceStatus::Offline).then(|| (ts / 1_000, k.0.clone(), k.1.clone()))
        })
        .collect();
    offline.sort();
    assert!(!offline.is_empty(), "the fleet leaves devices offline");
    let got: Vec<_> = rows("offline_devices")
        .iter()
        .map(|r| {
            (
                text(&r["since"]),
                text(&r["tenant_id"]),
                text(&r["device_id"]),
            )
        })
        .collect();
    let expected: Vec<_> = offline
        .iter()
        .map(|(s, t, d)| (datetime(s * 1_000), t.clone(), d.clone()))
        .collect();
    assert_eq!(got, expected);

    // Hour by hour per tenant: the closed hours, with the 1-minute windows added up.
    let got = rows("tenant_hourly_last_day");
    assert!(!hours.is_empty(), "an hour closed");
    assert_eq!(got.len(), hours.len());
    for (g, ((tenant, hour), (_, readings, errors))) in got.iter().zip(&hours) {
        assert_eq!(text(&g["tenant_id"]), *tenant);
        assert_eq!(text(&g["hour"]), datetime(*hour));
        assert_eq!(
            (num(&g["readings"]) as i64, num(&g["errors"]) as i64),
            (*readings, *errors),
            "{g}"
        );
        let q: Vec<f64> = g["rt_p50_p95_p99_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(num)
            .collect();
        assert!(q[0] <= q[1] && q[1] <= q[2], "{g}");
    }

    // Dead letters by reason.
    let mut reasons: BTreeMap<(String, String), (u64, i64)> = BTreeMap::new();
    for o in &outputs {
        if let Output::DeadLetter(d) = o {
            let e = reasons
                .entry((d.source_topic.clone(), d.reason.as_str().to_string()))
                .or_default();
            e.0 += 1;
            e.1 = e.1.max(d.source_offset);
        }
    }
    let got: Vec<_> = rows("dead_letters_by_reason")
        .iter()
        .map(|r| {
            (
                (text(&r["source_topic"]), text(&r["reason"])),
                (num(&r["records"]) as u64, num(&r["last_offset"]) as i64),
            )
        })
        .collect();
    assert_eq!(got, reasons.into_iter().collect::<Vec<_>>());

    // Last seen, from the newest record per device of the last-seen topic (the model has none):
    // the devices not reported since midnight, and those silent for 15 minutes, per tenant. Most
    // devices report until the fleet's end, so these may list nobody: asked again with the
    // cutoff at the devices' median last-seen time (and `now()` 15 minutes after it), about half
    // of them are listed.
    let since = &queries["not_reported_since"];
    let documented = format!("'{}'", datetime(midnight));
    assert!(since.contains(&documented), "{since}");
    let mut times: Vec<i64> = want.last_seen.iter().map(|l| l.last_seen_ms).collect();
    times.sort();
    let median_s = times.get(times.len() / 2).map_or(now_s, |t| t / 1_000);
    let shifted = since.replace(&documented, &format!("'{}'", datetime(median_s * 1_000)));
    for (sql, cutoff_s) in [(since, midnight / 1_000), (&shifted, median_s)] {
        let mut expected: Vec<_> = want
            .last_seen
            .iter()
            .filter(|l| l.last_seen_ms < cutoff_s * 1_000)
            .map(|l| {
                (
                    l.last_seen,
                    l.tenant_id.clone(),
                    l.device_id.clone(),
                    l.device_class.clone(),
                )
            })
            .collect();
        expected.sort();
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(s, t, d, class)| (datetime(i64::from(s) * 1_000), t, d, class))
            .collect();
        let got: Vec<_> = ask(&rt, &c, &database, sql, now_s)
            .iter()
            .map(|r| {
                (
                    text(&r["last_seen"]),
                    text(&r["tenant_id"]),
                    text(&r["device_id"]),
                    r["device_class"].as_str().map(str::to_string),
                )
            })
            .collect();
        assert_eq!(
            got,
            expected,
            "not reported since {}",
            datetime(cutoff_s * 1_000)
        );
    }
    for at_s in [now_s, median_s + 15 * 60] {
        let cutoff = (at_s - 15 * 60) * 1_000;
        let mut silent: BTreeMap<String, (u64, u64, i64, Vec<String>)> = BTreeMap::new();
        for l in &want.last_seen {
            let t = silent
                .entry(l.tenant_id.clone())
                .or_insert((0, 0, i64::MAX, Vec::new()));
            t.1 += 1;
            if l.last_seen_ms < cutoff {
                t.0 += 1;
                t.2 = t.2.min(i64::from(l.last_seen) * 1_000);
                t.3.push(l.device_id.clone());
            }
        }
        let mut expected: Vec<_> = silent
            .into_iter()
            .filter(|(_, t)| t.0 > 0)
            .map(|(tenant, (n, devices, since, mut ids))| {
                ids.sort();
                ids.truncate(100);
                (std::cmp::Reverse(n), tenant, devices, datetime(since), ids)
            })
            .collect();
        expected.sort();
        let got: Vec<_> = ask(
            &rt,
            &c,
            &database,
            &queries["silent_devices_per_tenant"],
            at_s,
        )
        .iter()
        .map(|r| {
            (
                std::cmp::Reverse(num(&r["silent"]) as u64),
                text(&r["tenant_id"]),
                num(&r["devices"]) as u64,
                text(&r["silent_since"]),
                texts(&r["silent_devices"]),
            )
        })
        .collect();
        assert_eq!(got, expected, "silent at {}", datetime(at_s * 1_000));
    }
    if !want.last_seen.is_empty() {
        let listed = ask(&rt, &c, &database, &shifted, now_s).len();
        assert!(
            listed > 0 && listed < want.last_seen.len(),
            "{listed} of {} devices not reported since the median",
            want.last_seen.len()
        );
    }
    terminate(&mut child);
}

const DAY: i64 = 86_400_000;
