//! `fleetpulse registry` as a process: it serves the built-in schemas, keeps registrations in its
//! state file across restarts, and fleetpulse's own client registers through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::registry::RegistryProcess;

/// A minimal HTTP/1.1 exchange, so the test does not need an HTTP client of its own.
fn http(url: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let json = response.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

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
