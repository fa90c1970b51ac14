//! `fleetpulse demo`, as a newcomer runs it: one process (the embedded broker), with the Mosquitto
//! the demo script installs. It prints the dashboard's address with a token; the dashboard, in
//! headless Chromium, then shows the live fleet (devices online, health from the first closed
//! windows, the devices its poller checks among them, registered devices that never reported
//! offline, the Zigbee home bridged from MQTT, its porch light reported offline); a
//! screenshot is saved (and, with `UPDATE_SCREENSHOTS=1`, copied to
//! docs/demo-dashboard.png, the one the README shows); and SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use e2e::browser::Browser;
use e2e::*;

/// The fleet the demo is started with, the five simulated devices its poller checks, the three
/// registered devices that never report, and the six of the Zigbee home on MQTT.
const DEVICES: u64 = 1_000 + 5 + 3 + 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_live_fleet_and_stops_cleanly() {
    let mosquitto = testkit::shared(testkit::Kind::Mosquitto).address();
    let mut child = fleetpulse()
        .args(["demo", "--devices", "1000", "--listen", "127.0.0.1:0"])
        .args(["--mqtt-url", mosquitto])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let dashboard = loop {
        let line = lines
            .next()
            .expect("the demo says where its dashboard is")
            .unwrap();
        if let Some((_, url)) = line.split_once("the dashboard (live within a minute): ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let mut demo = Running(child);
    let (base, token) = dashboard.split_once("/?token=").unwrap();
    let address = base.trim_start_matches("http://");
    assert!(
        testkit::wait_for(Duration::from_secs(60), || {
            std::net::TcpStream::connect(address).is_ok()
        }),
        "the dashboard is served"
    );

    // Live: the fleet's devices are online and the first windows have closed.
    let mut devices = serde_json::Value::Null;
    let live = testkit::wait_for(Duration::from_secs(180), || {
        devices = http(
            base,
            "GET",
            &format!("/api/devices?limit=1000&token={token}"),
            None,
        )
        .1;
        devices["devices"].as_array().is_some_and(|d| {
            // A full page (the API's largest) of the fleet.
            d.len() == 1_000
                && d.iter().filter(|x| x["status"] == "online").count() > 900
                && d.iter().any(|x| x["health"].is_number())
        })
    });
    assert!(live, "the demo's fleet is live: {devices}");
    // The poller's devices report too: a camera online.
    let polled = testkit::wait_for(Duration::from_secs(60), || {
        let (status, device) = http(
            base,
            "GET",
            &format!("/api/devices/polled-cam-1?token={token}"),
            None,
        );
        status == 200 && device["status"] == "online"
    });
    assert!(polled, "the demo's poller reports its devices");
    // A registered device that never reported is offline (never_seen, 30 s after it was
    // registered).
    let never = testkit::wait_for(Duration::from_secs(90), || {
        let (status, device) = http(
            base,
            "GET",
            &format!("/api/devices/never-reported-1?token={token}"),
            None,
        );
        status == 200 && device["status"] == "offline"
    });
    assert!(never, "the demo's silent registered devices go offline");
    // The Zigbee home, published over MQTT and bridged by the gateway: its porch light drops
    // off the network, and its availability says so at once.
    let home = testkit::wait_for(Duration::from_secs(60), || {
        let (status, device) = http(
            base,
            "GET",
            &format!("/api/devices/front-door?token={token}"),
            None,
        );
        status == 200 && device["status"] == "online" && device["tenant_id"] == "home"
    });
    assert!(home, "the demo's MQTT home reports");
    // Away for 20 s of every other minute, a third of its 60 s timeout: only its availability
    // report can have taken it offline and back since it first came online with the others.
    let since = |device: &str| {
        let (_, d) = http(
            base,
            "GET",
            &format!("/api/devices/{device}?token={token}"),
            None,
        );
        d["status_since"].as_i64().unwrap_or(0)
    };
    let reported = testkit::wait_for(Duration::from_secs(150), || {
        since("porch-light") > since("front-door") + 15_000
    });
    assert!(reported, "the porch light is reported offline");
    println!("live data after {:.0} s", started.elapsed().as_secs_f64());

    let mut browser = Browser::open(&dashboard).await;
    let shown = r##"JSON.stringify({
        online: Number(document.getElementById("online")?.textContent),
        devices: Number(document.getElementById("devices")?.textContent),
        state: document.getElementById("state")?.textContent,
        health: [...document.querySelectorAll("#rows td")].some((td) => /^\d+\.\d$/.test(td.textContent)),
    })"##;
    let mut state = serde_json::Value::Null;
    for _ in 0..150 {
        state = serde_json::from_str(browser.eval(shown).await.as_str().unwrap_or("null")).unwrap();
        if state["devices"] == DEVICES
            && state["online"].as_u64() > Some(900)
            && state["health"] == true
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state["devices"], DEVICES, "{state}");
    assert!(state["online"].as_u64() > Some(900), "{state}");
    assert_eq!(state["health"], true, "health in the table: {state}");
    assert!(
        state["state"].as_str().unwrap_or("").starts_with("live"),
        "{state}"
    );
    // Let the table and chart settle before the picture.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-dashboard.png");
    browser.screenshot(&png).await;
    assert!(
        std::fs::metadata(&png).unwrap().len() > 20_000,
        "a real picture"
    );
    println!("demo dashboard screenshot: {}", png.display());
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = testkit::workspace_root().join("docs/demo-dashboard.png");
        std::fs::copy(&png, &docs).unwrap();
        println!("copied to {}", docs.display());
    }

    // Ctrl-C (SIGTERM here) stops every part and the process exits by itself, successfully.
    let child = &mut demo.0;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped = testkit::wait_for(Duration::from_secs(60), || {
        child.try_wait().ok().flatten().is_some()
    });
    assert!(stopped, "the demo stops within 60 s of SIGTERM");
    assert!(child.wait().unwrap().success(), "and exits successfully");
}
