//! `fleetpulse ingest` against the real broker: readings POSTed under API keys land on the
//! telemetry topic with the key's tenant (and a device key's device) in their headers; a batch is
//! answered line by line (accepted, or refused with the reason the pipeline would give, or as a
//! foreign claim); missing, wrong and revoked keys are refused, a revocation taking effect while
//! the server runs; bodies, batches and rates over the limits are refused; `/metrics` and
//! `/readyz` answer. And the pipeline, told to take the tenant only from the gateways' header,
//! dead-letters what a producer wrote to the topic directly, whatever tenant it claims.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use e2e::*;
use pipeline::output::Output;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use schemas::{Codec, Telemetry, TransitionReason};
use testkit::{Kind, shared, unique};

/// `fleetpulse api-key create` for `tenant` (and `device`): the key's id and the key.
fn create(keys: &Path, tenant: &str, device: Option<&str>) -> (String, String) {
    let mut command = fleetpulse();
    command
        .args(["api-key", "create", "--tenant", tenant])
        .args(["--set", &format!("ingest.keys_file={}", keys.display())]);
    if let Some(d) = device {
        command.args(["--device", d]);
    }
    let out = run_ok(&mut command);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        line["id"].as_str().unwrap().to_string(),
        line["key"].as_str().unwrap().to_string(),
    )
}

/// `fleetpulse ingest` on `topic` with `keys`: the server, its URL and its metrics' URL.
fn ingest(brokers: &str, topic: &str, keys: &Path, extra: &[&str]) -> (Running, String, String) {
    let mut child = fleetpulse()
        .args(["ingest", "--brokers", brokers, "--listen", "127.0.0.1:0"])
        .args(["--keys-file", &keys.display().to_string()])
        .args(["--set", &format!("topics.telemetry={topic}")])
        .args(["--set", "ingest.metrics_listen=127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut metrics) = (String::new(), String::new());
    while url.is_empty() || metrics.is_empty() {
        let line = lines.next().expect("ingest says where it listens").unwrap();
        let Ok(said) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match said["listening"].as_str() {
            Some("ingest") => url = said["url"].as_str().unwrap().to_string(),
            Some("ingest.metrics") => metrics = said["url"].as_str().unwrap().to_string(),
            _ => {}
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (Running(child), url, metrics)
}

/// POSTs `body` to `/v1/telemetry` with `key` (none: no key): the status, `Retry-After`, and
/// the body as JSON.
fn post(url: &str, key: Option<&str>, body: &str) -> (u16, Option<String>, serde_json::Value) {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        stream,
        "POST /v1/telemetry HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, text) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let retry = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after: ")
            .map(str::to_string)
    });
    (
        status,
        retry,
        serde_json::from_str(text).unwrap_or_default(),
    )
}

/// Each line's number, status and reason in an answer.
fn outcomes(answer: &serde_json::Value) -> Vec<(u64, String, String)> {
    answer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["status"].as_str().unwrap().to_string(),
                l["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn readings_come_in_under_their_key_s_tenant_and_are_answered_line_by_line() {
    let brokers = shared(Kind::Kafka).address();
    let topic = unique("ingest-telemetry");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let (_, acme) = create(&keys, "acme", None);
    let (_, own) = create(&keys, "acme", Some("d-own"));
    let (globex_id, globex) = create(&keys, "globex", None);
    let (_, eager) = create(&keys, "acme", None);
    let (_server, url, metrics) = ingest(
        brokers,
        &topic,
        &keys,
        &[
            "--set",
            "ingest.max_lines=6",
            "--set",
            "ingest.readings_per_s=1",
            "--set",
            "ingest.max_body_bytes=4096",
        ],
    );

    let batch = "{\"device_id\":\"a-1\",\"ok\":true,\"response_time_ms\":12.5}\n\
                 {\"tenant_id\":\"globex\",\"device_id\":\"g-1\",\"ok\":true}\n\
                 {\"device_id\":\"a-2\",\"ok\":true,\"battery_pct\":150}\n\
                 \n\
                 not json\n\
                 {\"tenant_id\":\"acme\",\"device_id\":\"a-3\",\"ok\":false,\"ts\":1700000000000}\n";
    let (status, _, answer) = post(&url, Some(&acme), batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["refused"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(answer["errors"], true);
    let want = [
        (1, "accepted", ""),
        (2, "refused", "foreign_tenant"),
        (3, "refused", "invalid_field"),
        (5, "refused", "undecodable"),
        (6, "accepted", ""),
    ];
    let got = outcomes(&answer);
    assert_eq!(got, want.map(|(n, s, r)| (n, s.to_string(), r.to_string())));

    // A device's own key: its device, whatever the line says (or does not).
    let (status, _, answer) = post(
        &url,
        Some(&own),
        "{\"ok\":true}\n{\"device_id\":\"other\",\"ok\":true}",
    );
    assert_eq!(status, 200);
    assert_eq!(outcomes(&answer)[1].2, "foreign_device");
    let (status, _, _) = post(&url, Some(&globex), "{\"device_id\":\"g-2\",\"ok\":true}");
    assert_eq!(status, 200);

    // Keys that are missing, wrong or revoked (taken into account while the server runs).
    assert_eq!(post(&url, None, "{}").0, 401);
    let mut wrong = acme.clone();
    wrong.replace_range(wrong.len() - 3.., "xyz");
    assert_eq!(post(&url, Some(&wrong), "{}").0, 401);
    run_ok(
        fleetpulse()
            .args(["api-key", "revoke", &globex_id])
            .args(["--set", &format!("ingest.keys_file={}", keys.display())]),
    );
    let revoked = testkit::wait_for(Duration::from_secs(10), || {
        // No readings: 400 while the key holds, 401 once it is revoked; nothing is written.
        post(&url, Some(&globex), "").0 == 401
    });
    assert!(revoked, "a revoked key is refused without a restart");
    let (_, _, why) = post(&url, Some(&globex), "{}");
    assert_eq!(why["error"], "the API key was revoked");

    // Limits: a body, a batch, a rate.
    let big = format!("{{\"device_id\":\"{}\",\"ok\":true}}", "x".repeat(5_000));
    assert_eq!(post(&url, Some(&eager), &big).0, 413);
    let seven = "{\"device_id\":\"a-9\",\"ok\":true}\n".repeat(7);
    assert_eq!(post(&url, Some(&eager), &seven).0, 413);
    let six = "{\"device_id\":\"a-9\",\"ok\":true}\n".repeat(6);
    assert_eq!(post(&url, Some(&eager), &six).0, 200);
    let (status, retry, _) = post(&url, Some(&eager), &six);
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));

    // What reached the topic: the accepted lines, each with its key's tenant in a header.
    let codec = Codec::builtin();
    let records: Vec<(String, String, String, Option<String>)> = read_all(brokers, &topic)
        .into_iter()
        .map(|r| {
            let t: Telemetry = codec.decode(&r.value).unwrap();
            (
                t.tenant_id,
                t.device_id,
                r.headers["fleetpulse-tenant"].clone(),
                r.headers.get("fleetpulse-device").cloned(),
            )
        })
        .collect();
    let mut devices: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    devices.sort_unstable();
    assert_eq!(
        devices,
        [
            "a-1", "a-3", "a-9", "a-9", "a-9", "a-9", "a-9", "a-9", "d-own", "g-2"
        ]
    );
    for (tenant, device, header, device_header) in &records {
        assert_eq!(tenant, header, "{device}");
        assert_eq!(device_header.is_some(), device == "d-own");
    }

    let (status, text) = http_text(&metrics, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(text.contains("fleetpulse_ingest_lines_total"), "{text}");
    assert_eq!(http_text(&metrics, "GET", "/readyz", None).0, 200);
}

#[test]
fn with_the_header_as_tenant_source_a_direct_producer_claims_nothing() {
    let brokers = shared(Kind::Kafka).address();
    let prefix = unique("tenant-header");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(create_derived(brokers, &prefix, 2));
    let topic = format!("{prefix}-telemetry");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let (_, acme) = create(&keys, "acme", None);
    let (server, url, _) = ingest(brokers, &topic, &keys, &[]);
    let ts = 1_700_000_000_000_i64;
    let (status, _, answer) = post(
        &url,
        Some(&acme),
        &format!("{{\"device_id\":\"gw-1\",\"ok\":true,\"ts\":{ts}}}"),
    );
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)));
    drop(server);
    // A producer that is not a gateway writes straight to the topic, claiming a tenant.
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let intruder = Codec::builtin()
        .encode(&Telemetry {
            tenant_id: "acme".into(),
            device_id: "intruder".into(),
            ts: ts + 1_000,
            ..Telemetry::example()
        })
        .unwrap();
    producer
        .send(BaseRecord::to(&topic).key("intruder").payload(&intruder))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    run_ok(
        fleetpulse()
            .args(["pipeline", "--brokers", brokers, "--listen", "127.0.0.1:0"])
            .args(["--until-end", "--set", "pipeline.tenant_source=header"])
            .args(["--set", &format!("topics.telemetry={topic}")])
            .args(derived_topics(&prefix)),
    );
    let derived = derived_all(brokers, &prefix);
    let seen: Vec<(&str, &str)> = derived
        .iter()
        .filter_map(|o| match o {
            Output::Status(s) if s.reason == TransitionReason::FirstSeen => {
                Some((s.tenant_id.as_str(), s.device_id.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(seen, [("acme", "gw-1")]);
    let dead: Vec<_> = derived
        .iter()
        .filter_map(|o| match o {
            Output::DeadLetter(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].detail.contains("fleetpulse-tenant"),
        "{}",
        dead[0].detail
    );
}
