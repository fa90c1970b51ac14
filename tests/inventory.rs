//! `fleetpulse inventory` against a real broker and ClickHouse: `apply` prints its plan (and with
//! `--dry-run` writes nothing), writes one record per new or changed device and a tombstone per
//! removed one, and a second apply of the same file writes nothing; devices of tenants the file
//! does not speak for stay; `list --format csv` gives a file that applies as no change; a wrong
//! entry fails naming it. The sink keeps the inventory in `device_inventory`, decommissions
//! included, and the documented query joins aggregates to the devices' site labels.
//! The pipeline reads the inventory beside the telemetry: a registered device that never reports
//! goes offline as `never_seen`, a removed one is `decommissioned` (and, reporting on, a new
//! device), and every derived record agrees with the reference model's for what the two topics
//! hold.
//! `fleetpulse poll` follows the inventory against HTTP and TCP devices on loopback: one
//! telemetry record per probe with the mapped fields, devices registered and decommissioned while
//! it runs taken at once, `/readyz` once the inventory is read, a clean stop on SIGTERM; with its
//! broker killed and restarted, `/readyz` says so meanwhile, probes go on, and every probe is
//! one record once the broker is back. An HTTPS device with a certificate of the fleet's own CA is
//! probed when `poller.ca_file` names that CA, and is unreachable without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::clickhouse::{ask, connect, documented_queries};
use e2e::*;
use pipeline::PipelineConfig;
use pipeline::output::Output;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use schemas::{Codec, Record, WindowAggregate};
use testkit::{Kind, shared, unique};

const FIRST: &str = r#"
devices:
  - tenant: acme
    device: gw-01
    class: gateway
    labels: {site: berlin}
    expected_interval_ms: 30000
  - tenant: acme
    device: rt-01
    class: router
    labels: {site: paris}
    poll: {url: "http://10.0.0.7:8080/health", fields: {battery_pct: /battery}}
  - tenant: acme
    device: rt-02
    labels: {site: paris}
  - tenant: globex
    device: pump-1
    labels: {site: oslo}
"#;

/// gw-01 moves to Paris as a router, rt-02 is gone, ws-01 is new; globex is not listed (and so
/// not this file's to change).
const SECOND: &str = r#"
devices:
  - tenant: acme
    device: gw-01
    class: router
    labels: {site: paris}
    expected_interval_ms: 30000
  - tenant: acme
    device: rt-01
    class: router
    labels: {site: paris}
    poll: {url: "http://10.0.0.7:8080/health", fields: {battery_pct: /battery}}
  - tenant: acme
    device: ws-01
    labels: {site: berlin}
"#;

fn inventory(brokers: &str, topic: &str, args: &[&str]) -> std::process::Command {
    let mut command = fleetpulse();
    command.arg("inventory").args(args).args([
        "--brokers",
        brokers,
        "--set",
        &format!("topics.inventory={topic}"),
    ]);
    command
}

fn apply(brokers: &str, topic: &str, file: &Path, extra: &[&str]) -> String {
    let out = run_ok(inventory(brokers, topic, &["apply"]).arg(file).args(extra));
    String::from_utf8(out.stdout).unwrap()
}

fn aggregate(tenant: &str, device: &str, window_start: i64, errors: i64) -> WindowAggregate {
    WindowAggregate {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: None,
        window_start,
        window_end: window_start + 60_000,
        count: 10,
        errors,
        error_rate: errors as f64 / 10.0,
        rt_min: Some(10.0),
        rt_mean: Some(20.0),
        rt_p50: Some(20.0),
        rt_p95: Some(30.0),
        rt_p99: Some(30.0),
        rt_max: Some(30.0),
        battery_last: None,
        battery_min: None,
        signal_mean: None,
        health_score: 100.0 - 10.0 * errors as f64,
        event_id: format!("agg/{tenant}/{device}/{window_start}"),
        clock_offset_ms: None,
    }
}

#[test]
fn apply_writes_only_what_changed_and_the_sink_keeps_the_inventory() {
    let brokers = shared(Kind::Kafka).address();
    let url = shared(Kind::ClickHouse).address();
    let prefix = unique("inventory");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_derived(brokers, &prefix, 2));
    let topic = format!("{prefix}-{INVENTORY}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, FIRST).unwrap();

    let planned = apply(brokers, &topic, &file, &["--dry-run"]);
    assert_eq!(
        planned,
        "+ acme/gw-01\n+ acme/rt-01\n+ acme/rt-02\n+ globex/pump-1\n\
         Plan: 4 to register, 0 to change, 0 to decommission, 0 unchanged.\n\
         Dry run: nothing written.\n"
    );
    assert!(read_all(brokers, &topic).is_empty());

    let applied = apply(brokers, &topic, &file, &[]);
    assert!(
        applied.ends_with("Applied: 4 registered, 0 changed, 0 decommissioned.\n"),
        "{applied}"
    );
    assert_eq!(read_all(brokers, &topic).len(), 4);
    let again = apply(brokers, &topic, &file, &[]);
    assert_eq!(
        again,
        "Plan: 0 to register, 0 to change, 0 to decommission, 4 unchanged.\n"
    );
    assert_eq!(
        read_all(brokers, &topic).len(),
        4,
        "a second apply writes nothing"
    );

    std::fs::write(&file, SECOND).unwrap();
    let changed = apply(brokers, &topic, &file, &[]);
    assert_eq!(
        changed,
        "+ acme/ws-01\n~ acme/gw-01 (class, labels)\n- acme/rt-02\n\
         Plan: 1 to register, 1 to change, 1 to decommission, 1 unchanged.\n\
         Applied: 1 registered, 1 changed, 1 decommissioned.\n"
    );
    let records = read_all(brokers, &topic);
    assert_eq!(records.len(), 7);
    let gone = schemas::device_key("acme", "rt-02");
    let last_of_gone = records
        .iter()
        .filter(|r| r.key == gone.as_bytes())
        .max_by_key(|r| r.offset)
        .unwrap();
    assert!(last_of_gone.value.is_empty(), "a tombstone decommissions");

    let listed = run_ok(&mut inventory(brokers, &topic, &["list"]));
    let devices: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<(&str, &str)> = devices
        .iter()
        .map(|d| {
            (
                d["tenant_id"].as_str().unwrap(),
                d["device_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("acme", "gw-01"),
            ("acme", "rt-01"),
            ("acme", "ws-01"),
            ("globex", "pump-1")
        ]
    );
    assert_eq!(devices[1]["poll"]["fields"]["battery_pct"], "/battery");

    // What `list` prints as CSV applies as no change, for the whole inventory.
    let csv = run_ok(&mut inventory(
        brokers,
        &topic,
        &["list", "--format", "csv"],
    ));
    let csv_file = dir.path().join("export.csv");
    std::fs::write(&csv_file, csv.stdout).unwrap();
    assert_eq!(
        apply(brokers, &topic, &csv_file, &["--all-tenants"]),
        "Plan: 0 to register, 0 to change, 0 to decommission, 4 unchanged.\n"
    );
    // Speaking for globex too, the second file would decommission its pump.
    assert!(
        apply(brokers, &topic, &file, &["--tenant", "globex", "--dry-run"])
            .starts_with("- globex/pump-1\n")
    );

    std::fs::write(
        &file,
        "devices:\n  - {tenant: acme, device: ok-1}\n  - {tenant: acme, device: bad-1, expected_interval_ms: 0}\n",
    )
    .unwrap();
    let refused = inventory(brokers, &topic, &["apply"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("device 2 (acme/bad-1): invalid field `expected_interval_ms`"),
        "{stderr}"
    );
    assert_eq!(
        read_all(brokers, &topic).len(),
        7,
        "a refused file writes nothing"
    );

    // The sink: one row per device that should exist, rt-02 decommissioned, and aggregates
    // joined to the devices' sites by the documented query.
    let codec = Codec::builtin();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    const WINDOW: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;
    let aggregates = [
        aggregate("acme", "gw-01", WINDOW, 2),
        aggregate("acme", "rt-01", WINDOW, 0),
        aggregate("acme", "ws-01", WINDOW, 1),
        aggregate("acme", "rt-02", WINDOW, 5),
    ];
    let aggregates_topic = format!("{prefix}-aggregates");
    for a in &aggregates {
        let value = codec.encode(a).unwrap();
        producer
            .send(
                BaseRecord::to(&aggregates_topic)
                    .key(a.key().as_ref())
                    .payload(&value),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let database = unique("fp_inventory").replace('-', "_");
    let (mut child, _) = sink(brokers, url, &prefix, &database, &[]);
    let c = rt.block_on(connect(url, &database));
    let count = |sql: &str| {
        rt.block_on(c.client.query(sql).fetch_one::<u64>())
            .unwrap_or(0)
    };
    assert!(testkit::wait_for(Duration::from_secs(60), || {
        count("SELECT count() FROM device_inventory") == 7
            && count("SELECT count() FROM device_aggregates") == 4
    }));
    assert_eq!(
        count("SELECT count() FROM device_inventory FINAL WHERE decommissioned = 0"),
        4
    );
    assert_eq!(
        count(
            "SELECT count() FROM device_inventory FINAL WHERE decommissioned = 1 AND device_id = 'rt-02'"
        ),
        1
    );
    let queries = documented_queries();
    let per_site = ask(
        &rt,
        &c,
        &database,
        &queries["error_rate_per_site"],
        (WINDOW + 120_000) / 1_000,
    );
    let got: Vec<(String, String, f64, u64)> = per_site
        .iter()
        .map(|row| {
            (
                row["tenant_id"].as_str().unwrap().to_string(),
                row["site"].as_str().unwrap().to_string(),
                row["error_rate"].as_f64().unwrap(),
                row["devices"]
                    .as_str()
                    .map_or_else(|| row["devices"].as_u64().unwrap(), |s| s.parse().unwrap()),
            )
        })
        .collect();
    // rt-02 is decommissioned: its window counts for no site.
    assert_eq!(
        got,
        [
            ("acme".into(), "berlin".into(), 0.1, 1),
            ("acme".into(), "paris".into(), 0.1, 2),
        ]
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();
}

/// An HTTP device on loopback that answers every GET with `body`, counting the requests.
/// The generated fleet's first devices of each tenant, watched with a 1 s interval; two devices
/// that never report; and one device the second file removes.
const WATCHED: &str = r#"
devices:
  - {tenant: tenant-00, device: t00-dev-0000000, expected_interval_ms: 1000}
  - {tenant: tenant-01, device: t01-dev-0000001, expected_interval_ms: 1000}
  - {tenant: tenant-00, device: ghost-1, expected_interval_ms: 5000}
  - {tenant: tenant-01, device: ghost-2}
  - {tenant: tenant-01, device: t01-dev-0000003}
"#;

#[test]
fn the_pipeline_reports_silent_and_removed_devices_as_the_model_does() {
    let brokers = shared(Kind::Kafka).address();
    let prefix = unique("inventory-pipeline");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_derived(brokers, &prefix, 2));
    let inventory_topic = format!("{prefix}-{INVENTORY}");
    let telemetry = format!("{prefix}-telemetry");

    // Registered now (the record time is the registration's event time), one device removed
    // two seconds later; the fleet's readings run from a minute before to four minutes after.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, WATCHED).unwrap();
    apply(brokers, &inventory_topic, &file, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let without: String = WATCHED
        .lines()
        .filter(|l| !l.contains("t01-dev-0000003"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, without).unwrap();
    let removed = apply(brokers, &inventory_topic, &file, &[]);
    assert!(removed.contains("- tenant-01/t01-dev-0000003"), "{removed}");
    generate_into(
        brokers,
        &telemetry,
        ("40", "12000", "5"),
        now - 60_000,
        &["--set", "generate.tenants=2"],
    );

    let cfg = PipelineConfig::default();
    let inventory = topic_as_partitions(brokers, &inventory_topic);
    let input = topic_as_partitions(brokers, &telemetry);
    let want = model::normalise(model::model_with(
        &telemetry,
        &input,
        &model::Inventory {
            topic: &inventory_topic,
            partitions: &inventory,
        },
        &cfg,
    ));
    let status = |o: &Output, device: &str, reason: schemas::TransitionReason| matches!(o, Output::Status(s) if s.device_id == device && s.reason == reason);
    use schemas::TransitionReason::{Decommissioned, FirstSeen, NeverSeen};
    for (device, reason) in [
        ("ghost-1", NeverSeen),
        ("ghost-2", NeverSeen),
        ("t01-dev-0000003", Decommissioned),
    ] {
        assert!(
            want.iter().any(|o| status(o, device, reason)),
            "the model has {device} {reason:?}"
        );
    }
    let back = want
        .iter()
        .filter(|o| status(o, "t01-dev-0000003", FirstSeen))
        .count();
    assert_eq!(back, 2, "first seen, and again after its tombstone");

    let output = run_ok(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--until-end", "-w", "2"])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(derived_topics(&prefix)),
    );
    assert!(output.status.success());
    let mut got = Vec::new();
    let codec = Codec::builtin();
    for kind in DERIVED {
        for m in read_all(brokers, &format!("{prefix}-{kind}")) {
            got.push(decode_output(&codec, kind, &m.value));
        }
    }
    let got = model::normalise(got);
    assert_eq!(got.len(), want.len(), "as many records as the model");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

fn http_device(body: &'static str) -> (String, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 2048];
            let _ = socket.read(&mut buf);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes());
        }
    });
    (url, hits)
}

/// `fleetpulse poll` with the inventory and telemetry topics named, probing every `interval_ms`
/// (HTTP and TCP) without jitter; and its HTTP address.
fn poll(brokers: &str, inventory: &str, telemetry: &str, interval_ms: u64) -> (Running, String) {
    let (child, http) = spawn_serving(
        fleetpulse()
            .args(["poll", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--set", &format!("topics.inventory={inventory}")])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(["--set", &format!("poller.http_interval_ms={interval_ms}")])
            .args(["--set", &format!("poller.tcp_interval_ms={interval_ms}")])
            .args(["--set", "poller.jitter=0.0"]),
    );
    (Running(child), http)
}

#[test]
fn the_poller_follows_the_inventory_and_produces_a_record_per_probe() {
    let brokers = shared(Kind::Kafka).address();
    let prefix = unique("poll");
    let topic = format!("{prefix}-{INVENTORY}");
    let telemetry = format!("{prefix}-telemetry");
    let (web, web_hits) = http_device(r#"{"up": true, "battery": 81.5, "fw": "3.2"}"#);
    let (web2, _) = http_device(r#"{"up": false}"#);
    let plc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plc_url = format!("tcp://{}", plc.local_addr().unwrap());
    std::thread::spawn(move || plc.incoming().for_each(drop));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.yaml");
    let fields = "fields: {ok: /up, battery_pct: /battery, attributes.fw: /fw}";
    // The fleet: an HTTP device (given), a TCP one, and one that pushes (not polled).
    let apply_fleet = |web_device: String| {
        std::fs::write(
            &file,
            format!(
                "devices:\n  - {web_device}\n  - {{tenant: acme, device: plc-1, poll: {{url: \"{plc_url}\"}}}}\n  - {{tenant: acme, device: push-1}}\n"
            ),
        )
        .unwrap();
        apply(brokers, &topic, &file, &[]);
    };
    apply_fleet(format!(
        "{{tenant: acme, device: web-1, class: cam, poll: {{url: \"{web}\", {fields}}}}}"
    ));

    let (mut child, http) = poll(brokers, &topic, &telemetry, 300);
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        http_text(&http, "GET", "/readyz", None).0 == 200
    }));
    let codec = Codec::builtin();
    let decoded = || -> Vec<(i64, schemas::Telemetry)> {
        read_all(brokers, &telemetry)
            .iter()
            .map(|r| {
                let stamped = match r.timestamp {
                    pipeline::clock::RecordTime::Producer(t) => t,
                    other => panic!("{other:?}"),
                };
                (
                    stamped,
                    codec.decode::<schemas::Telemetry>(&r.value).unwrap(),
                )
            })
            .collect()
    };
    let of = |records: &[(i64, schemas::Telemetry)], device: &str| {
        records
            .iter()
            .filter(|(_, t)| t.device_id == device)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        let records = decoded();
        of(&records, "web-1").len() >= 3 && of(&records, "plc-1").len() >= 3
    }));
    let records = decoded();
    assert!(
        of(&records, "push-1").is_empty(),
        "a device without a target is not polled"
    );
    for (stamped, t) in of(&records, "web-1") {
        assert!(t.ok && t.battery_pct == Some(81.5) && t.device_class.as_deref() == Some("cam"));
        assert_eq!(t.attributes.get("fw").map(String::as_str), Some("3.2"));
        // Event time the probe's start, the record stamped by the poller's clock after it.
        assert!(
            stamped >= t.ts && stamped - t.ts < 5_000,
            "{stamped} vs {}",
            t.ts
        );
    }
    assert!(
        of(&records, "plc-1")
            .iter()
            .all(|(_, t)| t.ok && t.response_time_ms.is_some())
    );

    // web-1 decommissioned, web-2 registered: taken live.
    apply_fleet(format!(
        "{{tenant: acme, device: web-2, poll: {{url: \"{web2}\", {fields}}}}}"
    ));
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        of(&decoded(), "web-2").len() >= 2
    }));
    let web_then = web_hits.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        web_hits.load(Ordering::Relaxed),
        web_then,
        "no probe after decommissioning"
    );
    let web2 = of(&decoded(), "web-2");
    assert!(
        web2.iter()
            .all(|(_, t)| !t.ok && t.error_code.as_deref() == Some("reported_unhealthy"))
    );

    let (status, metrics) = http_text(&http, "GET", "/metrics", None);
    assert_eq!(status, 200);
    for line in [
        r#"fleetpulse_poller_probes_total{kind="http",result="ok"}"#,
        r#"fleetpulse_poller_probes_total{kind="tcp",result="ok"}"#,
        r#"fleetpulse_poller_probes_total{kind="http",result="reported_unhealthy"}"#,
        "fleetpulse_poller_devices 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // SIGTERM: the poller stops and says what it wrote.
    let pid = child.0.id().to_string();
    run_ok(std::process::Command::new("kill").args(["-TERM", &pid]));
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_broker_away_and_back_costs_the_poller_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let kafka_dir = dir.path().join("kafka");
    let mut kafka = testkit::Service::start_in(Kind::Kafka, &kafka_dir);
    let brokers = kafka.address().to_string();
    let prefix = unique("poll-chaos");
    let (topic, telemetry) = (
        format!("{prefix}-{INVENTORY}"),
        format!("{prefix}-telemetry"),
    );
    let (web, hits) = http_device(r#"{"up": true}"#);
    let file = dir.path().join("fleet.yaml");
    std::fs::write(
        &file,
        format!("devices:\n  - {{tenant: acme, device: web-1, poll: {{url: \"{web}\"}}}}\n"),
    )
    .unwrap();
    apply(&brokers, &topic, &file, &[]);
    let (mut child, http) = poll(&brokers, &topic, &telemetry, 200);
    let ready = || http_text(&http, "GET", "/readyz", None).0 == 200;
    assert!(testkit::wait_for(Duration::from_secs(30), ready));
    std::thread::sleep(Duration::from_secs(2));

    kafka.kill();
    assert!(
        testkit::wait_for(Duration::from_secs(30), || !ready()),
        "/readyz says the broker is gone"
    );
    let during = hits.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        hits.load(Ordering::Relaxed) > during,
        "probes go on while the broker is away"
    );
    let kafka = testkit::Service::start_in(Kind::Kafka, &kafka_dir);
    assert_eq!(kafka.address(), brokers);
    assert!(
        testkit::wait_for(Duration::from_secs(60), ready),
        "ready again"
    );
    std::thread::sleep(Duration::from_secs(1));

    let pid = child.0.id().to_string();
    run_ok(std::process::Command::new("kill").args(["-TERM", &pid]));
    assert!(child.0.wait().unwrap().success());
    // Every probe the device answered is one record, the outage's included, none twice (a
    // probe in flight at the stop may have no record).
    let records = read_all(&brokers, &telemetry);
    let probes = hits.load(Ordering::Relaxed) as usize;
    assert!(
        records.len() == probes || records.len() + 1 == probes,
        "{} records of {probes} probes",
        records.len()
    );
    let codec = Codec::builtin();
    let mut times: Vec<i64> = records
        .iter()
        .map(|r| codec.decode::<schemas::Telemetry>(&r.value).unwrap().ts)
        .collect();
    times.dedup();
    assert_eq!(times.len(), records.len(), "no record twice");
}

#[test]
fn https_devices_are_trusted_by_the_fleet_s_ca_and_never_without_it() {
    let brokers = shared(Kind::Kafka).address();
    let dir = tempfile::tempdir().unwrap();
    // A CA and a certificate for 127.0.0.1, as the secured stack makes them.
    let secrets = dir.path().join("secrets");
    run_ok(
        std::process::Command::new("bash")
            .arg(testkit::workspace_root().join("scripts/compose-secrets.sh"))
            .arg(&secrets),
    );
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(secrets.join("server.pem")).unwrap(),
        &std::fs::read(secrets.join("server.key")).unwrap(),
    )
    .unwrap();
    let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/health", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            let Ok(mut tls) = acceptor.accept(socket) else {
                continue;
            };
            let mut buf = [0u8; 2048];
            let _ = tls.read(&mut buf);
            let body = r#"{"battery": 55}"#;
            let _ = tls.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    let prefix = unique("poll-tls");
    let topic = format!("{prefix}-{INVENTORY}");
    let file = dir.path().join("fleet.yaml");
    std::fs::write(
        &file,
        format!(
            "devices:\n  - {{tenant: acme, device: tls-1, poll: {{url: \"{url}\", fields: {{battery_pct: /battery}}}}}}\n"
        ),
    )
    .unwrap();
    apply(brokers, &topic, &file, &[]);
    let codec = Codec::builtin();
    let records = |telemetry: &str, ca: Option<&Path>| {
        let mut command = fleetpulse();
        command
            .args(["poll", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--set", &format!("topics.inventory={topic}")])
            .args(["--set", &format!("topics.telemetry={telemetry}")])
            .args(["--set", "poller.http_interval_ms=200"])
            .args(["--set", "poller.retries=0"]);
        if let Some(ca) = ca {
            command.args(["--set", &format!("poller.ca_file={}", ca.display())]);
        }
        let (child, _) = spawn_serving(&mut command);
        let mut child = Running(child);
        let mut read = Vec::new();
        testkit::wait_for(Duration::from_secs(30), || {
            read = read_all(brokers, telemetry);
            read.len() >= 3
        });
        let _ = child.0.kill();
        read.iter()
            .map(|r| codec.decode::<schemas::Telemetry>(&r.value).unwrap())
            .collect::<Vec<_>>()
    };
    let untrusted = records(&format!("{prefix}-untrusted"), None);
    assert!(untrusted.len() >= 3);
    assert!(
        untrusted
            .iter()
            .all(|t| !t.ok && t.error_code.as_deref() == Some("unreachable")),
        "{untrusted:?}"
    );
    let trusted = records(&format!("{prefix}-trusted"), Some(&secrets.join("ca.pem")));
    assert!(trusted.len() >= 3);
    assert!(
        trusted.iter().all(|t| t.ok && t.battery_pct == Some(55.0)),
        "{trusted:?}"
    );
}
