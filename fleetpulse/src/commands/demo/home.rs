//! The demo's home on MQTT: Zigbee2MQTT-style sensors publishing to a local broker, bridged into
//! Kafka by the MQTT gateway with the `zigbee2mqtt` preset, the path most fleets take. One of them,
//! the porch light, drops off the Zigbee network every other minute: its availability goes
//! `offline` (the pipeline's `reported_offline`, at once) and, twenty seconds later, `online`
//! again (`resumed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mqtt_gateway::{MappingConfig, MqttConfig};
use rumqttc::{AsyncClient, MqttOptions, QoS};

/// The tenant the home's devices belong to.
pub(crate) const TENANT: &str = "home";

/// The home's devices, as Zigbee2MQTT names them.
pub(crate) const DEVICES: [&str; 6] = [
    "front-door",
    "hallway-motion",
    "kitchen-plug",
    "bedroom-climate",
    "garage-door",
    "porch-light",
];

/// The device that drops off now and then.
pub(crate) const FLAKY: &str = "porch-light";

/// How often each device reports.
const EVERY: Duration = Duration::from_secs(5);

/// The gateway's settings: the broker at `url`, the preset under `base`.
pub(crate) fn gateway(url: &str, base: &str, listen: std::net::SocketAddr) -> MqttConfig {
    MqttConfig {
        url: url.into(),
        client_id: format!("fleetpulse-demo-{}", std::process::id()),
        listen,
        mappings: vec![MappingConfig {
            preset: Some("zigbee2mqtt".into()),
            base: Some(base.into()),
            tenant: Some(TENANT.into()),
            device_class: Some("zigbee".into()),
            ..MappingConfig::default()
        }],
        ..MqttConfig::default()
    }
}

/// What `device` says at tick `n`, as Zigbee2MQTT publishes it.
fn payload(device: &str, n: u64) -> String {
    let battery = 100 - (n / 12) % 60;
    let linkquality = 60 + (n * 37) % 150;
    let own = match device {
        "front-door" | "garage-door" => serde_json::json!({ "contact": !n.is_multiple_of(7) }),
        "hallway-motion" => {
            serde_json::json!({ "occupancy": n.is_multiple_of(3), "illuminance": 120 + n % 40 })
        }
        "kitchen-plug" => serde_json::json!({ "state": "ON", "power": 40 + n % 25 }),
        "bedroom-climate" => {
            serde_json::json!({ "temperature": 20.5 + (n % 10) as f64 / 10.0, "humidity": 48 })
        }
        _ => serde_json::json!({ "state": if n.is_multiple_of(2) { "ON" } else { "OFF" } }),
    };
    let mut p = own;
    p["battery"] = battery.into();
    p["linkquality"] = linkquality.into();
    p.to_string()
}

/// Publishes the home under `base` to the broker at `url` until `stop` is set.
pub(crate) async fn run(url: &str, base: &str, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let (host, port) = crate::commands::mqtt::plain_broker(url)?;
    let id = format!("fleetpulse-demo-home-{}", std::process::id());
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // The event loop reconnects by itself; a broker away for a while costs the home's readings
    // of that while, as it would a real home's.
    let connection = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let mut tick = tokio::time::interval(EVERY);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Every other minute, the porch light is away from 20 s to 40 s past the minute.
        let phase = (n * EVERY.as_secs()) % 120;
        let away = (20..40).contains(&phase);
        // An availability change goes first, as Zigbee2MQTT's does, before what follows it.
        let availability = match phase {
            20 => Some("offline"),
            40 => Some("online"),
            _ => None,
        };
        if let Some(state) = availability {
            let topic = format!("{base}/{FLAKY}/availability");
            let message = serde_json::json!({ "state": state }).to_string();
            client
                .publish(topic, QoS::AtLeastOnce, true, message)
                .await?;
        }
        for device in DEVICES {
            if device == FLAKY && away {
                continue;
            }
            let topic = format!("{base}/{device}");
            client
                .publish(topic, QoS::AtLeastOnce, false, payload(device, n))
                .await?;
        }
        n += 1;
    }
    connection.abort();
    Ok(())
}
