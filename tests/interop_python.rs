//! Interoperability with the reference implementation, not only with ourselves: Confluent's own
//! Python client and Avro serializer, registering and looking up schemas through
//! `fleetpulse registry` with Confluent's `SchemaRegistryClient`, against a real broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

use e2e::registry::RegistryProcess;
use e2e::*;
use generator::{Body, MessageFormat};
use schemas::{Codec, Telemetry};
use testkit::{Kind, python, shared, unique, workspace_root};

/// What `tests/interop/produce.py` sends as record `i`.
fn python_reading(i: i64) -> Telemetry {
    Telemetry {
        tenant_id: format!("py-tenant-{}", i % 3),
        device_id: format!("py-dev-{:03}", i % 17),
        ts: 1_700_000_000_000 + i * 1000,
        response_time_ms: (i % 5 != 0).then(|| 10.0 + i as f64 / 4.0),
        ok: i % 7 != 0,
        error_code: (i % 7 == 0).then(|| "E_PY".to_string()),
        battery_pct: Some((i % 101) as f64),
        signal_dbm: Some(-60.5 - (i % 30) as f64),
        device_class: (i % 2 == 1).then(|| "sensor".to_string()),
        attributes: BTreeMap::from([("i".to_string(), i.to_string())]),
    }
}

fn python_produce(brokers: &str, topic: &str, registry: &str, count: usize, newer: bool) -> u32 {
    let script = workspace_root().join("tests/interop/produce.py");
    let schema = workspace_root().join("schemas/avro/telemetry.avsc");
    let mut command = Command::new(python());
    command
        .arg(script)
        .args([brokers, topic, registry, &count.to_string()])
        .arg(schema);
    if newer {
        command.arg("--newer-writer");
    }
    let output = run_ok(&mut command);
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("schema id")
}

/// Decodes the topic in Rust, through `fleetpulse tail` with the registry configured.
fn rust_decode(
    brokers: &str,
    topic: &str,
    registry: &str,
    count: usize,
) -> BTreeMap<String, Telemetry> {
    let output = run_ok(fleetpulse().args([
        "tail",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--from-beginning",
        "--limit",
        &count.to_string(),
        "--idle-exit-ms",
        "30000",
        "--set",
        &format!("schema_registry.url={registry}"),
    ]));
    let mut decoded = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(line.get("error").is_none(), "Rust could not decode: {line}");
        let t: Telemetry = serde_json::from_value(line["record"].clone()).unwrap();
        decoded.insert(t.attributes["i"].clone(), t);
    }
    decoded
}

#[test]
fn python_avro_serializer_to_rust_decoder() {
    let kafka = shared(Kind::Kafka);
    let registry = RegistryProcess::start(&[]);
    let topic = unique("py-telemetry");
    let id = python_produce(kafka.address(), &topic, &registry.url, 300, false);
    assert_eq!(id, 2, "the same schema text gets the built-in id");

    let decoded = rust_decode(kafka.address(), &topic, &registry.url, 300);
    assert_eq!(decoded.len(), 300);
    for i in 0..300 {
        assert_eq!(decoded[&i.to_string()], python_reading(i), "record {i}");
    }
}

#[test]
fn newer_python_writer_schema_is_fetched_and_resolved_in_rust() {
    let kafka = shared(Kind::Kafka);
    let registry = RegistryProcess::start(&[]);
    let topic = unique("py-telemetry-newer");
    let id = python_produce(kafka.address(), &topic, &registry.url, 100, true);
    assert!(
        id > 6,
        "a schema with one more field gets a new id, got {id}"
    );

    // Rust has never seen that id: it must fetch the writer schema and resolve it.
    let decoded = rust_decode(kafka.address(), &topic, &registry.url, 100);
    assert_eq!(decoded.len(), 100);
    for i in 0..100 {
        assert_eq!(decoded[&i.to_string()], python_reading(i), "record {i}");
    }
}

#[test]
fn rust_generator_to_python_avro_deserializer() {
    let kafka = shared(Kind::Kafka);
    let registry = RegistryProcess::start(&[]);
    let topic = unique("rust-telemetry");
    let mut config = fleet(1_000, 20, 11, MessageFormat::Avro);
    config.malformed_fraction = 0.0;
    generate_into(
        kafka.address(),
        &topic,
        ("20", "1000", "11"),
        START_MS,
        &[
            "--set",
            "generate.malformed_fraction=0",
            "--set",
            &format!("schema_registry.url={}", registry.url),
        ],
    );

    let script = workspace_root().join("tests/interop/consume.py");
    let output = run_ok(Command::new(python()).arg(script).args([
        kafka.address(),
        &topic,
        &registry.url,
        "1000",
    ]));
    let mut got: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        got.entry(line["key"].as_str().unwrap().to_string())
            .or_default()
            .push(line["value"].clone());
    }
    let mut want: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (event, _) in expected_messages(&config, START_MS, &Codec::builtin()) {
        let Body::Reading(t) = event.body else {
            panic!("no malformed messages were asked for")
        };
        want.entry(event.key)
            .or_default()
            .push(serde_json::to_value(t).unwrap());
    }
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 1000);
    assert!(
        got == want,
        "Python decoded something else than the fleet sent"
    );
}

#[test]
fn the_pipeline_fetches_a_newer_writer_schema_instead_of_dead_lettering() {
    let kafka = shared(Kind::Kafka);
    let registry = RegistryProcess::start(&[]);
    let topic = unique("py-telemetry-pipeline");
    let id = python_produce(kafka.address(), &topic, &registry.url, 100, true);
    assert!(id > 6, "a schema the pipeline has never seen, got id {id}");

    let prefix = unique("py-derived");
    let mut command = fleetpulse();
    command
        .args(["pipeline", "--brokers", kafka.address(), "--until-end"])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--set", &format!("schema_registry.url={}", registry.url)])
        .args(["--set", &format!("topics.telemetry={topic}")]);
    for kind in ["aggregates", "anomalies", "status", "dlq", "lastseen"] {
        command.args(["--set", &format!("topics.{kind}={prefix}-{kind}")]);
    }
    let summary = summary(&run_ok(&mut command).stdout);
    assert_eq!(
        summary["dead_letters"], 0,
        "every record decoded: {summary}"
    );
    let aggregates = summary["aggregates"].as_u64().unwrap() as usize;
    let codec = Codec::builtin();
    let counted: i64 = read_topic(
        kafka.address(),
        &format!("{prefix}-aggregates"),
        aggregates,
        std::time::Duration::from_secs(30),
    )
    .iter()
    .map(|m| codec.decode::<schemas::WindowAggregate>(&m.value).unwrap())
    .filter(|a| a.window_end - a.window_start == 60_000)
    .map(|a| a.count)
    .sum();
    assert_eq!(counted, 100, "each of the 100 readings in one 1 min window");
}
