//! `fleetpulse sink clickhouse` against real services: a generated fleet goes through the
//! pipeline into the derived topics, the sink consumes them into Debian's `clickhouse-server`
//! (18.16), and every table, read as the documented queries read it (`FINAL`), holds exactly the
//! records of its topic, once each. A restarted sink adds nothing (its offsets were committed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
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

/// Starts the sink on the derived topics of `prefix` into `database`.
fn sink(brokers: &str, url: &str, prefix: &str, database: &str) -> (Child, String) {
    let mut child = fleetpulse()
        .args(["sink", "clickhouse", "--brokers", brokers, "--url", url])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--set", &format!("clickhouse.database={database}")])
        .args(["--set", &format!("clickhouse.group_id={database}")])
        .args(derived_topics(prefix))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let http = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("metrics on ").nth(1).map(str::to_string))
        .unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    (child, http)
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

fn sorted<T, F: Fn(&T) -> String>(mut v: Vec<T>, key: F) -> Vec<T> {
    v.sort_by_key(|x| key(x));
    v
}

#[test]
fn the_tables_hold_the_derived_topics_once_each() {
    let kafka = shared(Kind::Kafka);
    let clickhouse = shared(Kind::ClickHouse);
    let brokers = kafka.address();
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
        "30000",
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
    let derived = derived_all(brokers, &prefix);
    let mut want_agg = Vec::new();
    let mut want_anomaly = Vec::new();
    let mut want_status = Vec::new();
    let mut want_dead = Vec::new();
    for o in &derived {
        match o {
            Output::Aggregate(a) => want_agg.push(AggregateRow::from(a)),
            Output::Anomaly(a) => want_anomaly.push(AnomalyRow::from(a)),
            Output::Status(s) => want_status.push(StatusRow::from(s)),
            Output::DeadLetter(d) => want_dead.push(DeadLetterRow::from(d)),
        }
    }
    assert!(want_agg.len() > 1_000 && !want_status.is_empty() && !want_dead.is_empty());

    let database = unique("fp_sink").replace('-', "_");
    let (mut child, http) = sink(brokers, clickhouse.address(), &prefix, &database);
    let rt = runtime();
    let target = Target {
        url: clickhouse.address().to_string(),
        database: database.clone(),
        user: "default".into(),
        password: String::new(),
        validation: None,
    };
    let c = rt.block_on(async {
        // The sink creates the database; wait for it.
        for _ in 0..100 {
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
    });
    let total = derived.len() as u64;
    let arrived = testkit::wait_for(Duration::from_secs(60), || {
        let n: u64 = rt.block_on(async {
            let mut n = 0;
            for t in [
                "device_aggregates",
                "device_anomalies",
                "device_status",
                "dead_letters",
            ] {
                n += count(&c, t, true).await;
            }
            n
        });
        n >= total
    });
    assert!(arrived, "every derived record reaches ClickHouse");
    assert_eq!(http_text(&http, "GET", "/readyz", None).0, 200);
    let (_, metrics) = http_text(&http, "GET", "/metrics", None);
    assert!(
        metrics.contains("fleetpulse_sink_rows_inserted_total"),
        "{metrics}"
    );

    rt.block_on(async {
        let by_id = |r: &AggregateRow| r.event_id.clone();
        assert_eq!(
            rows::<AggregateRow>(&c, "device_aggregates").await,
            sorted(want_agg, by_id)
        );
        let by_id = |r: &AnomalyRow| r.event_id.clone();
        assert_eq!(
            rows::<AnomalyRow>(&c, "device_anomalies").await,
            sorted(want_anomaly, by_id)
        );
        let by_id = |r: &StatusRow| r.event_id.clone();
        assert_eq!(
            rows::<StatusRow>(&c, "device_status").await,
            sorted(want_status, by_id)
        );
        let by_id = |r: &DeadLetterRow| r.event_id.clone();
        assert_eq!(
            rows::<DeadLetterRow>(&c, "dead_letters").await,
            sorted(want_dead, by_id)
        );
    });

    // SIGTERM: the sink stops cleanly; started again, it finds its offsets committed.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(child.wait().unwrap().success());
    let (mut again, _) = sink(brokers, clickhouse.address(), &prefix, &database);
    std::thread::sleep(Duration::from_secs(3));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status();
    assert!(again.wait().unwrap().success());
    let raw: u64 = rt.block_on(async {
        let mut n = 0;
        for t in [
            "device_aggregates",
            "device_anomalies",
            "device_status",
            "dead_letters",
        ] {
            n += count(&c, t, false).await;
        }
        n
    });
    assert_eq!(raw, total, "nothing inserted twice, even before merges");
}
