//! The whole system, each part its own process, against real Kafka, ClickHouse and Redis: a
//! generated fleet with malformed, late and future readings goes through `fleetpulse pipeline`;
//! `fleetpulse sink clickhouse` and `fleetpulse bridge` (with Redis) run beside it. Afterwards
//! ClickHouse holds exactly what the reference model predicts from the telemetry topic, every
//! malformed message is a dead letter with its reason, and a WebSocket client of one tenant,
//! connected before the pipeline started, saw every status transition of its tenant and nothing
//! else; a client that comes later gets a snapshot (from Redis) with each device's last status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::model;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clickhouse_sink::rows::{AggregateRow, AnomalyRow, DeadLetterRow, StatusRow};
use e2e::clickhouse::{connect, rows};
use e2e::ws::{Ws, message, subscribed};
use e2e::*;
use pipeline::PipelineConfig;
use pipeline::output::Output;
use schemas::wire_name;
use testkit::{Kind, shared, unique};

const SECRET: &str = "Sy2rT7vK4mW9qX6nB1yL8cH3fJ5dG0sA2eU6iO4kR7tV8wZ1";

/// A client of `tenant` subscribed to status transitions; past the `subscribed` reply and the
/// snapshot, which it returns.
async fn client(bridge: &str, tenant: &str) -> (Ws, serde_json::Value) {
    subscribed(bridge, tenant, SECRET, None).await.unwrap()
}

/// The rows the model's outputs make, with the free text blanked as `model::normalise` does.
struct Rows {
    aggregates: Vec<AggregateRow>,
    anomalies: Vec<AnomalyRow>,
    status: Vec<StatusRow>,
    dead_letters: Vec<DeadLetterRow>,
}

fn blank(mut r: Rows) -> Rows {
    for a in &mut r.anomalies {
        a.message.clear();
    }
    for d in &mut r.dead_letters {
        d.detail.clear();
        d.key = None;
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_pipeline_sink_and_bridge_agree_with_the_model() {
    let kafka = shared(Kind::Kafka);
    let clickhouse = shared(Kind::ClickHouse);
    let redis = testkit::Service::start(Kind::Redis);
    let brokers = kafka.address();

    // The fleet, with every kind of bad input.
    let telemetry = unique("system-telemetry");
    let generated = generate_fleet(
        brokers,
        &telemetry,
        ("300", "30000", "21"),
        START_MS,
        &[
            "--tenants",
            "3",
            "--set",
            "generate.malformed_fraction=0.01",
            "--set",
            "generate.late_fraction=0.01",
            "--set",
            "generate.future_fraction=0.002",
        ],
    );
    let generated = summary(&generated.stdout);
    let malformed = generated["malformed"].as_u64().unwrap();
    assert!(malformed > 100, "{generated}");

    // What must come out, by the model.
    let input = topic_as_partitions(brokers, &telemetry);
    let want = model::normalise(model::model(&telemetry, &input, &PipelineConfig::default()));
    let mut expected = Rows {
        aggregates: Vec::new(),
        anomalies: Vec::new(),
        status: Vec::new(),
        dead_letters: Vec::new(),
    };
    for o in &want {
        match o {
            Output::Aggregate(a) => expected.aggregates.push(a.into()),
            Output::Anomaly(a) => expected.anomalies.push(a.into()),
            Output::Status(s) => expected.status.push(s.into()),
            Output::DeadLetter(d) => expected.dead_letters.push(d.into()),
            Output::LastSeen(_) => {}
        }
    }
    let tenant = "tenant-01";
    // In the order they happened (the model's list is by event id).
    let mut transitions: Vec<(i64, String, String, String)> = want
        .iter()
        .filter_map(|o| match o {
            Output::Status(s) if s.tenant_id == tenant => Some((
                s.ts,
                s.event_id.clone(),
                s.device_id.clone(),
                wire_name(&s.status),
            )),
            _ => None,
        })
        .collect();
    transitions.sort();
    let transitions: Vec<(String, String, String)> = transitions
        .into_iter()
        .map(|(_, id, device, status)| (id, device, status))
        .collect();
    assert!(
        transitions.len() > 100,
        "first seen and silences of {tenant}"
    );

    // Sink and bridge first, on topics that exist; one client of the tenant waiting.
    let prefix = unique("system");
    create_derived(brokers, &prefix, 4).await;
    let database = unique("fp_system").replace('-', "_");
    let (_sink, _) = sink(brokers, clickhouse.address(), &prefix, &database, &[]);
    let (bridge, base) = spawn_serving(
        fleetpulse()
            .args(["bridge", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--redis-url", redis.address()])
            .args(["--set", &format!("bridge.jwt_secret={SECRET}")])
            // The generated fleet's records are from 2023: kept, not let go as silent.
            .args(["--set", "bridge.device_retention_ms=315360000000"])
            .args(derived_topics(&prefix)),
    );
    let _bridge = Running(bridge);
    let (mut watching, snapshot) = client(&base, tenant).await;
    assert_eq!(snapshot["devices"], serde_json::json!([]), "nothing yet");

    run_ok(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--until-end"])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(derived_topics(&prefix)),
    );

    // The client: every transition of its tenant, nothing of another, each device's in order.
    let mut seen = Vec::new();
    while seen.len() < transitions.len() {
        let Some(m) = message(&mut watching, Duration::from_secs(60)).await else {
            break;
        };
        assert_eq!(m["type"], "device_status", "{m}");
        assert_eq!(m["data"]["tenant_id"], tenant, "only its tenant: {m}");
        seen.push((
            m["data"]["event_id"].as_str().unwrap().to_string(),
            m["data"]["device_id"].as_str().unwrap().to_string(),
            m["data"]["status"].as_str().unwrap().to_string(),
        ));
    }
    let extra = message(&mut watching, Duration::from_secs(3)).await;
    assert!(extra.is_none(), "nothing after the last: {extra:?}");
    let by_device = |list: &[(String, String, String)]| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, device, _) in list {
            m.entry(device.clone()).or_default().push(id.clone());
        }
        m
    };
    assert_eq!(seen.len(), transitions.len(), "every transition");
    assert!(
        by_device(&seen) == by_device(&transitions),
        "the same transitions, each device's in order"
    );

    // ClickHouse: exactly the model's records, once each.
    let c = connect(clickhouse.address(), &database).await;
    let total = (expected.aggregates.len()
        + expected.anomalies.len()
        + expected.status.len()
        + expected.dead_letters.len()) as u64;
    let mut stored = 0;
    for _ in 0..600 {
        stored = 0;
        for table in [
            "device_aggregates",
            "device_anomalies",
            "device_status",
            "dead_letters",
        ] {
            stored += c
                .client
                .query(&format!("SELECT count() FROM {table} FINAL"))
                .fetch_one::<u64>()
                .await
                .unwrap();
        }
        if stored >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored, total, "every record reaches ClickHouse, once");
    let got = blank(Rows {
        aggregates: rows(&c, "device_aggregates").await,
        anomalies: rows(&c, "device_anomalies").await,
        status: rows(&c, "device_status").await,
        dead_letters: rows(&c, "dead_letters").await,
    });
    let expected = blank(expected);
    assert!(got.aggregates == expected.aggregates, "aggregates");
    assert!(got.anomalies == expected.anomalies, "anomalies");
    assert!(got.status == expected.status, "status");
    assert!(got.dead_letters == expected.dead_letters, "dead letters");

    // Every malformed message is a dead letter with its reason; so are late and future ones.
    let reasons: Vec<(String, u64)> = c
        .client
        .query("SELECT toString(reason), count() FROM dead_letters FINAL GROUP BY reason")
        .fetch_all::<(String, u64)>()
        .await
        .unwrap();
    let reasons: BTreeMap<String, u64> = reasons.into_iter().collect();
    let bad_input: u64 = ["undecodable", "schema", "invalid_field"]
        .iter()
        .filter_map(|r| reasons.get(*r))
        .sum();
    assert_eq!(bad_input, malformed, "every malformed message: {reasons:?}");
    assert!(reasons.get("late").is_some_and(|n| *n > 0), "{reasons:?}");
    assert!(reasons.get("future").is_some_and(|n| *n > 0), "{reasons:?}");

    // Redis holds what the bridge holds (status, health, open anomalies; `last_seen` of these
    // 2023 readings has expired there), and a later client's snapshot is read from it.
    let admin = bridge::admin_token(SECRET);
    let cache =
        ws_bridge::cache::Cache::connect(&ws_bridge::cache::Target::url(redis.address())).unwrap();
    let mut agree = false;
    let (mut held, mut store) = (serde_json::Value::Null, serde_json::Value::Null);
    for _ in 0..100 {
        store = without_last_seen(
            &http(
                &base,
                "GET",
                &format!("/api/devices?limit=1000&token={admin}"),
                None,
            )
            .1["devices"],
        );
        let mut read = cache
            .read(&ws_bridge::cache::Devices::Tenants(Vec::new()))
            .await
            .unwrap_or_default();
        read.sort_by(|a, b| (&a.tenant_id, &a.device_id).cmp(&(&b.tenant_id, &b.device_id)));
        held = without_last_seen(&serde_json::to_value(read).unwrap());
        if held == store {
            agree = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agree, "redis holds what the bridge holds:\n{store}\n{held}");
    let devices: BTreeSet<(&str, &str)> = want
        .iter()
        .filter_map(|o| match o {
            Output::Status(s) => Some((s.tenant_id.as_str(), s.device_id.as_str())),
            Output::Aggregate(a) => Some((a.tenant_id.as_str(), a.device_id.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        store.as_array().map(Vec::len),
        Some(devices.len()),
        "every device the model has"
    );
    assert!(
        store.to_string().contains("\"severity\""),
        "open anomalies went through redis too"
    );

    // A client that comes now: a snapshot (from Redis) with each device's last status.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (_, device, status) in &transitions {
        last.insert(device.clone(), status.clone());
    }
    let (_late, snapshot) = client(&base, tenant).await;
    let shown: BTreeMap<String, String> = snapshot["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(shown, last, "the snapshot holds each device's last status");
    let tenants: BTreeSet<&str> = snapshot["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, BTreeSet::from([tenant]));
}
