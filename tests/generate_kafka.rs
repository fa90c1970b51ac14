//! `fleetpulse generate` against a real Apache Kafka broker: every message arrives once, in
//! order per device, keyed by device, with the fleet's timestamps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::*;
use generator::MessageFormat;
use schemas::Codec;
use testkit::{Kind, shared, unique};

#[test]
fn generate_100k_events_arrive_once_in_order_keyed_by_device() {
    let kafka = shared(Kind::Kafka);
    let topic = unique("telemetry");
    let config = fleet(100_000, 1_000, 7, MessageFormat::Avro);

    let output = generate_into(
        kafka.address(),
        &topic,
        ("1000", "100000", "7"),
        START_MS,
        &[],
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON summary on stdout");
    assert_eq!(summary["events"], 100_000);
    assert!(
        summary["malformed"].as_u64().unwrap() > 0,
        "the default fleet sends some malformed messages"
    );

    let expected = expected_messages(&config, START_MS, &Codec::builtin());
    let read = read_topic(
        kafka.address(),
        &topic,
        expected.len(),
        Duration::from_secs(120),
    );
    assert_eq!(
        read.len(),
        expected.len(),
        "every message once, no more, no less"
    );

    // Keyed by device: one device, one partition.
    let mut partition_of: BTreeMap<&[u8], i32> = BTreeMap::new();
    for r in &read {
        let p = *partition_of.entry(&r.key).or_insert(r.partition);
        assert_eq!(
            p,
            r.partition,
            "device {:?} spread over partitions",
            String::from_utf8_lossy(&r.key)
        );
    }
    // In order per device: the same sequence of values per key, in offset order.
    let mut sorted = read.clone();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let got = by_key(
        sorted
            .iter()
            .map(|r| (r.key.as_slice(), r.value.as_slice())),
    );
    let want = by_key(
        expected
            .iter()
            .map(|(e, v)| (e.key.as_bytes(), v.as_slice())),
    );
    assert_eq!(got.len(), want.len(), "the same devices");
    assert!(
        got == want,
        "per-device sequences differ from what the fleet sent"
    );
    // Timestamps are the fleet's send times, not the wall clock.
    let mut times: Vec<i64> = read.iter().filter_map(|r| r.timestamp.millis()).collect();
    let mut want_times: Vec<i64> = expected.iter().map(|(e, _)| e.record_ts).collect();
    times.sort_unstable();
    want_times.sort_unstable();
    assert_eq!(times, want_times);
}

#[test]
fn generate_json_to_kafka_and_files_agree() {
    let kafka = shared(Kind::Kafka);
    let topic = unique("telemetry-json");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    let common = [
        "--events",
        "5000",
        "--devices",
        "50",
        "--tenants",
        "2",
        "--seed",
        "3",
        "--format",
        "json",
        "--no-progress",
    ];
    let start = START_MS.to_string();
    run_ok(
        fleetpulse()
            .args([
                "generate",
                "--brokers",
                kafka.address(),
                "--topic",
                &topic,
                "--start-ms",
                &start,
            ])
            .args(common),
    );
    run_ok(
        fleetpulse()
            .args(["generate", "--start-ms", &start, "--output"])
            .arg(&file)
            .args(common),
    );

    let lines: Vec<Vec<u8>> = std::fs::read(&file)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(lines.len(), 5000);
    let mut read = read_topic(kafka.address(), &topic, 5000, Duration::from_secs(60));
    assert_eq!(read.len(), 5000);
    read.sort_by_key(|r| (r.partition, r.offset));
    let mut from_kafka: Vec<Vec<u8>> = read.into_iter().map(|r| r.value).collect();
    let mut from_file = lines;
    from_kafka.sort();
    from_file.sort();
    assert!(
        from_kafka == from_file,
        "the file holds the same messages as the topic"
    );
}

#[test]
fn avro_container_file_holds_readings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.avro");
    run_ok(
        fleetpulse()
            .args([
                "generate",
                "--events",
                "2000",
                "--devices",
                "20",
                "--no-progress",
                "--start-ms",
                &START_MS.to_string(),
                "--output",
            ])
            .arg(&file),
    );
    let reader = apache_avro::Reader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let readings: Vec<schemas::Telemetry> = reader
        .map(|v| apache_avro::from_value(&v.unwrap()).unwrap())
        .collect();
    assert_eq!(readings.len(), 2000);
    assert!(
        readings
            .iter()
            .all(|t| t.tenant_id.starts_with("tenant-") || t.device_id.is_empty())
    );
}
