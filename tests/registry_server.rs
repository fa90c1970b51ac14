//! `fleetpulse registry` as a process: it serves the built-in schemas, keeps registrations in its
//! state file across restarts, and fleetpulse's own client registers through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::http;
use support::registry::RegistryProcess;

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
