//! `fleetpulse registry` as a process: it serves the built-in schemas, keeps registrations in its
//! state file across restarts, and fleetpulse's own client registers through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;

use e2e::http;
use e2e::registry::RegistryProcess;

#[test]
fn serves_builtins_and_keeps_registrations_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("registry.json");
    let state_arg = state.to_str().unwrap();
    let schema = r#"{"schema": "{\"type\":\"record\",\"name\":\"Extra\",\"fields\":[{\"name\":\"a\",\"type\":\"long\"}]}"}"#;

    let first = RegistryProcess::start(&["--state-file", state_arg]);
    let (status, body) = http(
        &first.url,
        "GET",
        "/subjects/telemetry-value/versions/latest",
        None,
    );
    assert_eq!((status, body["id"].as_u64()), (200, Some(2)));
    let (status, body) = http(
        &first.url,
        "POST",
        "/subjects/extra-value/versions",
        Some(schema),
    );
    assert_eq!(status, 200);
    let id = body["id"].as_u64().unwrap();
    let (status, metrics) = {
        let address = first.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        (text[9..12].to_string(), text)
    };
    assert_eq!(status, "200");
    assert!(
        metrics.contains("fleetpulse_registry_requests_total"),
        "{metrics}"
    );
    drop(first);

    let second = RegistryProcess::start(&["--state-file", state_arg]);
    let (status, body) = http(&second.url, "GET", &format!("/schemas/ids/{id}"), None);
    assert_eq!(status, 200);
    assert!(body["schema"].as_str().unwrap().contains("Extra"));
}

/// A registration's body: a record named `name` with one field, whose doc is `doc`.
fn record(name: &str, doc: &str) -> String {
    let schema = format!(
        r#"{{"type":"record","name":"{name}","doc":"{doc}","fields":[{{"name":"a","type":"long"}}]}}"#
    );
    serde_json::json!({ "schema": schema }).to_string()
}

#[test]
fn state_is_bounded_and_reads_do_not_wait_for_writes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("registry.json");
    let builtin = RegistryProcess::start(&[]);
    let (_, subjects) = http(&builtin.url, "GET", "/subjects", None);
    let builtins = subjects.as_array().unwrap().len();
    drop(builtin);
    let max_subjects = format!("registry.max_subjects={}", builtins + 200);
    let registry = RegistryProcess::start(&[
        "--state-file",
        state.to_str().unwrap(),
        "--set",
        &max_subjects,
        "--set",
        "registry.max_schema_bytes=1000",
    ]);
    let url = registry.url.clone();

    // Reads before any write, then while 200 registrations each rewrite and sync the file.
    let read = |url: &str| {
        let started = std::time::Instant::now();
        let (status, _) = http(
            url,
            "GET",
            "/subjects/telemetry-value/versions/latest",
            None,
        );
        assert_eq!(status, 200);
        started.elapsed()
    };
    let mut before: Vec<_> = (0..50).map(|_| read(&url)).collect();
    let writer = {
        let url = url.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                let (status, body) = http(
                    &url,
                    "POST",
                    &format!("/subjects/s{i}-value/versions"),
                    Some(&record(&format!("S{i}"), "")),
                );
                assert_eq!(status, 200, "{body}");
            }
        })
    };
    let mut during = Vec::new();
    while !writer.is_finished() {
        during.push(read(&url));
    }
    writer.join().unwrap();
    before.sort();
    during.sort();
    let p99 = |v: &[std::time::Duration]| v[(v.len() * 99 / 100).min(v.len() - 1)];
    println!(
        "read p99 {:?} before, {:?} during registrations ({} reads)",
        p99(&before),
        p99(&during),
        during.len()
    );
    assert!(
        p99(&during) < (p99(&before) * 20).max(std::time::Duration::from_millis(100)),
        "reads keep their pace while writes sync the state file"
    );

    // Full: no new subject, and no schema over its size; existing subjects still answer.
    let (status, body) = http(
        &url,
        "POST",
        "/subjects/one-more-value/versions",
        Some(&record("OneMore", "")),
    );
    assert_eq!((status, body["error_code"].as_u64()), (422, Some(42210)));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("registry.max_subjects"),
        "{body}"
    );
    let (status, body) = http(
        &url,
        "POST",
        "/subjects/s0-value/versions",
        Some(&record(&format!("S{}", "x".repeat(2_000)), "")),
    );
    assert_eq!((status, body["error_code"].as_u64()), (422, Some(42210)));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("registry.max_schema_bytes"),
        "{body}"
    );
    assert_eq!(
        http(&url, "GET", "/subjects/s199-value/versions", None).0,
        200
    );
}
